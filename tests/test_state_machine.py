"""Differential testing: the compiled engine, the pure twin and a reference model, side by side.

Every step applies one operation to all three and compares return values, exception
types and messages, dequeue order, LRU order, positions and counters. The long run is
behind the ``slow`` marker (``--run-slow``); ``tests/test_fuzz.py`` reuses the machine.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orchestrator_core import _core_py

from .conftest import FakeClock, core_c
from .model import Model, ModelJob

PRIOS = ("interactive", "batch")
POLICIES = ("reject-new", "drop-lru", "fail-fast")


def _engines() -> list[Any]:
    return [m for m in (core_c, _core_py) if m is not None]


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - the type and message are what is compared
        return ("raise", (type(exc), str(exc)))


def _job_view(job: Any) -> tuple[Any, ...] | None:
    if job is None:
        return None
    return (job.job_id, job.priority.value, job.task.max_tokens, job.enqueued_at, job.wait_ms)


def _result_view(res: Any) -> tuple[Any, ...]:
    if res.accepted:
        return ("accepted", res.job_id, res.position, _job_view(res.evicted))
    return ("rejected", res.reason.value, res.retry_after_ms, res.retriable, res.policy.value, res.message)


def _metrics_view(m: Any) -> tuple[Any, ...]:
    return (
        m.depth,
        m.depth_interactive,
        m.depth_batch,
        m.accepted,
        tuple(m.rejected.values()),
        m.evicted,
        m.cancelled,
        m.dequeued,
        m.drained,
        m.window_s,
        m.enqueue_rate_per_s,
        m.dequeue_rate_per_s,
        m.wait_p50_ms,
        m.wait_p90_ms,
        m.wait_p99_ms,
        m.wait_max_ms,
        m.oldest_age_ms,
        m.retry_after_ms,
        m.wait_histogram,
        m.wait_sum_ms,
        m.closed,
    )


class QueueMachine(RuleBasedStateMachine):
    """Drives every available engine and the model with the same operations."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(100.0)
        self.queues: list[Any] = []
        self.model: Model | None = None
        self.known_ids: list[str] = ["q-1", "nope", "q-0", "q-ff"]

    @initialize(
        capacity=st.integers(1, 6),
        policy=st.sampled_from(POLICIES),
        limit=st.sampled_from([None, None, 50]),
    )
    def setup(self, capacity: int, policy: str, limit: int | None) -> None:
        self.queues = [
            m.Queue(capacity, policy, id_prefix="q", clock=self.clock, max_tokens_limit=limit, pool_id="p")
            for m in _engines()
        ]
        self.model = Model(capacity, policy, max_tokens_limit=limit or 0, created_at=self.clock.now)

    # -- helpers ----------------------------------------------------------------------
    def _all(self, op: Any) -> Any:
        """Apply op(queue) to every engine; they must agree; return the common outcome."""
        outcomes = [_outcome(lambda q=q: op(q)) for q in self.queues]
        first = outcomes[0]
        for other in outcomes[1:]:
            assert other == first, f"engines disagree: {outcomes}"
        return first

    def _check_job(self, got: tuple[Any, ...] | None, want: ModelJob | None) -> None:
        if want is None:
            assert got is None
            return
        assert got is not None
        job_id, prio, max_tokens, enqueued_at, wait_ms = got
        assert (job_id, prio, max_tokens, enqueued_at) == (
            want.job_id,
            PRIOS[want.prio],
            want.max_tokens,
            want.enqueued_at,
        )
        assert wait_ms == pytest.approx((self.clock.now - want.enqueued_at) * 1000.0)

    def _pick_id(self, data: st.DataObject) -> str:
        """Mostly an id queued right now (so cancel/touch/position hit), else any id seen."""
        assert self.model is not None
        queued = [j.job_id for j in self.model.order()]
        if queued and data.draw(st.integers(0, 3)) > 0:
            return data.draw(st.sampled_from(queued))
        return data.draw(st.sampled_from(self.known_ids))

    # -- rules ------------------------------------------------------------------------
    @rule(prios=st.lists(st.integers(0, 1), min_size=2, max_size=5))
    def enqueue_several(self, prios: list[int]) -> None:
        for prio in prios:
            self.enqueue(prio=prio, max_tokens=10, pick_id=None, data=None)  # type: ignore[arg-type]

    @rule(
        prio=st.integers(0, 1),
        max_tokens=st.sampled_from([1, 10, 100]),
        pick_id=st.sampled_from([None, None, None, "known", "fresh"]),
        data=st.data(),
    )
    def enqueue(self, prio: int, max_tokens: int, pick_id: str | None, data: st.DataObject) -> None:
        assert self.model is not None
        job_id = None
        if pick_id == "known":
            job_id = data.draw(st.sampled_from(self.known_ids))
        elif pick_id == "fresh":
            job_id = data.draw(st.sampled_from(["caller-a", "caller-b", "q-7", "q-1a", "q-07"]))
        mods = _engines()
        outcomes = []
        for m, q in zip(mods, self.queues, strict=True):
            task = m.Task("m", max_tokens, priority=PRIOS[prio], job_id=job_id)
            outcomes.append(_outcome(lambda q=q, task=task: _result_view(q.enqueue(task))))
        assert all(o == outcomes[0] for o in outcomes), outcomes
        kind, view = outcomes[0]
        assert kind == "ok"
        want = self.model.enqueue(prio, max_tokens, job_id, self.clock.now)
        if want[0] == "accepted":
            _, want_id, want_pos, victim = want
            assert view[0] == "accepted", (view, want)
            assert view[1] == want_id and view[2] == want_pos
            self._check_job(view[3], victim)  # type: ignore[arg-type]
            self.known_ids.append(view[1])
        else:
            _, reason, retry_ms, _ahead = want
            assert view[0] == "rejected", (view, want)
            assert view[1] == reason and view[2] == retry_ms and view[3] == (reason == "QUEUE_FULL")

    @rule()
    def dequeue(self) -> None:
        assert self.model is not None
        kind, view = self._all(lambda q: _job_view(q.dequeue()))
        assert kind == "ok"
        self._check_job(view, self.model.dequeue(self.clock.now))

    @rule(n=st.integers(1, 4))
    def dequeue_many(self, n: int) -> None:
        assert self.model is not None
        kind, views = self._all(lambda q: [_job_view(j) for j in q.dequeue_many(n)])
        assert kind == "ok"
        wants = []
        for _ in range(n):
            j = self.model.dequeue(self.clock.now)
            if j is None:
                break
            wants.append(j)
        assert len(views) == len(wants)
        for v, w in zip(views, wants, strict=True):
            self._check_job(v, w)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        assert self.model is not None
        job_id = self._pick_id(data)
        kind, got = self._all(lambda q: q.cancel(job_id))
        assert (kind, got) == ("ok", self.model.cancel(job_id))

    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        assert self.model is not None
        job_id = self._pick_id(data)
        kind, got = self._all(lambda q: q.touch(job_id))
        assert (kind, got) == ("ok", self.model.touch(job_id))

    @rule(data=st.data())
    def position(self, data: st.DataObject) -> None:
        assert self.model is not None
        job_id = self._pick_id(data)
        kind, got = self._all(lambda q: (q.position(job_id), job_id in q))
        want = self.model.position(job_id)
        assert (kind, got) == ("ok", (want, want is not None))

    @rule(bad=st.sampled_from([123, None, "", "x" * 200, "a\nb", 1.5]))
    def bad_job_id(self, bad: object) -> None:
        # Every engine raises the same exception type and message; nothing changes.
        for op in ("cancel", "touch", "position"):
            kind, _ = self._all(lambda q, op=op: getattr(q, op)(bad))
            assert kind == "raise"

    @rule(seconds=st.sampled_from([0.0004, 0.01, 0.3, 1.0, 2.5, 11.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def close(self) -> None:
        assert self.model is not None
        self._all(lambda q: q.close())
        self.model.closed = True

    @precondition(lambda self: self.model is not None)
    @rule()
    def drain(self) -> None:
        assert self.model is not None
        _kind, views = self._all(lambda q: [_job_view(j) for j in q.drain()])
        wants = self.model.drain()
        assert len(views) == len(wants)
        for v, w in zip(views, wants, strict=True):
            self._check_job(v, w)

    @rule()
    def metrics_agree(self) -> None:
        kind, _view = self._all(lambda q: _metrics_view(q.metrics()))
        assert kind == "ok"

    # -- invariants -------------------------------------------------------------------
    @invariant()
    def same_state(self) -> None:
        if self.model is None:
            return
        m = self.model
        want_order = [j.job_id for j in m.order()]
        for q in self.queues:
            assert q.snapshot() == want_order
            assert q.snapshot("interactive") == [j.job_id for j in m.classes[0]]
            assert q.snapshot("batch") == [j.job_id for j in m.classes[1]]
            assert q.lru_order("interactive") == m.lru[0]
            assert q.lru_order("batch") == m.lru[1]
            assert q.depth() == len(q) == m.depth() <= m.capacity
            assert q.closed == m.closed
            met = q.metrics()
            assert (met.accepted, met.evicted, met.cancelled, met.dequeued, met.drained) == (
                m.accepted,
                m.evicted,
                m.cancelled,
                m.dequeued,
                m.drained,
            )
            assert {r.value: n for r, n in met.rejected.items()} == m.rejected
            assert met.accepted == met.dequeued + met.cancelled + met.evicted + met.drained + met.depth
            oldest = min((j.enqueued_at for j in m.order()), default=None)
            if oldest is None:
                assert met.oldest_age_ms is None
            else:
                assert met.oldest_age_ms == pytest.approx((self.clock.now - oldest) * 1000.0)
            assert met.retry_after_ms == m.retry_after(1, self.clock.now)
            assert not math.isnan(met.dequeue_rate_per_s)


QueueMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestQueueMachine = QueueMachine.TestCase


@pytest.mark.slow
def test_state_machine_long() -> None:
    """The same machine, thousands of examples with long step sequences (opt-in)."""
    from hypothesis.stateful import run_state_machine_as_test

    run_state_machine_as_test(
        QueueMachine,
        settings=settings(
            max_examples=3000,
            stateful_step_count=150,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
