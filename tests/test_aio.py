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


# ---------------------------------------------------------------------------------------
# Issue 10 through the asyncio face: options, eta_ms, take_expired


def test_constructor_forwards_the_issue_10_options(impl: ModuleType, clock: Any) -> None:
    q = AsyncQueue(
        5,
        "reject-new",
        clock=clock,
        id_prefix="n",
        max_wait_ms=500,
        admit_only_feasible=True,
        max_queued_per_tenant=1,
        max_queued_tokens=100,
    )
    assert (q.max_wait_ms, q.admit_only_feasible, q.max_queued_per_tenant, q.max_queued_tokens) == (
        500,
        True,
        1,
        100,
    )
    assert q.enqueue(Task("m", 1, tenant="acme")).accepted
    assert q.enqueue(Task("m", 1, tenant="acme")).reason is RejectionReason.POLICY_VIOLATION  # tenant cap
    assert q.enqueue(Task("m", 101)).reason is RejectionReason.POLICY_VIOLATION  # over the token budget
    clock.advance(1.0)  # past the queue's default deadline
    assert [j.task.tenant for j in q.take_expired()] == ["acme"]
    plain = make(impl)
    assert (plain.max_wait_ms, plain.admit_only_feasible, plain.max_queued_per_tenant, plain.max_queued_tokens) == (
        None,
        False,
        None,
        None,
    )
    with pytest.raises(ValueError, match="max_queued_tokens"):
        AsyncQueue(5, max_queued_tokens=0)


def test_eta_ms_and_take_expired_are_the_queues(impl: ModuleType, clock: Any) -> None:
    q = make(impl, clock=clock)
    ids = [q.enqueue(impl.Task("m", 1)).job_id for _ in range(4)]
    assert q.eta_ms(ids[1]) is None  # no dequeue rate measured yet
    assert q.dequeue_nowait() is not None
    clock.advance(1.0)  # one completed second with one dequeue: 1000 ms per job
    assert [q.eta_ms(i) for i in ids[1:]] == [0.0, 1000.0, 2000.0]
    assert q.eta_ms(ids[3]) == q.queue.eta_ms(ids[3])
    assert q.eta_ms("nope") is None
    with pytest.raises(ValueError, match="job_id"):
        q.eta_ms("")
    late = q.enqueue(impl.Task("m", 1, max_wait_ms=100)).job_id
    assert q.take_expired() == []
    clock.advance(0.5)
    expired = q.take_expired()
    assert [j.job_id for j in expired] == [late]
    assert expired[0].wait_ms == pytest.approx(500.0)
    assert q.take_expired() == []
    assert q.metrics().expired == 1 and late not in q


# ---------------------------------------------------------------------------------------
# put: the admission wait on the event loop


def _full(impl: ModuleType, policy: str, **kw: Any) -> tuple[AsyncQueue, str]:
    """A queue of capacity 1 holding one job (with a deadline, for take_expired)."""
    q = make(impl, capacity=1, policy=policy, **kw)
    return q, q.enqueue(impl.Task("m", 1, max_wait_ms=500, priority="batch")).job_id


async def _room_by_dequeue(q: AsyncQueue, job_id: str, clock: Any) -> None:
    assert (await q.dequeue()).job_id == job_id  # type: ignore[union-attr]


async def _room_by_dequeue_many(q: AsyncQueue, job_id: str, clock: Any) -> None:
    assert [j.job_id for j in await q.dequeue_many(4)] == [job_id]


async def _room_by_dequeue_nowait(q: AsyncQueue, job_id: str, clock: Any) -> None:
    assert q.dequeue_nowait().job_id == job_id  # type: ignore[union-attr]


async def _room_by_dequeue_many_nowait(q: AsyncQueue, job_id: str, clock: Any) -> None:
    assert [j.job_id for j in q.dequeue_many_nowait(4)] == [job_id]


async def _room_by_cancel(q: AsyncQueue, job_id: str, clock: Any) -> None:
    assert q.cancel(job_id) is True


async def _room_by_drain(q: AsyncQueue, job_id: str, clock: Any) -> None:
    assert [j.job_id for j in q.drain()] == [job_id]


async def _room_by_take_expired(q: AsyncQueue, job_id: str, clock: Any) -> None:
    clock.advance(1.0)  # the job's 500 ms deadline passes: take_expired sweeps it out
    assert [j.job_id for j in q.take_expired()] == [job_id]


async def _room_by_a_thread(q: AsyncQueue, job_id: str, clock: Any) -> None:
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(q.dequeue_nowait()))
    thread.start()
    thread.join()
    assert got[0].job_id == job_id


ROOM_MAKERS = [
    _room_by_dequeue,
    _room_by_dequeue_many,
    _room_by_dequeue_nowait,
    _room_by_dequeue_many_nowait,
    _room_by_cancel,
    _room_by_drain,
    _room_by_take_expired,
    _room_by_a_thread,
]


@pytest.mark.parametrize("make_room", ROOM_MAKERS, ids=lambda f: f.__name__.removeprefix("_room_by_"))
@pytest.mark.parametrize("policy", ["reject-new", "drop-lru", "fail-fast"])
def test_put_waits_for_room_and_is_woken_once(
    impl: ModuleType, clock: Any, run: Run[Any], policy: str, make_room: Callable[..., Awaitable[None]]
) -> None:
    async def main() -> None:
        q, first = _full(impl, policy, clock=clock)
        waiting = Stepped(q.put(impl.Task("m", 1, job_id="mine"), wait=None))
        task = spawn(waiting)
        await settle()
        assert not task.done() and q.waiting_for_room() == 1
        assert q.snapshot() == [first]  # nothing evicted, nothing admitted while it waits
        await make_room(q, first, clock)
        res = await task
        assert res.accepted and res.job_id == "mine" and res.position == 0 and res.evicted is None
        assert waiting.resumptions == 2  # parked once, woken once: no polling
        assert q.waiting_for_room() == 0 and q.snapshot() == ["mine"]
        m = q.metrics()
        assert m.evicted == 0 and sum(m.rejected.values()) == 0  # waiting is not refusing
        assert m.accepted == m.dequeued + m.cancelled + m.evicted + m.drained + m.expired + m.depth

    run(main())


def test_put_with_room_never_suspends_and_wakes_a_consumer(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl, capacity=2)
        consumer = asyncio.ensure_future(q.dequeue())
        await settle()
        putting = Stepped(q.put(impl.Task("m", 1), wait=None))
        res = await putting
        assert res.accepted and putting.resumptions == 1
        job = await consumer
        assert job is not None and job.job_id == res.job_id
        assert q.waiting() == 0 and q.waiting_for_room() == 0

    run(main())


def test_a_put_that_waited_wakes_a_consumer(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q, first = _full(impl, "reject-new")
        putting = asyncio.ensure_future(q.put(impl.Task("m", 1, job_id="mine")))
        await settle()
        assert (await q.dequeue()).job_id == first  # type: ignore[union-attr]
        consumer = asyncio.ensure_future(q.dequeue())  # parks before the woken put runs
        res = await putting
        assert res.accepted
        job = await consumer
        assert job is not None and job.job_id == "mine"

    run(main())


def test_put_timing_out_is_refused_by_reject_new_and_fail_fast(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        for policy in ("reject-new", "fail-fast"):
            q, first = _full(impl, policy)
            res = await q.put(impl.Task("m", 1), wait=0.01)
            assert not res.accepted and res.reason is RejectionReason.QUEUE_FULL and res.retriable
            assert "is full (1)" in res.message
            assert q.snapshot() == [first] and q.waiting_for_room() == 0
            assert q.metrics().rejected[RejectionReason.QUEUE_FULL] == 1  # the final refusal only
        # FAIL_FAST also waits while a job is ahead (room, but not next in line).
        q = make(impl, capacity=5, policy="fail-fast")
        first = q.enqueue(impl.Task("m", 1)).job_id
        res = await q.put(impl.Task("m", 1), wait=0.01)
        assert res.reason is RejectionReason.QUEUE_FULL and "fail-fast: 1 job(s) queued ahead" in res.message
        putting = asyncio.ensure_future(q.put(impl.Task("m", 1, job_id="mine")))
        await settle()
        assert q.waiting_for_room() == 1
        assert (await q.dequeue()).job_id == first  # type: ignore[union-attr]
        res = await putting
        assert res.accepted and res.position == 0

    run(main())


def test_put_under_drop_lru_evicts_only_when_the_wait_ends(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q, first = _full(impl, "drop-lru")
        # A put that waits without end evicts nothing while it waits (closed: refused, nothing lost).
        parked = asyncio.ensure_future(q.put(impl.Task("m", 1), wait=None))
        await settle()
        assert q.waiting_for_room() == 1 and q.snapshot() == [first] and q.metrics().evicted == 0
        # One whose wait runs out decides by the policy: it evicts then.
        res = await q.put(impl.Task("m", 1, job_id="late"), wait=0.01)
        assert res.accepted and res.evicted is not None and res.evicted.job_id == first
        assert q.snapshot() == ["late"] and q.metrics().evicted == 1
        q.close()
        closed = await parked
        assert closed.reason is RejectionReason.QUEUE_CLOSED
        assert q.snapshot() == ["late"] and q.metrics().evicted == 1

    run(main())


def test_put_sees_room_made_behind_its_back_when_its_wait_ends(impl: ModuleType, run: Run[Any]) -> None:
    # Documented limitation: a dequeue on the wrapped Queue does not wake the put; its last
    # attempt (when the wait ends) finds the room and admits without refusing.
    async def main() -> None:
        q, first = _full(impl, "reject-new")
        putting = asyncio.ensure_future(q.put(impl.Task("m", 1, job_id="mine"), wait=0.1))
        await asyncio.sleep(0)  # the put tries, is refused and parks
        assert q.waiting_for_room() == 1
        assert q.queue.dequeue().job_id == first  # type: ignore[union-attr]
        assert q.waiting_for_room() == 1  # not woken
        res = await putting
        assert res.accepted and q.snapshot() == ["mine"]
        assert sum(q.metrics().rejected.values()) == 0

    run(main())


def test_put_waits_for_token_room(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl, capacity=10, max_queued_tokens=10)
        big = q.enqueue(impl.Task("m", 8)).job_id
        putting = asyncio.ensure_future(q.put(impl.Task("m", 5, job_id="mine")))
        await settle()
        assert q.waiting_for_room() == 1 and q.snapshot() == [big]
        assert (await q.dequeue()).job_id == big  # type: ignore[union-attr]
        res = await putting
        assert res.accepted and q.metrics().queued_tokens == 5
        assert sum(q.metrics().rejected.values()) == 0
        evicting = make(impl, capacity=10, policy="drop-lru", max_queued_tokens=10)
        big = evicting.enqueue(impl.Task("m", 8)).job_id
        res = await evicting.put(impl.Task("m", 5), wait=0.01)
        assert res.accepted and res.evicted is not None and res.evicted.job_id == big

    run(main())


def test_put_waits_out_an_unmeetable_deadline(impl: ModuleType, clock: Any, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl, capacity=10, clock=clock, admit_only_feasible=True)
        for _ in range(4):
            q.enqueue(impl.Task("m", 1))
        assert q.dequeue_nowait() is not None
        clock.advance(1.0)  # a measured rate: 1000 ms per job, 3 ahead, deadline 1 ms
        assert q.enqueue(impl.Task("m", 1, max_wait_ms=1)).reason is RejectionReason.DEADLINE_UNMEETABLE
        putting = asyncio.ensure_future(q.put(impl.Task("m", 1, max_wait_ms=1, job_id="mine")))
        await settle()
        assert q.waiting_for_room() == 1 and "mine" not in q
        assert len(await q.dequeue_many(3)) == 3  # nobody ahead: nothing to predict
        res = await putting
        assert res.accepted and res.position == 0

    run(main())


@pytest.mark.parametrize("from_thread", [False, True], ids=["loop", "thread"])
def test_close_wakes_waiting_puts_with_queue_closed(impl: ModuleType, run: Run[Any], from_thread: bool) -> None:
    async def main() -> None:
        q, first = _full(impl, "drop-lru")
        puts = [asyncio.ensure_future(q.put(impl.Task("m", 1), wait=w)) for w in (None, GUARD, None)]
        await settle()
        assert q.waiting_for_room() == 3
        if from_thread:
            thread = threading.Thread(target=q.close)
            thread.start()
            results = await asyncio.gather(*puts)
            thread.join()
        else:
            q.close()
            results = await asyncio.gather(*puts)
        assert [r.reason for r in results] == [RejectionReason.QUEUE_CLOSED] * 3
        assert q.waiting_for_room() == 0 and q.snapshot() == [first] and q.metrics().evicted == 0
        again = Stepped(q.put(impl.Task("m", 1), wait=None))
        assert (await again).reason is RejectionReason.QUEUE_CLOSED and again.resumptions == 1

    run(main())


@pytest.mark.parametrize("policy", ["reject-new", "drop-lru"])
def test_cancelled_put_admits_nothing_and_leaves_nothing(impl: ModuleType, run: Run[Any], policy: str) -> None:
    async def main() -> None:
        q, first = _full(impl, policy)
        putting = asyncio.ensure_future(q.put(impl.Task("m", 1, job_id="mine"), wait=None))
        await settle()
        assert q.waiting_for_room() == 1
        putting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await putting
        assert q.waiting_for_room() == 0
        with pytest.raises(asyncio.TimeoutError):  # cancelled by wait_for while parked
            await asyncio.wait_for(q.put(impl.Task("m", 1, job_id="mine"), wait=GUARD), 0.01)
        assert q.waiting_for_room() == 0
        assert q.dequeue_nowait().job_id == first  # type: ignore[union-attr]
        await settle()
        assert "mine" not in q and q.depth() == 0
        m = q.metrics()
        assert (m.accepted, m.evicted, sum(m.rejected.values())) == (1, 0, 0)

    run(main())


def test_cancelled_woken_put_leaves_the_room_to_the_next(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q, first = _full(impl, "reject-new")
        a = asyncio.ensure_future(q.put(impl.Task("m", 1, job_id="a")))
        await settle()
        b = asyncio.ensure_future(q.put(impl.Task("m", 1, job_id="b")))
        await settle()
        assert q.waiting_for_room() == 2
        assert q.dequeue_nowait().job_id == first  # type: ignore[union-attr]  # wakes both...
        a.cancel()  # ...and the first is cancelled before it runs
        with pytest.raises(asyncio.CancelledError):
            await a
        res = await b
        assert res.accepted and q.snapshot() == ["b"] and q.waiting_for_room() == 0

    run(main())


def test_waiting_puts_are_admitted_in_arrival_order(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q, first = _full(impl, "reject-new")
        puts = []
        for i in range(5):
            puts.append(asyncio.ensure_future(q.put(impl.Task("m", 1, job_id=f"p{i}"))))
            await settle(2)
        assert q.waiting_for_room() == 5
        order = []
        for _ in range(6):
            order.append(q.dequeue_nowait().job_id)  # type: ignore[union-attr]
            await settle(4)
        assert order == [first, "p0", "p1", "p2", "p3", "p4"]
        assert all(r.accepted for r in await asyncio.gather(*puts))

    run(main())


def test_put_wait_zero_is_enqueue(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q, first = _full(impl, "reject-new")
        refusing = Stepped(q.put(impl.Task("m", 1), wait=0))
        assert (await refusing).reason is RejectionReason.QUEUE_FULL and refusing.resumptions == 1
        d, first = _full(impl, "drop-lru")
        evicting = Stepped(d.put(impl.Task("m", 1), wait=0.0))
        res = await evicting
        assert res.evicted.job_id == first and evicting.resumptions == 1

    run(main())


def test_put_gets_a_non_retriable_refusal_at_once(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q, first = _full(impl, "drop-lru")
        dup = Stepped(q.put(impl.Task("m", 1, job_id=first), wait=None))  # full, and a duplicate
        assert (await dup).reason is RejectionReason.INVALID_REQUEST and dup.resumptions == 1
        roomy = make(impl, capacity=5, max_tokens_limit=10, max_queued_per_tenant=1)
        over = Stepped(roomy.put(impl.Task("m", 11), wait=None))
        assert (await over).reason is RejectionReason.POLICY_VIOLATION and over.resumptions == 1
        assert roomy.enqueue(impl.Task("m", 1, tenant="acme")).accepted
        capped = Stepped(roomy.put(impl.Task("m", 1, tenant="acme"), wait=None))
        assert (await capped).reason is RejectionReason.POLICY_VIOLATION and capped.resumptions == 1
        assert q.waiting_for_room() == 0 and roomy.waiting_for_room() == 0

    run(main())


def test_put_bad_arguments_raise_naming_the_parameter(impl: ModuleType, run: Run[Any]) -> None:
    async def main() -> None:
        q = make(impl)
        with pytest.raises(ValueError, match=r"wait must be >= 0 seconds or None, got -1\b"):
            await q.put(impl.Task("m", 1), wait=-1)
        with pytest.raises(ValueError, match="wait must be >= 0 seconds or None, got nan"):
            await q.put(impl.Task("m", 1), wait=float("nan"))
        with pytest.raises(TypeError, match="wait must be a number of seconds or None, got '1'"):
            await q.put(impl.Task("m", 1), wait="1")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="task must be a Task, got 'nope' \\(str\\)"):
            await q.put("nope")  # type: ignore[arg-type]
        assert q.depth() == 0 and q.waiting_for_room() == 0
        assert sum(q.metrics().rejected.values()) == 0

    run(main())


@pytest.mark.parametrize("seed", range(3))
def test_producers_and_consumers_lose_nothing(impl: ModuleType, run: Run[Any], seed: int) -> None:
    rng = random.Random(seed)
    n_producers, per_producer = 8, 25

    async def main() -> None:
        q = make(impl, capacity=3, policy=rng.choice(["reject-new", "drop-lru"]))
        admitted: list[str] = []
        received: list[str] = []

        async def producer(p: int) -> None:
            for i in range(per_producer):
                res = await q.put(impl.Task("m", 1, job_id=f"{p}-{i}"), wait=None)
                assert res.accepted and res.evicted is None  # no end to the wait: never evicts
                admitted.append(res.job_id)
                if rng.random() < 0.3:
                    await asyncio.sleep(0)

        async def consumer() -> None:
            while True:
                jobs = await q.dequeue_many(rng.choice([1, 2]))
                if not jobs:
                    return
                received.extend(j.job_id for j in jobs)
                if rng.random() < 0.5:
                    await asyncio.sleep(0)

        consumers = [asyncio.ensure_future(consumer()) for _ in range(3)]
        await asyncio.gather(*(producer(p) for p in range(n_producers)))
        while len(received) < n_producers * per_producer:
            await asyncio.sleep(0)
        q.close()
        await asyncio.gather(*consumers)
        assert sorted(received) == sorted(admitted) and len(set(received)) == n_producers * per_producer
        assert q.waiting_for_room() == 0 and q.waiting() == 0
        m = q.metrics()
        assert (m.evicted, sum(m.rejected.values())) == (0, 0)
        assert balanced(q)

    run(main())


@pytest.mark.parametrize("seed", range(3))
def test_cancelled_puts_racing_a_consumer_thread_admit_nothing(impl: ModuleType, run: Run[Any], seed: int) -> None:
    rng = random.Random(seed)

    async def main() -> None:
        q = make(impl, capacity=2)
        received: list[str] = []
        stop = threading.Event()

        def consumer() -> None:
            while not stop.is_set() or q.depth():
                job = q.dequeue_nowait()
                if job is not None:
                    received.append(job.job_id)

        outcomes: dict[str, bool] = {}  # job id -> its put returned Accepted

        async def producer(job_id: str) -> None:
            res = await q.put(impl.Task("m", 1, job_id=job_id), wait=None)
            outcomes[job_id] = res.accepted

        thread = threading.Thread(target=consumer)
        thread.start()
        tasks = {}
        for i in range(200):
            job_id = f"j{i}"
            tasks[job_id] = asyncio.ensure_future(producer(job_id))
            if rng.random() < 0.4:
                await asyncio.sleep(0)
            victim = rng.choice(list(tasks))
            tasks[victim].cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        stop.set()
        thread.join()
        assert all(outcomes.values())
        assert sorted(received) == sorted(outcomes)  # every admitted job taken once, no other
        assert q.waiting_for_room() == 0 and balanced(q)

    run(main())
