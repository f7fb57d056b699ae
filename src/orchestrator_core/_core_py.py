# The admission engine, in pure Python: the specification of the compiled twin _core_c.pyx.
#
# Invariants (the same block heads _core_c.pyx):
#   * Two priority classes (0 = INTERACTIVE, 1 = BATCH). A class holds one lane per tenant
#     with queued work; the default tenant (tenant=None) has a lane embedded in the class.
#     A lane is a ring buffer of entries indexed by a per-lane sequence number: entry e lives
#     at ring[e.seq & mask] while head <= e.seq < tail. A cancelled, evicted or expired entry
#     leaves a tombstone (an empty cell) inside [head, tail); ring[head] is live unless the
#     lane is empty, so taking a lane's head is O(1). Tombstones are compacted away once they
#     outnumber live entries (amortised O(1)). The ring doubles when full and halves when a
#     quarter full: memory follows depth.
#   * Round robin: the non-empty lanes of a class form a circular list and `cur` is the lane
#     served next. dequeue takes cur's head and moves cur on; a lane that empties leaves the
#     circle, a lane that becomes non-empty joins it just before cur (at the back). With one
#     lane (no tenants) this is exactly FIFO. (Shortcut: a default lane that a dequeue empties
#     while alone stays in the circle, empty, until another lane joins; nothing else is empty.)
#     Each lane has an integer label, and going round the circle from the smallest label the
#     labels increase: a joining lane takes one between its neighbours', and when none is
#     left the class's lanes are relabelled evenly in the same order (amortised O(1)).
#   * The job-id index maps every queued job id to its entry (one entry per id).
#   * Each lane has an intrusive doubly linked LRU list, least recently used first: enqueue
#     and touch put an entry last. DROP_LRU evicts from the lowest priority present, from
#     the lane with the most jobs (ties: the latest in the round robin), its LRU entry.
#   * A Fenwick tree over a lane's ring cells counts tombstones, so a job's rank in its lane
#     is O(log n); cancel only records the change (applied lazily at the next position()).
#   * The round robin hands out the k-th job of lane L after min(n, k + 1) jobs of each lane
#     (of n jobs) from cur up to L and min(n, k) of every other lane. Up to 32 lanes in a
#     class, position() walks them and so does DROP_LRU's choice of lane (the most jobs; ties:
#     the latest in the round robin). Rank tree: once a 33rd lane joins a class, and until
#     the class is empty again, it keeps an order-statistics treap with one key (level,
#     label) per queued job (a lane with n jobs holds (1, label) ... (n, label)); the count
#     above is the number of keys of level <= k plus those of level k + 1 with a label in
#     [cur's label, L's label) going round, and DROP_LRU's lane is the greatest key's lane,
#     among equals the one with the greatest label below cur's, else the greatest. So both
#     are O(log n) with any number of tenants, and every enqueue, dequeue, cancel, eviction
#     and expiry in such a class pays one O(log n) update. The tree is made from the class's
#     jobs when the 33rd lane joins: O(n log n) at most once per job.
#   * Deadlines: every entry with a max_wait_ms is also on one intrusive FIFO per distinct
#     max_wait_ms value (a deadline lane). Enqueue times never decrease, so a deadline lane's
#     head expires first. `dl_due` is a lower bound of the earliest head deadline: at
#     now < dl_due an operation pays one comparison; otherwise the heads are checked (O(number
#     of deadline lanes)) and overdue entries move to the expired list, earliest deadline first.
#   * depth = live(INTERACTIVE) + live(BATCH) <= capacity; with max_queued_tokens the queued
#     jobs' tokens <= max_queued_tokens; the counters balance:
#     accepted == dequeued + cancelled + evicted + drained + expired + depth.
#   * No user code runs while the lock is held: the clock is read and every Python object
#     that can trigger the cyclic GC (entries, tenant and deadline records, results, jobs) is
#     made before the lock is taken or after it is released; released tasks are dropped after
#     it is released.
#
# Pure engine only (the compiled engine's locked sections are C, where neither can happen):
#   * A locked section makes nothing the cyclic GC tracks (no list, tuple, dict, iterator,
#     bound method, slice, exception...; ints, floats and strings are fine): lists are sized
#     before the lock and filled under it, results are built after it. So no collection (and
#     no finalizer) starts inside one. Since 3.12 a collection runs at the interpreter's next
#     periodic check rather than inside the allocation that scheduled it, so each section
#     opens with a call (``_enter``, or ``_gc_point`` in the two hot paths; a Python
#     function's entry is such a check) made before the queue is marked busy: a collection
#     scheduled just before (by the `with` statement's own lookups, say) runs there, where the
#     queue is consistent and may be used re-entrantly.
#   * Code can still run inside a section: a Python signal handler (wherever the main thread
#     is), on 3.12 a collection another thread's allocation scheduled, on 3.10 one started by
#     a frame object (a call). The lock is an RLock and ``_busy`` marks the part of a section
#     that reads or changes the state: a call from the owning thread that finds it set (code
#     that interrupted an operation on the same queue) raises RuntimeError (``_reentered``)
#     instead of deadlocking or working on a half-updated queue; code that runs before it is
#     set uses the queue normally. An exception raised into a section (KeyboardInterrupt, or
#     that RuntimeError left uncaught by a handler) can still leave the queue half-updated.
"""Pure-Python engine: the specification of the compiled engine (``_core_c``)."""

from __future__ import annotations

import heapq
import math
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from typing import Any, Final, NoReturn

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
    check_feature_args,
    check_job_id,
    check_max_wait_ms,
    check_prompt_tokens,
    check_queue_args,
    check_tenant,
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
# 6 is the compiled engine's NOMEM
_FULL_TOKENS: Final = 7  # the token budget is the bound that is hit
_OVER_BUDGET: Final = 8  # the task alone exceeds max_queued_tokens
_TENANT_CAP: Final = 9  # max_queued_per_tenant
_UNMEETABLE: Final = 10  # admit_only_feasible: predicted wait > max_wait_ms
_WAIT: Final = 11  # enqueue(wait=...): registered as a room waiter
_RETRY: Final = 12  # a spare tenant / deadline record was missing: make one, try again
# (Sets made once: a tuple display of names would be a new tuple under the lock.)
_FULL_CODES: Final = frozenset((_FULL, _FULL_TOKENS, _AHEAD))  # refusals that get an adaptive retry-after
_WAIT_CODES: Final = _FULL_CODES | {_UNMEETABLE}  # refusals a producer may wait out (enqueue(wait=...))
_PROBE: Final = object()  # _attempt's waiter for _try_admit: a retriable refusal returns None, nothing registered

_MIN_RING: Final = 8
# Round-robin labels (see Queue._rot_insert): in [1, _LABEL_END); a lane alone gets _LABEL_MID.
_LABEL_END: Final = 1 << 62
_LABEL_MID: Final = 1 << 61
_LABEL_STEP: Final = 1 << 40
# A class keeps a rank tree once it has more lanes than this (fewer are walked: O(1)).
_RANK_LANES: Final = 32
_COMPACT_SLACK: Final = 32
_NEG_INF: Final = -math.inf
_NO_WAIT: Final = 0.0  # enqueue's default wait (compared by identity first)

_new = object.__new__
_ceil = math.ceil
_log2 = math.log2


_mono = time.monotonic


# Since 3.12 the cyclic GC runs at the interpreter's periodic checks, not in the allocation.
_GC_AT_CHECKS: Final = sys.version_info >= (3, 12)


def _gc_point() -> None:
    """Nothing: calling it is a periodic check of the interpreter (a Python function's entry
    is one), where a collection scheduled by the allocations before it runs (3.12+)."""


def _reentered(method: str) -> NoReturn:
    """Refuse a call made, in the thread that holds the queue's lock, from inside another
    operation on the same queue (a signal handler or a finalizer that interrupted it)."""
    raise RuntimeError(
        f"reentrant call to Queue.{method}(): this thread is inside another operation on the same queue "
        "(the call comes from a signal handler or a finalizer that interrupted it), which the pure-Python "
        "engine cannot run there; defer the call (in a signal handler, set a flag and act on it outside)"
    )


# ---------------------------------------------------------------------------------------
# Value types


class Task:
    """A request to run: what the front end admits.

    ``Task(model, max_tokens, session_id=None, *, priority=Priority.INTERACTIVE,
    job_id=None, payload=None, tenant=None, max_wait_ms=None, prompt_tokens=None)``.
    ``job_id`` lets the caller choose the id (it must not be queued already); ``payload`` is
    carried untouched; ``tenant`` names who the work is for (round-robin fairness and
    per-tenant caps); ``max_wait_ms`` is the longest the job may wait in the queue before it
    expires; ``prompt_tokens`` counts, with ``max_tokens``, against ``max_queued_tokens``.
    Immutable.
    """

    __slots__ = (
        "_model",
        "_max_tokens",
        "_session_id",
        "_priority",
        "_job_id",
        "_payload",
        "_tenant",
        "_max_wait_ms",
        "_prompt_tokens",
        "_tokens",
        "_plain",
    )
    __match_args__ = ("model", "max_tokens", "session_id")

    _model: str
    _max_tokens: int
    _session_id: str | None
    _priority: Priority
    _job_id: str | None
    _payload: Any
    _tenant: str | None
    _max_wait_ms: float | None
    _prompt_tokens: int | None
    _tokens: int
    _plain: bool  # no tenant and no deadline: the queue's fast path

    def __init__(
        self,
        model: str,
        max_tokens: int,
        session_id: str | None = None,
        *,
        priority: Priority | str = Priority.INTERACTIVE,
        job_id: str | None = None,
        payload: Any = None,
        tenant: str | None = None,
        max_wait_ms: float | None = None,
        prompt_tokens: int | None = None,
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
        if tenant is not None:
            tenant = check_tenant(tenant)
        if max_wait_ms is not None:
            max_wait_ms = check_max_wait_ms(max_wait_ms)
        tokens = max_tokens
        if prompt_tokens is not None:
            tokens += check_prompt_tokens(prompt_tokens)
        self._model = model
        self._max_tokens = max_tokens
        self._session_id = session_id
        self._priority = prio
        self._job_id = job_id
        self._payload = payload
        self._tenant = tenant
        self._max_wait_ms = max_wait_ms
        self._prompt_tokens = prompt_tokens
        self._tokens = tokens
        self._plain = tenant is None and max_wait_ms is None

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

    @property
    def tenant(self) -> str | None:
        """Who the work is for (round-robin fairness, per-tenant caps), or None."""
        return self._tenant

    @property
    def max_wait_ms(self) -> float | None:
        """Longest wait in the queue before the job expires, or None (the queue's default)."""
        return self._max_wait_ms

    @property
    def prompt_tokens(self) -> int | None:
        """Tokens of the prompt (counted against ``max_queued_tokens``), or None."""
        return self._prompt_tokens

    @property
    def tokens(self) -> int:
        """``max_tokens + prompt_tokens``: what the task counts against ``max_queued_tokens``."""
        return self._tokens

    def __repr__(self) -> str:
        extra = ""
        if self._tenant is not None:
            extra += f", tenant={self._tenant!r}"
        if self._max_wait_ms is not None:
            extra += f", max_wait_ms={self._max_wait_ms!r}"
        if self._prompt_tokens is not None:
            extra += f", prompt_tokens={self._prompt_tokens!r}"
        return (
            f"Task(model={self._model!r}, max_tokens={self._max_tokens!r}, session_id={self._session_id!r}, "
            f"priority={self._priority.value!r}, job_id={self._job_id!r}{extra})"
        )


class Job:
    """A queued task as it leaves the queue (dequeued, drained, evicted or expired).

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
    """The task was admitted: ``job_id``, its ``position`` (0 = next), the job it ``evicted``
    under DROP_LRU (or None) and an advisory ``eta_ms``. Immutable; ``match Accepted(job_id=..)``.

    ``evicted`` is the first evicted job; ``evicted_all`` is every job evicted to make room
    (more than one when a token budget needed it), in eviction order.
    """

    __slots__ = ("_job_id", "_position", "_evicted", "_eta_ms", "_evicted_all", "_ms_per_job")
    __match_args__ = ("job_id", "position", "evicted")
    accepted: Final = True

    _job_id: str
    _position: int
    _evicted: Job | None
    _eta_ms: float | None
    _evicted_all: tuple[Job, ...] | None
    _ms_per_job: float  # > 0: eta_ms is position * _ms_per_job (set by the queue)

    def __init__(
        self,
        job_id: str,
        position: int,
        evicted: Job | None = None,
        *,
        eta_ms: float | None = None,
        evicted_all: tuple[Job, ...] | None = None,
    ) -> None:
        self._job_id = job_id
        self._position = position
        if evicted_all is not None:
            evicted_all = tuple(evicted_all)
            if evicted is None and evicted_all:
                evicted = evicted_all[0]
        self._evicted = evicted
        self._eta_ms = None if eta_ms is None else float(eta_ms)
        self._evicted_all = evicted_all
        self._ms_per_job = 0.0

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
        """The (first) job evicted to make room (DROP_LRU), to be reported to its client."""
        return self._evicted

    @property
    def evicted_all(self) -> tuple[Job, ...]:
        """Every job evicted to make room, in eviction order (empty when none)."""
        if self._evicted_all is not None:
            return self._evicted_all
        return () if self._evicted is None else (self._evicted,)

    @property
    def eta_ms(self) -> float | None:
        """Advisory: milliseconds until the jobs ahead drain at the measured dequeue rate
        (``position`` over the rate of the metrics window), or None when nothing was dequeued
        in the window."""
        ms = self._ms_per_job
        return self._position * ms if ms else self._eta_ms

    def __eq__(self, other: object) -> bool:
        if type(other) is not Accepted:
            return NotImplemented
        mine = self.evicted_all
        theirs = other.evicted_all
        return (
            self._job_id == other._job_id
            and self._position == other._position
            and self._evicted is other._evicted
            and self.eta_ms == other.eta_ms
            and len(mine) == len(theirs)
            and all(a is b for a, b in zip(mine, theirs, strict=True))
        )

    def __hash__(self) -> int:
        return hash((self._job_id, self._position, id(self._evicted), self.eta_ms))

    def __repr__(self) -> str:
        extra = ""
        eta_ms = self.eta_ms
        if eta_ms is not None:
            extra += f", eta_ms={eta_ms!r}"
        if len(self.evicted_all) > 1:
            extra += f", evicted_all={self.evicted_all!r}"
        return f"Accepted(job_id={self._job_id!r}, position={self._position!r}, evicted={self._evicted!r}{extra})"


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
        """True when the same task may be admitted later (``QUEUE_FULL``, ``DEADLINE_UNMEETABLE``)."""
        reason = self._reason
        return reason is RejectionReason.QUEUE_FULL or reason is RejectionReason.DEADLINE_UNMEETABLE

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
    __slots__ = ("key", "task", "lane", "enqueued_at", "seq", "lru_prev", "lru_next", "dl_prev", "dl_next", "left_at")

    key: str
    task: Task
    lane: _Lane
    enqueued_at: float
    seq: int
    lru_prev: _Entry | None
    lru_next: _Entry | None
    dl_prev: _Entry | None  # deadline lane links (None: no deadline)
    dl_next: _Entry | None
    left_at: float  # when it expired (set on the expired list only)


class _Lane:
    """One tenant's jobs of one priority class: ring buffer, LRU list, tombstone Fenwick tree
    and its links in the class's round robin (None while the lane is empty)."""

    __slots__ = (
        "ring",
        "mask",
        "head",
        "tail",
        "live",
        "dead",
        "lru_first",
        "lru_last",
        "fen",
        "fen_ok",
        "pending",
        "rot_prev",
        "rot_next",
        "tenant",
        "prio",
        "label",
    )

    def __init__(self, prio: int, tenant: _Tenant | None) -> None:
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
        self.rot_prev: _Lane | None = None
        self.rot_next: _Lane | None = None
        self.tenant = tenant
        self.prio = prio
        self.label = 0  # its place in the round robin (the circle is in label order, see _rot_insert)

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
        for _ in range(half):  # not `del ring[half:]`: the slice object is GC-tracked
            ring.pop()
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
            while len(fen) > n + 1:  # not a slice: see _shrink
                fen.pop()
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
            pending = self.pending
            for i in range(len(pending)):  # not `for code in pending`: the iterator is GC-tracked
                code = pending[i]
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


class _Class:
    """One priority class: its round robin of non-empty lanes and the default tenant's lane."""

    __slots__ = ("cur", "live", "nlanes", "tokens", "dflt", "rank", "ranked", "step")

    def __init__(self, prio: int) -> None:
        self.cur: _Lane | None = None  # the lane served next; None when the class is empty
        self.live = 0  # jobs in the class
        self.nlanes = 0  # lanes in the round robin
        self.tokens = 0  # their tokens (kept only with max_queued_tokens)
        self.dflt = _Lane(prio, None)
        self.rank = _Rank()
        self.ranked = False  # rank kept: over _RANK_LANES lanes joined since it was last empty
        self.step = _LABEL_STEP  # the largest label gap a lane joining the circle takes


class _Tenant:
    """A named tenant with queued work: its job count (both classes) and its two lanes."""

    __slots__ = ("name", "live", "lanes")

    def __init__(self) -> None:
        self.name = ""
        self.live = 0
        self.lanes = (_Lane(0, self), _Lane(1, self))


class _DLane:
    """The queued jobs with one max_wait_ms value, in enqueue order (a circular list through
    the sentinel ``head``: head.dl_next is the first, head.dl_prev the last)."""

    __slots__ = ("max_wait_ms", "head")

    def __init__(self) -> None:
        self.max_wait_ms = 0.0
        head = _new(_Entry)
        head.dl_prev = head.dl_next = head
        self.head = head


class _Rank:
    """The rank tree of a priority class (kept while it has had over _RANK_LANES lanes): an
    order-statistics treap over the keys (level, label), one per queued job: the lane with
    n jobs holds the keys (1, its label) ... (n, its label). A node holds its level and its
    lane, and reads the label through the lane, so relabelling lanes (in order) leaves the
    tree valid. Keys count lanes by length and by place in the circle, which is all
    position() and DROP_LRU's victim need: O(log n) per insert, delete and count. Nodes are
    indices into parallel lists (node 0 is nil), so nothing made under the lock is tracked
    by the cyclic GC."""

    __slots__ = ("level", "lane", "left", "right", "size", "prio", "root", "free", "seed")

    def __init__(self) -> None:
        self.level = [0]
        self.lane: list[_Lane | None] = [None]
        self.left = [0]  # (the free list is linked through ``left``)
        self.right = [0]
        self.size = [0]
        self.prio = [0]
        self.root = 0
        self.free = 0
        self.seed = 0x9E3779B97F4A7C15

    def _node(self, level: int, lane: _Lane) -> int:
        x = self.seed
        x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 7
        x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
        self.seed = x
        i = self.free
        if i:
            self.free = self.left[i]
            self.level[i] = level
            self.lane[i] = lane
            self.left[i] = self.right[i] = 0
            self.size[i] = 1
            self.prio[i] = x >> 32
        else:
            i = len(self.level)
            self.level.append(level)
            self.lane.append(lane)
            self.left.append(0)
            self.right.append(0)
            self.size.append(1)
            self.prio.append(x >> 32)
        return i

    def insert(self, level: int, lane: _Lane) -> None:
        """Add the key (level, lane's label), absent so far."""
        self.root = self._ins(self.root, self._node(level, lane), level, lane.label)

    def _ins(self, t: int, x: int, lv: int, lb: int) -> int:
        if not t:
            return x
        left = self.left
        right = self.right
        size = self.size
        size[t] += 1
        lt = self.level[t]
        if lv < lt or (lv == lt and lb < self.lane[t].label):  # type: ignore[union-attr]
            y = left[t] = self._ins(left[t], x, lv, lb)
            if self.prio[y] > self.prio[t]:  # rotate right
                left[t] = right[y]
                right[y] = t
                size[y] = size[t]
                size[t] = 1 + size[left[t]] + size[right[t]]
                return y
        else:
            y = right[t] = self._ins(right[t], x, lv, lb)
            if self.prio[y] > self.prio[t]:  # rotate left
                right[t] = left[y]
                left[y] = t
                size[y] = size[t]
                size[t] = 1 + size[left[t]] + size[right[t]]
                return y
        return t

    def delete(self, level: int, lane: _Lane) -> None:
        """Remove the key (level, lane's label), present."""
        self.root = self._del(self.root, level, lane.label)

    def _del(self, t: int, lv: int, lb: int) -> int:
        self.size[t] -= 1
        lt = self.level[t]
        ln = self.lane[t].label  # type: ignore[union-attr]
        if lv < lt or (lv == lt and lb < ln):
            self.left[t] = self._del(self.left[t], lv, lb)
            return t
        if lv > lt or lb > ln:
            self.right[t] = self._del(self.right[t], lv, lb)
            return t
        m = self._merge(self.left[t], self.right[t])
        self.lane[t] = None
        self.left[t] = self.free
        self.free = t
        return m

    def _merge(self, a: int, b: int) -> int:
        if not a:
            return b
        if not b:
            return a
        if self.prio[a] > self.prio[b]:
            self.size[a] += self.size[b]
            self.right[a] = self._merge(self.right[a], b)
            return a
        self.size[b] += self.size[a]
        self.left[b] = self._merge(a, self.left[b])
        return b

    def count_lt(self, lv: int, lb: int) -> int:
        """Keys below (lv, lb)."""
        level = self.level
        lane = self.lane
        left = self.left
        size = self.size
        t = self.root
        n = 0
        while t:
            lt = level[t]
            if lt < lv or (lt == lv and lane[t].label < lb):  # type: ignore[union-attr]
                n += size[left[t]] + 1
                t = self.right[t]
            else:
                t = left[t]
        return n

    def last_below(self, lv: int, lb: int) -> int:
        """The node of the greatest key below (lv, lb) (0: none)."""
        level = self.level
        lane = self.lane
        t = self.root
        best = 0
        while t:
            lt = level[t]
            if lt < lv or (lt == lv and lane[t].label < lb):  # type: ignore[union-attr]
                best = t
                t = self.right[t]
            else:
                t = self.left[t]
        return best

    def fill(self, c: _Class) -> None:
        """Add the keys of every lane of ``c``'s circle (the tree is empty): O(n log n)."""
        lane = c.cur
        while True:
            for level in range(1, lane.live + 1):  # type: ignore[union-attr]
                self.insert(level, lane)  # type: ignore[arg-type]
            lane = lane.rot_next  # type: ignore[union-attr]
            if lane is c.cur:
                break

    def reset(self) -> None:
        """Forget every node (the class is empty): memory follows depth."""
        # (No tuple of the lists, no iterator: the lock is held.)
        _truncate(self.level)
        _truncate(self.lane)
        _truncate(self.left)
        _truncate(self.right)
        _truncate(self.size)
        _truncate(self.prio)
        self.root = self.free = 0


def _truncate(lst: list[Any]) -> None:
    """Keep ``lst[0]`` only (not ``del lst[1:]``: the slice object is GC-tracked)."""
    while len(lst) > 1:
        lst.pop()


def _due_hint(enqueued_at: float, max_wait_ms: float) -> float:
    # A lower bound (by far more than any rounding) of the first instant at which
    # (now - enqueued_at) * 1000.0 > max_wait_ms can hold: the sweep itself decides exactly.
    return enqueued_at + max_wait_ms / 1000.0 - (abs(enqueued_at) + max_wait_ms / 1000.0 + 1.0) * 1e-9


def _retry_after(n: int, dequeued_in_window: int, window_s: float) -> int:
    """Milliseconds until ``n`` slots are expected to free at the measured dequeue rate."""
    if dequeued_in_window <= 0 or window_s <= 0:
        return RETRY_AFTER_DEFAULT_MS
    ms = math.ceil(n * 1000.0 * window_s / dequeued_in_window)
    # Clamped without min()/max() (called under the lock: no argument tuple).
    if ms > RETRY_AFTER_MAX_MS:
        return RETRY_AFTER_MAX_MS
    return RETRY_AFTER_MIN_MS if ms < RETRY_AFTER_MIN_MS else ms


# ---------------------------------------------------------------------------------------
# The queue


class Queue:
    """A bounded admission queue: INTERACTIVE before BATCH; within a priority, round robin
    over tenants and FIFO within a tenant (plain FIFO when no task names a tenant).

    ``Queue(capacity, policy=AdmissionPolicy.REJECT_NEW, *, pool_id="default", clock=None,
    max_tokens_limit=None, id_prefix=None, max_wait_ms=None, admit_only_feasible=False,
    max_queued_per_tenant=None, max_queued_tokens=None)``. Every method is atomic and
    thread-safe; ``enqueue`` returns ``Accepted`` or ``Rejected`` and waits for room only
    when asked to (``wait=``).

    ``max_wait_ms`` is the deadline of tasks that set none: a job that has waited longer is
    never dequeued; it expires and is handed over by ``take_expired()``. With
    ``admit_only_feasible`` a task whose predicted wait already exceeds its deadline is
    refused (``DEADLINE_UNMEETABLE``). ``max_queued_per_tenant`` caps each named tenant's
    queued jobs (``POLICY_VIOLATION``); ``max_queued_tokens`` bounds the queued jobs' tokens
    (``Task.tokens``) alongside the job count, and the policy applies to whichever bound is hit.
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
        "_max_wait",
        "_feasible",
        "_tenant_cap",
        "_budget",
        "_plain",
        "_fancy",
        "_lock",
        "_busy",
        "_classes",
        "_index",
        "_tenants",
        "_spare_tenants",
        "_dlanes",
        "_spare_dlanes",
        "_dl_jobs",
        "_dl_due",
        "_exp_first",
        "_exp_last",
        "_queued_tokens",
        "_next_id",
        "_closed",
        "_waiters",
        "_room_waiters",
        "_accepted",
        "_rejected",
        "_evicted",
        "_cancelled",
        "_dequeued",
        "_drained",
        "_expired",
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
        "_rate_lo",
        "_rate_hi",
        "_rate_deq",
        "_rate_win",
        "_rate_ms",
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
        max_wait_ms: float | None = None,
        admit_only_feasible: bool = False,
        max_queued_per_tenant: int | None = None,
        max_queued_tokens: int | None = None,
    ) -> None:
        cap, pol, pool, clk, limit, prefix = check_queue_args(
            capacity, policy, pool_id, clock, max_tokens_limit, id_prefix
        )
        max_wait, feasible, tenant_cap, budget = check_feature_args(
            max_wait_ms, admit_only_feasible, max_queued_per_tenant, max_queued_tokens
        )
        self._capacity = cap
        self._policy = pol
        self._policy_code = (_REJECT_NEW, _DROP_LRU, _FAIL_FAST).index(pol)
        self._pool_id = pool
        self._clock = clk
        self._limit = limit
        self._prefix = prefix
        self._prefix_dash = prefix + "-"
        self._max_wait = max_wait
        self._feasible = feasible
        self._tenant_cap = tenant_cap
        self._budget = budget
        self._plain = max_wait is None and not budget  # plain tasks take the fast path
        # Sticky: set once a tenant, a deadline, a budget or a waiting producer is seen; until
        # then a dequeue skips their bookkeeping.
        self._fancy = not self._plain
        # Re-entrant, so that a re-entrant call (see _enter) is refused instead of deadlocking.
        self._lock = threading.RLock()
        self._busy = False
        _LIVE_QUEUES.add(self)
        self._classes = (_Class(0), _Class(1))
        self._index: dict[str, _Entry] = {}
        self._tenants: dict[str, _Tenant] = {}
        self._spare_tenants: list[_Tenant] = []
        self._dlanes: list[_DLane] = []
        self._spare_dlanes: list[_DLane] = []
        self._dl_jobs = 0
        self._dl_due = math.inf
        self._exp_first: _Entry | None = None
        self._exp_last: _Entry | None = None
        self._queued_tokens = 0
        self._next_id = 1
        self._closed = False
        self._waiters: deque[Any] = deque()
        self._room_waiters: deque[Any] = deque()
        self._accepted = 0
        self._rejected = [0] * len(_REASONS)
        self._evicted = 0
        self._cancelled = 0
        self._dequeued = 0
        self._drained = 0
        self._expired = 0
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
        self._rate_lo = math.inf
        self._rate_hi = -math.inf
        self._rate_deq = 0
        self._rate_win = 0.0
        self._rate_ms = 0.0

    def __del__(self) -> None:
        # Lanes, tenants, deadline lanes and entries link to each other in cycles. Break
        # the links of every entry still held (queued, or expired and not yet taken) so
        # that reference counting alone releases their tasks when the queue goes, as the
        # compiled engine's dealloc does; the cyclic GC collects the empty structures.
        try:
            held = list(self._index.values())
            e = self._exp_first
        except AttributeError:  # __init__ did not finish
            return
        while e is not None:
            held.append(e)
            e = e.lru_next
        for e in held:
            lane = getattr(e, "lane", None)
            if lane is not None:
                lane.ring.clear()
                lane.lru_first = lane.lru_last = None
            e.lane = None  # type: ignore[assignment]
            e.lru_prev = e.lru_next = e.dl_prev = e.dl_next = None
        self._index.clear()
        self._exp_first = self._exp_last = None

    # -- construction helpers ---------------------------------------------------------
    @classmethod
    def builder(cls) -> Any:
        """A fluent ``QueueBuilder`` for this engine's ``Queue``."""
        from ._builder import QueueBuilder

        return QueueBuilder(cls)

    def _now(self) -> float:
        clock = self._clock
        return _mono() if clock is None else call_clock(clock)

    def _now_if_deadlines(self) -> float:
        # The clock is read only while some queued job has a deadline (an overdue job is
        # expired before any operation looks at the queue); otherwise -inf: no sweep.
        return self._now() if self._dl_jobs else _NEG_INF

    def _enter(self, method: str) -> None:
        """Mark the queue busy, just after taking its lock (``method`` names the caller).

        The call itself is a periodic check of the interpreter, where a signal handler or a
        scheduled collection can run, before the flag is set: such code may use the queue
        normally (the state is consistent). Once the flag is set, a call from this thread is
        refused (``_reentered``); every section clears it in a ``finally``."""
        if self._busy:
            _reentered(method)
        self._busy = True  # (the hot paths inline this, with an explicit _gc_point() call)

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

    @property
    def max_wait_ms(self) -> float | None:
        """Deadline of the tasks that set no ``max_wait_ms`` (None: they never expire)."""
        return self._max_wait

    @property
    def admit_only_feasible(self) -> bool:
        """Whether a task whose predicted wait exceeds its deadline is refused at once."""
        return self._feasible

    @property
    def max_queued_per_tenant(self) -> int | None:
        """Most jobs a named tenant may have queued (None: no cap)."""
        return self._tenant_cap or None

    @property
    def max_queued_tokens(self) -> int | None:
        """Bound on the queued jobs' ``Task.tokens`` (None: no bound)."""
        return self._budget or None

    def capacity(self) -> int:
        """The most jobs the queue holds."""
        return self._capacity

    def depth(self) -> int:
        """Jobs queued now (overdue jobs expire first)."""
        if self._dl_jobs:
            self._sweep_at(self._now())
        c = self._classes
        return c[0].live + c[1].live

    def __len__(self) -> int:
        if self._dl_jobs:
            self._sweep_at(self._now())
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

    def _window_into(self, now: float, slots: list[bool], out: list[Any]) -> None:
        """Fill ``slots`` (whether each slot is in the window: completed seconds) and ``out``
        (the window's enqueues, dequeues and length). Lock held: allocates nothing the GC
        tracks (no comprehension, generator or min/max argument tuple)."""
        cur = math.floor(now)
        lo = cur - WINDOW_S
        if lo < self._created_sec:
            lo = self._created_sec
        enq = deq = 0
        win_sec = self._win_sec
        for i in range(WINDOW_SLOTS):
            inside = lo <= win_sec[i] < cur
            slots[i] = inside
            if inside:
                enq += self._win_enq[i]
                deq += self._win_deq[i]
        # The window starts at the queue's creation when that is later than cur - WINDOW_S:
        # a queue created mid-second has lived only part of its first second.
        start = float(cur - WINDOW_S)
        if self._created_at > start:
            start = self._created_at
        win = cur - start
        out[0] = enq
        out[1] = deq
        out[2] = win if win > 0.0 else 0.0

    def _rate_ms_at(self, now: float) -> float:
        """Milliseconds per job ahead at the measured rate (0.0: no rate), out of line."""
        self._rate(now)
        return self._rate_ms

    def _rate(self, now: float) -> int:
        """Dequeues in the window at ``now`` (its length in ``_rate_win``), cached per second:
        the window holds completed seconds only, so it cannot change within a second."""
        if self._rate_lo <= now < self._rate_hi:
            return self._rate_deq
        cur = math.floor(now)
        lo = cur - WINDOW_S  # (no max(): lock held, see _window_into)
        if lo < self._created_sec:
            lo = self._created_sec
        deq = 0
        win_sec = self._win_sec
        win_deq = self._win_deq
        for i in range(WINDOW_SLOTS):
            if lo <= win_sec[i] < cur:
                deq += win_deq[i]
        self._rate_deq = deq
        start = float(cur - WINDOW_S)  # as _window_into()
        if self._created_at > start:
            start = self._created_at
        win = cur - start
        self._rate_win = win = win if win > 0.0 else 0.0
        self._rate_ms = 1000.0 * win / deq if deq else 0.0  # milliseconds per job ahead
        self._rate_lo = float(cur)  # floats: compared with now on every admission
        self._rate_hi = float(cur + 1)
        return deq

    # -- id helpers -------------------------------------------------------------------
    def _own_counter(self, job_id: str) -> int:
        """The counter of an id in this queue's own format, or 0."""
        prefix = self._prefix_dash
        if job_id.startswith(prefix):
            digits = job_id[len(prefix) :]
            if 0 < len(digits) <= 16 and digits[0] != "0" and all(c in "0123456789abcdef" for c in digits):
                return int(digits, 16)
        return 0

    # -- structure helpers (lock held) --------------------------------------------------
    def _rot_insert(self, c: _Class, lane: _Lane) -> None:
        """A lane that gets work joins its class's round robin at the back (just before cur).

        The circle is in label order (going round from the lane with the smallest label), so
        rank-tree keys can name a place in it: the lane takes a label between its neighbours',
        at most ``c.step`` past the one before it, so that lanes joining at one place in a row
        use the gap up slowly. When no integer is left between them, every lane of the class
        is relabelled evenly, in the same order (O(m), amortised O(1): each gap then holds
        2m + 2 more steps)."""
        cur = c.cur
        if cur is not None and not cur.live:
            # The empty default lane, kept alone in the circle: it leaves for good now.
            cur.rot_next = cur.rot_prev = None
            c.cur = cur = None
            c.nlanes = 0
        c.nlanes += 1
        if cur is None:
            lane.rot_next = lane.rot_prev = lane
            lane.label = _LABEL_MID
            c.cur = lane
            return
        if not c.ranked and c.nlanes > _RANK_LANES:
            # Enough lanes that walking them costs more than a rank tree: from now until the
            # class is empty it keeps one, made here from its jobs (O(n log n), amortised
            # O(log n) per job: each job is in at most one such build).
            c.rank.fill(c)
            c.ranked = True
        prev = cur.rot_prev
        lane.rot_prev = prev
        lane.rot_next = cur
        prev.rot_next = lane  # type: ignore[union-attr]
        cur.rot_prev = lane
        lo = prev.label  # type: ignore[union-attr]
        hi = cur.label
        step = c.step
        if lo < hi:
            gap = (hi - lo) >> 1
            if gap:
                lane.label = lo + (gap if gap < step else step)
                return
        else:  # cur has the smallest label and prev the greatest: go past prev, or below cur
            gap = (_LABEL_END - lo) >> 1
            if gap:
                lane.label = lo + (gap if gap < step else step)
                return
            gap = hi >> 1
            if gap:
                lane.label = hi - (gap if gap < step else step)
                return
        self._relabel(c, lane)

    @staticmethod
    def _relabel(c: _Class, new: _Lane) -> None:
        """Spread the labels of the class's lanes evenly, in the circle's order from the one
        with the smallest label (``new``, just linked in, has none yet and goes where it is)."""
        first = c.cur
        lane = first.rot_next  # type: ignore[union-attr]
        while lane is not c.cur:
            if lane is not new and (first is new or lane.label < first.label):  # type: ignore[union-attr]
                first = lane
            lane = lane.rot_next  # type: ignore[union-attr]
        n = c.nlanes
        gap = _LABEL_END // (n + 1)
        lane = first
        for i in range(1, n + 1):
            lane.label = i * gap  # type: ignore[union-attr]
            lane = lane.rot_next  # type: ignore[union-attr]
        step = gap // (2 * n + 2)
        c.step = step if step else 1

    def _rot_remove(self, c: _Class, lane: _Lane) -> None:
        """Take an emptied lane out of its class's round robin."""
        nxt = lane.rot_next
        if nxt is lane:
            c.cur = None
        else:
            prev = lane.rot_prev
            prev.rot_next = nxt  # type: ignore[union-attr]
            nxt.rot_prev = prev  # type: ignore[union-attr]
            if c.cur is lane:
                c.cur = nxt
        lane.rot_next = lane.rot_prev = None
        c.nlanes -= 1

    def _free_tenant(self, tr: _Tenant) -> None:
        del self._tenants[tr.name]
        if len(self._spare_tenants) < 4:
            self._spare_tenants.append(tr)  # its lanes are empty: reusable as is

    def _remove(self, e: _Entry) -> None:
        """Unlink a queued entry from everything but the job-id index (cancel, evict, expire)."""
        lane = e.lane
        c = self._classes[lane.prio]
        if c.ranked:
            c.rank.delete(lane.live, lane)
        lane.remove(e)
        lane.lru_unlink(e)
        c.live -= 1
        if self._budget:
            t = e.task._tokens
            c.tokens -= t
            self._queued_tokens -= t
        prev = e.dl_prev
        if prev is not None:
            nxt = e.dl_next
            prev.dl_next = nxt
            nxt.dl_prev = prev  # type: ignore[union-attr]
            e.dl_prev = e.dl_next = None
            self._dl_jobs -= 1
        if not lane.live:
            self._rot_remove(c, lane)
            if not c.live and c.ranked:
                c.rank.reset()
                c.ranked = False
        tr = lane.tenant
        if tr is not None:
            tr.live -= 1
            if not tr.live:
                self._free_tenant(tr)

    def _pop_rr(self, c: _Class) -> _Entry:
        """Remove and return the entry ``dequeue`` would take from a non-empty class."""
        lane = c.cur
        e = lane.ring[lane.head & lane.mask]  # type: ignore[union-attr]
        self._remove(e)  # type: ignore[arg-type]
        if lane.live:  # type: ignore[union-attr]
            c.cur = lane.rot_next  # type: ignore[union-attr]
        return e  # type: ignore[return-value]

    @staticmethod
    def _class_rank(c: _Class, lane: _Lane, k: int) -> int:
        """Jobs of class ``c`` (two or more lanes) the round robin hands out before ``lane``'s
        k-th (0-based) job: each lane from cur up to it in the circle gives min(its jobs,
        k + 1) first, every other lane min(its jobs, k), and the lane itself k. With a rank
        tree: the keys of level <= k, plus those of level k + 1 whose label lies in [cur's
        label, the lane's) going round the circle, O(log n); without (at most _RANK_LANES
        lanes), a walk round the circle."""
        if c.ranked:
            rk = c.rank  # (its methods are called, never stored: a bound method is GC-tracked)
            label = lane.label
            l_cur = c.cur.label  # type: ignore[union-attr]
            if l_cur <= label:
                return rk.count_lt(k + 1, 0) + rk.count_lt(k + 1, label) - rk.count_lt(k + 1, l_cur)
            # The range wraps past the greatest label: level <= k, then [l_cur, end), [0, label).
            return rk.count_lt(k + 2, 0) - rk.count_lt(k + 1, l_cur) + rk.count_lt(k + 1, label)
        ahead = k
        other = c.cur
        while other is not lane:
            n = other.live  # type: ignore[union-attr]
            ahead += n if n <= k else k + 1
            other = other.rot_next  # type: ignore[union-attr]
        other = lane.rot_next
        cur = c.cur
        while other is not cur:
            n = other.live  # type: ignore[union-attr]
            ahead += n if n < k else k
            other = other.rot_next  # type: ignore[union-attr]
        return ahead

    def _tail_position(self, c: _Class, lane: _Lane | None, p: int) -> int:
        """The position a job appended to ``lane`` would get (None: a tenant not queued yet)."""
        if not c.live:
            pos = 0
        elif lane is None or not lane.live:
            pos = c.nlanes  # a lane that joins the round robin goes last
        elif lane.rot_next is lane:
            pos = lane.live
        else:
            pos = self._class_rank(c, lane, lane.live)
        return pos + self._classes[0].live if p else pos

    def _rank_of(self, e: _Entry) -> int:
        lane = e.lane
        k = lane.rank(e.seq)
        c = self._classes[lane.prio]
        rank = k if lane.rot_next is lane else self._class_rank(c, lane, k)
        return rank + self._classes[0].live if lane.prio else rank

    @staticmethod
    def _victim_lane(c: _Class) -> _Lane:
        """DROP_LRU's lane in a non-empty class: the most jobs; ties: the latest in the round
        robin. With a rank tree: the greatest key's level, among the lanes holding it the
        greatest label below cur's, else the greatest, O(log n); without, a walk."""
        cur = c.cur
        if not c.ranked:
            best = lane = cur
            lane = lane.rot_next  # type: ignore[union-attr]
            while lane is not cur:
                if lane.live >= best.live:  # type: ignore[union-attr]
                    best = lane
                lane = lane.rot_next  # type: ignore[union-attr]
            return best  # type: ignore[return-value]
        rk = c.rank
        right = rk.right
        t = rk.root
        while right[t]:
            t = right[t]
        top = rk.level[t]
        x = rk.last_below(top, cur.label)  # type: ignore[union-attr]
        if x and rk.level[x] == top:
            t = x
        return rk.lane[t]  # type: ignore[return-value]

    def _wake_rooms(self) -> None:
        """Wake every producer waiting for room (each retries; the rest wait again)."""
        waiters = self._room_waiters
        while waiters:
            waiters.popleft().release()

    def _sweep(self, now: float) -> None:
        """Expire every job whose wait at ``now`` exceeds its max_wait_ms, earliest deadline
        first (ties: the shorter max_wait_ms); O(deadline lanes) per expired job."""
        dlanes = self._dlanes
        expired = 0
        while True:
            best = None
            best_due = 0.0
            for k in range(len(dlanes)):  # not `for dl in dlanes`: no iterator object under the lock
                dl = dlanes[k]
                head = dl.head
                h = head.dl_next
                if h is head:
                    continue
                mw = dl.max_wait_ms
                if (now - h.enqueued_at) * 1000.0 > mw:  # type: ignore[union-attr]
                    due = h.enqueued_at + mw / 1000.0  # type: ignore[union-attr]
                    if best is None or due < best_due or (due == best_due and mw < best.max_wait_ms):
                        best = dl
                        best_due = due
            if best is None:
                break
            e = best.head.dl_next
            self._remove(e)  # type: ignore[arg-type]
            del self._index[e.key]  # type: ignore[union-attr]
            e.left_at = now  # type: ignore[union-attr]
            e.lru_next = None  # type: ignore[union-attr]
            if self._exp_last is None:
                self._exp_first = e
            else:
                self._exp_last.lru_next = e
            self._exp_last = e
            expired += 1
        self._expired += expired
        due = math.inf
        i = len(dlanes) - 1
        while i >= 0:
            dl = dlanes[i]
            h = dl.head.dl_next
            if h is dl.head:
                del dlanes[i]
                if len(self._spare_dlanes) < 4:
                    self._spare_dlanes.append(dl)
            else:
                d = _due_hint(h.enqueued_at, dl.max_wait_ms)  # type: ignore[union-attr]
                if d < due:
                    due = d
            i -= 1
        self._dl_due = due
        if expired and self._room_waiters:
            self._wake_rooms()

    def _sweep_at(self, now: float) -> None:
        with self._lock:
            self._enter("depth")
            try:
                if now >= self._dl_due:
                    self._sweep(now)
            finally:
                self._busy = False

    # -- admission --------------------------------------------------------------------
    def enqueue(self, task: Task, wait: float | None = _NO_WAIT) -> Accepted | Rejected:
        """Admit ``task`` or refuse it.

        Returns ``Accepted(job_id, position, evicted)`` or ``Rejected(reason, ...)``; raises
        ``TypeError`` when ``task`` is not a ``Task``. ``wait=0`` (default) never blocks; a
        number of seconds (or None: until room or close) first waits for room when the queue
        would refuse the task with a retriable reason (full, or its deadline unmeetable),
        without holding the lock, then decides by the policy (DROP_LRU evicts only then).
        """
        if type(task) is not Task:
            raise TypeError(f"task must be a Task, got {task!r} ({type(task).__name__})")
        if wait is not _NO_WAIT and not (wait == 0 and (type(wait) is float or type(wait) is int)):
            return self._enqueue_waiting(task, check_timeout(wait, "wait"))
        clock = self._clock
        now = _mono() if clock is None else call_clock(clock)
        if not (task._plain and self._plain):
            return self._attempt(task, None, now)  # type: ignore[return-value]
        # The plain task (no tenant, deadline or budget) with room: the hot path, inlined.
        e = _new(_Entry)
        e.task = task
        e.enqueued_at = now
        e.dl_prev = None  # (dl_next is only read when dl_prev is set)
        p = 0 if task._priority is _INTERACTIVE else 1
        job_id = task._job_id
        own = self._own_counter(job_id) if job_id is not None else 0
        admitted = False
        with self._lock:
            # self._enter("enqueue"), inlined: this is the hot path.
            if self._busy:
                _reentered("enqueue")
            if _GC_AT_CHECKS:
                _gc_point()
            self._busy = True
            try:
                if now >= self._dl_due:
                    self._sweep(now)
                classes = self._classes
                inter = classes[0]
                if (
                    inter.live + classes[1].live < self._capacity
                    and not self._closed
                    and self._plain  # (again: a tenant may have come since it was read unlocked)
                    and not (self._limit and task._max_tokens > self._limit)
                    and (job_id is None or job_id not in self._index)
                ):
                    c = classes[p]
                    lane = c.dflt
                    # No tenant was ever seen (self._plain), so the default lane is the class's
                    # only lane: the job goes after its jobs.
                    position = lane.live + inter.live if p else lane.live
                    if self._policy_code != 2 or not position:
                        admitted = True
                        if job_id is None:
                            # %-formatting: an f-string's format spec looks up int.__format__,
                            # a new bound method (GC-tracked) under the lock.
                            job_id = self._prefix_dash + "%x" % self._next_id  # noqa: UP031
                            self._next_id += 1
                        elif own >= self._next_id:
                            self._next_id = own + 1
                        e.key = job_id
                        e.lane = lane
                        if lane.rot_next is None:
                            # The default lane joins the round robin, alone: a queue that has
                            # seen a tenant is not plain (self._rot_insert(c, lane), inlined).
                            lane.rot_next = lane.rot_prev = lane
                            lane.label = _LABEL_MID
                            c.cur = lane
                            c.nlanes = 1
                        # lane.push(e) and lane.lru_append(e), inlined.
                        tail = lane.tail
                        if tail - lane.head > lane.mask:
                            lane.grow()
                        e.seq = tail
                        lane.ring[tail & lane.mask] = e
                        lane.tail = tail + 1
                        lane.live += 1
                        e.lru_next = None
                        e.lru_prev = last = lane.lru_last
                        if last is None:
                            lane.lru_first = e
                        else:
                            last.lru_next = e
                        lane.lru_last = e
                        c.live += 1
                        self._index[job_id] = e
                        self._accepted += 1
                        slot = self._slot if now < self._sec_end else self._roll(now)
                        self._win_enq[slot] += 1
                        ms_per_job = self._rate_ms if self._rate_lo <= now < self._rate_hi else self._rate_ms_at(now)
                        if self._waiters:
                            self._waiters.popleft().release()
            finally:
                self._busy = False
        if not admitted:
            return self._attempt(task, None, now)  # type: ignore[return-value]
        res = _new(Accepted)
        res._job_id = job_id  # type: ignore[assignment]  # set under the lock when admitted
        res._position = position
        res._eta_ms = res._evicted = res._evicted_all = None
        res._ms_per_job = ms_per_job  # eta_ms = position * ms_per_job, multiplied when read
        return res

    def _enqueue_waiting(self, task: Task, timeout: float) -> Accepted | Rejected:
        deadline = 0.0
        if timeout != 0:
            # First without a wake-up lock or a deadline: with room (the usual case) this
            # admits at once; a retriable refusal counts, evicts and registers nothing.
            res = self._attempt(task, _PROBE)
            if res is not None:
                return res
            if timeout > 0:
                deadline = _mono() + timeout
        while True:
            if timeout > 0 and _mono() >= deadline:
                timeout = 0.0  # the last attempt decides by the policy
            waiter = None
            if timeout != 0:
                waiter = threading.Lock()
                waiter.acquire()
            res = self._attempt(task, waiter)
            if res is not None:
                return res
            assert waiter is not None
            try:
                if timeout < 0:
                    waiter.acquire()
                else:
                    remaining = deadline - _mono()
                    if remaining > 0:
                        waiter.acquire(True, min(remaining, threading.TIMEOUT_MAX))
            finally:
                with self._lock:
                    self._enter("enqueue")
                    try:
                        if waiter in self._room_waiters:  # unless already woken (no ValueError: lock held)
                            self._room_waiters.remove(waiter)
                    finally:
                        self._busy = False

    def _try_admit(self, task: Task) -> Accepted | Rejected | None:
        """One admission attempt as a waiting ``enqueue(task, wait=...)`` makes before its
        last (for ``AsyncQueue.put``): Accepted (never evicts), a non-retriable Rejected
        (counted), or None when the queue would refuse ``task`` with a retriable reason (full,
        fail-fast ahead, deadline unmeetable): then nothing is counted, evicted or registered."""
        if type(task) is not Task:
            raise TypeError(f"task must be a Task, got {task!r} ({type(task).__name__})")
        return self._attempt(task, _PROBE)

    def _attempt(self, task: Task, waiter: Any, now0: float | None = None) -> Accepted | Rejected | None:
        """One admission attempt (at ``now0`` if given). With a ``waiter`` a retriable refusal
        registers it as a room waiter and returns None instead, and DROP_LRU does not evict."""
        clock = self._clock
        tenant = task._tenant
        mw = task._max_wait_ms
        if mw is None:
            mw = self._max_wait
        tokens = task._tokens
        p = 0 if task._priority is _INTERACTIVE else 1
        job_id0 = task._job_id
        own = self._own_counter(job_id0) if job_id0 is not None else 0
        while True:
            if now0 is None:
                now = _mono() if clock is None else call_clock(clock)
            else:
                now = now0
                now0 = None
            # Records the locked part may need are made here, never under the lock.
            if tenant is not None and not self._spare_tenants:
                self._spare_tenants.append(_Tenant())
            if mw is not None and not self._spare_dlanes:
                self._spare_dlanes.append(_DLane())
            e = _new(_Entry)
            e.task = task
            e.enqueued_at = now
            e.dl_prev = e.dl_next = None
            job_id = job_id0
            victim_first: _Entry | None = None
            victim_last: _Entry | None = None
            ahead = 0
            position = 0
            retry_ms = 0
            eta: float | None = None
            used = 0
            pred_ms = 0.0
            full = _OK
            dlane: _DLane | None = None
            with self._lock:
                self._enter("enqueue")
                try:
                    if now >= self._dl_due:
                        self._sweep(now)
                    classes = self._classes
                    if tenant is not None:
                        self._plain = False  # tenants from now on: every task takes this path
                    inter = classes[0]
                    c = classes[p]
                    budget = self._budget
                    trec: _Tenant | None = None
                    lane: _Lane | None = c.dflt
                    if self._closed:
                        code = _CLOSED
                    elif self._limit and task._max_tokens > self._limit:
                        code = _OVER_LIMIT
                    elif budget and tokens > budget:
                        code = _OVER_BUDGET
                    elif job_id is not None and job_id in self._index:
                        code = _DUPLICATE
                    else:
                        code = _OK
                        if tenant is not None:
                            trec = self._tenants.get(tenant)
                            if trec is None:
                                lane = None
                            else:
                                lane = trec.lanes[p]
                                if self._tenant_cap and trec.live >= self._tenant_cap:
                                    code = _TENANT_CAP
                                    ahead = trec.live
                        if code == _OK:
                            # The position it would get: O(1) without tenants.
                            if lane is not None and lane.rot_next is lane:
                                position = lane.live
                                if p:
                                    position += inter.live
                            else:
                                position = self._tail_position(c, lane, p)
                            depth = inter.live + classes[1].live
                            if depth >= self._capacity:
                                full = _FULL
                            elif budget and self._queued_tokens + tokens > budget:
                                full = _FULL_TOKENS
                            pol = self._policy_code
                            if pol == 2:  # FAIL_FAST
                                if position:
                                    code = _AHEAD
                                    ahead = position
                                else:
                                    code = full
                            elif full:
                                if pol == 1 and waiter is None:
                                    # DROP_LRU: only if evicting every job it may evict makes room.
                                    n_el = classes[1].live
                                    t_el = classes[1].tokens
                                    if p == 0:
                                        n_el += inter.live
                                        t_el += inter.tokens
                                    if depth - n_el >= self._capacity:
                                        code = _FULL
                                    elif budget and self._queued_tokens - t_el + tokens > budget:
                                        code = _FULL_TOKENS
                                else:
                                    code = full
                            if code == _OK and mw is not None and position and self._feasible:
                                deq = self._rate(now)
                                if deq:
                                    win = self._rate_win
                                    pred_ms = position * self._rate_ms
                                    if pred_ms > mw:
                                        code = _UNMEETABLE
                                        ahead = position
                                        n = position - math.floor(mw * deq / (1000.0 * win))
                                        retry_ms = _retry_after(n if n > 0 else 1, deq, win)
                            if code == _OK:
                                if mw is not None:
                                    dlanes = self._dlanes
                                    for k in range(len(dlanes)):  # (no list iterator: lock held)
                                        dl = dlanes[k]
                                        if dl.max_wait_ms == mw:
                                            dlane = dl
                                            break
                                    else:
                                        if not self._spare_dlanes:
                                            code = _RETRY
                                if trec is None and tenant is not None and not self._spare_tenants:
                                    code = _RETRY
                    if code == _OK:
                        # Admitted: from here on nothing can fail.
                        if tenant is not None:
                            if trec is None:
                                trec = self._spare_tenants.pop()
                                trec.name = tenant
                                self._tenants[tenant] = trec
                            lane = trec.lanes[p]
                            trec.live += 1  # counted before evicting: an eviction cannot free it
                            self._fancy = True
                        assert lane is not None
                        if full:  # DROP_LRU: evict until both bounds fit
                            cap = self._capacity
                            nvict = 0
                            while inter.live + classes[1].live >= cap or (
                                budget and self._queued_tokens + tokens > budget
                            ):
                                vc = classes[1] if classes[1].live else inter
                                v = self._victim_lane(vc).lru_first
                                self._remove(v)  # type: ignore[arg-type]
                                del self._index[v.key]  # type: ignore[union-attr]
                                if victim_last is None:
                                    victim_first = v
                                else:
                                    victim_last.lru_next = v
                                victim_last = v
                                nvict += 1
                            self._evicted += nvict
                            position = self._tail_position(c, lane, p)
                        if mw is not None:
                            if dlane is None:
                                dlane = self._spare_dlanes.pop()
                                dlane.max_wait_ms = mw
                                self._dlanes.append(dlane)
                            sentinel = dlane.head
                            last = sentinel.dl_prev
                            e.dl_prev = last
                            e.dl_next = sentinel
                            last.dl_next = e  # type: ignore[union-attr]
                            sentinel.dl_prev = e
                            self._dl_jobs += 1
                            self._fancy = True
                            if last is sentinel:
                                d = _due_hint(now, mw)
                                if d < self._dl_due:
                                    self._dl_due = d
                        if job_id is None:
                            # %-formatting: an f-string's format spec looks up int.__format__,
                            # a new bound method (GC-tracked) under the lock.
                            job_id = self._prefix_dash + "%x" % self._next_id  # noqa: UP031
                            self._next_id += 1
                        elif own >= self._next_id:
                            self._next_id = own + 1
                        e.key = job_id
                        e.lane = lane
                        if lane.rot_next is None:
                            self._rot_insert(c, lane)
                        # lane.push(e) and lane.lru_append(e), inlined: this is the hot path.
                        tail = lane.tail
                        if tail - lane.head > lane.mask:
                            lane.grow()
                        e.seq = tail
                        lane.ring[tail & lane.mask] = e
                        lane.tail = tail + 1
                        lane.live += 1
                        e.lru_next = None
                        e.lru_prev = last_used = lane.lru_last
                        if last_used is None:
                            lane.lru_first = e
                        else:
                            last_used.lru_next = e
                        lane.lru_last = e
                        c.live += 1
                        if c.ranked:
                            c.rank.insert(lane.live, lane)
                        if budget:
                            c.tokens += tokens
                            self._queued_tokens += tokens
                        self._index[job_id] = e
                        self._accepted += 1
                        slot = self._slot if now < self._sec_end else self._roll(now)
                        self._win_enq[slot] += 1
                        deq = self._rate_deq if self._rate_lo <= now < self._rate_hi else self._rate(now)
                        if deq:
                            eta = position * self._rate_ms
                        if self._waiters:
                            self._waiters.popleft().release()
                    elif code != _RETRY:
                        if waiter is not None and code in _WAIT_CODES:
                            if waiter is not _PROBE:
                                self._room_waiters.append(waiter)
                                self._fancy = True
                            code = _WAIT
                        else:
                            self._rejected[_CODE_REASON[code]] += 1
                            if code in _FULL_CODES:
                                deq = self._rate(now)
                                retry_ms = _retry_after(ahead if code == _AHEAD else 1, deq, self._rate_win)
                                used = self._queued_tokens
                finally:
                    self._busy = False
            if code != _RETRY:
                break
        if code != _OK:
            if code == _WAIT:
                return None
            return _make_rejected(
                _REASONS[_CODE_REASON[code]],
                retry_ms,
                self._policy,
                self._refusal_message(code, task, ahead, used, pred_ms, mw),
            )
        res = _new(Accepted)
        res._job_id = job_id  # type: ignore[assignment]  # set under the lock when accepted
        res._position = position
        res._eta_ms = eta
        res._ms_per_job = 0.0
        if victim_first is None:
            res._evicted = None
            res._evicted_all = None
        else:
            jobs = []
            v = victim_first
            while v is not None:
                jobs.append(_make_job(v.key, v.task, v.enqueued_at, (now - v.enqueued_at) * 1000.0))
                if v is victim_last:
                    break
                v = v.lru_next
            res._evicted = jobs[0]
            res._evicted_all = tuple(jobs) if len(jobs) > 1 else None
        return res

    def _refusal_message(self, code: int, task: Task, ahead: int, used: int, pred_ms: float, mw: float | None) -> str:
        if code == _CLOSED:
            return f"queue {self._pool_id!r} is closed"
        if code == _OVER_LIMIT:
            return f"max_tokens {task._max_tokens} exceeds this queue's max_tokens_limit {self._limit}"
        if code == _OVER_BUDGET:
            return f"task of {task._tokens} tokens exceeds this queue's max_queued_tokens {self._budget}"
        if code == _DUPLICATE:
            return f"job_id {task._job_id!r} is already queued"
        if code == _TENANT_CAP:
            return (
                f"tenant {task._tenant!r} already has {ahead} job(s) queued (max_queued_per_tenant {self._tenant_cap})"
            )
        if code == _AHEAD:
            return f"fail-fast: {ahead} job(s) queued ahead of this {task._priority.value} task"
        if code == _UNMEETABLE:
            return (
                f"deadline unmeetable: {ahead} job(s) ahead would take about {pred_ms:.0f} ms "
                f"at the measured dequeue rate, over max_wait_ms {mw:g}"
            )
        if code == _FULL_TOKENS:
            msg = f"queue {self._pool_id!r} is full ({used} of {self._budget} queued tokens)"
            if self._policy is _DROP_LRU:
                msg += "; evicting every batch job would not make room for this batch task"
            return msg
        if self._policy is _DROP_LRU:
            return (
                f"queue {self._pool_id!r} is full ({self._capacity}) of interactive jobs; "
                "a batch task cannot evict them"
            )
        return f"queue {self._pool_id!r} is full ({self._capacity})"

    # -- leaving the queue ------------------------------------------------------------
    def _pop_locked(self, now: float) -> _Entry | None:
        if now >= self._dl_due:
            self._sweep(now)
        classes = self._classes
        c = classes[0]
        if not c.live:
            c = classes[1]
            if not c.live:
                return None
        lane = c.cur
        # lane.pop_head() and lane.lru_unlink(e), inlined: this is the hot path.
        ring = lane.ring  # type: ignore[union-attr]
        idx = lane.head & lane.mask  # type: ignore[union-attr]
        e = ring[idx]
        ring[idx] = None
        head = lane.head + 1  # type: ignore[union-attr]
        lane.head = head  # type: ignore[union-attr]
        lane.live -= 1  # type: ignore[union-attr]
        if lane.dead or (lane.mask >= _MIN_RING and (lane.tail - head) * 4 <= lane.mask + 1):  # type: ignore[union-attr]
            lane.after_head_moved()  # type: ignore[union-attr]
        elif head == lane.tail:  # type: ignore[union-attr]
            # Empty: restart at 0 (as after_head_moved would).
            lane.head = lane.tail = 0  # type: ignore[union-attr]
            lane.fen_ok = False  # type: ignore[union-attr]
            if lane.pending:  # type: ignore[union-attr]
                lane.pending.clear()  # type: ignore[union-attr]
        prev = e.lru_prev  # type: ignore[union-attr]
        nxt = e.lru_next  # type: ignore[union-attr]
        if prev is None:
            lane.lru_first = nxt  # type: ignore[union-attr]
        else:
            prev.lru_next = nxt
        if nxt is None:
            lane.lru_last = prev  # type: ignore[union-attr]
        else:
            nxt.lru_prev = prev
        c.live -= 1
        nxt = lane.rot_next  # type: ignore[union-attr]
        if lane.live:  # type: ignore[union-attr]
            c.cur = nxt
        elif nxt is lane and lane.tenant is None:  # type: ignore[union-attr]
            pass  # the default lane, alone: it stays in the circle, empty, until another lane joins
        else:
            # self._rot_remove(c, lane), inlined (lane is cur)
            if nxt is lane:
                c.cur = None
            else:
                prev = lane.rot_prev  # type: ignore[union-attr]
                prev.rot_next = nxt  # type: ignore[union-attr]
                nxt.rot_prev = prev  # type: ignore[union-attr]
                c.cur = nxt
            lane.rot_next = lane.rot_prev = None  # type: ignore[union-attr]
            c.nlanes -= 1
        if self._fancy:
            self._pop_extras(c, lane, e)  # type: ignore[arg-type]
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
        if self._fancy and self._room_waiters:
            self._wake_rooms()
        return e

    def _pop_extras(self, c: _Class, lane: _Lane, e: _Entry) -> None:
        """The tenant, token and deadline bookkeeping of a dequeue (lock held; only once a
        queue has seen any of them, see ``_fancy``)."""
        if self._budget:
            t = e.task._tokens
            c.tokens -= t
            self._queued_tokens -= t
        dprev = e.dl_prev
        if dprev is not None:
            dnext = e.dl_next
            dprev.dl_next = dnext
            dnext.dl_prev = dprev  # type: ignore[union-attr]
            self._dl_jobs -= 1
        if c.ranked:
            if c.live:
                c.rank.delete(lane.live + 1, lane)
            else:
                c.rank.reset()
                c.ranked = False
        tr = lane.tenant
        if tr is not None:
            tr.live -= 1
            if not tr.live:
                self._free_tenant(tr)

    def _remove_waiter(self, waiter: Any) -> bool:
        # A membership test, not try/except ValueError: lock held, and the exception is GC-tracked.
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            return True
        return False  # a producer or close() already woke it

    def _take(self, max_jobs: int, timeout: float, method: str) -> tuple[list[_Entry], float]:
        """Up to ``max_jobs`` entries, waiting up to ``timeout`` s (-1: forever) for the first
        (for the public ``method``)."""
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
                        self._enter(method)
                        try:
                            if self._waiters and (self._classes[0].live or self._classes[1].live):
                                self._waiters.popleft().release()
                        finally:
                            self._busy = False
                raise
            was_woken = False
            need_waiter = False
            with self._lock:
                self._enter(method)
                try:
                    while len(taken) < max_jobs:
                        e = self._pop_locked(now)
                        if e is None:
                            break
                        taken.append(e)
                    # Returned after the lock (the tuple is GC-tracked), and no min() (its
                    # argument tuple) under it.
                    done = len(taken) > 0 or self._closed or timeout == 0
                    remaining = -1.0
                    if not done and timeout > 0:
                        remaining = deadline - _mono()
                        if remaining <= 0:
                            done = True
                        elif remaining > threading.TIMEOUT_MAX:
                            remaining = threading.TIMEOUT_MAX
                    if not done:
                        if waiter is None:
                            need_waiter = True  # made outside the lock, then try again
                        else:
                            self._waiters.append(waiter)
                finally:
                    self._busy = False
            if done:
                return taken, now
            if need_waiter:
                # Only a consumer that has to wait pays for its wake-up lock.
                waiter = threading.Lock()
                waiter.acquire()
                continue
            try:
                waiter.acquire(True, remaining)
            except BaseException:
                with self._lock:
                    self._enter(method)
                    try:
                        if (
                            not self._remove_waiter(waiter)
                            and self._waiters
                            and (self._classes[0].live or self._classes[1].live)
                        ):
                            # Woken for a job we will not take: pass the wake-up on.
                            self._waiters.popleft().release()
                    finally:
                        self._busy = False
                raise
            with self._lock:
                self._enter(method)
                try:
                    was_woken = not self._remove_waiter(waiter)
                finally:
                    self._busy = False
            waiter = None
            if timeout > 0 and _mono() >= deadline:
                timeout = 0.0  # one last non-blocking attempt

    def dequeue(self, timeout: float | None = 0.0) -> Job | None:
        """The next job, or None: INTERACTIVE first; within a priority round robin over
        tenants, FIFO within a tenant. An overdue job is never handed out (it expires).

        ``timeout=0`` (default) never waits; a number waits up to that many seconds;
        ``None`` waits until a job arrives or the queue is closed and empty. A wait never
        holds the engine's lock and can be interrupted (KeyboardInterrupt).
        """
        if timeout == 0 and (type(timeout) is float or type(timeout) is int):
            clock = self._clock
            now = _mono() if clock is None else call_clock(clock)
            with self._lock:
                # self._enter("dequeue"), inlined: this is the hot path.
                if self._busy:
                    _reentered("dequeue")
                if _GC_AT_CHECKS:
                    _gc_point()
                self._busy = True
                try:
                    e = self._pop_locked(now)
                finally:
                    self._busy = False
            if e is None:
                return None
        else:
            taken, now = self._take(1, check_timeout(timeout), "dequeue")
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
        taken, now = self._take(n, check_timeout(timeout), "dequeue_many")
        return [_make_job(e.key, e.task, e.enqueued_at, (now - e.enqueued_at) * 1000.0) for e in taken]

    def take_expired(self) -> list[Job]:
        """The jobs that expired since the last call (earliest deadline first), to be reported
        to their clients. An expired job waited longer than its ``max_wait_ms`` (the task's,
        else the queue's); its ``wait_ms`` is how long it had waited when it expired. Expired
        jobs free their place at once but are held here until taken: call this regularly."""
        now = self._now_if_deadlines()
        with self._lock:
            self._enter("take_expired")
            try:
                if now >= self._dl_due:
                    self._sweep(now)
                e = self._exp_first
                self._exp_first = self._exp_last = None
            finally:
                self._busy = False
        out = []
        while e is not None:
            out.append(_make_job(e.key, e.task, e.enqueued_at, (e.left_at - e.enqueued_at) * 1000.0))
            e = e.lru_next
        return out

    def drain(self) -> list[Job]:
        """Remove and return every queued job in dequeue order (counted as drained)."""
        now = self._now()
        taken: list[_Entry] = []  # (made before the lock: nothing GC-tracked is made under it)
        classes = self._classes
        with self._lock:
            self._enter("drain")
            try:
                if now >= self._dl_due:
                    self._sweep(now)
                for p in range(2):  # not `for c in classes`: no iterator object under the lock
                    c = classes[p]
                    while c.live:
                        e = self._pop_rr(c)
                        del self._index[e.key]
                        taken.append(e)
                self._drained += len(taken)
                if taken and self._room_waiters:
                    self._wake_rooms()
            finally:
                self._busy = False
        return [_make_job(e.key, e.task, e.enqueued_at, (now - e.enqueued_at) * 1000.0) for e in taken]

    def close(self) -> None:
        """Refuse further enqueues (``QUEUE_CLOSED``) and wake every blocked consumer and
        producer.

        Queued jobs can still be dequeued or drained. Idempotent.
        """
        with self._lock:
            self._enter("close")
            try:
                self._closed = True
                waiters = self._waiters
                while waiters:
                    waiters.popleft().release()
                self._wake_rooms()
            finally:
                self._busy = False

    # -- by job id --------------------------------------------------------------------
    def cancel(self, job_id: str) -> bool:
        """Remove a queued job; False if it is not queued. Idempotent."""
        if type(job_id) is not str or not (0 < len(job_id) <= JOB_ID_MAX_LEN and job_id.isprintable()):
            job_id = check_job_id(job_id)
        now = self._now_if_deadlines()
        with self._lock:
            self._enter("cancel")
            try:
                if now >= self._dl_due:
                    self._sweep(now)
                e = self._index.pop(job_id, None)
                if e is None:
                    return False
                self._remove(e)
                self._cancelled += 1
                if self._room_waiters:
                    self._wake_rooms()
            finally:
                self._busy = False
        return True

    def touch(self, job_id: str) -> bool:
        """Mark a queued job as just used (DROP_LRU evicts it last in its tenant); False if not queued."""
        if type(job_id) is not str or not (0 < len(job_id) <= JOB_ID_MAX_LEN and job_id.isprintable()):
            job_id = check_job_id(job_id)
        now = self._now_if_deadlines()
        with self._lock:
            self._enter("touch")
            try:
                if now >= self._dl_due:
                    self._sweep(now)
                e = self._index.get(job_id)
                if e is None:
                    return False
                lane = e.lane
                if lane.lru_last is not e:
                    lane.lru_unlink(e)
                    lane.lru_append(e)
            finally:
                self._busy = False
        return True

    def position(self, job_id: str) -> int | None:
        """Jobs ``dequeue`` would hand out before this one (0 = next), or None if not queued.

        O(log n), with any number of tenants.
        """
        if type(job_id) is not str or not (0 < len(job_id) <= JOB_ID_MAX_LEN and job_id.isprintable()):
            job_id = check_job_id(job_id)
        now = self._now_if_deadlines()
        with self._lock:
            self._enter("position")
            try:
                if now >= self._dl_due:
                    self._sweep(now)
                e = self._index.get(job_id)
                if e is None:
                    return None
                return self._rank_of(e)
            finally:
                self._busy = False

    def eta_ms(self, job_id: str) -> float | None:
        """Advisory: milliseconds until the jobs ahead of this one drain at the measured
        dequeue rate (``position`` over the rate of the metrics window); None if it is not
        queued or nothing was dequeued in the window."""
        if type(job_id) is not str or not (0 < len(job_id) <= JOB_ID_MAX_LEN and job_id.isprintable()):
            job_id = check_job_id(job_id)
        now = self._now()
        with self._lock:
            self._enter("eta_ms")
            try:
                if now >= self._dl_due:
                    self._sweep(now)
                e = self._index.get(job_id)
                if e is None:
                    return None
                deq = self._rate(now)
                if not deq:
                    return None
                return self._rank_of(e) * self._rate_ms
            finally:
                self._busy = False

    def __contains__(self, job_id: object) -> bool:
        if type(job_id) is not str:
            if not isinstance(job_id, str):
                return False
            job_id = str.__str__(job_id)  # never a subclass's __hash__ / __eq__
        now = self._now_if_deadlines()
        with self._lock:
            self._enter("__contains__")
            try:
                if now >= self._dl_due:
                    self._sweep(now)
                return job_id in self._index
            finally:
                self._busy = False

    @staticmethod
    def _lanes_into(c: _Class, lru: bool, keys: list[Any], k: int, counts: list[int], j: int) -> int:
        """Lock held, ``c`` not empty: copy the job ids of ``c``'s lanes, lane after lane in
        round-robin order (each in dequeue order, or LRU order with ``lru``), into ``keys`` from
        index ``k``, and the lanes' lengths into ``counts`` from index ``j`` (both big enough);
        returns the index after the last id written."""
        lane = c.cur
        while True:
            k0 = k
            if lru:
                e = lane.lru_first  # type: ignore[union-attr]
                while e is not None:
                    keys[k] = e.key
                    k += 1
                    e = e.lru_next
            else:
                ring = lane.ring  # type: ignore[union-attr]
                mask = lane.mask  # type: ignore[union-attr]
                for s in range(lane.head, lane.tail):  # type: ignore[union-attr]
                    e = ring[s & mask]
                    if e is not None:
                        keys[k] = e.key
                        k += 1
            counts[j] = k - k0
            j += 1
            lane = lane.rot_next  # type: ignore[union-attr]
            if lane is c.cur:
                return k

    def _copy_lanes(self, method: str, first: int, stop: int, lru: bool) -> tuple[list[Any], list[int], list[int]]:
        """The job ids of classes ``first`` to ``stop - 1``, lane after lane (see
        ``_lanes_into``), each lane's length, and how many lanes each class has. The lists are
        made before the lock, at the sizes read without it, and filled under it; if the queue
        grew in between, they are made again, larger."""
        classes = self._classes
        now = self._now_if_deadlines()
        n_keys = n_lanes = 0
        for p in range(first, stop):
            n_keys += classes[p].live
            n_lanes += classes[p].nlanes
        while True:
            keys: list[Any] = [None] * n_keys
            counts = [0] * n_lanes
            lanes_of = [0, 0]
            with self._lock:
                self._enter(method)
                try:
                    if now >= self._dl_due:
                        self._sweep(now)
                    n_keys = n_lanes = 0
                    for p in range(first, stop):
                        c = classes[p]
                        if c.live:
                            n_keys += c.live
                            n_lanes += c.nlanes
                    fits = n_keys <= len(keys) and n_lanes <= len(counts)
                    if fits:
                        k = j = 0
                        for p in range(first, stop):
                            c = classes[p]
                            if c.live:
                                k = self._lanes_into(c, lru, keys, k, counts, j)
                                lanes_of[p] = c.nlanes
                                j += c.nlanes
                finally:
                    self._busy = False
            if fits:
                return keys, counts, lanes_of
            n_keys += n_keys // 2 + 8  # it grew meanwhile: leave some room this time
            n_lanes += n_lanes // 2 + 8

    def snapshot(self, priority: Priority | str | None = None) -> list[str]:
        """Queued job ids in dequeue order (only one class when ``priority`` is given)."""
        if priority is None:
            first, stop = 0, 2
        else:
            first = _PRIORITIES.index(Priority.parse(priority, "priority"))
            stop = first + 1
        keys, counts, lanes_of = self._copy_lanes("snapshot", first, stop, False)
        out: list[str] = []
        k = j = 0
        for p in range(first, stop):
            # The round robin: one job from each lane in turn, while it has any.
            lanes = []
            for _ in range(lanes_of[p]):
                lanes.append((k, counts[j]))
                k += counts[j]
                j += 1
            r = 0
            while lanes:
                rest = []
                for start, n in lanes:
                    out.append(keys[start + r])
                    if n > r + 1:
                        rest.append((start, n))
                lanes = rest
                r += 1
        return out

    def lru_order(self, priority: Priority | str) -> list[str]:
        """Job ids of one class in the order DROP_LRU would evict them: least recently used
        first (enqueue and ``touch`` make a job recent); with tenants, each eviction takes
        from the tenant with the most jobs in the class (ties: the latest in the round robin)."""
        p = _PRIORITIES.index(Priority.parse(priority, "priority"))
        keys, counts, lanes_of = self._copy_lanes("lru_order", p, p + 1, True)
        per_lane: list[list[str]] = []
        k = 0
        for j in range(lanes_of[p]):
            per_lane.append(keys[k : k + counts[j]])
            k += counts[j]
        if len(per_lane) == 1:
            return per_lane[0]
        heap = [(-len(keys), -i) for i, keys in enumerate(per_lane)]
        heapq.heapify(heap)
        taken = [0] * len(per_lane)
        out = []
        while heap:
            neg_n, neg_i = heapq.heappop(heap)
            i = -neg_i
            out.append(per_lane[i][taken[i]])
            taken[i] += 1
            if neg_n < -1:
                heapq.heappush(heap, (neg_n + 1, neg_i))
        return out

    # -- metrics ----------------------------------------------------------------------
    def metrics(self) -> QueueMetrics:
        """An immutable snapshot of counters, rates and wait percentiles (O(1) in depth,
        O(m) in the tenants with queued work)."""
        now = self._now()
        # Everything the snapshot needs is made before the lock and filled under it (ints,
        # floats and flags only); the result is built after it.
        slots = [False] * WINDOW_SLOTS
        window: list[Any] = [0, 0, 0.0]
        hist = [0] * WAIT_BUCKETS
        life = [0] * WAIT_BUCKETS
        rejected = [0] * len(_REASONS)
        classes = self._classes
        c0 = classes[0]
        c1 = classes[1]
        with self._lock:
            self._enter("metrics")
            try:
                if now >= self._dl_due:
                    self._sweep(now)
                self._window_into(now, slots, window)
                wmax = 0.0
                for i in range(WINDOW_SLOTS):
                    if slots[i]:
                        h = self._win_hist[i]
                        for b in range(WAIT_BUCKETS):
                            hist[b] += h[b]
                        if self._win_max[i] > wmax:
                            wmax = self._win_max[i]
                oldest = None
                for p in range(2):
                    c = classes[p]
                    if c.live:  # every lane in the round robin has jobs: compare their heads
                        lane = c.cur
                        while True:
                            t = lane.ring[lane.head & lane.mask].enqueued_at  # type: ignore[union-attr]
                            if oldest is None or t < oldest:
                                oldest = t
                            lane = lane.rot_next  # type: ignore[union-attr]
                            if lane is c.cur:
                                break
                src = self._life_hist
                for b in range(WAIT_BUCKETS):
                    life[b] = src[b]
                src = self._rejected
                for r in range(len(_REASONS)):
                    rejected[r] = src[r]
                live0 = c0.live
                live1 = c1.live
                accepted = self._accepted
                evicted = self._evicted
                cancelled = self._cancelled
                dequeued = self._dequeued
                drained = self._drained
                expired = self._expired
                life_sum = self._life_sum
                closed = self._closed
                tokens = self._queued_tokens
            finally:
                self._busy = False
        enq, deq, win = window
        raw = (
            now,
            self._capacity,
            live0,
            live1,
            accepted,
            tuple(rejected),
            evicted,
            cancelled,
            dequeued,
            drained,
            oldest,
            win,
            enq,
            deq,
            hist,
            wmax,
            life,
            life_sum,
            _retry_after(1, deq, win),
            closed,
            expired,
            tokens if self._budget else None,
        )
        return build_metrics(self._pool_id, self._policy.value, raw)


# fork(): every queue's lock is taken before the fork, so no thread is half-way through an
# operation in the child's copy; the child then unlocks and forgets the parent's blocked
# consumers (their threads do not exist there). (The locks are RLocks: the forking thread
# is the child's main thread, with the same identity, so it releases what it took.)
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
        q._room_waiters.clear()
        q._lock.release()
    _FORK_HELD.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)

_CLOSED_R: Final = RejectionReason.QUEUE_CLOSED
_POLICY_R: Final = RejectionReason.POLICY_VIOLATION
_INVALID_R: Final = RejectionReason.INVALID_REQUEST
_FULL_R: Final = RejectionReason.QUEUE_FULL
_REASON_INDEX: Final = {r: i for i, r in enumerate(_REASONS)}
# Refusal code -> index of its RejectionReason.
_CODE_REASON: Final = {
    _FULL: 0,
    _FULL_TOKENS: 0,
    _AHEAD: 0,
    _DUPLICATE: 1,
    _OVER_LIMIT: 2,
    _OVER_BUDGET: 2,
    _TENANT_CAP: 2,
    _CLOSED: 3,
    _UNMEETABLE: 4,
}
