"""``Queue._try_admit``: the admission attempt a waiting ``enqueue(task, wait=...)`` makes before
its last, used by ``AsyncQueue.put`` (which waits on the event loop, not in the engine). On both
engines (``impl``): it admits when there is room, refuses at once for a non-retriable reason
(counted), and otherwise returns None having counted, evicted and registered nothing."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from orchestrator_core import RejectionReason


def refusals(q: Any) -> int:
    return sum(q.metrics().rejected.values())


@pytest.mark.parametrize("policy", ["reject-new", "drop-lru", "fail-fast"])
def test_room_admits_like_enqueue(make_queue: Any, impl: ModuleType, policy: str) -> None:
    q = make_queue(2, policy)
    res = q._try_admit(impl.Task("m", 1, job_id="a"))
    assert res.accepted and res.job_id == "a" and res.position == 0 and res.evicted is None
    assert q.snapshot() == ["a"] and q.metrics().accepted == 1


@pytest.mark.parametrize("policy", ["reject-new", "drop-lru", "fail-fast"])
def test_full_returns_none_and_changes_nothing(make_queue: Any, impl: ModuleType, policy: str) -> None:
    q = make_queue(2, policy)
    q.enqueue(impl.Task("m", 1, job_id="a"))
    if policy != "fail-fast":
        q.enqueue(impl.Task("m", 1, job_id="b"))
    before = (q.snapshot(), q.metrics().accepted, refusals(q))
    # Full (REJECT_NEW, DROP_LRU: no eviction), or jobs ahead (FAIL_FAST): retriable.
    assert q._try_admit(impl.Task("m", 1, job_id="c")) is None
    assert (q.snapshot(), q.metrics().accepted, refusals(q)) == before
    assert q.metrics().evicted == 0 and "c" not in q


def test_full_by_tokens_returns_none(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10, max_queued_tokens=10)
    q.enqueue(impl.Task("m", 8))
    assert q._try_admit(impl.Task("m", 5)) is None
    assert refusals(q) == 0 and q.depth() == 1


def test_unmeetable_deadline_returns_none(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(10, admit_only_feasible=True, clock=clock)
    for _ in range(3):  # a measured drain rate: one job per second
        q.enqueue(impl.Task("m", 1))
    for _ in range(3):
        clock.advance(1.0)
        q.dequeue()
    clock.advance(1.0)
    for _ in range(5):
        q.enqueue(impl.Task("m", 1))
    assert q.enqueue(impl.Task("m", 1, max_wait_ms=10)).reason is RejectionReason.DEADLINE_UNMEETABLE
    counted = refusals(q)
    assert q._try_admit(impl.Task("m", 1, max_wait_ms=10)) is None
    assert refusals(q) == counted and q.depth() == 5


@pytest.mark.parametrize(
    ("setup", "task_kw", "reason"),
    [
        ({"max_tokens_limit": 10}, {"max_tokens": 11}, RejectionReason.POLICY_VIOLATION),
        ({}, {"job_id": "a"}, RejectionReason.INVALID_REQUEST),
        ({"max_queued_per_tenant": 1}, {"tenant": "t"}, RejectionReason.POLICY_VIOLATION),
    ],
)
def test_non_retriable_refusal_comes_at_once_and_is_counted(
    make_queue: Any, impl: ModuleType, setup: dict[str, Any], task_kw: dict[str, Any], reason: RejectionReason
) -> None:
    q = make_queue(1, **setup)
    q.enqueue(impl.Task("m", 1, job_id="a", tenant="t"))  # the queue is full, too
    kw: dict[str, Any] = {"max_tokens": 1, **task_kw}
    res = q._try_admit(impl.Task("m", kw.pop("max_tokens"), **kw))
    assert res is not None and not res.accepted and res.reason is reason
    assert refusals(q) == 1


def test_closed_is_refused_at_once(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(1)
    q.close()
    res = q._try_admit(impl.Task("m", 1))
    assert res is not None and res.reason is RejectionReason.QUEUE_CLOSED


def test_a_none_leaves_no_room_waiter(make_queue: Any, impl: ModuleType) -> None:
    """Nothing registered: the dequeues that make room wake no one (a registered probe would be
    released as a waiter: an error or a crash), and the room goes to the next enqueue."""
    q = make_queue(1)
    q.enqueue(impl.Task("m", 1, job_id="a"))
    for _ in range(50):
        assert q._try_admit(impl.Task("m", 1)) is None
    assert q.dequeue().job_id == "a"
    assert q.enqueue(impl.Task("m", 1, job_id="b")).accepted
    assert q.dequeue().job_id == "b" and q.depth() == 0


def test_rejects_a_non_task(make_queue: Any) -> None:
    q = make_queue(1)
    with pytest.raises(TypeError, match="task must be a Task"):
        q._try_admit("not a task")
    assert q.metrics().accepted == 0
