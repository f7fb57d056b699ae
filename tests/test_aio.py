"""``orchestrator_core.aio.AsyncQueue`` on both engines and on both event loops (asyncio, uvloop).

Waits here are never timed: a test that must not hang forever wraps its awaits in ``GUARD``
(a deadlock turns into a failure), and "no polling" is checked by counting how many times
the event loop resumes a waiting coroutine, not by measuring time.
"""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import weakref
from collections.abc import Awaitable, Callable, Coroutine, Generator
from types import ModuleType
from typing import Any, TypeVar

import pytest

from orchestrator_core import RejectionReason, Task
from orchestrator_core.aio import AsyncQueue

try:
    from uvloop import new_event_loop as uvloop_new_event_loop
except ImportError:  # pragma: no cover - uvloop is in the test extra on CPython/POSIX
    uvloop_new_event_loop = None  # type: ignore[assignment]

T = TypeVar("T")
GUARD = 30.0  # seconds before a stuck test fails instead of hanging

LOOPS = [
    pytest.param(asyncio.new_event_loop, id="asyncio"),
    pytest.param(
        uvloop_new_event_loop,
        id="uvloop",
        marks=pytest.mark.skipif(uvloop_new_event_loop is None, reason="uvloop is not installed"),
    ),
]

Run = Callable[[Coroutine[Any, Any, T]], T]


@pytest.fixture(params=LOOPS)
def run(request: pytest.FixtureRequest) -> Run[Any]:
    """Runs a coroutine to completion on a fresh loop of the parametrised kind, then closes it."""
    factory: Callable[[], asyncio.AbstractEventLoop] = request.param

    def run_(coro: Coroutine[Any, Any, T]) -> T:
        loop = factory()
        try:
            return loop.run_until_complete(asyncio.wait_for(coro, GUARD))
        finally:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    return run_


def make(impl: ModuleType, capacity: int = 1000, policy: str = "reject-new", **kw: Any) -> AsyncQueue:
    kw.setdefault("id_prefix", "q")
    return AsyncQueue.wrap(impl.Queue(capacity, policy, **kw))


class Stepped:
    """Awaits a coroutine and counts how many times the event loop resumed it."""

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self.coro = coro
        self.resumptions = 0

    def __await__(self) -> Generator[Any, Any, Any]:
        send: Any = None
        throw: BaseException | None = None
        while True:
            self.resumptions += 1
            try:
                yielded = self.coro.send(send) if throw is None else self.coro.throw(throw)
            except StopIteration as stop:
                return stop.value
            send, throw = None, None
            try:
                send = yield yielded
            except BaseException as exc:  # noqa: BLE001 - forwarded into the coroutine
                throw = exc


async def _await(aw: Awaitable[T]) -> T:
    return await aw


def spawn(aw: Awaitable[T]) -> asyncio.Task[T]:
    return asyncio.ensure_future(_await(aw))


async def settle(rounds: int = 20) -> None:
    """Let every ready callback run a few times over."""
    for _ in range(rounds):
        await asyncio.sleep(0)


def balanced(q: AsyncQueue) -> bool:
    m = q.metrics()
    return m.accepted == m.dequeued + m.cancelled + m.evicted + m.drained + m.depth


# ---------------------------------------------------------------------------------------
# Waking without polling


def test_waiter_sleeps_until_an_enqueue_from_another_task(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        waiting = Stepped(q.dequeue())
        task = spawn(waiting)
        await settle()
        await asyncio.sleep(0.05)  # real time passes: a polling waiter would be resumed here
        await settle()
        assert waiting.resumptions == 1  # parked once, never resumed since
        assert not task.done()
        assert q.waiting() == 1

        async def producer() -> Any:
            return q.enqueue(impl.Task("m", 1))

        res = await asyncio.ensure_future(producer())
        job = await task
        assert job.job_id == res.job_id
        assert waiting.resumptions == 2  # one wake-up, one job
        assert q.waiting() == 0
        assert balanced(q)

    run(main())


def test_waiter_is_woken_by_an_enqueue_from_another_thread(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        waiting = Stepped(q.dequeue_many(8))
        task = spawn(waiting)
        await settle()
        assert waiting.resumptions == 1 and q.waiting() == 1
        results: list[Any] = []
        thread = threading.Thread(target=lambda: results.append(q.enqueue(impl.Task("m", 1))))
        thread.start()
        jobs = await task
        thread.join()
        assert [j.job_id for j in jobs] == [results[0].job_id]
        assert waiting.resumptions == 2

    run(main())


def test_waiters_on_other_loops_in_other_threads_are_woken(impl: ModuleType, run: Run[Any]) -> None:
    q = make(impl)
    got: list[Any] = []
    ready = threading.Barrier(3)

    def consumer() -> None:
        async def wait() -> Any:
            task = asyncio.ensure_future(q.dequeue())
            await settle()
            ready.wait()
            return await asyncio.wait_for(task, GUARD)

        got.append(asyncio.run(wait()))

    threads = [threading.Thread(target=consumer) for _ in range(2)]
    for th in threads:
        th.start()
    ready.wait()  # both consumers are parked on their own loops (they register before the barrier)
    assert q.waiting() == 2

    async def produce() -> list[Any]:
        return [q.enqueue(impl.Task("m", 1)) for _ in range(2)]

    res = run(produce())
    for th in threads:
        th.join()
    assert sorted(j.job_id for j in got) == sorted(r.job_id for r in res)


def test_no_thread_per_waiter(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        before = threading.active_count()
        tasks = [asyncio.ensure_future(q.dequeue()) for _ in range(200)]
        await settle()
        assert q.waiting() == 200
        assert threading.active_count() == before
        ids = [q.enqueue(impl.Task("m", 1)).job_id for _ in range(200)]
        jobs = await asyncio.gather(*tasks)
        assert sorted(j.job_id for j in jobs) == sorted(ids)

    run(main())


def test_waiters_are_served_first_come_first_served(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        order: list[int] = []

        async def waiter(i: int) -> None:
            await q.dequeue()
            order.append(i)

        tasks = []
        for i in range(5):
            tasks.append(asyncio.ensure_future(waiter(i)))
            await settle(2)
        for _ in range(5):
            q.enqueue(impl.Task("m", 1))
            await settle(4)
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]

    run(main())


# ---------------------------------------------------------------------------------------
# Cancellation loses no job


def test_cancelled_woken_waiter_passes_the_job_to_the_next(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        first = asyncio.ensure_future(q.dequeue())
        await settle()
        second = asyncio.ensure_future(q.dequeue_many(4))
        await settle()
        assert q.waiting() == 2
        res = q.enqueue(impl.Task("m", 1))  # wakes `first`...
        assert q.waiting() == 1
        first.cancel()  # ...which is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await first
        jobs = await second
        assert [j.job_id for j in jobs] == [res.job_id]
        assert q.waiting() == 0 and q.depth() == 0
        assert balanced(q)

    run(main())


def test_cancelled_last_waiter_leaves_the_job_queued(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        only = asyncio.ensure_future(q.dequeue())
        await settle()
        res = q.enqueue(impl.Task("m", 1))
        only.cancel()
        with pytest.raises(asyncio.CancelledError):
            await only
        assert q.waiting() == 0
        assert q.snapshot() == [res.job_id]
        job = await q.dequeue()
        assert job is not None and job.job_id == res.job_id
        assert balanced(q)

    run(main())


def test_cancelled_sleeping_waiter_unregisters(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(q.dequeue(), 0.01)  # cancelled by wait_for while parked
        assert q.waiting() == 0
        res = q.enqueue(impl.Task("m", 1))
        assert q.snapshot() == [res.job_id]  # nobody took it

    run(main())


@pytest.mark.parametrize("seed", range(5))
def test_cancellations_racing_enqueues_from_a_thread_lose_no_job(impl: ModuleType, run: Run[Any], seed: int) -> None:
    rng = random.Random(seed)
    n_jobs = 300

    async def main() -> None:
        q = make(impl, capacity=n_jobs)
        received: list[str] = []
        produced: list[str] = []

        async def consumer() -> None:
            while True:
                jobs = await q.dequeue_many(rng.choice([1, 1, 3]))
                if not jobs:
                    return
                received.extend(j.job_id for j in jobs)

        def producer() -> None:
            for _ in range(n_jobs):
                res = q.enqueue(impl.Task("m", 1))
                produced.append(res.job_id)

        consumers = [asyncio.ensure_future(consumer()) for _ in range(8)]
        await settle()
        thread = threading.Thread(target=producer)
        thread.start()
        # Keep cancelling and replacing consumers while the producer runs.
        while thread.is_alive():
            victim = rng.randrange(len(consumers))
            consumers[victim].cancel()
            consumers[victim] = asyncio.ensure_future(consumer())
            await asyncio.sleep(0)
        thread.join()
        # Every accepted job is received once, or still queued and then taken.
        while len(received) + q.depth() < n_jobs:
            await asyncio.sleep(0)
        while len(received) < n_jobs:
            await asyncio.sleep(0)
        q.close()
        await asyncio.gather(*consumers, return_exceptions=True)
        assert sorted(received) == sorted(produced)
        assert len(set(received)) == n_jobs
        assert q.depth() == 0 and q.waiting() == 0
        assert balanced(q)

    run(main())


# ---------------------------------------------------------------------------------------
# close, timeouts, many waiters


def test_close_wakes_every_waiter(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        singles = [asyncio.ensure_future(q.dequeue()) for _ in range(5)]
        batches = [asyncio.ensure_future(q.dequeue_many(3)) for _ in range(3)]
        await settle()
        assert q.waiting() == 8
        q.close()
        assert await asyncio.gather(*singles) == [None] * 5
        assert await asyncio.gather(*batches) == [[]] * 3
        assert q.waiting() == 0
        assert await q.dequeue() is None  # closed and empty: no wait at all
        assert q.enqueue(impl.Task("m", 1)).reason is RejectionReason.QUEUE_CLOSED

    run(main())


def test_close_from_another_thread_wakes_waiters(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        tasks = [asyncio.ensure_future(q.dequeue()) for _ in range(3)]
        await settle()
        thread = threading.Thread(target=q.close)
        thread.start()
        assert await asyncio.gather(*tasks) == [None] * 3
        thread.join()

    run(main())


def test_closed_queue_hands_out_what_is_left_then_ends_iteration(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        ids = [q.enqueue(impl.Task("m", 1)).job_id for _ in range(5)]
        q.close()
        first = await q.dequeue_many(2)
        rest = [job.job_id async for job in q]
        assert [j.job_id for j in first] + rest == ids
        assert await q.dequeue_many(2) == []

    run(main())


def test_async_iteration_follows_the_producer(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)

        async def produce() -> list[str]:
            ids = []
            for _ in range(10):
                ids.append(q.enqueue(impl.Task("m", 1)).job_id)
                await asyncio.sleep(0)
            q.close()
            return ids

        producer = asyncio.ensure_future(produce())
        got = [job.job_id async for job in q]
        assert got == await producer

    run(main())


def test_timeouts_return_nothing_and_unregister(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        assert await q.dequeue(timeout=0.01) is None
        assert await q.dequeue_many(3, timeout=0.01) == []
        assert q.waiting() == 0
        waiting = Stepped(q.dequeue(timeout=0))
        assert await waiting is None
        assert waiting.resumptions == 1  # timeout=0 never suspends
        res = q.enqueue(impl.Task("m", 1))
        job = await q.dequeue(timeout=0.01)
        assert job is not None and job.job_id == res.job_id

    run(main())


def test_timed_waiter_still_gets_a_job_that_arrives_in_time(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        task = asyncio.ensure_future(q.dequeue(timeout=GUARD))
        await settle()
        res = q.enqueue(impl.Task("m", 1))
        job = await task
        assert job is not None and job.job_id == res.job_id

    run(main())


def test_bad_arguments_raise_naming_the_parameter(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        q.enqueue(impl.Task("m", 1))  # even with a job queued, a bad argument is an error
        with pytest.raises(ValueError, match="timeout must be >= 0 seconds or None, got -1"):
            await q.dequeue(timeout=-1)
        with pytest.raises(TypeError, match="timeout must be a number of seconds or None, got '1'"):
            await q.dequeue(timeout="1")  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_jobs must be a positive int, got 0"):
            await q.dequeue_many(0)
        assert q.depth() == 1

    run(main())


@pytest.mark.parametrize("batch", [1, 4])
def test_many_waiters_get_distinct_jobs(impl: ModuleType, run: Run[Any], batch: int) -> None:
    async def main() -> None:
        q = make(impl)
        n_jobs = 500
        received: list[str] = []

        async def consumer() -> None:
            while True:
                jobs = await q.dequeue_many(batch) if batch > 1 else [await q.dequeue()]
                jobs = [j for j in jobs if j is not None]
                if not jobs:
                    return
                received.extend(j.job_id for j in jobs)
                await asyncio.sleep(0)

        consumers = [asyncio.ensure_future(consumer()) for _ in range(50)]
        await settle()
        produced = []
        for i in range(n_jobs):
            produced.append(q.enqueue(impl.Task("m", 1, priority="batch" if i % 2 else "interactive")).job_id)
            if i % 7 == 0:
                await asyncio.sleep(0)
        while len(received) < n_jobs:
            await asyncio.sleep(0)
        q.close()
        await asyncio.gather(*consumers)
        assert sorted(received) == sorted(produced)
        assert len(set(received)) == n_jobs
        assert balanced(q)

    run(main())


# ---------------------------------------------------------------------------------------
# Construction and delegation


def test_constructor_and_wrap(impl: ModuleType, clock: Any) -> None:
    q = AsyncQueue(3, "drop-lru", pool_id="pool-9", clock=clock, max_tokens_limit=50, id_prefix="z")
    assert (q.capacity(), q.policy.value, q.pool_id, q.id_prefix) == (3, "drop-lru", "pool-9", "z")
    assert q.enqueue(Task("m", 51)).reason is RejectionReason.POLICY_VIOLATION
    assert q.enqueue(Task("m", 50)).job_id == "z-1"
    assert AsyncQueue.wrap(q.queue) is q
    raw = impl.Queue(2, id_prefix="w")
    wrapped = AsyncQueue.wrap(raw)
    assert wrapped.queue is raw
    assert AsyncQueue.wrap(raw) is wrapped  # one set of waiters per queue
    with pytest.raises(TypeError, match="queue must be an orchestrator_core Queue, got 'nope'"):
        AsyncQueue.wrap("nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="capacity"):
        AsyncQueue(0)


def test_wrapper_registry_forgets_dropped_wrappers(impl: ModuleType) -> None:
    raw = impl.Queue(2)
    first = AsyncQueue.wrap(raw)
    ref = weakref.ref(first)
    del first
    gc.collect()
    assert ref() is None  # the registry does not keep wrappers alive
    again = AsyncQueue.wrap(raw)
    assert again.queue is raw and AsyncQueue.wrap(raw) is again


def test_everything_else_is_the_queues(impl: ModuleType, clock: Any, run: Run[Any]) -> None:
    q = make(impl, capacity=4, policy="drop-lru", clock=clock, pool_id="p")
    a = q.enqueue(impl.Task("m", 1, priority="batch")).job_id
    b = q.enqueue(impl.Task("m", 1, priority="batch")).job_id
    c = q.enqueue(impl.Task("m", 1)).job_id
    assert (q.depth(), len(q)) == (3, 3)
    assert a in q and "nope" not in q
    assert q.position(c) == 0 and q.position(a) == 1 and q.position("nope") is None
    assert q.snapshot() == [c, a, b]
    assert q.snapshot("batch") == [a, b]
    assert q.touch(a) is True
    assert q.lru_order("batch") == [b, a]
    assert q.cancel(b) is True and q.cancel(b) is False
    assert q.metrics().cancelled == 1
    assert q.dequeue_nowait().job_id == c  # type: ignore[union-attr]
    assert [j.job_id for j in q.dequeue_many_nowait(5)] == [a]
    assert q.dequeue_nowait() is None
    d = q.enqueue(impl.Task("m", 1)).job_id
    assert [j.job_id for j in q.drain()] == [d]
    assert q.depth() == 0
    assert q.closed is False
    q.close()
    assert q.closed is True and q.queue.closed is True
    assert "AsyncQueue" in repr(q) and "waiting=0" in repr(q)
    m = q.metrics()
    assert (m.pool_id, m.accepted, m.dequeued, m.cancelled, m.drained) == ("p", 4, 2, 1, 1)


def test_a_lone_waiter_never_misses_a_job_from_a_thread(impl: ModuleType, run: Run[Any]) -> None:
    # One consumer, so no other waiter's wake-up can cover for a missed one: each round a
    # thread enqueues one job while the consumer is between looking and parking.
    async def main() -> None:
        q = make(impl)
        for i in range(300):
            thread = threading.Thread(target=q.enqueue, args=(impl.Task("m", 1),))
            if i % 2:
                thread.start()
                job = await asyncio.wait_for(q.dequeue(), GUARD)
            else:
                waiting = asyncio.ensure_future(q.dequeue())
                await asyncio.sleep(0)
                thread.start()
                job = await asyncio.wait_for(waiting, GUARD)
            thread.join()
            assert job is not None
        assert q.depth() == 0 and q.waiting() == 0
        assert balanced(q)

    run(main())
