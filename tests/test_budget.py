"""Token budgets (``max_queued_tokens``, ``Task.prompt_tokens``) and ``Accepted.evicted_all``,
on both engines (``impl``)."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from orchestrator_core import AdmissionPolicy, RejectionReason


def put(q: Any, impl: ModuleType, tokens: int, n: int = 1, **kw: Any) -> list[str]:
    out = []
    for _ in range(n):
        res = q.enqueue(impl.Task("m", tokens, **kw))
        assert res.accepted, res
        out.append(res.job_id)
    return out


def test_task_tokens_count_the_prompt(impl: ModuleType) -> None:
    t = impl.Task("m", 100, prompt_tokens=28)
    assert (t.max_tokens, t.prompt_tokens, t.tokens) == (100, 28, 128)
    d = impl.Task("m", 100)
    assert (d.prompt_tokens, d.tokens) == (None, 100)
    assert repr(t).endswith("prompt_tokens=28)")


def test_reject_new_refuses_when_the_tokens_would_not_fit(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10, "reject-new", max_queued_tokens=100)
    assert q.max_queued_tokens == 100
    put(q, impl, 40, 2)
    before = q.snapshot()
    res = q.enqueue(impl.Task("m", 10, prompt_tokens=11))  # 80 + 21 > 100, though 2 < 10 jobs
    assert res.reason is RejectionReason.QUEUE_FULL and res.retriable and res.retry_after_ms == 1000
    assert res.message == "queue 'default' is full (80 of 100 queued tokens)"
    assert q.snapshot() == before
    put(q, impl, 20)  # exactly fits
    assert q.metrics().queued_tokens == 100


def test_the_count_capacity_still_applies(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(2, max_queued_tokens=1000)
    put(q, impl, 1, 2)
    res = q.enqueue(impl.Task("m", 1))
    assert res.reason is RejectionReason.QUEUE_FULL and res.message == "queue 'default' is full (2)"


def test_a_task_larger_than_the_whole_budget_is_a_policy_violation(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10, "drop-lru", max_queued_tokens=100)
    put(q, impl, 10, 3)
    res = q.enqueue(impl.Task("m", 90, prompt_tokens=11))
    assert res.reason is RejectionReason.POLICY_VIOLATION and not res.retriable and res.retry_after_ms == 0
    assert res.message == "task of 101 tokens exceeds this queue's max_queued_tokens 100"
    assert q.depth() == 3 and q.metrics().evicted == 0  # nothing was evicted for it


def test_drop_lru_evicts_until_both_bounds_fit(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10, "drop-lru", max_queued_tokens=100)
    small = put(q, impl, 20, 5)  # 100 tokens
    q.touch(small[0])
    res = q.enqueue(impl.Task("m", 50))
    assert res.accepted
    assert [j.job_id for j in res.evicted_all] == small[1:4]  # 3 x 20 tokens leave for 50
    assert res.evicted is res.evicted_all[0]
    assert q.snapshot() == [small[0], small[4], res.job_id]
    m = q.metrics()
    assert (m.evicted, m.queued_tokens, m.depth) == (3, 90, 3)
    assert m.accepted == m.dequeued + m.cancelled + m.evicted + m.drained + m.expired + m.depth
    assert "evicted_all=" in repr(res)


def test_a_batch_task_never_evicts_interactive_work_for_tokens(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10, "drop-lru", max_queued_tokens=100)
    inter = put(q, impl, 30, 3)
    (batch,) = put(q, impl, 10, priority="batch")
    res = q.enqueue(impl.Task("m", 30, priority="batch"))  # evicting the batch job frees only 10
    assert res.reason is RejectionReason.QUEUE_FULL and res.retriable
    assert res.message == (
        "queue 'default' is full (100 of 100 queued tokens); evicting every batch job would not make room "
        "for this batch task"
    )
    assert q.snapshot() == [*inter, batch]  # all or nothing: nothing was evicted
    res = q.enqueue(impl.Task("m", 10, priority="batch"))
    assert [j.job_id for j in res.evicted_all] == [batch]
    res = q.enqueue(impl.Task("m", 40))  # an interactive task may evict interactive work
    assert len(res.evicted_all) == 2 and res.evicted_all[0].priority.value == "batch"


def test_fail_fast_with_a_budget(make_queue: Any, impl: ModuleType) -> None:
    q = make_queue(10, "fail-fast", max_queued_tokens=50)
    put(q, impl, 40, priority="batch")
    res = q.enqueue(impl.Task("m", 20))  # would be next, but 60 tokens > 50
    assert res.reason is RejectionReason.QUEUE_FULL and res.policy is AdmissionPolicy.FAIL_FAST
    assert "40 of 50 queued tokens" in res.message


def test_queued_tokens_follow_every_way_out(make_queue: Any, impl: ModuleType, clock: Any) -> None:
    q = make_queue(10, clock=clock, max_queued_tokens=1000)
    _, b, _, _ = put(q, impl, 100, 4)
    put(q, impl, 5, prompt_tokens=5, max_wait_ms=10)
    assert q.metrics().queued_tokens == 410
    q.dequeue()
    q.cancel(b)
    clock.advance(1.0)  # the 10-token job expires
    assert q.metrics().queued_tokens == 200
    q.drain()
    assert q.metrics().queued_tokens == 0
    assert make_queue(3).metrics().queued_tokens is None  # kept only with a budget


def test_accepted_without_evictions_is_backward_compatible(impl: ModuleType) -> None:
    job = impl.Job("x", impl.Task("m", 1), 0.0, 1.0)
    assert impl.Accepted("a", 0).evicted_all == ()
    one = impl.Accepted("a", 0, job)
    assert one.evicted_all == (one.evicted,) and one.evicted is job and one.eta_ms is None
    two = impl.Accepted("a", 0, evicted_all=(job, job), eta_ms=5.0)
    assert two.evicted is job and len(two.evicted_all) == 2 and two.eta_ms == 5.0
    assert two == impl.Accepted("a", 0, job, evicted_all=[job, job], eta_ms=5.0)
    assert two != impl.Accepted("a", 0, job, eta_ms=5.0)


@pytest.mark.parametrize(
    ("value", "exc", "text"),
    [
        (0, ValueError, "max_queued_tokens must be a positive int or None, got 0"),
        (-1, ValueError, "max_queued_tokens must be a positive int or None, got -1"),
        (1.5, TypeError, "max_queued_tokens must be a positive int or None, got 1.5"),
        (True, TypeError, "max_queued_tokens must be a positive int or None, got True"),
    ],
)
def test_bad_max_queued_tokens(impl: ModuleType, value: object, exc: type, text: str) -> None:
    with pytest.raises(exc) as info:
        impl.Queue(5, max_queued_tokens=value)
    assert str(info.value) == text


@pytest.mark.parametrize(
    ("value", "exc", "text"),
    [
        (-1, ValueError, "prompt_tokens must be a non-negative int or None, got -1"),
        (1.0, TypeError, "prompt_tokens must be a non-negative int or None, got 1.0"),
        (False, TypeError, "prompt_tokens must be a non-negative int or None, got False"),
    ],
)
def test_bad_prompt_tokens(impl: ModuleType, value: object, exc: type, text: str) -> None:
    with pytest.raises(exc) as info:
        impl.Task("m", 1, prompt_tokens=value)
    assert str(info.value) == text


def test_builder_sets_the_budget(impl: ModuleType) -> None:
    q = impl.Queue.builder().capacity(3).max_queued_tokens(64).build()
    assert q.max_queued_tokens == 64 and impl.Queue(3).max_queued_tokens is None
