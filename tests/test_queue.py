"""One test per rule of the admission queue, on both engines (``impl``)."""

from __future__ import annotations

import threading
import time
from types import ModuleType
from typing import Any

import pytest

from orchestrator_core import AdmissionPolicy, Priority, RejectionReason


def fill(q: Any, impl: ModuleType, n: int, priority: str = "interactive", **kw: Any) -> list[str]:
    ids = []
    for _ in range(n):
        res = q.enqueue(impl.Task("m", 10, priority=priority, **kw))
        assert res.accepted, res
        ids.append(res.job_id)
    return ids


def state(q: Any) -> tuple[Any, ...]:
    m = q.metrics()
    return (
        q.snapshot(),
        q.lru_order("interactive"),
        q.lru_order("batch"),
        m.accepted,
        tuple(m.rejected.values()),
        m.evicted,
        m.cancelled,
        m.dequeued,
        m.drained,
        q.depth(),
        q.closed,
    )


def test_seed_usage_example(impl: ModuleType) -> None:
    q = impl.Queue(capacity=100, policy=AdmissionPolicy.DROP_LRU, pool_id="pool-0")
    task = impl.Task(model="llama-3.1-8b-instruct", max_tokens=100, session_id="sess-123")
    res = q.enqueue(task)
    match res:
        case impl.Accepted(job_id=job_id, position=position):
            assert position == 0
            assert res.evicted is None
        case _:
            pytest.fail(f"expected Accepted, got {res!r}")
    job = q.dequeue()
    assert job is not None and job.job_id == job_id and job.task is task
    assert job.priority is Priority.INTERACTIVE
    assert q.dequeue() is None
    assert q.pool_id == "pool-0" and q.policy is AdmissionPolicy.DROP_LRU and q.capacity() == 100


def test_builder_builds_the_same_queue(impl: ModuleType) -> None:
    q = impl.Queue.builder().capacity(3).policy("drop-lru").pool_id("p1").max_tokens_limit(50).id_prefix("b").build()
    assert type(q) is impl.Queue
    assert (q.capacity(), q.policy, q.pool_id, q.id_prefix) == (3, AdmissionPolicy.DROP_LRU, "p1", "b")
    assert q.enqueue(impl.Task("m", 51)).reason is RejectionReason.POLICY_VIOLATION
    with pytest.raises(ValueError, match="capacity"):
        impl.Queue.builder().policy("drop-lru").build()
    with pytest.raises(ValueError, match="policy must be one of"):
        impl.Queue.builder().capacity(3).policy("lifo").build()


def test_interactive_before_batch_and_fifo_within(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10)
    b = fill(q, impl, 2, "batch")
    i = fill(q, impl, 2, "interactive")
    b += fill(q, impl, 1, "batch")
    assert q.snapshot() == i + b
    assert q.snapshot("batch") == b and q.snapshot(Priority.INTERACTIVE) == i
    assert [q.dequeue().job_id for _ in range(5)] == i + b


def test_position_counts_jobs_dequeued_before(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10)
    b = fill(q, impl, 2, "batch")
    i = fill(q, impl, 3)
    assert [q.position(x) for x in i + b] == [0, 1, 2, 3, 4]
    assert q.cancel(i[1])
    assert [q.position(x) for x in (i[0], i[2], b[0], b[1])] == [0, 1, 2, 3]
    assert q.position(i[1]) is None and q.position("never-seen") is None
    res = q.enqueue(impl.Task("m", 1, priority="batch"))
    assert res.position == 4 == q.position(res.job_id)
    res = q.enqueue(impl.Task("m", 1))
    assert res.position == 2 == q.position(res.job_id)


def test_position_stays_exact_through_many_cancellations(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(5000)
    ids = fill(q, impl, 3000)
    for k, x in enumerate(ids):
        if k % 3:
            q.cancel(x)
    live = ids[::3]
    assert [q.position(x) for x in live] == list(range(len(live)))
    for _ in range(100):
        q.dequeue()
    assert q.position(live[100]) == 0 and q.position(live[-1]) == len(live) - 101


def test_reject_new_refuses_when_full_and_changes_nothing(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(2, "reject-new")
    fill(q, impl, 2)
    before = state(q)
    res = q.enqueue(impl.Task("m", 1))
    assert isinstance(res, impl.Rejected)
    assert res.reason is RejectionReason.QUEUE_FULL and res.retriable
    assert res.policy is AdmissionPolicy.REJECT_NEW
    assert res.retry_after_ms == 1000  # nothing dequeued yet: the documented default
    assert "full" in res.message
    after = state(q)
    assert after[:3] == before[:3] and after[4][0] == before[4][0] + 1


def test_drop_lru_evicts_least_recently_used_and_reports_it(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(3, "drop-lru")
    a, b, c = fill(q, impl, 3)
    assert q.touch(a)  # b is now the least recently used
    assert q.lru_order("interactive") == [b, c, a]
    res = q.enqueue(impl.Task("m", 1))
    assert res.accepted and res.evicted is not None
    assert res.evicted.job_id == b and res.evicted.wait_ms >= 0
    assert b not in q and q.snapshot() == [a, c, res.job_id]
    assert q.metrics().evicted == 1


def test_drop_lru_takes_the_victim_from_batch_first(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(3, "drop-lru")
    i1 = fill(q, impl, 1)[0]
    b1, b2 = fill(q, impl, 2, "batch")
    q.touch(b1)
    res = q.enqueue(impl.Task("m", 1))  # interactive: evicts the LRU batch job
    assert res.evicted.job_id == b2
    res = q.enqueue(impl.Task("m", 1, priority="batch"))  # batch evicts batch
    assert res.evicted.job_id == b1
    assert q.snapshot() == [i1, q.snapshot()[1], res.job_id]


def test_drop_lru_batch_never_evicts_interactive(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(2, "drop-lru")
    ids = fill(q, impl, 2)
    res = q.enqueue(impl.Task("m", 1, priority="batch"))
    assert res.reason is RejectionReason.QUEUE_FULL and res.retriable
    assert "batch task cannot evict" in res.message
    assert q.snapshot() == ids
    res = q.enqueue(impl.Task("m", 1))  # interactive may evict interactive
    assert res.evicted.job_id == ids[0]


def test_fail_fast_admits_only_when_next(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(5, "fail-fast")
    b = fill(q, impl, 1, "batch")[0]
    assert q.position(b) == 0
    i = q.enqueue(impl.Task("m", 1))  # nothing interactive ahead: it would be next
    assert i.accepted and i.position == 0
    res = q.enqueue(impl.Task("m", 1))
    assert res.reason is RejectionReason.QUEUE_FULL and res.policy is AdmissionPolicy.FAIL_FAST
    assert "1 job(s) queued ahead" in res.message
    res = q.enqueue(impl.Task("m", 1, priority="batch"))
    assert not res.accepted and "2 job(s) queued ahead" in res.message
    assert q.snapshot() == [i.job_id, b]


def test_fail_fast_respects_capacity(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(1, "fail-fast")
    fill(q, impl, 1, "batch")
    res = q.enqueue(impl.Task("m", 1))  # would be next but the queue is full
    assert res.reason is RejectionReason.QUEUE_FULL


def test_max_tokens_limit_is_a_policy_violation_never_truncation(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(5, max_tokens_limit=100)
    assert q.enqueue(impl.Task("m", 100)).accepted
    res = q.enqueue(impl.Task("m", 101))
    assert res.reason is RejectionReason.POLICY_VIOLATION and not res.retriable and res.retry_after_ms == 0
    assert "101" in res.message and "100" in res.message
    assert q.dequeue().task.max_tokens == 100


def test_generated_job_ids_are_unique_across_queues(impl: ModuleType) -> None:
    queues = [impl.Queue(1000) for _ in range(20)]
    ids = {q.enqueue(impl.Task("m", 1)).job_id for q in queues for _ in range(50)}
    assert len(ids) == 1000
    assert all(len(x) <= 16 for x in ids)
    assert len({q.id_prefix for q in queues}) == 20


def test_caller_job_id_duplicate_is_refused(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(5)
    assert q.enqueue(impl.Task("m", 1, job_id="req-1")).job_id == "req-1"
    before = state(q)
    res = q.enqueue(impl.Task("m", 1, job_id="req-1"))
    assert res.reason is RejectionReason.INVALID_REQUEST and not res.retriable
    assert "'req-1' is already queued" in res.message
    assert state(q)[:3] == before[:3]
    assert q.dequeue().job_id == "req-1"
    assert q.enqueue(impl.Task("m", 1, job_id="req-1")).accepted  # free again once it left


def test_reusing_a_generated_id_keeps_ids_unique(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10)
    first = q.enqueue(impl.Task("m", 1)).job_id
    assert first == "q-1"
    job = q.dequeue()
    assert q.enqueue(impl.Task("m", 1, job_id=job.job_id)).job_id == "q-1"  # re-enqueued after a failure
    assert q.enqueue(impl.Task("m", 1, job_id="q-1")).reason is RejectionReason.INVALID_REQUEST
    assert q.enqueue(impl.Task("m", 1, job_id="q-a")).accepted  # a caller's id in our format...
    assert q.enqueue(impl.Task("m", 1)).job_id == "q-b"  # ...is never generated again
    assert "q-1" in q and "q-a" in q and "q-b" in q


def test_str_subclass_job_id_is_stored_as_exact_str(make_queue: Any, impl: ModuleType) -> None:
    class Evil(str):
        def __hash__(self) -> int:
            raise AssertionError("the engine must not call a subclass's __hash__")

        def __eq__(self, other: object) -> bool:
            raise AssertionError("the engine must not call a subclass's __eq__")

    q = make_queue(5)
    task = impl.Task("m", 1, job_id=Evil("req-9"))
    assert type(task.job_id) is str
    res = q.enqueue(task)
    assert type(res.job_id) is str and res.job_id == "req-9"
    assert q.position(Evil("req-9")) == 0


def test_cancel_and_touch_are_idempotent(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(5)
    a, b = fill(q, impl, 2)
    assert q.cancel(a) is True and q.cancel(a) is False
    assert q.touch(a) is False and q.touch(b) is True and q.touch(b) is True
    assert q.cancel("never-seen") is False and q.touch("never-seen") is False
    assert q.dequeue().job_id == b
    assert q.cancel(b) is False and q.touch(b) is False  # dequeued jobs are gone
    m = q.metrics()
    assert (m.cancelled, m.dequeued) == (1, 1)


def test_contains(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(5)
    (a,) = fill(q, impl, 1)
    assert a in q and "x" not in q and 123 not in q and None not in q


def test_close_refuses_new_work_but_keeps_queued_jobs(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(5)
    ids = fill(q, impl, 2)
    q.close()
    q.close()  # idempotent
    assert q.closed
    res = q.enqueue(impl.Task("m", 1))
    assert res.reason is RejectionReason.QUEUE_CLOSED and not res.retriable and res.retry_after_ms == 0
    assert q.dequeue().job_id == ids[0]
    assert [j.job_id for j in q.drain()] == ids[1:]
    assert q.dequeue(timeout=None) is None  # closed and empty: returns at once


def test_close_wakes_every_blocked_consumer(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(5)
    results: list[Any] = []
    started = threading.Barrier(5)

    def consumer() -> None:
        started.wait()
        results.append(q.dequeue(timeout=None))

    threads = [threading.Thread(target=consumer) for _ in range(4)]
    for t in threads:
        t.start()
    started.wait()
    fill(q, impl, 1)
    while len(results) < 1:
        time.sleep(0.001)
    q.close()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads)
    assert sorted(r is None for r in results) == [False, True, True, True]


def test_blocking_dequeue_receives_a_job_from_another_thread(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(5)
    got: list[Any] = []
    t = threading.Thread(target=lambda: got.append(q.dequeue(timeout=30)))
    t.start()
    time.sleep(0.05)
    (a,) = fill(q, impl, 1)
    t.join(30)
    assert not t.is_alive() and got[0].job_id == a


def test_dequeue_timeout_returns_none(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(5)
    assert q.dequeue(timeout=0.01) is None
    assert q.dequeue_many(3, timeout=0.01) == []


def test_dequeue_many_takes_in_order_up_to_n(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10)
    b = fill(q, impl, 2, "batch")
    i = fill(q, impl, 2)
    assert [j.job_id for j in q.dequeue_many(3)] == i + b[:1]
    assert [j.job_id for j in q.dequeue_many(16)] == b[1:]
    assert q.dequeue_many(16) == []
    assert q.metrics().dequeued == 4


def test_drain_returns_everything_in_order_and_counts_it(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10)
    b = fill(q, impl, 2, "batch")
    i = fill(q, impl, 1)
    assert [j.job_id for j in q.drain()] == i + b
    assert q.depth() == 0 and q.snapshot() == [] and q.drain() == []
    m = q.metrics()
    assert m.drained == 3 and m.accepted == 3


def test_counters_balance(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(4, "drop-lru")
    ids = fill(q, impl, 4)
    fill(q, impl, 2, "interactive")  # two evictions
    q.cancel(ids[2])
    assert q.dequeue().job_id == ids[3]
    q.enqueue(impl.Task("m", 1, job_id=q.snapshot()[0]))  # still queued: INVALID_REQUEST
    m = q.metrics()
    assert (m.accepted, m.evicted, m.cancelled, m.dequeued, m.drained, m.depth) == (6, 2, 1, 1, 0, 2)
    assert m.accepted == m.dequeued + m.cancelled + m.evicted + m.drained + m.depth
    assert m.rejected[RejectionReason.INVALID_REQUEST] == 1 and m.rejected_total == 1


def test_injected_clock_gives_exact_times(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(5, clock=clock)
    fill(q, impl, 1)
    clock.advance(0.25)
    job = q.dequeue()
    assert job.enqueued_at == 1000.0
    assert job.wait_ms == pytest.approx(250.0)


def test_capacity_does_not_allocate_up_front(impl: ModuleType) -> None:
    q = impl.Queue(10**9)
    assert q.capacity() == 10**9 and q.depth() == 0
    fill(q, impl, 3)
    assert len(q) == 3


def test_results_are_immutable_and_readable(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(1)
    acc = q.enqueue(impl.Task("m", 1))
    rej = q.enqueue(impl.Task("m", 1))
    for obj, attr in ((acc, "job_id"), (acc, "position"), (rej, "reason"), (rej, "retry_after_ms")):
        with pytest.raises(AttributeError):
            setattr(obj, attr, None)
    assert repr(acc) == "Accepted(job_id='q-1', position=0, evicted=None)"
    assert repr(rej).startswith("Rejected(reason='QUEUE_FULL', retry_after_ms=1000, policy='reject-new'")
    assert acc == impl.Accepted("q-1", 0, None) and acc != impl.Accepted("q-2", 0, None)
    assert rej == impl.Rejected(rej.reason, rej.retry_after_ms, rej.policy, rej.message)
    assert acc.accepted is True and rej.accepted is False
    task = impl.Task("m", 1)
    with pytest.raises(AttributeError):
        task.model = "other"  # type: ignore[misc]
    match rej:
        case impl.Rejected(reason=RejectionReason.QUEUE_FULL, retry_after_ms=ms):
            assert ms == 1000
        case _:
            pytest.fail("match by keyword failed")


def test_rejected_to_http(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(1)
    fill(q, impl, 1)
    status, headers, body = q.enqueue(impl.Task("m", 1)).to_http()
    assert status == 429 and headers == {"Retry-After": "1", "X-Backoff-Ms": "1000"}
    assert body["code"] == "QUEUE_FULL" and body["retriable"] is True and body["policy_label"] == "reject-new"
    q.close()
    assert q.enqueue(impl.Task("m", 1)).to_http()[0] == 503


def test_task_fields_and_defaults(impl: ModuleType) -> None:
    payload = object()
    t = impl.Task("m", 5, "s", priority="batch", job_id="j", payload=payload)
    assert (t.model, t.max_tokens, t.session_id, t.priority, t.job_id) == ("m", 5, "s", Priority.BATCH, "j")
    assert t.payload is payload
    d = impl.Task("m", 5)
    assert (d.session_id, d.priority, d.job_id, d.payload) == (None, Priority.INTERACTIVE, None, None)
    assert "model='m'" in repr(d)
