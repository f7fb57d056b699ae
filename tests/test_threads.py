"""Threaded conservation: producers, consumers and a thread cancelling and touching at random.

Whatever the interleaving, every accepted job leaves the queue exactly once (dequeued,
cancelled, evicted or drained), nothing that was not accepted ever comes out, each
consumer sees every producer's jobs of one priority in the order they were admitted, the
queue never holds more than its capacity and the counters balance. The checks count
events; nothing here depends on timing. ``run_workload`` is reused by ``test_stress.py``
with more threads, every policy, both priorities and extreme capacities.
"""

from __future__ import annotations

import gc
import random
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import pytest

POLICIES = ("reject-new", "drop-lru", "fail-fast")
PRIORITY_MODES = ("interactive", "batch", "mixed")
JOIN_TIMEOUT_S = 300.0  # a hang check, never reached by a healthy run


@dataclass
class Workload:
    """What to run: fixed numbers of operations per thread, never a duration."""

    capacity: int
    policy: str
    priorities: str = "mixed"  # "interactive", "batch" or "mixed" (random per task)
    producers: int = 4
    consumers: int = 4
    per_producer: int = 300
    chaos_threads: int = 1  # threads cancelling, touching and querying positions at random
    chaos_ops: int = 600  # operations per chaos thread
    # Consumers start only after producer 0 has made this many enqueues and the main thread
    # has cancelled a queued job: the queue is full at least once (so refusals or evictions
    # happen), and at least one cancel succeeds, whatever the scheduling. 0: start at once.
    hold_consumers: int = 0
    seed: int = 0


@dataclass
class Outcome:
    """What happened, as recorded by the threads themselves."""

    accepted: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # job_id -> (producer, seq, prio)
    rejected: Counter[str] = field(default_factory=Counter)
    evicted: list[str] = field(default_factory=list)
    taken: list[list[tuple[str, int, int, int]]] = field(default_factory=list)  # per consumer, in take order
    cancelled: list[str] = field(default_factory=list)
    drained: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    samples: int = 0
    operations: int = 0
    metrics: Any = None


class _Threads:
    """Starts threads that record any exception instead of losing it."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, fn: Callable[..., None], *args: Any) -> threading.Thread:
        def run() -> None:
            try:
                fn(*args)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the main thread
                self.errors.append(exc)

        t = threading.Thread(target=run, daemon=True)
        t.start()
        self.threads.append(t)
        return t

    def join(self, threads: list[threading.Thread]) -> None:
        for t in threads:
            t.join(JOIN_TIMEOUT_S)
            assert not t.is_alive(), f"thread {t.name} still running after {JOIN_TIMEOUT_S} s: deadlock or lost wake-up"


def run_workload(impl: ModuleType, w: Workload) -> Outcome:
    """Run ``w`` on a fresh queue of ``impl`` and return what every thread saw."""
    q = impl.Queue(w.capacity, w.policy, id_prefix="q", pool_id="stress")
    out = Outcome(taken=[[] for _ in range(w.consumers)])
    prio_names = ("interactive", "batch")
    known_ids: list[str] = []  # appended by producers, read by chaos threads (list ops are atomic)
    ops: list[int] = []  # operations per thread, appended when the thread ends
    merge = threading.Lock()  # merging a thread's records into ``out``
    producers_done = threading.Event()
    held = threading.Event()  # producer 0 has made w.hold_consumers enqueues
    consumers_go = threading.Event()
    if not w.hold_consumers:
        held.set()
        consumers_go.set()
    all_done = threading.Event()
    threads = _Threads()

    def produce(k: int) -> None:
        rng = random.Random(w.seed * 1_000 + k)
        accepted: list[tuple[str, int, int, int]] = []
        rejected = Counter[str]()
        evicted: list[str] = []
        for i in range(w.per_producer):
            p = rng.randrange(2) if w.priorities == "mixed" else prio_names.index(w.priorities)
            # Even producers choose their ids, odd ones let the queue make them.
            job_id = f"p{k}-{i}" if k % 2 == 0 else None
            task = impl.Task("m", 1 + i % 7, f"s{k}", priority=prio_names[p], job_id=job_id, payload=(k, i))
            res = q.enqueue(task)
            if k == 0 and i + 1 == w.hold_consumers:
                held.set()
            if rng.random() < 0.3:
                time.sleep(0)  # let other threads in between (a scheduling hint, not a wait)
            if res.accepted:
                accepted.append((res.job_id, k, i, p))
                known_ids.append(res.job_id)
                if res.evicted is not None:
                    evicted.append(res.evicted.job_id)
            else:
                rejected[res.reason.value] += 1
        if k == 0:
            held.set()
        with merge:
            for job_id, kk, i, p in accepted:
                out.accepted[job_id] = (kk, i, p)
            out.rejected.update(rejected)
            out.evicted.extend(evicted)
        ops.append(w.per_producer)

    def consume(c: int) -> None:
        rng = random.Random(w.seed * 1_000 + 500 + c)
        taken = out.taken[c]
        calls = 0
        consumers_go.wait()
        while True:
            calls += 1
            if rng.random() < 0.25:
                jobs = q.dequeue_many(rng.randint(2, 6), timeout=0.02)
            else:
                job = q.dequeue(timeout=0.02)
                jobs = [] if job is None else [job]
            for job in jobs:
                kk, i = job.task.payload
                taken.append((job.job_id, kk, i, prio_names.index(job.priority.value)))
            if not jobs and q.closed:
                break  # closed and (at that moment) empty; leftovers are drained below
        ops.append(calls)

    def chaos(k: int) -> None:
        rng = random.Random(w.seed * 1_000 + 900 + k)
        cancelled: list[str] = []
        n = 0
        while n < w.chaos_ops:
            if not known_ids:
                if producers_done.is_set():
                    break
                threading.Event().wait(0.001)
                continue
            n += 1
            # Mostly recent ids (likely still queued), sometimes any id ever accepted.
            span = len(known_ids) if rng.random() < 0.2 else min(len(known_ids), 8)
            job_id = known_ids[-1 - rng.randrange(span)]
            r = rng.random()
            if r < 0.3:
                if q.cancel(job_id):
                    cancelled.append(job_id)
            elif r < 0.55:
                q.touch(job_id)
            elif r < 0.8:
                pos = q.position(job_id)
                if pos is not None and not 0 <= pos < w.capacity:
                    out.violations.append(f"position({job_id!r}) = {pos} outside [0, {w.capacity})")
            elif r < 0.9:
                if q.cancel(f"never-{n}") or q.touch(f"never-{n}") or q.position(f"never-{n}") is not None:
                    out.violations.append(f"an id never enqueued was found: never-{n}")
            else:
                _ = job_id in q
            if rng.random() < 0.3:
                time.sleep(0)
        out.cancelled.extend(cancelled)
        ops.append(n)

    def sample() -> None:
        n = 0
        while not all_done.is_set() or n == 0:
            n += 1
            m = q.metrics()
            if m.depth > w.capacity:
                out.violations.append(f"metrics depth {m.depth} > capacity {w.capacity}")
            if m.depth_interactive + m.depth_batch != m.depth:
                out.violations.append(f"depth by priority {m.depth_interactive}+{m.depth_batch} != {m.depth}")
            if m.accepted != m.dequeued + m.cancelled + m.evicted + m.drained + m.expired + m.depth:
                out.violations.append(f"counters do not balance in a snapshot: {m}")
            d = len(q)
            if not 0 <= d <= w.capacity:
                out.violations.append(f"len(q) = {d} outside [0, {w.capacity}]")
            all_done.wait(0.002)
        out.samples = n
        ops.append(n)

    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(2e-5)  # switch threads often: more interleavings per operation
    sampler = threads.start(sample)
    consumers = [threads.start(consume, c) for c in range(w.consumers)]
    chaos_threads = [threads.start(chaos, k) for k in range(w.chaos_threads)]
    producers = [threads.start(produce, k) for k in range(w.producers)]
    try:
        if w.hold_consumers:
            held.wait(JOIN_TIMEOUT_S)
            # Cancel one queued job (newest first: the least likely to be evicted before we
            # get to it); producers may evict it first, so retry. With consumers held the
            # queue is never empty once something was admitted, so this ends.
            while True:
                cancelled = next((job_id for job_id in reversed(q.snapshot()) if q.cancel(job_id)), None)
                if cancelled is not None:
                    out.cancelled.append(cancelled)
                    break
                if not any(t.is_alive() for t in producers) and len(q) == 0:
                    break
            consumers_go.set()
        threads.join(producers)
        producers_done.set()
        threads.join(chaos_threads)
        q.close()
        threads.join(consumers)
    finally:
        all_done.set()
        producers_done.set()
        held.set()
        consumers_go.set()
        q.close()
        sys.setswitchinterval(switch_interval)
    threads.join([sampler])
    if threads.errors:
        raise threads.errors[0]
    out.drained = [job.job_id for job in q.drain()]
    out.metrics = q.metrics()
    out.operations = sum(ops) + 2
    return out


def check_conservation(w: Workload, out: Outcome) -> None:
    """Every accepted job left exactly once, in order, and the counters agree."""
    assert out.violations == []
    assert out.samples > 0
    accepted = out.accepted
    taken_ids = [job_id for per_consumer in out.taken for job_id, *_ in per_consumer]
    left = Counter(taken_ids) + Counter(out.cancelled) + Counter(out.evicted) + Counter(out.drained)
    assert set(left) == set(accepted), "a job left that was never accepted, or an accepted job never left"
    assert [job_id for job_id, n in left.items() if n != 1] == [], "a job left more than once"
    # The job handed out carries the task that was admitted under its id.
    for per_consumer in out.taken:
        for job_id, k, i, p in per_consumer:
            assert accepted[job_id] == (k, i, p)
    # FIFO per producer within a priority, as each consumer saw it: a consumer that takes
    # job b after job a (same producer, same priority) can only do so if b was admitted
    # after a, whatever the other consumers did in between.
    for per_consumer in out.taken:
        last: dict[tuple[int, int], int] = {}
        for _, k, i, p in per_consumer:
            assert last.get((k, p), -1) < i, f"producer {k} priority {p}: job {i} taken after job {last[(k, p)]}"
            last[(k, p)] = i
    m = out.metrics
    assert m.accepted == len(accepted)
    assert m.dequeued == len(taken_ids)
    assert m.cancelled == len(out.cancelled)
    assert m.evicted == len(out.evicted)
    assert m.drained == len(out.drained)
    assert m.depth == 0
    assert {r.value: n for r, n in m.rejected.items() if n} == dict(+out.rejected)
    assert m.accepted + m.rejected_total == w.producers * w.per_producer
    assert m.expired == 0  # no deadlines in these workloads
    assert m.accepted == m.dequeued + m.cancelled + m.evicted + m.drained
    if w.policy != "drop-lru":
        assert m.evicted == 0
    total = w.producers * w.per_producer
    if w.capacity >= total and w.policy != "fail-fast":
        assert m.rejected_total == 0 and m.evicted == 0
    if w.policy == "drop-lru" and w.priorities != "mixed":
        assert m.rejected_total == 0  # one class only: there is always a victim
    assert set(out.rejected) <= {"QUEUE_FULL"}


# ---------------------------------------------------------------------------------------
# The core issue's test


@pytest.mark.parametrize("policy", POLICIES)
def test_threaded_conservation(impl: ModuleType, policy: str) -> None:
    w = Workload(
        capacity=16, policy=policy, producers=4, consumers=4, per_producer=500, chaos_threads=1, hold_consumers=96
    )
    out = run_workload(impl, w)
    check_conservation(w, out)
    # The workload really mixed the four ways out.
    assert out.metrics.dequeued > 0 and out.metrics.cancelled > 0
    if policy == "drop-lru":
        assert out.metrics.evicted > 0
    else:
        assert out.metrics.rejected_total > 0


# ---------------------------------------------------------------------------------------
# Wake-ups


def test_each_enqueue_wakes_a_blocked_consumer(impl: ModuleType) -> None:
    """No lost wake-up: n consumers blocked without a timeout all get one of n jobs."""
    q = impl.Queue(100)
    n = 8
    got: list[Any] = []
    threads = _Threads()
    blocked = [threads.start(lambda: got.append(q.dequeue(timeout=None))) for _ in range(n)]
    for i in range(n):
        assert q.enqueue(impl.Task("m", 1, job_id=f"j{i}")).accepted
    threads.join(blocked)  # a lost wake-up leaves a consumer blocked forever
    assert not threads.errors
    assert sorted(job.job_id for job in got) == sorted(f"j{i}" for i in range(n))
    assert q.metrics().dequeued == n


def test_dequeue_many_waiters_share_a_burst(impl: ModuleType) -> None:
    """Blocked ``dequeue_many`` callers each get a non-empty batch; no job is taken twice."""
    q = impl.Queue(1_000_000)
    got: list[list[Any]] = []
    threads = _Threads()
    blocked = [threads.start(lambda: got.append(q.dequeue_many(50, timeout=None))) for _ in range(4)]
    sent = 0
    while any(t.is_alive() for t in blocked):
        assert sent < 500_000, "blocked dequeue_many callers are not being woken"
        assert q.enqueue(impl.Task("m", 1)).accepted
        sent += 1
        threading.Event().wait(0.0002)
    threads.join(blocked)
    assert not threads.errors
    taken = [job.job_id for batch in got for job in batch]
    assert len(taken) == len(set(taken))
    assert all(1 <= len(batch) <= 50 for batch in got)
    assert len(taken) + len(q.drain()) == sent


def test_close_wakes_blocked_consumers_of_every_kind(impl: ModuleType) -> None:
    q = impl.Queue(4)
    results: list[Any] = []
    threads = _Threads()
    blocked = [threads.start(lambda: results.append(q.dequeue(timeout=None))) for _ in range(3)]
    blocked += [threads.start(lambda: results.append(q.dequeue(timeout=3600.0))) for _ in range(3)]
    blocked += [threads.start(lambda: results.append(q.dequeue_many(3, timeout=None))) for _ in range(3)]
    # Give them a moment to block (a consumer that has not blocked yet gets the same answer).
    threading.Event().wait(0.2)
    q.close()
    threads.join(blocked)
    assert not threads.errors
    assert sorted(map(repr, results)) == sorted(["None"] * 6 + ["[]"] * 3)


# ---------------------------------------------------------------------------------------
# The last reference to a queue with a blocked consumer


def test_dropping_the_last_reference_while_a_consumer_is_blocked(impl: ModuleType) -> None:
    """The blocked call holds the queue alive; closing it through a weakref wakes it; then it is freed."""
    q = impl.Queue(4)
    ref = weakref.ref(q)
    result: list[Any] = []
    threads = _Threads()
    started = threading.Event()

    def consume(queue: Any) -> None:
        started.set()
        result.append(queue.dequeue(timeout=None))

    t = threads.start(consume, q)
    started.wait()
    del q
    gc.collect()
    alive = ref()
    assert alive is not None, "a blocked dequeue must keep its queue alive"
    alive.close()
    del alive
    threads.join([t])
    assert not threads.errors and result == [None]
    del t, threads
    gc.collect()
    assert ref() is None


def test_queue_freed_while_other_queues_are_in_use(impl: ModuleType) -> None:
    """Queues created and dropped by many threads at once: each is freed, none crashes."""
    refs: list[weakref.ref[Any]] = []
    threads = _Threads()

    def churn(k: int) -> None:
        for i in range(200):
            q = impl.Queue(8, POLICIES[(k + i) % 3])
            for j in range(5):
                q.enqueue(impl.Task("m", 1, payload=[k, i, j]))
            if i % 3 == 0:
                q.dequeue()
            elif i % 3 == 1:
                q.drain()
            refs.append(weakref.ref(q))

    workers = [threads.start(churn, k) for k in range(4)]
    threads.join(workers)
    assert not threads.errors
    gc.collect()
    assert len(refs) == 800 and all(r() is None for r in refs)


@pytest.mark.parametrize("timeout", [float("inf"), 1e300, sys.float_info.max, 1e12])
def test_huge_timeouts_wait_until_woken(impl: ModuleType, timeout: float) -> None:
    """A timeout too large for the platform's wait is clamped, never overflows into "no wait"."""
    q = impl.Queue(4)
    got: list[Any] = []
    threads = _Threads()
    t = threads.start(lambda: got.append(q.dequeue(timeout=timeout)))
    threading.Event().wait(0.1)  # give it a moment to block (it gets the job either way)
    assert q.enqueue(impl.Task("m", 1, job_id="late")).accepted
    threads.join([t])
    assert not threads.errors
    assert [j.job_id for j in got] == ["late"]
