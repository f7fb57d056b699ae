"""Longer differential fuzzing: the state machine of ``test_state_machine.py``, bigger.

``QueueMachine`` (compiled engine, pure engine and reference model in lock-step) is used
with capacities of 1-6, where a priority class never holds more than 6 jobs. The engines'
deeper paths only start beyond that: a ring doubles past 8 entries and halves when a
quarter full, the compiled engine's id table resizes past 8 ids, tombstones are compacted
once they outnumber live entries by 32, and the Fenwick tree is rebuilt after each of
those. ``BigQueueMachine`` reaches them with capacities of 9-150 and bulk rules (bursts of
enqueues and dequeues, cancelling most of the queue or a whole run but its ends, touching
many jobs), checking every position after mass cancellations.

* ``TestBigQueueMachine``: a short run in the default suite (a few seconds).
* ``test_fuzz_long_sequences`` and ``test_fuzz_big_queues_long`` (``--run-slow``): thousands
  of examples with long step sequences.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule, run_state_machine_as_test

from .test_state_machine import POLICIES, QueueMachine


class BigQueueMachine(QueueMachine):
    """``QueueMachine`` with queues large enough to grow, shrink and compact their rings."""

    @initialize(
        capacity=st.sampled_from([9, 17, 40, 150, 150]),
        policy=st.sampled_from(POLICIES),
        limit=st.sampled_from([None, None, 50]),
        max_wait=st.sampled_from([None, None, 700.0]),
        feasible=st.sampled_from([False, True, True]),
        # Caps large enough not to stop the rings from growing.
        tenant_cap=st.sampled_from([None, None, 60]),
        budget=st.sampled_from([None, None, 3000]),
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
        QueueMachine.setup(
            self,
            capacity=capacity,
            policy=policy,
            limit=limit,
            max_wait=max_wait,
            feasible=feasible,
            tenant_cap=tenant_cap,
            budget=budget,
        )

    @rule(n=st.integers(5, 100), prio=st.sampled_from([0, 1, None]), seed=st.integers(0, 2**16))
    def enqueue_burst(self, n: int, prio: int | None, seed: int) -> None:
        for i in range(n):
            p = prio if prio is not None else (seed >> (i % 16)) & 1
            self.enqueue(prio=p, max_tokens=10, pick_id=None, data=None)

    @rule(keep_every=st.sampled_from([2, 3, 5, 8, 1000]), offset=st.integers(0, 7))
    def cancel_most(self, keep_every: int, offset: int) -> None:
        """Cancel all but every ``keep_every``-th queued job (many tombstones), then ask
        every remaining job's position (the Fenwick tree's pending updates and rebuilds)."""
        assert self.model is not None
        queued = [j.job_id for j in self.model.order()]
        for i, job_id in enumerate(queued):
            if (i + offset) % keep_every:
                kind, got = self._all(lambda q, job_id=job_id: q.cancel(job_id))
                assert (kind, got) == ("ok", self.model.cancel(job_id, self.clock.now))
            elif i % 3 == 0:
                self._check_positions()

    def _check_positions(self) -> None:
        assert self.model is not None
        for job_id in [j.job_id for j in self.model.order()]:
            kind, got = self._all(lambda q, job_id=job_id: q.position(job_id))
            assert (kind, got) == ("ok", self.model.position(job_id))

    @rule(n=st.integers(36, 110), prio=st.integers(0, 1))
    def tombstone_storm(self, n: int, prio: int) -> None:
        """Enqueue a run of one priority, cancel all of it but its ends: compaction."""
        assert self.model is not None
        before = {j.job_id for j in self.model.order()}
        for _ in range(n):
            self.enqueue(prio=prio, max_tokens=10, pick_id=None, data=None)
        run = [j.job_id for j in self.model.class_order(prio) if j.job_id not in before]
        for job_id in run[1:-1]:
            kind, got = self._all(lambda q, job_id=job_id: q.cancel(job_id))
            assert (kind, got) == ("ok", self.model.cancel(job_id, self.clock.now))
        self._check_positions()

    @rule(stride=st.integers(1, 4))
    def touch_many(self, stride: int) -> None:
        assert self.model is not None
        queued = [j.job_id for j in self.model.order()]
        for job_id in queued[::stride]:
            kind, got = self._all(lambda q, job_id=job_id: q.touch(job_id))
            assert (kind, got) == ("ok", self.model.touch(job_id, self.clock.now))

    @rule(n=st.integers(5, 60))
    def dequeue_burst(self, n: int) -> None:
        for _ in range(n):
            self.dequeue()


_QUICK = settings(max_examples=40, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck))
BigQueueMachine.TestCase.settings = _QUICK
TestBigQueueMachine = BigQueueMachine.TestCase


@pytest.mark.slow
def test_fuzz_long_sequences() -> None:
    """The lead's machine with far longer step sequences than its own long run."""
    run_state_machine_as_test(
        QueueMachine,
        settings=settings(
            max_examples=1_000,
            stateful_step_count=400,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )


@pytest.mark.slow
def test_fuzz_big_queues_long() -> None:
    run_state_machine_as_test(
        BigQueueMachine,
        settings=settings(
            max_examples=2_000,
            stateful_step_count=150,
            deadline=None,
            suppress_health_check=list(HealthCheck),
        ),
    )
