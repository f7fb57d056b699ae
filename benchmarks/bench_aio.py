"""``AsyncQueue`` against ``asyncio.Queue``: one producer task and one consumer task move ``ITEMS`` items.

Run: ``PYTHONPATH=src python3 -m pytest benchmarks/bench_aio.py --benchmark-only``

Names are stable for baseline comparison. The id is ``[<queue>-<loop>]``: ``AsyncQueue-c``,
``AsyncQueue-py`` (the two engines) or ``asyncio.Queue``, on the ``asyncio`` or ``uvloop``
event loop. Two groups:

* ``aio-pingpong``: the producer yields to the loop after every item, so the consumer waits
  for (nearly) every item: the wake-up path;
* ``aio-burst64``: the producer yields after every 64 items, so the consumer mostly finds
  work queued: the fast path.

``extra_info["ops_per_round"]`` is ``ITEMS`` and ``extra_info["ns_per_op"]`` the median per item.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pytest_benchmark.fixture import BenchmarkFixture

from orchestrator_core.aio import AsyncQueue

ITEMS = 10_000

try:
    from uvloop import new_event_loop as uvloop_new_event_loop
except ImportError:  # pragma: no cover - uvloop is in the test extra on CPython/POSIX
    uvloop_new_event_loop = None  # type: ignore[assignment]


def _engine(name: str) -> Any:
    if name == "c" and os.environ.get("ORCHESTRATOR_CORE_NO_EXTENSIONS", "") not in ("", "0"):
        pytest.skip("ORCHESTRATOR_CORE_NO_EXTENSIONS is set")
    try:
        return importlib.import_module(f"orchestrator_core._core_{name}")
    except ImportError:
        pytest.skip(f"engine {name} is not available")


LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop_new_event_loop}


@pytest.fixture(params=list(LOOPS))
def loop(request: pytest.FixtureRequest) -> Iterator[asyncio.AbstractEventLoop]:
    factory: Callable[[], asyncio.AbstractEventLoop] | None = LOOPS[request.param]
    if factory is None:
        pytest.skip("uvloop is not installed")
    lp = factory()
    yield lp
    lp.close()


def _transfer(make_queue: Callable[[], tuple[Callable[[], Any], Callable[[], Any]]], burst: int) -> Any:
    """A coroutine function moving ITEMS items from one producer task to one consumer task."""

    async def run() -> int:
        put, get = make_queue()

        async def producer() -> None:
            for i in range(ITEMS):
                put()
                if i % burst == burst - 1:
                    await asyncio.sleep(0)

        async def consumer() -> int:
            n = 0
            for _ in range(ITEMS):
                await get()
                n += 1
            return n

        prod = asyncio.ensure_future(producer())
        got = await consumer()
        await prod
        return got

    return run


def _async_queue(engine: Any) -> Callable[[], tuple[Callable[[], Any], Callable[[], Any]]]:
    def make() -> tuple[Callable[[], Any], Callable[[], Any]]:
        q = AsyncQueue.wrap(engine.Queue(ITEMS, "reject-new", id_prefix="b"))
        task = engine.Task("m", 1)
        return (lambda: q.enqueue(task)), q.dequeue

    return make


def _asyncio_queue() -> tuple[Callable[[], Any], Callable[[], Any]]:
    q: asyncio.Queue[int] = asyncio.Queue()
    return (lambda: q.put_nowait(1)), q.get


@pytest.mark.parametrize("burst", [1, 64], ids=["pingpong", "burst64"])
@pytest.mark.parametrize("queue", ["AsyncQueue-c", "AsyncQueue-py", "asyncio.Queue"])
def test_transfer(benchmark: BenchmarkFixture, loop: asyncio.AbstractEventLoop, queue: str, burst: int) -> None:
    benchmark.group = f"aio-{'pingpong' if burst == 1 else 'burst64'}"
    make = _asyncio_queue if queue == "asyncio.Queue" else _async_queue(_engine(queue.rsplit("-", 1)[1]))
    run = _transfer(make, burst)
    got = benchmark(lambda: loop.run_until_complete(run()))
    assert got == ITEMS
    benchmark.extra_info["impl"] = queue
    benchmark.extra_info["ops_per_round"] = ITEMS
    stats = getattr(benchmark.stats, "stats", None)
    if stats is not None and stats.data:
        benchmark.extra_info["ns_per_op"] = round(stats.median / ITEMS * 1e9, 1)
