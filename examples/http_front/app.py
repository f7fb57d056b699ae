"""A reference HTTP front for ``orchestrator_core`` (Starlette on uvicorn), on the public API only.

What an orchestrator's front does, with simulated GPU workers behind the queue:

* ``POST /v2/tasks`` turns a JSON body into a ``Task`` and enqueues it: ``202`` with
  ``{job_id, queue_position, eta_ms}``, ``429`` (``Retry-After``, ``X-Backoff-Ms`` and the
  body of ``Rejected.to_http()``) when full, ``400`` when the body is invalid.
* ``GET /v2/tasks/{job_id}`` (state and position), ``DELETE /v2/tasks/{job_id}`` (cancel a
  queued job: ``204``, else ``404``).
* ``GET /v2/tasks/{job_id}/events``: server-sent events, ``queued`` (again whenever the
  position changes), then ``started``, ``token`` ... and ``end``; or ``error`` with a code
  (``EVICTED`` by DROP_LRU, ``CANCELLED``, ``SHUTDOWN``).
* ``GET /metrics``: Prometheus exposition (``QueueCollector`` on this app's own registry);
  ``GET /healthz``: liveness and the engine in use.

Workers are asyncio tasks that take jobs with ``await q.dequeue()`` and "decode"
``max_tokens`` tokens at ``tokens_per_second``. Run it with::

    python -m examples.http_front --port 8080  # or: uvicorn examples.http_front.app:app

Configuration: ``create_app(FrontConfig(...))`` or the environment (``HTTP_FRONT_CAPACITY``,
``HTTP_FRONT_POLICY``, ``HTTP_FRONT_WORKERS``, ``HTTP_FRONT_TOKENS_PER_SECOND``,
``HTTP_FRONT_POOL_ID``, ``HTTP_FRONT_MAX_TOKENS_LIMIT``), overridden by command-line options.
Everything runs on the event loop's thread: no locks are needed around the job records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import socket
import sys
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from types import FrameType
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from orchestrator_core import ENGINE, AdmissionPolicy, Job, Priority, Task
from orchestrator_core.aio import AsyncQueue
from orchestrator_core.metrics import QueueCollector

__all__ = ["FrontConfig", "HttpFront", "create_app", "eta_ms", "main"]

#: Fields a ``POST /v2/tasks`` body may carry (anything else is refused with 400).
TASK_FIELDS = ("model", "max_tokens", "session_id", "priority", "job_id", "prompt")
#: The most bytes a ``POST /v2/tasks`` body may have.
MAX_BODY_BYTES = 64 * 1024
#: Terminal states of a job record.
TERMINAL_STATES = frozenset({"done", "cancelled", "evicted", "failed"})


@dataclasses.dataclass(frozen=True)
class FrontConfig:
    """How the front is set up: the queue, the simulated worker pool and the SSE heartbeat."""

    capacity: int = 64
    policy: str = "reject-new"
    workers: int = 4
    tokens_per_second: float = 50.0
    pool_id: str = "pool-0"
    max_tokens_limit: int | None = None
    #: Finished job records kept for ``GET`` and late event streams (oldest forgotten first).
    retain_finished: int = 10_000
    #: Seconds between SSE keep-alive comments on an idle stream.
    heartbeat_s: float = 15.0

    def __post_init__(self) -> None:
        AdmissionPolicy.parse(self.policy, "policy")
        if type(self.workers) is not int or self.workers < 0:
            raise ValueError(f"workers must be an int >= 0, got {self.workers!r}")
        if not self.tokens_per_second > 0:
            raise ValueError(f"tokens_per_second must be > 0 (inf: no delay), got {self.tokens_per_second!r}")
        if type(self.retain_finished) is not int or self.retain_finished < 0:
            raise ValueError(f"retain_finished must be an int >= 0, got {self.retain_finished!r}")
        if not self.heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be > 0, got {self.heartbeat_s!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> FrontConfig:
        """The configuration from ``HTTP_FRONT_*`` variables (defaults for the ones not set)."""
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        kinds: dict[type, str] = {int: "an integer", float: "a number", str: "a string"}
        for name, conv in (
            ("capacity", int),
            ("policy", str),
            ("workers", int),
            ("tokens_per_second", float),
            ("pool_id", str),
            ("max_tokens_limit", int),
        ):
            raw = env.get(f"HTTP_FRONT_{name.upper()}")
            if raw:
                try:
                    kw[name] = conv(raw)
                except ValueError:
                    raise ValueError(f"HTTP_FRONT_{name.upper()} must be {kinds[conv]}, got {raw!r}") from None
        return cls(**kw)


def eta_ms(position: int, dequeue_rate_per_s: float) -> int | None:
    """Advisory wait before a job at ``position`` starts: position / dequeue rate, in ms.

    None when the rate is unknown (nothing dequeued in the queue's metrics window).
    """
    if dequeue_rate_per_s <= 0:
        return None
    return round(position * 1000 / dequeue_rate_per_s)


class _Signal:
    """Wakes every coroutine waiting on it (a level-free broadcast; the loop's thread only)."""

    __slots__ = ("_waiters",)

    def __init__(self) -> None:
        self._waiters: list[asyncio.Future[None]] = []

    async def wait(self, timeout_s: float) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            await asyncio.wait_for(fut, timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(fut)

    def fire(self) -> None:
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)


class JobRecord:
    """What the front remembers about one admitted job: its state and its event history."""

    __slots__ = ("events", "job_id", "model", "priority", "signal", "state", "tokens", "watchers")

    def __init__(self, job_id: str, model: str, priority: str) -> None:
        self.job_id = job_id
        self.model = model
        self.priority = priority
        self.state = "queued"
        self.tokens = 0
        #: (event, data) in order; a stream replays them, then follows live.
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.signal = _Signal()
        self.watchers = 0

    def emit(self, event: str, data: dict[str, Any]) -> None:
        self.events.append((event, data))
        self.signal.fire()


class HttpFront:
    """The application state: the queue, the job records, the workers and the metrics registry."""

    def __init__(self, config: FrontConfig) -> None:
        self.config = config
        self.queue = AsyncQueue(
            config.capacity, config.policy, pool_id=config.pool_id, max_tokens_limit=config.max_tokens_limit
        )
        self.registry = CollectorRegistry()
        QueueCollector(self.registry).register_queue(self.queue)
        self.active: dict[str, JobRecord] = {}
        self.finished: OrderedDict[str, JobRecord] = OrderedDict()
        #: Queued jobs with an open event stream: told when positions may have moved.
        self.watched: set[JobRecord] = set()
        self._workers: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- records ------------------------------------------------------------------------
    def record(self, job_id: str) -> JobRecord | None:
        """The record of ``job_id`` (queued, running or recently finished), or None."""
        return self.active.get(job_id) or self.finished.get(job_id)

    def _finish(self, rec: JobRecord, state: str, event: str, data: dict[str, Any]) -> None:
        rec.state = state
        self.watched.discard(rec)
        rec.emit(event, data)
        self.active.pop(rec.job_id, None)
        if self.config.retain_finished:
            self.finished[rec.job_id] = rec
            self.finished.move_to_end(rec.job_id)
            while len(self.finished) > self.config.retain_finished:
                self.finished.popitem(last=False)

    def _positions_changed(self) -> None:
        """Wake the event streams of queued jobs: their position may have moved."""
        for rec in self.watched:
            rec.signal.fire()

    # -- admission ----------------------------------------------------------------------
    def submit(self, body: object) -> tuple[int, dict[str, str], dict[str, Any]]:
        """``(status, headers, body)`` for a ``POST /v2/tasks`` with the decoded JSON ``body``."""
        policy = self.queue.policy.value
        if not isinstance(body, dict):
            return _invalid(f"request body must be a JSON object, got {type(body).__name__}", policy)
        unknown = sorted(set(body) - set(TASK_FIELDS))
        if unknown:
            return _invalid(
                f"unknown field(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(TASK_FIELDS)}", policy
            )
        for name in ("model", "max_tokens"):
            if name not in body:
                return _invalid(f"missing required field {name!r}", policy)
        job_id = body.get("job_id")
        if isinstance(job_id, str) and job_id in self.active:
            return _invalid(f"job_id {job_id!r} is already queued or running", policy)
        try:
            task = Task(
                body["model"],
                body["max_tokens"],
                body.get("session_id"),
                priority=body.get("priority", Priority.INTERACTIVE.value),
                job_id=job_id,
                payload=body.get("prompt"),
            )
        except (TypeError, ValueError) as exc:
            return _invalid(str(exc), policy)
        res = self.queue.enqueue(task)
        if not res.accepted:
            return res.to_http()  # type: ignore[union-attr]
        # No await between the enqueue and the record: no worker can take the job before it exists.
        rec = JobRecord(res.job_id, task.model, task.priority.value)  # type: ignore[union-attr]
        self.active[rec.job_id] = rec
        position: int = res.position  # type: ignore[union-attr]
        rec.emit("queued", {"job_id": rec.job_id, "position": position})
        evicted: Job | None = res.evicted  # type: ignore[union-attr]
        if evicted is not None:
            victim = self.active.get(evicted.job_id)
            if victim is not None:
                self._finish(
                    victim,
                    "evicted",
                    "error",
                    {
                        "code": "EVICTED",
                        "job_id": evicted.job_id,
                        "message": f"evicted by the {policy} policy to admit job {rec.job_id}",
                        "evicted_by": rec.job_id,
                        "waited_ms": round(evicted.wait_ms, 3),
                    },
                )
        self._positions_changed()
        eta = eta_ms(position, self.queue.metrics().dequeue_rate_per_s)
        return (
            202,
            {"Location": f"/v2/tasks/{rec.job_id}"},
            {"job_id": rec.job_id, "queue_position": position, "eta_ms": eta},
        )

    def cancel(self, job_id: str) -> bool:
        """Cancel a queued job; False when it is not queued."""
        if not self.queue.cancel(job_id):
            return False
        rec = self.active.get(job_id)
        if rec is not None:
            self._finish(rec, "cancelled", "error", {"code": "CANCELLED", "job_id": job_id, "message": "cancelled"})
        self._positions_changed()
        return True

    # -- workers ------------------------------------------------------------------------
    def start(self) -> None:
        """Start the simulated workers (on the running loop)."""
        self._loop = asyncio.get_running_loop()
        self._workers = [asyncio.create_task(self._work(i), name=f"worker-{i}") for i in range(self.config.workers)]

    def begin_shutdown(self) -> None:
        """Stop admitting (``503 QUEUE_CLOSED``) and end the streams of queued jobs with ``SHUTDOWN``.

        Running jobs go on to their ``end``; then the workers stop (the queue is closed and empty).
        """
        self.queue.close()
        for job in self.queue.drain():
            rec = self.active.get(job.job_id)
            if rec is not None:
                self._finish(rec, "failed", "error", _shutdown(job.job_id, "the server is shutting down"))

    def request_shutdown(self) -> None:
        """``begin_shutdown`` on the app's loop, from any thread or a signal handler."""
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self.begin_shutdown)

    async def stop(self) -> None:
        """Close the queue, stop the workers and end every stream still open with ``SHUTDOWN``."""
        self.begin_shutdown()
        for t in self._workers:
            t.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        for rec in list(self.active.values()):
            self._finish(rec, "failed", "error", _shutdown(rec.job_id, "the server stopped before the job ended"))

    async def _work(self, worker: int) -> None:
        loop = asyncio.get_running_loop()
        per_token_s = 1.0 / self.config.tokens_per_second
        while True:
            job = await self.queue.dequeue()
            if job is None:  # closed and empty
                return
            self._positions_changed()
            rec = self.active.get(job.job_id)
            if rec is None:  # enqueued behind the front's back: nobody listens
                continue
            rec.state = "running"
            self.watched.discard(rec)
            rec.emit("started", {"job_id": job.job_id, "worker": worker, "wait_ms": round(job.wait_ms, 3)})
            started = loop.time()
            for i in range(job.task.max_tokens):
                # Token i is due at started + (i + 1) / rate: the rate holds however late the loop runs.
                delay = started + (i + 1) * per_token_s - loop.time()
                await asyncio.sleep(max(0.0, delay))
                rec.tokens = i + 1
                rec.emit("token", {"index": i, "text": f" tok{i}"})
            decode_ms = (loop.time() - started) * 1000
            self._finish(
                rec,
                "done",
                "end",
                {
                    "job_id": job.job_id,
                    "tokens": rec.tokens,
                    "finish_reason": "length",
                    "decode_ms": round(decode_ms, 3),
                },
            )

    # -- event stream -------------------------------------------------------------------
    async def events(self, rec: JobRecord, start: int) -> AsyncIterator[bytes]:
        """The SSE frames of ``rec`` from history index ``start``, live until a terminal event."""
        sent = start
        last_position = rec.events[0][1]["position"] if start > 0 and rec.events else None
        rec.watchers += 1
        if rec.state == "queued":
            self.watched.add(rec)
        try:
            while True:
                while sent < len(rec.events):
                    event, data = rec.events[sent]
                    if event == "queued":
                        last_position = data["position"]
                    yield _frame(event, data, sent)
                    sent += 1
                if rec.state in TERMINAL_STATES:
                    return
                if rec.state == "queued":
                    position = self.queue.position(rec.job_id)
                    if position is not None and position != last_position:
                        last_position = position
                        yield _frame("queued", {"job_id": rec.job_id, "position": position}, None)
                n = len(rec.events)
                await rec.signal.wait(self.config.heartbeat_s)
                if len(rec.events) == n and rec.state == "queued" and self.queue.position(rec.job_id) == last_position:
                    yield b": keep-alive\n\n"
        finally:
            rec.watchers -= 1
            if not rec.watchers:
                self.watched.discard(rec)


def _frame(event: str, data: dict[str, Any], event_id: int | None) -> bytes:
    head = "" if event_id is None else f"id: {event_id}\n"
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def _shutdown(job_id: str, message: str) -> dict[str, Any]:
    return {"code": "SHUTDOWN", "job_id": job_id, "message": message}


def _invalid(message: str, policy: str) -> tuple[int, dict[str, str], dict[str, Any]]:
    # The same body shape as Rejected.to_http(), so clients parse one kind of error.
    body = {
        "code": "INVALID_REQUEST",
        "message": message,
        "policy_label": policy,
        "retriable": False,
        "retry_after_ms": 0,
    }
    return 400, {}, body


def _not_found(job_id: str, what: str = "is not known") -> JSONResponse:
    return JSONResponse({"code": "NOT_FOUND", "message": f"job {job_id!r} {what}"}, status_code=404)


def create_app(config: FrontConfig | None = None) -> Starlette:
    """The ASGI application (``config`` defaults to ``FrontConfig.from_env()``)."""
    front = HttpFront(FrontConfig.from_env() if config is None else config)

    async def post_task(request: Request) -> Response:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            status, headers, body = _invalid(f"request body is over {MAX_BODY_BYTES} bytes", front.queue.policy.value)
            return JSONResponse(body, status_code=413)
        try:
            decoded = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            status, headers, body = _invalid(f"request body is not valid JSON: {exc}", front.queue.policy.value)
        else:
            status, headers, body = front.submit(decoded)
        return JSONResponse(body, status_code=status, headers=headers)

    async def get_task(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        rec = front.record(job_id)
        if rec is None:
            return _not_found(job_id)
        position = front.queue.position(job_id) if rec.state == "queued" else None
        return JSONResponse(
            {
                "job_id": job_id,
                "state": rec.state,
                "position": position,
                "model": rec.model,
                "priority": rec.priority,
                "tokens": rec.tokens,
            }
        )

    async def delete_task(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        if front.cancel(job_id):
            return Response(status_code=204)
        return _not_found(job_id, "is not queued")

    async def task_events(request: Request) -> Response:
        job_id = request.path_params["job_id"]
        rec = front.record(job_id)
        if rec is None:
            return _not_found(job_id)
        start = 0
        last_id = request.headers.get("last-event-id")
        if last_id is not None and last_id.isdigit():
            start = min(int(last_id) + 1, len(rec.events))
        return StreamingResponse(
            front.events(rec, start),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    async def metrics(request: Request) -> Response:
        return Response(generate_latest(front.registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "engine": ENGINE, "pool_id": front.queue.pool_id})

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        front.start()
        try:
            yield
        finally:
            await front.stop()

    app = Starlette(
        routes=[
            Route("/v2/tasks", post_task, methods=["POST"]),
            Route("/v2/tasks/{job_id}", get_task, methods=["GET"]),
            Route("/v2/tasks/{job_id}", delete_task, methods=["DELETE"]),
            Route("/v2/tasks/{job_id}/events", task_events, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.front = front
    return app


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m examples.http_front``: serve the front with uvicorn (``--help`` for the options)."""
    import uvicorn

    env = FrontConfig.from_env()
    p = argparse.ArgumentParser(prog="python -m examples.http_front", description=__doc__.split("\n\n")[0])
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (0: any free port, printed at start)")
    p.add_argument("--capacity", type=int, default=env.capacity)
    p.add_argument("--policy", default=env.policy, choices=[m.value for m in AdmissionPolicy])
    p.add_argument("--workers", type=int, default=env.workers, help="simulated workers (asyncio tasks)")
    p.add_argument("--tokens-per-second", type=float, default=env.tokens_per_second, help="per worker")
    p.add_argument("--pool-id", default=env.pool_id)
    p.add_argument("--max-tokens-limit", type=int, default=env.max_tokens_limit)
    p.add_argument("--heartbeat", type=float, default=env.heartbeat_s, help="seconds between SSE keep-alives")
    p.add_argument("--log-level", default="info")
    p.add_argument("--no-access-log", action="store_true")
    args = p.parse_args(argv)
    config = FrontConfig(
        capacity=args.capacity,
        policy=args.policy,
        workers=args.workers,
        tokens_per_second=args.tokens_per_second,
        pool_id=args.pool_id,
        max_tokens_limit=args.max_tokens_limit,
        heartbeat_s=args.heartbeat,
    )
    # Bind here so that --port 0 works and the real port is printed before serving.
    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    host, port = sock.getsockname()[:2]
    print(f"http_front listening on http://{host}:{port} (engine {ENGINE})", flush=True)
    app = create_app(config)
    front: HttpFront = app.state.front

    class Server(uvicorn.Server):
        # uvicorn waits for open responses before the lifespan shutdown: end the event
        # streams of queued jobs at the signal, so that only running jobs hold it up.
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            front.request_shutdown()
            super().handle_exit(sig, frame)

    config_ = uvicorn.Config(
        app, log_level=args.log_level, access_log=not args.no_access_log, timeout_graceful_shutdown=5
    )
    Server(config_).run(sockets=[sock])


#: For ``uvicorn examples.http_front.app:app`` (configured from the environment).
app = create_app()

if __name__ == "__main__":
    main(sys.argv[1:])
