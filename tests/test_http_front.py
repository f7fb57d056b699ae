"""End-to-end tests of the reference HTTP front (examples/http_front) on a real server.

Each server is ``python -m examples.http_front --port 0`` in a subprocess on 127.0.0.1,
driven with httpx; the fixture finalizer always terminates it. Every server runs once per
engine (``c``, deselected on the pure-only run, and ``py``, forced with
``ORCHESTRATOR_CORE_NO_EXTENSIONS``). Skipped when the examples are absent (the wheel tests
run from a copy of tests/) or when starlette / uvicorn / httpx / prometheus_client are not
installed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
if not (REPO_ROOT / "examples" / "http_front" / "app.py").is_file():
    pytest.skip("examples/http_front is not next to tests/ (installed-wheel run)", allow_module_level=True)

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")
prom_parser = pytest.importorskip("prometheus_client.parser")

import orchestrator_core  # noqa: E402

PKG_PARENT = str(Path(orchestrator_core.__file__).resolve().parents[1])
START_TIMEOUT_S = 30.0
TIMEOUT = httpx.Timeout(15.0)


# -- the server ---------------------------------------------------------------------------
@dataclass
class Server:
    """A running front: its base URL, its log and the options it was started with."""

    base_url: str
    log: Path
    options: dict[str, Any]
    proc: subprocess.Popen[bytes]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def _start(engine: str, options: dict[str, Any], log: Path) -> Server:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PKG_PARENT, str(REPO_ROOT)])
    env.pop("ORCHESTRATOR_CORE_NO_EXTENSIONS", None)
    env.pop("ORCHESTRATOR_CORE_REQUIRE_EXTENSION", None)
    env["ORCHESTRATOR_CORE_" + ("REQUIRE_EXTENSION" if engine == "c" else "NO_EXTENSIONS")] = "1"
    argv = [sys.executable, "-m", "examples.http_front", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--log-level", "warning", "--no-access-log"]
    for k, v in options.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=str(REPO_ROOT))
    server = None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while server is None:
            m = re.search(r"listening on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
            if m:
                server = Server(m.group(1), log, options, proc)
            elif proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{log.read_text(errors='replace')}")
            else:
                time.sleep(0.05)
        while True:  # bound, but uvicorn may not listen yet
            try:
                r = httpx.get(server.base_url + "/healthz", timeout=2.0)
                if r.status_code == 200:
                    return server
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server is not healthy:\n{server.log_text()}")
            time.sleep(0.05)
    except BaseException:
        _stop(proc)
        raise


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture(scope="module", params=[pytest.param("c", marks=pytest.mark.c_extension), "py"])
def engine(request: pytest.FixtureRequest) -> str:
    """The engine the servers of this module run on."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def servers(engine: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """``servers(**options)``: a server with these command-line options (one per options, per engine)."""
    started: dict[tuple[tuple[str, Any], ...], Server] = {}

    def get(**options: Any) -> Server:
        key = tuple(sorted(options.items()))
        if key not in started:
            log = tmp_path_factory.mktemp("http_front") / "server.log"
            started[key] = _start(engine, options, log)
        return started[key]

    try:
        yield get
    finally:
        for server in started.values():
            _stop(server.proc)


IDLE = {"workers": 0, "capacity": 3, "policy": "reject-new"}  # nothing is ever dequeued
LRU = {"workers": 0, "capacity": 2, "policy": "drop-lru"}
LIVE = {"workers": 1, "capacity": 8, "policy": "reject-new", "tokens_per_second": 200}


@pytest.fixture
def idle(servers: Callable[..., Server]) -> Iterator[Server]:
    """The idle server, left empty by every test (each cancels what it queued)."""
    server = servers(**IDLE)
    yield server
    assert _depth(server) == 0, "a test left jobs queued"


@pytest.fixture
def lru(servers: Callable[..., Server]) -> Iterator[Server]:
    """The idle DROP_LRU server, left empty by every test."""
    server = servers(**LRU)
    yield server
    assert _depth(server) == 0, "a test left jobs queued"


# -- helpers ------------------------------------------------------------------------------
def _post(server: Server, body: Any) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.base_url + "/v2/tasks", content=content, timeout=TIMEOUT)


def _admit(server: Server, **body: Any) -> str:
    r = _post(server, {"model": "llama-3.1-8b", "max_tokens": 4, **body})
    assert r.status_code == 202, r.text
    return str(r.json()["job_id"])


def _cancel(server: Server, job_id: str) -> int:
    return httpx.delete(f"{server.base_url}/v2/tasks/{job_id}", timeout=TIMEOUT).status_code


def _scrape(text: str) -> dict[str, float]:
    """``{"name{label=value,...}": value}`` of every sample (labels sorted)."""
    out = {}
    for family in prom_parser.text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()) if k != "pool_id")
            out[f"{s.name}{{{labels}}}"] = s.value
    return out


def _metrics(server: Server) -> dict[str, float]:
    r = httpx.get(server.base_url + "/metrics", timeout=TIMEOUT)
    assert r.status_code == 200
    return _scrape(r.text)


def _depth(server: Server) -> int:
    m = _metrics(server)
    return int(
        m["orchd_admission_queue_depth{priority=interactive}"] + m["orchd_admission_queue_depth{priority=batch}"]
    )


@dataclass
class Event:
    """One server-sent event."""

    event: str
    data: dict[str, Any]
    id: str | None = None


def _sse_events(lines: Iterator[str]) -> Iterator[Event]:
    """Parse server-sent events (comments skipped) from an iterator of lines."""
    fields: dict[str, list[str]] = {}
    for line in lines:
        if line == "":
            if "data" in fields:
                ident = fields.get("id", [None])[-1]
                yield Event(fields.get("event", ["message"])[-1], json.loads("\n".join(fields["data"])), ident)
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(":")
            fields.setdefault(name, []).append(value[1:] if value.startswith(" ") else value)


@contextlib.contextmanager
def _stream(server: Server, job_id: str, headers: dict[str, str] | None = None) -> Iterator[Iterator[Event]]:
    with (
        httpx.Client(timeout=TIMEOUT) as client,
        client.stream("GET", f"{server.base_url}/v2/tasks/{job_id}/events", headers=headers) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["cache-control"] == "no-cache"
        yield _sse_events(r.iter_lines())


# -- unit ---------------------------------------------------------------------------------
def test_eta_is_position_over_dequeue_rate_and_unknown_without_a_rate() -> None:
    from examples.http_front.app import eta_ms

    assert eta_ms(5, 10.0) == 500
    assert eta_ms(0, 10.0) == 0
    assert eta_ms(3, 0.0) is None


# -- end to end ---------------------------------------------------------------------------
def test_healthz_reports_the_engine_in_use(idle: Server, engine: str) -> None:
    r = httpx.get(idle.base_url + "/healthz", timeout=TIMEOUT)
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "engine": engine, "pool_id": "pool-0"}


def test_post_accepted_is_202_with_position_and_eta_then_get_and_delete(idle: Server) -> None:
    r1 = _post(idle, {"model": "llama-3.1-8b", "max_tokens": 16, "session_id": "s-1"})
    r2 = _post(idle, {"model": "llama-3.1-8b", "max_tokens": 16, "priority": "batch", "job_id": "caller-key"})
    try:
        assert (r1.status_code, r2.status_code) == (202, 202)
        first, second = r1.json(), r2.json()
        assert set(first) == {"job_id", "queue_position", "eta_ms"}
        assert first["queue_position"] == 0 and second == {"job_id": "caller-key", "queue_position": 1, "eta_ms": None}
        assert first["eta_ms"] is None  # nothing was ever dequeued: the rate is unknown
        assert r1.headers["location"] == f"/v2/tasks/{first['job_id']}"

        got = httpx.get(f"{idle.base_url}/v2/tasks/caller-key", timeout=TIMEOUT)
        assert got.status_code == 200
        assert got.json() == {
            "job_id": "caller-key",
            "state": "queued",
            "position": 1,
            "model": "llama-3.1-8b",
            "priority": "batch",
            "tokens": 0,
        }
        # An interactive job admitted later goes ahead of the batch one.
        third = _admit(idle, priority="interactive")
        assert httpx.get(f"{idle.base_url}/v2/tasks/caller-key", timeout=TIMEOUT).json()["position"] == 2
        assert _cancel(idle, third) == 204

        assert _cancel(idle, first["job_id"]) == 204
        assert httpx.get(f"{idle.base_url}/v2/tasks/caller-key", timeout=TIMEOUT).json()["position"] == 0
        assert _cancel(idle, first["job_id"]) == 404  # no longer queued
        gone = httpx.get(f"{idle.base_url}/v2/tasks/{first['job_id']}", timeout=TIMEOUT).json()
        assert (gone["state"], gone["position"]) == ("cancelled", None)
    finally:
        _cancel(idle, "caller-key")


def test_full_queue_is_429_with_retry_after_backoff_and_rejected_body(idle: Server) -> None:
    ids = [_admit(idle) for _ in range(IDLE["capacity"])]
    try:
        before = _metrics(idle)
        r = _post(idle, {"model": "llama-3.1-8b", "max_tokens": 4})
        assert r.status_code == 429
        # Nothing was ever dequeued: the adaptive hint is its 1000 ms default.
        assert r.headers["retry-after"] == "1"
        assert r.headers["x-backoff-ms"] == "1000"
        assert r.headers["content-type"] == "application/json"
        body = r.json()
        assert body.pop("message").startswith("queue 'pool-0' is full")
        assert body == {"code": "QUEUE_FULL", "policy_label": "reject-new", "retriable": True, "retry_after_ms": 1000}
        after = _metrics(idle)
        key = "orchd_admission_rejected_total{reason=QUEUE_FULL}"
        assert after[key] == before[key] + 1
    finally:
        assert [_cancel(idle, i) for i in ids] == [204] * len(ids)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"{not json", "request body is not valid JSON"),
        (b"\xff\xfe", "request body is not valid JSON"),
        ([1, 2], "request body must be a JSON object, got list"),
        ({"max_tokens": 4}, "missing required field 'model'"),
        ({"model": "m"}, "missing required field 'max_tokens'"),
        ({"model": "m", "max_tokens": 4, "temperature": 0.2}, "unknown field(s) 'temperature'"),
        ({"model": "m", "max_tokens": 4.0}, "max_tokens"),
        ({"model": "m", "max_tokens": 0}, "max_tokens"),
        ({"model": "m", "max_tokens": True}, "max_tokens"),
        ({"model": "", "max_tokens": 4}, "model"),
        ({"model": "m", "max_tokens": 4, "priority": "urgent"}, "priority"),
        ({"model": "m", "max_tokens": 4, "session_id": 7}, "session_id"),
    ],
)
def test_invalid_body_is_400_with_a_clear_message_and_enqueues_nothing(
    idle: Server, content: Any, message: str
) -> None:
    before = _metrics(idle)
    r = _post(idle, content if isinstance(content, bytes) else json.dumps(content))
    assert r.status_code == 400
    body = r.json()
    assert body["code"] == "INVALID_REQUEST" and body["retriable"] is False
    assert message in body["message"]
    assert "retry-after" not in r.headers
    after = _metrics(idle)
    assert (
        after["orchd_admission_enqueued_total{outcome=accepted}"]
        == before["orchd_admission_enqueued_total{outcome=accepted}"]
    )


def test_library_refusal_of_a_queued_job_id_is_400(idle: Server) -> None:
    job = _admit(idle, job_id="dup-1")
    try:
        r = _post(idle, {"model": "m", "max_tokens": 4, "job_id": "dup-1"})
        assert r.status_code == 400
        assert r.json()["code"] == "INVALID_REQUEST" and "dup-1" in r.json()["message"]
    finally:
        assert _cancel(idle, job) == 204


def test_unknown_job_is_404_everywhere(idle: Server) -> None:
    base = idle.base_url + "/v2/tasks/no-such-job"
    assert httpx.get(base, timeout=TIMEOUT).status_code == 404
    assert httpx.delete(base, timeout=TIMEOUT).status_code == 404
    r = httpx.get(base + "/events", timeout=TIMEOUT)
    assert r.status_code == 404 and r.json()["code"] == "NOT_FOUND"


def test_events_follow_position_changes_then_cancel_while_queued_ends_the_stream(idle: Server) -> None:
    a, b, c = _admit(idle), _admit(idle), _admit(idle)
    try:
        with _stream(idle, c) as events:
            first = next(events)
            assert (first.event, first.data, first.id) == ("queued", {"job_id": c, "position": 2}, "0")
            assert _cancel(idle, a) == 204
            assert next(events) == Event("queued", {"job_id": c, "position": 1})
            assert _cancel(idle, b) == 204
            assert next(events) == Event("queued", {"job_id": c, "position": 0})
            assert _cancel(idle, c) == 204
            end = next(events)
            assert (end.event, end.data["code"], end.data["job_id"]) == ("error", "CANCELLED", c)
            assert list(events) == []  # the server closed the stream
    finally:
        for job in (a, b, c):
            _cancel(idle, job)
    assert httpx.get(f"{idle.base_url}/v2/tasks/{c}", timeout=TIMEOUT).json()["state"] == "cancelled"


def test_drop_lru_eviction_reaches_the_evicted_client_as_an_error_event(lru: Server) -> None:
    a = _admit(lru, priority="batch")
    b = _admit(lru, priority="batch")
    try:
        with _stream(lru, a) as events:
            assert next(events).event == "queued"
            r = _post(lru, {"model": "m", "max_tokens": 4, "priority": "batch"})
            assert r.status_code == 202
            c = r.json()["job_id"]
            err = next(events)
            assert err.event == "error"
            assert err.data["code"] == "EVICTED" and err.data["job_id"] == a and err.data["evicted_by"] == c
            assert "drop-lru" in err.data["message"]
            assert list(events) == []
        assert httpx.get(f"{lru.base_url}/v2/tasks/{a}", timeout=TIMEOUT).json()["state"] == "evicted"
        assert _cancel(lru, a) == 404
        assert _metrics(lru)["orchd_admission_evicted_total{}"] >= 1
        # Queue full of interactive work: a batch task evicts nothing and is refused.
        assert [_cancel(lru, b), _cancel(lru, c)] == [204, 204]
        i1, i2 = _admit(lru), _admit(lru)
        r = _post(lru, {"model": "m", "max_tokens": 4, "priority": "batch"})
        assert r.status_code == 429 and r.json()["code"] == "QUEUE_FULL"
        assert int(r.headers["x-backoff-ms"]) >= 1 and int(r.headers["retry-after"]) >= 1
        assert [_cancel(lru, i1), _cancel(lru, i2)] == [204, 204]
    finally:
        for job in (a, b):
            _cancel(lru, job)


def test_events_are_queued_started_tokens_end_in_order(servers: Callable[..., Server]) -> None:
    live = servers(**LIVE)
    job = _admit(live, max_tokens=5)
    with _stream(live, job) as events:
        got = list(events)
    assert [e.event for e in got] == ["queued", "started"] + ["token"] * 5 + ["end"]
    assert [e.id for e in got] == [str(i) for i in range(8)]
    assert [e.data["index"] for e in got if e.event == "token"] == list(range(5))
    assert got[1].data["job_id"] == job and got[1].data["wait_ms"] >= 0
    assert got[-1].data["job_id"] == job and got[-1].data["tokens"] == 5
    state = httpx.get(f"{live.base_url}/v2/tasks/{job}", timeout=TIMEOUT).json()
    assert (state["state"], state["position"], state["tokens"]) == ("done", None, 5)
    assert _cancel(live, job) == 404  # running or finished jobs cannot be cancelled
    # A client that reconnects with Last-Event-ID gets the rest only.
    with _stream(live, job, headers={"Last-Event-ID": "4"}) as events:
        rest = list(events)
    assert [e.id for e in rest] == ["5", "6", "7"] and rest[-1].event == "end"


def test_metrics_is_prometheus_exposition_of_this_queue(servers: Callable[..., Server]) -> None:
    live = servers(**LIVE)
    job = _admit(live, max_tokens=2)
    with _stream(live, job) as events:
        assert [e.event for e in events][-1] == "end"
    r = httpx.get(live.base_url + "/metrics", timeout=TIMEOUT)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain; version=")
    assert 'pool_id="pool-0"' in r.text
    m = _scrape(r.text)
    assert m["orchd_admission_queue_capacity{}"] == LIVE["capacity"]
    accepted = m["orchd_admission_enqueued_total{outcome=accepted}"]
    assert accepted >= 1 and m["orchd_admission_dequeued_total{}"] >= 1
    balance = sum(m[f"orchd_admission_{k}_total{{}}"] for k in ("dequeued", "cancelled", "evicted", "drained"))
    depth = m["orchd_admission_queue_depth{priority=interactive}"] + m["orchd_admission_queue_depth{priority=batch}"]
    assert accepted == balance + depth
    assert m["orchd_queue_wait_time_ms_count{}"] == m["orchd_admission_dequeued_total{}"]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is TerminateProcess on Windows")
def test_sigterm_ends_queued_streams_with_shutdown_and_the_server_exits(engine: str, tmp_path: Path) -> None:
    server = _start(engine, IDLE, tmp_path / "server.log")
    try:
        _admit(server)  # ahead of the job followed
        queued = _admit(server)
        with _stream(server, queued) as events:
            assert next(events) == Event("queued", {"job_id": queued, "position": 1}, "0")
            server.proc.terminate()
            err = next(events)
            assert (err.event, err.data["code"], err.data["job_id"]) == ("error", "SHUTDOWN", queued)
            assert list(events) == []
        # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM, not 0.
        assert server.proc.wait(timeout=20) in (0, -signal.SIGTERM), server.log_text()
        assert "Traceback" not in server.log_text()
    finally:
        _stop(server.proc)


# -- bounded load -------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What a load run saw."""

    statuses: dict[int, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)
    admission_latency_s: list[float] = field(default_factory=list)
    gave_up: int = 0
    delete_204: int = 0
    max_depth: int = 0
    polls: int = 0
    retries: int = 0
    elapsed_s: float = 0.0
    problems: list[str] = field(default_factory=list)

    def count(self, table: dict[Any, int], key: Any) -> None:
        table[key] = table.get(key, 0) + 1


async def run_load(
    base_url: str,
    *,
    requests: int,
    concurrency: int,
    capacity: int,
    max_retries: int,
    batch_share: float,
    invalid_every: int = 20,
    cancel_every: int = 6,
    max_tokens: int = 6,
    seed: int = 1,
) -> LoadReport:
    """``requests`` POSTs from ``concurrency`` clients, each following its job's events to the end.

    A client that gets 429 waits the advised delay (``X-Backoff-Ms``, of which ``Retry-After``
    is the whole-second ceiling) with up to 50% jitter and retries, at most ``max_retries``
    times. Every ``invalid_every``-th request has an invalid body; every ``cancel_every``-th
    admitted job is cancelled at once. ``/metrics`` is polled all along for the depth.
    """
    rep = LoadReport()
    rng = random.Random(seed)
    todo = iter(range(requests))
    done = asyncio.Event()
    limits = httpx.Limits(max_connections=2 * concurrency + 8, max_keepalive_connections=2 * concurrency + 8)

    async with httpx.AsyncClient(base_url=base_url, timeout=httpx.Timeout(30.0), limits=limits) as client:

        async def poll_metrics() -> None:
            while not done.is_set():
                r = await client.get("/metrics")
                m = _scrape(r.text)
                depth = m["orchd_admission_queue_depth{priority=interactive}"]
                depth += m["orchd_admission_queue_depth{priority=batch}"]
                rep.max_depth = max(rep.max_depth, int(depth))
                rep.polls += 1
                if depth > m["orchd_admission_queue_capacity{}"]:
                    rep.problems.append(f"depth {depth} over capacity")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(done.wait(), 0.02)

        async def follow(job_id: str, cancelled: bool) -> None:
            async with client.stream("GET", f"/v2/tasks/{job_id}/events") as r:
                lines: list[str] = []
                async for line in r.aiter_lines():
                    lines.append(line)
            events = list(_sse_events(iter(lines)))
            last = events[-1] if events else None
            if last is None or last.event not in ("end", "error"):
                rep.problems.append(f"{job_id}: stream ended without a terminal event: {events!r}")
                return
            outcome = "end" if last.event == "end" else last.data["code"]
            rep.count(rep.outcomes, outcome)
            if events[0].event != "queued":
                rep.problems.append(f"{job_id}: first event {events[0].event}")
            if outcome == "end":
                kinds = [e.event for e in events if e.event != "queued"]
                if kinds != ["started"] + ["token"] * max_tokens + ["end"]:
                    rep.problems.append(f"{job_id}: events out of order: {kinds}")
            if (outcome == "CANCELLED") != cancelled:
                rep.problems.append(f"{job_id}: outcome {outcome} but DELETE said cancelled={cancelled}")

        async def one_client() -> None:
            for i in todo:
                invalid = i % invalid_every == invalid_every - 1
                body: dict[str, Any] = {"model": "llama-3.1-8b", "max_tokens": 0 if invalid else max_tokens}
                if rng.random() < batch_share:
                    body["priority"] = "batch"
                for attempt in range(max_retries + 1):
                    t0 = time.perf_counter()
                    r = await client.post("/v2/tasks", json=body)
                    rep.admission_latency_s.append(time.perf_counter() - t0)
                    rep.count(rep.statuses, r.status_code)
                    if r.status_code != 429:
                        break
                    backoff_ms = int(r.headers["x-backoff-ms"])
                    if r.headers["retry-after"] != str(max(1, math.ceil(backoff_ms / 1000))):
                        rep.problems.append(f"Retry-After {r.headers['retry-after']} for X-Backoff-Ms {backoff_ms}")
                    if attempt == max_retries:
                        rep.gave_up += 1
                        break
                    rep.retries += 1
                    await asyncio.sleep(backoff_ms / 1000 * (1 + 0.5 * rng.random()))
                if (r.status_code == 400 and not invalid) or r.status_code not in (202, 400, 429):
                    rep.problems.append(f"unexpected {r.status_code}: {r.text}")
                if r.status_code != 202:
                    continue
                job_id = r.json()["job_id"]
                cancelled = False
                if i % cancel_every == 0:
                    status = (await client.delete(f"/v2/tasks/{job_id}")).status_code
                    cancelled = status == 204
                    rep.delete_204 += cancelled
                    if status not in (204, 404):
                        rep.problems.append(f"DELETE gave {status}")
                await follow(job_id, cancelled)

        t0 = time.perf_counter()
        poller = asyncio.create_task(poll_metrics())
        try:
            await asyncio.gather(*(one_client() for _ in range(concurrency)))
        finally:
            rep.elapsed_s = time.perf_counter() - t0
            done.set()
            await poller
    return rep


LOAD_REQUESTS = 300
LOAD_CAPACITY = 8


@pytest.mark.parametrize(("policy", "batch_share"), [("reject-new", 0.0), ("drop-lru", 0.3)])
def test_bounded_load_every_request_is_answered_and_every_job_accounted_for(
    servers: Callable[..., Server], policy: str, batch_share: float
) -> None:
    server = servers(workers=2, capacity=LOAD_CAPACITY, policy=policy, tokens_per_second=200)
    before = _metrics(server)
    rep = asyncio.run(
        run_load(
            server.base_url,
            requests=LOAD_REQUESTS,
            concurrency=24,
            capacity=LOAD_CAPACITY,
            max_retries=200,
            batch_share=batch_share,
        )
    )
    after = _metrics(server)

    def delta(key: str) -> int:
        return int(after[key] - before.get(key, 0))

    assert rep.problems == [], "\n".join(rep.problems[:20])
    assert set(rep.statuses) <= {202, 400, 429}
    # The pool (2 workers x ~33 jobs/s) is slower than the clients: the queue fills up.
    full = (
        rep.statuses.get(429, 0)
        if policy == "reject-new"
        else rep.statuses.get(429, 0) + rep.outcomes.get("EVICTED", 0)
    )
    assert full > 0, "the load never filled the queue"
    assert rep.statuses[400] == LOAD_REQUESTS // 20
    assert rep.gave_up == 0  # clients that honour the back-off are admitted
    admitted = LOAD_REQUESTS - rep.statuses[400]
    assert rep.statuses[202] == admitted
    assert sum(rep.outcomes.values()) == admitted
    assert set(rep.outcomes) <= {"end", "CANCELLED", "EVICTED"}
    assert rep.outcomes.get("CANCELLED", 0) == rep.delete_204
    if policy == "reject-new":
        assert "EVICTED" not in rep.outcomes
    assert rep.polls >= 3 and rep.max_depth <= LOAD_CAPACITY
    # The queue's own counters agree with what the clients saw.
    assert delta("orchd_admission_enqueued_total{outcome=accepted}") == admitted
    assert delta("orchd_admission_rejected_total{reason=QUEUE_FULL}") == rep.statuses.get(429, 0)
    assert delta("orchd_admission_dequeued_total{}") == rep.outcomes.get("end", 0)
    assert delta("orchd_admission_cancelled_total{}") == rep.delete_204
    assert delta("orchd_admission_evicted_total{}") == rep.outcomes.get("EVICTED", 0)
    assert _depth(server) == 0
