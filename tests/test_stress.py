"""Stress: 8 producers, 8 consumers and chaos threads, for every policy and both priorities.

Each run performs a fixed number of operations (never a fixed duration): every producer
makes ``per_producer`` enqueues, every chaos thread ``chaos_ops`` cancels, touches,
position and membership queries, consumers take with blocking ``dequeue(timeout=...)`` and
``dequeue_many`` until the queue is closed and empty, and a sampling thread checks the
depth against the capacity and the balance of the counters in every snapshot. The checks
(``check_conservation``) are those of ``test_threads.py``: every accepted job leaves exactly
once, per-producer FIFO within a priority as each consumer saw it (and, with a single
consumer, in the one global take order), counters equal to the events the threads saw.

Default sizes keep the whole file to a few seconds per engine; ``--run-slow`` runs the
same matrix with 10x the operations.
"""

from __future__ import annotations

from collections.abc import Iterator
from types import ModuleType

import pytest

from .conftest import core_c
from .test_threads import POLICIES, PRIORITY_MODES, Workload, check_conservation, run_workload

STRESS = {"producers": 8, "consumers": 8, "chaos_threads": 3, "per_producer": 400, "chaos_ops": 800}
SLOW = {"producers": 8, "consumers": 8, "chaos_threads": 3, "per_producer": 4_000, "chaos_ops": 8_000}


@pytest.mark.parametrize("priorities", PRIORITY_MODES)
@pytest.mark.parametrize("policy", POLICIES)
def test_stress_small_capacity(impl: ModuleType, policy: str, priorities: str) -> None:
    """Capacity 8: the queue is full often, so every policy's refusal or eviction path runs."""
    w = Workload(capacity=8, policy=policy, priorities=priorities, hold_consumers=64, **STRESS)
    out = run_workload(impl, w)
    check_conservation(w, out)
    assert out.metrics.dequeued > 0 and out.metrics.cancelled > 0
    assert out.metrics.rejected_total + out.metrics.evicted > 0


@pytest.mark.parametrize("priorities", PRIORITY_MODES)
@pytest.mark.parametrize("policy", POLICIES)
def test_stress_capacity_one(impl: ModuleType, policy: str, priorities: str) -> None:
    w = Workload(capacity=1, policy=policy, priorities=priorities, hold_consumers=40, **STRESS)
    out = run_workload(impl, w)
    check_conservation(w, out)
    m = out.metrics
    # With one slot the producers can finish (refused) before a consumer runs on a loaded
    # machine; the remaining job is then drained at close. Conservation is the check above.
    assert m.dequeued + m.drained > 0 and m.cancelled > 0
    if policy == "drop-lru":
        assert m.evicted > 0
    else:
        assert m.rejected_total > 0


@pytest.mark.parametrize("policy", POLICIES)
def test_stress_capacity_one_million(impl: ModuleType, policy: str) -> None:
    """Never full: nothing is refused for being full (FAIL_FAST still refuses queued-behind work)."""
    w = Workload(capacity=1_000_000, policy=policy, priorities="mixed", **STRESS)
    out = run_workload(impl, w)
    check_conservation(w, out)
    assert out.metrics.evicted == 0
    if policy != "fail-fast":
        assert out.metrics.rejected_total == 0


@pytest.mark.parametrize("capacity", [1, 8, 1_000_000])
@pytest.mark.parametrize("policy", POLICIES)
def test_stress_single_consumer_strict_fifo(impl: ModuleType, policy: str, capacity: int) -> None:
    """One consumer: its take order is the queue's order, so per-producer FIFO is strict."""
    w = Workload(capacity=capacity, policy=policy, priorities="mixed", **{**STRESS, "consumers": 1})
    out = run_workload(impl, w)
    check_conservation(w, out)  # with one consumer the per-consumer order check is the global one
    assert len(out.taken) == 1 and out.metrics.dequeued == len(out.taken[0]) > 0


@pytest.fixture
def gil_released() -> Iterator[None]:
    assert core_c is not None
    core_c._set_release_gil(True)
    try:
        yield
    finally:
        core_c._set_release_gil(False)


@pytest.mark.c_extension
@pytest.mark.parametrize("capacity", [1, 8])
@pytest.mark.parametrize("policy", POLICIES)
def test_stress_compiled_engine_with_the_gil_released(gil_released: None, policy: str, capacity: int) -> None:
    """The engine's own lock is really contended when the GIL is released around it."""
    assert core_c is not None
    w = Workload(capacity=capacity, policy=policy, priorities="mixed", **STRESS)
    out = run_workload(core_c, w)
    check_conservation(w, out)


@pytest.mark.slow
@pytest.mark.parametrize("capacity", [1, 8, 1_000_000])
@pytest.mark.parametrize("priorities", PRIORITY_MODES)
@pytest.mark.parametrize("policy", POLICIES)
def test_stress_long(impl: ModuleType, policy: str, priorities: str, capacity: int) -> None:
    """The same matrix with 10x the operations (opt-in: --run-slow)."""
    w = Workload(capacity=capacity, policy=policy, priorities=priorities, **SLOW)
    out = run_workload(impl, w)
    check_conservation(w, out)
