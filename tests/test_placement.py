"""Tests for orchestrator_core.placement: feasibility, reason codes, the choice order, validation."""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator_core._types import Priority
from orchestrator_core.affinity import SessionAffinity
from orchestrator_core.placement import (
    Assigned,
    JobSpec,
    NoCapacity,
    NoCapacityReason,
    PlacementRule,
    PoolSnapshot,
    place,
)

GiB = 1 << 30
MODEL = "llama-3-8b"


def make_pool(pool_id: str = "p1", **overrides: Any) -> PoolSnapshot:
    fields: dict[str, Any] = {
        "pool_id": pool_id,
        "engine": MODEL,
        "ready": True,
        "slots_total": 4,
        "slots_free": 2,
        "vram_total_bytes": 80 * GiB,
        "vram_free_bytes": 40 * GiB,
        "max_context_tokens": 8192,
    }
    fields.update(overrides)
    return PoolSnapshot(**fields)


def make_job(**overrides: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "model": MODEL,
        "required_context_tokens": 4096,
        "estimated_kv_bytes": 2 * GiB,
        "expected_output_tokens": 256,
    }
    fields.update(overrides)
    return JobSpec(**fields)


def hinted(pool_id: str, tokens_per_second: float, first_token_latency_ms: float, **overrides: Any) -> PoolSnapshot:
    return make_pool(
        pool_id, tokens_per_second=tokens_per_second, first_token_latency_ms=first_token_latency_ms, **overrides
    )


def assigned(result: Assigned | NoCapacity) -> Assigned:
    assert isinstance(result, Assigned), result
    return result


def refused(result: Assigned | NoCapacity) -> NoCapacity:
    assert isinstance(result, NoCapacity), result
    return result


# -- feasibility and reason codes ------------------------------------------------------------------------------

# One override per feasibility check, each making the default pool infeasible for the default job.
INFEASIBLE: dict[NoCapacityReason, dict[str, Any]] = {
    NoCapacityReason.INSUFFICIENT_CTX: {"max_context_tokens": 4095},
    NoCapacityReason.EXTENSIONS_UNSATISFIED: {"supported_extensions": frozenset({"lora"})},
    NoCapacityReason.POOL_UNREADY: {"ready": False},
    NoCapacityReason.NO_CAPACITY: {"slots_free": 0},
    NoCapacityReason.INSUFFICIENT_VRAM: {"vram_free_bytes": 2 * GiB - 1},
}
PRECEDENCE = [
    NoCapacityReason.INSUFFICIENT_CTX,
    NoCapacityReason.EXTENSIONS_UNSATISFIED,
    NoCapacityReason.POOL_UNREADY,
    NoCapacityReason.NO_CAPACITY,
    NoCapacityReason.INSUFFICIENT_VRAM,
]


@pytest.mark.parametrize("reason", PRECEDENCE)
def test_each_feasibility_check_refuses_with_its_reason(reason: NoCapacityReason) -> None:
    job = make_job(required_extensions={"tools"})
    pool = make_pool(**{"supported_extensions": {"tools"}, **INFEASIBLE[reason]})
    assert place(job, [pool]) == NoCapacity(reason=reason, candidates_total=1, candidates_feasible=0)


def test_the_default_pool_is_feasible_for_the_default_job() -> None:
    # Guards the table above: each override alone is what makes a pool infeasible.
    job = make_job(required_extensions={"tools"})
    result = assigned(place(job, [make_pool(supported_extensions={"tools"})]))
    assert result.pool_id == "p1"


def test_exact_fits_are_feasible() -> None:
    job = make_job(required_context_tokens=8192, estimated_kv_bytes=40 * GiB)
    pool = make_pool(max_context_tokens=8192, vram_free_bytes=40 * GiB, slots_free=1)
    assert assigned(place(job, [pool])).pool_id == "p1"


@pytest.mark.parametrize(("earlier", "later"), [(a, b) for i, a in enumerate(PRECEDENCE) for b in PRECEDENCE[i + 1 :]])
def test_one_pool_failing_several_checks_reports_the_first_check(
    earlier: NoCapacityReason, later: NoCapacityReason
) -> None:
    job = make_job(required_extensions={"tools"})
    pool = make_pool(**{"supported_extensions": {"tools"}, **INFEASIBLE[later], **INFEASIBLE[earlier]})
    assert refused(place(job, [pool])).reason is earlier


@pytest.mark.parametrize(("earlier", "later"), [(a, b) for i, a in enumerate(PRECEDENCE) for b in PRECEDENCE[i + 1 :]])
def test_across_pools_the_reason_of_the_pool_that_got_furthest_wins(
    earlier: NoCapacityReason, later: NoCapacityReason
) -> None:
    job = make_job(required_extensions={"tools"})
    pools = [
        make_pool("a", **{"supported_extensions": {"tools"}, **INFEASIBLE[later]}),
        make_pool("b", **{"supported_extensions": {"tools"}, **INFEASIBLE[earlier]}),
    ]
    for ordering in (pools, pools[::-1]):
        assert place(job, ordering) == NoCapacity(reason=later, candidates_total=2)


def test_no_pools_at_all_is_no_capacity() -> None:
    assert place(make_job(), []) == NoCapacity(reason=NoCapacityReason.NO_CAPACITY, candidates_total=0)


def test_pools_of_another_engine_are_not_candidates() -> None:
    pools = [make_pool("a", engine="mistral-7b"), make_pool("b", engine=MODEL.upper())]
    assert place(make_job(), pools) == NoCapacity(reason=NoCapacityReason.NO_CAPACITY, candidates_total=0)


def test_engine_mismatch_does_not_hide_a_matching_pool_or_count_as_candidate() -> None:
    pools = [make_pool("a", engine="mistral-7b", vram_free_bytes=80 * GiB), make_pool("b")]
    result = assigned(place(make_job(), pools))
    assert (result.pool_id, result.candidates_total, result.candidates_feasible) == ("b", 1, 1)


def test_missing_extension_refuses_and_superset_accepts() -> None:
    job = make_job(required_extensions=["lora:sql", "json-grammar"])
    pools = [
        make_pool("a", supported_extensions={"lora:sql"}, vram_free_bytes=80 * GiB),
        make_pool("b", supported_extensions={"lora:sql", "json-grammar", "tools"}),
    ]
    assert assigned(place(job, pools)).pool_id == "b"


def test_counts_total_and_feasible_candidates() -> None:
    pools = [make_pool("a"), make_pool("b", ready=False), make_pool("c", slots_free=0), make_pool("d")]
    result = assigned(place(make_job(), pools))
    assert (result.candidates_total, result.candidates_feasible) == (4, 2)


# -- the choice order ----------------------------------------------------------------------------------------------


def test_most_free_vram_wins_without_hints() -> None:
    pools = [make_pool("a", vram_free_bytes=10 * GiB), make_pool("b", vram_free_bytes=30 * GiB), make_pool("c")]
    result = assigned(place(make_job(), pools))
    assert (result.pool_id, result.rule, result.kv_warm, result.predicted_end_ms) == (
        "c",
        PlacementRule.MOST_FREE_VRAM,
        False,
        None,
    )


def test_fewest_busy_slots_breaks_a_vram_tie() -> None:
    pools = [
        make_pool("a", slots_total=8, slots_free=4),  # 4 busy
        make_pool("b", slots_total=4, slots_free=1),  # 3 busy
        make_pool("c", slots_total=2, slots_free=1, vram_free_bytes=39 * GiB),  # 1 busy, but less VRAM
    ]
    assert assigned(place(make_job(), pools)).pool_id == "b"


def test_busy_slots_count_not_free_slots() -> None:
    # "a" has more free slots but more busy ones too: fewest busy wins.
    pools = [make_pool("a", slots_total=10, slots_free=5), make_pool("b", slots_total=2, slots_free=1)]
    assert assigned(place(make_job(), pools)).pool_id == "b"


def test_smallest_pool_id_breaks_a_full_tie() -> None:
    pools = [make_pool("pool-b"), make_pool("pool-B"), make_pool("pool-a")]
    # Code-point order: "B" (66) < "a" (97) < "b" (98).
    assert assigned(place(make_job(), pools)).pool_id == "pool-B"


def test_smallest_predicted_end_wins_when_every_feasible_pool_has_hints() -> None:
    job = make_job(expected_output_tokens=100)
    pools = [
        hinted("fast", tokens_per_second=100.0, first_token_latency_ms=50.0, vram_free_bytes=10 * GiB),  # 1050 ms
        hinted("roomy", tokens_per_second=50.0, first_token_latency_ms=20.0),  # 2020 ms
    ]
    result = assigned(place(job, pools))
    assert (result.pool_id, result.rule, result.predicted_end_ms) == ("fast", PlacementRule.PREDICTED_END_TIME, 1050.0)


def test_queue_wait_counts_in_the_predicted_end() -> None:
    job = make_job(expected_output_tokens=100)
    pools = [
        hinted("a", tokens_per_second=100.0, first_token_latency_ms=50.0, queue_wait_ms=2000.0),  # 3050 ms
        hinted("b", tokens_per_second=50.0, first_token_latency_ms=20.0),  # 2020 ms
    ]
    result = assigned(place(job, pools))
    assert (result.pool_id, result.predicted_end_ms) == ("b", 2020.0)


def test_hints_are_ignored_unless_every_feasible_pool_has_them() -> None:
    job = make_job(expected_output_tokens=100)
    pools = [
        hinted("fast", tokens_per_second=1000.0, first_token_latency_ms=1.0, vram_free_bytes=10 * GiB),
        make_pool("roomy"),
    ]
    result = assigned(place(job, pools))
    assert (result.pool_id, result.rule) == ("roomy", PlacementRule.MOST_FREE_VRAM)


def test_an_infeasible_unhinted_pool_does_not_disable_hints() -> None:
    job = make_job(expected_output_tokens=100)
    pools = [
        hinted("fast", tokens_per_second=1000.0, first_token_latency_ms=1.0, vram_free_bytes=10 * GiB),
        hinted("slow", tokens_per_second=10.0, first_token_latency_ms=1.0),
        make_pool("unready", ready=False, vram_free_bytes=80 * GiB),
    ]
    assert assigned(place(job, pools)).pool_id == "fast"


def test_predicted_end_ties_fall_back_to_the_resource_order() -> None:
    job = make_job(expected_output_tokens=100)
    pools = [
        hinted("a", tokens_per_second=100.0, first_token_latency_ms=0.0),
        hinted("b", tokens_per_second=100.0, first_token_latency_ms=0.0, vram_free_bytes=41 * GiB),
        hinted("c", tokens_per_second=100.0, first_token_latency_ms=0.0, vram_free_bytes=41 * GiB, slots_free=3),
    ]
    assert assigned(place(job, pools)).pool_id == "c"


def test_predicted_end_overflow_to_infinity_still_places() -> None:
    job = make_job(expected_output_tokens=10**6)
    pools = [hinted("tiny", tokens_per_second=1e-320, first_token_latency_ms=0.0), hinted("ok", 10.0, 0.0)]
    result = assigned(place(job, pools))
    assert result.pool_id == "ok"
    single = assigned(place(job, [pools[0]]))
    assert single.predicted_end_ms == float("inf")


# -- session affinity -----------------------------------------------------------------------------------------------


def test_the_session_pool_wins_when_feasible_even_if_worse() -> None:
    pools = [make_pool("warm", vram_free_bytes=3 * GiB, slots_free=1), make_pool("cold", vram_free_bytes=80 * GiB)]
    result = assigned(place(make_job(session_id="s1"), pools, {"s1": "warm"}))
    assert (result.pool_id, result.kv_warm, result.previous_pool_id, result.rule, result.failed_over) == (
        "warm",
        True,
        "warm",
        PlacementRule.SESSION_AFFINITY,
        False,
    )


def test_the_session_pool_beats_better_predicted_end_times() -> None:
    pools = [hinted("warm", 10.0, 500.0), hinted("cold", 1000.0, 1.0)]
    result = assigned(place(make_job(session_id="s1"), pools, {"s1": "warm"}))
    assert (result.pool_id, result.kv_warm) == ("warm", True)


@pytest.mark.parametrize(
    "warm_pool",
    [
        make_pool("warm", ready=False),
        make_pool("warm", slots_free=0),
        make_pool("warm", vram_free_bytes=0),
        make_pool("warm", max_context_tokens=16),
        make_pool("warm", engine="other-model"),
        None,
    ],
    ids=["unready", "full", "no-vram", "short-context", "other-engine", "gone"],
)
def test_failover_when_the_session_pool_is_infeasible_or_gone(warm_pool: PoolSnapshot | None) -> None:
    pools = [make_pool("b", vram_free_bytes=10 * GiB), make_pool("a", vram_free_bytes=20 * GiB)]
    if warm_pool is not None:
        pools.append(warm_pool)
    result = assigned(place(make_job(session_id="s1"), pools, {"s1": "warm"}))
    assert (result.pool_id, result.kv_warm, result.previous_pool_id, result.rule, result.failed_over) == (
        "a",
        False,
        "warm",
        PlacementRule.MOST_FREE_VRAM,
        True,
    )


def test_failover_with_no_feasible_pool_is_refused() -> None:
    result = place(make_job(session_id="s1"), [make_pool("warm", ready=False)], {"s1": "warm"})
    assert result == NoCapacity(reason=NoCapacityReason.POOL_UNREADY, candidates_total=1)


def test_unknown_session_is_a_plain_placement() -> None:
    result = assigned(place(make_job(session_id="new"), [make_pool("a")], {"s1": "a"}))
    assert (result.kv_warm, result.previous_pool_id, result.failed_over) == (False, None, False)


def test_a_job_without_session_ignores_the_affinity_map() -> None:
    pools = [make_pool("warm", vram_free_bytes=3 * GiB), make_pool("cold")]
    result = assigned(place(make_job(), pools, {"s1": "warm"}))
    assert (result.pool_id, result.previous_pool_id) == ("cold", None)


def test_session_affinity_object_is_consulted_and_not_changed() -> None:
    affinity = SessionAffinity(max_turns=1)
    affinity.bind("s1", "warm")
    pools = [make_pool("warm", vram_free_bytes=3 * GiB), make_pool("cold")]
    for _ in range(3):  # a lookup is not a turn: max_turns=1 would forget the session after one recorded turn
        result = assigned(place(make_job(session_id="s1"), pools, affinity))
        assert (result.pool_id, result.kv_warm) == ("warm", True)
    assert len(affinity) == 1
    assert affinity.record_turn("s1") is True
    result = assigned(place(make_job(session_id="s1"), pools, affinity))
    assert (result.pool_id, result.kv_warm, result.previous_pool_id) == ("cold", False, None)


def test_affinity_after_forget_pool_fails_over_without_previous_pool() -> None:
    affinity = SessionAffinity()
    affinity.bind("s1", "warm")
    affinity.forget_pool("warm")
    result = assigned(place(make_job(session_id="s1"), [make_pool("cold")], affinity))
    assert (result.pool_id, result.kv_warm, result.previous_pool_id) == ("cold", False, None)


class _PlainMapping(Mapping[str, str]):
    def __init__(self, data: dict[str, str]) -> None:
        self._data = data

    def __getitem__(self, key: str) -> str:
        return self._data[key]

    def __iter__(self) -> Any:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)


def test_any_mapping_works_as_affinity() -> None:
    result = assigned(place(make_job(session_id="s1"), [make_pool("a"), make_pool("w")], _PlainMapping({"s1": "w"})))
    assert (result.pool_id, result.kv_warm) == ("w", True)


# -- order independence --------------------------------------------------------------------------------------------


def _fleet() -> list[PoolSnapshot]:
    return [
        make_pool(f"pool-{i:02d}", vram_free_bytes=(i * 7919) % 13 * GiB, slots_free=(i % 3), ready=i % 5 != 0)
        for i in range(30)
    ]


def test_result_is_the_same_for_every_ordering_and_iterables() -> None:
    pools = _fleet()
    expected = place(make_job(), pools)
    rng = random.Random(1234)
    for _ in range(50):
        shuffled = pools[:]
        rng.shuffle(shuffled)
        assert place(make_job(), shuffled) == expected
    assert place(make_job(), iter(pools)) == expected
    assert place(make_job(), tuple(pools)) == expected


_HASH_SEED_SCRIPT = """
import json
from orchestrator_core.placement import JobSpec, PoolSnapshot, place
pools = [
    PoolSnapshot(pool_id=f"p{i}", engine="m", ready=True, slots_total=2, slots_free=1, vram_total_bytes=10,
                 vram_free_bytes=5, max_context_tokens=10, supported_extensions={"x", "y", f"e{i}"})
    for i in range(40)
]
job = JobSpec(model="m", required_context_tokens=1, estimated_kv_bytes=1, expected_output_tokens=1,
              required_extensions={"x", "y"})
print(json.dumps([place(job, pools).pool_id, place(job, pools[::-1]).pool_id]))
"""


def test_result_does_not_depend_on_the_hash_seed() -> None:
    import orchestrator_core

    src = str(Path(orchestrator_core.__file__).resolve().parents[1])  # the package under test
    outputs = set()
    for seed in ("0", "1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": src}
        completed = subprocess.run(
            [sys.executable, "-c", _HASH_SEED_SCRIPT], env=env, capture_output=True, text=True, check=True
        )
        outputs.add(tuple(json.loads(completed.stdout)))
    assert outputs == {("p0", "p0")}


# -- hypothesis properties against a reference model ---------------------------------------------------------------

STAGE_CHECKS: tuple[tuple[NoCapacityReason, Callable[[JobSpec, PoolSnapshot], bool]], ...] = (
    (NoCapacityReason.INSUFFICIENT_CTX, lambda job, pool: pool.max_context_tokens >= job.required_context_tokens),
    (
        NoCapacityReason.EXTENSIONS_UNSATISFIED,
        lambda job, pool: set(job.required_extensions) <= set(pool.supported_extensions),
    ),
    (NoCapacityReason.POOL_UNREADY, lambda job, pool: pool.ready),
    (NoCapacityReason.NO_CAPACITY, lambda job, pool: pool.slots_free > 0),
    (NoCapacityReason.INSUFFICIENT_VRAM, lambda job, pool: pool.vram_free_bytes >= job.estimated_kv_bytes),
)


def reference_feasible(job: JobSpec, pool: PoolSnapshot) -> bool:
    return pool.engine == job.model and all(check(job, pool) for _, check in STAGE_CHECKS)


def reference_key(job: JobSpec, pool: PoolSnapshot, use_hints: bool) -> tuple[Any, ...]:
    resource = (-(pool.vram_free_bytes - job.estimated_kv_bytes), pool.slots_total - pool.slots_free, pool.pool_id)
    if not use_hints:
        return resource
    assert pool.tokens_per_second is not None and pool.first_token_latency_ms is not None
    end_ms = (
        pool.queue_wait_ms + pool.first_token_latency_ms + job.expected_output_tokens * 1000.0 / pool.tokens_per_second
    )
    return (end_ms, *resource)


POOL_IDS = ["a", "b", "c", "d", "e", "f", "g", "h"]
EXTENSIONS = ["x", "y"]


@st.composite
def pool_snapshots(draw: st.DrawFn, pool_id: str) -> PoolSnapshot:
    slots_total = draw(st.integers(0, 3))
    vram_total = draw(st.integers(0, 6))
    with_hints = draw(st.booleans())
    return PoolSnapshot(
        pool_id=pool_id,
        engine=draw(st.sampled_from([MODEL, MODEL, MODEL, "other"])),
        ready=draw(st.booleans()),
        slots_total=slots_total,
        slots_free=draw(st.integers(0, slots_total)),
        vram_total_bytes=vram_total,
        vram_free_bytes=draw(st.integers(0, vram_total)),
        max_context_tokens=draw(st.integers(0, 4)),
        supported_extensions=draw(st.frozensets(st.sampled_from(EXTENSIONS))),
        tokens_per_second=draw(st.sampled_from([1.0, 2.0, 4.0])) if with_hints else None,
        first_token_latency_ms=draw(st.sampled_from([0.0, 500.0, 1000.0])) if with_hints else None,
        queue_wait_ms=draw(st.sampled_from([0.0, 0.0, 250.0])),
    )


@st.composite
def fleets(draw: st.DrawFn) -> list[PoolSnapshot]:
    pool_ids = draw(st.lists(st.sampled_from(POOL_IDS), unique=True, max_size=len(POOL_IDS)))
    return [draw(pool_snapshots(pool_id)) for pool_id in pool_ids]


jobs = st.builds(
    JobSpec,
    model=st.just(MODEL),
    required_context_tokens=st.integers(0, 4),
    estimated_kv_bytes=st.integers(0, 4),
    expected_output_tokens=st.integers(0, 3),
    required_extensions=st.frozensets(st.sampled_from(EXTENSIONS)),
    session_id=st.sampled_from([None, "s1"]),
    priority=st.sampled_from(list(Priority)),
)
affinity_maps = st.dictionaries(st.just("s1"), st.sampled_from([*POOL_IDS, "gone"]), max_size=1)


@settings(max_examples=300)
@given(job=jobs, pools=fleets(), affinity=affinity_maps, rng=st.randoms(use_true_random=False))
def test_property_shuffling_the_pools_never_changes_the_result(
    job: JobSpec, pools: list[PoolSnapshot], affinity: dict[str, str], rng: random.Random
) -> None:
    shuffled = pools[:]
    rng.shuffle(shuffled)
    assert place(job, shuffled, affinity) == place(job, pools, affinity)


@settings(max_examples=500)
@given(job=jobs, pools=fleets(), affinity=affinity_maps)
def test_property_result_matches_the_documented_rules(
    job: JobSpec, pools: list[PoolSnapshot], affinity: dict[str, str]
) -> None:
    result = place(job, pools, affinity)
    candidates = [pool for pool in pools if pool.engine == job.model]
    feasible = [pool for pool in candidates if reference_feasible(job, pool)]
    session_pool_id = affinity.get(job.session_id) if job.session_id is not None else None

    if not feasible:
        assert isinstance(result, NoCapacity)
        stages = [next(i for i, (_, check) in enumerate(STAGE_CHECKS) if not check(job, pool)) for pool in candidates]
        expected_reason = STAGE_CHECKS[max(stages)][0] if stages else NoCapacityReason.NO_CAPACITY
        assert result == NoCapacity(reason=expected_reason, candidates_total=len(candidates))
        return

    assert isinstance(result, Assigned)
    assert (result.candidates_total, result.candidates_feasible) == (len(candidates), len(feasible))
    assert result.previous_pool_id == session_pool_id
    chosen = next(pool for pool in pools if pool.pool_id == result.pool_id)
    assert reference_feasible(job, chosen)
    if any(pool.pool_id == session_pool_id for pool in feasible):
        assert (result.pool_id, result.kv_warm, result.rule) == (session_pool_id, True, PlacementRule.SESSION_AFFINITY)
        return
    assert result.kv_warm is False
    use_hints = all(pool.tokens_per_second is not None for pool in feasible)
    assert result.rule is (PlacementRule.PREDICTED_END_TIME if use_hints else PlacementRule.MOST_FREE_VRAM)
    chosen_key = reference_key(job, chosen, use_hints)
    for pool in feasible:
        # No feasible pool beats the chosen one under the documented order (ids are unique, so the order is total).
        assert chosen_key <= reference_key(job, pool, use_hints)


# -- validation ---------------------------------------------------------------------------------------------------

BAD_POOL_FIELDS = [
    ({"pool_id": ""}, ValueError, "PoolSnapshot.pool_id"),
    ({"pool_id": "   "}, ValueError, "PoolSnapshot.pool_id"),
    ({"pool_id": 7}, TypeError, "PoolSnapshot.pool_id"),
    ({"engine": ""}, ValueError, "engine"),
    ({"engine": None}, TypeError, "engine"),
    ({"ready": 1}, TypeError, "ready"),
    ({"ready": "yes"}, TypeError, "ready"),
    ({"slots_total": -1, "slots_free": 0}, ValueError, "slots_total"),
    ({"slots_free": -1}, ValueError, "slots_free"),
    ({"slots_free": 5}, ValueError, "slots_free"),
    ({"slots_total": True}, TypeError, "slots_total"),
    ({"slots_free": 1.0}, TypeError, "slots_free"),
    ({"vram_total_bytes": -1}, ValueError, "vram_total_bytes"),
    ({"vram_free_bytes": 81 * GiB}, ValueError, "vram_free_bytes"),
    ({"vram_free_bytes": "1"}, TypeError, "vram_free_bytes"),
    ({"max_context_tokens": -5}, ValueError, "max_context_tokens"),
    ({"max_context_tokens": False}, TypeError, "max_context_tokens"),
    ({"supported_extensions": "lora"}, TypeError, "supported_extensions"),
    ({"supported_extensions": {""}}, ValueError, "supported_extensions"),
    ({"supported_extensions": {1}}, TypeError, "supported_extensions"),
    ({"supported_extensions": None}, TypeError, "supported_extensions"),
    ({"tokens_per_second": float("nan"), "first_token_latency_ms": 1.0}, ValueError, "tokens_per_second"),
    ({"tokens_per_second": float("inf"), "first_token_latency_ms": 1.0}, ValueError, "tokens_per_second"),
    ({"tokens_per_second": 0.0, "first_token_latency_ms": 1.0}, ValueError, "tokens_per_second"),
    ({"tokens_per_second": True, "first_token_latency_ms": 1.0}, TypeError, "tokens_per_second"),
    ({"tokens_per_second": 1.0, "first_token_latency_ms": float("nan")}, ValueError, "first_token_latency_ms"),
    ({"tokens_per_second": 1.0, "first_token_latency_ms": -1.0}, ValueError, "first_token_latency_ms"),
    ({"tokens_per_second": 1.0}, ValueError, "given together"),
    ({"first_token_latency_ms": 1.0}, ValueError, "given together"),
    ({"queue_wait_ms": float("nan")}, ValueError, "queue_wait_ms"),
    ({"queue_wait_ms": -0.5}, ValueError, "queue_wait_ms"),
    ({"queue_wait_ms": None}, TypeError, "queue_wait_ms"),
]


@pytest.mark.parametrize(("overrides", "error", "field_name"), BAD_POOL_FIELDS)
def test_bad_pool_fields_raise_naming_the_field_and_value(
    overrides: dict[str, Any], error: type[Exception], field_name: str
) -> None:
    with pytest.raises(error, match=field_name) as raised:
        make_pool(**overrides)
    bad_value = overrides.get(field_name.rsplit(".", 1)[-1], next(iter(overrides.values())))
    message = str(raised.value)
    assert repr(bad_value) in message or field_name == "supported_extensions"
    assert type(raised.value) is error


def test_pool_errors_name_the_pool() -> None:
    with pytest.raises(ValueError, match=r"PoolSnapshot\(pool_id='gpu-7'\)\.slots_free must be <= slots_total \(4\)"):
        make_pool("gpu-7", slots_free=9)


BAD_JOB_FIELDS = [
    ({"model": ""}, ValueError, "JobSpec.model"),
    ({"model": b"m"}, TypeError, "JobSpec.model"),
    ({"required_context_tokens": -1}, ValueError, "JobSpec.required_context_tokens"),
    ({"required_context_tokens": 1.5}, TypeError, "JobSpec.required_context_tokens"),
    ({"estimated_kv_bytes": -1}, ValueError, "JobSpec.estimated_kv_bytes"),
    ({"estimated_kv_bytes": True}, TypeError, "JobSpec.estimated_kv_bytes"),
    ({"expected_output_tokens": -3}, ValueError, "JobSpec.expected_output_tokens"),
    ({"expected_output_tokens": None}, TypeError, "JobSpec.expected_output_tokens"),
    ({"required_extensions": "tools"}, TypeError, "JobSpec.required_extensions"),
    ({"required_extensions": [None]}, TypeError, "JobSpec.required_extensions"),
    ({"session_id": ""}, ValueError, "JobSpec.session_id"),
    ({"session_id": 42}, TypeError, "JobSpec.session_id"),
    ({"priority": "urgent"}, ValueError, "JobSpec.priority"),
    ({"priority": 0}, ValueError, "JobSpec.priority"),
]


@pytest.mark.parametrize(("overrides", "error", "field_name"), BAD_JOB_FIELDS)
def test_bad_job_fields_raise_naming_the_field_and_value(
    overrides: dict[str, Any], error: type[Exception], field_name: str
) -> None:
    with pytest.raises(error, match=field_name.replace(".", r"\.")) as raised:
        make_job(**overrides)
    assert type(raised.value) is error
    bad_value = next(iter(overrides.values()))
    assert repr(bad_value) in str(raised.value) or isinstance(bad_value, list)


def test_positional_arguments_are_refused() -> None:
    # Keyword-only: slots_total and slots_free can never be swapped by position.
    with pytest.raises(TypeError):
        PoolSnapshot("p", MODEL, True, 4, 2, 80, 40, 8192)  # type: ignore[call-arg]


def test_values_are_normalised() -> None:
    class Tag(str):
        pass

    pool = make_pool(Tag("p1"), supported_extensions=["b", "a", "a"], tokens_per_second=5, first_token_latency_ms=0)
    assert type(pool.pool_id) is str
    assert pool.supported_extensions == frozenset({"a", "b"})
    assert type(pool.supported_extensions) is frozenset
    assert type(pool.tokens_per_second) is float
    assert (pool.slots_busy, pool.has_performance_hints) == (2, True)
    job = make_job(priority="batch", required_extensions=("t",), session_id=Tag("s"))
    assert job.priority is Priority.BATCH
    assert type(job.session_id) is str
    assert make_job().priority is Priority.INTERACTIVE


def test_value_types_are_frozen_and_hashable() -> None:
    pool = make_pool()
    with pytest.raises(dataclasses.FrozenInstanceError):
        pool.slots_free = 0  # type: ignore[misc]
    assert hash(pool) == hash(make_pool())
    result = place(make_job(), [pool])
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.pool_id = "x"  # type: ignore[union-attr, misc]
    assert not hasattr(pool, "__dict__")


def test_duplicate_pool_ids_are_refused() -> None:
    pools = [make_pool("a"), make_pool("b"), make_pool("a", ready=False)]
    with pytest.raises(ValueError, match=r"pools\[2\]\.pool_id 'a' appears more than once"):
        place(make_job(), pools)


def test_duplicate_pool_ids_of_another_engine_are_refused_too() -> None:
    pools = [make_pool("a", engine="x"), make_pool("a", engine="y")]
    with pytest.raises(ValueError, match="'a' appears more than once"):
        place(make_job(), pools)


@pytest.mark.parametrize(
    ("job", "pools", "affinity", "match"),
    [
        ({"model": MODEL}, [], None, "job must be a JobSpec"),
        (None, "pools", None, "pools must be an iterable"),
        (None, 3, None, "pools must be an iterable"),
        (None, [{"pool_id": "a"}], None, r"pools\[0\] must be a PoolSnapshot"),
        (None, [], ["s1"], "affinity must be a SessionAffinity"),
        (None, [], {"s1": 5}, r"affinity\['s1'\] must be a str"),
    ],
)
def test_wrong_argument_types_raise_type_error(job: Any, pools: Any, affinity: Any, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        place(make_job(session_id="s1") if job is None else job, pools, affinity)


def test_empty_pool_id_in_the_affinity_map_is_refused() -> None:
    with pytest.raises(ValueError, match=r"affinity\['s1'\]"):
        place(make_job(session_id="s1"), [make_pool()], {"s1": ""})


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: NoCapacity(reason="NO_CAPACITY", candidates_total=0), "NoCapacity.reason"),  # type: ignore[arg-type]
        (
            lambda: NoCapacity(reason=NoCapacityReason.NO_CAPACITY, candidates_total=1, candidates_feasible=1),
            "candidates_feasible",
        ),
        (
            lambda: Assigned(
                pool_id="a",
                kv_warm=False,
                previous_pool_id=None,
                rule=PlacementRule.MOST_FREE_VRAM,
                predicted_end_ms=None,
                candidates_total=1,
                candidates_feasible=2,
            ),
            "candidates_feasible",
        ),
        (
            lambda: Assigned(
                pool_id="a",
                kv_warm=False,
                previous_pool_id=None,
                rule=PlacementRule.MOST_FREE_VRAM,
                predicted_end_ms=float("nan"),
                candidates_total=1,
                candidates_feasible=1,
            ),
            "predicted_end_ms",
        ),
    ],
)
def test_result_types_validate_too(factory: Any, match: str) -> None:
    with pytest.raises((TypeError, ValueError), match=match):
        factory()


def test_reason_and_rule_values_are_stable_strings() -> None:
    assert [str(reason) for reason in NoCapacityReason] == [
        "NO_CAPACITY",
        "POOL_UNREADY",
        "INSUFFICIENT_CTX",
        "EXTENSIONS_UNSATISFIED",
        "INSUFFICIENT_VRAM",
    ]
    assert [str(rule) for rule in PlacementRule] == ["session-affinity", "predicted-end-time", "most-free-vram"]
