"""Deadlines (``max_wait_ms``, ``take_expired``), deadline-feasible admission, ETAs and
admission waits (``enqueue(wait=...)``), on both engines (``impl``)."""

from __future__ import annotations

import threading
import time
from types import ModuleType
from typing import Any

import pytest

from orchestrator_core import RejectionReason


def ids(jobs: list[Any]) -> list[str]:
    return [j.job_id for j in jobs]


def balance(q: Any) -> None:
    m = q.metrics()
    assert m.accepted == m.dequeued + m.cancelled + m.evicted + m.drained + m.expired + m.depth


# -- expiry --------------------------------------------------------------------------------


def test_an_overdue_job_is_never_dequeued_but_reported(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(10, clock=clock)
    late = q.enqueue(impl.Task("m", 1, max_wait_ms=100)).job_id
    keep = q.enqueue(impl.Task("m", 1)).job_id
    clock.advance(0.25)
    assert q.dequeue().job_id == keep
    assert q.dequeue() is None
    (job,) = q.take_expired()
    assert job.job_id == late and job.task.max_wait_ms == 100.0
    assert job.wait_ms == pytest.approx(250.0) and job.enqueued_at == 1000.0
    assert q.take_expired() == []  # handed over once
    m = q.metrics()
    assert (m.expired, m.dequeued, m.depth) == (1, 1, 0)
    balance(q)


def test_waiting_exactly_max_wait_is_not_overdue(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(10, clock=clock)
    a = q.enqueue(impl.Task("m", 1, max_wait_ms=250)).job_id
    clock.advance(0.25)  # waited exactly 250 ms: not more than max_wait_ms
    assert q.take_expired() == [] and q.dequeue().job_id == a


def test_the_queue_default_applies_to_tasks_without_a_deadline(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(10, clock=clock, max_wait_ms=100)
    assert q.max_wait_ms == 100.0
    default = q.enqueue(impl.Task("m", 1)).job_id
    longer = q.enqueue(impl.Task("m", 1, max_wait_ms=1000)).job_id
    clock.advance(0.5)
    assert ids(q.take_expired()) == [default]
    assert q.snapshot() == [longer]
    assert make_queue(1).max_wait_ms is None


def test_expired_jobs_leave_earliest_deadline_first(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(10, clock=clock)
    a = q.enqueue(impl.Task("m", 1, max_wait_ms=1000)).job_id  # due at +1.0
    clock.advance(0.5)
    b = q.enqueue(impl.Task("m", 1, max_wait_ms=100)).job_id  # due at +0.6
    c = q.enqueue(impl.Task("m", 1, max_wait_ms=100)).job_id  # due at +0.6, after b
    d = q.enqueue(impl.Task("m", 1, max_wait_ms=5000)).job_id
    clock.advance(2.0)
    jobs = q.take_expired()
    assert ids(jobs) == [b, c, a]
    assert [j.wait_ms for j in jobs] == pytest.approx([2000.0, 2000.0, 2500.0])
    assert q.snapshot() == [d]


def test_expired_jobs_do_not_occupy_capacity(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(2, "reject-new", clock=clock)
    old = [q.enqueue(impl.Task("m", 1, max_wait_ms=100)).job_id for _ in range(2)]
    assert q.enqueue(impl.Task("m", 1)).reason is RejectionReason.QUEUE_FULL
    clock.advance(1.0)
    res = q.enqueue(impl.Task("m", 1))  # the overdue jobs expire before the capacity check
    assert res.accepted and res.position == 0 and res.evicted is None
    assert ids(q.take_expired()) == old
    m = q.metrics()
    assert (m.expired, m.evicted, m.depth) == (2, 0, 1)


def test_an_overdue_job_is_invisible_to_every_look(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(10, clock=clock)
    late = q.enqueue(impl.Task("m", 1, max_wait_ms=10)).job_id
    other = q.enqueue(impl.Task("m", 1)).job_id
    assert q.position(other) == 1
    clock.advance(1.0)
    assert q.position(other) == 0 and q.position(late) is None
    assert late not in q and q.snapshot() == [other] and q.lru_order("interactive") == [other]
    assert q.depth() == len(q) == 1
    assert q.cancel(late) is False and q.touch(late) is False
    assert q.metrics().cancelled == 0 and q.metrics().expired == 1
    assert ids(q.drain()) == [other]  # drain hands out live jobs only...
    assert ids(q.take_expired()) == [late]  # ...the expired one is still reported here
    balance(q)


def test_expiry_leaves_the_tenant_its_turn(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(10, clock=clock)
    a1 = q.enqueue(impl.Task("m", 1, tenant="a", max_wait_ms=10)).job_id
    b1 = q.enqueue(impl.Task("m", 1, tenant="b")).job_id
    a2 = q.enqueue(impl.Task("m", 1, tenant="a")).job_id
    clock.advance(0.1)
    assert ids(q.dequeue_many(5)) == [a2, b1]  # a's next job takes a's turn
    assert ids(q.take_expired()) == [a1]


def test_without_deadlines_only_enqueue_dequeue_and_metrics_read_the_clock(make_queue: Any, impl: ModuleType) -> None:
    reads = [0]

    def counting_clock() -> float:
        reads[0] += 1
        return 5000.0

    q = make_queue(10, clock=counting_clock)
    a = q.enqueue(impl.Task("m", 1)).job_id
    reads[0] = 0
    q.position(a), q.touch(a), a in q, q.snapshot(), q.lru_order("interactive"), q.depth(), q.take_expired()
    assert reads[0] == 0  # the deadline machinery costs nothing when no deadline is queued
    q.enqueue(impl.Task("m", 1, max_wait_ms=1000))
    reads[0] = 0
    q.position(a)
    assert reads[0] == 1  # a queued deadline: looks expire overdue jobs first


# -- deadline-feasible admission -----------------------------------------------------------


def measured_rate(q: Any, impl: ModuleType, clock: Any, per_second: int) -> None:
    """Dequeue ``per_second`` jobs in one second, then move to the next: rate = per_second/s."""
    for _ in range(per_second):
        q.enqueue(impl.Task("m", 1))
        q.dequeue()
    clock.advance(1.0)


def test_admit_only_feasible_refuses_an_unmeetable_deadline(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(100, clock=clock, admit_only_feasible=True)
    assert q.admit_only_feasible is True
    measured_rate(q, impl, clock, 10)  # 10 jobs/s: each job ahead is 100 ms of wait
    for _ in range(5):
        q.enqueue(impl.Task("m", 1))
    res = q.enqueue(impl.Task("m", 1, max_wait_ms=300))  # 5 ahead = 500 ms > 300 ms
    assert res.reason is RejectionReason.DEADLINE_UNMEETABLE and res.retriable
    assert res.retry_after_ms == 200  # 2 of the 5 must leave first, 100 ms each
    assert "5 job(s) ahead" in res.message and "500 ms" in res.message and "300" in res.message
    status, headers, body = res.to_http()
    assert status == 429 and headers["Retry-After"] == "1" and body["code"] == "DEADLINE_UNMEETABLE"
    ok = q.enqueue(impl.Task("m", 1, max_wait_ms=500))  # exactly meetable
    assert ok.accepted and ok.position == 5 and ok.eta_ms == pytest.approx(500.0)
    assert q.enqueue(impl.Task("m", 1)).accepted  # no deadline: always feasible
    m = q.metrics()
    assert m.rejected[RejectionReason.DEADLINE_UNMEETABLE] == 1 and m.depth == 7


def test_feasibility_needs_a_measured_rate(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(100, clock=clock, admit_only_feasible=True)
    for _ in range(50):
        q.enqueue(impl.Task("m", 1))
    res = q.enqueue(impl.Task("m", 1, max_wait_ms=1))  # nothing dequeued yet: no prediction
    assert res.accepted and res.eta_ms is None


def test_without_admit_only_feasible_the_task_is_admitted_to_expire(
    make_queue: Any, impl: ModuleType, clock: Any
) -> None:
    q = make_queue(100, clock=clock)
    measured_rate(q, impl, clock, 10)
    for _ in range(5):
        q.enqueue(impl.Task("m", 1))
    res = q.enqueue(impl.Task("m", 1, max_wait_ms=300))
    assert res.accepted and res.eta_ms == pytest.approx(500.0)


# -- ETA -----------------------------------------------------------------------------------


def test_eta_is_the_position_over_the_measured_rate(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(100, clock=clock)
    first = q.enqueue(impl.Task("m", 1))
    assert first.eta_ms is None and q.eta_ms(first.job_id) is None  # no rate yet
    q.dequeue()
    measured_rate(q, impl, clock, 3)  # 4 dequeues in the one completed second
    jobs = [q.enqueue(impl.Task("m", 1)) for _ in range(3)]
    assert [r.eta_ms for r in jobs] == pytest.approx([0.0, 250.0, 500.0])
    assert q.eta_ms(jobs[2].job_id) == pytest.approx(500.0)
    q.cancel(jobs[0].job_id)
    assert q.eta_ms(jobs[2].job_id) == pytest.approx(250.0)  # follows the position
    assert q.eta_ms("never-queued") is None
    assert repr(jobs[1]).endswith("eta_ms=250.0)")


# -- admission wait ------------------------------------------------------------------------


def test_enqueue_waits_for_room_from_a_consumer(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(1)
    (a,) = [q.enqueue(impl.Task("m", 1)).job_id]
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(q.enqueue(impl.Task("m", 1, job_id="late"), wait=30)))
    t.start()
    while not results and t.is_alive():
        # The producer waits without the engine's lock: every operation still works.
        assert q.depth() == 1 and q.metrics().rejected_total == 0
        time.sleep(0.01)
        if q.dequeue() is not None:
            break
    t.join(30)
    assert not t.is_alive()
    (res,) = results
    assert res.accepted and res.job_id == "late" and res.position == 0
    assert q.snapshot() == ["late"] and a not in q


def test_enqueue_wait_times_out_and_then_decides_by_the_policy(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(1, "reject-new")
    q.enqueue(impl.Task("m", 1))
    res = q.enqueue(impl.Task("m", 1), wait=0.02)
    assert res.reason is RejectionReason.QUEUE_FULL
    assert q.metrics().rejected[RejectionReason.QUEUE_FULL] == 1  # one refusal, however long it waited
    d = make_queue(1, "drop-lru")
    (old,) = [d.enqueue(impl.Task("m", 1)).job_id]
    res = d.enqueue(impl.Task("m", 1), wait=0.02)  # no room came: DROP_LRU evicts at the end
    assert res.accepted and res.evicted.job_id == old


def test_close_wakes_a_waiting_producer(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(1)
    q.enqueue(impl.Task("m", 1))
    results: list[Any] = []
    t = threading.Thread(target=lambda: results.append(q.enqueue(impl.Task("m", 1), wait=None)))
    t.start()
    time.sleep(0.05)
    q.close()
    t.join(30)
    assert not t.is_alive() and results[0].reason is RejectionReason.QUEUE_CLOSED


def test_enqueue_wait_admits_at_once_when_there_is_room(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(2)
    assert q.enqueue(impl.Task("m", 1), wait=5).position == 0
    assert q.enqueue(impl.Task("m", 1), wait=None).position == 1


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "exc", "text"),
    [
        (0, ValueError, "max_wait_ms must be a positive number of milliseconds or None, got 0"),
        (-5, ValueError, "max_wait_ms must be a positive number of milliseconds or None, got -5"),
        (float("nan"), ValueError, "max_wait_ms must be a positive number of milliseconds or None, got nan"),
        (float("inf"), ValueError, "max_wait_ms must be a positive number of milliseconds or None, got inf"),
        ("100", TypeError, "max_wait_ms must be a positive number of milliseconds or None, got '100'"),
        (True, TypeError, "max_wait_ms must be a positive number of milliseconds or None, got True"),
    ],
)
def test_bad_max_wait_ms(impl: ModuleType, value: object, exc: type, text: str) -> None:
    with pytest.raises(exc) as info:
        impl.Task("m", 1, max_wait_ms=value)
    assert str(info.value) == text
    with pytest.raises(exc) as info:
        impl.Queue(5, max_wait_ms=value)
    assert str(info.value) == text


@pytest.mark.parametrize("value", [1, "yes", None])
def test_bad_admit_only_feasible(impl: ModuleType, value: object) -> None:
    with pytest.raises(TypeError) as info:
        impl.Queue(5, admit_only_feasible=value)
    assert str(info.value) == f"admit_only_feasible must be a bool, got {value!r}"


@pytest.mark.parametrize(
    ("wait", "exc", "text"),
    [
        (-1, ValueError, "wait must be >= 0 seconds or None, got -1"),
        ("1", TypeError, "wait must be a number of seconds or None, got '1'"),
        (False, TypeError, "wait must be a number of seconds or None, got False"),
    ],
)
def test_bad_enqueue_wait_changes_nothing(
    make_queue: Any, impl: ModuleType, wait: object, exc: type, text: str
) -> None:
    q = make_queue(3)
    with pytest.raises(exc) as info:
        q.enqueue(impl.Task("m", 1), wait=wait)
    assert str(info.value) == text
    m = q.metrics()
    assert (m.accepted, m.rejected_total, q.depth()) == (0, 0, 0)


def test_builder_sets_the_deadline_options(impl: ModuleType) -> None:
    q = impl.Queue.builder().capacity(3).max_wait_ms(250).admit_only_feasible().build()
    assert (q.max_wait_ms, q.admit_only_feasible) == (250.0, True)
