"""Tenants: round-robin fairness within a priority, exact positions, per-tenant caps and
DROP_LRU's choice of victim, on both engines (``impl``)."""

from __future__ import annotations

import random
from types import ModuleType
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orchestrator_core import Priority, RejectionReason

from .model import Model


def put(q: Any, impl: ModuleType, tenant: str | None, n: int = 1, **kw: Any) -> list[str]:
    out = []
    for _ in range(n):
        res = q.enqueue(impl.Task("m", 1, tenant=tenant, **kw))
        assert res.accepted, res
        out.append(res.job_id)
    return out


def owners(q: Any, jobs: list[Any]) -> list[str | None]:
    return [j.task.tenant for j in jobs]


def test_a_tenant_with_one_job_waits_one_turn_per_other_tenant(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(100)
    put(q, impl, "big", 50)
    put(q, impl, "mid", 3)
    (small,) = put(q, impl, "small")
    assert q.position(small) == 2  # behind big's and mid's next job, not behind 53 jobs
    jobs = q.dequeue_many(8)
    assert owners(q, jobs) == ["big", "mid", "small", "big", "mid", "big", "mid", "big"]


def test_without_tenants_the_order_is_fifo(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10)
    a = put(q, impl, None, 5)
    assert [q.dequeue().job_id for _ in range(5)] == a


def test_untenanted_jobs_are_one_tenant_among_the_others(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10)
    put(q, impl, None, 3)
    put(q, impl, "acme", 2)
    assert owners(q, q.drain()) == [None, "acme", None, "acme", None]


def test_a_tenant_that_gets_work_joins_the_round_robin_at_the_back(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(20)
    put(q, impl, "a", 3)
    put(q, impl, "b", 3)
    assert q.dequeue().task.tenant == "a"  # the circle is now b, a
    (c,) = put(q, impl, "c")
    assert q.position(c) == 2
    assert owners(q, q.drain()) == ["b", "a", "c", "b", "a", "b"]


def test_a_closed_loop_tenant_cannot_starve_a_backlogged_one(make_queue: Any, impl: ModuleType) -> None:
    # "loop" always has exactly one job queued: it re-enters behind "big" every time.
    q = make_queue(100)
    put(q, impl, "big", 10)
    put(q, impl, "loop")
    served = []
    for _ in range(10):
        job = q.dequeue()
        served.append(job.task.tenant)
        if job.task.tenant == "loop":
            put(q, impl, "loop")
    assert served == ["big", "loop"] * 5


def test_priority_still_comes_first(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(20)
    put(q, impl, "a", 2, priority="batch")
    put(q, impl, "b", 1, priority="batch")
    inter = put(q, impl, "a", 2)
    jobs = q.drain()
    assert [j.job_id for j in jobs[:2]] == inter
    assert [(j.priority, j.task.tenant) for j in jobs[2:]] == [(Priority.BATCH, "a"), (Priority.BATCH, "b")] + [
        (Priority.BATCH, "a")
    ]


def test_positions_snapshot_and_accepted_position_agree_with_the_dequeue_order(
    make_queue: Any, impl: ModuleType
) -> None:
    q = make_queue(100)
    accepted = {}
    for tenant in ["a", "a", "b", None, "a", "c", "b", "a", None, "c"]:
        res = q.enqueue(impl.Task("m", 1, tenant=tenant, priority="batch" if tenant == "c" else "interactive"))
        assert res.position == q.position(res.job_id)
        accepted[res.job_id] = res
    cancelled = list(accepted)[4]
    assert q.cancel(cancelled)
    snap = q.snapshot()
    assert [q.position(x) for x in snap] == list(range(len(snap)))
    assert [j.job_id for j in q.drain()] == snap


def test_position_is_exact_through_cancellations_in_many_tenants(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(5000)
    jobs = []
    for i in range(600):
        jobs.append(q.enqueue(impl.Task("m", 1, tenant=f"t{i % 7}")).job_id)
    for k, x in enumerate(jobs):
        if k % 3 == 1:
            q.cancel(x)
    snap = q.snapshot()
    assert [q.position(x) for x in snap] == list(range(len(snap)))
    q.dequeue_many(50)
    snap = q.snapshot()
    assert [q.position(x) for x in snap[::17]] == list(range(0, len(snap), 17))


# -- per-tenant caps -------------------------------------------------------------------------


def test_max_queued_per_tenant_is_a_policy_violation(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(100, max_queued_per_tenant=2)
    assert q.max_queued_per_tenant == 2
    put(q, impl, "acme", 1)
    put(q, impl, "acme", 1, priority="batch")  # the cap counts both priorities
    res = q.enqueue(impl.Task("m", 1, tenant="acme"))
    assert res.reason is RejectionReason.POLICY_VIOLATION and not res.retriable and res.retry_after_ms == 0
    assert res.message == "tenant 'acme' already has 2 job(s) queued (max_queued_per_tenant 2)"
    put(q, impl, "other", 2)  # other tenants are unaffected
    put(q, impl, None, 5)  # untenanted work is bounded by the capacity only
    q.dequeue()  # acme's interactive job
    put(q, impl, "acme", 1)  # room again for acme
    assert q.metrics().rejected[RejectionReason.POLICY_VIOLATION] == 1
    assert make_queue(1).max_queued_per_tenant is None


# -- DROP_LRU ------------------------------------------------------------------------------


def test_drop_lru_evicts_from_the_tenant_with_the_most_jobs(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(6, "drop-lru")
    a = put(q, impl, "a", 2)
    b = put(q, impl, "b", 3)
    put(q, impl, "c", 1)
    q.touch(b[0])  # b's least recently used is now b[1]
    assert q.lru_order("interactive")[:3] == [b[1], b[2], a[0]]
    res = q.enqueue(impl.Task("m", 1, tenant="n1"))
    assert res.evicted.job_id == b[1]
    # a and b now have 2 each: the tie goes to the later one in the round robin (b, after a)
    res = q.enqueue(impl.Task("m", 1, tenant="n2"))
    assert res.evicted.job_id == b[2]
    assert q.lru_order("interactive") == q.lru_order(Priority.INTERACTIVE)
    m = q.metrics()
    assert m.evicted == 2 and m.depth == 6


def test_drop_lru_still_takes_batch_victims_first(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(4, "drop-lru")
    put(q, impl, "a", 3)
    (batch,) = put(q, impl, "b", 1, priority="batch")
    res = q.enqueue(impl.Task("m", 1, tenant="b"))
    assert res.evicted.job_id == batch


def test_lru_order_is_the_eviction_order(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(9, "drop-lru")
    put(q, impl, "a", 4, priority="batch")
    b = put(q, impl, "b", 2, priority="batch")
    put(q, impl, None, 3, priority="batch")
    q.touch(b[0])
    order = q.lru_order("batch")
    # interactive newcomers evict batch jobs and never compete with them
    evicted = [q.enqueue(impl.Task("m", 1, tenant="z")).evicted.job_id for _ in range(9)]
    assert evicted == order and len(set(order)) == 9


# -- fairness property ---------------------------------------------------------------------


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.one_of(st.sampled_from(["a", "b", "c", "d", None]), st.just("deq"), st.just("deq")),
        min_size=10,
        max_size=120,
    )
)
def test_no_tenant_waits_more_than_one_turn_per_other_active_tenant(impl: ModuleType, ops: list[Any]) -> None:
    # From the moment a tenant has work queued (it gets its first job, or it was just served
    # and has more), until its next dequeue, it sees at most one dequeue of each other tenant
    # that had work queued at that moment: at most k - 1 for k active tenants.
    q = impl.Queue(1000, id_prefix="q")
    queued: dict[Any, int] = {}
    waiting: dict[Any, tuple[set[Any], list[Any]]] = {}  # tenant -> (active then, others served since)
    for op in ops:
        if op != "deq":
            assert q.enqueue(impl.Task("m", 1, tenant=op)).accepted
            queued[op] = queued.get(op, 0) + 1
            if queued[op] == 1:
                waiting[op] = ({u for u, n in queued.items() if n}, [])
            continue
        job = q.dequeue()
        if job is None:
            assert not any(queued.values())
            continue
        t = job.task.tenant
        queued[t] -= 1
        if t in waiting:
            active, served = waiting.pop(t)
            assert len(served) == len(set(served)) <= len(active) - 1, (t, active, served)
            assert set(served) <= active - {t}
        for _, served in waiting.values():
            served.append(t)
        if queued[t]:
            waiting[t] = ({u for u, n in queued.items() if n}, [])


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tenant", "exc", "text"),
    [
        ("", ValueError, "tenant must not be empty, got ''"),
        (5, TypeError, "tenant must be a str, got 5 (int)"),
        ("x" * 129, ValueError, "tenant must be at most 128 characters, got 129"),
        ("a\nb", ValueError, "tenant must be printable"),
    ],
)
def test_bad_tenant(impl: ModuleType, tenant: object, exc: type, text: str) -> None:
    with pytest.raises(exc) as info:
        impl.Task("m", 1, tenant=tenant)
    assert str(info.value).startswith(text)


def test_a_str_subclass_tenant_is_stored_as_exact_str(make_queue: Any, impl: ModuleType) -> None:
    class Evil(str):
        def __hash__(self) -> int:
            raise AssertionError("the engine must not call a subclass's __hash__")

        def __eq__(self, other: object) -> bool:
            raise AssertionError("the engine must not call a subclass's __eq__")

    task = impl.Task("m", 1, tenant=Evil("acme"))
    assert type(task.tenant) is str and task.tenant == "acme"
    q = make_queue(5)
    q.enqueue(task)
    q.enqueue(impl.Task("m", 1, tenant="acme"))
    assert owners(q, q.drain()) == ["acme", "acme"]


@pytest.mark.parametrize(
    ("value", "exc", "text"),
    [
        (0, ValueError, "max_queued_per_tenant must be a positive int or None, got 0"),
        (2.0, TypeError, "max_queued_per_tenant must be a positive int or None, got 2.0"),
        (True, TypeError, "max_queued_per_tenant must be a positive int or None, got True"),
        (2**62, ValueError, "max_queued_per_tenant must be below 2**62, got 4611686018427387904"),
    ],
)
def test_bad_max_queued_per_tenant(impl: ModuleType, value: object, exc: type, text: str) -> None:
    with pytest.raises(exc) as info:
        impl.Queue(5, max_queued_per_tenant=value)
    assert str(info.value) == text


def test_builder_and_repr(impl: ModuleType) -> None:
    q = impl.Queue.builder().capacity(3).max_queued_per_tenant(1).build()
    assert q.max_queued_per_tenant == 1
    assert repr(impl.Task("m", 1, tenant="acme")).endswith("job_id=None, tenant='acme')")
    assert "tenant" not in repr(impl.Task("m", 1))


# -- threads -------------------------------------------------------------------------------


def _conserve(impl: ModuleType) -> None:
    """Producers (several tenants, some tasks with a deadline), consumers and a reaper: every
    accepted job leaves exactly once, dequeued or expired, and the counters balance."""
    import threading
    import time
    from collections import Counter

    q = impl.Queue(256, max_queued_per_tenant=64, max_queued_tokens=20_000)
    per_producer = 3000
    accepted: list[list[str]] = [[], [], []]
    left: list[list[str]] = [[], [], []]
    done = threading.Event()

    def produce(k: int) -> None:
        out = accepted[k]
        for i in range(per_producer):
            task = impl.Task("m", 10, tenant=f"t{(k + i) % 5}", max_wait_ms=5.0 if i % 7 == 0 else None)
            res = q.enqueue(task, wait=None if i % 11 == 0 else 0.0)
            if res.accepted:
                out.append(res.job_id)

    def consume(k: int) -> None:
        out = left[k]
        while not (done.is_set() and q.depth() == 0):
            out.extend(j.job_id for j in q.dequeue_many(8, timeout=0.01))
            time.sleep(0.0002)  # slower than the producers: a backlog builds and deadlines pass

    def reap() -> None:
        while not done.is_set():
            left[2].extend(j.job_id for j in q.take_expired())
        left[2].extend(j.job_id for j in q.take_expired())

    producers = [threading.Thread(target=produce, args=(k,)) for k in range(3)]
    others = [threading.Thread(target=consume, args=(k,)) for k in range(2)] + [threading.Thread(target=reap)]
    for t in producers + others:
        t.start()
    for t in producers:
        t.join()
    done.set()
    for t in others:
        t.join()
    left[2].extend(j.job_id for j in q.take_expired())
    sent = [x for out in accepted for x in out]
    got = [x for out in left for x in out]
    assert len(set(sent)) == len(sent)
    assert Counter(got) == Counter(sent)
    m = q.metrics()
    assert m.accepted == len(sent) == m.dequeued + m.expired and m.depth == 0 and m.queued_tokens == 0


def test_threads_conserve_jobs_with_tenants_deadlines_and_budgets(impl: ModuleType) -> None:
    _conserve(impl)


@pytest.mark.c_extension
def test_threads_conserve_jobs_with_the_gil_released() -> None:
    from .conftest import core_c

    assert core_c is not None
    core_c._set_release_gil(True)
    try:
        _conserve(core_c)
    finally:
        core_c._set_release_gil(False)


def test_a_cycle_through_queued_payloads_is_collected(impl: ModuleType, clock: Any) -> None:
    # Tasks in a tenant's lane and on the expired list are the queue's references too.
    import gc
    import weakref

    q = impl.Queue(10, clock=clock, id_prefix="q")
    ref = weakref.ref(q)
    q.enqueue(impl.Task("m", 1, tenant="acme", payload=q))
    q.enqueue(impl.Task("m", 1, max_wait_ms=1, payload=q))
    q.enqueue(impl.Task("m", 1, payload=[q]))
    clock.advance(1.0)
    assert q.depth() == 2  # the deadline job now waits on the expired list
    del q
    gc.collect()
    assert ref() is None


def test_positions_follow_the_round_robin_when_tenants_join_one_place_many_times(
    make_queue: Any, impl: ModuleType
) -> None:
    # a and b queued, a just served: every tenant that joins now goes between a and b in the
    # circle (at the back of the turns), halving the room left there, and the lanes are
    # relabelled in order once it runs out (after about 40 of them).
    q = make_queue(1000)
    put(q, impl, "a", 3)
    put(q, impl, "b", 3)
    assert q.dequeue().task.tenant == "a"
    late = [put(q, impl, f"t{i}")[0] for i in range(100)]
    assert [q.position(j) for j in late] == list(range(2, 102))
    expected = ["b", "a"] + [f"t{i}" for i in range(100)] + ["b", "a", "b"]
    jobs = q.drain()
    assert owners(q, jobs) == expected


@pytest.mark.parametrize("policy", ["reject-new", "drop-lru"])
def test_positions_and_victims_with_hundreds_of_tenants_match_the_model(impl: ModuleType, policy: str) -> None:
    # Hundreds of tenants joining and leaving at every place of the circle (bursts, in both
    # priorities, with cancels and, under DROP_LRU, evictions): every queued job's position,
    # every Accepted.position and every victim is what the reference model's literal round
    # robin says.
    rng = random.Random(7)
    capacity = 400 if policy == "reject-new" else 150  # (the model's evictions are slow)
    q = impl.Queue(capacity, policy, id_prefix="q")
    m = Model(capacity, policy)
    names = [f"t{i}" for i in range(300)] + [None]
    for step in range(1200):
        r = rng.random()
        if r < 0.6:
            n = rng.choice((1, 1, 1, 5, 40))
            for _ in range(n):
                tenant = rng.choice(names)
                prio = rng.random() < 0.3
                res = q.enqueue(impl.Task("m", 1, tenant=tenant, priority="batch" if prio else "interactive"))
                want = m.enqueue(int(prio), 1, None, 0.0, tenant=tenant)
                assert res.accepted == (want[0] == "accepted"), (res, want)
                if res.accepted:
                    assert (res.job_id, res.position) == (want[1], want[2])
                    assert [v.job_id for v in res.evicted_all or ((res.evicted,) if res.evicted else ())] == [
                        v.job_id for v in want[3]
                    ]
        elif r < 0.85:
            for _ in range(rng.choice((1, 3, 30))):
                job = q.dequeue()
                want_job = m.dequeue(0.0)
                assert (job and job.job_id) == (want_job and want_job.job_id)
        else:
            jobs = m.jobs()
            if jobs:
                victim = rng.choice(jobs).job_id
                assert q.cancel(victim) and m.cancel(victim, 0.0)
        if step % 100 == 99:
            order = m.order()
            assert [q.position(j.job_id) for j in order] == list(range(len(order)))
    assert [j.job_id for j in q.drain()] == [j.job_id for j in m.order()]


def test_tenants_joining_a_deep_queue_get_exact_positions(make_queue: Any, impl: ModuleType) -> None:
    # Past 32 tenants in a priority the engine stops walking them and counts positions in a
    # rank tree it makes from the queued jobs: the positions are the same either side.
    q = make_queue(2000)
    plain = put(q, impl, None, 500)
    q.cancel(plain[1])
    late = [put(q, impl, f"t{i}")[0] for i in range(40)]
    assert [q.position(j) for j in late] == list(range(1, 41))
    assert [q.position(j) for j in plain[:5]] == [0, None, 41, 42, 43]
    (again,) = put(q, impl, "t0")  # its second turn: after the default tenant's next job
    assert q.position(again) == 42
    order = [j.job_id for j in q.drain()]
    assert order[:45] == [plain[0], *late, plain[2], again, plain[3], plain[4]]
    assert len(order) == 540


def test_drop_lru_can_empty_a_class_of_many_tenants_to_admit_one_task(make_queue: Any, impl: ModuleType) -> None:
    # The budget only fits the new task once every batch job is evicted: a class of 33 tenants
    # (kept with a rank tree) empties inside the admission, and the new tenant's lane starts
    # it afresh.
    q = make_queue(1000, "drop-lru", max_queued_tokens=66)
    old = [j for i in range(33) for j in put(q, impl, f"t{i}", 2, priority="batch")]
    res = q.enqueue(impl.Task("m", 66, tenant="big", priority="batch"))
    assert res.accepted and res.position == 0
    assert sorted(j.job_id for j in res.evicted_all) == sorted(old)
    res2 = q.enqueue(impl.Task("m", 30, tenant="d", priority="batch"))
    assert res2.accepted and res2.evicted.job_id == res.job_id and res2.position == 0
    (e,) = put(q, impl, "e", priority="batch")
    assert q.position(e) == 1
    assert owners(q, q.drain()) == ["d", "e"]
