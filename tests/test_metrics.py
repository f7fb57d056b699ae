"""``Queue.metrics()`` on both engines: exact rates, percentiles, Retry-After hints and counters.

Every workload is scripted on a ``FakeClock`` whose readings are binary fractions
(``k / 128`` of a second, powers of two), so waits and window boundaries are exact in
floating point and every expected value below is exact, not approximate.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
from types import ModuleType
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator_core import AdmissionPolicy, Priority, QueueMetrics, RejectionReason
from orchestrator_core._stats import WAIT_BUCKET_BOUNDS_MS, WAIT_BUCKETS

START = 1000.0  # the FakeClock's first reading: created_sec == 1000


class Clock:
    """A manual clock (the conftest ``clock`` fixture, usable inside hypothesis examples)."""

    def __init__(self, start: float = START) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def steady_drain(q: Any, task: Any, clock: Any, per_second: int, seconds: int, start: float = START) -> None:
    """``per_second`` enqueue+dequeue pairs in each of ``seconds`` whole seconds from ``start``.

    Event ``k`` of second ``s`` happens at ``start + s + k * fraction`` with a binary-exact
    fraction, so every event falls inside its second.
    """
    step = 1.0 / 2 ** math.ceil(math.log2(per_second + 1))
    for s in range(seconds):
        for k in range(per_second):
            clock.now = start + s + k * step
            assert q.enqueue(task).accepted
            assert q.dequeue() is not None


def steady_swap(q: Any, task: Any, clock: Any, per_second: int, seconds: int, start: float) -> None:
    """Like ``steady_drain`` on a full queue: each event dequeues one job and admits one."""
    step = 1.0 / 2 ** math.ceil(math.log2(per_second + 1))
    for s in range(seconds):
        for k in range(per_second):
            clock.now = start + s + k * step
            assert q.dequeue() is not None
            assert q.enqueue(task).accepted


def fill(q: Any, task: Any) -> None:
    while q.depth() < q.capacity():
        assert q.enqueue(task).accepted


def balanced(m: QueueMetrics) -> bool:
    return m.accepted == m.dequeued + m.cancelled + m.evicted + m.drained + m.depth


# ---------------------------------------------------------------------------------------
# Rates and the adaptive Retry-After hint


def test_no_dequeues_gives_the_default_hint(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(2, "reject-new", clock=clock, id_prefix="q")
    t = impl.Task("m", 1)
    fill(q, t)
    clock.advance(30.0)
    res = q.enqueue(t)
    assert res.reason is RejectionReason.QUEUE_FULL
    assert res.retry_after_ms == 1000
    m = q.metrics()
    assert m.dequeue_rate_per_s == 0.0
    assert m.enqueue_rate_per_s == 0.0
    assert m.retry_after_ms == 1000
    assert m.window_s == 10.0


@pytest.mark.parametrize(
    ("per_second", "hint_ms"),
    [
        (100, 10),  # 1000 ms * 10 s / 1000 dequeues
        (200, 5),  # twice the drain rate halves the hint
        (400, 3),  # ceil(2.5)
        (3, 334),  # ceil(333.33)
        (2000, 1),  # ceil(0.5): never below 1 ms
    ],
)
def test_steady_drain_rate_and_hint(impl: ModuleType, clock: Any, per_second: int, hint_ms: int) -> None:
    q = impl.Queue(4, "reject-new", clock=clock, id_prefix="q")
    t = impl.Task("m", 1)
    fill(q, t)  # in second 1000, which the window below leaves out
    steady_swap(q, t, clock, per_second, 10, start=START + 1)
    clock.now = START + 11  # seconds 1001..1010 are complete; 1011 has just started
    m = q.metrics()
    assert m.window_s == 10.0
    assert m.dequeue_rate_per_s == per_second
    assert m.enqueue_rate_per_s == per_second
    assert m.retry_after_ms == hint_ms
    res = q.enqueue(t)  # the queue stayed full
    assert res.reason is RejectionReason.QUEUE_FULL
    assert res.retriable is True
    assert res.retry_after_ms == hint_ms


def test_one_dequeue_in_the_window_gives_the_longest_single_slot_hint(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(1, "reject-new", clock=clock, id_prefix="q")
    t = impl.Task("m", 1)
    clock.now = START + 3.5
    q.enqueue(t)
    q.dequeue()
    clock.now = START + 12.0  # window [1002, 1012) holds the one dequeue
    q.enqueue(t)
    assert q.enqueue(t).retry_after_ms == 10_000
    assert q.metrics().dequeue_rate_per_s == 0.1


def test_fail_fast_hint_scales_with_the_jobs_ahead(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(10, "fail-fast", clock=clock, id_prefix="q")
    t = impl.Task("m", 1)
    b = impl.Task("m", 1, priority="batch")
    assert q.enqueue(b).accepted  # nothing ahead
    assert q.enqueue(t).accepted  # no interactive job ahead
    steady_swap(q, t, clock, 100, 10, start=START + 1)  # the interactive job leaves and is replaced
    clock.now = START + 11
    res = q.enqueue(t)  # 1 interactive job ahead
    assert (res.reason, res.retry_after_ms) == (RejectionReason.QUEUE_FULL, 10)
    res = q.enqueue(b)  # both jobs ahead: twice the hint
    assert (res.reason, res.retry_after_ms) == (RejectionReason.QUEUE_FULL, 20)
    assert "2 job(s) queued ahead" in res.message
    assert q.metrics().retry_after_ms == 10  # the metrics hint is for one slot


def test_longest_reachable_hint(impl: ModuleType, clock: Any) -> None:
    # One dequeue in a full 10 s window and two jobs ahead (FAIL_FAST's most) give the
    # longest hint a queue can produce: 2 * 1000 ms * 10 s / 1 = 20_000 ms, under the clamp.
    q = impl.Queue(10, "fail-fast", clock=clock, id_prefix="q")
    clock.now = START + 1.5
    q.enqueue(impl.Task("m", 1))
    q.dequeue()
    assert q.enqueue(impl.Task("m", 1, priority="batch")).accepted
    assert q.enqueue(impl.Task("m", 1)).accepted
    clock.now = START + 11.0
    assert q.enqueue(impl.Task("m", 1)).retry_after_ms == 10_000
    assert q.enqueue(impl.Task("m", 1, priority="batch")).retry_after_ms == 20_000


def test_hint_formula_clamps() -> None:
    # The 60 s ceiling cannot be reached through a queue (see test_longest_reachable_hint),
    # so the specification's formula is checked directly; the compiled twin's is a cdef
    # function with the same body, and the differential test below compares every hint.
    from orchestrator_core._core_py import _retry_after

    assert _retry_after(1, 0, 10.0) == 1000
    assert _retry_after(1, 5, 0.0) == 1000
    assert _retry_after(1, 1000, 10.0) == 10
    assert _retry_after(1, 30_000, 10.0) == 1
    assert _retry_after(7, 1, 10.0) == 60_000
    assert _retry_after(6, 1, 10.0) == 60_000
    assert _retry_after(5, 1, 10.0) == 50_000


def test_young_queue_window_is_its_age_in_whole_seconds(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(10, "reject-new", clock=clock, id_prefix="q")
    t = impl.Task("m", 1)
    steady_drain(q, t, clock, 100, 1)  # second 1000 only
    clock.now = START + 1.0
    m = q.metrics()
    assert (m.window_s, m.dequeue_rate_per_s, m.retry_after_ms) == (1.0, 100.0, 10)
    clock.now = START + 3.0
    m = q.metrics()
    assert (m.window_s, m.dequeue_rate_per_s, m.retry_after_ms) == (3.0, 100 / 3, 30)
    clock.now = START + 10.75
    m = q.metrics()
    assert (m.window_s, m.dequeue_rate_per_s) == (10.0, 10.0)
    clock.now = START + 11.0  # second 1000 left the window
    m = q.metrics()
    assert (m.dequeue_rate_per_s, m.enqueue_rate_per_s, m.retry_after_ms) == (
        0.0,
        0.0,
        1000,
    )
    assert m.wait_p50_ms is None and m.wait_max_ms is None
    assert m.dequeued == 100  # lifetime counters keep everything
    assert m.wait_count == 100


def test_second_in_progress_is_not_counted(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(10, "reject-new", clock=clock, id_prefix="q")
    t = impl.Task("m", 1)
    clock.now = START + 5.25
    for _ in range(7):
        q.enqueue(t)
        q.dequeue()
    clock.now = START + 5.96875
    assert q.metrics().dequeue_rate_per_s == 0.0
    clock.now = START + 6.0
    m = q.metrics()
    assert m.dequeue_rate_per_s == 7 / 6
    assert m.enqueue_rate_per_s == 7 / 6


def test_rejected_enqueues_are_not_in_the_enqueue_rate(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(2, "reject-new", clock=clock, id_prefix="q")
    t = impl.Task("m", 1)
    clock.now = START + 0.5
    for _ in range(5):
        q.enqueue(t)
    clock.now = START + 2.0
    m = q.metrics()
    assert m.enqueue_rate_per_s == 1.0  # 2 accepted over 2 s; the 3 refusals are counters only
    assert m.rejected[RejectionReason.QUEUE_FULL] == 3


# ---------------------------------------------------------------------------------------
# Wait percentiles, histogram and oldest age


def test_wait_percentiles_and_histogram_are_exact(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(1000, "reject-new", clock=clock, id_prefix="q")
    t = impl.Task("m", 1)
    # Waits (ms), all exact binary: 1 x 1000, 9 x 62.5, 40 x 7.8125, 50 x 0.9765625.
    script = [
        (START, 1),
        (START + 1 - 2**-4, 9),
        (START + 1 - 2**-7, 40),
        (START + 1 - 2**-10, 50),
    ]
    for at, n in script:
        clock.now = at
        for _ in range(n):
            q.enqueue(t)
    clock.now = START + 1.0
    assert len(q.dequeue_many(100)) == 100
    clock.now = START + 2.0
    m = q.metrics()
    # Buckets: ceil(4 * log2(w / 0.1)): 0.9765625 -> 14, 7.8125 -> 26, 62.5 -> 38, 1000 -> 54.
    assert m.wait_p50_ms == WAIT_BUCKET_BOUNDS_MS[14] == 0.1 * 2**3.5
    assert m.wait_p90_ms == WAIT_BUCKET_BOUNDS_MS[26] == 0.1 * 2**6.5
    assert m.wait_p99_ms == WAIT_BUCKET_BOUNDS_MS[38] == 0.1 * 2**9.5
    assert m.wait_max_ms == 1000.0
    expected = [0] * WAIT_BUCKETS
    expected[14], expected[26], expected[38], expected[54] = 50, 40, 9, 1
    assert m.wait_histogram == tuple(expected)
    assert m.wait_sum_ms == 50 * 0.9765625 + 40 * 7.8125 + 9 * 62.5 + 1000.0 == 1923.828125
    assert m.wait_count == m.dequeued == 100
    # Each percentile is >= the true value and < 2**0.25 times it.
    for p, true in (
        (m.wait_p50_ms, 0.9765625),
        (m.wait_p90_ms, 7.8125),
        (m.wait_p99_ms, 62.5),
    ):
        assert true <= p < true * 2**0.25


def test_percentile_is_capped_at_the_window_max(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(10, "reject-new", clock=clock, id_prefix="q")
    t = impl.Task("m", 1)
    for _ in range(3):
        q.enqueue(t)
    clock.advance(2**-10)
    q.dequeue_many(3)
    clock.now = START + 1.0
    m = q.metrics()
    assert m.wait_p50_ms == m.wait_p99_ms == m.wait_max_ms == 0.9765625


def test_zero_waits_land_in_the_first_bucket(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(10, "reject-new", clock=clock, id_prefix="q")
    t = impl.Task("m", 1)
    q.enqueue(t)
    q.dequeue()
    clock.now = START + 1.0
    m = q.metrics()
    assert m.wait_histogram[0] == 1 and m.wait_sum_ms == 0.0
    assert m.wait_p50_ms == m.wait_max_ms == 0.0


def test_waits_past_the_last_bound_land_in_inf(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(10, "reject-new", clock=clock, id_prefix="q")
    q.enqueue(impl.Task("m", 1))
    clock.advance(1024.0)  # 1_024_000 ms > 838_860.8 ms, the last finite bound
    q.dequeue()
    clock.now = math.floor(clock.now) + 1.0
    m = q.metrics()
    assert m.wait_histogram[-1] == 1
    assert m.wait_p99_ms == m.wait_max_ms == 1_024_000.0


def test_oldest_age_spans_both_priorities(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(10, "reject-new", clock=clock, id_prefix="q")
    assert q.metrics().oldest_age_ms is None
    q.enqueue(impl.Task("m", 1, priority=Priority.BATCH))
    clock.advance(0.25)
    q.enqueue(impl.Task("m", 1))
    clock.advance(0.75)
    assert q.metrics().oldest_age_ms == 1000.0
    assert q.dequeue().priority is Priority.INTERACTIVE
    assert q.metrics().oldest_age_ms == 1000.0
    clock.advance(0.5)
    assert q.metrics().oldest_age_ms == 1500.0
    q.dequeue()
    assert q.metrics().oldest_age_ms is None


# ---------------------------------------------------------------------------------------
# Counters


def test_counters_balance_through_every_way_out(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(4, "drop-lru", clock=clock, id_prefix="q", max_tokens_limit=100)
    t = impl.Task("m", 1)
    b = impl.Task("m", 1, priority="batch")
    ids = [q.enqueue(b).job_id for _ in range(4)]
    assert q.enqueue(t).evicted is not None  # 1 evicted
    assert q.enqueue(impl.Task("m", 101)).reason is RejectionReason.POLICY_VIOLATION
    assert q.enqueue(impl.Task("m", 1, job_id=ids[3])).reason is RejectionReason.INVALID_REQUEST
    assert q.cancel(ids[2])
    assert q.dequeue() is not None
    m = q.metrics()
    assert (m.accepted, m.evicted, m.cancelled, m.dequeued, m.drained, m.depth) == (
        5,
        1,
        1,
        1,
        0,
        2,
    )
    assert balanced(m)
    assert len(q.drain()) == 2
    q.close()
    assert q.enqueue(t).reason is RejectionReason.QUEUE_CLOSED
    m = q.metrics()
    assert (m.accepted, m.drained, m.depth, m.closed) == (5, 2, 0, True)
    assert dict(m.rejected) == {
        RejectionReason.QUEUE_FULL: 0,
        RejectionReason.INVALID_REQUEST: 1,
        RejectionReason.POLICY_VIOLATION: 1,
        RejectionReason.QUEUE_CLOSED: 1,
        RejectionReason.DEADLINE_UNMEETABLE: 0,
    }
    assert m.rejected_total == 3
    assert dict(m.depth_by_priority) == {"interactive": 0, "batch": 0}
    assert balanced(m)
    assert m.wait_count == m.dequeued == 1  # only dequeues are timed


def test_depth_by_priority(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(10, "reject-new", clock=clock, id_prefix="q", pool_id="pool-7")
    for prio in ("batch", "interactive", "batch"):
        q.enqueue(impl.Task("m", 1, priority=prio))
    m = q.metrics()
    assert (m.depth, m.depth_interactive, m.depth_batch) == (3, 1, 2)
    assert dict(m.depth_by_priority) == {"interactive": 1, "batch": 2}
    assert (m.pool_id, m.policy, m.capacity) == ("pool-7", "reject-new", 10)


# ---------------------------------------------------------------------------------------
# Rejected.to_http


def _rejections(impl: ModuleType, clock: Any) -> dict[RejectionReason, Any]:
    q = impl.Queue(1, "reject-new", clock=clock, id_prefix="q", max_tokens_limit=10)
    steady_drain(q, impl.Task("m", 1), clock, 100, 10, start=START + 1)
    clock.now = START + 10.875  # still second 1010
    assert q.enqueue(impl.Task("m", 1, job_id="dup")).accepted
    clock.now = START + 11
    out = {
        RejectionReason.QUEUE_FULL: q.enqueue(impl.Task("m", 1)),
        RejectionReason.INVALID_REQUEST: q.enqueue(impl.Task("m", 1, job_id="dup")),
        RejectionReason.POLICY_VIOLATION: q.enqueue(impl.Task("m", 11)),
    }
    q.close()
    out[RejectionReason.QUEUE_CLOSED] = q.enqueue(impl.Task("m", 1))
    for reason, res in out.items():
        assert res.reason is reason
    return out


def test_to_http_queue_full_is_429_with_backoff_headers(impl: ModuleType, clock: Any) -> None:
    res = _rejections(impl, clock)[RejectionReason.QUEUE_FULL]
    status, headers, body = res.to_http()
    assert status == 429
    assert headers == {"Retry-After": "1", "X-Backoff-Ms": "10"}
    assert body == {
        "code": "QUEUE_FULL",
        "message": res.message,
        "policy_label": "reject-new",
        "retriable": True,
        "retry_after_ms": 10,
    }
    assert json.loads(json.dumps(body)) == body


@pytest.mark.parametrize(
    ("reason", "status"),
    [
        (RejectionReason.INVALID_REQUEST, 400),
        (RejectionReason.POLICY_VIOLATION, 400),
        (RejectionReason.QUEUE_CLOSED, 503),
    ],
)
def test_to_http_non_retriable(impl: ModuleType, clock: Any, reason: RejectionReason, status: int) -> None:
    res = _rejections(impl, clock)[reason]
    assert res.retriable is False
    assert res.retry_after_ms == 0
    assert res.message
    assert res.to_http() == (
        status,
        {},
        {
            "code": reason.value,
            "message": res.message,
            "policy_label": "reject-new",
            "retriable": False,
            "retry_after_ms": 0,
        },
    )


@pytest.mark.parametrize(
    ("retry_after_ms", "retry_after_s"),
    [
        (1, "1"),
        (999, "1"),
        (1000, "1"),
        (1001, "2"),
        (1999, "2"),
        (2000, "2"),
        (59_001, "60"),
        (60_000, "60"),
    ],
)
def test_to_http_retry_after_rounds_up_to_whole_seconds(
    impl: ModuleType, retry_after_ms: int, retry_after_s: str
) -> None:
    res = impl.Rejected(RejectionReason.QUEUE_FULL, retry_after_ms, AdmissionPolicy.DROP_LRU, "full")
    status, headers, body = res.to_http()
    assert status == 429
    assert headers == {
        "Retry-After": retry_after_s,
        "X-Backoff-Ms": str(retry_after_ms),
    }
    assert body["policy_label"] == "drop-lru"
    assert body["retry_after_ms"] == retry_after_ms


# ---------------------------------------------------------------------------------------
# Both engines agree


def _compare(a: QueueMetrics, b: QueueMetrics) -> None:
    for f in dataclasses.fields(QueueMetrics):
        if f.name == "pool_id":
            continue
        va, vb = getattr(a, f.name), getattr(b, f.name)
        if f.name == "rejected":
            va, vb = dict(va), dict(vb)
        assert va == vb, f"{f.name}: c={va!r} py={vb!r}"


def _engines() -> tuple[ModuleType, ModuleType]:
    return importlib.import_module("orchestrator_core._core_c"), importlib.import_module("orchestrator_core._core_py")


OPS = st.lists(
    st.one_of(
        st.tuples(
            st.just("enqueue"),
            st.sampled_from(["interactive", "batch"]),
            st.integers(1, 12),
        ),
        st.tuples(st.just("dequeue"), st.integers(1, 3)),
        st.tuples(st.just("cancel"), st.integers(0, 40)),
        st.tuples(st.just("touch"), st.integers(0, 40)),
        st.tuples(
            st.just("advance"),
            st.sampled_from([0.0, 2**-10, 2**-7, 0.25, 0.5, 1.0, 3.0, 12.0]),
        ),
        st.just(("drain",)),
        st.just(("close",)),
        st.just(("metrics",)),
    ),
    max_size=80,
)


@pytest.mark.c_extension
@settings(max_examples=300, deadline=None)
@given(
    ops=OPS,
    policy=st.sampled_from(["reject-new", "drop-lru", "fail-fast"]),
    capacity=st.integers(1, 6),
    start=st.sampled_from([START, START + 0.5, START + 2**-7]),
)
def test_engines_give_identical_metrics(ops: list[tuple[Any, ...]], policy: str, capacity: int, start: float) -> None:
    engines = _engines()
    clocks = [Clock(start), Clock(start)]
    queues = [
        e.Queue(capacity, policy, clock=c, id_prefix="q", max_tokens_limit=10)
        for e, c in zip(engines, clocks, strict=True)
    ]
    for op in ops:
        results = []
        for e, q, c in zip(engines, queues, clocks, strict=True):
            kind = op[0]
            if kind == "enqueue":
                r = q.enqueue(e.Task("m", op[2], priority=op[1]))
                results.append((r.accepted, getattr(r, "retry_after_ms", None)))
            elif kind == "dequeue":
                results.append([j.wait_ms for j in q.dequeue_many(op[1])])
            elif kind in ("cancel", "touch"):
                results.append(getattr(q, kind)(f"q-{op[1]:x}"))
            elif kind == "advance":
                c.now += op[1]
            elif kind == "drain":
                results.append(len(q.drain()))
            elif kind == "close":
                q.close()
            m = q.metrics()
            assert balanced(m)
            assert m.wait_count == m.dequeued
        if results:
            assert results[0] == results[1]
        _compare(queues[0].metrics(), queues[1].metrics())


@pytest.mark.c_extension
def test_engines_agree_on_a_scripted_day() -> None:
    engines = _engines()
    out = []
    for e in engines:
        clock = Clock()
        q = e.Queue(50, "drop-lru", clock=clock, pool_id=f"pool-{e.__name__}", id_prefix="z")
        t = e.Task("m", 1)
        b = e.Task("m", 1, priority="batch")
        for s in range(15):
            for k in range(60):
                clock.now = START + s + k / 64
                q.enqueue(b if k % 3 else t)
                if k % 2:
                    q.dequeue()
                if k % 17 == 0:
                    q.cancel(f"z-{s * 60 + k:x}")
        clock.now = START + 15.5
        out.append(q.metrics())
    _compare(*out)
    assert out[0].evicted > 0 and out[0].cancelled > 0 and out[0].dequeued > 0
    assert all(balanced(m) for m in out)


# ---------------------------------------------------------------------------------------
# Window and bucket edges (regression tests for three inexactnesses found and fixed).


def test_rates_hold_after_activity_in_the_current_second(impl: ModuleType, clock: Any) -> None:
    q = impl.Queue(10, "reject-new", clock=clock, id_prefix="q")
    t = impl.Task("m", 1)
    steady_drain(q, t, clock, 100, 20)
    clock.now = START + 20.0
    assert q.metrics().dequeue_rate_per_s == 100.0  # holds before anything happens in second 1020
    q.enqueue(t)
    q.dequeue()
    m = q.metrics()
    # Seconds 1010..1019 hold 1000 dequeues (the slot of 1010 must survive second 1020).
    assert (m.window_s, m.dequeue_rate_per_s, m.retry_after_ms) == (10.0, 100.0, 10)


def test_rate_of_a_queue_created_mid_second(impl: ModuleType) -> None:
    clock = Clock(START + 0.5)
    q = impl.Queue(10, "reject-new", clock=clock, id_prefix="q")
    t = impl.Task("m", 1)
    for k in range(192):  # 128 per second from 1000.5 to 1002.0
        clock.now = START + 0.5 + k * 2**-7
        q.enqueue(t)
        q.dequeue()
    clock.now = START + 2.0
    m = q.metrics()
    # 192 events over the 1.5 s the queue has lived (not 2 whole seconds).
    assert (m.window_s, m.dequeue_rate_per_s) == (1.5, 128.0)


@pytest.mark.parametrize(
    ("now", "bucket"),
    [
        (
            0.00014142135623730954,
            2,
        ),  # wait 0.14142135623730953 ms == bound[2]
        (
            0.0016000000000000003,
            17,
        ),  # wait 1.6000000000000003 ms > bound[16] == 1.6
    ],
)
def test_waits_at_a_bound_land_in_the_documented_bucket(impl: ModuleType, now: float, bucket: int) -> None:
    clock = Clock(0.0)
    q = impl.Queue(1, "reject-new", clock=clock, id_prefix="q")
    q.enqueue(impl.Task("m", 1))
    clock.now = now
    wait_ms = q.dequeue().wait_ms
    assert WAIT_BUCKET_BOUNDS_MS[bucket - 1] < wait_ms <= WAIT_BUCKET_BOUNDS_MS[bucket]
    assert q.metrics().wait_histogram[bucket] == 1
