# The admission engine, in pure Python: the specification of the compiled twin _core_c.pyx.
#
# Invariants (the same block heads _core_c.pyx):
#   * Two priority classes (0 = INTERACTIVE, 1 = BATCH). Each is a ring buffer of entries
#     indexed by a per-class sequence number: entry e lives at ring[e.seq & mask] while
#     head <= e.seq < tail. A cancelled or evicted entry leaves a tombstone (an empty cell)
#     inside [head, tail); ring[head] is live unless the class is empty, so a dequeue is
#     O(1). Tombstones are compacted away once they outnumber live entries (amortised O(1)).
#     The ring doubles when full and halves when a quarter full: memory follows depth.
#   * The job-id index maps every queued job id to its entry (one entry per id).
#   * Each class has an intrusive doubly linked LRU list, least recently used first:
#     enqueue and touch put an entry last; DROP_LRU evicts the first of the lowest
#     priority present.
#   * A Fenwick tree over ring cells counts tombstones, so position() is O(log n); cancel
#     only records the change (applied lazily at the next position()).
#   * depth = live(INTERACTIVE) + live(BATCH) <= capacity, and the counters balance:
#     accepted == dequeued + cancelled + evicted + drained + depth.
#   * No user code runs while the lock is held: the clock is read and every Python object
#     that can trigger the cyclic GC (entries, results, jobs) is made before the lock is
#     taken or after it is released; released tasks are dropped after it is released.
"""Pure-Python engine: the specification of the compiled engine (``_core_c``)."""

from __future__ import annotations

import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Final

from ._stats import (
    RETRY_AFTER_DEFAULT_MS,
    RETRY_AFTER_MAX_MS,
    RETRY_AFTER_MIN_MS,
    WAIT_BUCKETS,
    WINDOW_S,
    WINDOW_SLOTS,
    QueueMetrics,
    build_metrics,
)
from ._stats import (
    WAIT_BUCKET_BOUNDS_MS as _BOUNDS,
)
from ._types import AdmissionPolicy, Priority, RejectionReason
from ._validate import (
    JOB_ID_MAX_LEN,
    call_clock,
    check_count,
    check_job_id,
    check_queue_args,
    check_timeout,
    raise_task_error,
)

__all__ = ["Accepted", "Job", "Queue", "Rejected", "Task"]

_INTERACTIVE: Final = Priority.INTERACTIVE
_BATCH: Final = Priority.BATCH
_PRIORITIES: Final = (_INTERACTIVE, _BATCH)
_REJECT_NEW: Final = AdmissionPolicy.REJECT_NEW
_DROP_LRU: Final = AdmissionPolicy.DROP_LRU
_FAIL_FAST: Final = AdmissionPolicy.FAIL_FAST
_REASONS: Final = tuple(RejectionReason)

# Outcome codes of the locked part of enqueue (mirrored in _core_c.pyx).
_OK: Final = 0
_FULL: Final = 1
_DUPLICATE: Final = 2
_OVER_LIMIT: Final = 3
_CLOSED: Final = 4
_AHEAD: Final = 5  # FAIL_FAST: jobs are queued ahead of the task

_MIN_RING: Final = 8
_COMPACT_SLACK: Final = 32

_new = object.__new__
_ceil = math.ceil
_log2 = math.log2


_mono = time.monotonic


# ---------------------------------------------------------------------------------------
# Value types


class Task:
    """A request to run: what the front end admits.

    ``Task(model, max_tokens, session_id=None, *, priority=Priority.INTERACTIVE,
    job_id=None, payload=None)``. ``job_id`` lets the caller choose the id (it must not be
    queued already); ``payload`` is carried untouched. Immutable.
    """

    __slots__ = ("_model", "_max_tokens", "_session_id", "_priority", "_job_id", "_payload")
    __match_args__ = ("model", "max_tokens", "session_id")

    _model: str
    _max_tokens: int
    _session_id: str | None
    _priority: Priority
    _job_id: str | None
    _payload: Any

    def __init__(
        self,
        model: str,
        max_tokens: int,
        session_id: str | None = None,
        *,
        priority: Priority | str = Priority.INTERACTIVE,
        job_id: str | None = None,
        payload: Any = None,
    ) -> None:
        if (
            type(model) is not str
            or not model
            or type(max_tokens) is not int
            or max_tokens <= 0
            or (session_id is not None and (type(session_id) is not str or not session_id))
        ):
            raise_task_error(model, max_tokens, session_id, priority, job_id)
        if priority is _INTERACTIVE or priority is _BATCH:
            prio = priority
        elif priority == "interactive" and type(priority) is str:
            prio = _INTERACTIVE
        elif priority == "batch" and type(priority) is str:
            prio = _BATCH
        else:
            raise_task_error(model, max_tokens, session_id, priority, job_id)
        if job_id is not None:
            job_id = check_job_id(job_id)
        self._model = model
        self._max_tokens = max_tokens
        self._session_id = session_id
        self._priority = prio
        self._job_id = job_id
        self._payload = payload

    @property
    def model(self) -> str:
        """The model (or engine) the task is for."""
        return self._model

    @property
    def max_tokens(self) -> int:
        """Upper bound on generated tokens."""
        return self._max_tokens

    @property
    def session_id(self) -> str | None:
        """Conversation the task belongs to (for affinity), or None."""
        return self._session_id

    @property
    def priority(self) -> Priority:
        """Scheduling class."""
        return self._priority

    @property
    def job_id(self) -> str | None:
        """Caller-chosen job id, or None to let the queue make one."""
        return self._job_id

    @property
    def payload(self) -> Any:
        """Anything the caller wants carried along with the task."""
        return self._payload

    def __repr__(self) -> str:
        return (
            f"Task(model={self._model!r}, max_tokens={self._max_tokens!r}, session_id={self._session_id!r}, "
            f"priority={self._priority.value!r}, job_id={self._job_id!r})"
        )


class Job:
    """A queued task as it leaves the queue (dequeued, drained or evicted).

    ``wait_ms`` is the time it spent queued, fixed when it left; ``enqueued_at`` is in
    seconds on the queue's clock.
    """

    __slots__ = ("_job_id", "_task", "_enqueued_at", "_wait_ms")
    __match_args__ = ("job_id", "task")

    _job_id: str
    _task: Task
    _enqueued_at: float
    _wait_ms: float

    def __init__(self, job_id: str, task: Task, enqueued_at: float, wait_ms: float) -> None:
        self._job_id = job_id
        self._task = task
        self._enqueued_at = enqueued_at
        self._wait_ms = wait_ms

    @property
    def job_id(self) -> str:
        """The job's id (the caller's or one the queue made)."""
        return self._job_id

    @property
    def task(self) -> Task:
        """The admitted task."""
        return self._task

    @property
    def priority(self) -> Priority:
        """The task's priority."""
        return self._task._priority

    @property
    def enqueued_at(self) -> float:
        """When it was admitted, in seconds on the queue's clock."""
        return self._enqueued_at

    @property
    def wait_ms(self) -> float:
        """Milliseconds it spent queued."""
        return self._wait_ms

    def __repr__(self) -> str:
        return (
            f"Job(job_id={self._job_id!r}, model={self._task._model!r}, "
            f"priority={self._task._priority.value!r}, wait_ms={self._wait_ms:.3f})"
        )


def _make_job(job_id: str, task: Task, enqueued_at: float, wait_ms: float) -> Job:
    job = _new(Job)
    job._job_id = job_id
    job._task = task
    job._enqueued_at = enqueued_at
    job._wait_ms = wait_ms
    return job


class Accepted:
    """The task was admitted: ``job_id``, its ``position`` (0 = next) and the job it
    ``evicted`` under DROP_LRU (or None). Immutable; ``match Accepted(job_id=..)``."""

    __slots__ = ("_job_id", "_position", "_evicted")
    __match_args__ = ("job_id", "position", "evicted")
    accepted: Final = True

    _job_id: str
    _position: int
    _evicted: Job | None

    def __init__(self, job_id: str, position: int, evicted: Job | None = None) -> None:
        self._job_id = job_id
        self._position = position
        self._evicted = evicted

    @property
    def job_id(self) -> str:
        """The admitted job's id."""
        return self._job_id

    @property
    def position(self) -> int:
        """Jobs that would be dequeued before this one at admission (0 = next)."""
        return self._position

    @property
    def evicted(self) -> Job | None:
        """The job evicted to make room (DROP_LRU), to be reported to its client."""
        return self._evicted

    def __eq__(self, other: object) -> bool:
        if type(other) is not Accepted:
            return NotImplemented
        return self._job_id == other._job_id and self._position == other._position and self._evicted is other._evicted

    def __hash__(self) -> int:
        return hash((self._job_id, self._position, id(self._evicted)))

    def __repr__(self) -> str:
        return f"Accepted(job_id={self._job_id!r}, position={self._position!r}, evicted={self._evicted!r})"


class Rejected:
    """The task was refused: ``reason``, an advisory ``retry_after_ms``, whether it is
    ``retriable``, the ``policy`` in force and a human ``message``. Immutable."""

    __slots__ = ("_reason", "_retry_after_ms", "_policy", "_message")
    __match_args__ = ("reason", "retry_after_ms")
    accepted: Final = False

    _reason: RejectionReason
    _retry_after_ms: int
    _policy: AdmissionPolicy
    _message: str

    def __init__(
        self,
        reason: RejectionReason | str,
        retry_after_ms: int,
        policy: AdmissionPolicy | str,
        message: str,
    ) -> None:
        self._reason = RejectionReason.parse(reason, "reason")  # type: ignore[assignment]
        self._retry_after_ms = retry_after_ms
        self._policy = AdmissionPolicy.parse(policy, "policy")  # type: ignore[assignment]
        self._message = message

    @property
    def reason(self) -> RejectionReason:
        """Why the task was refused."""
        return self._reason

    @property
    def retry_after_ms(self) -> int:
        """Advisory back-off in milliseconds (0 when retrying cannot help)."""
        return self._retry_after_ms

    @property
    def retriable(self) -> bool:
        """True when the same task may be admitted later (``QUEUE_FULL``)."""
        return self._reason is RejectionReason.QUEUE_FULL

    @property
    def policy(self) -> AdmissionPolicy:
        """The admission policy of the queue that refused."""
        return self._policy

    @property
    def message(self) -> str:
        """A sentence for humans and logs."""
        return self._message

    def to_http(self) -> tuple[int, dict[str, str], dict[str, Any]]:
        """``(status, headers, body)`` for an HTTP front (see ``orchestrator_core.http``)."""
        from ._http import rejected_to_http

        return rejected_to_http(self)

    def __eq__(self, other: object) -> bool:
        if type(other) is not Rejected:
            return NotImplemented
        return (
            self._reason is other._reason
            and self._retry_after_ms == other._retry_after_ms
            and self._policy is other._policy
            and self._message == other._message
        )

    def __hash__(self) -> int:
        return hash((self._reason, self._retry_after_ms, self._policy, self._message))

    def __repr__(self) -> str:
        return (
            f"Rejected(reason={self._reason.value!r}, retry_after_ms={self._retry_after_ms!r}, "
            f"policy={self._policy.value!r}, message={self._message!r})"
        )


def _make_rejected(reason: RejectionReason, retry_after_ms: int, policy: AdmissionPolicy, message: str) -> Rejected:
    res = _new(Rejected)
    res._reason = reason
    res._retry_after_ms = retry_after_ms
    res._policy = policy
    res._message = message
    return res


# ---------------------------------------------------------------------------------------
# Engine internals


class _Entry:
    __slots__ = ("key", "task", "prio", "enqueued_at", "seq", "lru_prev", "lru_next")

    key: str
    task: Task
    prio: int
    enqueued_at: float
    seq: int
    lru_prev: _Entry | None
    lru_next: _Entry | None


class _Class:
    """One priority class: ring buffer, LRU list and tombstone Fenwick tree."""

    __slots__ = ("ring", "mask", "head", "tail", "live", "dead", "lru_first", "lru_last", "fen", "fen_ok", "pending")

    def __init__(self) -> None:
        self.ring: list[_Entry | None] = [None] * _MIN_RING
        self.mask = _MIN_RING - 1
        self.head = 0
        self.tail = 0
        self.live = 0
        self.dead = 0
        self.lru_first: _Entry | None = None
        self.lru_last: _Entry | None = None
        self.fen: list[int] = [0] * (_MIN_RING + 1)
        self.fen_ok = False
        self.pending: list[int] = []

    # -- ring -------------------------------------------------------------------------
    def grow(self) -> None:
        """Double the ring (it is full)."""
        # In place (no new list: nothing that could start the cyclic GC under the lock):
        # after doubling, every seq's cell under the new mask holds its entry; clear the
        # other copy.
        ring = self.ring
        cap = self.mask + 1
        ring.extend(ring)
        self.mask = mask = 2 * cap - 1
        for s in range(self.head, self.tail):
            ring[(s & mask) ^ cap] = None
        self.fen_ok = False

    def pop_head(self) -> _Entry:
        ring = self.ring
        idx = self.head & self.mask
        e = ring[idx]
        ring[idx] = None
        self.head += 1
        self.live -= 1
        self.after_head_moved()
        return e  # type: ignore[return-value]

    def remove(self, e: _Entry) -> None:
        idx = e.seq & self.mask
        self.ring[idx] = None
        self.live -= 1
        if e.seq == self.head:
            self.head += 1
            self.after_head_moved()
            return
        self.dead += 1
        if self.fen_ok:
            self._pend(idx, True)
        if self.dead > self.live + _COMPACT_SLACK:
            self._compact()

    def _pend(self, idx: int, plus: bool) -> None:
        pending = self.pending
        pending.append(2 * idx + (1 if plus else 0))
        if len(pending) > self.mask + 1:
            self.fen_ok = False
            pending.clear()

    def after_head_moved(self) -> None:
        """Skip tombstones at the head; reset or shrink the ring when it empties out."""
        ring = self.ring
        mask = self.mask
        while self.dead and ring[self.head & mask] is None:
            if self.fen_ok:
                self._pend(self.head & mask, False)
            self.head += 1
            self.dead -= 1
        if self.head == self.tail:
            # Empty: restart at 0 so cells and sequence numbers stay small.
            self.head = self.tail = 0
            self.fen_ok = False
            self.pending.clear()
        cap = mask + 1
        if cap > _MIN_RING and (self.tail - self.head) * 4 <= cap:
            self._shrink()

    def _shrink(self) -> None:
        # Halve in place: live seqs span < cap/2, so no two share a cell under the new mask.
        ring = self.ring
        half = (self.mask + 1) // 2
        for i in range(half, 2 * half):
            e = ring[i]
            if e is not None:
                ring[i - half] = e
        del ring[half:]
        self.mask = half - 1
        self.fen_ok = False
        self.pending.clear()

    def _compact(self) -> None:
        ring = self.ring
        mask = self.mask
        write = self.head
        for s in range(self.head, self.tail):
            e = ring[s & mask]
            if e is not None:
                if s != write:
                    ring[write & mask] = e
                    ring[s & mask] = None
                    e.seq = write
                write += 1
        self.tail = write
        self.dead = 0
        self.fen_ok = False
        self.pending.clear()
        cap = mask + 1
        if cap > _MIN_RING and (self.tail - self.head) * 4 <= cap:
            self._shrink()

    # -- rank -------------------------------------------------------------------------
    def _fen_sum(self, i: int) -> int:
        """Tombstones in cells [0, i)."""
        fen = self.fen
        total = 0
        while i > 0:
            total += fen[i]
            i &= i - 1
        return total

    def _fen_add(self, idx: int, delta: int) -> None:
        fen = self.fen
        n = self.mask + 1
        i = idx + 1
        while i <= n:
            fen[i] += delta
            i += i & -i

    def _fen_sync(self) -> None:
        n = self.mask + 1
        fen = self.fen
        if not self.fen_ok:
            # Resize in place (no new list under the lock), then build in O(n).
            while len(fen) < n + 1:
                fen.extend(fen)
            del fen[n + 1 :]
            ring = self.ring
            mask = self.mask
            for i in range(n + 1):
                fen[i] = 0
            for s in range(self.head, self.tail):
                if ring[s & mask] is None:
                    fen[(s & mask) + 1] = 1
            for i in range(1, n + 1):
                j = i + (i & -i)
                if j <= n:
                    fen[j] += fen[i]
            self.fen_ok = True
        else:
            for code in self.pending:
                self._fen_add(code >> 1, 1 if code & 1 else -1)
        self.pending.clear()

    def rank(self, seq: int) -> int:
        """Live entries ahead of ``seq`` in this class."""
        if not self.dead:
            return seq - self.head
        self._fen_sync()
        h = self.head & self.mask
        p = seq & self.mask
        if h <= p:
            dead = self._fen_sum(p) - self._fen_sum(h)
        else:
            dead = self._fen_sum(self.mask + 1) - self._fen_sum(h) + self._fen_sum(p)
        return seq - self.head - dead

    # -- LRU --------------------------------------------------------------------------
    def lru_append(self, e: _Entry) -> None:
        e.lru_next = None
        e.lru_prev = last = self.lru_last
        if last is None:
            self.lru_first = e
        else:
            last.lru_next = e
        self.lru_last = e

    def lru_unlink(self, e: _Entry) -> None:
        prev = e.lru_prev
        nxt = e.lru_next
        if prev is None:
            self.lru_first = nxt
        else:
            prev.lru_next = nxt
        if nxt is None:
            self.lru_last = prev
        else:
            nxt.lru_prev = prev
        e.lru_prev = e.lru_next = None

    def iter_live(self) -> list[_Entry]:
        ring = self.ring
        mask = self.mask
        return [e for s in range(self.head, self.tail) if (e := ring[s & mask]) is not None]


def _retry_after(n: int, dequeued_in_window: int, window_s: float) -> int:
    """Milliseconds until ``n`` slots are expected to free at the measured dequeue rate."""
    if dequeued_in_window <= 0 or window_s <= 0:
        return RETRY_AFTER_DEFAULT_MS
    ms = math.ceil(n * 1000.0 * window_s / dequeued_in_window)
    return min(RETRY_AFTER_MAX_MS, max(RETRY_AFTER_MIN_MS, ms))


# ---------------------------------------------------------------------------------------
# The queue


class Queue:
    """A bounded admission queue: FIFO per priority, INTERACTIVE before BATCH.

    ``Queue(capacity, policy=AdmissionPolicy.REJECT_NEW, *, pool_id="default", clock=None,
    max_tokens_limit=None, id_prefix=None)``. Every method is atomic and thread-safe;
    ``enqueue`` never blocks and returns ``Accepted`` or ``Rejected``.
    """

    __slots__ = (
        "_capacity",
        "_policy",
        "_policy_code",
        "_pool_id",
        "_clock",
        "_limit",
        "_prefix",
        "_prefix_dash",
        "_lock",
        "_classes",
        "_index",
        "_next_id",
        "_closed",
        "_waiters",
        "_accepted",
        "_rejected",
        "_evicted",
        "_cancelled",
        "_dequeued",
        "_drained",
        "_created_sec",
        "_created_at",
        "_sec_end",
        "_slot",
        "_win_sec",
        "_win_enq",
        "_win_deq",
        "_win_hist",
        "_win_max",
        "_life_hist",
        "_life_sum",
        "__weakref__",
    )

    def __init__(
        self,
        capacity: int,
        policy: AdmissionPolicy | str = AdmissionPolicy.REJECT_NEW,
        *,
        pool_id: str = "default",
        clock: Callable[[], float] | None = None,
        max_tokens_limit: int | None = None,
        id_prefix: str | None = None,
    ) -> None:
        cap, pol, pool, clk, limit, prefix = check_queue_args(
            capacity, policy, pool_id, clock, max_tokens_limit, id_prefix
        )
        self._capacity = cap
        self._policy = pol
        self._policy_code = (_REJECT_NEW, _DROP_LRU, _FAIL_FAST).index(pol)
        self._pool_id = pool
        self._clock = clk
        self._limit = limit
        self._prefix = prefix
        self._prefix_dash = prefix + "-"
        self._lock = threading.Lock()
        _LIVE_QUEUES.add(self)
        self._classes = (_Class(), _Class())
        self._index: dict[str, _Entry] = {}
        self._next_id = 1
        self._closed = False
        self._waiters: deque[Any] = deque()
        self._accepted = 0
        self._rejected = [0, 0, 0, 0]
        self._evicted = 0
        self._cancelled = 0
        self._dequeued = 0
        self._drained = 0
        now = self._now()
        self._created_sec = math.floor(now)
        self._created_at = now
        self._sec_end = -math.inf
        self._slot = 0
        self._win_sec = [self._created_sec - WINDOW_SLOTS - 1] * WINDOW_SLOTS
        self._win_enq = [0] * WINDOW_SLOTS
        self._win_deq = [0] * WINDOW_SLOTS
        self._win_hist = [[0] * WAIT_BUCKETS for _ in range(WINDOW_SLOTS)]
        self._win_max = [0.0] * WINDOW_SLOTS
        self._life_hist = [0] * WAIT_BUCKETS
        self._life_sum = 0.0

    # -- construction helpers ---------------------------------------------------------
    @classmethod
    def builder(cls) -> Any:
        """A fluent ``QueueBuilder`` for this engine's ``Queue``."""
        from ._builder import QueueBuilder

        return QueueBuilder(cls)

    def _now(self) -> float:
        clock = self._clock
        return _mono() if clock is None else call_clock(clock)

    # -- properties -------------------------------------------------------------------
    @property
    def policy(self) -> AdmissionPolicy:
        """The admission policy."""
        return self._policy

    @property
    def pool_id(self) -> str:
        """The worker pool this queue feeds (a label in metrics)."""
        return self._pool_id

    @property
    def id_prefix(self) -> str:
        """Prefix of the job ids this queue makes (random unless chosen)."""
        return self._prefix

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._closed

    def capacity(self) -> int:
        """The most jobs the queue holds."""
        return self._capacity

    def depth(self) -> int:
        """Jobs queued now."""
        c = self._classes
        return c[0].live + c[1].live

    def __len__(self) -> int:
        c = self._classes
        return c[0].live + c[1].live

    def __repr__(self) -> str:
        return (
            f"<Queue pool_id={self._pool_id!r} policy={self._policy.value!r} depth={self.depth()} "
            f"capacity={self._capacity}{' closed' if self._closed else ''}>"
        )

    # -- window bookkeeping (lock held) -------------------------------------------------
    def _roll(self, now: float) -> int:
        sec = math.floor(now)
        slot = sec % WINDOW_SLOTS
        if self._win_sec[slot] != sec:
            self._win_sec[slot] = sec
            self._win_enq[slot] = 0
            self._win_deq[slot] = 0
            hist = self._win_hist[slot]
            for i in range(WAIT_BUCKETS):
                hist[i] = 0
            self._win_max[slot] = 0.0
        self._slot = slot
        self._sec_end = sec + 1
        return slot

    def _window(self, now: float) -> tuple[int, int, float, list[int]]:
        """Slots of the window (completed seconds), the window's enqueues, dequeues and length."""
        cur = math.floor(now)
        lo = max(cur - WINDOW_S, self._created_sec)
        slots = [i for i in range(WINDOW_SLOTS) if lo <= self._win_sec[i] < cur]
        enq = sum(self._win_enq[i] for i in slots)
        deq = sum(self._win_deq[i] for i in slots)
        # The window starts at the queue's creation when that is later than cur - WINDOW_S:
        # a queue created mid-second has lived only part of its first second.
        win = cur - max(float(cur - WINDOW_S), self._created_at)
        return enq, deq, win if win > 0.0 else 0.0, slots

    # -- id helpers -------------------------------------------------------------------
    def _own_counter(self, job_id: str) -> int:
        """The counter of an id in this queue's own format, or 0."""
        prefix = self._prefix_dash
        if job_id.startswith(prefix):
            digits = job_id[len(prefix) :]
            if 0 < len(digits) <= 16 and digits[0] != "0" and all(c in "0123456789abcdef" for c in digits):
                return int(digits, 16)
        return 0

    # -- admission --------------------------------------------------------------------
    def enqueue(self, task: Task) -> Accepted | Rejected:
        """Admit ``task`` or refuse it; never blocks.

        Returns ``Accepted(job_id, position, evicted)`` or ``Rejected(reason, ...)``;
        raises ``TypeError`` when ``task`` is not a ``Task``.
        """
        if type(task) is not Task:
            raise TypeError(f"task must be a Task, got {task!r} ({type(task).__name__})")
        clock = self._clock
        now = _mono() if clock is None else call_clock(clock)
        e = _new(_Entry)
        e.task = task
        e.prio = p = 0 if task._priority is _INTERACTIVE else 1
        e.enqueued_at = now
        job_id = task._job_id
        own = self._own_counter(job_id) if job_id is not None else 0
        victim: _Entry | None = None
        ahead = 0
        with self._lock:
            classes = self._classes
            inter = classes[0]
            if self._closed:
                code = _CLOSED
            elif self._limit and task._max_tokens > self._limit:
                code = _OVER_LIMIT
            elif job_id is not None and job_id in self._index:
                code = _DUPLICATE
            else:
                code = _OK
                depth = inter.live + classes[1].live
                if self._policy_code == 2:  # FAIL_FAST
                    ahead = inter.live if p == 0 else depth
                    if ahead:
                        code = _AHEAD
                    elif depth >= self._capacity:
                        code = _FULL
                elif depth >= self._capacity:
                    if self._policy_code == 1:  # DROP_LRU
                        if classes[1].live:
                            victim = classes[1].lru_first
                        elif p == 0:
                            victim = inter.lru_first
                        else:
                            code = _FULL
                    else:
                        code = _FULL
                if code == _OK:
                    if victim is not None:
                        vc = classes[victim.prio]
                        vc.remove(victim)
                        vc.lru_unlink(victim)
                        del self._index[victim.key]
                        self._evicted += 1
                    if job_id is None:
                        job_id = f"{self._prefix_dash}{self._next_id:x}"
                        self._next_id += 1
                    elif own >= self._next_id:
                        self._next_id = own + 1
                    e.key = job_id
                    position = inter.live if p == 0 else inter.live + classes[1].live
                    c = classes[p]
                    # c.push(e) and c.lru_append(e), inlined: this is the hot path.
                    tail = c.tail
                    if tail - c.head > c.mask:
                        c.grow()
                    e.seq = tail
                    c.ring[tail & c.mask] = e
                    c.tail = tail + 1
                    c.live += 1
                    e.lru_next = None
                    e.lru_prev = last = c.lru_last
                    if last is None:
                        c.lru_first = e
                    else:
                        last.lru_next = e
                    c.lru_last = e
                    self._index[job_id] = e
                    self._accepted += 1
                    slot = self._slot if now < self._sec_end else self._roll(now)
                    self._win_enq[slot] += 1
                    if self._waiters:
                        self._waiters.popleft().release()
            if code != _OK:
                reason = (
                    _CLOSED_R
                    if code == _CLOSED
                    else _POLICY_R
                    if code == _OVER_LIMIT
                    else _INVALID_R
                    if code == _DUPLICATE
                    else _FULL_R
                )
                self._rejected[_REASON_INDEX[reason]] += 1
                retry_ms = 0
                if code in (_FULL, _AHEAD):
                    _, deq, win, _ = self._window(now)
                    retry_ms = _retry_after(ahead if code == _AHEAD else 1, deq, win)
        if code != _OK:
            return _make_rejected(reason, retry_ms, self._policy, self._refusal_message(code, task, ahead))
        res = _new(Accepted)
        res._job_id = job_id  # type: ignore[assignment]  # set under the lock when accepted
        res._position = position
        if victim is None:
            res._evicted = None
        else:
            res._evicted = _make_job(victim.key, victim.task, victim.enqueued_at, (now - victim.enqueued_at) * 1000.0)
        return res

    def _refusal_message(self, code: int, task: Task, ahead: int) -> str:
        if code == _CLOSED:
            return f"queue {self._pool_id!r} is closed"
        if code == _OVER_LIMIT:
            return f"max_tokens {task._max_tokens} exceeds this queue's max_tokens_limit {self._limit}"
        if code == _DUPLICATE:
            return f"job_id {task._job_id!r} is already queued"
        if code == _AHEAD:
            return f"fail-fast: {ahead} job(s) queued ahead of this {task._priority.value} task"
        if self._policy is _DROP_LRU:
            return (
                f"queue {self._pool_id!r} is full ({self._capacity}) of interactive jobs; "
                "a batch task cannot evict them"
            )
        return f"queue {self._pool_id!r} is full ({self._capacity})"

    # -- leaving the queue ------------------------------------------------------------
    def _pop_locked(self, now: float) -> _Entry | None:
        classes = self._classes
        c = classes[0]
        if not c.live:
            c = classes[1]
            if not c.live:
                return None
        # c.pop_head() and c.lru_unlink(e), inlined: this is the hot path.
        ring = c.ring
        idx = c.head & c.mask
        e = ring[idx]
        ring[idx] = None
        head = c.head + 1
        c.head = head
        c.live -= 1
        if c.dead or (c.mask >= _MIN_RING and (c.tail - head) * 4 <= c.mask + 1):
            c.after_head_moved()
        elif head == c.tail:
            # Empty: restart at 0 (as after_head_moved would).
            c.head = c.tail = 0
            c.fen_ok = False
            if c.pending:
                c.pending.clear()
        prev = e.lru_prev  # type: ignore[union-attr]
        nxt = e.lru_next  # type: ignore[union-attr]
        if prev is None:
            c.lru_first = nxt
        else:
            prev.lru_next = nxt
        if nxt is None:
            c.lru_last = prev
        else:
            nxt.lru_prev = prev
        del self._index[e.key]  # type: ignore[union-attr]
        self._dequeued += 1
        # self._record_wait(...), inlined
        wait_ms = (now - e.enqueued_at) * 1000.0  # type: ignore[union-attr]
        slot = self._slot if now < self._sec_end else self._roll(now)
        self._win_deq[slot] += 1
        idx = 0
        if wait_ms > 0.1:
            idx = _ceil(_log2(wait_ms / 0.1) * 4.0)
            if idx >= WAIT_BUCKETS:
                idx = WAIT_BUCKETS - 1
            # log2 rounds: within an ulp or two of a bound the estimate can be one bucket
            # off, so settle it against the table (bucket i holds (bound[i-1], bound[i]]).
            if idx < WAIT_BUCKETS - 1 and wait_ms > _BOUNDS[idx]:
                idx += 1
            elif idx > 0 and wait_ms <= _BOUNDS[idx - 1]:
                idx -= 1
        self._win_hist[slot][idx] += 1
        if wait_ms > self._win_max[slot]:
            self._win_max[slot] = wait_ms
        self._life_hist[idx] += 1
        self._life_sum += wait_ms
        return e

    def _remove_waiter(self, waiter: Any) -> bool:
        try:
            self._waiters.remove(waiter)
        except ValueError:
            return False  # a producer or close() already woke it
        return True

    def _take(self, max_jobs: int, timeout: float) -> tuple[list[_Entry], float]:
        """Up to ``max_jobs`` entries, waiting up to ``timeout`` s (-1: forever) for the first."""
        deadline = _mono() + timeout if timeout > 0 else 0.0
        taken: list[_Entry] = []
        waiter: Any = None
        was_woken = False
        while True:
            try:
                now = self._now()
            except BaseException:
                # The clock raised: if a producer woke us for a job we now will not take,
                # pass the wake-up on.
                if was_woken:
                    with self._lock:
                        if self._waiters and self.depth():
                            self._waiters.popleft().release()
                raise
            was_woken = False
            need_waiter = False
            with self._lock:
                while len(taken) < max_jobs:
                    e = self._pop_locked(now)
                    if e is None:
                        break
                    taken.append(e)
                if taken or self._closed or timeout == 0:
                    return taken, now
                remaining = -1.0
                if timeout > 0:
                    remaining = deadline - _mono()
                    if remaining <= 0:
                        return taken, now
                    remaining = min(remaining, threading.TIMEOUT_MAX)
                if waiter is None:
                    need_waiter = True  # made outside the lock, then try again
                else:
                    self._waiters.append(waiter)
            if need_waiter:
                # Only a consumer that has to wait pays for its wake-up lock.
                waiter = threading.Lock()
                waiter.acquire()
                continue
            try:
                waiter.acquire(True, remaining)
            except BaseException:
                with self._lock:
                    if not self._remove_waiter(waiter) and self._waiters and self.depth():
                        # Woken for a job we will not take: pass the wake-up on.
                        self._waiters.popleft().release()
                raise
            with self._lock:
                was_woken = not self._remove_waiter(waiter)
            waiter = None
            if timeout > 0 and _mono() >= deadline:
                timeout = 0.0  # one last non-blocking attempt

    def dequeue(self, timeout: float | None = 0.0) -> Job | None:
        """The next job (INTERACTIVE first, FIFO within a priority), or None.

        ``timeout=0`` (default) never waits; a number waits up to that many seconds;
        ``None`` waits until a job arrives or the queue is closed and empty. A wait never
        holds the engine's lock and can be interrupted (KeyboardInterrupt).
        """
        if timeout == 0 and (type(timeout) is float or type(timeout) is int):
            clock = self._clock
            now = _mono() if clock is None else call_clock(clock)
            with self._lock:
                e = self._pop_locked(now)
            if e is None:
                return None
        else:
            taken, now = self._take(1, check_timeout(timeout))
            if not taken:
                return None
            e = taken[0]
        job = _new(Job)
        job._job_id = e.key
        job._task = e.task
        job._enqueued_at = t = e.enqueued_at
        job._wait_ms = (now - t) * 1000.0
        return job

    def dequeue_many(self, max_jobs: int, timeout: float | None = 0.0) -> list[Job]:
        """Up to ``max_jobs`` jobs in dequeue order, taken under one lock acquisition.

        ``timeout`` is as for ``dequeue`` and applies to the first job only.
        """
        n = check_count(max_jobs, "max_jobs")
        taken, now = self._take(n, check_timeout(timeout))
        return [_make_job(e.key, e.task, e.enqueued_at, (now - e.enqueued_at) * 1000.0) for e in taken]

    def drain(self) -> list[Job]:
        """Remove and return every queued job in dequeue order (counted as drained)."""
        now = self._now()
        with self._lock:
            taken: list[_Entry] = []
            for c in self._classes:
                while c.live:
                    e = c.pop_head()
                    c.lru_unlink(e)
                    taken.append(e)
            self._index.clear()
            self._drained += len(taken)
        return [_make_job(e.key, e.task, e.enqueued_at, (now - e.enqueued_at) * 1000.0) for e in taken]

    def close(self) -> None:
        """Refuse further enqueues (``QUEUE_CLOSED``) and wake every blocked consumer.

        Queued jobs can still be dequeued or drained. Idempotent.
        """
        with self._lock:
            self._closed = True
            waiters = self._waiters
            while waiters:
                waiters.popleft().release()

    # -- by job id --------------------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        """Remove a queued job; False if it is not queued. Idempotent."""
        if type(job_id) is not str or not (0 < len(job_id) <= JOB_ID_MAX_LEN and job_id.isprintable()):
            job_id = check_job_id(job_id)
        with self._lock:
            e = self._index.pop(job_id, None)
            if e is None:
                return False
            c = self._classes[e.prio]
            c.remove(e)
            c.lru_unlink(e)
            self._cancelled += 1
        return True

    def touch(self, job_id: str) -> bool:
        """Mark a queued job as just used (DROP_LRU evicts it last); False if not queued."""
        if type(job_id) is not str or not (0 < len(job_id) <= JOB_ID_MAX_LEN and job_id.isprintable()):
            job_id = check_job_id(job_id)
        with self._lock:
            e = self._index.get(job_id)
            if e is None:
                return False
            c = self._classes[e.prio]
            if c.lru_last is not e:
                c.lru_unlink(e)
                c.lru_append(e)
        return True

    def position(self, job_id: str) -> int | None:
        """Jobs ``dequeue`` would hand out before this one (0 = next), or None if not queued."""
        if type(job_id) is not str or not (0 < len(job_id) <= JOB_ID_MAX_LEN and job_id.isprintable()):
            job_id = check_job_id(job_id)
        with self._lock:
            e = self._index.get(job_id)
            if e is None:
                return None
            rank = self._classes[e.prio].rank(e.seq)
            return rank if e.prio == 0 else rank + self._classes[0].live

    def __contains__(self, job_id: object) -> bool:
        if type(job_id) is not str:
            if not isinstance(job_id, str):
                return False
            job_id = str.__str__(job_id)  # never a subclass's __hash__ / __eq__
        with self._lock:
            return job_id in self._index

    def snapshot(self, priority: Priority | str | None = None) -> list[str]:
        """Queued job ids in dequeue order (only one class when ``priority`` is given)."""
        classes = (
            self._classes
            if priority is None
            else (self._classes[_PRIORITIES.index(Priority.parse(priority, "priority"))],)
        )
        with self._lock:
            return [e.key for c in classes for e in c.iter_live()]

    def lru_order(self, priority: Priority | str) -> list[str]:
        """Job ids of one class from least to most recently used (DROP_LRU's victim first)."""
        c = self._classes[_PRIORITIES.index(Priority.parse(priority, "priority"))]
        with self._lock:
            out = []
            e = c.lru_first
            while e is not None:
                out.append(e.key)
                e = e.lru_next
            return out

    # -- metrics ----------------------------------------------------------------------
    def metrics(self) -> QueueMetrics:
        """An immutable snapshot of counters, rates and wait percentiles (O(1) in depth)."""
        now = self._now()
        with self._lock:
            enq, deq, win, slots = self._window(now)
            hist = [0] * WAIT_BUCKETS
            wmax = 0.0
            for i in slots:
                h = self._win_hist[i]
                for b in range(WAIT_BUCKETS):
                    hist[b] += h[b]
                wmax = max(wmax, self._win_max[i])
            c0, c1 = self._classes
            heads = [c.ring[c.head & c.mask].enqueued_at for c in (c0, c1) if c.live]  # type: ignore[union-attr]
            raw = (
                now,
                self._capacity,
                c0.live,
                c1.live,
                self._accepted,
                tuple(self._rejected),
                self._evicted,
                self._cancelled,
                self._dequeued,
                self._drained,
                min(heads) if heads else None,
                win,
                enq,
                deq,
                hist,
                wmax,
                list(self._life_hist),
                self._life_sum,
                _retry_after(1, deq, win),
                self._closed,
            )
        return build_metrics(self._pool_id, self._policy.value, raw)


# fork(): every queue's lock is taken before the fork, so no thread is half-way through an
# operation in the child's copy; the child then unlocks and forgets the parent's blocked
# consumers (their threads do not exist there).
_LIVE_QUEUES: weakref.WeakSet[Queue] = weakref.WeakSet()
_FORK_HELD: list[Queue] = []


def _before_fork() -> None:
    held = list(_LIVE_QUEUES)
    for q in held:
        q._lock.acquire()
    _FORK_HELD[:] = held


def _after_fork_in_parent() -> None:
    for q in _FORK_HELD:
        q._lock.release()
    _FORK_HELD.clear()


def _after_fork_in_child() -> None:
    for q in _FORK_HELD:
        q._waiters.clear()
        q._lock.release()
    _FORK_HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)

_CLOSED_R: Final = RejectionReason.QUEUE_CLOSED
_POLICY_R: Final = RejectionReason.POLICY_VIOLATION
_INVALID_R: Final = RejectionReason.INVALID_REQUEST
_FULL_R: Final = RejectionReason.QUEUE_FULL
_REASON_INDEX: Final = {r: i for i, r in enumerate(_REASONS)}
