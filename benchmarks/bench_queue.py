"""Single-thread benchmarks of the admission queue against the standard library's queues.

Run: ``PYTHONPATH=src python3 -m pytest benchmarks --benchmark-only`` (add ``-m "not heavy"`` for a quick run).

Names are stable for baseline comparison: one ``benchmark.group`` per scenario, and the implementation as
the test id: ``[c]`` and ``[py]`` (the two engines), ``[deque]``, ``[SimpleQueue]``, ``[queue.Queue]``
(``maxsize`` set) and ``[asyncio.Queue]`` (``put_nowait``/``get_nowait``, no event loop needed).
A round of the micro benchmarks runs ``OPS`` (1,000) operations, so the timings pytest-benchmark prints
in microseconds read as nanoseconds per operation; ``extra_info["ops_per_round"]`` holds the count for
every benchmark and ``extra_info["ns_per_op"]`` the median per operation.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import os
import queue
import random
import tracemalloc
from collections import deque
from collections.abc import Callable
from itertools import repeat
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

_NO_C = [pytest.mark.skip(reason="no compiled engine")] if core_c is None else []

OPS = 1000
CAPACITY = 1024
MODEL = "llama-3.1-8b-instruct"
MAX_TOKENS = 100
SESSION = "sess-123"

Put = Callable[[Any], Any]
Get = Callable[[], Any]

ENGINES = ["c", "py"]
PEERS = ["deque", "SimpleQueue", "queue.Queue", "asyncio.Queue"]


def _params(names: list[str], *values: object, prefix: str = "", heavy: bool = False) -> list[Any]:
    """``pytest.param(*values, name)`` per implementation name, id ``prefix + name``; ``c`` skips without it."""
    out = []
    for name in names:
        marks = list(_NO_C) if name == "c" else []
        if heavy:
            marks.append(pytest.mark.heavy)
        out.append(pytest.param(*values, name, id=f"{prefix}{name}", marks=marks))
    return out


def _engine(name: str) -> ModuleType:
    if name == "c":
        assert core_c is not None
        return core_c
    assert name == "py", name
    return core_py


def _queue(impl: str, capacity: int) -> tuple[Put, Get, Any]:
    """``(put, get, item)`` for an implementation: a bounded queue where the peer has a bound."""
    if impl == "deque":
        d: deque[object] = deque()
        return d.append, d.popleft, object()
    if impl == "SimpleQueue":
        sq: queue.SimpleQueue[object] = queue.SimpleQueue()
        return sq.put, sq.get, object()
    if impl == "queue.Queue":
        qq: queue.Queue[object] = queue.Queue(maxsize=capacity)
        return qq.put, qq.get, object()
    if impl == "asyncio.Queue":
        aq: asyncio.Queue[object] = asyncio.Queue(maxsize=capacity)
        return aq.put_nowait, aq.get_nowait, object()
    mod = _engine(impl)
    q = mod.Queue(capacity)
    return q.enqueue, q.dequeue, mod.Task(MODEL, MAX_TOKENS, SESSION)


def _record(benchmark: BenchmarkFixture, impl: str, ops_per_round: int, **extra: Any) -> None:
    benchmark.extra_info["impl"] = impl
    benchmark.extra_info["ops_per_round"] = ops_per_round
    benchmark.extra_info.update(extra)


def _finish(benchmark: BenchmarkFixture) -> None:
    """Store the median per operation (absent when benchmarks are disabled)."""
    stats = getattr(benchmark.stats, "stats", None)
    if stats is not None and stats.data:
        benchmark.extra_info["ns_per_op"] = round(stats.median / benchmark.extra_info["ops_per_round"] * 1e9, 1)


# ---------------------------------------------------------------------------------------
# enqueue + dequeue pair


def _pairs(impl: str) -> Callable[[], None]:
    """``OPS`` pairs: one enqueue and one dequeue of a prebuilt item, on an empty queue."""
    put, get, item = _queue(impl, CAPACITY)

    def pairs() -> None:
        for _ in repeat(None, OPS):
            put(item)
            get()

    return pairs


@pytest.mark.parametrize("impl", _params(ENGINES + PEERS))
def test_pair(benchmark: BenchmarkFixture, impl: str) -> None:
    """One enqueue and one dequeue of a prebuilt item, on an empty queue."""
    pairs = _pairs(impl)
    benchmark.group = "pair"
    _record(benchmark, impl, OPS)
    benchmark(pairs)
    _finish(benchmark)


@pytest.mark.parametrize("impl", _params(ENGINES + PEERS))
def test_request_path(benchmark: BenchmarkFixture, impl: str) -> None:
    """The full request path: build the request (``Task``; a tuple for the peers), enqueue it, dequeue it."""
    put, get, _ = _queue(impl, CAPACITY)
    model, max_tokens, session = MODEL, MAX_TOKENS, SESSION
    if impl in ENGINES:
        task_type = _engine(impl).Task

        def requests() -> None:
            for _ in repeat(None, OPS):
                put(task_type(model, max_tokens, session))
                get()

    else:

        def requests() -> None:
            for _ in repeat(None, OPS):
                put((model, max_tokens, session))
                get()

    benchmark.group = "request-path"
    _record(benchmark, impl, OPS)
    benchmark(requests)
    _finish(benchmark)


# ---------------------------------------------------------------------------------------
# fill to depth D, then drain

_DEEP_ALWAYS = {"c", "deque", "SimpleQueue"}


FILL_DRAIN_PARAMS = [
    p
    for depth in (10, 10_000, 1_000_000)
    for p in _params(ENGINES + PEERS, depth, prefix=f"{depth}-", heavy=depth == 1_000_000)
]


@pytest.mark.parametrize(("depth", "impl"), FILL_DRAIN_PARAMS)
def test_fill_drain(benchmark: BenchmarkFixture, depth: int, impl: str, all_deep: bool, pedantic_rounds: int) -> None:
    """Enqueue ``depth`` items into an empty queue, then dequeue them all (depth 10: 100 cycles a round)."""
    if depth == 1_000_000 and impl not in _DEEP_ALWAYS and not all_deep:
        pytest.skip("depth 1,000,000 runs only on c, deque and SimpleQueue unless --bench-all-deep")
    put, get, item = _queue(impl, depth)
    cycles = 100 if depth == 10 else 1
    rng = range(depth)

    def fill_drain() -> None:
        for _ in repeat(None, cycles):
            for _ in rng:
                put(item)
            for _ in rng:
                get()

    benchmark.group = f"fill-drain-{depth}"
    _record(benchmark, impl, depth * cycles)
    if depth == 1_000_000:
        rounds = pedantic_rounds if impl in _DEEP_ALWAYS else 1
        benchmark.pedantic(fill_drain, rounds=rounds, warmup_rounds=1)  # type: ignore[no-untyped-call]
    else:
        benchmark(fill_drain)
    _finish(benchmark)


# ---------------------------------------------------------------------------------------
# DROP_LRU at capacity


@pytest.mark.parametrize("impl", _params(ENGINES))
def test_drop_lru_at_capacity(benchmark: BenchmarkFixture, impl: str) -> None:
    """Enqueue into a full DROP_LRU queue: every enqueue evicts the least recently used job.

    One evicting enqueue does the work of a pair (one job in, one job out, an ``evicted`` Job made), so the
    target compares it with the ``pair`` group.
    """
    q, task, evicting_enqueues = _evicting_enqueues(impl)
    benchmark.group = "drop-lru"
    _record(benchmark, impl, OPS, capacity=CAPACITY)
    benchmark(evicting_enqueues)
    _finish(benchmark)
    _check_evicting(q, task)


def _evicting_enqueues(impl: str) -> tuple[Any, Any, Callable[[], None]]:
    """A full DROP_LRU queue and ``OPS`` enqueues into it (each evicts)."""
    mod = _engine(impl)
    q = mod.Queue(CAPACITY, "drop-lru")
    task = mod.Task(MODEL, MAX_TOKENS, SESSION, priority="batch")
    for _ in range(CAPACITY):
        q.enqueue(task)
    put = q.enqueue

    def evicting_enqueues() -> None:
        for _ in repeat(None, OPS):
            put(task)

    return q, task, evicting_enqueues


def _check_evicting(q: Any, task: Any) -> None:
    """The queue is still full and an enqueue still evicts."""
    res = q.enqueue(task)
    assert res.accepted and res.evicted is not None and q.depth() == CAPACITY


# ---------------------------------------------------------------------------------------
# cancel and position by job id at depth D


def _deep_queue(impl: str, depth: int) -> tuple[Any, list[tuple[str, Any]]]:
    """A queue holding ``depth`` jobs with caller-chosen ids, and ``OPS`` (id, task) pairs drawn at random."""
    mod = _engine(impl)
    q = mod.Queue(depth)
    tasks = [mod.Task(MODEL, MAX_TOKENS, SESSION, job_id=f"job-{i}") for i in range(depth)]
    for t in tasks:
        q.enqueue(t)
    picks = random.Random(20240601).choices(tasks, k=OPS)
    return q, [(t.job_id, t) for t in picks]


def _cancels(impl: str, depth: int) -> tuple[Any, Callable[[], None]]:
    """A queue at ``depth`` and ``OPS`` cancels of random queued jobs, each re-enqueued (depth stays D)."""
    q, picks = _deep_queue(impl, depth)
    cancel, put = q.cancel, q.enqueue

    def cancels() -> None:
        for job_id, task in picks:
            cancel(job_id)
            put(task)

    return q, cancels


def _positions(impl: str, depth: int) -> tuple[Any, Callable[[], None]]:
    """A queue at ``depth`` and ``OPS`` positions of random queued jobs."""
    q, picks = _deep_queue(impl, depth)
    ids = [job_id for job_id, _ in picks]
    position = q.position

    def positions() -> None:
        for job_id in ids:
            position(job_id)

    return q, positions


@pytest.mark.parametrize("depth", [100, 100_000])
@pytest.mark.parametrize("impl", _params(ENGINES))
def test_cancel(benchmark: BenchmarkFixture, impl: str, depth: int) -> None:
    """``cancel`` of a random queued job at depth D, then its re-enqueue (keeps the depth at D)."""
    q, cancels = _cancels(impl, depth)
    benchmark.group = f"cancel-{depth}"
    _record(benchmark, impl, OPS, depth=depth)
    benchmark(cancels)
    _finish(benchmark)
    assert q.depth() == depth


@pytest.mark.parametrize("depth", [100, 100_000])
@pytest.mark.parametrize("impl", _params(ENGINES))
def test_position(benchmark: BenchmarkFixture, impl: str, depth: int) -> None:
    """``position`` of a random queued job at depth D."""
    q, positions = _positions(impl, depth)
    benchmark.group = f"position-{depth}"
    _record(benchmark, impl, OPS, depth=depth)
    benchmark(positions)
    _finish(benchmark)
    assert q.position("job-0") == 0


# ---------------------------------------------------------------------------------------
# The ratio targets, interleaved (see ``Interleave`` in conftest.py): the compared workloads alternate
# round by round, so that both meet the same states of the host.


@pytest.mark.parametrize("impl", [pytest.param("interleaved", id="interleaved")])
def test_interleaved_pair(benchmark: BenchmarkFixture, interleave: Any, impl: str) -> None:
    """The pair on the compiled engine, the pure engine, ``queue.Queue`` and ``deque``, interleaved."""
    names = (["c"] if core_c is not None else []) + ["py", "queue.Queue", "deque"]
    benchmark.group = "interleaved-pair"
    _record(benchmark, impl, OPS)
    interleave(benchmark, {name: interleave.timed(_pairs(name)) for name in names}, dict.fromkeys(names, OPS))


@pytest.mark.parametrize("impl", _params(ENGINES))
def test_interleaved_drop_lru(benchmark: BenchmarkFixture, interleave: Any, impl: str) -> None:
    """An evicting enqueue at capacity (DROP_LRU) and the plain pair, interleaved."""
    q, task, evicting_enqueues = _evicting_enqueues(impl)
    benchmark.group = f"interleaved-drop-lru-{impl}"
    _record(benchmark, impl, OPS)
    workloads = {"pair": interleave.timed(_pairs(impl)), "drop-lru": interleave.timed(evicting_enqueues)}
    interleave(benchmark, workloads, dict.fromkeys(workloads, OPS))
    _check_evicting(q, task)


@pytest.mark.parametrize("op", ["cancel", "position"])
@pytest.mark.parametrize("impl", _params(ENGINES))
def test_interleaved_depth(benchmark: BenchmarkFixture, interleave: Any, impl: str, op: str) -> None:
    """``cancel`` (with its re-enqueue) or ``position`` of random queued jobs at depth 100 and 100,000,
    interleaved."""
    make = _cancels if op == "cancel" else _positions
    queues, workloads = {}, {}
    for depth in (100, 100_000):
        queues[depth], fn = make(impl, depth)
        workloads[str(depth)] = interleave.timed(fn)
    benchmark.group = f"interleaved-{op}-{impl}"
    _record(benchmark, impl, OPS)
    interleave(benchmark, workloads, dict.fromkeys(workloads, OPS))
    for depth, q in queues.items():
        assert q.depth() == depth


# ---------------------------------------------------------------------------------------
# dequeue_many(32)

BATCH = 32


BATCH_PARAMS = [
    pytest.param(name, many, id=name if many else f"{name}-{BATCH}-dequeues", marks=_NO_C if name == "c" else [])
    for name in ENGINES
    for many in (True, False)
]


@pytest.mark.parametrize(("impl", "many"), BATCH_PARAMS)
def test_dequeue_many(benchmark: BenchmarkFixture, impl: str, many: bool) -> None:
    """32 enqueues then ``dequeue_many(32)`` (ids ``[c]``, ``[py]``), or 32 ``dequeue()`` calls (``-32-dequeues``)."""
    mod = _engine(impl)
    q = mod.Queue(CAPACITY)
    task = mod.Task(MODEL, MAX_TOKENS, SESSION)
    put, get, get_many = q.enqueue, q.dequeue, q.dequeue_many
    cycles = OPS // BATCH

    if many:

        def batches() -> None:
            for _ in repeat(None, cycles):
                for _ in repeat(None, BATCH):
                    put(task)
                get_many(BATCH)

    else:

        def batches() -> None:
            for _ in repeat(None, cycles):
                for _ in repeat(None, BATCH):
                    put(task)
                for _ in repeat(None, BATCH):
                    get()

    benchmark.group = f"dequeue_many-{BATCH}"
    _record(benchmark, impl if many else f"{impl}-{BATCH}-dequeues", cycles * BATCH)
    benchmark(batches)
    _finish(benchmark)
    assert q.depth() == 0


# ---------------------------------------------------------------------------------------
# memory per queued job

MEMORY_DEPTH = 1_000_000
# The pure engine under tracemalloc runs about 100 us per enqueue (two minutes at depth 1,000,000), so it is
# measured at depth 100,000 (bytes per job do not depend on depth beyond the ring's and index's doubling).
PY_MEMORY_DEPTH = 100_000

MEMORY_PARAMS = [
    *_params(["c"], MEMORY_DEPTH),
    *_params(["py"], PY_MEMORY_DEPTH, heavy=True),
    *_params(["deque", "SimpleQueue"], MEMORY_DEPTH),
]


def _bytes_per_job(impl: str, depth: int) -> float:
    """Traced bytes per queued job at ``depth``: the SAME item is enqueued each time, so items cost nothing."""
    gc.collect()
    tracemalloc.start()
    try:
        put, _, item = _queue(impl, depth)
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(depth):
            put(item)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return (after - before) / depth


@pytest.mark.parametrize(("depth", "impl"), MEMORY_PARAMS)
def test_memory_per_job(benchmark: BenchmarkFixture, depth: int, impl: str) -> None:
    """Traced bytes per queued job at depth 1,000,000 (``extra_info["bytes_per_job"]``; the time is the traced fill).

    The pure engine is measured at depth 100,000, in its own group.
    """
    figures: list[float] = []
    benchmark.group = f"memory-{depth}"
    _record(benchmark, impl, depth, depth=depth)

    def measure() -> None:
        figures.append(_bytes_per_job(impl, depth))

    benchmark.pedantic(measure, rounds=1)  # type: ignore[no-untyped-call]
    benchmark.extra_info["bytes_per_job"] = round(figures[-1], 1)
    _finish(benchmark)
