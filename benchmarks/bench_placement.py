"""Benchmarks for placement and session affinity (pytest-benchmark; names are stable for baseline comparison).

Run: ``PYTHONPATH=src python3 -m pytest benchmarks/bench_placement.py --benchmark-only -q``
"""

from __future__ import annotations

import random

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from orchestrator_core.affinity import SessionAffinity
from orchestrator_core.placement import Assigned, JobSpec, PoolSnapshot, place

GiB = 1 << 30
MODEL = "llama-3-8b"
POOL_COUNT = 1000
SESSION_COUNT = 10_000


def _fleet(pool_count: int, *, with_hints: bool) -> list[PoolSnapshot]:
    """A mixed fleet: a few engines, some unready or full pools, varied VRAM; shuffled with a fixed seed."""
    rng = random.Random(20240601)
    pools = []
    for i in range(pool_count):
        slots_total = rng.choice([4, 8, 16])
        vram_total = 80 * GiB
        pools.append(
            PoolSnapshot(
                pool_id=f"pool-{i:05d}",
                engine=MODEL if i % 10 else "mistral-7b",
                ready=rng.random() > 0.05,
                slots_total=slots_total,
                slots_free=rng.randint(0, slots_total),
                vram_total_bytes=vram_total,
                vram_free_bytes=rng.randint(0, vram_total),
                max_context_tokens=rng.choice([8192, 32768, 131072]),
                supported_extensions=frozenset(rng.sample(["lora:sql", "json-grammar", "tools"], k=rng.randint(0, 3))),
                tokens_per_second=rng.uniform(20.0, 120.0) if with_hints else None,
                first_token_latency_ms=rng.uniform(20.0, 400.0) if with_hints else None,
            )
        )
    rng.shuffle(pools)
    return pools


JOB = JobSpec(
    model=MODEL,
    required_context_tokens=16384,
    estimated_kv_bytes=4 * GiB,
    expected_output_tokens=512,
    required_extensions=frozenset({"tools"}),
    session_id="session-42",
)


def test_place_1000_pools(benchmark: BenchmarkFixture) -> None:
    pools = _fleet(POOL_COUNT, with_hints=False)
    result = benchmark(place, JOB, pools)
    assert isinstance(result, Assigned)


def test_place_10000_pools(benchmark: BenchmarkFixture) -> None:
    # Ten times the pools of test_place_1000_pools: the median should be about ten times larger (linear).
    pools = _fleet(10 * POOL_COUNT, with_hints=False)
    result = benchmark(place, JOB, pools)
    assert isinstance(result, Assigned)


def test_place_1000_pools_with_hints(benchmark: BenchmarkFixture) -> None:
    pools = _fleet(POOL_COUNT, with_hints=True)
    result = benchmark(place, JOB, pools)
    assert isinstance(result, Assigned)


def test_place_1000_pools_session_affinity(benchmark: BenchmarkFixture) -> None:
    pools = _fleet(POOL_COUNT, with_hints=False)
    feasible = [
        p for p in pools if p.engine == MODEL and p.ready and p.slots_free and "tools" in p.supported_extensions
    ]
    warm_pool_id = next(p.pool_id for p in feasible if p.max_context_tokens >= 16384 and p.vram_free_bytes >= 4 * GiB)
    affinity = SessionAffinity()
    affinity.bind("session-42", warm_pool_id)
    result = benchmark(place, JOB, pools, affinity)
    assert isinstance(result, Assigned) and result.kv_warm


@pytest.fixture
def full_affinity() -> SessionAffinity:
    affinity = SessionAffinity(max_sessions=SESSION_COUNT)
    for i in range(SESSION_COUNT):
        affinity.bind(f"session-{i}", f"pool-{i % 100}")
    return affinity


def test_affinity_get_hit(benchmark: BenchmarkFixture, full_affinity: SessionAffinity) -> None:
    assert benchmark(full_affinity.get, "session-5000") == "pool-0"


def test_affinity_get_miss(benchmark: BenchmarkFixture, full_affinity: SessionAffinity) -> None:
    assert benchmark(full_affinity.get, "no-such-session") is None


def test_affinity_bind_with_eviction(benchmark: BenchmarkFixture, full_affinity: SessionAffinity) -> None:
    counter = iter(range(SESSION_COUNT, 10**9))

    def bind_new_session() -> str | None:
        return full_affinity.bind(f"session-{next(counter)}", "pool-7")

    assert benchmark(bind_new_session) is not None  # the map is full: every new session evicts the oldest
    assert len(full_affinity) == SESSION_COUNT


def test_affinity_record_turn(benchmark: BenchmarkFixture) -> None:
    # max_turns is large so the session is never exhausted during the run.
    affinity = SessionAffinity(max_turns=10**9)
    affinity.bind("session-1", "pool-1")
    assert benchmark(affinity.record_turn, "session-1") is True
