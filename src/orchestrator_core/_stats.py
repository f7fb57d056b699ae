"""Wait-time histogram layout and the ``QueueMetrics`` snapshot (shared by both engines).

The engines record, per queue, in C data (or plain lists in the twin):

* lifetime counters (accepted, rejected by reason, evicted, cancelled, dequeued, drained,
  expired);
* a lifetime wait-time histogram of dequeued jobs with ``WAIT_BUCKETS`` buckets;
* a sliding window of ``WINDOW_S`` one-second slots on the queue's clock, each with the
  number of enqueues and dequeues, a wait histogram and the longest wait of that second.

Bucket ``i`` (``0 <= i < WAIT_BUCKETS - 1``) counts waits ``w`` with
``WAIT_BUCKET_BOUNDS_MS[i-1] < w <= WAIT_BUCKET_BOUNDS_MS[i]``; the last bucket is
``+Inf``. Bounds are log-spaced, four per octave, from 0.1 ms to about 14 minutes, so a
percentile read from the histogram (the upper bound of the bucket holding it, capped at
the window's maximum) is never below the true value and at most 19% (2**0.25) above it.

The window covers the last ``WINDOW_S`` *completed* seconds of the clock (the second in
progress is not counted, so a rate never jumps with a partial second), or fewer while the
queue is younger than that. Rates are events in the window divided by its length.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from ._types import RejectionReason

__all__ = [
    "RETRY_AFTER_DEFAULT_MS",
    "RETRY_AFTER_MAX_MS",
    "RETRY_AFTER_MIN_MS",
    "WAIT_BUCKETS",
    "WAIT_BUCKET_BOUNDS_MS",
    "WINDOW_S",
    "WINDOW_SLOTS",
    "QueueMetrics",
]

#: Number of wait-time buckets (the last one is +Inf).
WAIT_BUCKETS = 94
#: Upper bounds (inclusive, milliseconds) of the finite buckets: 0.1 * 2**(i/4).
WAIT_BUCKET_BOUNDS_MS: tuple[float, ...] = tuple(0.1 * 2.0 ** (i / 4.0) for i in range(WAIT_BUCKETS - 1))
#: Length of the rate / percentile window in seconds of the queue's clock.
WINDOW_S = 10
#: One-second slots kept: the ``WINDOW_S`` completed seconds and the one in progress (which
#: must not overwrite the oldest completed second while that is still in the window).
WINDOW_SLOTS = WINDOW_S + 1
#: Retry-After hint when nothing has been dequeued in the window.
RETRY_AFTER_DEFAULT_MS = 1000
#: The adaptive hint is clamped to this range.
RETRY_AFTER_MIN_MS = 1
RETRY_AFTER_MAX_MS = 60_000

_REASONS = tuple(RejectionReason)


def bucket_index(wait_ms: float) -> int:
    """The bucket a wait falls in (the engines compute the same expression)."""
    if wait_ms <= 0.1:
        return 0
    idx = math.ceil(math.log2(wait_ms / 0.1) * 4.0)
    if idx > WAIT_BUCKETS - 1:
        idx = WAIT_BUCKETS - 1
    # log2 and the division round: within an ulp or two of a bound the estimate can be one
    # bucket off, so settle it against the table (the bounds are what the docs promise).
    if idx < WAIT_BUCKETS - 1 and wait_ms > WAIT_BUCKET_BOUNDS_MS[idx]:
        idx += 1
    elif idx > 0 and wait_ms <= WAIT_BUCKET_BOUNDS_MS[idx - 1]:
        idx -= 1
    return idx


def _percentile(hist: list[int] | tuple[int, ...], total: int, q: float, max_ms: float) -> float | None:
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))
    seen = 0
    for i, n in enumerate(hist):
        seen += n
        if seen >= rank:
            if i >= WAIT_BUCKETS - 1:
                return max_ms
            return min(WAIT_BUCKET_BOUNDS_MS[i], max_ms)
    return max_ms  # pragma: no cover - counts always add up


@dataclass(frozen=True, slots=True)
class QueueMetrics:
    """An immutable snapshot of one queue, taken in O(1) of its depth.

    Counters are lifetime totals and always balance:
    ``accepted == dequeued + cancelled + evicted + drained + expired + depth``.
    Rates and wait percentiles cover the last ``window_s`` completed seconds of the
    queue's clock (see ``orchestrator_core._stats`` for the histogram's error bound).
    """

    pool_id: str
    policy: str
    capacity: int
    depth: int
    depth_interactive: int
    depth_batch: int
    accepted: int
    rejected: Mapping[RejectionReason, int]
    evicted: int
    cancelled: int
    dequeued: int
    drained: int
    window_s: float
    enqueue_rate_per_s: float
    dequeue_rate_per_s: float
    wait_p50_ms: float | None
    wait_p90_ms: float | None
    wait_p99_ms: float | None
    wait_max_ms: float | None
    oldest_age_ms: float | None
    retry_after_ms: int
    wait_histogram: tuple[int, ...]
    wait_sum_ms: float
    closed: bool
    #: Jobs that waited longer than their ``max_wait_ms`` and left the queue (see ``Queue.take_expired``).
    expired: int = 0
    #: Sum of ``max_tokens + prompt_tokens`` of the queued jobs; None unless ``max_queued_tokens`` is set.
    queued_tokens: int | None = None

    @property
    def rejected_total(self) -> int:
        """All refusals, whatever the reason."""
        return sum(self.rejected.values())

    @property
    def depth_by_priority(self) -> Mapping[str, int]:
        """``{"interactive": n, "batch": m}``."""
        return MappingProxyType({"interactive": self.depth_interactive, "batch": self.depth_batch})

    @property
    def wait_count(self) -> int:
        """Jobs dequeued over the queue's lifetime (the histogram's count)."""
        return sum(self.wait_histogram)


def build_metrics(pool_id: str, policy: str, raw: tuple[Any, ...]) -> QueueMetrics:
    """Turn an engine's raw snapshot tuple into a ``QueueMetrics``.

    ``raw`` is ``(now, capacity, depth_interactive, depth_batch, accepted, rejected[5],
    evicted, cancelled, dequeued, drained, oldest_enqueued_at or None, window_s,
    window_enqueued, window_dequeued, window_hist, window_max_ms, lifetime_hist,
    lifetime_sum_ms, retry_after_ms, closed[, expired, queued_tokens])``. A ``rejected`` tuple
    shorter than ``RejectionReason`` (a backend that predates a reason) counts 0 for the rest.
    """
    (
        now,
        capacity,
        depth_i,
        depth_b,
        accepted,
        rejected,
        evicted,
        cancelled,
        dequeued,
        drained,
        oldest,
        window_s,
        win_enq,
        win_deq,
        win_hist,
        win_max,
        life_hist,
        life_sum,
        retry_after_ms,
        closed,
    ) = raw[:20]
    expired, queued_tokens = raw[20:22] if len(raw) >= 22 else (0, None)
    rejected = tuple(rejected) + (0,) * (len(_REASONS) - len(rejected))
    win_total = sum(win_hist)
    return QueueMetrics(
        pool_id=pool_id,
        policy=policy,
        capacity=capacity,
        depth=depth_i + depth_b,
        depth_interactive=depth_i,
        depth_batch=depth_b,
        accepted=accepted,
        rejected=MappingProxyType(dict(zip(_REASONS, rejected, strict=True))),
        evicted=evicted,
        cancelled=cancelled,
        dequeued=dequeued,
        drained=drained,
        window_s=float(window_s),
        enqueue_rate_per_s=win_enq / window_s if window_s > 0 else 0.0,
        dequeue_rate_per_s=win_deq / window_s if window_s > 0 else 0.0,
        wait_p50_ms=_percentile(win_hist, win_total, 0.50, win_max),
        wait_p90_ms=_percentile(win_hist, win_total, 0.90, win_max),
        wait_p99_ms=_percentile(win_hist, win_total, 0.99, win_max),
        wait_max_ms=win_max if win_total else None,
        oldest_age_ms=None if oldest is None else max(0.0, (now - oldest) * 1000.0),
        retry_after_ms=retry_after_ms,
        wait_histogram=tuple(life_hist),
        wait_sum_ms=life_sum,
        closed=closed,
        expired=expired,
        queued_tokens=queued_tokens,
    )
