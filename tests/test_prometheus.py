"""``orchestrator_core.metrics``: the Prometheus exposition of scripted workloads, sample by sample."""

from __future__ import annotations

import gc
import math
import os
import subprocess
import sys
import threading
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("prometheus_client")

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import (
    generate_latest as generate_openmetrics,
)
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families

from orchestrator_core._stats import WAIT_BUCKET_BOUNDS_MS, WAIT_BUCKETS
from orchestrator_core.metrics import QueueCollector, wait_histogram_buckets

START = 1000.0

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(registry: CollectorRegistry) -> tuple[Samples, dict[str, str]]:
    """Every sample of the text exposition, keyed by name and sorted labels, and each family's type."""
    text = generate_latest(registry).decode()
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in samples, f"duplicate series {key}"
            samples[key] = s.value
    return samples, types


def pool_samples(pool: str, **v: Any) -> Samples:
    """The expected samples of one queue (every family, every series)."""
    p = (("pool_id", pool),)
    out: Samples = {
        (
            "orchd_admission_queue_depth",
            (("pool_id", pool), ("priority", "interactive")),
        ): v["depth_i"],
        ("orchd_admission_queue_depth", (("pool_id", pool), ("priority", "batch"))): v["depth_b"],
        ("orchd_admission_queue_capacity", p): v["capacity"],
        ("orchd_admission_queue_closed", p): v["closed"],
        (
            "orchd_admission_enqueued_total",
            (("outcome", "accepted"), ("pool_id", pool)),
        ): v["accepted"],
        (
            "orchd_admission_enqueued_total",
            (("outcome", "rejected"), ("pool_id", pool)),
        ): sum(v["rejected"].values()),
        ("orchd_admission_evicted_total", p): v["evicted"],
        ("orchd_admission_dequeued_total", p): len(v["waits"]),
        ("orchd_admission_cancelled_total", p): v["cancelled"],
        ("orchd_admission_drained_total", p): v["drained"],
        ("orchd_admission_expired_total", p): v.get("expired", 0),
        ("orchd_admission_enqueue_rate_per_second", p): v["enqueue_rate"],
        ("orchd_admission_dequeue_rate_per_second", p): v["dequeue_rate"],
        ("orchd_admission_oldest_job_age_seconds", p): v["oldest_s"],
        ("orchd_admission_retry_after_seconds", p): v["retry_after_s"],
        ("orchd_queue_wait_time_ms_count", p): len(v["waits"]),
        ("orchd_queue_wait_time_ms_sum", p): sum(v["waits"]),
    }
    for reason in ("QUEUE_FULL", "INVALID_REQUEST", "POLICY_VIOLATION", "QUEUE_CLOSED", "DEADLINE_UNMEETABLE"):
        out[("orchd_admission_rejected_total", (("pool_id", pool), ("reason", reason)))] = v["rejected"].get(reason, 0)
    # One bound per octave (every 4th engine bound) and +Inf; counts straight from the waits.
    for k in range(24):
        le = 0.1 * 2.0**k
        assert le == WAIT_BUCKET_BOUNDS_MS[4 * k]
        out[("orchd_queue_wait_time_ms_bucket", (("le", repr(le)), ("pool_id", pool)))] = sum(
            w <= le for w in v["waits"]
        )
    out[("orchd_queue_wait_time_ms_bucket", (("le", "+Inf"), ("pool_id", pool)))] = len(v["waits"])
    return out


def scripted(impl: ModuleType, clock: Any) -> tuple[list[Any], Samples]:
    """Two queues driven through every counter; returns them and the exact expected scrape."""
    a = impl.Queue(
        3,
        "drop-lru",
        pool_id="pool-a",
        clock=clock,
        max_tokens_limit=100,
        id_prefix="a",
    )
    b = impl.Queue(2, "reject-new", pool_id="pool-b", clock=clock, id_prefix="b")
    i = impl.Task("m", 10)
    bt = impl.Task("m", 10, priority="batch")

    # pool-a, second 1000: three admitted, a fourth evicts the LRU batch job, one too long.
    assert [a.enqueue(t).accepted for t in (bt, bt, i)] == [True, True, True]
    assert a.enqueue(i).evicted.job_id == "a-1"
    assert a.enqueue(impl.Task("m", 101)).reason.value == "POLICY_VIOLATION"
    # pool-b, second 1000: two admitted, one refused (full), one duplicate id.
    assert b.enqueue(impl.Task("m", 1, job_id="x")).accepted
    assert b.enqueue(i).accepted
    assert b.enqueue(i).reason.value == "QUEUE_FULL"
    assert b.enqueue(impl.Task("m", 1, job_id="x")).reason.value == "INVALID_REQUEST"

    clock.now = START + 2**-10  # b's first job waited 0.9765625 ms
    assert b.dequeue().job_id == "x"
    clock.now = START + 0.5  # a's two interactive jobs waited 500 ms each
    assert [j.job_id for j in a.dequeue_many(2)] == ["a-3", "a-4"]
    assert a.cancel("a-2")
    assert a.enqueue(bt).job_id == "a-5"  # the one job left in a, admitted at 1000.5
    clock.now = START + 1.25
    assert b.enqueue(i).accepted  # second 1001
    clock.now = START + 1.5
    b.close()
    assert b.enqueue(i).reason.value == "QUEUE_CLOSED"
    assert len(b.drain()) == 2  # b-1 (waited) and the 1001.25 job
    clock.now = START + 2.0  # the scrape: window = seconds 1000 and 1001

    expected = pool_samples(
        "pool-a",
        depth_i=0,
        depth_b=1,
        capacity=3,
        closed=0,
        accepted=5,
        rejected={"POLICY_VIOLATION": 1},
        evicted=1,
        cancelled=1,
        drained=0,
        waits=[500.0, 500.0],
        enqueue_rate=2.5,  # 5 accepted in 2 s
        dequeue_rate=1.0,  # 2 dequeued in 2 s
        oldest_s=1.5,  # a-5 since 1000.5
        retry_after_s=1.0,  # ceil(1000 * 2 s / 2) ms
    )
    expected |= pool_samples(
        "pool-b",
        depth_i=0,
        depth_b=0,
        capacity=2,
        closed=1,
        accepted=3,
        rejected={"QUEUE_FULL": 1, "INVALID_REQUEST": 1, "QUEUE_CLOSED": 1},
        evicted=0,
        cancelled=0,
        drained=2,
        waits=[0.9765625],
        enqueue_rate=1.5,
        dequeue_rate=0.5,
        oldest_s=0.0,  # empty
        retry_after_s=2.0,  # ceil(1000 * 2 s / 1) ms
    )
    return [a, b], expected


FAMILY_TYPES = {
    "orchd_admission_queue_depth": "gauge",
    "orchd_admission_queue_capacity": "gauge",
    "orchd_admission_queue_closed": "gauge",
    "orchd_admission_enqueued": "counter",
    "orchd_admission_rejected": "counter",
    "orchd_admission_evicted": "counter",
    "orchd_admission_dequeued": "counter",
    "orchd_admission_cancelled": "counter",
    "orchd_admission_drained": "counter",
    "orchd_admission_expired": "counter",
    "orchd_admission_enqueue_rate_per_second": "gauge",
    "orchd_admission_dequeue_rate_per_second": "gauge",
    "orchd_admission_oldest_job_age_seconds": "gauge",
    "orchd_admission_retry_after_seconds": "gauge",
    "orchd_queue_wait_time_ms": "histogram",
}


def test_scripted_workload_exposition_is_exact(impl: ModuleType, clock: Any) -> None:
    registry = CollectorRegistry()
    collector = QueueCollector(registry)
    queues, expected = scripted(impl, clock)
    for q in queues:
        collector.register_queue(q)
    samples, types = scrape(registry)
    assert types == FAMILY_TYPES
    assert samples == expected
    # Counters balance in the exposition as in the engine.
    for pool in ("pool-a", "pool-b"):
        p = (("pool_id", pool),)
        accepted = samples[
            (
                "orchd_admission_enqueued_total",
                (("outcome", "accepted"), ("pool_id", pool)),
            )
        ]
        depth = sum(
            samples[("orchd_admission_queue_depth", (("pool_id", pool), ("priority", pr)))]
            for pr in ("interactive", "batch")
        )
        out = sum(samples[(f"orchd_admission_{n}_total", p)] for n in ("dequeued", "cancelled", "evicted", "drained"))
        assert accepted == out + depth


def test_exposition_text_shape(impl: ModuleType, clock: Any) -> None:
    registry = CollectorRegistry()
    collector = QueueCollector(registry)
    queues, _ = scripted(impl, clock)
    collector.register_queue(queues[0])
    text = generate_latest(registry).decode()
    assert "# TYPE orchd_queue_wait_time_ms histogram\n" in text
    assert "# TYPE orchd_admission_enqueued_total counter\n" in text
    assert 'orchd_queue_wait_time_ms_bucket{le="819.2",pool_id="pool-a"} 2.0\n' in text
    assert 'orchd_queue_wait_time_ms_bucket{le="409.6",pool_id="pool-a"} 0.0\n' in text
    assert 'orchd_queue_wait_time_ms_sum{pool_id="pool-a"} 1000.0\n' in text
    assert 'orchd_admission_enqueued_total{outcome="rejected",pool_id="pool-a"} 1.0\n' in text
    assert "_created" not in text  # no creation-time series: the engine has none to report


def test_openmetrics_exposition_parses(impl: ModuleType, clock: Any) -> None:
    registry = CollectorRegistry()
    collector = QueueCollector(registry)
    queues, expected = scripted(impl, clock)
    for q in queues:
        collector.register_queue(q)
    text = generate_openmetrics(registry).decode()
    assert "# UNIT orchd_admission_oldest_job_age_seconds seconds\n" in text
    got = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in parse_openmetrics(text) for s in f.samples}
    assert got == expected


def test_dropped_queue_disappears(impl: ModuleType, clock: Any) -> None:
    registry = CollectorRegistry()
    collector = QueueCollector(registry)
    keep = impl.Queue(1, pool_id="keep", clock=clock)
    drop = impl.Queue(1, pool_id="drop", clock=clock)
    collector.register_queue(keep)
    collector.register_queue(drop)
    pools = {dict(labels).get("pool_id") for _, labels in scrape(registry)[0]}
    assert pools == {"keep", "drop"}
    del drop
    gc.collect()
    pools = {dict(labels).get("pool_id") for _, labels in scrape(registry)[0]}
    assert pools == {"keep"}
    assert collector.queues() == [keep]
    # The pool_id is free again.
    again = impl.Queue(1, pool_id="drop", clock=clock)
    collector.register_queue(again)
    assert collector.queues() == [again, keep]


def test_register_and_unregister(impl: ModuleType, clock: Any) -> None:
    registry = CollectorRegistry()
    collector = QueueCollector(registry)
    q = impl.Queue(1, pool_id="p", clock=clock)
    collector.register_queue(q)
    collector.register_queue(q)  # idempotent
    assert collector.queues() == [q]
    with pytest.raises(ValueError, match="pool_id 'p' is already registered"):
        collector.register_queue(impl.Queue(1, pool_id="p", clock=clock))
    assert collector.unregister_queue(impl.Queue(1, pool_id="p", clock=clock)) is False
    assert collector.unregister_queue(q) is True
    assert collector.unregister_queue(q) is False
    samples, types = scrape(registry)
    assert samples == {}
    assert types == FAMILY_TYPES  # the families stay, without samples
    with pytest.raises(TypeError, match="queue must be a Queue or AsyncQueue"):
        collector.register_queue(object())  # type: ignore[arg-type]


def test_async_queue_can_be_registered(impl: ModuleType, clock: Any) -> None:
    from orchestrator_core.aio import AsyncQueue

    registry = CollectorRegistry()
    collector = QueueCollector(registry)
    aq = AsyncQueue.wrap(impl.Queue(4, pool_id="async", clock=clock))
    aq.enqueue(impl.Task("m", 1))
    collector.register_queue(aq)
    samples, _ = scrape(registry)
    key = (
        "orchd_admission_queue_depth",
        (("pool_id", "async"), ("priority", "interactive")),
    )
    assert samples[key] == 1.0


def test_one_collector_per_registry() -> None:
    registry = CollectorRegistry()
    QueueCollector(registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        QueueCollector(registry)
    unregistered = QueueCollector(None)
    other = CollectorRegistry()
    other.register(unregistered)
    assert scrape(other)[1] == FAMILY_TYPES


@pytest.mark.parametrize(("per_octave", "finite"), [(1, 24), (2, 47), (4, 93)])
def test_bucket_resolution(impl: ModuleType, clock: Any, per_octave: int, finite: int) -> None:
    registry = CollectorRegistry()
    collector = QueueCollector(registry, wait_buckets_per_octave=per_octave)
    q = impl.Queue(10, pool_id="p", clock=clock)
    waits = [0.0, 2**-10 * 1000, 2**-7 * 1000, 0.25 * 1000]
    for w in sorted(waits, reverse=True):  # enqueue the longest wait first, dequeue all at once
        clock.now = START + 0.25 - w / 1000
        q.enqueue(impl.Task("m", 1))
    clock.now = START + 0.25
    assert len(q.dequeue_many(10)) == 4
    collector.register_queue(q)
    samples, _ = scrape(registry)
    buckets = {
        dict(labels)["le"]: v for (name, labels), v in samples.items() if name == "orchd_queue_wait_time_ms_bucket"
    }
    assert len(buckets) == finite + 1
    assert buckets.pop("+Inf") == 4
    for le, count in buckets.items():
        assert float(le) in WAIT_BUCKET_BOUNDS_MS
        assert count == sum(w <= float(le) for w in waits), le


def test_wait_histogram_buckets_is_cumulative_and_exact() -> None:
    hist = [0] * WAIT_BUCKETS
    hist[0], hist[3], hist[4], hist[5], hist[92], hist[93] = 1, 2, 3, 4, 5, 6
    octave = wait_histogram_buckets(hist)
    assert octave[0] == (0.1, 1)
    assert octave[1] == (0.2, 1 + 2 + 3)  # engine buckets 1..4 nest inside (0.1, 0.2]
    assert octave[2] == (0.4, 10)
    assert octave[-2] == (WAIT_BUCKET_BOUNDS_MS[92], 15)
    assert octave[-1] == (math.inf, 21)
    fine = wait_histogram_buckets(hist, 4)
    assert [n for _, n in fine][:6] == [1, 1, 1, 3, 6, 10]
    with pytest.raises(ValueError, match="buckets_per_octave must be 1, 2 or 4, got 3"):
        wait_histogram_buckets(hist, 3)
    with pytest.raises(ValueError, match="histogram must have 94 counts, got 3"):
        wait_histogram_buckets([1, 2, 3])
    with pytest.raises(ValueError, match="wait_buckets_per_octave must be 1, 2 or 4, got 8"):
        QueueCollector(None, wait_buckets_per_octave=8)


def test_scrapes_under_concurrent_load_always_balance(impl: ModuleType) -> None:
    registry = CollectorRegistry()
    collector = QueueCollector(registry)
    q = impl.Queue(64, "drop-lru", pool_id="busy")
    collector.register_queue(q)
    stop = threading.Event()

    def producer() -> None:
        t = impl.Task("m", 1)
        b = impl.Task("m", 1, priority="batch")
        n = 0
        while not stop.is_set():
            res = q.enqueue(b if n % 3 else t)
            if n % 7 == 0 and res.accepted:
                q.cancel(res.job_id)
            n += 1

    def consumer() -> None:
        while not stop.is_set():
            q.dequeue_many(4, timeout=0.001)

    threads = [threading.Thread(target=producer), threading.Thread(target=consumer)]
    for th in threads:
        th.start()
    try:
        for _ in range(40):
            s, _ = scrape(registry)
            p = (("pool_id", "busy"),)
            accepted = s[
                (
                    "orchd_admission_enqueued_total",
                    (("outcome", "accepted"), ("pool_id", "busy")),
                )
            ]
            depth = sum(
                s[
                    (
                        "orchd_admission_queue_depth",
                        (("pool_id", "busy"), ("priority", pr)),
                    )
                ]
                for pr in ("interactive", "batch")
            )
            out = sum(s[(f"orchd_admission_{n}_total", p)] for n in ("dequeued", "cancelled", "evicted", "drained"))
            assert accepted == out + depth
            assert s[("orchd_queue_wait_time_ms_count", p)] == s[("orchd_admission_dequeued_total", p)]
            assert depth <= 64
    finally:
        stop.set()
        for th in threads:
            th.join()


def test_import_without_prometheus_client_names_the_extra() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'prometheus_client' or name.startswith('prometheus_client.'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "try:\n"
        "    import orchestrator_core.metrics\n"
        "except ImportError as exc:\n"
        "    print(exc)\n"
        "else:\n"
        "    print('imported')\n"
    )
    # The child imports the same orchestrator_core as this process (source tree or wheel).
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    assert "pip install 'orchestrator-core[prometheus]'" in out.stdout
    assert "imported" not in out.stdout
