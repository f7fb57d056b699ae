"""Memory: flat over many cycles, tasks released when their job leaves, visible to tracemalloc.

* ``tests/scripts/memory_cycles.py`` runs eleven kinds of cycle (enqueue/dequeue, fresh
  tasks, caller ids, each policy's refusal or eviction, cancel/touch/position with
  tombstones, drain, close and free, timed waits, metrics/snapshots) in a fresh
  interpreter and reports the change in tracemalloc's traced memory per kind and in
  resident size over all of them. Default counts (documented in the script): the
  compiled engine 1,000,000 enqueue/dequeue cycles for the resident size plus 2,000-20,000
  cycles of each kind under tracemalloc; the pure engine, about six times slower (fifteen
  under tracemalloc), 150,000 and 200-2,000. ``--run-slow`` multiplies every count by 7
  (over a million cycles on the pure engine too).
* Bounds: traced memory may change by at most ``TRACED_BOUND_BYTES`` per kind (one leaked
  object per cycle, >= 32 bytes, over >= 200 cycles is 6 KiB or more); resident size by at
  most ``RSS_BOUND_BYTES`` (a 16-byte leak per main cycle would be 16 MB on the compiled
  engine, 2.4 MB on the pure one). Observed: a few hundred bytes and a page or so.
"""

from __future__ import annotations

import gc
import os
import sys
import tracemalloc
import weakref
from types import ModuleType
from typing import Any

import pytest

from .scripts import engine_arg, known_bug, run_script

TRACED_BOUND_BYTES = 4096
RSS_BOUND_BYTES = 2 * 1024 * 1024
#: Set by .ci/sanitize.sh: AddressSanitizer's quarantine keeps freed memory resident on purpose,
#: so the resident size says nothing there (tracemalloc's figures still do).
SANITIZED = os.environ.get("ORCHESTRATOR_CORE_SANITIZED", "") not in ("", "0")

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="resident size read from /proc")


def _check_memory_records(records: list[dict[str, Any]]) -> None:
    traced = [r for r in records if r["phase"] == "traced"]
    rss = [r for r in records if r["phase"] == "rss"]
    assert len(traced) == 11 and len(rss) == 1, records
    grew = {r["scenario"]: r["delta_bytes"] for r in traced if abs(r["delta_bytes"]) > TRACED_BOUND_BYTES}
    assert grew == {}, f"traced memory changed by more than {TRACED_BOUND_BYTES} bytes: {grew}"
    if not SANITIZED:
        assert rss[0]["delta_bytes"] <= RSS_BOUND_BYTES, rss[0]


@linux_only
def test_memory_flat_over_many_cycles(impl: ModuleType) -> None:
    res = run_script("memory_cycles", engine_arg(impl), "1", timeout=600)
    assert res.returncode == 0, res.stderr
    _check_memory_records(res.records)


@linux_only
@pytest.mark.slow
def test_memory_flat_over_millions_of_cycles(impl: ModuleType) -> None:
    res = run_script("memory_cycles", engine_arg(impl), "7", timeout=3600)
    assert res.returncode == 0, res.stderr
    _check_memory_records(res.records)


# ---------------------------------------------------------------------------------------
# Tasks are released when their job leaves the queue, whichever way it leaves


class Payload:
    """Something a task carries, that we can watch die."""

    __slots__ = ("tag", "ref_to", "__weakref__")

    def __init__(self, tag: str) -> None:
        self.tag = tag
        self.ref_to: Any = None


EXITS = [
    "dequeue",
    "dequeue-blocking",
    "dequeue-many",
    "cancel",
    "cancel-caller-id",
    "evict",
    "drain",
    "close-then-drain",
    "queue-freed",
    "refused",
]


@pytest.mark.parametrize("exit_path", EXITS)
def test_task_released_when_its_job_leaves(impl: ModuleType, exit_path: str) -> None:
    """Once the job is out and the caller drops the result, nothing keeps the task alive.

    No ``gc.collect()``: reference counting alone must free it (nothing in the engine
    makes a reference cycle of a task that left).
    """
    q = impl.Queue(2, "reject-new" if exit_path == "refused" else "drop-lru")
    p = Payload("watched")
    ref = weakref.ref(p)
    if exit_path == "refused":
        q.enqueue(impl.Task("m", 1))
        q.enqueue(impl.Task("m", 1))
        res = q.enqueue(impl.Task("m", 1, payload=p))
        assert not res.accepted
        del res, p
        assert ref() is None
        return
    task = impl.Task("m", 1, priority="batch", payload=p, job_id="mine" if exit_path == "cancel-caller-id" else None)
    res = q.enqueue(task)
    assert res.accepted
    job_id = res.job_id
    del p, task, res
    assert ref() is not None, "the queue must keep a queued task alive"
    if exit_path == "dequeue":
        job = q.dequeue()
        assert job.task.payload is ref()
        del job
    elif exit_path == "dequeue-blocking":
        job = q.dequeue(timeout=5.0)
        assert job is not None and job.job_id == job_id
        del job
    elif exit_path == "dequeue-many":
        jobs = q.dequeue_many(4, timeout=None)
        assert [j.job_id for j in jobs] == [job_id]
        del jobs
    elif exit_path in ("cancel", "cancel-caller-id"):
        assert q.cancel(job_id)
    elif exit_path == "evict":
        q.enqueue(impl.Task("m", 1, priority="batch"))
        res = q.enqueue(impl.Task("m", 1, priority="batch"))
        assert res.evicted is not None and res.evicted.job_id == job_id
        del res
    elif exit_path == "drain":
        assert [j.job_id for j in q.drain()] == [job_id]
    elif exit_path == "close-then-drain":
        q.close()
        assert ref() is not None
        assert [j.job_id for j in q.drain()] == [job_id]
    elif exit_path == "queue-freed":
        del q
    assert ref() is None, f"the task outlived its job ({exit_path})"


def test_many_queued_tasks_released_when_the_queue_is_freed(impl: ModuleType) -> None:
    q = impl.Queue(1000, "drop-lru")
    refs = []
    for i in range(500):
        p = Payload(str(i))
        refs.append(weakref.ref(p))
        q.enqueue(impl.Task("m", 1, priority="batch" if i % 2 else "interactive", payload=p))
    for i in range(0, 500, 7):
        q.cancel(f"{q.id_prefix}-{i + 1:x}")  # tombstones inside the rings
    del p
    assert sum(r() is not None for r in refs) == 500 - len(range(0, 500, 7))
    del q
    gc.collect()  # the pure engine's LRU list is doubly linked: its entries form cycles
    assert all(r() is None for r in refs)


def test_reference_cycle_through_a_queued_task_is_collected(impl: ModuleType, request: pytest.FixtureRequest) -> None:
    """queue -> queued task -> payload -> queue: garbage the cyclic GC must be able to free."""
    known_bug(request, impl, "gc-cycle-through-queued-task")
    q = impl.Queue(8)
    p = Payload("cycle")
    p.ref_to = q
    q.enqueue(impl.Task("m", 1, payload=p))
    refs = (weakref.ref(q), weakref.ref(p))
    del q, p
    gc.collect()
    assert [r() is None for r in refs] == [True, True]


def test_reference_cycle_through_the_clock_is_collected(impl: ModuleType) -> None:
    class Clock:
        queue: Any = None

        def __call__(self) -> float:
            return 100.0

    clock = Clock()
    q = impl.Queue(8, clock=clock)
    clock.queue = q  # queue -> clock -> queue
    q.enqueue(impl.Task("m", 1))
    ref = weakref.ref(q)
    del q, clock
    gc.collect()
    assert ref() is None


# ---------------------------------------------------------------------------------------
# The engine allocates through Python's allocators, so tracemalloc sees its memory


def test_tracemalloc_sees_memory_follow_depth(impl: ModuleType) -> None:
    """Traced memory grows by at least an entry per queued job, and (compiled engine) shrinks back.

    The pure engine's job-id index is a dict, which keeps its peak size until later inserts
    resize it, so only the growth is checked there (and with fewer jobs: tracing makes
    the pure engine slow).
    """
    compiled = engine_arg(impl) == "c"
    depth = 50_000 if compiled else 5_000
    task = impl.Task("m", 1)  # one task for every job: what grows is the engine's own memory
    q = impl.Queue(depth + 1, "drop-lru")
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        for _ in range(depth):
            q.enqueue(task)
        full = tracemalloc.get_traced_memory()[0] - base
        while q.dequeue() is not None:
            pass
        gc.collect()
        empty = tracemalloc.get_traced_memory()[0] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()
    # At least an entry (the compiled engine's is 64 bytes) and a ring cell per job.
    assert full >= depth * 64, f"only {full} bytes traced for {depth} queued jobs"
    if compiled:
        # Ring, index and Fenwick arrays shrink with the depth: what is left is a small fraction.
        assert empty <= full // 20, f"{empty} bytes still traced after emptying (peak {full})"


def test_raising_clock_does_not_leak_wake_up_locks(impl: ModuleType, request: pytest.FixtureRequest) -> None:
    """A waiting dequeue whose clock raises on the re-read frees what it allocated to wait."""
    known_bug(request, impl, "clock-raise-leaks-waiter-lock")
    reads = [0]

    def clock() -> float:
        reads[0] += 1
        if reads[0] % 2 == 0:
            raise RuntimeError("the clock broke")
        return 1.0

    q = impl.Queue(4, clock=clock)

    def failing_waits(n: int) -> None:
        for _ in range(n):
            reads[0] = 0
            with pytest.raises(RuntimeError):
                q.dequeue(timeout=5.0)

    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        tracemalloc.start()
    try:
        failing_waits(500)
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        failing_waits(5_000)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - base
    finally:
        if not was_tracing:
            tracemalloc.stop()
    # A leaked wake-up lock is 32 bytes a wait (160 kB here); interpreter caches (3.10 keeps
    # a few bytes per raised exception's frame data) stay far below 8 bytes a wait.
    assert grown < 5_000 * 8, f"{grown} bytes kept by 5000 failed waits"
