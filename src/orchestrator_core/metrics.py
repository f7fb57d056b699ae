"""Prometheus exposition of admission queues (needs ``pip install 'orchestrator-core[prometheus]'``).

``QueueCollector`` is a custom ``prometheus_client`` collector: it holds weak references to
the queues registered with it and calls ``q.metrics()`` for each of them at scrape time, so
a scrape always shows one consistent snapshot per queue and a queue that is dropped
disappears from the output without being unregistered::

    from orchestrator_core import Queue
    from orchestrator_core.metrics import QueueCollector

    collector = QueueCollector()  # registers itself with prometheus_client.REGISTRY
    q = Queue(1000, "drop-lru", pool_id="pool-0")
    collector.register_queue(q)

Every series carries a ``pool_id`` label (unique per collector). The families:

* ``orchd_admission_queue_depth{priority}`` (gauge): jobs queued now, one series per
  priority (``interactive``, ``batch``) and no unlabelled total, so that
  ``sum by (pool_id) (orchd_admission_queue_depth)`` is the depth and no aggregation
  counts a job twice;
* ``orchd_admission_queue_capacity`` (gauge), ``orchd_admission_queue_closed`` (gauge, 0/1);
* ``orchd_admission_enqueued_total{outcome}`` (counter, ``accepted`` / ``rejected``),
  ``orchd_admission_rejected_total{reason}`` (counter, one series per ``RejectionReason``),
  ``orchd_admission_evicted_total``, ``orchd_admission_dequeued_total``,
  ``orchd_admission_cancelled_total``, ``orchd_admission_drained_total``,
  ``orchd_admission_expired_total`` (counters); they balance:
  accepted == dequeued + cancelled + evicted + drained + expired + depth;
* ``orchd_admission_enqueue_rate_per_second`` / ``orchd_admission_dequeue_rate_per_second``
  (gauges): the engine's own rates over its last ``window_s`` completed seconds (PromQL's
  ``rate()`` over the counters is the usual alternative);
* ``orchd_admission_oldest_job_age_seconds`` (gauge, 0 when the queue is empty) and
  ``orchd_admission_retry_after_seconds`` (gauge: the back-off a ``QUEUE_FULL`` refusal
  would advise now);
* ``orchd_queue_wait_time_ms`` (histogram of the time dequeued jobs spent queued, over the
  queue's lifetime). Its name keeps the unit of the original specification, milliseconds,
  although Prometheus prefers base units (seconds): bucket bounds, ``_sum`` and the name
  are all in milliseconds.

The histogram's buckets are a subset of the engine's (four per octave from 0.1 ms, see
``orchestrator_core._stats``): by default one per octave, ``le`` = 0.1, 0.2, 0.4, ...,
838860.8 ms and ``+Inf``. The engine's buckets nest inside the exported ones, so every
exported cumulative count is exact, not interpolated.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

try:
    from prometheus_client.core import (
        REGISTRY,
        CollectorRegistry,
        CounterMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
    from prometheus_client.utils import floatToGoString
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "orchestrator_core.metrics needs prometheus_client: pip install 'orchestrator-core[prometheus]'"
    ) from exc

from ._stats import WAIT_BUCKET_BOUNDS_MS, WAIT_BUCKETS, QueueMetrics
from ._types import Priority, RejectionReason

__all__ = ["MetricsSource", "QueueCollector", "wait_histogram_buckets"]

#: Engine buckets per octave of wait time (``WAIT_BUCKET_BOUNDS_MS`` doubles every 4 bounds).
_ENGINE_BUCKETS_PER_OCTAVE = 4


class MetricsSource(Protocol):
    """What ``QueueCollector`` needs from a queue: a ``Queue`` or an ``aio.AsyncQueue``."""

    @property
    def pool_id(self) -> str:
        """The label value that identifies the queue."""
        ...

    def metrics(self) -> QueueMetrics:
        """A consistent snapshot of the queue."""
        ...


def wait_histogram_buckets(
    histogram: tuple[int, ...] | list[int], buckets_per_octave: int = 1
) -> list[tuple[float, int]]:
    """Cumulative ``(le_ms, count)`` pairs from an engine's per-bucket wait histogram.

    ``histogram`` is ``QueueMetrics.wait_histogram`` (``WAIT_BUCKETS`` counts, +Inf last);
    ``buckets_per_octave`` is 1, 2 or 4 (4 keeps every engine bound). The last pair is
    ``(inf, total)``. Each count is exact: engine bucket ``i`` holds waits in
    ``(bound[i-1], bound[i]]``, so the cumulative count up to an engine bound is the number
    of waits ``<=`` that bound.
    """
    step = _step(buckets_per_octave, "buckets_per_octave")
    if len(histogram) != WAIT_BUCKETS:
        raise ValueError(f"histogram must have {WAIT_BUCKETS} counts, got {len(histogram)}")
    out: list[tuple[float, int]] = []
    seen = 0
    for i, n in enumerate(histogram):
        seen += n
        if i < WAIT_BUCKETS - 1 and i % step == 0:
            out.append((WAIT_BUCKET_BOUNDS_MS[i], seen))
    out.append((float("inf"), seen))
    return out


def _step(buckets_per_octave: object, param: str) -> int:
    if type(buckets_per_octave) is not int or buckets_per_octave not in (1, 2, 4):
        raise ValueError(f"{param} must be 1, 2 or 4, got {buckets_per_octave!r}")
    return _ENGINE_BUCKETS_PER_OCTAVE // buckets_per_octave


_PRIORITIES = tuple(p.value for p in Priority)
_REASONS = tuple(RejectionReason)


class QueueCollector:
    """A ``prometheus_client`` collector that reads registered queues at scrape time.

    ``QueueCollector(registry=REGISTRY, *, wait_buckets_per_octave=1)`` registers itself
    with ``registry`` (pass ``None`` to register it yourself). Queues are held by weak
    reference: a queue that is garbage-collected leaves the output. ``pool_id`` is the
    label that tells queues apart, so two live queues with the same ``pool_id`` cannot be
    registered with one collector. Thread-safe.
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = REGISTRY,
        *,
        wait_buckets_per_octave: int = 1,
    ) -> None:
        _step(wait_buckets_per_octave, "wait_buckets_per_octave")
        self._buckets_per_octave = wait_buckets_per_octave
        self._lock = threading.Lock()
        self._queues: dict[str, weakref.ref[MetricsSource]] = {}
        if registry is not None:
            registry.register(self)

    # -- registration -----------------------------------------------------------------
    def register_queue(self, queue: MetricsSource) -> None:
        """Export ``queue`` (weakly referenced) from the next scrape on. Idempotent.

        Raises ``ValueError`` when another live queue with the same ``pool_id`` is
        registered, ``TypeError`` when ``queue`` has no ``metrics()`` or cannot be weakly
        referenced.
        """
        metrics = getattr(queue, "metrics", None)
        pool_id = getattr(queue, "pool_id", None)
        if not callable(metrics) or type(pool_id) is not str:
            raise TypeError(f"queue must be a Queue or AsyncQueue (with pool_id and metrics()), got {queue!r}")
        ref = weakref.ref(queue)
        with self._lock:
            current = self._queues.get(pool_id)
            existing = None if current is None else current()
            if existing is queue:
                return
            if existing is not None:
                raise ValueError(
                    f"queue.pool_id {pool_id!r} is already registered with this collector (by {existing!r}); "
                    "pool_id labels must be unique"
                )
            self._queues[pool_id] = ref

    def unregister_queue(self, queue: MetricsSource) -> bool:
        """Stop exporting ``queue``; False if it was not registered. Idempotent."""
        pool_id = getattr(queue, "pool_id", None)
        with self._lock:
            current = self._queues.get(pool_id) if type(pool_id) is str else None
            if current is None or current() is not queue:
                return False
            del self._queues[pool_id]  # type: ignore[arg-type]
            return True

    def queues(self) -> list[MetricsSource]:
        """The live registered queues, by ``pool_id``."""
        return [q for _, q in self._live()]

    def _live(self) -> list[tuple[str, MetricsSource]]:
        with self._lock:
            out = []
            for pool_id, ref in list(self._queues.items()):
                q = ref()
                if q is None:
                    del self._queues[pool_id]
                else:
                    out.append((pool_id, q))
        out.sort(key=lambda item: item[0])
        return out

    # -- prometheus_client protocol ---------------------------------------------------
    def describe(self) -> Iterable[Metric]:
        """The families this collector exports, without samples (lets the registry catch name clashes)."""
        return _Families().all()

    def collect(self) -> Iterator[Metric]:
        """One sample set per live registered queue, from one ``q.metrics()`` call each."""
        f = _Families()
        for pool_id, q in self._live():
            m = q.metrics()
            pool = [pool_id]
            f.depth.add_metric([pool_id, "interactive"], m.depth_interactive)
            f.depth.add_metric([pool_id, "batch"], m.depth_batch)
            f.capacity.add_metric(pool, m.capacity)
            f.closed.add_metric(pool, 1.0 if m.closed else 0.0)
            f.enqueued.add_metric([pool_id, "accepted"], m.accepted)
            f.enqueued.add_metric([pool_id, "rejected"], m.rejected_total)
            for reason in _REASONS:
                f.rejected.add_metric([pool_id, reason.value], m.rejected.get(reason, 0))
            f.evicted.add_metric(pool, m.evicted)
            f.dequeued.add_metric(pool, m.dequeued)
            f.cancelled.add_metric(pool, m.cancelled)
            f.drained.add_metric(pool, m.drained)
            f.expired.add_metric(pool, m.expired)
            f.enqueue_rate.add_metric(pool, m.enqueue_rate_per_s)
            f.dequeue_rate.add_metric(pool, m.dequeue_rate_per_s)
            f.oldest_age.add_metric(pool, 0.0 if m.oldest_age_ms is None else m.oldest_age_ms / 1000.0)
            f.retry_after.add_metric(pool, m.retry_after_ms / 1000.0)
            buckets = [
                (_go_float(le), float(n))
                for le, n in wait_histogram_buckets(m.wait_histogram, self._buckets_per_octave)
            ]
            f.wait.add_metric(pool, buckets, m.wait_sum_ms)
        yield from f.all()


# Prometheus' own float formatting for ``le`` labels (``+Inf``, Go-style exponents).
_go_float: Callable[[float], str] = floatToGoString


class _Families:
    """The exported families, fresh (without samples) for each scrape."""

    __slots__ = (
        "cancelled",
        "capacity",
        "closed",
        "depth",
        "dequeue_rate",
        "dequeued",
        "drained",
        "enqueue_rate",
        "enqueued",
        "evicted",
        "expired",
        "oldest_age",
        "rejected",
        "retry_after",
        "wait",
    )

    def __init__(self) -> None:
        pool = ["pool_id"]
        self.depth = GaugeMetricFamily(
            "orchd_admission_queue_depth",
            "Jobs queued now, by priority (sum over priority for the queue's depth).",
            labels=["pool_id", "priority"],
        )
        self.capacity = GaugeMetricFamily(
            "orchd_admission_queue_capacity", "The most jobs the queue holds.", labels=pool
        )
        self.closed = GaugeMetricFamily(
            "orchd_admission_queue_closed", "1 once the queue is closed (refuses new tasks), else 0.", labels=pool
        )
        self.enqueued = CounterMetricFamily(
            "orchd_admission_enqueued_total",
            "Tasks offered to the queue, by outcome (accepted or rejected).",
            labels=["pool_id", "outcome"],
        )
        self.rejected = CounterMetricFamily(
            "orchd_admission_rejected_total", "Tasks refused, by RejectionReason.", labels=["pool_id", "reason"]
        )
        self.evicted = CounterMetricFamily(
            "orchd_admission_evicted_total", "Queued jobs evicted by DROP_LRU to admit a new task.", labels=pool
        )
        self.dequeued = CounterMetricFamily(
            "orchd_admission_dequeued_total", "Jobs handed to consumers by dequeue.", labels=pool
        )
        self.cancelled = CounterMetricFamily(
            "orchd_admission_cancelled_total", "Queued jobs removed by cancel.", labels=pool
        )
        self.drained = CounterMetricFamily(
            "orchd_admission_drained_total", "Queued jobs removed by drain.", labels=pool
        )
        self.expired = CounterMetricFamily(
            "orchd_admission_expired_total",
            "Queued jobs that waited longer than their max_wait_ms (handed over by take_expired).",
            labels=pool,
        )
        self.enqueue_rate = GaugeMetricFamily(
            "orchd_admission_enqueue_rate_per_second",
            "Accepted tasks per second over the queue's last completed seconds (up to 10).",
            labels=pool,
        )
        self.dequeue_rate = GaugeMetricFamily(
            "orchd_admission_dequeue_rate_per_second",
            "Dequeued jobs per second over the queue's last completed seconds (up to 10).",
            labels=pool,
        )
        self.oldest_age = GaugeMetricFamily(
            "orchd_admission_oldest_job_age_seconds",
            "How long the oldest queued job has waited (0 when the queue is empty).",
            labels=pool,
            unit="seconds",
        )
        self.retry_after = GaugeMetricFamily(
            "orchd_admission_retry_after_seconds",
            "The back-off a QUEUE_FULL refusal would advise now (Rejected.retry_after_ms / 1000).",
            labels=pool,
            unit="seconds",
        )
        self.wait = HistogramMetricFamily(
            "orchd_queue_wait_time_ms",
            "Time dequeued jobs spent queued, in milliseconds (not seconds: the specified name), lifetime.",
            labels=pool,
        )

    def all(self) -> list[Metric]:
        """Every family, in exposition order."""
        return [
            self.depth,
            self.capacity,
            self.closed,
            self.enqueued,
            self.rejected,
            self.evicted,
            self.dequeued,
            self.cancelled,
            self.drained,
            self.expired,
            self.enqueue_rate,
            self.dequeue_rate,
            self.oldest_age,
            self.retry_after,
            self.wait,
        ]
