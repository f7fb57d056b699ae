# The admission engine, compiled: C data under a real lock. Specification: _core_py.py.
#
# Invariants (the same block heads _core_py.py):
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
#
# C-specific: entries are PyMem_Malloc'd (pymalloc, 64 bytes) outside the lock; the ring,
# index, Fenwick and pending arrays use PyMem_Raw* so they can be resized without the GIL.
# Own job ids ("<prefix>-<hex counter>") are stored as their counter and turned into a str
# only when read, so a queued job costs no Python object besides its task.
"""Compiled engine (Cython). Same behaviour as ``orchestrator_core._core_py``."""

cimport cython
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.mem cimport PyMem_Malloc, PyMem_Free, PyMem_RawMalloc, PyMem_RawRealloc, PyMem_RawFree
from libc.stdint cimport int64_t, uint64_t
from libc.string cimport memcpy, memcmp, memset
from libc.math cimport floor, ceil, log2, isfinite

import math as _math
import threading as _threading

from ._stats import WAIT_BUCKET_BOUNDS_MS as _WAIT_BUCKET_BOUNDS_MS, build_metrics as _build_metrics
from ._types import AdmissionPolicy, Priority, RejectionReason
from ._validate import (
    JOB_ID_MAX_LEN,
    check_clock_value as _check_clock_value,
    check_count as _check_count,
    check_job_id as _check_job_id,
    check_queue_args as _check_queue_args,
    check_timeout as _check_timeout,
    raise_task_error as _raise_task_error,
)

__all__ = ["Accepted", "Job", "Queue", "Rejected", "Task"]

cdef extern from "Python.h":
    Py_ssize_t PyUnicode_GET_LENGTH(object)
    int PyUnicode_KIND(object)
    void *PyUnicode_DATA(object)
    bint PyUnicode_IS_ASCII(object)
    object PyUnicode_FromStringAndSize(const char *, Py_ssize_t)
    Py_ssize_t PyObject_Hash(object) except -1

cdef extern from "pythread.h":
    ctypedef enum PyLockStatus:
        PY_LOCK_FAILURE
        PY_LOCK_ACQUIRED
        PY_LOCK_INTR
    PyThread_type_lock PyThread_allocate_lock()
    void PyThread_free_lock(PyThread_type_lock) nogil
    int PyThread_acquire_lock(PyThread_type_lock, int) nogil
    PyLockStatus PyThread_acquire_lock_timed(PyThread_type_lock, long long, int) nogil
    void PyThread_release_lock(PyThread_type_lock) nogil
    long long PY_TIMEOUT_MAX

cdef object _ZERO = 0.0
cdef object _INTERACTIVE = Priority.INTERACTIVE
cdef object _BATCH = Priority.BATCH
cdef tuple _PRIORITIES = (_INTERACTIVE, _BATCH)
cdef tuple _POLICIES = (AdmissionPolicy.REJECT_NEW, AdmissionPolicy.DROP_LRU, AdmissionPolicy.FAIL_FAST)
cdef tuple _REASONS = tuple(RejectionReason)
cdef object _FULL_R = RejectionReason.QUEUE_FULL
cdef object _INVALID_R = RejectionReason.INVALID_REQUEST
cdef object _POLICY_R = RejectionReason.POLICY_VIOLATION
cdef object _CLOSED_R = RejectionReason.QUEUE_CLOSED

# Outcome codes of the locked part of enqueue (mirrored in _core_py.py).
cdef enum:
    OK = 0
    FULL = 1
    DUPLICATE = 2
    OVER_LIMIT = 3
    CLOSED = 4
    AHEAD = 5
    NOMEM = 6

cdef enum:
    MIN_RING = 8
    COMPACT_SLACK = 32
    MIN_TABLE = 16

# Retry-After (mirrors orchestrator_core._stats)
cdef int64_t RETRY_AFTER_DEFAULT_MS = 1000
cdef int64_t RETRY_AFTER_MIN_MS = 1
cdef int64_t RETRY_AFTER_MAX_MS = 60000

# Whether enqueue/dequeue release the GIL around their (sub-microsecond) locked part.
# Blocking waits always release it. See the README's performance section for the measurement.
cdef bint _release_gil = False


def _set_release_gil(bint flag):
    """Benchmark hook: release the GIL around the short locked operations (default False)."""
    global _release_gil
    _release_gil = flag


def _get_release_gil():
    return _release_gil


# ---------------------------------------------------------------------------------------
# Small helpers

cdef inline uint64_t _mix(uint64_t x) noexcept nogil:
    # splitmix64 finaliser: spreads consecutive counters over the table.
    x ^= x >> 30
    x *= <uint64_t>0xbf58476d1ce4e5b9
    x ^= x >> 27
    x *= <uint64_t>0x94d049bb133111eb
    x ^= x >> 31
    return x


cdef inline double _mono() noexcept nogil:
    return oc_monotonic()


# The finite bucket bounds, the same doubles as _stats.WAIT_BUCKET_BOUNDS_MS.
cdef double _BOUNDS[WAIT_BUCKETS - 1]
for _i, _b in enumerate(_WAIT_BUCKET_BOUNDS_MS):
    _BOUNDS[_i] = _b


cdef inline int _bucket(double wait_ms) noexcept nogil:
    cdef int idx
    if wait_ms <= 0.1:
        return 0
    idx = <int>ceil(log2(wait_ms / 0.1) * 4.0)
    if idx >= WAIT_BUCKETS:
        idx = WAIT_BUCKETS - 1
    # log2 rounds: within an ulp or two of a bound the estimate can be one bucket off, so
    # settle it against the table (bucket i holds (bound[i-1], bound[i]]).
    if idx < WAIT_BUCKETS - 1 and wait_ms > _BOUNDS[idx]:
        idx += 1
    elif idx > 0 and wait_ms <= _BOUNDS[idx - 1]:
        idx -= 1
    return idx


cdef inline int64_t _floor_i(double x) noexcept nogil:
    return <int64_t>floor(x)


cdef inline int64_t _mod(int64_t a, int64_t b) noexcept nogil:
    cdef int64_t r = a % b
    return r + b if r < 0 else r


cdef extern from "Python.h":
    Py_ssize_t _ulen "PyUnicode_GET_LENGTH"(PyObject *) noexcept nogil
    int _ukind "PyUnicode_KIND"(PyObject *) noexcept nogil
    void *_udata "PyUnicode_DATA"(PyObject *) noexcept nogil


cdef inline bint _str_eq(PyObject *a, PyObject *b) noexcept nogil:
    # Both are exact str: compare their data, never their __eq__ (no Python code runs).
    if a == b:
        return True
    cdef Py_ssize_t n = _ulen(a)
    if n != _ulen(b):
        return False
    cdef int kind = _ukind(a)
    if kind != _ukind(b):
        return False
    return memcmp(_udata(a), _udata(b), <size_t>(n * kind)) == 0


# ---------------------------------------------------------------------------------------
# Ring buffer, LRU list and Fenwick tree of one priority class (lock held, no GIL needed)

cdef int _ring_init(PClass *c) noexcept nogil:
    memset(c, 0, sizeof(PClass))
    c.ring = <Entry **>PyMem_RawMalloc(MIN_RING * sizeof(Entry *))
    if c.ring == NULL:
        return -1
    memset(c.ring, 0, MIN_RING * sizeof(Entry *))
    c.mask = MIN_RING - 1
    return 0


cdef void _ring_free(PClass *c) noexcept nogil:
    PyMem_RawFree(c.ring)
    PyMem_RawFree(c.fen)
    PyMem_RawFree(c.pending)
    c.ring = NULL
    c.fen = NULL
    c.pending = NULL


cdef int _ring_reserve(PClass *c) noexcept nogil:
    """Make room for one more entry (double when full); -1 when out of memory."""
    cdef int64_t cap = c.mask + 1
    cdef int64_t s, mask
    cdef Entry **ring
    if c.tail - c.head == cap:
        # Double: after copying the ring after itself, every seq's cell under the new
        # mask holds its entry; clear the other copy (same steps as the pure twin).
        ring = <Entry **>PyMem_RawRealloc(c.ring, 2 * cap * sizeof(Entry *))
        if ring == NULL:
            return -1
        memcpy(ring + cap, ring, cap * sizeof(Entry *))
        c.ring = ring
        c.mask = mask = 2 * cap - 1
        for s in range(c.head, c.tail):
            ring[(s & mask) ^ cap] = NULL
        c.fen_ok = False
    return 0


cdef inline void _ring_push(PClass *c, Entry *e) noexcept nogil:
    # Room was reserved by _ring_reserve.
    e.seq = c.tail
    c.ring[c.tail & c.mask] = e
    c.tail += 1
    c.live += 1


cdef void _pend(PClass *c, int64_t idx, bint plus) noexcept nogil:
    cdef int64_t *p
    cdef int64_t ncap
    if c.npending == c.pending_cap:
        ncap = c.pending_cap * 2 if c.pending_cap else 16
        p = <int64_t *>PyMem_RawRealloc(c.pending, ncap * sizeof(int64_t))
        if p == NULL:
            c.fen_ok = False  # rebuild from scratch at the next position()
            c.npending = 0
            return
        c.pending = p
        c.pending_cap = ncap
    c.pending[c.npending] = 2 * idx + (1 if plus else 0)
    c.npending += 1
    if c.npending > c.mask + 1:
        c.fen_ok = False
        c.npending = 0


cdef void _shrink(PClass *c) noexcept nogil:
    # Halve in place: live seqs span < cap/2, so no two share a cell under the new mask.
    cdef int64_t half = (c.mask + 1) // 2
    cdef int64_t i
    cdef Entry **ring = c.ring
    for i in range(half, 2 * half):
        if ring[i] != NULL:
            ring[i - half] = ring[i]
    ring = <Entry **>PyMem_RawRealloc(c.ring, half * sizeof(Entry *))
    if ring != NULL:
        c.ring = ring
    c.mask = half - 1
    c.fen_ok = False
    c.npending = 0


cdef void _after_head_moved(PClass *c) noexcept nogil:
    cdef Entry **ring = c.ring
    cdef int64_t mask = c.mask
    while c.dead and ring[c.head & mask] == NULL:
        if c.fen_ok:
            _pend(c, c.head & mask, False)
        c.head += 1
        c.dead -= 1
    if c.head == c.tail:
        c.head = c.tail = 0
        c.fen_ok = False
        c.npending = 0
    if mask + 1 > MIN_RING and (c.tail - c.head) * 4 <= mask + 1:
        _shrink(c)


cdef Entry *_ring_pop_head(PClass *c) noexcept nogil:
    cdef int64_t idx = c.head & c.mask
    cdef Entry *e = c.ring[idx]
    c.ring[idx] = NULL
    c.head += 1
    c.live -= 1
    _after_head_moved(c)
    return e


cdef void _compact(PClass *c) noexcept nogil:
    cdef Entry **ring = c.ring
    cdef int64_t mask = c.mask
    cdef int64_t write = c.head
    cdef int64_t s
    cdef Entry *e
    for s in range(c.head, c.tail):
        e = ring[s & mask]
        if e != NULL:
            if s != write:
                ring[write & mask] = e
                ring[s & mask] = NULL
                e.seq = write
            write += 1
    c.tail = write
    c.dead = 0
    c.fen_ok = False
    c.npending = 0
    if mask + 1 > MIN_RING and (c.tail - c.head) * 4 <= mask + 1:
        _shrink(c)


cdef void _ring_remove(PClass *c, Entry *e) noexcept nogil:
    cdef int64_t idx = e.seq & c.mask
    c.ring[idx] = NULL
    c.live -= 1
    if e.seq == c.head:
        c.head += 1
        _after_head_moved(c)
        return
    c.dead += 1
    if c.fen_ok:
        _pend(c, idx, True)
    if c.dead > c.live + COMPACT_SLACK:
        _compact(c)


cdef inline int64_t _fen_sum(PClass *c, int64_t i) noexcept nogil:
    cdef int64_t total = 0
    while i > 0:
        total += c.fen[i]
        i &= i - 1
    return total


cdef int _fen_sync(PClass *c) noexcept nogil:
    cdef int64_t n = c.mask + 1
    cdef int64_t i, j, s, k, code
    cdef int64_t *fen
    cdef Entry **ring = c.ring
    if not c.fen_ok:
        if c.fen_size != n + 1:
            fen = <int64_t *>PyMem_RawRealloc(c.fen, (n + 1) * sizeof(int64_t))
            if fen == NULL:
                return -1
            c.fen = fen
            c.fen_size = n + 1
        fen = c.fen
        memset(fen, 0, (n + 1) * sizeof(int64_t))
        for s in range(c.head, c.tail):
            if ring[s & c.mask] == NULL:
                fen[(s & c.mask) + 1] = 1
        for i in range(1, n + 1):
            j = i + (i & -i)
            if j <= n:
                fen[j] += fen[i]
        c.fen_ok = True
    else:
        fen = c.fen
        for k in range(c.npending):
            code = c.pending[k]
            i = (code >> 1) + 1
            while i <= n:
                fen[i] += 1 if code & 1 else -1
                i += i & -i
    c.npending = 0
    return 0


cdef int64_t _rank(PClass *c, int64_t seq) noexcept nogil:
    """Live entries ahead of seq in the class, or -1 when out of memory."""
    cdef int64_t h, p, dead
    if not c.dead:
        return seq - c.head
    if _fen_sync(c) < 0:
        return -1
    h = c.head & c.mask
    p = seq & c.mask
    if h <= p:
        dead = _fen_sum(c, p) - _fen_sum(c, h)
    else:
        dead = _fen_sum(c, c.mask + 1) - _fen_sum(c, h) + _fen_sum(c, p)
    return seq - c.head - dead


cdef inline void _lru_append(PClass *c, Entry *e) noexcept nogil:
    e.lru_next = NULL
    e.lru_prev = c.lru_last
    if c.lru_last == NULL:
        c.lru_first = e
    else:
        c.lru_last.lru_next = e
    c.lru_last = e


cdef inline void _lru_unlink(PClass *c, Entry *e) noexcept nogil:
    if e.lru_prev == NULL:
        c.lru_first = e.lru_next
    else:
        e.lru_prev.lru_next = e.lru_next
    if e.lru_next == NULL:
        c.lru_last = e.lru_prev
    else:
        e.lru_next.lru_prev = e.lru_prev
    e.lru_prev = e.lru_next = NULL


# ---------------------------------------------------------------------------------------
# Job-id index: open addressing, linear probing, backward-shift deletion (lock held)

cdef inline bint _key_eq(Entry *e, Key *k) noexcept nogil:
    if e.hash != k.hash:
        return False
    if k.key_str == NULL:
        return e.key_str == NULL and e.counter == k.counter
    return e.key_str != NULL and _str_eq(e.key_str, k.key_str)


cdef Entry *_find(State *s, Key *k, uint64_t *slot_out) noexcept nogil:
    cdef uint64_t i = k.hash & s.tmask
    cdef Entry *e
    while True:
        e = s.table[i]
        if e == NULL:
            return NULL
        if _key_eq(e, k):
            if slot_out != NULL:
                slot_out[0] = i
            return e
        i = (i + 1) & s.tmask


cdef int _table_resize(State *s, uint64_t size) noexcept nogil:
    cdef Entry **old = s.table
    cdef uint64_t oldsize = s.tmask + 1
    cdef Entry **t = <Entry **>PyMem_RawMalloc(size * sizeof(Entry *))
    cdef uint64_t i, j
    if t == NULL:
        return -1
    memset(t, 0, size * sizeof(Entry *))
    for i in range(oldsize):
        if old[i] != NULL:
            j = old[i].hash & (size - 1)
            while t[j] != NULL:
                j = (j + 1) & (size - 1)
            t[j] = old[i]
    s.table = t
    s.tmask = size - 1
    PyMem_RawFree(old)
    return 0


cdef void _table_insert(State *s, Entry *e) noexcept nogil:
    cdef uint64_t i
    if (s.tcount + 1) * 2 > <int64_t>(s.tmask + 1):
        # On failure the table stays at up to full load: still room, only slower probes.
        _table_resize(s, (s.tmask + 1) * 2)
    i = e.hash & s.tmask
    while s.table[i] != NULL:
        i = (i + 1) & s.tmask
    s.table[i] = e
    s.tcount += 1


cdef void _table_delete_slot(State *s, uint64_t i) noexcept nogil:
    cdef uint64_t mask = s.tmask
    cdef uint64_t j = i
    cdef uint64_t k
    cdef Entry **t = s.table
    while True:
        j = (j + 1) & mask
        if t[j] == NULL:
            break
        k = t[j].hash & mask
        # Move t[j] back to i unless its ideal slot k lies cyclically in (i, j].
        if (j > i and (k <= i or k > j)) or (j < i and (k <= i and k > j)):
            t[i] = t[j]
            i = j
    t[i] = NULL
    s.tcount -= 1
    if s.tcount * 8 < <int64_t>(mask + 1) and mask + 1 > MIN_TABLE:
        _table_resize(s, (mask + 1) // 2)  # on failure the table just stays larger


cdef void _table_delete(State *s, Entry *e) noexcept nogil:
    cdef uint64_t i = e.hash & s.tmask
    while s.table[i] != e:
        i = (i + 1) & s.tmask
    _table_delete_slot(s, i)


# ---------------------------------------------------------------------------------------
# Window statistics (lock held)

cdef int _roll(Stats *st, double now) noexcept nogil:
    cdef int64_t sec = _floor_i(now)
    cdef int slot = <int>_mod(sec, WINDOW_SLOTS)
    if st.win_sec[slot] != sec:
        st.win_sec[slot] = sec
        st.win_enq[slot] = 0
        st.win_deq[slot] = 0
        memset(st.win_hist[slot], 0, WAIT_BUCKETS * sizeof(int64_t))
        st.win_max[slot] = 0.0
    st.slot = slot
    st.sec_end = <double>(sec + 1)
    return slot


cdef inline int _cur_slot(Stats *st, double now) noexcept nogil:
    return st.slot if now < st.sec_end else _roll(st, now)


cdef void _window(Stats *st, double now, int64_t *enq, int64_t *deq, double *win, bint *slots) noexcept nogil:
    cdef int64_t cur = _floor_i(now)
    cdef int64_t lo = cur - WINDOW_S
    cdef double start
    cdef int i
    if lo < st.created_sec:
        lo = st.created_sec
    enq[0] = 0
    deq[0] = 0
    for i in range(WINDOW_SLOTS):
        slots[i] = lo <= st.win_sec[i] < cur
        if slots[i]:
            enq[0] += st.win_enq[i]
            deq[0] += st.win_deq[i]
    # The window starts at the queue's creation when that is later than cur - WINDOW_S: a
    # queue created mid-second has lived only part of its first second.
    start = <double>(cur - WINDOW_S)
    if st.created_at > start:
        start = st.created_at
    win[0] = <double>cur - start if <double>cur > start else 0.0


cdef int64_t _retry_after(int64_t n, int64_t deq, double win) noexcept nogil:
    cdef double ms
    if deq <= 0 or win <= 0:
        return RETRY_AFTER_DEFAULT_MS
    ms = ceil(<double>n * 1000.0 * win / <double>deq)
    if ms > RETRY_AFTER_MAX_MS:
        return RETRY_AFTER_MAX_MS
    if ms < RETRY_AFTER_MIN_MS:
        return RETRY_AFTER_MIN_MS
    return <int64_t>ms


cdef void _record_wait(Stats *st, double wait_ms, double now) noexcept nogil:
    cdef int slot = _cur_slot(st, now)
    cdef int idx = _bucket(wait_ms)
    st.win_deq[slot] += 1
    st.win_hist[slot][idx] += 1
    if wait_ms > st.win_max[slot]:
        st.win_max[slot] = wait_ms
    st.life_hist[idx] += 1
    st.life_sum += wait_ms


# ---------------------------------------------------------------------------------------
# Value types


@cython.final
@cython.freelist(32)
cdef class Task:
    """A request to run: what the front end admits.

    ``Task(model, max_tokens, session_id=None, *, priority=Priority.INTERACTIVE,
    job_id=None, payload=None)``. ``job_id`` lets the caller choose the id (it must not be
    queued already); ``payload`` is carried untouched. Immutable.
    """

    __match_args__ = ("model", "max_tokens", "session_id")

    def __init__(self, model, max_tokens, session_id=None, *, priority=_INTERACTIVE, job_id=None, payload=None):
        if (
            type(model) is not str
            or not model
            or type(max_tokens) is not int
            or max_tokens <= 0
            or (session_id is not None and (type(session_id) is not str or not session_id))
        ):
            _raise_task_error(model, max_tokens, session_id, priority, job_id)
        if priority is _INTERACTIVE:
            self.prio = 0
        elif priority is _BATCH:
            self.prio = 1
        elif type(priority) is str and priority == "interactive":
            self.prio = 0
        elif type(priority) is str and priority == "batch":
            self.prio = 1
        else:
            _raise_task_error(model, max_tokens, session_id, priority, job_id)
        if job_id is not None:
            job_id = _check_job_id(job_id)
        self.max_tokens_c = max_tokens if max_tokens < 2**62 else 2**62
        self.model = model
        self.max_tokens = max_tokens
        self.session_id = session_id
        self.priority = _PRIORITIES[self.prio]
        self.job_id = job_id
        self.payload = payload

    def __repr__(self):
        return (
            f"Task(model={self.model!r}, max_tokens={self.max_tokens!r}, session_id={self.session_id!r}, "
            f"priority={self.priority.value!r}, job_id={self.job_id!r})"
        )


cdef inline str _own_id(str prefix_dash, uint64_t counter):
    cdef char buf[96]
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(prefix_dash)
    cdef char digits[17]
    cdef int nd = 0
    cdef int i
    memcpy(buf, PyUnicode_DATA(prefix_dash), <size_t>n)  # the prefix is ASCII (validated)
    while True:
        digits[nd] = b"0123456789abcdef"[counter & 15]
        nd += 1
        counter >>= 4
        if counter == 0:
            break
    for i in range(nd):
        buf[n + i] = digits[nd - 1 - i]
    return <str>PyUnicode_FromStringAndSize(buf, n + nd)


@cython.final
@cython.freelist(32)
cdef class Job:
    """A queued task as it leaves the queue (dequeued, drained or evicted).

    ``wait_ms`` is the time it spent queued, fixed when it left; ``enqueued_at`` is in
    seconds on the queue's clock.
    """

    __match_args__ = ("job_id", "task")

    def __init__(self, str job_id, Task task, double enqueued_at, double wait_ms):
        self._job_id = job_id
        self.task = task
        self.enqueued_at = enqueued_at
        self.wait_ms = wait_ms

    @property
    def job_id(self):
        """The job's id (the caller's or one the queue made)."""
        cdef str s
        if self._job_id is None:
            s = _own_id(self._prefix_dash, self._counter)
            self._job_id = s
            return s
        return self._job_id

    @property
    def priority(self):
        """The task's priority."""
        return self.task.priority

    def __repr__(self):
        return (
            f"Job(job_id={self.job_id!r}, model={self.task.model!r}, "
            f"priority={self.task.priority.value!r}, wait_ms={self.wait_ms:.3f})"
        )


cdef Job _make_job(Queue q, Entry *e, double now):
    cdef Job job = Job.__new__(Job)
    if e.key_str == NULL:
        job._prefix_dash = q._prefix_dash
        job._counter = e.counter
    else:
        job._job_id = <object>e.key_str
    job.task = <Task>e.task
    job.enqueued_at = e.enqueued_at
    job.wait_ms = (now - e.enqueued_at) * 1000.0
    return job


@cython.final
@cython.freelist(32)
cdef class Accepted:
    """The task was admitted: ``job_id``, its ``position`` (0 = next) and the job it
    ``evicted`` under DROP_LRU (or None). Immutable; ``match Accepted(job_id=..)``."""

    __match_args__ = ("job_id", "position", "evicted")
    accepted = True

    def __init__(self, str job_id, Py_ssize_t position, Job evicted=None):
        self._job_id = job_id
        self.position = position
        self.evicted = evicted

    @property
    def job_id(self):
        """The admitted job's id."""
        cdef str s
        if self._job_id is None:
            s = _own_id(self._prefix_dash, self._counter)
            self._job_id = s
            return s
        return self._job_id

    def __eq__(self, other):
        if type(other) is not Accepted:
            return NotImplemented
        cdef Accepted o = <Accepted>other
        return self.job_id == o.job_id and self.position == o.position and self.evicted is o.evicted

    def __hash__(self):
        return hash((self.job_id, self.position, id(self.evicted)))

    def __repr__(self):
        return f"Accepted(job_id={self.job_id!r}, position={self.position!r}, evicted={self.evicted!r})"


@cython.final
@cython.freelist(32)
cdef class Rejected:
    """The task was refused: ``reason``, an advisory ``retry_after_ms``, whether it is
    ``retriable``, the ``policy`` in force and a human ``message``. Immutable."""

    __match_args__ = ("reason", "retry_after_ms")
    accepted = False

    def __init__(self, reason, int64_t retry_after_ms, policy, str message):
        self.reason = RejectionReason.parse(reason, "reason")
        self.retry_after_ms = retry_after_ms
        self.policy = AdmissionPolicy.parse(policy, "policy")
        self.message = message

    @property
    def retriable(self):
        """True when the same task may be admitted later (``QUEUE_FULL``)."""
        return self.reason is _FULL_R

    def to_http(self):
        """``(status, headers, body)`` for an HTTP front (see ``orchestrator_core.http``)."""
        from ._http import rejected_to_http

        return rejected_to_http(self)

    def __eq__(self, other):
        if type(other) is not Rejected:
            return NotImplemented
        cdef Rejected o = <Rejected>other
        return (
            self.reason is o.reason
            and self.retry_after_ms == o.retry_after_ms
            and self.policy is o.policy
            and self.message == o.message
        )

    def __hash__(self):
        return hash((self.reason, self.retry_after_ms, self.policy, self.message))

    def __repr__(self):
        return (
            f"Rejected(reason={self.reason.value!r}, retry_after_ms={self.retry_after_ms!r}, "
            f"policy={self.policy.value!r}, message={self.message!r})"
        )


cdef Rejected _make_rejected(object reason, int64_t retry_after_ms, object policy, str message):
    cdef Rejected r = Rejected.__new__(Rejected)
    r.reason = reason
    r.retry_after_ms = retry_after_ms
    r.policy = policy
    r.message = message
    return r


cdef void _free_entry(Entry *e):
    # GIL held, engine lock NOT held: the decrefs may run a task's __del__.
    Py_XDECREF(e.key_str)
    Py_DECREF(<object>e.task)
    PyMem_Free(e)


# ---------------------------------------------------------------------------------------
# The queue


cdef class Queue:
    """A bounded admission queue: FIFO per priority, INTERACTIVE before BATCH.

    ``Queue(capacity, policy=AdmissionPolicy.REJECT_NEW, *, pool_id="default", clock=None,
    max_tokens_limit=None, id_prefix=None)``. Every method is atomic and thread-safe;
    ``enqueue`` never blocks and returns ``Accepted`` or ``Rejected``.
    """

    def __cinit__(self):
        memset(&self.s, 0, sizeof(State))
        if _ring_init(&self.s.cls[0]) < 0 or _ring_init(&self.s.cls[1]) < 0:
            raise MemoryError()
        self.s.table = <Entry **>PyMem_RawMalloc(MIN_TABLE * sizeof(Entry *))
        if self.s.table == NULL:
            raise MemoryError()
        memset(self.s.table, 0, MIN_TABLE * sizeof(Entry *))
        self.s.tmask = MIN_TABLE - 1
        self.s.next_id = 1
        _LIVE_QUEUES.add(self)

    def __init__(self, capacity, policy=AdmissionPolicy.REJECT_NEW, *, pool_id="default", clock=None,
                 max_tokens_limit=None, id_prefix=None):
        cap, pol, pool, clk, limit, prefix = _check_queue_args(
            capacity, policy, pool_id, clock, max_tokens_limit, id_prefix
        )
        self.s.capacity = cap
        self._policy = pol
        self.s.policy = _POLICIES.index(pol)
        self._pool_id = pool
        self._clock = clk
        self.s.max_tokens_limit = limit
        self._prefix = prefix
        self._prefix_dash = prefix + "-"
        self._prefix_dash_b = self._prefix_dash.encode("ascii")
        cdef double now = self._now()
        cdef int i
        self.s.st.created_sec = _floor_i(now)
        self.s.st.created_at = now
        self.s.st.sec_end = -1e300
        for i in range(WINDOW_SLOTS):
            self.s.st.win_sec[i] = self.s.st.created_sec - WINDOW_SLOTS - 1

    def __dealloc__(self):
        cdef Entry *e
        cdef int p
        cdef int64_t sq
        for p in range(2):
            if self.s.cls[p].ring != NULL:
                for sq in range(self.s.cls[p].head, self.s.cls[p].tail):
                    e = self.s.cls[p].ring[sq & self.s.cls[p].mask]
                    if e != NULL:
                        _free_entry(e)
            _ring_free(&self.s.cls[p])
        PyMem_RawFree(self.s.table)
        self.s.table = NULL

    @classmethod
    def builder(cls):
        """A fluent ``QueueBuilder`` for this engine's ``Queue``."""
        from ._builder import QueueBuilder

        return QueueBuilder(cls)

    cdef inline double _now(self) except? -1.0:
        if self._clock is None:
            return _mono()
        value = self._clock()
        if type(value) is float and isfinite(<double>value):
            return <double>value
        return _check_clock_value(value)

    # -- properties -------------------------------------------------------------------
    @property
    def policy(self):
        """The admission policy."""
        return self._policy

    @property
    def pool_id(self):
        """The worker pool this queue feeds (a label in metrics)."""
        return self._pool_id

    @property
    def id_prefix(self):
        """Prefix of the job ids this queue makes (random unless chosen)."""
        return self._prefix

    @property
    def closed(self):
        """True once ``close()`` was called."""
        return self.s.closed

    def capacity(self):
        """The most jobs the queue holds."""
        return self.s.capacity

    def depth(self):
        """Jobs queued now."""
        return self.s.cls[0].live + self.s.cls[1].live

    def __len__(self):
        return self.s.cls[0].live + self.s.cls[1].live

    def __repr__(self):
        return (
            f"<Queue pool_id={self._pool_id!r} policy={self._policy.value!r} depth={self.depth()} "
            f"capacity={self.s.capacity}{' closed' if self.s.closed else ''}>"
        )

    # -- keys -------------------------------------------------------------------------
    cdef bint _make_key(self, str job_id, Key *k):
        """Fill k for job_id (GIL held, lock not held). True if it is an own-format id."""
        cdef Py_ssize_t n = PyUnicode_GET_LENGTH(job_id)
        cdef Py_ssize_t plen = len(self._prefix_dash_b)
        cdef const char *d
        cdef uint64_t counter = 0
        cdef Py_ssize_t i
        cdef char ch
        if PyUnicode_IS_ASCII(job_id) and plen < n <= plen + 16:
            d = <const char *>PyUnicode_DATA(job_id)
            if memcmp(d, <const char *>self._prefix_dash_b, <size_t>plen) == 0 and d[plen] != c'0':
                for i in range(plen, n):
                    ch = d[i]
                    if c'0' <= ch <= c'9':
                        counter = (counter << 4) | <uint64_t>(ch - c'0')
                    elif c'a' <= ch <= c'f':
                        counter = (counter << 4) | <uint64_t>(ch - c'a' + 10)
                    else:
                        break
                else:
                    k.key_str = NULL
                    k.counter = counter
                    k.hash = _mix(counter)
                    return True
        k.key_str = <PyObject *>job_id
        k.counter = 0
        k.hash = <uint64_t>PyObject_Hash(job_id)
        return False

    # -- admission --------------------------------------------------------------------
    cdef int _enqueue_locked(self, Entry *e, int64_t max_tokens, Key *k, bint has_key, double now,
                             Entry **victim, int64_t *position, int64_t *ahead, int64_t *retry_ms) noexcept nogil:
        cdef State *s = &self.s
        cdef PClass *inter = &s.cls[0]
        cdef PClass *c
        cdef int p = e.prio
        cdef int64_t depth, enq, deq
        cdef double win
        cdef bint slots[WINDOW_SLOTS]
        cdef int code = OK
        cdef int slot
        cdef Waiter *w
        victim[0] = NULL
        if s.closed:
            code = CLOSED
        elif s.max_tokens_limit and max_tokens > s.max_tokens_limit:
            code = OVER_LIMIT
        elif has_key and _find(s, k, NULL) != NULL:
            code = DUPLICATE
        else:
            depth = inter.live + s.cls[1].live
            if s.policy == 2:
                ahead[0] = inter.live if p == 0 else depth
                if ahead[0]:
                    code = AHEAD
                elif depth >= s.capacity:
                    code = FULL
            elif depth >= s.capacity:
                if s.policy == 1:
                    if s.cls[1].live:
                        victim[0] = s.cls[1].lru_first
                    elif p == 0:
                        victim[0] = inter.lru_first
                    else:
                        code = FULL
                else:
                    code = FULL
        if code == OK:
            # Reserve memory first, so a failure leaves everything as it was.
            c = &s.cls[p]
            if _ring_reserve(c) < 0:
                return NOMEM
            if victim[0] != NULL:
                _ring_remove(&s.cls[victim[0].prio], victim[0])
                _lru_unlink(&s.cls[victim[0].prio], victim[0])
                _table_delete(s, victim[0])
                s.st.evicted += 1
            if has_key:
                e.key_str = k.key_str
                e.counter = k.counter
                e.hash = k.hash
                if k.key_str == NULL and k.counter >= s.next_id:
                    s.next_id = k.counter + 1
            else:
                e.key_str = NULL
                e.counter = s.next_id
                e.hash = _mix(s.next_id)
                s.next_id += 1
            position[0] = inter.live if p == 0 else inter.live + s.cls[1].live
            _ring_push(c, e)
            _lru_append(c, e)
            _table_insert(s, e)
            s.st.accepted += 1
            slot = _cur_slot(&s.st, now)
            s.st.win_enq[slot] += 1
            w = s.wait_first
            if w != NULL:
                _unlink_waiter(s, w)
                w.woken = True
                PyThread_release_lock(w.lock)
            return OK
        s.st.rejected[_reason_index(code)] += 1
        retry_ms[0] = 0
        if code == FULL or code == AHEAD:
            _window(&s.st, now, &enq, &deq, &win, slots)
            retry_ms[0] = _retry_after(ahead[0] if code == AHEAD else 1, deq, win)
        return code

    def enqueue(self, task):
        """Admit ``task`` or refuse it; never blocks.

        Returns ``Accepted(job_id, position, evicted)`` or ``Rejected(reason, ...)``;
        raises ``TypeError`` when ``task`` is not a ``Task``.
        """
        if type(task) is not Task:
            raise TypeError(f"task must be a Task, got {task!r} ({type(task).__name__})")
        cdef Task t = <Task>task
        cdef double now = self._now()
        cdef Key k
        cdef bint has_key = t.job_id is not None
        cdef Entry *victim = NULL
        cdef int64_t position = 0, ahead = 0, retry_ms = 0
        cdef int code
        cdef Entry *e = <Entry *>PyMem_Malloc(sizeof(Entry))
        if e == NULL:
            raise MemoryError()
        if has_key:
            self._make_key(<str>t.job_id, &k)
        e.task = <PyObject *>t
        e.prio = t.prio
        e.enqueued_at = now
        e.lru_prev = e.lru_next = NULL
        cdef int64_t max_tokens = t.max_tokens_c
        cdef PyObject *key_str = NULL
        cdef uint64_t counter = 0
        cdef Accepted res = Accepted.__new__(Accepted)
        # The entry's references are taken before the entry becomes visible: once the lock
        # is released a consumer may dequeue and free it (at once on a free-threaded build,
        # or whenever the GIL is released around the locked part).
        Py_INCREF(t)
        if has_key and k.key_str != NULL:
            Py_INCREF(<object>k.key_str)
        if _release_gil:
            with nogil:
                oc_lock(&self._lock)
                code = self._enqueue_locked(e, max_tokens, &k, has_key, now, &victim, &position, &ahead, &retry_ms)
                key_str = e.key_str
                counter = e.counter
                oc_unlock(&self._lock)
        else:
            oc_lock(&self._lock)
            code = self._enqueue_locked(e, max_tokens, &k, has_key, now, &victim, &position, &ahead, &retry_ms)
            key_str = e.key_str
            counter = e.counter
            oc_unlock(&self._lock)
        if code != OK:
            Py_DECREF(t)
            if has_key and k.key_str != NULL:
                Py_DECREF(<object>k.key_str)
            PyMem_Free(e)
            if code == NOMEM:
                raise MemoryError()
            return _make_rejected(_reason_of(code), retry_ms, self._policy, self._refusal_message(code, t, ahead))
        # From here on `e` may already be gone; only the copies taken under the lock are used.
        if key_str == NULL:
            res._prefix_dash = self._prefix_dash
            res._counter = counter
        else:
            res._job_id = <object>key_str  # alive: the task we hold references it as its job_id
        res.position = position
        if victim != NULL:
            res.evicted = _make_job(self, victim, now)
            _free_entry(victim)
        return res

    def _refusal_message(self, int code, Task task, int64_t ahead):
        if code == CLOSED:
            return f"queue {self._pool_id!r} is closed"
        if code == OVER_LIMIT:
            return f"max_tokens {task.max_tokens} exceeds this queue's max_tokens_limit {self.s.max_tokens_limit}"
        if code == DUPLICATE:
            return f"job_id {task.job_id!r} is already queued"
        if code == AHEAD:
            return f"fail-fast: {ahead} job(s) queued ahead of this {task.priority.value} task"
        if self.s.policy == 1:
            return f"queue {self._pool_id!r} is full ({self.s.capacity}) of interactive jobs; a batch task cannot evict them"
        return f"queue {self._pool_id!r} is full ({self.s.capacity})"

    # -- leaving the queue ------------------------------------------------------------
    cdef Entry *_pop_locked(self, double now) noexcept nogil:
        cdef State *s = &self.s
        cdef PClass *c = &s.cls[0] if s.cls[0].live else &s.cls[1]
        cdef Entry *e
        if not c.live:
            return NULL
        e = _ring_pop_head(c)
        _lru_unlink(c, e)
        _table_delete(s, e)
        s.st.dequeued += 1
        _record_wait(&s.st, (now - e.enqueued_at) * 1000.0, now)
        return e

    cdef Job _job_and_free(self, Entry *e, double now):
        cdef Job job = _make_job(self, e, now)
        _free_entry(e)
        return job

    def dequeue(self, timeout=_ZERO):
        """The next job (INTERACTIVE first, FIFO within a priority), or None.

        ``timeout=0`` (default) never waits; a number waits up to that many seconds;
        ``None`` waits until a job arrives or the queue is closed and empty. A wait never
        holds the engine's lock, releases the GIL and can be interrupted (KeyboardInterrupt).
        """
        cdef double now
        cdef Entry *e
        cdef list taken
        if timeout is _ZERO or ((type(timeout) is float or type(timeout) is int) and timeout == 0):
            now = self._now()
            if _release_gil:
                with nogil:
                    oc_lock(&self._lock)
                    e = self._pop_locked(now)
                    oc_unlock(&self._lock)
            else:
                oc_lock(&self._lock)
                e = self._pop_locked(now)
                oc_unlock(&self._lock)
            if e == NULL:
                return None
            return self._job_and_free(e, now)
        taken = self._take(1, _check_timeout(timeout))
        return taken[0] if taken else None

    def dequeue_many(self, max_jobs, timeout=0.0):
        """Up to ``max_jobs`` jobs in dequeue order, taken under one lock acquisition.

        ``timeout`` is as for ``dequeue`` and applies to the first job only.
        """
        cdef Py_ssize_t n = _check_count(max_jobs, "max_jobs")
        return self._take(n, _check_timeout(timeout))

    cdef list _take(self, Py_ssize_t max_jobs, double timeout):
        """Up to max_jobs jobs, waiting up to timeout s (-1: forever) for the first."""
        cdef double deadline = _mono() + timeout if timeout > 0 else 0.0
        cdef double now, remaining
        cdef Entry *e
        cdef Entry *first = NULL
        cdef Entry *last = NULL
        cdef Py_ssize_t got
        cdef Waiter w
        cdef bint registered
        cdef PyLockStatus r
        cdef long long us
        cdef list out
        cdef bint need_lock
        cdef bint was_woken = False
        w.lock = NULL
        while True:
            try:
                now = self._now()
            except BaseException:
                # The clock raised: free our wake-up lock, and if a producer woke us for a
                # job we now will not take, pass the wake-up on.
                if w.lock != NULL:
                    PyThread_free_lock(w.lock)
                if was_woken:
                    oc_lock(&self._lock)
                    if self.s.wait_first != NULL and (self.s.cls[0].live or self.s.cls[1].live):
                        _wake_one(&self.s)
                    oc_unlock(&self._lock)
                raise
            was_woken = False
            registered = False
            need_lock = False
            got = 0
            first = NULL
            oc_lock(&self._lock)
            # Chain taken entries through lru_next (free once unlinked from the LRU list).
            while got < max_jobs:
                e = self._pop_locked(now)
                if e == NULL:
                    break
                if first == NULL:
                    first = e
                else:
                    last.lru_next = e
                last = e
                got += 1
            remaining = -1.0
            if not got and not self.s.closed and timeout != 0:
                if timeout > 0:
                    remaining = deadline - _mono()
                if timeout < 0 or remaining > 0:
                    if w.lock == NULL:
                        need_lock = True  # allocated outside the lock, then try again
                    else:
                        _link_waiter(&self.s, &w)
                        registered = True
            oc_unlock(&self._lock)
            if need_lock:
                # Only a consumer that has to wait pays for its wake-up lock.
                w.lock = PyThread_allocate_lock()
                if w.lock == NULL:
                    raise MemoryError()
                PyThread_acquire_lock(w.lock, 1)
                continue
            if not registered:
                if w.lock != NULL:
                    PyThread_free_lock(w.lock)
                out = []
                e = first
                while got:
                    last = e.lru_next
                    out.append(self._job_and_free(e, now))
                    e = last
                    got -= 1
                return out
            # Wait for a producer or close() to release our lock (GIL released).
            while True:
                if remaining < 0:
                    us = -1
                else:
                    us = <long long>(remaining * 1e6)
                    if us > PY_TIMEOUT_MAX:
                        us = PY_TIMEOUT_MAX
                with nogil:
                    r = PyThread_acquire_lock_timed(w.lock, us, 1)
                if r != PY_LOCK_INTR:
                    break
                try:
                    _check_signals()
                except BaseException:
                    oc_lock(&self._lock)
                    if w.woken:
                        # Woken for a job we will not take: pass the wake-up on.
                        if self.s.wait_first != NULL and (self.s.cls[0].live or self.s.cls[1].live):
                            _wake_one(&self.s)
                    else:
                        _unlink_waiter(&self.s, &w)
                    oc_unlock(&self._lock)
                    PyThread_free_lock(w.lock)
                    raise
                if timeout > 0:
                    remaining = deadline - _mono()
                    if remaining <= 0:
                        break
            oc_lock(&self._lock)
            if w.woken:
                was_woken = True
            else:
                _unlink_waiter(&self.s, &w)
            oc_unlock(&self._lock)
            PyThread_free_lock(w.lock)
            w.lock = NULL
            if timeout > 0 and _mono() >= deadline:
                timeout = 0.0  # one last non-blocking attempt

    def drain(self):
        """Remove and return every queued job in dequeue order (counted as drained)."""
        cdef double now = self._now()
        cdef Entry *first = NULL
        cdef Entry *last = NULL
        cdef Entry *e
        cdef Py_ssize_t got = 0
        cdef int p
        cdef PClass *c
        cdef list out = []
        oc_lock(&self._lock)
        for p in range(2):
            c = &self.s.cls[p]
            while c.live:
                e = _ring_pop_head(c)
                _lru_unlink(c, e)
                _table_delete(&self.s, e)
                if first == NULL:
                    first = e
                else:
                    last.lru_next = e
                last = e
                got += 1
        self.s.st.drained += got
        oc_unlock(&self._lock)
        e = first
        while got:
            last = e.lru_next
            out.append(self._job_and_free(e, now))
            e = last
            got -= 1
        return out

    def close(self):
        """Refuse further enqueues (``QUEUE_CLOSED``) and wake every blocked consumer.

        Queued jobs can still be dequeued or drained. Idempotent.
        """
        oc_lock(&self._lock)
        self.s.closed = True
        while self.s.wait_first != NULL:
            _wake_one(&self.s)
        oc_unlock(&self._lock)

    # -- by job id --------------------------------------------------------------------
    cdef str _id_arg(self, object job_id):
        if type(job_id) is str and 0 < PyUnicode_GET_LENGTH(job_id) <= JOB_ID_MAX_LEN and job_id.isprintable():
            return <str>job_id
        return _check_job_id(job_id)

    def cancel(self, job_id):
        """Remove a queued job; False if it is not queued. Idempotent."""
        cdef str jid = self._id_arg(job_id)
        cdef Key k
        cdef uint64_t slot
        cdef Entry *e
        self._make_key(jid, &k)
        oc_lock(&self._lock)
        e = _find(&self.s, &k, &slot)
        if e != NULL:
            _table_delete_slot(&self.s, slot)
            _ring_remove(&self.s.cls[e.prio], e)
            _lru_unlink(&self.s.cls[e.prio], e)
            self.s.st.cancelled += 1
        oc_unlock(&self._lock)
        if e == NULL:
            return False
        _free_entry(e)
        return True

    def touch(self, job_id):
        """Mark a queued job as just used (DROP_LRU evicts it last); False if not queued."""
        cdef str jid = self._id_arg(job_id)
        cdef Key k
        cdef Entry *e
        cdef PClass *c
        self._make_key(jid, &k)
        oc_lock(&self._lock)
        e = _find(&self.s, &k, NULL)
        if e != NULL:
            c = &self.s.cls[e.prio]
            if c.lru_last != e:
                _lru_unlink(c, e)
                _lru_append(c, e)
        oc_unlock(&self._lock)
        return e != NULL

    def position(self, job_id):
        """Jobs ``dequeue`` would hand out before this one (0 = next), or None if not queued."""
        cdef str jid = self._id_arg(job_id)
        cdef Key k
        cdef Entry *e
        cdef int64_t rank = -2
        self._make_key(jid, &k)
        oc_lock(&self._lock)
        e = _find(&self.s, &k, NULL)
        if e != NULL:
            rank = _rank(&self.s.cls[e.prio], e.seq)
            if rank >= 0 and e.prio == 1:
                rank += self.s.cls[0].live
        oc_unlock(&self._lock)
        if rank == -2:
            return None
        if rank < 0:
            raise MemoryError()
        return rank

    def __contains__(self, job_id):
        if type(job_id) is not str:
            if not isinstance(job_id, str):
                return False
            job_id = str.__str__(job_id)  # never a subclass's __hash__ / __eq__
        cdef Key k
        cdef Entry *e
        self._make_key(<str>job_id, &k)
        oc_lock(&self._lock)
        e = _find(&self.s, &k, NULL)
        oc_unlock(&self._lock)
        return e != NULL

    cdef list _ids(self, int which, bint lru):
        """Job ids of class ``which`` (0, 1; 2 = both, in dequeue order), LRU order if ``lru``.

        Keys are copied into a C buffer under the lock; the strings are made after it.
        """
        cdef Py_ssize_t n, i = 0, j
        cdef PyObject **strs
        cdef uint64_t *counters
        cdef Entry *e
        cdef int64_t sq
        cdef int p
        cdef PClass *c
        cdef bint done = False
        cdef list out = []
        while True:
            n = self._live_of(which)
            strs = <PyObject **>PyMem_Malloc((n + 1) * sizeof(PyObject *))
            counters = <uint64_t *>PyMem_Malloc((n + 1) * sizeof(uint64_t))
            if strs == NULL or counters == NULL:
                PyMem_Free(strs)
                PyMem_Free(counters)
                raise MemoryError()
            oc_lock(&self._lock)
            if self._live_of(which) == n:
                done = True
                for p in range(2):
                    if which != 2 and p != which:
                        continue
                    c = &self.s.cls[p]
                    if lru:
                        e = c.lru_first
                        while e != NULL:
                            strs[i] = e.key_str
                            counters[i] = e.counter
                            if e.key_str != NULL:
                                Py_INCREF(<object>e.key_str)
                            i += 1
                            e = e.lru_next
                    else:
                        for sq in range(c.head, c.tail):
                            e = c.ring[sq & c.mask]
                            if e != NULL:
                                strs[i] = e.key_str
                                counters[i] = e.counter
                                if e.key_str != NULL:
                                    Py_INCREF(<object>e.key_str)
                                i += 1
            oc_unlock(&self._lock)
            if done:
                break
            PyMem_Free(strs)  # the depth changed between sizing and locking: size again
            PyMem_Free(counters)
        try:
            for j in range(i):
                if strs[j] == NULL:
                    out.append(_own_id(self._prefix_dash, counters[j]))
                else:
                    out.append(<object>strs[j])
        finally:
            for j in range(i):
                Py_XDECREF(strs[j])
            PyMem_Free(strs)
            PyMem_Free(counters)
        return out

    cdef Py_ssize_t _live_of(self, int which) noexcept nogil:
        if which == 2:
            return self.s.cls[0].live + self.s.cls[1].live
        return self.s.cls[which].live

    def snapshot(self, priority=None):
        """Queued job ids in dequeue order (only one class when ``priority`` is given)."""
        if priority is None:
            return self._ids(2, False)
        return self._ids(_PRIORITIES.index(Priority.parse(priority, "priority")), False)

    def lru_order(self, priority):
        """Job ids of one class from least to most recently used (DROP_LRU's victim first)."""
        return self._ids(_PRIORITIES.index(Priority.parse(priority, "priority")), True)

    # -- metrics ----------------------------------------------------------------------
    def metrics(self):
        """An immutable snapshot of counters, rates and wait percentiles (O(1) in depth)."""
        cdef double now = self._now()
        cdef Stats st
        cdef int64_t enq, deq
        cdef double win, wmax = 0.0, oldest = 0.0
        cdef bint has_oldest = False
        cdef bint slots[WINDOW_SLOTS]
        cdef int64_t hist[WAIT_BUCKETS]
        cdef int64_t live0, live1
        cdef bint closed
        cdef int i, b
        cdef PClass *c
        memset(hist, 0, sizeof(hist))
        oc_lock(&self._lock)
        memcpy(&st, &self.s.st, sizeof(Stats))
        live0 = self.s.cls[0].live
        live1 = self.s.cls[1].live
        closed = self.s.closed
        for i in range(2):
            c = &self.s.cls[i]
            if c.live:
                if not has_oldest or c.ring[c.head & c.mask].enqueued_at < oldest:
                    oldest = c.ring[c.head & c.mask].enqueued_at
                    has_oldest = True
        oc_unlock(&self._lock)
        _window(&st, now, &enq, &deq, &win, slots)
        for i in range(WINDOW_SLOTS):
            if slots[i]:
                for b in range(WAIT_BUCKETS):
                    hist[b] += st.win_hist[i][b]
                if st.win_max[i] > wmax:
                    wmax = st.win_max[i]
        raw = (
            now,
            self.s.capacity,
            live0,
            live1,
            st.accepted,
            tuple([st.rejected[i] for i in range(N_REASONS)]),
            st.evicted,
            st.cancelled,
            st.dequeued,
            st.drained,
            oldest if has_oldest else None,
            win,
            enq,
            deq,
            [hist[b] for b in range(WAIT_BUCKETS)],
            wmax,
            [st.life_hist[b] for b in range(WAIT_BUCKETS)],
            st.life_sum,
            _retry_after(1, deq, win),
            closed,
        )
        return _build_metrics(self._pool_id, self._policy.value, raw)


# ---------------------------------------------------------------------------------------
# Waiters (lock held)

cdef inline void _link_waiter(State *s, Waiter *w) noexcept nogil:
    w.woken = False
    w.next = NULL
    w.prev = s.wait_last
    if s.wait_last == NULL:
        s.wait_first = w
    else:
        s.wait_last.next = w
    s.wait_last = w


cdef inline void _unlink_waiter(State *s, Waiter *w) noexcept nogil:
    if w.prev == NULL:
        s.wait_first = w.next
    else:
        w.prev.next = w.next
    if w.next == NULL:
        s.wait_last = w.prev
    else:
        w.next.prev = w.prev
    w.next = w.prev = NULL


cdef inline void _wake_one(State *s) noexcept nogil:
    cdef Waiter *w = s.wait_first
    _unlink_waiter(s, w)
    w.woken = True
    PyThread_release_lock(w.lock)


cdef inline int _reason_index(int code) noexcept nogil:
    # Order of RejectionReason: QUEUE_FULL, INVALID_REQUEST, POLICY_VIOLATION, QUEUE_CLOSED
    if code == CLOSED:
        return 3
    if code == OVER_LIMIT:
        return 2
    if code == DUPLICATE:
        return 1
    return 0


cdef object _reason_of(int code):
    return _REASONS[_reason_index(code)]


cdef extern from "Python.h":
    int PyErr_CheckSignals() except -1


cdef inline void _check_signals() except *:
    PyErr_CheckSignals()


# ---------------------------------------------------------------------------------------
# fork(): every queue's lock is taken before the fork, so no thread is half-way through an
# operation in the child's copy; the child then unlocks and forgets the parent's blocked
# consumers (their threads do not exist there and their waiters lived on those stacks).

import os as _os
import weakref as _weakref

cdef object _LIVE_QUEUES = _weakref.WeakSet()
cdef list _FORK_HELD = []


def _before_fork():
    cdef Queue q
    held = []
    for obj in list(_LIVE_QUEUES):
        q = <Queue>obj
        oc_lock(&q._lock)
        held.append(q)
    _FORK_HELD[:] = held


def _after_fork_in_parent():
    cdef Queue q
    for obj in _FORK_HELD:
        q = <Queue>obj
        oc_unlock(&q._lock)
    _FORK_HELD.clear()


def _after_fork_in_child():
    cdef Queue q
    for obj in _FORK_HELD:
        q = <Queue>obj
        q.s.wait_first = NULL
        q.s.wait_last = NULL
        oc_unlock(&q._lock)
    _FORK_HELD.clear()


if hasattr(_os, "register_at_fork"):
    _os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                         after_in_child=_after_fork_in_child)


# ---------------------------------------------------------------------------------------
# Cyclic GC: queued tasks are references of the queue (a task's payload may refer back to
# its queue). Cython's generated tp_traverse / tp_clear only know the object attributes, so
# they are wrapped to also visit, and clear, the tasks held in C entries.

cdef extern from "Python.h":
    ctypedef int (*visitproc)(PyObject *, void *)
    ctypedef int (*traverseproc)(PyObject *, visitproc, void *)
    ctypedef int (*inquiry)(PyObject *)
    ctypedef struct PyTypeObject:
        traverseproc tp_traverse
        inquiry tp_clear
    void PyType_Modified(PyTypeObject *)

cdef traverseproc _base_traverse = NULL
cdef inquiry _base_clear = NULL
cdef Py_ssize_t _STATE_OFFSET = 0


cdef int _queue_traverse(PyObject *o, visitproc visit, void *arg) noexcept:
    cdef State *s = <State *>((<char *>o) + _STATE_OFFSET)
    cdef int p, r
    cdef int64_t sq
    cdef Entry *e
    # The entries only change under the GIL (or, free-threaded, while the collector has the
    # world stopped) unless the benchmark hook releases the GIL around operations: then do
    # not read them; not visiting only keeps objects alive, it never frees one.
    if not _release_gil:
        for p in range(2):
            if s.cls[p].ring == NULL:
                continue
            for sq in range(s.cls[p].head, s.cls[p].tail):
                e = s.cls[p].ring[sq & s.cls[p].mask]
                if e != NULL:
                    r = visit(e.task, arg)
                    if r:
                        return r
    if _base_traverse != NULL:
        return _base_traverse(o, visit, arg)
    return 0


cdef int _queue_clear(PyObject *o) noexcept:
    # Break a cycle: drop the queued jobs. No Python code of the queue's runs here (the
    # clock may already be cleared): unlink every entry under the lock, then release the
    # tasks after it. The queue is unreachable, so nobody sees its counters again.
    cdef State *s = <State *>((<char *>o) + _STATE_OFFSET)
    cdef Queue q = <Queue>o
    cdef Entry *first = NULL
    cdef Entry *last = NULL
    cdef Entry *e
    cdef int p
    oc_lock(&q._lock)
    for p in range(2):
        while s.cls[p].live:
            e = _ring_pop_head(&s.cls[p])
            _lru_unlink(&s.cls[p], e)
            _table_delete(s, e)
            e.lru_next = NULL
            if first == NULL:
                first = e
            else:
                last.lru_next = e
            last = e
    oc_unlock(&q._lock)
    while first != NULL:
        e = first.lru_next
        _free_entry(first)
        first = e
    if _base_clear != NULL:
        return _base_clear(o)
    return 0


cdef void _install_gc_hooks():
    global _base_traverse, _base_clear, _STATE_OFFSET
    cdef Queue probe = Queue.__new__(Queue)
    _STATE_OFFSET = <Py_ssize_t>(<char *>&probe.s - <char *>(<PyObject *>probe))
    cdef PyTypeObject *t = <PyTypeObject *>Queue
    _base_traverse = t.tp_traverse
    _base_clear = t.tp_clear
    t.tp_traverse = _queue_traverse
    t.tp_clear = _queue_clear
    PyType_Modified(t)


_install_gc_hooks()
