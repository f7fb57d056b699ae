"""Differential testing: the compiled engine, the pure twin and a reference model, side by side.

Every step applies one operation to all three and compares return values, exception
types and messages, dequeue order, LRU order, positions and counters. The long run is
behind the ``slow`` marker (``--run-slow``); ``tests/test_fuzz.py`` reuses the machine.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from orchestrator_core import _core_py

from .conftest import FakeClock, core_c
from .model import Model, ModelJob

PRIOS = ("interactive", "batch")
TENANTS = (None, None, "a", "b", "c")
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
        return (
            "accepted",
            res.job_id,
            res.position,
            _job_view(res.evicted),
            res.eta_ms,
            tuple(_job_view(j) for j in res.evicted_all),
        )
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
        m.expired,
        m.queued_tokens,
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
        max_wait=st.sampled_from([None, None, 700.0]),
        feasible=st.sampled_from([False, True, True]),
        tenant_cap=st.sampled_from([None, None, 2]),
        budget=st.sampled_from([None, 60]),
    )
    def setup(
        self,
        capacity: int,
        policy: str,
        limit: int | None,
        max_wait: float | None,
        feasible: bool,
        tenant_cap: int | None,
        budget: int | None,
    ) -> None:
        self.queues = [
            m.Queue(
                capacity,
                policy,
                id_prefix="q",
                clock=self.clock,
                max_tokens_limit=limit,
                pool_id="p",
                max_wait_ms=max_wait,
                admit_only_feasible=feasible,
                max_queued_per_tenant=tenant_cap,
                max_queued_tokens=budget,
            )
            for m in _engines()
        ]
        self.model = Model(
            capacity,
            policy,
            max_tokens_limit=limit or 0,
            created_at=self.clock.now,
            max_wait_ms=max_wait,
            admit_only_feasible=feasible,
            max_queued_per_tenant=tenant_cap or 0,
            max_queued_tokens=budget or 0,
        )

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
    @rule(
        prios=st.lists(st.integers(0, 1), min_size=2, max_size=5),
        tenants=st.lists(st.sampled_from(TENANTS), min_size=5, max_size=5),
    )
    def enqueue_several(self, prios: list[int], tenants: list[str | None]) -> None:
        for prio, tenant in zip(prios, tenants[: len(prios)], strict=True):
            self.enqueue(prio=prio, max_tokens=10, pick_id=None, data=None, tenant=tenant)  # type: ignore[arg-type]

    @rule(
        tenants=st.lists(st.sampled_from(TENANTS), min_size=3, max_size=6),
        max_wait=st.sampled_from([5, 400.0]),
        prompt_tokens=st.sampled_from([None, 25]),
    )
    def enqueue_with_deadlines(self, tenants: list[str | None], max_wait: float, prompt_tokens: int | None) -> None:
        # Bursts behind queued work: deadline refusals, expiry, several evictions per admission.
        for tenant in tenants:
            self.enqueue(0, 10, None, None, tenant=tenant, max_wait=max_wait, prompt_tokens=prompt_tokens)  # type: ignore[arg-type]

    @rule(
        prio=st.integers(0, 1),
        max_tokens=st.sampled_from([1, 10, 10, 100]),
        pick_id=st.sampled_from([None, None, None, "known", "fresh"]),
        data=st.data(),
        tenant=st.sampled_from(TENANTS),
        max_wait=st.sampled_from([None, None, 5, 400.0, 3000]),
        prompt_tokens=st.sampled_from([None, None, 0, 25]),
    )
    def enqueue(
        self,
        prio: int,
        max_tokens: int,
        pick_id: str | None,
        data: st.DataObject,
        tenant: str | None = None,
        max_wait: float | None = None,
        prompt_tokens: int | None = None,
    ) -> None:
        assert self.model is not None
        job_id = None
        if pick_id == "known":
            job_id = data.draw(st.sampled_from(self.known_ids))
        elif pick_id == "fresh":
            job_id = data.draw(st.sampled_from(["caller-a", "caller-b", "q-7", "q-1a", "q-07"]))
        mods = _engines()
        outcomes = []
        for m, q in zip(mods, self.queues, strict=True):
            task = m.Task(
                "m",
                max_tokens,
                priority=PRIOS[prio],
                job_id=job_id,
                tenant=tenant,
                max_wait_ms=max_wait,
                prompt_tokens=prompt_tokens,
            )
            outcomes.append(_outcome(lambda q=q, task=task: _result_view(q.enqueue(task))))
        assert all(o == outcomes[0] for o in outcomes), outcomes
        kind, view = outcomes[0]
        assert kind == "ok", view
        want = self.model.enqueue(
            prio, max_tokens, job_id, self.clock.now, tenant=tenant, max_wait_ms=max_wait, prompt_tokens=prompt_tokens
        )
        event(f"enqueue: {want[0]} {want[1] if want[0] == 'rejected' else len(want[3])}")  # type: ignore[arg-type]
        if want[0] == "accepted":
            _, want_id, want_pos, victims, eta = want
            assert view[0] == "accepted", (view, want)
            assert view[1] == want_id and view[2] == want_pos, (view, want)
            assert view[4] == eta, (view, want)
            assert len(view[5]) == len(victims)  # type: ignore[arg-type]
            self._check_job(view[3], victims[0] if victims else None)  # type: ignore[index]
            for got, victim in zip(view[5], victims, strict=True):  # type: ignore[call-overload]
                self._check_job(got, victim)
            self.known_ids.append(view[1])
        else:
            _, reason, retry_ms, _ahead = want
            assert view[0] == "rejected", (view, want)
            retriable = reason in ("QUEUE_FULL", "DEADLINE_UNMEETABLE")
            assert view[1] == reason and view[2] == retry_ms and view[3] == retriable, (view, want)

    @rule()
    def dequeue(self) -> None:
        assert self.model is not None
        kind, view = self._all(lambda q: _job_view(q.dequeue()))
        assert kind == "ok"
        self._check_job(view, self.model.dequeue(self.clock.now))

    @rule()
    def take_expired(self) -> None:
        assert self.model is not None
        kind, views = self._all(lambda q: [_job_view(j) for j in q.take_expired()])
        assert kind == "ok"
        wants = self.model.take_expired(self.clock.now)
        event(f"take_expired: {min(len(wants), 3)}")
        assert [v[0] for v in views] == [w.job_id for w in wants]
        for v, w in zip(views, wants, strict=True):
            job_id, prio, max_tokens, enqueued_at, wait_ms = v
            assert (job_id, prio, max_tokens, enqueued_at) == (w.job_id, PRIOS[w.prio], w.max_tokens, w.enqueued_at)
            assert wait_ms == pytest.approx((w.left_at - w.enqueued_at) * 1000.0)
            assert w.max_wait_ms is not None and wait_ms > w.max_wait_ms - 1e-6

    @rule(data=st.data())
    def eta_ms(self, data: st.DataObject) -> None:
        assert self.model is not None
        job_id = self._pick_id(data)
        kind, got = self._all(lambda q: q.eta_ms(job_id))
        assert kind == "ok"
        self.model.sweep(self.clock.now)
        pos = self.model.position(job_id)
        assert got == (None if pos is None else self.model.eta(pos, self.clock.now))

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
        assert (kind, got) == ("ok", self.model.cancel(job_id, self.clock.now))

    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        assert self.model is not None
        job_id = self._pick_id(data)
        kind, got = self._all(lambda q: q.touch(job_id))
        assert (kind, got) == ("ok", self.model.touch(job_id, self.clock.now))

    @rule(data=st.data())
    def position(self, data: st.DataObject) -> None:
        assert self.model is not None
        job_id = self._pick_id(data)
        kind, got = self._all(lambda q: (q.position(job_id), job_id in q))
        self.model.sweep(self.clock.now)
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

    @rule(roll=st.integers(0, 3))
    def close(self, roll: int) -> None:
        assert self.model is not None
        if roll:
            return  # closing ends most of the interesting behaviour: only one time in four
        self._all(lambda q: q.close())
        self.model.closed = True

    @precondition(lambda self: self.model is not None)
    @rule()
    def drain(self) -> None:
        assert self.model is not None
        _kind, views = self._all(lambda q: [_job_view(j) for j in q.drain()])
        wants = self.model.drain(self.clock.now)
        assert len(views) == len(wants)
        for v, w in zip(views, wants, strict=True):
            self._check_job(v, w)

    @rule()
    def metrics_agree(self) -> None:
        assert self.model is not None
        kind, _view = self._all(lambda q: _metrics_view(q.metrics()))
        assert kind == "ok"
        self.model.sweep(self.clock.now)

    # -- invariants -------------------------------------------------------------------
    @invariant()
    def same_state(self) -> None:
        if self.model is None:
            return
        m = self.model
        m.sweep(self.clock.now)  # the engines expire overdue jobs before any look
        want_order = [j.job_id for j in m.order()]
        for q in self.queues:
            assert q.snapshot() == want_order
            assert q.snapshot("interactive") == [j.job_id for j in m.class_order(0)]
            assert q.snapshot("batch") == [j.job_id for j in m.class_order(1)]
            assert q.lru_order("interactive") == [j.job_id for j in m.eviction_order(0)]
            assert q.lru_order("batch") == [j.job_id for j in m.eviction_order(1)]
            assert q.depth() == len(q) == m.depth() <= m.capacity
            assert q.closed == m.closed
            met = q.metrics()
            assert (met.accepted, met.evicted, met.cancelled, met.dequeued, met.drained, met.expired) == (
                m.accepted,
                m.evicted,
                m.cancelled,
                m.dequeued,
                m.drained,
                m.expired,
            )
            assert {r.value: n for r, n in met.rejected.items()} == m.rejected
            assert met.accepted == met.dequeued + met.cancelled + met.evicted + met.drained + met.expired + met.depth
            if m.max_queued_tokens:
                assert met.queued_tokens == m.queued_tokens() <= m.max_queued_tokens
            else:
                assert met.queued_tokens is None
            if m.max_queued_per_tenant:
                for tenant in TENANTS[2:]:
                    assert m.tenant_count(tenant) <= m.max_queued_per_tenant  # type: ignore[arg-type]
            for j in m.order():
                assert j.max_wait_ms is None or (self.clock.now - j.enqueued_at) * 1000.0 <= j.max_wait_ms
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
