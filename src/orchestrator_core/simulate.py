"""A discrete-event simulation of an inference pool behind the real admission ``Queue``.

The queue under test is the library's own ``Queue`` (either engine), constructed with
``clock=lambda: sim.now``: it sees a virtual clock, so an hour of traffic runs in seconds
and a seed always gives the same report. Events (arrivals, service completions, client
retries, client give-ups) sit in a heap ordered by virtual time, ties broken by the order
they were scheduled.

* Traffic: Poisson arrivals at ``rate`` requests per second (or ``load`` times the pool's
  mean service capacity), or a bursty pattern whose bursts run at ``burst_factor`` times the
  quiet rate for ``burst_length_s`` of every ``burst_every_s`` seconds, with the same mean.
  Each request is INTERACTIVE with probability ``interactive_share``, else BATCH. Traffic
  draws from its own ``random.Random(seed)``, in arrival order, and nothing else does: the
  same seed gives the same requests under every policy (``--compare``).
* Service: ``slots`` workers; a worker whose slot frees calls ``queue.dequeue()``. A job
  takes ``first_token_ms + prompt_tokens / prefill_tokens_per_s + output_tokens /
  tokens_per_s`` seconds; token counts are log-normal with the configured means and
  log-spread ``token_sigma`` (0: every request has exactly the means).
* Clients: a refused client retries up to ``max_retries`` times. A share
  ``honour_retry_after`` of clients waits the ``Retry-After`` the queue suggested; the others
  retry after a fixed ``retry_delay_ms``. With ``patience_s`` > 0 a client whose job is
  still queued that long after admission cancels it (``queue.cancel``).
* End: arrivals stop at ``duration_s``; the queue is closed and drained (those jobs count as
  ``drained``), retries not yet made count as refused (``retry_pending_at_end``), and jobs
  in service finish (they count as ``completed`` and ``in_service_at_end``).

Accounting (checked in ``accounting_ok``, per priority and in total)::

    offered == accepted + rejected_total(requests, not attempts)
    accepted == completed + evicted + cancelled + drained

and the queue's own counters (``queue_counters``) match the simulation's tallies.

The report (``simulate()``, ``--json``) is JSON-ready; its fields are described, field by
field, in ``REPORT_SCHEMA`` (a JSON Schema, draft 2020-12) and ``SCHEMA_VERSION`` changes
whenever a field changes meaning or disappears. Percentiles are exact nearest-rank values
of the recorded ``Job.wait_ms`` of dequeued jobs: the p-th percentile of ``n`` sorted waits
is the ``ceil(p/100 * n)``-th.
"""

from __future__ import annotations

import dataclasses
import enum
import heapq
import importlib
import json
import math
import random
import sys
from collections.abc import Callable, Sequence
from typing import Any, Final

from ._types import AdmissionPolicy, Priority, RejectionReason

__all__ = [
    "PATTERNS",
    "POLICIES",
    "PRIORITIES",
    "REPORT_SCHEMA",
    "SCHEMA_VERSION",
    "RequestState",
    "SimConfig",
    "SimRequest",
    "Simulation",
    "format_report",
    "nearest_rank",
    "report_to_json",
    "simulate",
    "sparkline",
    "write_plot",
]

#: Version of the report's layout (``schema_version`` in every report).
SCHEMA_VERSION: Final = 1
#: Arrival patterns ``SimConfig.pattern`` accepts.
PATTERNS: Final = ("poisson", "bursty")
#: Every policy, in the order ``--compare`` runs them.
POLICIES: Final = tuple(p.value for p in AdmissionPolicy)
#: The priorities, in the report's order.
PRIORITIES: Final = tuple(p.value for p in Priority)
REASONS: Final = tuple(r.value for r in RejectionReason)
_PRIO_MEMBERS: Final = (Priority.INTERACTIVE, Priority.BATCH)
_MAX_SAMPLES: Final = 10_000


class RequestState(enum.IntEnum):
    """Where a simulated request is (``SimRequest.state``); the last five are final."""

    NEW = 0
    QUEUED = 1
    SERVING = 2
    RETRY_WAIT = 3  # refused, a retry is scheduled (final when the run ends first)
    COMPLETED = 4
    EVICTED = 5
    CANCELLED = 6
    DRAINED = 7
    REJECTED = 8


NEW: Final = RequestState.NEW
QUEUED: Final = RequestState.QUEUED
SERVING: Final = RequestState.SERVING
RETRY_WAIT: Final = RequestState.RETRY_WAIT
COMPLETED: Final = RequestState.COMPLETED
EVICTED: Final = RequestState.EVICTED
CANCELLED: Final = RequestState.CANCELLED
DRAINED: Final = RequestState.DRAINED
REJECTED: Final = RequestState.REJECTED

# Event kinds, in the heap as (time, seq, kind, request).
_ARRIVAL: Final = 0
_RETRY: Final = 1
_DONE: Final = 2
_GIVE_UP: Final = 3
_END: Final = 4


# ---------------------------------------------------------------------------------------
# Configuration


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclasses.dataclass(frozen=True)
class SimConfig:
    """One simulated scenario; every field has a default that makes an overloaded pool.

    Invalid values raise ``ValueError`` (``TypeError`` for a wrong type) naming the field
    and the value. ``rate`` (requests per second) wins over ``load`` (a multiple of the
    pool's mean service capacity ``slots / mean_service_s``) when both are given.
    """

    capacity: int = 64
    policy: str = "reject-new"
    rate: float | None = None
    load: float = 1.3
    pattern: str = "poisson"
    burst_factor: float = 4.0
    burst_every_s: float = 60.0
    burst_length_s: float = 10.0
    interactive_share: float = 0.7
    slots: int = 32
    prompt_tokens: float = 512.0
    output_tokens: float = 200.0
    token_sigma: float = 0.75
    tokens_per_s: float = 60.0
    prefill_tokens_per_s: float = 8000.0
    first_token_ms: float = 50.0
    duration_s: float = 3600.0
    seed: int = 1
    max_retries: int = 3
    honour_retry_after: float = 0.5
    retry_delay_ms: float = 10.0
    patience_s: float = 0.0
    samples: int = 120
    model: str = "llama-3.1-8b"

    def __post_init__(self) -> None:
        for name in ("capacity", "slots", "samples"):
            _check_int(name, getattr(self, name), 1)
        _check_int("max_retries", self.max_retries, 0)
        if not _is_int(self.seed):
            raise TypeError(f"seed must be an int, got {self.seed!r}")
        if self.samples > _MAX_SAMPLES:
            raise ValueError(f"samples must be at most {_MAX_SAMPLES}, got {self.samples!r}")
        try:
            policy = AdmissionPolicy.parse(self.policy, "policy").value
        except ValueError:
            raise ValueError(f"policy must be one of {', '.join(POLICIES)}, got {self.policy!r}") from None
        object.__setattr__(self, "policy", policy)
        if self.pattern not in PATTERNS:
            raise ValueError(f"pattern must be one of {', '.join(PATTERNS)}, got {self.pattern!r}")
        if self.rate is not None:
            _check_real("rate", self.rate, positive=True)
        for name in ("load", "tokens_per_s", "prefill_tokens_per_s", "duration_s", "burst_every_s"):
            _check_real(name, getattr(self, name), positive=True)
        for name in ("first_token_ms", "retry_delay_ms", "patience_s", "token_sigma"):
            _check_real(name, getattr(self, name), positive=False)
        for name in ("prompt_tokens", "output_tokens"):
            _check_real(name, getattr(self, name), positive=True)
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)!r}")
        for name in ("interactive_share", "honour_retry_after"):
            value = getattr(self, name)
            _check_real(name, value, positive=False)
            if value > 1:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        _check_real("burst_factor", self.burst_factor, positive=True)
        if self.burst_factor < 1:
            raise ValueError(f"burst_factor must be at least 1, got {self.burst_factor!r}")
        _check_real("burst_length_s", self.burst_length_s, positive=True)
        if self.burst_length_s >= self.burst_every_s:
            raise ValueError(
                f"burst_length_s must be shorter than burst_every_s ({self.burst_every_s!r}), "
                f"got {self.burst_length_s!r}"
            )
        if self.token_sigma > 3:
            raise ValueError(f"token_sigma must be at most 3, got {self.token_sigma!r}")
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"model must be a non-empty str, got {self.model!r}")
        if self.rate_per_s * self.duration_s > 50_000_000:
            raise ValueError(
                f"duration_s must keep the expected requests (rate x duration) at most 50,000,000, got "
                f"{self.duration_s!r} s at {self.rate_per_s:g} req/s ({self.rate_per_s * self.duration_s:,.0f})"
            )

    @property
    def mean_service_s(self) -> float:
        """Seconds a slot spends on a request with the mean token counts."""
        return (
            self.first_token_ms / 1000.0
            + self.prompt_tokens / self.prefill_tokens_per_s
            + self.output_tokens / self.tokens_per_s
        )

    @property
    def service_capacity_per_s(self) -> float:
        """Requests per second the pool completes when every slot is busy."""
        return self.slots / self.mean_service_s

    @property
    def rate_per_s(self) -> float:
        """The mean arrival rate in requests per second (``rate``, else ``load`` x capacity)."""
        return self.rate if self.rate is not None else self.load * self.service_capacity_per_s

    @property
    def load_factor(self) -> float:
        """Mean arrival rate over the pool's service capacity (above 1: overloaded)."""
        return self.rate_per_s / self.service_capacity_per_s

    def with_policy(self, policy: AdmissionPolicy | str) -> SimConfig:
        """The same scenario under another admission policy."""
        return dataclasses.replace(self, policy=AdmissionPolicy.parse(policy, "policy").value)

    def to_dict(self) -> dict[str, Any]:
        """Every field plus the derived ``rate_per_s``, ``load_factor``, ``mean_service_s`` and
        ``service_capacity_per_s`` (rounded for the report)."""
        out = dataclasses.asdict(self)
        out["rate_per_s"] = _r(self.rate_per_s, 6)
        out["load_factor"] = _r(self.load_factor, 6)
        out["mean_service_s"] = _r(self.mean_service_s, 6)
        out["service_capacity_per_s"] = _r(self.service_capacity_per_s, 6)
        return out


def _check_int(name: str, value: object, minimum: int) -> None:
    if not _is_int(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:  # type: ignore[operator]
        raise ValueError(f"{name} must be at least {minimum}, got {value!r}")


def _check_real(name: str, value: object, *, positive: bool) -> None:
    if not _is_real(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if positive and value <= 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be positive, got {value!r}")
    if not positive and value < 0:  # type: ignore[operator]
        raise ValueError(f"{name} must not be negative, got {value!r}")


# ---------------------------------------------------------------------------------------
# The simulation


class SimRequest:
    """One client request and its fate (what the report is tallied from).

    ``prio`` is 0 (INTERACTIVE) or 1 (BATCH); ``state`` a ``RequestState``;
    ``admitted_on`` the attempt that was accepted (1 = first try, 0 = never); ``last_reason``
    the reason of the latest refusal; ``retry_delay_s`` the total time spent waiting to retry.
    """

    __slots__ = (
        "admitted_on",
        "arrived_at",
        "attempts",
        "honours",
        "job_id",
        "last_reason",
        "output_tokens",
        "prio",
        "retry_delay_s",
        "service_s",
        "state",
    )

    def __init__(self, arrived_at: float, prio: int, output_tokens: int, service_s: float, honours: bool) -> None:
        self.arrived_at = arrived_at
        self.prio = prio
        self.output_tokens = output_tokens
        self.service_s = service_s
        self.honours = honours
        self.attempts = 0
        self.admitted_on = 0
        self.state: RequestState = NEW
        self.job_id: str | None = None
        self.last_reason: RejectionReason | None = None
        self.retry_delay_s = 0.0

    def __repr__(self) -> str:
        return (
            f"SimRequest(arrived_at={self.arrived_at!r}, prio={self.prio}, state={self.state}, "
            f"attempts={self.attempts}, job_id={self.job_id!r})"
        )


def _arrivals(cfg: SimConfig, rng: random.Random) -> Any:
    """Arrival times in [0, duration): a Poisson process, piecewise constant for ``bursty``."""
    expo = rng.expovariate
    end = cfg.duration_s
    mean = cfg.rate_per_s
    t = 0.0
    if cfg.pattern == "poisson":
        while True:
            t += expo(mean)
            if t >= end:
                return
            yield t
    period = cfg.burst_every_s
    length = cfg.burst_length_s
    factor = cfg.burst_factor
    quiet = mean * period / ((period - length) + factor * length)
    rates = (factor * quiet, quiet)
    k = 0
    phase = 0  # 0: in the burst at the start of period k, 1: quiet rest of it
    while True:
        seg_end = k * period + (length if phase == 0 else period)
        gap = expo(rates[phase])
        if t + gap < seg_end:
            t += gap
        else:
            # Memoryless: restarting the draw at the segment boundary is exact.
            t = seg_end
            if phase == 0:
                phase = 1
            else:
                phase = 0
                k += 1
            continue
        if t >= end:
            return
        yield t


def _nearest_rank_sorted(values: Sequence[float], pct: float) -> float:
    return values[max(0, math.ceil(pct / 100.0 * len(values)) - 1)]


def nearest_rank(values: Sequence[float], pct: float) -> float | None:
    """The exact ``pct``-th percentile (nearest rank) of ``values``; None when empty."""
    if not 0 < pct <= 100:
        raise ValueError(f"pct must be in (0, 100], got {pct!r}")
    if not values:
        return None
    return _nearest_rank_sorted(sorted(values), pct)


def _r(value: float | None, digits: int = 3) -> float | None:
    if value is None:
        return None
    out = round(value, digits)
    return 0.0 if out == 0 else out  # no "-0.0"


def _wait_stats(waits: list[float]) -> dict[str, Any]:
    s = sorted(waits)
    if not s:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    return {
        "count": len(s),
        "p50": _r(_nearest_rank_sorted(s, 50)),
        "p90": _r(_nearest_rank_sorted(s, 90)),
        "p99": _r(_nearest_rank_sorted(s, 99)),
        "max": _r(s[-1]),
        "mean": _r(math.fsum(s) / len(s)),
    }


def _engine_name(queue_cls: type) -> str:
    module = queue_cls.__module__.rsplit(".", 1)[-1]
    return {"_core_c": "c", "_core_py": "py"}.get(module, module)


class Simulation:
    """One run: ``config``'s traffic through one ``Queue`` under ``config.policy``.

    ``queue_cls`` / ``task_cls`` choose the engine (default: ``orchestrator_core.Queue``, and
    the ``Task`` of the queue's module); pass ``impl.Queue`` / ``impl.Task`` to run a given engine. After ``run()``,
    ``queue`` is the (closed, drained) queue and ``requests`` every request in arrival order.
    """

    def __init__(
        self,
        config: SimConfig,
        *,
        queue_cls: type | None = None,
        task_cls: type | None = None,
    ) -> None:
        if not isinstance(config, SimConfig):
            raise TypeError(f"config must be a SimConfig, got {config!r}")
        if queue_cls is None or task_cls is None:
            import orchestrator_core

            if queue_cls is None:
                queue_cls = orchestrator_core.Queue
            if task_cls is None:
                # The Task of the queue's own engine (engines refuse each other's tasks).
                task_cls = getattr(sys.modules.get(queue_cls.__module__), "Task", orchestrator_core.Task)
        self.config = config
        self.now = 0.0
        self.engine = _engine_name(queue_cls)
        self._task_cls = task_cls
        self.queue: Any = queue_cls(
            config.capacity, config.policy, pool_id="sim", clock=lambda: self.now, id_prefix="sim"
        )
        self.requests: list[SimRequest] = []
        self.events = 0
        self._ran = False

    def run(self, progress: Callable[[float], None] | None = None) -> dict[str, Any]:
        """Simulate ``config.duration_s`` seconds and return this run's report (a dict).

        ``progress``, if given, is called now and then with the fraction of virtual time done.
        A simulation runs once.
        """
        if self._ran:
            raise RuntimeError("a Simulation runs once; make a new one")
        self._ran = True
        cfg = self.config
        rng = random.Random(cfg.seed)
        arrivals = _arrivals(cfg, rng)
        q = self.queue
        enqueue = q.enqueue
        dequeue = q.dequeue
        task_cls = self._task_cls
        model = cfg.model
        prio_members = _PRIO_MEMBERS
        heap: list[tuple[float, int, int, Any]] = []
        push = heapq.heappush
        pop = heapq.heappop
        requests = self.requests
        new_request = requests.append
        rand = rng.random
        gauss = rng.gauss  # single-threaded here, and faster than normalvariate
        exp = math.exp
        sigma = cfg.token_sigma
        mu_prompt = math.log(cfg.prompt_tokens) - sigma * sigma / 2.0
        mu_output = math.log(cfg.output_tokens) - sigma * sigma / 2.0
        base_s = cfg.first_token_ms / 1000.0
        prefill = cfg.prefill_tokens_per_s
        decode = cfg.tokens_per_s
        share = cfg.interactive_share
        honour_share = cfg.honour_retry_after
        max_attempts = cfg.max_retries + 1
        delay_s = cfg.retry_delay_ms / 1000.0
        patience = cfg.patience_s
        duration = cfg.duration_s
        slots = cfg.slots
        idle = slots
        depth = 0
        waits: tuple[list[float], list[float]] = ([], [])
        seq = 0

        # Timeline: interval k covers [bounds[k-1], bounds[k]).
        n_iv = cfg.samples
        bounds = [duration * k / n_iv for k in range(1, n_iv)] + [duration]
        k_iv = 0
        next_sample = bounds[0]
        last_t = 0.0
        iv_start = 0.0
        iv_depth_int = iv_busy_int = 0.0
        iv_max = 0
        iv_arrivals = iv_accepted = iv_rejected = iv_evicted = 0
        iv_waits: list[float] = []
        depth_int = busy_int = 0.0
        depth_max = 0
        tl: dict[str, list[Any]] = {
            name: []
            for name in (
                "t_s",
                "depth",
                "depth_mean",
                "depth_max",
                "busy_mean",
                "arrivals",
                "accepted",
                "rejected",
                "evicted",
                "dequeued",
                "wait_p50_ms",
                "wait_p99_ms",
                "wait_max_ms",
            )
        }

        # The end sorts before anything else scheduled at the same instant (seq -1).
        push(heap, (duration, -1, _END, None))
        first = next(arrivals, None)
        if first is not None:
            push(heap, (first, seq, _ARRIVAL, None))
            seq += 1
        events = 0
        if progress is not None:
            progress(0.0)
        while True:
            t, _, kind, r = pop(heap)
            events += 1
            if progress is not None and not events & 8191:
                progress(t / duration)
            # Advance the clock, closing timeline intervals on the way.
            while t >= next_sample:
                dt = next_sample - last_t
                iv_depth_int += depth * dt
                iv_busy_int += (slots - idle) * dt
                width = next_sample - iv_start
                tl["t_s"].append(_r(next_sample, 6))
                tl["depth"].append(depth)
                tl["depth_mean"].append(_r(iv_depth_int / width))
                tl["depth_max"].append(iv_max)
                tl["busy_mean"].append(_r(iv_busy_int / width))
                tl["arrivals"].append(iv_arrivals)
                tl["accepted"].append(iv_accepted)
                tl["rejected"].append(iv_rejected)
                tl["evicted"].append(iv_evicted)
                tl["dequeued"].append(len(iv_waits))
                iv_waits.sort()
                tl["wait_p50_ms"].append(_r(_nearest_rank_sorted(iv_waits, 50)) if iv_waits else None)
                tl["wait_p99_ms"].append(_r(_nearest_rank_sorted(iv_waits, 99)) if iv_waits else None)
                tl["wait_max_ms"].append(_r(iv_waits[-1]) if iv_waits else None)
                depth_int += iv_depth_int
                busy_int += iv_busy_int
                iv_depth_int = iv_busy_int = 0.0
                iv_max = depth
                iv_arrivals = iv_accepted = iv_rejected = iv_evicted = 0
                iv_waits = []
                iv_start = last_t = next_sample
                k_iv += 1
                next_sample = bounds[k_iv] if k_iv < n_iv else math.inf
            dt = t - last_t
            iv_depth_int += depth * dt
            iv_busy_int += (slots - idle) * dt
            last_t = t
            self.now = t

            if kind == _DONE:
                r.state = COMPLETED
                idle += 1
            elif kind == _GIVE_UP:
                if r.state != QUEUED:
                    continue
                if not q.cancel(r.job_id):
                    raise AssertionError(f"queue lost job {r.job_id!r}")  # pragma: no cover - engine bug
                r.state = CANCELLED
                depth -= 1
                continue
            elif kind == _END:
                break
            else:
                if kind == _ARRIVAL:
                    nxt = next(arrivals, None)
                    if nxt is not None:
                        push(heap, (nxt, seq, _ARRIVAL, None))
                        seq += 1
                    p = 0 if rand() < share else 1
                    if sigma:
                        prompt = max(1, round(exp(gauss(mu_prompt, sigma))))
                        output = max(1, round(exp(gauss(mu_output, sigma))))
                    else:
                        prompt = max(1, round(cfg.prompt_tokens))
                        output = max(1, round(cfg.output_tokens))
                    r = SimRequest(t, p, output, base_s + prompt / prefill + output / decode, rand() < honour_share)
                    new_request(r)
                    iv_arrivals += 1
                r.attempts += 1
                res = enqueue(task_cls(model, r.output_tokens, None, priority=prio_members[r.prio], payload=r))
                if res.accepted:
                    r.state = QUEUED
                    r.job_id = res.job_id
                    r.admitted_on = r.attempts
                    iv_accepted += 1
                    victim = res.evicted
                    if victim is None:
                        depth += 1
                        if depth > iv_max:
                            iv_max = depth
                            depth_max = max(depth_max, depth)
                    else:
                        victim.task.payload.state = EVICTED
                        iv_evicted += 1
                    if patience:
                        push(heap, (t + patience, seq, _GIVE_UP, r))
                        seq += 1
                    if not idle:
                        continue
                else:
                    iv_rejected += 1
                    r.last_reason = res.reason
                    if r.attempts < max_attempts and res.retriable:
                        wait_s = res.retry_after_ms / 1000.0 if r.honours else delay_s
                        r.retry_delay_s += wait_s
                        r.state = RETRY_WAIT
                        push(heap, (t + wait_s, seq, _RETRY, r))
                        seq += 1
                    else:
                        r.state = REJECTED
                    continue
            # A slot is free (a job finished, or one was idle when a job was admitted).
            if depth:
                job = dequeue()
                jr = job.task.payload
                w = job.wait_ms
                waits[jr.prio].append(w)
                iv_waits.append(w)
                jr.state = SERVING
                depth -= 1
                idle -= 1
                push(heap, (t + jr.service_s, seq, _DONE, jr))
                seq += 1

        # The end: close and drain; retries not made and jobs in service are settled below.
        self.now = t
        q.close()
        for job in q.drain():
            job.task.payload.state = DRAINED
        in_service = [0, 0]
        for _t, _s, kind, r in heap:
            if kind == _DONE:
                r.state = COMPLETED
                in_service[r.prio] += 1
        self.events = events
        if progress is not None:
            progress(1.0)
        return self._report(waits, in_service, tl, depth_int / duration, depth_max, busy_int / (duration * slots))

    def _report(
        self,
        waits: tuple[list[float], list[float]],
        in_service: list[int],
        timeline: dict[str, list[Any]],
        depth_mean: float,
        depth_max: int,
        utilisation: float,
    ) -> dict[str, Any]:
        cfg = self.config
        zero_reasons = dict.fromkeys(REASONS, 0)
        per: list[dict[str, Any]] = []
        for p in (0, 1):
            per.append(
                {
                    "offered": 0,
                    "accepted": 0,
                    "accepted_first_try": 0,
                    "accepted_on_retry": 0,
                    "rejected": dict(zero_reasons),
                    "rejected_total": 0,
                    "retry_pending_at_end": 0,
                    "evicted": 0,
                    "completed": 0,
                    "in_service_at_end": in_service[p],
                    "cancelled": 0,
                    "drained": 0,
                    "wait_ms": _wait_stats(waits[p]),
                }
            )
        groups = [_new_retry_group(), _new_retry_group()]  # ignored, honoured
        for r in self.requests:
            row = per[r.prio]
            row["offered"] += 1
            state = r.state
            if r.admitted_on:
                row["accepted"] += 1
                row["accepted_first_try" if r.admitted_on == 1 else "accepted_on_retry"] += 1
                if state == COMPLETED:
                    row["completed"] += 1
                elif state == EVICTED:
                    row["evicted"] += 1
                elif state == CANCELLED:
                    row["cancelled"] += 1
                elif state == DRAINED:
                    row["drained"] += 1
                else:  # pragma: no cover - every admitted request ends in one of the above
                    raise AssertionError(f"request ended in state {state}: {r!r}")
            else:
                row["rejected"][r.last_reason.value] += 1  # type: ignore[union-attr]
                row["rejected_total"] += 1
                if state == RETRY_WAIT:
                    row["retry_pending_at_end"] += 1
            g = groups[1 if r.honours else 0]
            g["clients"] += 1
            if r.admitted_on == 1:
                continue
            g["refused"] += 1
            g["retries"] += r.attempts - 1
            g["_delay_s"] += r.retry_delay_s
            if r.attempts >= 2:
                g["retried"] += 1
            if r.admitted_on == 2:
                g["admitted_on_first_retry"] += 1
            elif r.admitted_on > 2:
                g["admitted_on_later_retry"] += 1
            elif state == RETRY_WAIT:
                g["retry_pending_at_end"] += 1
            else:
                g["gave_up"] += 1
        for g in groups:
            delay = g.pop("_delay_s")
            delayed = g["retries"] + g["retry_pending_at_end"]
            g["mean_retry_delay_ms"] = _r(1000.0 * delay / delayed) if delayed else None
            g["first_retry_admitted_share"] = (
                _r(g["admitted_on_first_retry"] / g["retried"], 4) if g["retried"] else None
            )
        totals: dict[str, Any] = {}
        for key in per[0]:
            if key == "rejected":
                totals[key] = {reason: per[0][key][reason] + per[1][key][reason] for reason in REASONS}
            elif key == "wait_ms":
                totals[key] = _wait_stats(waits[0] + waits[1])
            else:
                totals[key] = per[0][key] + per[1][key]

        m = self.queue.metrics()
        counters = {
            "accepted": m.accepted,
            "rejected": {reason.value: m.rejected.get(reason, 0) for reason in RejectionReason},
            "evicted": m.evicted,
            "cancelled": m.cancelled,
            "dequeued": m.dequeued,
            "drained": m.drained,
        }
        attempts = sum(r.attempts for r in self.requests)
        checks = [
            row["offered"] == row["accepted"] + row["rejected_total"]
            and row["accepted"] == row["completed"] + row["evicted"] + row["cancelled"] + row["drained"]
            and row["accepted"] == row["accepted_first_try"] + row["accepted_on_retry"]
            for row in (*per, totals)
        ]
        checks.append(
            m.accepted == totals["accepted"]
            and m.evicted == totals["evicted"]
            and m.cancelled == totals["cancelled"]
            and m.dequeued == totals["completed"]
            and m.drained == totals["drained"]
            and m.accepted + m.rejected_total == attempts
            and m.depth == 0
        )
        return {
            "policy": cfg.policy,
            "priorities": {PRIORITIES[0]: per[0], PRIORITIES[1]: per[1]},
            "totals": totals,
            "attempts": {"total": attempts, "retries": attempts - totals["offered"]},
            "queue_counters": counters,
            "slots": {
                "count": cfg.slots,
                "utilisation": _r(utilisation, 4),
                "busy_mean": _r(utilisation * cfg.slots),
            },
            "depth": {"capacity": cfg.capacity, "mean": _r(depth_mean), "max": depth_max},
            "retries": {"honoured": groups[1], "ignored": groups[0]},
            "timeline": {"interval_s": _r(cfg.duration_s / cfg.samples, 6), **timeline},
            "events": self.events,
            "accounting_ok": all(checks),
        }


def _new_retry_group() -> dict[str, Any]:
    return {
        "clients": 0,
        "refused": 0,
        "retried": 0,
        "retries": 0,
        "admitted_on_first_retry": 0,
        "admitted_on_later_retry": 0,
        "gave_up": 0,
        "retry_pending_at_end": 0,
        "_delay_s": 0.0,
    }


def simulate(
    config: SimConfig | None = None,
    *,
    compare: bool = False,
    queue_cls: type | None = None,
    task_cls: type | None = None,
    progress: Callable[[str, float], None] | None = None,
) -> dict[str, Any]:
    """Run ``config`` (default ``SimConfig()``) and return the full report.

    With ``compare=True`` the same traffic runs under every policy (``config.policy`` is
    ignored) and ``runs`` holds one report per policy; otherwise ``runs`` holds one.
    ``progress(policy, fraction)`` is called now and then. Same config, same report.
    """
    import orchestrator_core

    cfg = SimConfig() if config is None else config
    if not isinstance(cfg, SimConfig):
        raise TypeError(f"config must be a SimConfig, got {cfg!r}")
    policies = POLICIES if compare else (cfg.policy,)
    runs = []
    engine = ""
    for policy in policies:
        sim = Simulation(cfg.with_policy(policy), queue_cls=queue_cls, task_cls=task_cls)
        engine = sim.engine
        cb = None if progress is None else (lambda f, _p=policy: progress(_p, f))
        runs.append(sim.run(cb))
    return {
        "schema_version": SCHEMA_VERSION,
        "version": orchestrator_core.__version__,
        "engine": engine,
        "compare": compare,
        "config": cfg.to_dict(),
        "runs": runs,
    }


def report_to_json(report: dict[str, Any]) -> str:
    """The report as JSON text: stable key order, two-space indent, newline-terminated.

    The same report always gives the same bytes.
    """
    return json.dumps(report, indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# ---------------------------------------------------------------------------------------
# Text report

_BLOCKS: Final = " ▁▂▃▄▅▆▇█"
_ASCII_BLOCKS: Final = " .:-=+*#%@"


def sparkline(values: Sequence[float | None], top: float, *, width: int = 60, ascii_only: bool = False) -> str:
    """``values`` as one line of block characters scaled to ``[0, top]``.

    Consecutive values are merged (their maximum) so the line is at most ``width`` wide;
    None counts as 0. ``ascii_only`` uses `` .:-=+*#%@`` instead of Unicode blocks.
    """
    if width < 1:
        raise ValueError(f"width must be at least 1, got {width!r}")
    chars = _ASCII_BLOCKS if ascii_only else _BLOCKS
    vals = [0.0 if v is None else float(v) for v in values]
    if not vals:
        return ""
    groups = math.ceil(len(vals) / width)
    merged = [max(vals[i : i + groups]) for i in range(0, len(vals), groups)]
    levels = len(chars) - 1
    out = []
    for v in merged:
        if top <= 0 or v <= 0:
            out.append(chars[0])
        else:
            out.append(chars[max(1, min(levels, math.ceil(v / top * levels)))])
    return "".join(out)


def _n(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def _pct(num: float, den: float) -> str:
    return "-" if not den else f"{100.0 * num / den:.1f}%"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100.0 * value:.1f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ") -> list[str]:
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [row[0].ljust(widths[0])] + [row[i].rjust(widths[i]) for i in range(1, len(row))]
        lines.append((indent + "   ".join(cells)).rstrip())
    return lines


def _scenario_lines(report: dict[str, Any]) -> list[str]:
    c = report["config"]
    if c["pattern"] == "bursty":
        traffic = (
            f"bursty, mean {c['rate_per_s']:.2f} req/s (x{c['burst_factor']:g} for {c['burst_length_s']:g} s "
            f"every {c['burst_every_s']:g} s)"
        )
    else:
        traffic = f"Poisson {c['rate_per_s']:.2f} req/s"
    honour = c["honour_retry_after"]
    retries = (
        f"up to {c['max_retries']} retries; {honour * 100:.0f}% honour Retry-After, the others retry after "
        f"{c['retry_delay_ms']:g} ms"
        if c["max_retries"]
        else "no retries"
    )
    patience = f"; give up after {c['patience_s']:g} s queued" if c["patience_s"] else ""
    return [
        f"scenario   {c['duration_s']:g} s virtual, seed {c['seed']}, capacity {c['capacity']}, {c['slots']} slots",
        (
            f"traffic    {traffic} = {c['load_factor']:.2f}x the pool's {c['service_capacity_per_s']:.2f} req/s; "
            f"{c['interactive_share'] * 100:.0f}% interactive"
        ),
        (
            f"service    {c['first_token_ms']:g} ms + ~{c['prompt_tokens']:g} prompt tok @ "
            f"{c['prefill_tokens_per_s']:g}/s + ~{c['output_tokens']:g} output tok @ {c['tokens_per_s']:g}/s = "
            f"{c['mean_service_s']:.2f} s mean"
        ),
        f"clients    {retries}{patience}",
    ]


def _run_lines(run: dict[str, Any], ascii_only: bool) -> list[str]:
    pri = run["priorities"]
    cols = [pri["interactive"], pri["batch"], run["totals"]]
    rows: list[list[str]] = []

    def add(label: str, key: str) -> None:
        rows.append([label] + [_n(c[key]) for c in cols])

    add("offered (requests)", "offered")
    rows.append(["accepted"] + [f"{_n(c['accepted'])} {_pct(c['accepted'], c['offered']):>6}".strip() for c in cols])
    add("  on the first try", "accepted_first_try")
    add("  on a retry", "accepted_on_retry")
    shown = [reason for reason in REASONS if reason == "QUEUE_FULL" or run["totals"]["rejected"][reason]]
    for reason in shown:
        rows.append([f"rejected {reason}"] + [_n(c["rejected"][reason]) for c in cols])
    add("  of which retry pending at end", "retry_pending_at_end")
    add("evicted (drop-lru)", "evicted")
    add("completed", "completed")
    add("  still running at end", "in_service_at_end")
    add("cancelled (patience)", "cancelled")
    add("drained at end", "drained")
    for label, key in (("wait p50 ms", "p50"), ("wait p90 ms", "p90"), ("wait p99 ms", "p99"), ("wait max ms", "max")):
        rows.append([label] + [_ms(c["wait_ms"][key]) for c in cols])
    lines = [f"policy {run['policy']}"]
    lines += _table(["", "interactive", "batch", "total"], rows)
    slots = run["slots"]
    depth = run["depth"]
    lines.append(
        f"  slots: {_share(slots['utilisation'])} utilised "
        f"({slots['busy_mean']:.1f} of {slots['count']} busy on average)"
    )
    lines.append(f"  queue depth: mean {depth['mean']:.1f}, max {depth['max']} of capacity {depth['capacity']}")
    tl = run["timeline"]
    lines.append(f"  depth over time (mean per {tl['interval_s']:g} s, full height = capacity {depth['capacity']}):")
    lines.append("  |" + sparkline(tl["depth_mean"], depth["capacity"], ascii_only=ascii_only) + "|")
    att = run["attempts"]
    lines.append(f"  attempts: {att['total']:,} enqueue calls ({att['retries']:,} retries)")
    lines.append("  retries after a refusal:")
    honoured, ignored = run["retries"]["honoured"], run["retries"]["ignored"]
    rrows = [
        ["clients", _n(honoured["clients"]), _n(ignored["clients"])],
        ["refused at least once", _n(honoured["refused"]), _n(ignored["refused"])],
        ["retried", _n(honoured["retried"]), _n(ignored["retried"])],
        [
            "admitted on their first retry",
            _n(honoured["admitted_on_first_retry"]),
            _n(ignored["admitted_on_first_retry"]),
        ],
        [
            "  share of those who retried",
            _share(honoured["first_retry_admitted_share"]),
            _share(ignored["first_retry_admitted_share"]),
        ],
        ["admitted on a later retry", _n(honoured["admitted_on_later_retry"]), _n(ignored["admitted_on_later_retry"])],
        ["gave up (retries exhausted)", _n(honoured["gave_up"]), _n(ignored["gave_up"])],
        ["retry pending at end", _n(honoured["retry_pending_at_end"]), _n(ignored["retry_pending_at_end"])],
        ["mean wait before a retry ms", _ms(honoured["mean_retry_delay_ms"]), _ms(ignored["mean_retry_delay_ms"])],
    ]
    lines += _table(["", "honour Retry-After", "ignore it"], rrows, indent="    ")
    lines.append(
        "  accounting: offered = accepted + rejected; accepted = completed + evicted + cancelled + drained: "
        + ("ok" if run["accounting_ok"] else "MISMATCH")
    )
    return lines


def _compare_lines(runs: list[dict[str, Any]], ascii_only: bool) -> list[str]:
    rows: list[list[str]] = []
    for prio in PRIORITIES:
        rows_of = [run["priorities"][prio] for run in runs]
        rows.append([f"{prio}: offered"] + [_n(row["offered"]) for row in rows_of])
        rows.append(
            ["  accepted"] + [f"{_n(row['accepted'])} {_pct(row['accepted'], row['offered']):>6}" for row in rows_of]
        )
        rows.append(["  rejected"] + [_n(row["rejected_total"]) for row in rows_of])
        rows.append(["  evicted"] + [_n(row["evicted"]) for row in rows_of])
        rows.append(["  completed"] + [_n(row["completed"]) for row in rows_of])
        rows.append(["  wait p50 ms"] + [_ms(row["wait_ms"]["p50"]) for row in rows_of])
        rows.append(["  wait p99 ms"] + [_ms(row["wait_ms"]["p99"]) for row in rows_of])
    rows.append(["drained at end"] + [_n(run["totals"]["drained"]) for run in runs])
    rows.append(["slot utilisation"] + [_share(run["slots"]["utilisation"]) for run in runs])
    rows.append(["mean queue depth"] + [f"{run['depth']['mean']:.1f}" for run in runs])
    rows.append(["enqueue attempts"] + [_n(run["attempts"]["total"]) for run in runs])
    for label, group in (("first retry admitted: honour", "honoured"), ("                      ignore", "ignored")):
        rows.append([label] + [_share(run["retries"][group]["first_retry_admitted_share"]) for run in runs])
    rows.append(["accounting"] + ["ok" if run["accounting_ok"] else "MISMATCH" for run in runs])
    lines = ["same traffic under each policy"]
    lines += _table([""] + [run["policy"] for run in runs], rows)
    lines.append("  depth over time (mean per interval, full height = capacity):")
    width = max(len(run["policy"]) for run in runs)
    for run in runs:
        spark = sparkline(run["timeline"]["depth_mean"], run["depth"]["capacity"], ascii_only=ascii_only)
        lines.append(f"  {run['policy']:<{width}} |{spark}|")
    return lines


def format_report(
    report: dict[str, Any],
    *,
    engine_label: str | None = None,
    wall_s: float | None = None,
    ascii_only: bool = False,
) -> str:
    """The report as text for a terminal (newline-terminated).

    The first line names the version and the engine (``engine_label``, default the report's
    ``engine``); ``wall_s``, if given, adds how long the run took in real time.
    """
    engine = engine_label or report["engine"]
    runs = report["runs"]
    lines = [f"orchestrator-core {report['version']} | engine: {engine}"]
    lines += _scenario_lines(report)
    if wall_s is not None:
        events = sum(run["events"] for run in runs)
        speed = report["config"]["duration_s"] * len(runs) / wall_s if wall_s > 0 else math.inf
        lines.append(
            f"ran        {len(runs)} x {report['config']['duration_s']:g} s virtual in {wall_s:.2f} s real "
            f"({speed:,.0f}x), {events:,} events"
        )
    lines.append("")
    if report["compare"]:
        lines += _compare_lines(runs, ascii_only)
    else:
        lines += _run_lines(runs[0], ascii_only)
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Plot


def write_plot(report: dict[str, Any], path: str) -> None:
    """Write a PNG: queue depth and waiting time over time, and acceptance per policy.

    Needs matplotlib (``pip install 'orchestrator-core[plot]'``); raises ImportError without it.
    """
    figure_mod: Any = importlib.import_module("matplotlib.figure")
    agg_mod: Any = importlib.import_module("matplotlib.backends.backend_agg")
    runs = report["runs"]
    fig = figure_mod.Figure(figsize=(11, 10), dpi=100, layout="constrained")
    agg_mod.FigureCanvasAgg(fig)
    ax_depth, ax_wait, ax_acc = fig.subplots(3, 1)
    cfg = report["config"]
    fig.suptitle(
        f"orchestrator-core {report['version']} ({report['engine']}): {cfg['duration_s']:g} s, "
        f"{cfg['rate_per_s']:.1f} req/s ({cfg['load_factor']:.2f}x), capacity {cfg['capacity']}, "
        f"{cfg['slots']} slots, seed {cfg['seed']}"
    )
    nan = float("nan")
    for i, run in enumerate(runs):
        tl = run["timeline"]
        color = f"C{i}"
        ax_depth.plot(tl["t_s"], tl["depth_mean"], color=color, label=f"{run['policy']} (mean)")
        p50 = [nan if v is None else v for v in tl["wait_p50_ms"]]
        p99 = [nan if v is None else v for v in tl["wait_p99_ms"]]
        ax_wait.plot(tl["t_s"], p50, color=color, label=f"{run['policy']} p50")
        ax_wait.plot(tl["t_s"], p99, color=color, linestyle="--", label=f"{run['policy']} p99")
    ax_depth.axhline(cfg["capacity"], color="grey", linewidth=0.8, linestyle=":", label="capacity")
    ax_depth.set_ylabel("queue depth")
    ax_depth.set_xlabel("virtual time (s)")
    ax_depth.legend(loc="lower right", fontsize="small")
    ax_wait.set_yscale("symlog", linthresh=10.0)
    ax_wait.set_ylabel("queue wait (ms, log above 10)")
    ax_wait.set_xlabel("virtual time (s), jobs dequeued in each interval")
    ax_wait.legend(loc="upper right", fontsize="small", ncol=2)
    names = [run["policy"] for run in runs]
    parts = [
        ("completed", "completed", "tab:green"),
        ("evicted", "evicted", "tab:orange"),
        ("cancelled", "cancelled", "tab:gray"),
        ("drained", "drained at end", "tab:purple"),
        ("rejected_total", "rejected", "tab:red"),
    ]
    for pi, prio in enumerate(PRIORITIES):
        bottom = [0.0] * len(runs)
        xs = [i * 3 + pi for i in range(len(runs))]
        for key, label, color in parts:
            vals = [100.0 * run["priorities"][prio][key] / max(1, run["priorities"][prio]["offered"]) for run in runs]
            ax_acc.bar(
                xs,
                vals,
                bottom=bottom,
                color=color,
                label=label if pi == 0 else None,
                width=0.9,
            )
            bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax_acc.set_xticks(
        [i * 3 + pi for i in range(len(runs)) for pi in range(2)],
        [f"{name}\n{prio}" for name in names for prio in PRIORITIES],
    )
    ax_acc.set_ylabel("% of offered requests")
    ax_acc.set_ylim(0, 100)
    ax_acc.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    ax_acc.set_title("outcome per policy and priority")
    fig.savefig(path, format="png")


# ---------------------------------------------------------------------------------------
# The report's schema (documentation and validation)


def _int(desc: str) -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "description": desc}


def _num(desc: str, nullable: bool = False) -> dict[str, Any]:
    return {"type": ["number", "null"] if nullable else "number", "description": desc}


def _obj(desc: str, props: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": desc,
        "properties": props,
        "required": list(props),
        "additionalProperties": False,
    }


def _array(desc: str, item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "description": desc, "items": item}


_REASONS_SCHEMA = _obj(
    "Refused requests by the reason of their last refusal.", {reason: _int(f"{reason} refusals.") for reason in REASONS}
)
_WAIT_SCHEMA = _obj(
    "Queue wait (Job.wait_ms) of dequeued jobs: exact nearest-rank percentiles; null when none.",
    {
        "count": _int("Jobs dequeued."),
        "p50": _num("Median wait, ms.", True),
        "p90": _num("90th percentile, ms.", True),
        "p99": _num("99th percentile, ms.", True),
        "max": _num("Longest wait, ms.", True),
        "mean": _num("Mean wait, ms.", True),
    },
)
_OUTCOME_SCHEMA = _obj(
    "Requests of one priority (or all) by outcome. offered = accepted + rejected_total; "
    "accepted = completed + evicted + cancelled + drained.",
    {
        "offered": _int("Client requests that arrived (a retry is the same request)."),
        "accepted": _int("Requests admitted, on the first try or a retry."),
        "accepted_first_try": _int("Admitted on the first attempt."),
        "accepted_on_retry": _int("Admitted on a retry."),
        "rejected": _REASONS_SCHEMA,
        "rejected_total": _int("Requests never admitted (retries exhausted, or a retry still pending at the end)."),
        "retry_pending_at_end": _int("Of rejected_total: a retry was scheduled after the end."),
        "evicted": _int("Admitted, then evicted by DROP_LRU to make room (reported in Accepted.evicted)."),
        "completed": _int("Dequeued and served (including in_service_at_end)."),
        "in_service_at_end": _int("Of completed: still being served at the end (they finish)."),
        "cancelled": _int("Cancelled by a client that ran out of patience while queued."),
        "drained": _int("Still queued at the end (queue.drain())."),
        "wait_ms": _WAIT_SCHEMA,
    },
)
_GROUP_SCHEMA = _obj(
    "Clients of one retry behaviour. refused = admitted_on_first_retry + admitted_on_later_retry + gave_up + "
    "retry_pending_at_end.",
    {
        "clients": _int("Requests whose client behaves this way."),
        "refused": _int("Requests refused on their first attempt."),
        "retried": _int("Refused requests that made at least one retry."),
        "retries": _int("Retries made."),
        "admitted_on_first_retry": _int("Admitted on their first retry."),
        "admitted_on_later_retry": _int("Admitted on a second or later retry."),
        "gave_up": _int("Never admitted: retries exhausted (or the refusal was not retriable)."),
        "retry_pending_at_end": _int("Never admitted: a retry was scheduled after the end."),
        "mean_retry_delay_ms": _num("Mean wait before a retry, ms (the Retry-After hint when honoured).", True),
        "first_retry_admitted_share": _num("admitted_on_first_retry / retried (null when none retried).", True),
    },
)
_TIMELINE_KEYS = {
    "t_s": _num("End of the interval, virtual seconds."),
    "depth": _int("Queue depth at the end of the interval."),
    "depth_mean": _num("Time-averaged depth over the interval."),
    "depth_max": _int("Highest depth during the interval."),
    "busy_mean": _num("Time-averaged busy slots over the interval."),
    "arrivals": _int("New requests."),
    "accepted": _int("Accepted attempts."),
    "rejected": _int("Refused attempts."),
    "evicted": _int("Evictions."),
    "dequeued": _int("Jobs dequeued (started)."),
    "wait_p50_ms": _num("Median wait of the jobs dequeued in the interval, ms (null: none).", True),
    "wait_p99_ms": _num("99th percentile wait of those jobs, ms (null: none).", True),
    "wait_max_ms": _num("Longest wait of those jobs, ms (null: none).", True),
}
_RUN_SCHEMA = _obj(
    "One policy's run.",
    {
        "policy": {"type": "string", "enum": list(POLICIES), "description": "Admission policy of the queue."},
        "priorities": _obj("Outcomes per priority.", {"interactive": _OUTCOME_SCHEMA, "batch": _OUTCOME_SCHEMA}),
        "totals": _OUTCOME_SCHEMA,
        "attempts": _obj(
            "Enqueue calls.",
            {"total": _int("Enqueue attempts (offered + retries)."), "retries": _int("Attempts that were retries.")},
        ),
        "queue_counters": _obj(
            "The queue's own lifetime counters (QueueMetrics) at the end; rejected counts attempts.",
            {
                "accepted": _int("Accepted attempts."),
                "rejected": _obj(
                    "Refused attempts by reason.", {reason: _int(f"{reason} refusals.") for reason in REASONS}
                ),
                "evicted": _int("Evictions."),
                "cancelled": _int("Cancellations."),
                "dequeued": _int("Dequeues."),
                "drained": _int("Jobs drained at the end."),
            },
        ),
        "slots": _obj(
            "Worker slots.",
            {
                "count": _int("Slots."),
                "utilisation": _num("Busy slot-seconds / (slots x duration), 0..1."),
                "busy_mean": _num("Time-averaged busy slots."),
            },
        ),
        "depth": _obj(
            "Queue depth.",
            {
                "capacity": _int("Queue capacity."),
                "mean": _num("Time-averaged depth."),
                "max": _int("Highest depth."),
            },
        ),
        "retries": _obj(
            "Retry outcomes by client behaviour.",
            {
                "honoured": _GROUP_SCHEMA,
                "ignored": _GROUP_SCHEMA,
            },
        ),
        "timeline": _obj(
            "Per-interval series (config.samples equal intervals); every array has config.samples entries.",
            {"interval_s": _num("Interval length, virtual seconds.")}
            | {key: _array(value["description"], value) for key, value in _TIMELINE_KEYS.items()},
        ),
        "events": _int("Events the simulation processed."),
        "accounting_ok": {"type": "boolean", "description": "Every accounting identity and queue counter matched."},
    },
)
_CONFIG_PROPS: dict[str, Any] = {
    "capacity": _int("Queue capacity."),
    "policy": {"type": "string", "enum": list(POLICIES), "description": "Policy (ignored when compare is true)."},
    "rate": _num("Requested mean arrival rate, req/s (null: from load).", True),
    "load": _num("Arrival rate as a multiple of the service capacity (when rate is null)."),
    "pattern": {"type": "string", "enum": list(PATTERNS), "description": "Arrival pattern."},
    "burst_factor": _num("Burst rate / quiet rate (bursty)."),
    "burst_every_s": _num("Burst period, s (bursty)."),
    "burst_length_s": _num("Burst length, s (bursty)."),
    "interactive_share": _num("Share of INTERACTIVE requests."),
    "slots": _int("Worker slots."),
    "prompt_tokens": _num("Mean prompt tokens."),
    "output_tokens": _num("Mean output tokens (the task's max_tokens)."),
    "token_sigma": _num("Log-normal spread of token counts (0: fixed)."),
    "tokens_per_s": _num("Decode speed per slot, tokens/s."),
    "prefill_tokens_per_s": _num("Prefill speed, prompt tokens/s."),
    "first_token_ms": _num("Fixed overhead per request, ms."),
    "duration_s": _num("Virtual seconds of arrivals."),
    "seed": {"type": "integer", "description": "Seed of the traffic (random.Random)."},
    "max_retries": _int("Retries per refused request."),
    "honour_retry_after": _num("Share of clients that wait the Retry-After hint."),
    "retry_delay_ms": _num("Fixed retry delay of the other clients, ms."),
    "patience_s": _num("Seconds a queued client waits before cancelling (0: forever)."),
    "samples": _int("Timeline intervals."),
    "model": {"type": "string", "description": "Model name on every task."},
    "rate_per_s": _num("Mean arrival rate used, req/s."),
    "load_factor": _num("rate_per_s / service_capacity_per_s."),
    "mean_service_s": _num("Service time at the mean token counts, s."),
    "service_capacity_per_s": _num("slots / mean_service_s, req/s."),
}

#: JSON Schema (draft 2020-12) of the report; every field carries its description.
REPORT_SCHEMA: Final[dict[str, Any]] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "orchestrator-core simulation report",
    **_obj(
        "Report of `python -m orchestrator_core simulate`.",
        {
            "schema_version": {"const": SCHEMA_VERSION, "description": "Layout version of this report."},
            "version": {"type": "string", "description": "orchestrator_core.__version__ that produced it."},
            "engine": {"type": "string", "description": "Engine of the simulated Queue: 'c' or 'py'."},
            "compare": {"type": "boolean", "description": "True when runs holds every policy on the same traffic."},
            "config": _obj("The scenario (SimConfig) and derived rates.", _CONFIG_PROPS),
            "runs": {**_array("One report per policy run.", _RUN_SCHEMA), "minItems": 1},
        },
    ),
}
