"""Multi-threaded benchmarks: contended throughput and the wake-up latency of a blocked consumer.

Run: ``PYTHONPATH=src python3 -m pytest benchmarks/bench_contention.py --benchmark-only``.

Both scenarios measure the compiled engine twice, to settle the GIL question:
``[c-gil-held]`` holds the GIL through the short locked part of enqueue/dequeue (blocking waits release it
either way) and ``[c-gil-released]`` releases it there too (``_core_c._set_release_gil(True)``). Beside them:
``[py]``, ``[queue.Queue]`` (``maxsize`` 1024) and ``[SimpleQueue]`` (unbounded: no bound to push back).

* ``contended-NpNc``: N producers and N consumers move ``ITEMS`` prebuilt items through capacity 1024
  (the engines: tasks with caller-chosen ids; the peers: integers); consumers block with a timeout.
  Producers block while the queue is full: the engines' in ``enqueue(task, wait=PRODUCER_WAIT_S)`` (the
  admission wait; a refusal after the wait is retried and counted in ``extra_info["refusals_per_round"]``),
  ``queue.Queue``'s in ``put``. Every item is checked received exactly once. A round moves all ``ITEMS``
  (``extra_info["items_per_s"]`` is the median throughput); rounds: ``--benchmark-min-rounds`` (default 5).
* ``interleaved-contended-2p2c``: the 2+2 scenario for the compiled engine (GIL held) and ``queue.Queue``,
  their rounds interleaved (``Interleave`` in conftest.py); the 4x target reads this one.
* ``wakeup``: one consumer blocks in ``dequeue(timeout=5)`` / ``get(timeout=5)``; the main thread waits
  until it is blocked, reads the clock and enqueues; the consumer reads the clock when the call returns.
  ``extra_info`` holds p50/p99/mean in microseconds over ``WAKEUPS`` samples.
"""

from __future__ import annotations

import importlib
import os
import queue
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
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

CAPACITY = 1024
ITEMS = 40_000
CONSUMER_TIMEOUT_S = 0.05
PRODUCER_WAIT_S = 1.0
WAKEUPS = 400
WAKEUP_TIMEOUT_S = 5.0
BLOCK_SETTLE_S = 0.0005

SUBJECTS = [
    pytest.param("c-gil-held", id="c-gil-held", marks=_NO_C),
    pytest.param("c-gil-released", id="c-gil-released", marks=_NO_C),
    pytest.param("py", id="py"),
    pytest.param("queue.Queue", id="queue.Queue"),
    pytest.param("SimpleQueue", id="SimpleQueue"),
]


@pytest.fixture
def subject(request: pytest.FixtureRequest) -> Iterator[str]:
    """The implementation id; for the compiled engine, sets its GIL-release hook and restores it after."""
    name: str = request.param
    before = core_c._get_release_gil() if core_c is not None else None
    if name.startswith("c-"):
        assert core_c is not None
        core_c._set_release_gil(name == "c-gil-released")
    try:
        yield name
    finally:
        if core_c is not None:
            core_c._set_release_gil(before)


def _engine(name: str) -> ModuleType:
    if name.startswith("c-"):
        assert core_c is not None
        return core_c
    return core_py


def _record(benchmark: BenchmarkFixture, name: str, ops_per_round: int, **extra: Any) -> None:
    benchmark.extra_info["impl"] = name
    benchmark.extra_info["ops_per_round"] = ops_per_round
    benchmark.extra_info.update(extra)


# ---------------------------------------------------------------------------------------
# contended throughput


class _Run:
    """One round: threads started and parked on an event; ``go()`` releases them and joins them."""

    def __init__(
        self, producers: list[threading.Thread], consumers: list[threading.Thread], finish: Callable[[], None]
    ):
        self.start = threading.Event()
        self.producers = producers
        self.consumers = consumers
        self.finish = finish

    def go(self) -> None:
        self.start.set()
        for t in self.producers:
            t.join()
        self.finish()  # no more items: let consumers stop once the queue is empty
        for t in self.consumers:
            t.join()


def _engine_round(
    mod: ModuleType, n: int, per_producer: int, refusals: list[int]
) -> tuple[_Run, list[list[str]], list[list[str]]]:
    q = mod.Queue(CAPACITY)
    # Prebuilt items on both sides: each producer sends its own tasks (caller-chosen ids), as the
    # peers' producers send prebuilt integers.
    tasks = [
        [mod.Task("llama-3.1-8b-instruct", 100, "sess-123", job_id=f"p{k}-{i}") for i in range(per_producer)]
        for k in range(n)
    ]
    sent: list[list[str]] = [[t.job_id for t in part] for part in tasks]
    got: list[list[str]] = [[] for _ in range(n)]
    run: _Run

    def produce(mine: list[Any]) -> None:
        run.start.wait()
        enqueue, wait = q.enqueue, PRODUCER_WAIT_S
        refused = 0
        for task in mine:
            res = enqueue(task, wait)
            while not res.accepted:
                refused += 1
                res = enqueue(task, wait)
        refusals.append(refused)

    def consume(out: list[str]) -> None:
        run.start.wait()
        dequeue, append = q.dequeue, out.append
        while True:
            job = dequeue(CONSUMER_TIMEOUT_S)
            if job is not None:
                append(job.job_id)
            elif q.closed and not q.depth():
                return

    producers = [threading.Thread(target=produce, args=(tasks[i],)) for i in range(n)]
    consumers = [threading.Thread(target=consume, args=(got[i],)) for i in range(n)]
    run = _Run(producers, consumers, q.close)
    for t in producers + consumers:
        t.start()
    return run, sent, got


_STOP = object()


def _peer_round(name: str, n: int, per_producer: int) -> tuple[_Run, list[list[int]], list[list[int]]]:
    pq: queue.Queue[Any] | queue.SimpleQueue[Any] = (
        queue.Queue(maxsize=CAPACITY) if name == "queue.Queue" else queue.SimpleQueue()
    )
    sent = [list(range(i * per_producer, (i + 1) * per_producer)) for i in range(n)]
    got: list[list[int]] = [[] for _ in range(n)]
    run: _Run

    def produce(items: list[int]) -> None:
        run.start.wait()
        put = pq.put
        for item in items:
            put(item)

    def consume(out: list[int]) -> None:
        run.start.wait()
        get, append, empty = pq.get, out.append, queue.Empty
        while True:
            try:
                item = get(timeout=CONSUMER_TIMEOUT_S)
            except empty:
                continue
            if item is _STOP:
                return
            append(item)

    def finish() -> None:
        for _ in range(n):
            pq.put(_STOP)

    producers = [threading.Thread(target=produce, args=(sent[i],)) for i in range(n)]
    consumers = [threading.Thread(target=consume, args=(got[i],)) for i in range(n)]
    run = _Run(producers, consumers, finish)
    for t in producers + consumers:
        t.start()
    return run, sent, got


def _check_round(sent: list[list[Any]], got: list[list[Any]], items: int) -> None:
    """Every item sent was received exactly once."""
    sent_all = Counter(x for part in sent for x in part)
    got_all = Counter(x for part in got for x in part)
    assert sum(sent_all.values()) == items
    assert max(sent_all.values()) == 1
    assert got_all == sent_all


def _contended(benchmark: BenchmarkFixture, name: str, n: int, rounds: int) -> None:
    per_producer = ITEMS // n
    checks: list[tuple[list[list[Any]], list[list[Any]]]] = []
    refusals: list[int] = []

    def setup() -> tuple[tuple[_Run], dict[str, Any]]:
        if name in ("queue.Queue", "SimpleQueue"):
            run, sent, got = _peer_round(name, n, per_producer)
            checks.append((sent, got))
        else:
            run, sent_ids, got_ids = _engine_round(_engine(name), n, per_producer, refusals)
            checks.append((sent_ids, got_ids))
        return (run,), {}

    benchmark.group = f"contended-{n}p{n}c"
    _record(benchmark, name, per_producer * n, producers=n, consumers=n, capacity=CAPACITY)
    benchmark.pedantic(_Run.go, setup=setup, rounds=rounds)  # type: ignore[no-untyped-call]
    # Every item was received exactly once, in every round.
    for sent, got in checks:
        _check_round(sent, got, per_producer * n)
    stats = getattr(benchmark.stats, "stats", None)
    if stats is not None and stats.data:
        benchmark.extra_info["items_per_s"] = round(per_producer * n / stats.median)
    if refusals:
        # QUEUE_FULL refusals (after a whole PRODUCER_WAIT_S wait) a producer retried, per round.
        benchmark.extra_info["refusals_per_round"] = round(sum(refusals) / len(checks))


@pytest.mark.parametrize("subject", SUBJECTS, indirect=True)
def test_contended_1p1c(benchmark: BenchmarkFixture, subject: str, pedantic_rounds: int) -> None:
    """1 producer, 1 consumer through capacity 1024."""
    _contended(benchmark, subject, 1, pedantic_rounds)


@pytest.mark.parametrize("subject", SUBJECTS, indirect=True)
def test_contended_2p2c(benchmark: BenchmarkFixture, subject: str, pedantic_rounds: int) -> None:
    """2 producers, 2 consumers through capacity 1024."""
    _contended(benchmark, subject, 2, pedantic_rounds)


@pytest.mark.parametrize("subject", SUBJECTS, indirect=True)
def test_contended_4p4c(benchmark: BenchmarkFixture, subject: str, pedantic_rounds: int) -> None:
    """4 producers, 4 consumers through capacity 1024."""
    _contended(benchmark, subject, 4, pedantic_rounds)


@pytest.mark.parametrize("n", [pytest.param(2, id="2p2c")])
def test_interleaved_contended(benchmark: BenchmarkFixture, interleave: Any, n: int, pedantic_rounds: int) -> None:
    """2 producers + 2 consumers: the compiled engine (GIL held, the default) and ``queue.Queue``, rounds
    interleaved (see ``Interleave`` in conftest.py); every item checked received exactly once."""
    if core_c is None:
        pytest.skip("no compiled engine")
    per_producer = ITEMS // n
    checks: list[tuple[list[list[Any]], list[list[Any]]]] = []
    refusals: list[int] = []

    def timed_round(make: Callable[[], tuple[_Run, list[list[Any]], list[list[Any]]]]) -> Callable[[], float]:
        """A workload: set a round up (untimed), then time its run; the items are checked afterwards."""

        def workload() -> float:
            run, sent, got = make()
            checks.append((sent, got))
            t0 = time.perf_counter()
            run.go()
            return time.perf_counter() - t0

        return workload

    before = core_c._get_release_gil()
    core_c._set_release_gil(False)
    try:
        benchmark.group = f"interleaved-contended-{n}p{n}c"
        _record(benchmark, "interleaved", per_producer * n, producers=n, consumers=n, capacity=CAPACITY)
        workloads = {
            "c-gil-held": timed_round(partial(_engine_round, _engine("c-gil-held"), n, per_producer, refusals)),
            "queue.Queue": timed_round(partial(_peer_round, "queue.Queue", n, per_producer)),
        }
        medians = interleave(
            benchmark, workloads, dict.fromkeys(workloads, per_producer * n), min_cycles=pedantic_rounds
        )
    finally:
        core_c._set_release_gil(before)
    for sent, got in checks:
        _check_round(sent, got, per_producer * n)
    benchmark.extra_info["items_per_s"] = {name: round(1e9 / ns) for name, ns in medians.items()}
    if refusals:
        benchmark.extra_info["refusals"] = sum(refusals)


# ---------------------------------------------------------------------------------------
# wake-up latency of a blocked consumer


def _wakeup_samples(name: str, count: int) -> list[float]:
    """``count`` wake-up latencies in seconds: enqueue (clock read just before) to the consumer's return."""
    woke = [0.0] * count
    sent = [0.0] * count
    ack = threading.Semaphore(0)
    if name in ("queue.Queue", "SimpleQueue"):
        pq: queue.Queue[Any] | queue.SimpleQueue[Any] = (
            queue.Queue(maxsize=CAPACITY) if name == "queue.Queue" else queue.SimpleQueue()
        )
        put: Callable[[], Any] = partial(pq.put, 1)
        get: Callable[[], Any] = partial(pq.get, timeout=WAKEUP_TIMEOUT_S)
    else:
        mod = _engine(name)
        q = mod.Queue(CAPACITY)
        task = mod.Task("llama-3.1-8b-instruct", 100, "sess-123")
        put = partial(q.enqueue, task)
        get = partial(q.dequeue, WAKEUP_TIMEOUT_S)

    missed: list[int] = []

    def consumer() -> None:
        clock = time.perf_counter
        for i in range(count):
            item = get()
            woke[i] = clock()
            if item is None:
                missed.append(i)
            ack.release()

    thread = threading.Thread(target=consumer)
    thread.start()
    clock, sleep = time.perf_counter, time.sleep
    try:
        for i in range(count):
            sleep(BLOCK_SETTLE_S)  # the consumer is blocked in its get by now
            sent[i] = clock()
            put()
            if not ack.acquire(timeout=2 * WAKEUP_TIMEOUT_S):
                raise AssertionError(f"the consumer did not wake up for item {i}")
    finally:
        thread.join()
    assert not missed, f"the consumer's get returned nothing for items {missed}"
    return [w - s for w, s in zip(woke, sent, strict=True)]


@pytest.mark.parametrize("subject", SUBJECTS, indirect=True)
def test_wakeup_latency(benchmark: BenchmarkFixture, subject: str) -> None:
    """Wake-up latency of a consumer blocked in a dequeue with a timeout (p50/p99 in ``extra_info``)."""
    samples: list[float] = []
    benchmark.group = "wakeup"
    _record(benchmark, subject, WAKEUPS, samples=WAKEUPS)

    def measure() -> None:
        samples.extend(_wakeup_samples(subject, WAKEUPS))

    benchmark.pedantic(measure, rounds=1)  # type: ignore[no-untyped-call]
    assert len(samples) == WAKEUPS
    us = sorted(s * 1e6 for s in samples)
    benchmark.extra_info["p50_us"] = round(statistics.median(us), 2)
    benchmark.extra_info["p99_us"] = round(us[min(len(us) - 1, int(0.99 * len(us)))], 2)
    benchmark.extra_info["mean_us"] = round(statistics.fmean(us), 2)
