"""What metrics cost: ``q.metrics()`` itself, its share of an enqueue+dequeue pair, a Prometheus scrape.

Run: ``PYTHONPATH=src python3 -m pytest benchmarks/bench_metrics.py --benchmark-only``

Names are stable for baseline comparison; the engine is the ``[c]`` / ``[py]`` part of the id.

* group ``metrics-overhead``: a round is ``OPS`` (1,000) ``q.enqueue(t); q.dequeue()`` pairs,
  alone (``test_pairs``) or with one ``q.metrics()`` call every 10 / 100 / 1,000 pairs
  (``test_pairs_with_metrics[every-N]``), so each figure reads as nanoseconds per pair;
* group ``metrics-call``: one ``q.metrics()`` at depth 10 and at depth 100,000 (it must not
  depend on depth: it reads counters, the head of each class and the fixed-size window);
* group ``prometheus-scrape``: ``generate_latest`` of a registry whose ``QueueCollector``
  exports 1 or 100 queues.
"""

from __future__ import annotations

from itertools import repeat
from types import ModuleType
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

OPS = 1000


def _pairs(q: Any, task: Any) -> None:
    enqueue = q.enqueue
    dequeue = q.dequeue
    for _ in repeat(None, OPS):
        enqueue(task)
        dequeue()


def _pairs_with_metrics(q: Any, task: Any, every: int) -> None:
    enqueue = q.enqueue
    dequeue = q.dequeue
    metrics = q.metrics
    for _ in repeat(None, OPS // every):
        for _ in repeat(None, every):
            enqueue(task)
            dequeue()
        metrics()


def _per_op(benchmark: BenchmarkFixture, impl: ModuleType, ops: int) -> None:
    benchmark.extra_info["impl"] = impl.__name__.rsplit("_", 1)[-1]
    benchmark.extra_info["ops_per_round"] = ops
    stats = getattr(benchmark.stats, "stats", None)  # absent when benchmarks are disabled
    if stats is not None and stats.data:
        benchmark.extra_info["ns_per_op"] = round(stats.median / ops * 1e9, 1)


def test_pairs(benchmark: BenchmarkFixture, impl: ModuleType) -> None:
    benchmark.group = "metrics-overhead"
    q = impl.Queue(1024, "reject-new", id_prefix="b")
    benchmark(_pairs, q, impl.Task("m", 1))
    assert q.metrics().dequeued == q.metrics().accepted
    _per_op(benchmark, impl, OPS)


@pytest.mark.parametrize("every", [10, 100, 1000], ids=lambda n: f"every-{n}")
def test_pairs_with_metrics(benchmark: BenchmarkFixture, impl: ModuleType, every: int) -> None:
    benchmark.group = "metrics-overhead"
    q = impl.Queue(1024, "reject-new", id_prefix="b")
    benchmark(_pairs_with_metrics, q, impl.Task("m", 1), every)
    assert q.metrics().dequeued == q.metrics().accepted
    benchmark.extra_info["metrics_every"] = every
    _per_op(benchmark, impl, OPS)


@pytest.mark.parametrize("depth", [10, 100_000], ids=lambda n: f"depth-{n}")
def test_metrics_call(benchmark: BenchmarkFixture, impl: ModuleType, depth: int) -> None:
    benchmark.group = "metrics-call"
    q = impl.Queue(depth, "reject-new", id_prefix="b")
    task = impl.Task("m", 1)
    for _ in range(depth):
        q.enqueue(task)
    for _ in range(depth // 2):  # leave waits in the histograms and both halves of the ring used
        q.dequeue()
        q.enqueue(task)
    m = benchmark(q.metrics)
    assert m.depth == depth
    benchmark.extra_info["depth"] = depth
    _per_op(benchmark, impl, 1)


@pytest.mark.parametrize("queues", [1, 100], ids=lambda n: f"queues-{n}")
def test_prometheus_scrape(benchmark: BenchmarkFixture, impl: ModuleType, queues: int) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    from orchestrator_core.metrics import QueueCollector

    benchmark.group = "prometheus-scrape"
    registry = prometheus_client.CollectorRegistry()
    collector = QueueCollector(registry)
    task = impl.Task("m", 1)
    keep = []
    for i in range(queues):
        q = impl.Queue(100, "drop-lru", pool_id=f"pool-{i:03d}", id_prefix="b")
        for _ in range(50):
            q.enqueue(task)
        for _ in range(10):
            q.dequeue()
        collector.register_queue(q)
        keep.append(q)
    text = benchmark(prometheus_client.generate_latest, registry)
    assert text.count(b"orchd_queue_wait_time_ms_count{") == queues
    benchmark.extra_info["queues"] = queues
    _per_op(benchmark, impl, 1)
