"""What deadlines, tenants and token budgets cost on the hot path (issue 10), on both engines.

Run: ``PYTHONPATH=src python3 -m pytest benchmarks/bench_features.py --benchmark-only``.

Names are stable for baseline comparison: group ``features-pair`` times one ``enqueue`` + ``dequeue``
of prebuilt tasks (``OPS`` pairs per round, so microseconds per round read as nanoseconds per pair)
with the test id ``<engine>-<case>``:

* ``plain``: a default queue and task: the features unused (must be within noise of the plain
  queue before the features existed);
* ``deadline``: every task has a ``max_wait_ms`` that never expires (one deadline lane);
* ``budget``: the queue has a ``max_queued_tokens`` (tokens are counted in and out);
* ``tenant``: every task names the same tenant (one lane, a tenant record made and freed per pair);
* ``tenants-16``: 16 tenants with 8 jobs each queued behind; pairs rotate through the tenants
  (each enqueue and dequeue updates the class's rank tree; ``Accepted.position`` counts in it);
* ``all``: deadline, budget and the 16 tenants together.

Group ``features-position`` times ``position()`` at depth 10,000 spread over 1 to 1,000 tenants,
``features-evict`` an evicting enqueue (DROP_LRU at capacity 10,000) over 1 to 1,000 tenants (the
victim is the tenant with the most jobs: both are O(log n) whatever the number of tenants), and
``features-memory`` the traced bytes per queued job with a tenant and a deadline on every task (over 1
or 40 tenants).
"""

from __future__ import annotations

import gc
import importlib
import os
import tracemalloc
from itertools import cycle, islice
from types import ModuleType
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from orchestrator_core import _core_py as core_py

NO_EXTENSIONS = os.environ.get("ORCHESTRATOR_CORE_NO_EXTENSIONS", "") not in ("", "0")
core_c: ModuleType | None = None
if not NO_EXTENSIONS:
    try:
        core_c = importlib.import_module("orchestrator_core._core_c")
    except ImportError:
        if os.environ.get("ORCHESTRATOR_CORE_REQUIRE_EXTENSION", "") not in ("", "0"):
            raise

OPS = 1000
MODEL = "llama-3.1-8b-instruct"
CASES = ["plain", "deadline", "budget", "tenant", "tenants-16", "all"]
TENANTS = [f"tenant-{i:02d}" for i in range(16)]
BACKLOG_PER_TENANT = 8


def _engines(*, heavy_py: bool = False) -> list[Any]:
    out = [
        pytest.param(core_c, id="c", marks=[pytest.mark.skip(reason="no compiled engine")] if core_c is None else [])
    ]
    out.append(pytest.param(core_py, id="py", marks=[pytest.mark.heavy] if heavy_py else []))
    return out


def _record(benchmark: BenchmarkFixture, impl: ModuleType, case: str, ops_per_round: int) -> None:
    benchmark.extra_info["impl"] = "c" if impl is core_c else "py"
    benchmark.extra_info["case"] = case
    benchmark.extra_info["ops_per_round"] = ops_per_round


def _finish(benchmark: BenchmarkFixture) -> None:
    stats = getattr(benchmark.stats, "stats", None)
    if stats is not None and stats.data:
        benchmark.extra_info["ns_per_op"] = round(stats.median / benchmark.extra_info["ops_per_round"] * 1e9, 1)


def _setup(impl: ModuleType, case: str) -> tuple[Any, list[Any]]:
    """The queue and the prebuilt tasks the pairs cycle through (queue pre-filled where the case says)."""
    deadline = case in ("deadline", "all")
    budget = case in ("budget", "all")
    q = impl.Queue(4096, max_queued_tokens=10**9 if budget else None)
    kw: dict[str, Any] = {"max_wait_ms": 3_600_000.0} if deadline else {}
    if case in ("tenants-16", "all"):
        tasks = [impl.Task(MODEL, 100, tenant=t, **kw) for t in TENANTS]
        for _ in range(BACKLOG_PER_TENANT):
            for task in tasks:
                assert q.enqueue(task).accepted
    elif case == "tenant":
        tasks = [impl.Task(MODEL, 100, tenant="acme")]
    else:
        tasks = [impl.Task(MODEL, 100, **kw)]
    return q, tasks


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("impl", _engines())
def test_features_pair(benchmark: BenchmarkFixture, impl: ModuleType, case: str) -> None:
    """One enqueue and one dequeue per operation, with the feature of ``case`` in use."""
    q, tasks = _setup(impl, case)
    enqueue, dequeue = q.enqueue, q.dequeue
    depth = q.depth()
    if len(tasks) == 1:
        (task,) = tasks

        def pairs() -> None:
            for _ in range(OPS):
                enqueue(task)
                dequeue()

    else:
        sequence = list(islice(cycle(tasks), OPS))

        def pairs() -> None:
            for task in sequence:
                enqueue(task)
                dequeue()

    benchmark.group = "features-pair"
    _record(benchmark, impl, case, OPS)
    benchmark(pairs)
    _finish(benchmark)
    assert q.depth() == depth and q.metrics().expired == 0


@pytest.mark.parametrize("tenants", [1, 10, 100, 1000])
@pytest.mark.parametrize("impl", _engines())
def test_features_position(benchmark: BenchmarkFixture, impl: ModuleType, tenants: int) -> None:
    """``position()`` of jobs spread through a queue of depth 10,000 over ``tenants`` tenants."""
    q = impl.Queue(20_000)
    ids = [q.enqueue(impl.Task(MODEL, 1, tenant=f"t{i % tenants}")).job_id for i in range(10_000)]
    for x in ids[1::3]:
        q.cancel(x)  # tombstones: the Fenwick tree is in use
    probes = ids[::97]
    position = q.position

    def positions() -> None:
        for x in probes:
            position(x)

    benchmark.group = "features-position"
    _record(benchmark, impl, f"{tenants}-tenants", len(probes))
    benchmark(positions)
    _finish(benchmark)


@pytest.mark.parametrize("tenants", [1, 10, 1000])
@pytest.mark.parametrize("impl", _engines())
def test_features_evict(benchmark: BenchmarkFixture, impl: ModuleType, tenants: int) -> None:
    """Enqueues into a DROP_LRU queue full at 10,000 jobs spread over ``tenants`` tenants: each one
    evicts the least recently used job of the tenant with the most jobs."""
    q = impl.Queue(10_000, "drop-lru")
    names = [f"t{i}" for i in range(tenants)]
    for i in range(10_000):
        assert q.enqueue(impl.Task(MODEL, 1, tenant=names[i % tenants])).accepted
    tasks = [impl.Task(MODEL, 1, tenant=names[(i * 7) % tenants]) for i in range(OPS)]
    enqueue = q.enqueue

    def evicting() -> None:
        for task in tasks:
            enqueue(task)

    benchmark.group = "features-evict"
    _record(benchmark, impl, f"{tenants}-tenants", OPS)
    benchmark(evicting)
    _finish(benchmark)
    m = q.metrics()
    assert q.depth() == 10_000 and m.evicted == m.accepted - 10_000 > 0


MEMORY_DEPTH = 1_000_000


@pytest.mark.parametrize("tenants", [1, 40])
@pytest.mark.parametrize("impl", _engines(heavy_py=True))
def test_features_memory(benchmark: BenchmarkFixture, impl: ModuleType, tenants: int) -> None:
    """Traced bytes per queued job (``extra_info["bytes_per_job"]``) with a tenant and a deadline on every
    task: the same prebuilt tasks each time, so only the queue's own memory counts. Over 40 tenants the
    class keeps a rank tree: a 32-byte node per job, in an array that doubles."""
    depth = MEMORY_DEPTH if impl is core_c else 100_000
    figures: list[float] = []

    def measure() -> None:
        tasks = [impl.Task(MODEL, 100, tenant=f"acme-{i}", max_wait_ms=3_600_000.0) for i in range(tenants)]
        gc.collect()
        tracemalloc.start()
        try:
            q = impl.Queue(depth + 1)
            before = tracemalloc.get_traced_memory()[0]
            for i in range(depth):
                q.enqueue(tasks[i % tenants])
            after = tracemalloc.get_traced_memory()[0]
        finally:
            tracemalloc.stop()
        figures.append((after - before) / depth)

    benchmark.group = "features-memory"
    _record(benchmark, impl, "tenant+deadline" if tenants == 1 else f"{tenants}-tenants+deadline", depth)
    benchmark.pedantic(measure, rounds=1)  # type: ignore[no-untyped-call]
    benchmark.extra_info["bytes_per_job"] = round(figures[-1], 1)
    _finish(benchmark)
    if impl is core_c:
        # 120 bytes as for the plain queue; with the rank tree up to 64 more (a node array that
        # has just doubled).
        assert figures[-1] <= (120.0 if tenants == 1 else 184.0)
