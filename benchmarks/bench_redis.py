"""Benchmarks of ``RedisQueue`` against raw Redis list commands on the same server (pytest-benchmark).

Run: ``PYTHONPATH=src python3 -m pytest benchmarks/bench_redis.py --benchmark-only``. The server is
``ORCHESTRATOR_CORE_REDIS_URL`` or a private ``redis-server`` started for the run (see
``tests/redis_helpers.py``); without either the benchmarks skip (fail when ``CI`` is set).

Names are stable for baseline comparison. Group ``redis-pair``: one enqueue and one dequeue per round,
round trip by round trip: ``[at-least-once]`` (enqueue, dequeue, complete: three round trips),
``[at-most-once]`` (``lease_s=None``: enqueue, dequeue) and ``[raw-LPUSH-RPOP]`` (two commands).
Group ``redis-batch-100``: 100 pairs per round with the batch API (``enqueue_many``, ``dequeue_many``,
``complete_many``: one script call each) beside a pipeline of 100 ``LPUSH`` and one ``RPOP key 100``.
``extra_info["ops_per_round"]`` is the number of pairs in a round and ``extra_info["pairs_per_s"]``
the throughput at the median.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture


def _helpers() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "tests" / "redis_helpers.py"
    spec = importlib.util.spec_from_file_location("_oc_redis_helpers", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


helpers = _helpers()

try:
    import redis

    from orchestrator_core import Task
    from orchestrator_core.redis import RedisQueue
except ModuleNotFoundError as exc:
    if exc.name != "redis":
        raise
    helpers.unavailable("the redis package is not installed (pip install 'orchestrator-core[redis]')")

BATCH = 100
TASK = Task("llama-3.1-8b-instruct", 100, "sess-123", payload={"prompt_tokens": 512})


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    yield from helpers.session_server()


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _report(benchmark: BenchmarkFixture, ops: int) -> None:
    benchmark.extra_info["ops_per_round"] = ops
    stats = getattr(benchmark, "stats", None)
    if stats is not None:
        benchmark.extra_info["pairs_per_s"] = round(ops / stats.stats.median)


def _queue(client: Any, lease: bool) -> RedisQueue:
    return RedisQueue(client, helpers.unique_name("bench"), 10_000_000, lease_s=30.0 if lease else None)


@pytest.mark.parametrize("mode", ["at-least-once", "at-most-once", "raw-LPUSH-RPOP"])
def test_redis_pair(benchmark: BenchmarkFixture, client: Any, mode: str) -> None:
    benchmark.group = "redis-pair"
    run: Callable[[], Any]
    if mode == "raw-LPUSH-RPOP":
        key = helpers.unique_name("raw")
        payload = TASK.model.encode() * 4

        def run() -> Any:
            client.lpush(key, payload)
            return client.rpop(key)

        try:
            assert benchmark(run) == payload
        finally:
            client.delete(key)
    else:
        q = _queue(client, mode == "at-least-once")

        def run() -> Any:
            q.enqueue(TASK)
            job = q.dequeue()
            if mode == "at-least-once":
                q.complete(job.job_id)
            return job

        try:
            assert benchmark(run).task.model == TASK.model
            assert q.depth() == 0 and q.leased() == []
        finally:
            q.delete()
    _report(benchmark, 1)


@pytest.mark.parametrize("mode", ["at-least-once", "at-most-once", "raw-pipelined-LPUSH-RPOP"])
def test_redis_batch(benchmark: BenchmarkFixture, client: Any, mode: str) -> None:
    benchmark.group = f"redis-batch-{BATCH}"
    tasks = [TASK] * BATCH
    run: Callable[[], Any]
    if mode == "raw-pipelined-LPUSH-RPOP":
        key = helpers.unique_name("raw")
        payload = TASK.model.encode() * 4

        def run() -> Any:
            with client.pipeline(transaction=False) as pipe:
                for _ in range(BATCH):
                    pipe.lpush(key, payload)
                pipe.execute()
            return client.rpop(key, BATCH)

        try:
            assert len(benchmark(run)) == BATCH
        finally:
            client.delete(key)
    else:
        q = _queue(client, mode == "at-least-once")

        def run() -> Any:
            q.enqueue_many(tasks)
            jobs = q.dequeue_many(BATCH)
            if mode == "at-least-once":
                q.complete_many(j.job_id for j in jobs)
            return jobs

        try:
            assert len(benchmark(run)) == BATCH
            assert q.depth() == 0 and q.leased() == []
        finally:
            q.delete()
    _report(benchmark, BATCH)
