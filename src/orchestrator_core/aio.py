"""asyncio face of the admission queue: ``AsyncQueue``.

``AsyncQueue`` runs over the same engine as ``Queue`` (it owns one, or wraps one with
``AsyncQueue.wrap(q)``). ``enqueue`` stays synchronous and never blocks; ``await
q.dequeue()`` and ``await q.dequeue_many(n)`` suspend the calling task until work arrives,
without polling and without a thread per waiter::

    q = AsyncQueue(1000, "drop-lru", pool_id="pool-0")
    res = q.enqueue(Task("llama-3.1-8b", 256, "sess-1"))  # Accepted | Rejected, at once
    job = await q.dequeue()  # waits for work (or close)

How a wake-up travels: a waiting task parks a future in the queue's FIFO of waiters; an
``enqueue`` that is accepted resolves the first one (directly on the waiter's own loop
thread, with ``loop.call_soon_threadsafe`` from any other thread). A waiter is woken with
no job attached: it then takes work with the engine's non-blocking dequeue, so a waiter
that is cancelled after being woken takes nothing and passes its wake-up on to the next
waiter: no job is ever lost to a cancelled task. ``close()`` wakes every waiter; they
return the jobs still queued, then ``None`` (``[]`` for ``dequeue_many``).

``await q.put(task, wait=0.25)`` is the admission wait of ``Queue.enqueue(task, wait=...)``
without blocking the loop: when the queue would refuse the task with a retriable reason
(full, or its deadline unmeetable) the producer parks a future in a second set of waiters,
woken (all of them, each tries again, as in the engine) when this ``AsyncQueue`` makes room:
a ``dequeue``, ``dequeue_many``, ``cancel``, ``drain`` or ``take_expired`` that frees a place,
or ``close()`` (the producers then get ``QUEUE_CLOSED``). When the wait ends the policy
decides (``DROP_LRU`` evicts only then).

Producers should enqueue and consumers take through the ``AsyncQueue`` (from any thread):
a job enqueued on the wrapped ``Queue`` directly is only seen by a ``dequeue`` waiter at its
next wake-up, and room made on the wrapped ``Queue`` directly (its own ``dequeue``,
``cancel`` or ``drain``; jobs expiring, until ``take_expired`` hands them over) is only seen
by a ``put`` at its next wake-up or when its wait ends. ``wrap`` returns the same
``AsyncQueue`` for the same ``Queue``, so every part of a program that wraps one queue
shares one set of waiters. Everything else (``cancel``, ``touch``, ``position``,
``eta_ms``, ``take_expired``, ``metrics``, ``snapshot``, ``drain``, ``depth``, ``len``, ...)
is the wrapped queue's (``cancel``, ``drain`` and ``take_expired`` also wake ``put``). Works
on any asyncio event loop, uvloop included; waiters may sit on several loops at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib
import math
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from types import ModuleType
from typing import TypeVar

from . import Accepted, Job, Queue, Rejected, Task
from ._engine import engine as _engine
from ._stats import QueueMetrics
from ._types import AdmissionPolicy, Priority
from ._validate import check_count, check_timeout

__all__ = ["AsyncQueue"]

_get_running_loop = asyncio.events._get_running_loop
_T = TypeVar("_T")


def _engine_modules() -> tuple[ModuleType, ...]:
    from . import _core_py

    modules: list[ModuleType] = [_core_py]
    if _engine is not _core_py:
        modules.append(_engine)
    else:
        with contextlib.suppress(ImportError):
            modules.append(importlib.import_module("orchestrator_core._core_c"))
    return tuple(modules)


_ENGINES = _engine_modules()
_QUEUE_TYPES: tuple[type, ...] = tuple(m.Queue for m in _ENGINES)


def _set_if_pending(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _wake_futures(woken: list[asyncio.Future[None]]) -> int:
    """Resolve ``woken`` (on their loops); returns how many sit on closed loops."""
    running = _get_running_loop()
    lost = 0
    for fut in woken:
        loop = fut.get_loop()
        if loop is running:
            _set_if_pending(fut)
        else:
            try:
                loop.call_soon_threadsafe(_set_if_pending, fut)
            except RuntimeError:  # its loop is closed: nobody will run that waiter
                lost += 1
    return lost


class AsyncQueue:
    """An admission queue with awaitable ``dequeue`` / ``dequeue_many`` / ``put``.

    ``AsyncQueue(capacity, policy=AdmissionPolicy.REJECT_NEW, *, pool_id="default",
    clock=None, max_tokens_limit=None, id_prefix=None, max_wait_ms=None,
    admit_only_feasible=False, max_queued_per_tenant=None, max_queued_tokens=None)`` makes a
    new ``Queue`` with these arguments; ``AsyncQueue.wrap(queue)`` puts an existing one (of
    either engine) behind the asyncio face. ``enqueue`` is thread-safe and wakes waiters on
    any loop.
    """

    __slots__ = ("__weakref__", "_lock", "_probe", "_queue", "_rooms", "_task_type", "_waiters")

    _queue: Queue
    _lock: threading.Lock
    _waiters: OrderedDict[asyncio.Future[None], None]
    _rooms: dict[asyncio.Future[None], None]
    _task_type: type
    _probe: Callable[[Task], Accepted | Rejected | None]

    def __init__(
        self,
        capacity: int,
        policy: AdmissionPolicy | str = AdmissionPolicy.REJECT_NEW,
        *,
        pool_id: str = "default",
        clock: Callable[[], float] | None = None,
        max_tokens_limit: int | None = None,
        id_prefix: str | None = None,
        max_wait_ms: float | None = None,
        admit_only_feasible: bool = False,
        max_queued_per_tenant: int | None = None,
        max_queued_tokens: int | None = None,
    ) -> None:
        queue = Queue(
            capacity,
            policy,
            pool_id=pool_id,
            clock=clock,
            max_tokens_limit=max_tokens_limit,
            id_prefix=id_prefix,
            max_wait_ms=max_wait_ms,
            admit_only_feasible=admit_only_feasible,
            max_queued_per_tenant=max_queued_per_tenant,
            max_queued_tokens=max_queued_tokens,
        )
        self._attach(queue)
        with _REGISTRY_LOCK:
            _REGISTRY[id(queue)] = self

    def _attach(self, queue: Queue) -> None:
        self._queue = queue
        self._lock = threading.Lock()
        self._waiters = OrderedDict()
        self._rooms = {}
        self._task_type = next(m.Task for m in _ENGINES if isinstance(queue, m.Queue))
        # The engine's intermediate admission attempt (never evicts, counts or registers).
        self._probe = queue._try_admit

    @classmethod
    def wrap(cls, queue: Queue) -> AsyncQueue:
        """The ``AsyncQueue`` over ``queue`` (the same one on every call for the same queue)."""
        if not isinstance(queue, _QUEUE_TYPES):
            raise TypeError(f"queue must be an orchestrator_core Queue, got {queue!r} ({type(queue).__name__})")
        with _REGISTRY_LOCK:
            existing = _REGISTRY.get(id(queue))
            if existing is not None and existing._queue is queue:
                return existing
            self = cls.__new__(cls)
            self._attach(queue)
            _REGISTRY[id(queue)] = self
            return self

    @property
    def queue(self) -> Queue:
        """The wrapped ``Queue``."""
        return self._queue

    # -- admission --------------------------------------------------------------------
    def enqueue(self, task: Task) -> Accepted | Rejected:
        """Admit ``task`` or refuse it, at once (never blocks, never awaits); thread-safe.

        An accepted task wakes the longest-waiting ``dequeue``. Returns ``Accepted`` or
        ``Rejected`` like ``Queue.enqueue``.
        """
        res = self._queue.enqueue(task)
        # Reading the waiter count without our lock is safe: a waiter registers before its
        # last non-blocking dequeue, and the engine's lock orders that dequeue against this
        # enqueue, so either the waiter saw the job or we see the waiter.
        if res.accepted and self._waiters:
            self._wake_one()
        return res

    async def put(self, task: Task, wait: float | None = None) -> Accepted | Rejected:
        """Admit ``task``, waiting for room without blocking the event loop; thread-safe.

        ``Queue.enqueue(task, wait=...)`` for asyncio: when the queue would refuse the task
        with a retriable reason (full, or its deadline unmeetable) the calling task waits,
        ``wait`` seconds at most (``None``, the default: until room or close; ``0``: not at
        all, like ``enqueue``), to be woken when a ``dequeue``, ``dequeue_many``, ``cancel``,
        ``drain`` or ``take_expired`` through this ``AsyncQueue`` makes room, then tries
        again. When the wait ends the policy decides: ``Rejected`` (``QUEUE_FULL``, ...), or
        under ``DROP_LRU`` admission by eviction (only then). ``close()`` wakes it with
        ``QUEUE_CLOSED``; a non-retriable refusal comes at once. Returns ``Accepted`` or
        ``Rejected``; cancelling the awaiting task admits nothing and leaves nothing behind.
        """
        if type(task) is not self._task_type:
            raise TypeError(f"task must be a Task, got {task!r} ({type(task).__name__})")
        wait_s = check_timeout(wait, "wait")
        if wait_s == 0:
            return self.enqueue(task)
        loop = asyncio.get_running_loop()
        deadline = None if wait_s < 0 or math.isinf(wait_s) else loop.time() + wait_s
        rooms = self._rooms
        while True:
            if deadline is not None and loop.time() >= deadline:
                return self.enqueue(task)  # the last attempt decides by the policy
            fut: asyncio.Future[None] = loop.create_future()
            with self._lock:
                rooms[fut] = None
            # Registered first, then tried: room made after this attempt wakes us. (Not tried
            # once before registering: that would be two attempts for one refusal.)
            try:
                res = self._probe(task)
            except BaseException:
                with self._lock:
                    rooms.pop(fut, None)
                raise
            if res is not None:
                with self._lock:
                    rooms.pop(fut, None)
                if res.accepted and self._waiters:
                    self._wake_one()
                return res
            timer = None if deadline is None else loop.call_at(deadline, _set_if_pending, fut)
            try:
                await fut
            finally:
                # Woken or not, cancelled or not: leave nothing registered. Every waiter is
                # woken at once, so a cancelled one holds no wake-up another needs.
                if timer is not None:
                    timer.cancel()
                with self._lock:
                    rooms.pop(fut, None)

    def _room_made(self) -> None:
        """Called after a call that may have freed places: every ``put`` waiting tries again."""
        if self._rooms:
            with self._lock:
                woken = list(self._rooms)
                self._rooms.clear()
            _wake_futures(woken)

    # -- waiting ----------------------------------------------------------------------
    # A waiter is the future its task awaits, kept in ``_waiters`` (insertion order = FIFO)
    # until ``_wake`` pops it. So, under ``_lock``, "still in ``_waiters``" means "not woken".

    def _wake_one(self) -> None:
        """``_wake(1)``, the common case, without the list."""
        with self._lock:
            if not self._waiters:
                return
            fut = self._waiters.popitem(last=False)[0]
        loop = fut.get_loop()
        if loop is _get_running_loop():
            if not fut.done():
                fut.set_result(None)
            return
        try:
            loop.call_soon_threadsafe(_set_if_pending, fut)
        except RuntimeError:  # its loop is closed: nobody will run that waiter
            self._wake_one()

    def _wake(self, n: int) -> None:
        """Wake up to ``n`` waiters (all when ``n < 0``), first come first woken."""
        with self._lock:
            woken: list[asyncio.Future[None]] = []
            waiters = self._waiters
            while waiters and (n < 0 or len(woken) < n):
                woken.append(waiters.popitem(last=False)[0])
        lost = _wake_futures(woken)
        if lost and n >= 0:
            self._wake(lost)

    def _pass_on(self) -> None:
        """Called by a task that spent a wake-up and stops waiting.

        The job it was woken for may be one it did not take (it took another, several, or
        none because it was cancelled): if work is left and others wait, wake the next one.
        An extra wake-up is harmless: a waiter that finds nothing waits again, first in line.
        """
        if self._waiters and self._queue.depth():
            self._wake_one()

    async def _take(self, grab: Callable[[], _T], wait_s: float) -> _T:
        """Wait (``wait_s`` seconds, < 0 or inf: forever) until ``grab()`` gets something.

        ``grab`` is the engine's non-blocking ``dequeue`` or ``dequeue_many``; what it
        returns is falsy when the queue is empty. Ends with that (falsy) result when the
        queue is closed or the time is up.
        """
        loop = asyncio.get_running_loop()
        deadline = None if wait_s < 0 or math.isinf(wait_s) else loop.time() + wait_s
        q = self._queue
        waiters = self._waiters
        woken = False  # this call spent a wake-up
        while True:
            fut: asyncio.Future[None] = loop.create_future()
            with self._lock:
                waiters[fut] = None
                if woken:  # woken for a job somebody else took: keep our place in line
                    waiters.move_to_end(fut, last=False)
            # Registered first, then looked: an enqueue accepted after this look finds us.
            got = grab()
            self._room_made()  # it took jobs, or found the queue empty: either way there is room
            if got or q.closed or (deadline is not None and loop.time() >= deadline):
                with self._lock:
                    woken = waiters.pop(fut, True) is True or woken
                if woken:
                    self._pass_on()
                return got
            timer = None if deadline is None else loop.call_at(deadline, _set_if_pending, fut)
            try:
                await fut
            except BaseException:  # cancelled: take nothing, pass a wake-up on
                with self._lock:
                    woken = waiters.pop(fut, True) is True or woken
                if woken:
                    self._pass_on()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            with self._lock:
                woken = waiters.pop(fut, True) is True or woken  # still there: timed out
            # Look before registering again: after a wake-up there is usually a job.
            got = grab()
            self._room_made()
            if got or q.closed or (deadline is not None and loop.time() >= deadline):
                if woken:
                    self._pass_on()
                return got

    async def dequeue(self, timeout: float | None = None) -> Job | None:
        """The next job (INTERACTIVE first, FIFO within a priority), waiting for one.

        ``timeout=None`` (default) waits until a job arrives or the queue is closed and
        empty; a number waits up to that many seconds; ``0`` never waits. Returns None when
        the wait ends without a job. Cancelling the awaiting task loses no job.
        """
        wait_s = -1.0 if timeout is None else check_timeout(timeout)
        q = self._queue
        job = q.dequeue()
        self._room_made()
        if job is not None or wait_s == 0:
            return job
        return await self._take(q.dequeue, wait_s)

    async def dequeue_many(self, max_jobs: int, timeout: float | None = None) -> list[Job]:
        """Up to ``max_jobs`` jobs in dequeue order, waiting (as ``dequeue``) for the first."""
        n = check_count(max_jobs, "max_jobs")
        wait_s = -1.0 if timeout is None else check_timeout(timeout)
        q = self._queue
        jobs = q.dequeue_many(n)
        self._room_made()
        if jobs or wait_s == 0:
            return jobs
        return await self._take(functools.partial(q.dequeue_many, n), wait_s)

    def dequeue_nowait(self) -> Job | None:
        """The next job or None, without waiting (``Queue.dequeue()``)."""
        job = self._queue.dequeue()
        self._room_made()
        return job

    def dequeue_many_nowait(self, max_jobs: int) -> list[Job]:
        """Up to ``max_jobs`` jobs without waiting (``Queue.dequeue_many(max_jobs)``)."""
        jobs = self._queue.dequeue_many(max_jobs)
        self._room_made()
        return jobs

    def __aiter__(self) -> AsyncQueue:
        return self

    async def __anext__(self) -> Job:
        """``async for job in q``: every job until the queue is closed and empty."""
        job = await self.dequeue()
        if job is None:
            raise StopAsyncIteration
        return job

    def waiting(self) -> int:
        """How many ``dequeue`` / ``dequeue_many`` calls are parked waiting for a wake-up now."""
        return len(self._waiters)

    def waiting_for_room(self) -> int:
        """How many ``put`` calls are parked waiting for room now."""
        return len(self._rooms)

    def close(self) -> None:
        """Refuse further enqueues (``QUEUE_CLOSED``) and wake every waiter. Idempotent.

        Woken consumers take the jobs still queued, the rest return None (or ``[]``); waiting
        ``put`` calls return ``Rejected(QUEUE_CLOSED)``.
        """
        self._queue.close()
        self._wake(-1)
        self._room_made()

    # -- delegated to the Queue -------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        """Remove a queued job; False if it is not queued (``Queue.cancel``). Wakes ``put``."""
        if self._queue.cancel(job_id):
            self._room_made()
            return True
        return False

    def take_expired(self) -> list[Job]:
        """The jobs that expired since the last call, earliest deadline first (``Queue.take_expired``).

        Expired jobs have already left the queue; if there are any, waiting ``put`` calls try again.
        """
        jobs = self._queue.take_expired()
        if jobs:
            self._room_made()
        return jobs

    def eta_ms(self, job_id: str) -> float | None:
        """Advisory milliseconds until the jobs ahead of this one drain, or None (``Queue.eta_ms``)."""
        return self._queue.eta_ms(job_id)

    def touch(self, job_id: str) -> bool:
        """Mark a queued job as just used (``Queue.touch``)."""
        return self._queue.touch(job_id)

    def position(self, job_id: str) -> int | None:
        """Jobs ahead of this one, or None if not queued (``Queue.position``)."""
        return self._queue.position(job_id)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._queue

    def snapshot(self, priority: Priority | str | None = None) -> list[str]:
        """Queued job ids in dequeue order (``Queue.snapshot``)."""
        return self._queue.snapshot(priority)

    def lru_order(self, priority: Priority | str) -> list[str]:
        """Job ids of one class, least recently used first (``Queue.lru_order``)."""
        return self._queue.lru_order(priority)

    def metrics(self) -> QueueMetrics:
        """An immutable snapshot of counters, rates and wait percentiles (``Queue.metrics``)."""
        return self._queue.metrics()

    def drain(self) -> list[Job]:
        """Remove and return every queued job (``Queue.drain``); consumers keep waiting, ``put`` retries."""
        jobs = self._queue.drain()
        if jobs:
            self._room_made()
        return jobs

    def depth(self) -> int:
        """Jobs queued now."""
        return self._queue.depth()

    def __len__(self) -> int:
        return len(self._queue)

    def capacity(self) -> int:
        """The most jobs the queue holds."""
        return self._queue.capacity()

    @property
    def policy(self) -> AdmissionPolicy:
        """The admission policy."""
        return self._queue.policy

    @property
    def pool_id(self) -> str:
        """The worker pool this queue feeds (a label in metrics)."""
        return self._queue.pool_id

    @property
    def id_prefix(self) -> str:
        """Prefix of the job ids the queue makes."""
        return self._queue.id_prefix

    @property
    def closed(self) -> bool:
        """True once the queue is closed."""
        return self._queue.closed

    @property
    def max_wait_ms(self) -> float | None:
        """The deadline of tasks that set none (None: no default deadline)."""
        return self._queue.max_wait_ms

    @property
    def admit_only_feasible(self) -> bool:
        """True when a task whose predicted wait exceeds its deadline is refused."""
        return self._queue.admit_only_feasible

    @property
    def max_queued_per_tenant(self) -> int | None:
        """The most jobs one named tenant may have queued (None: no cap)."""
        return self._queue.max_queued_per_tenant

    @property
    def max_queued_tokens(self) -> int | None:
        """The bound on the queued jobs' tokens (None: count only)."""
        return self._queue.max_queued_tokens

    def __repr__(self) -> str:
        return f"<AsyncQueue {self._queue!r} waiting={len(self._waiters)} waiting_for_room={len(self._rooms)}>"


# id(queue) -> its AsyncQueue. Keyed by id, not by the queue, because the AsyncQueue holds
# its queue: while the AsyncQueue lives the id cannot be reused, and when it dies the entry goes.
_REGISTRY: weakref.WeakValueDictionary[int, AsyncQueue] = weakref.WeakValueDictionary()
_REGISTRY_LOCK = threading.Lock()
