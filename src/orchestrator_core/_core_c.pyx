# The admission engine, compiled: C data under a real lock. Specification: _core_py.py.
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
# C-specific: entries are PyMem_Malloc'd (pymalloc, 88 bytes) outside the lock; the rings,
# index, Fenwick, pending and rank-tree arrays, tenant and deadline-lane records use PyMem_Raw* so they
# can be made, resized and freed under the lock without the GIL. A tenant record holds a copy
# of its name's characters (no Python object). The tasks' C fields (tokens) are read under the
# lock: a Task is immutable and each queued entry owns a reference to its task.
# Own job ids ("<prefix>-<hex counter>") are stored as their counter and turned into a str
# only when read, so a queued job costs no Python object besides its task.
"""Compiled engine (Cython). Same behaviour as ``orchestrator_core._core_py``."""

cimport cython
from cpython.object cimport PyObject
from cpython.float cimport PyFloat_AS_DOUBLE
from cpython.ref cimport Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.mem cimport PyMem_Malloc, PyMem_Free, PyMem_RawMalloc, PyMem_RawRealloc, PyMem_RawFree
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.string cimport memcpy, memcmp, memset
from libc.math cimport floor, ceil, log2, isfinite, fabs, INFINITY

import math as _math
import threading as _threading

from ._stats import WAIT_BUCKET_BOUNDS_MS as _WAIT_BUCKET_BOUNDS_MS, build_metrics as _build_metrics
from ._types import AdmissionPolicy, Priority, RejectionReason
from ._validate import (
    JOB_ID_MAX_LEN,
    check_clock_value as _check_clock_value,
    check_count as _check_count,
    check_feature_args as _check_feature_args,
    check_job_id as _check_job_id,
    check_max_wait_ms as _check_max_wait_ms,
    check_prompt_tokens as _check_prompt_tokens,
    check_tenant as _check_tenant,
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

# Queue._try_admit's waiter: a retriable refusal returns WAIT (None) but nothing is registered.
cdef Waiter _PROBE


cdef inline double _timeout_s(object timeout, str param) except? -2.0:
    """``check_timeout``, with the common cases (a float >= 0, None) done in C."""
    cdef double v
    if type(timeout) is float:
        v = PyFloat_AS_DOUBLE(timeout)
        if v >= 0.0:  # (False for NaN)
            return v
    elif timeout is None:
        return -1.0
    return _check_timeout(timeout, param)


cdef object _INTERACTIVE = Priority.INTERACTIVE
cdef object _BATCH = Priority.BATCH
cdef tuple _PRIORITIES = (_INTERACTIVE, _BATCH)
cdef tuple _POLICIES = (AdmissionPolicy.REJECT_NEW, AdmissionPolicy.DROP_LRU, AdmissionPolicy.FAIL_FAST)
cdef tuple _REASONS = tuple(RejectionReason)
cdef object _FULL_R = RejectionReason.QUEUE_FULL
cdef object _INVALID_R = RejectionReason.INVALID_REQUEST
cdef object _POLICY_R = RejectionReason.POLICY_VIOLATION
cdef object _CLOSED_R = RejectionReason.QUEUE_CLOSED
cdef object _UNMEETABLE_R = RejectionReason.DEADLINE_UNMEETABLE
cdef object _DROP_LRU = AdmissionPolicy.DROP_LRU

# Outcome codes of the locked part of enqueue (mirrored in _core_py.py).
cdef enum:
    OK = 0
    FULL = 1
    DUPLICATE = 2
    OVER_LIMIT = 3
    CLOSED = 4
    AHEAD = 5
    NOMEM = 6
    FULL_TOKENS = 7     # the token budget is the bound that is hit
    OVER_BUDGET = 8     # the task alone exceeds max_queued_tokens
    TENANT_CAP = 9      # max_queued_per_tenant
    UNMEETABLE = 10     # admit_only_feasible: predicted wait > max_wait_ms
    WAIT = 11           # enqueue(wait=...): registered as a room waiter

cdef enum:
    MIN_RING = 8
    COMPACT_SLACK = 32
    MIN_TABLE = 16
    # The job-id table never shrinks below the size it has with the queue full, up to this
    # many slots (64 KiB): a queue that fills and empties over and over (the common case)
    # would otherwise rebuild it on every cycle.
    TABLE_FLOOR_MAX = 8192
    MIN_TENANT_TABLE = 8
    TENANT_FREELIST = 16
    RANK_MIN = 64           # nodes of a rank tree's smallest array (kept while its class is empty)
    RANK_LANES = 32         # a class keeps a rank tree once it has more lanes than this

# Round-robin labels are in [1, LABEL_END); a lane alone gets LABEL_MID; LABEL_STEP is a
# class's first step (see _rot_insert).
cdef int64_t LABEL_END = (<int64_t>1) << 62
cdef int64_t LABEL_MID = (<int64_t>1) << 61
cdef int64_t LABEL_STEP = (<int64_t>1) << 40
# A rank tree's nodes are 32 bytes, with 32-bit links: at most this many per class (a
# tenant-mode class deeper than that refuses with MemoryError).
cdef int64_t RANK_MAX = 0x7FFFFFFF

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
# Ring buffer, LRU list and Fenwick tree of one lane (lock held, no GIL needed)

cdef int _ring_init(Lane *c) noexcept nogil:
    c.ring = <Entry **>PyMem_RawMalloc(MIN_RING * sizeof(Entry *))
    if c.ring == NULL:
        return -1
    memset(c.ring, 0, MIN_RING * sizeof(Entry *))
    c.mask = MIN_RING - 1
    return 0


cdef void _ring_free(Lane *c) noexcept nogil:
    PyMem_RawFree(c.ring)
    PyMem_RawFree(c.fen)
    PyMem_RawFree(c.pending)
    c.ring = NULL
    c.fen = NULL
    c.pending = NULL


cdef inline int _ring_reserve(Lane *c) noexcept nogil:
    """Make room for one more entry (double when full); -1 when out of memory."""
    if c.ring != NULL and c.tail - c.head <= c.mask:
        return 0
    return _ring_grow(c)


cdef int _ring_grow(Lane *c) noexcept nogil:
    """_ring_reserve's slow part: allocate or double the ring."""
    cdef int64_t cap = c.mask + 1
    cdef int64_t s, mask
    cdef Entry **ring
    if c.ring == NULL:
        return _ring_init(c)
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


cdef inline void _ring_push(Lane *c, Entry *e) noexcept nogil:
    # Room was reserved by _ring_reserve.
    e.seq = c.tail
    c.ring[c.tail & c.mask] = e
    c.tail += 1
    c.live += 1


cdef void _pend(Lane *c, int64_t idx, bint plus) noexcept nogil:
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


cdef void _shrink(Lane *c) noexcept nogil:
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


cdef void _after_head_moved(Lane *c) noexcept nogil:
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


cdef Entry *_ring_pop_head(Lane *c) noexcept nogil:
    cdef int64_t idx = c.head & c.mask
    cdef Entry *e = c.ring[idx]
    c.ring[idx] = NULL
    c.head += 1
    c.live -= 1
    _after_head_moved(c)
    return e


cdef void _compact(Lane *c) noexcept nogil:
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


cdef void _ring_remove(Lane *c, Entry *e) noexcept nogil:
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


cdef inline int64_t _fen_sum(Lane *c, int64_t i) noexcept nogil:
    cdef int64_t total = 0
    while i > 0:
        total += c.fen[i]
        i &= i - 1
    return total


cdef int _fen_sync(Lane *c) noexcept nogil:
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


cdef int64_t _rank(Lane *c, int64_t seq) noexcept nogil:
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


cdef inline void _lru_append(Lane *c, Entry *e) noexcept nogil:
    e.lru_next = NULL
    e.lru_prev = c.lru_last
    if c.lru_last == NULL:
        c.lru_first = e
    else:
        c.lru_last.lru_next = e
    c.lru_last = e


cdef inline void _lru_unlink(Lane *c, Entry *e) noexcept nogil:
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


cdef inline void _table_delete_slot(State *s, uint64_t i) noexcept nogil:
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
    if s.tcount * 8 < <int64_t>(mask + 1) and mask + 1 > s.tfloor:
        _table_resize(s, (mask + 1) // 2)  # on failure the table just stays larger


cdef inline void _table_delete(State *s, Entry *e) noexcept nogil:
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


cdef int64_t _rate(State *s, double now) noexcept nogil:
    """Dequeues in the window at now (its length in s.rate_win), cached per second: the
    window holds completed seconds only, so it cannot change within a second."""
    cdef int64_t cur, lo, deq = 0
    cdef double start
    cdef int i
    if s.rate_lo <= now < s.rate_hi:
        return s.rate_deq
    cur = _floor_i(now)
    lo = cur - WINDOW_S
    if lo < s.st.created_sec:
        lo = s.st.created_sec
    for i in range(WINDOW_SLOTS):
        if lo <= s.st.win_sec[i] < cur:
            deq += s.st.win_deq[i]
    s.rate_deq = deq
    # As _window(): the window starts at the queue's creation when that is later.
    start = <double>(cur - WINDOW_S)
    if s.st.created_at > start:
        start = s.st.created_at
    s.rate_win = <double>cur - start if <double>cur > start else 0.0
    s.rate_ms = 1000.0 * s.rate_win / <double>deq if deq else 0.0
    s.rate_lo = <double>cur
    s.rate_hi = <double>(cur + 1)
    return deq


cdef double _rate_ms_slow(State *s, double now) noexcept nogil:
    # Out of line: the first admission of a second recomputes the window.
    _rate(s, now)
    return s.rate_ms


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
# Rank trees (lock held, no GIL needed): see Rank in _core_c.pxd and _Rank in _core_py.py.

cdef inline bint _key_lt(int64_t la, int64_t sa, int64_t lb, int64_t sb) noexcept nogil:
    return la < lb or (la == lb and sa < sb)


cdef int _rank_reserve(Rank *r, int64_t n) noexcept nogil:
    """Make room for n more nodes; -1 when out of memory (nothing changed)."""
    cdef int64_t need, cap
    cdef RNode *nodes
    if n == 1 and r.free:
        return 0
    need = r.used + n
    if need <= r.cap:
        return 0
    if need > RANK_MAX:
        return -1
    cap = r.cap if r.cap else RANK_MIN
    while cap < need:
        cap *= 2
    if cap > RANK_MAX:
        cap = RANK_MAX
    nodes = <RNode *>PyMem_RawRealloc(r.nodes, cap * sizeof(RNode))
    if nodes == NULL:
        return -1
    if r.nodes == NULL:
        memset(nodes, 0, sizeof(RNode))  # node 0: size 0
        r.used = 1
        r.seed = 0x9E3779B97F4A7C15
    r.nodes = nodes
    r.cap = cap
    return 0


cdef int64_t _rank_node(Rank *r, int64_t level, Lane *lane) noexcept nogil:
    """A new node (room reserved) with the key (level, lane's label)."""
    cdef uint64_t x = r.seed
    cdef int64_t i = r.free
    cdef RNode *nd
    x ^= x << 13
    x ^= x >> 7
    x ^= x << 17
    r.seed = x
    if i:
        r.free = r.nodes[i].left
    else:
        i = r.used
        r.used += 1
    nd = &r.nodes[i]
    nd.level = level
    nd.lane = lane
    nd.left = nd.right = 0
    nd.size = 1
    nd.prio = <uint32_t>(x >> 32)
    return i


cdef int64_t _rank_ins(RNode *nd, int64_t t, int64_t x, int64_t lv, int64_t lb) noexcept nogil:
    cdef int64_t y
    if t == 0:
        return x
    nd[t].size += 1
    if _key_lt(lv, lb, nd[t].level, nd[t].lane.label):
        y = _rank_ins(nd, nd[t].left, x, lv, lb)
        nd[t].left = y
        if nd[y].prio > nd[t].prio:  # rotate right
            nd[t].left = nd[y].right
            nd[y].right = t
            nd[y].size = nd[t].size
            nd[t].size = 1 + nd[nd[t].left].size + nd[nd[t].right].size
            return y
    else:
        y = _rank_ins(nd, nd[t].right, x, lv, lb)
        nd[t].right = y
        if nd[y].prio > nd[t].prio:  # rotate left
            nd[t].right = nd[y].left
            nd[y].left = t
            nd[y].size = nd[t].size
            nd[t].size = 1 + nd[nd[t].left].size + nd[nd[t].right].size
            return y
    return t


cdef inline void _rank_insert(Rank *r, int64_t level, Lane *lane) noexcept nogil:
    """Add the key (level, lane's label), absent so far (room reserved)."""
    r.root = _rank_ins(r.nodes, r.root, _rank_node(r, level, lane), level, lane.label)


cdef int64_t _rank_merge(RNode *nd, int64_t a, int64_t b) noexcept nogil:
    if a == 0:
        return b
    if b == 0:
        return a
    if nd[a].prio > nd[b].prio:
        nd[a].size += nd[b].size
        nd[a].right = _rank_merge(nd, nd[a].right, b)
        return a
    nd[b].size += nd[a].size
    nd[b].left = _rank_merge(nd, a, nd[b].left)
    return b


cdef int64_t _rank_del(Rank *r, int64_t t, int64_t level, int64_t label) noexcept nogil:
    cdef RNode *nd = r.nodes
    cdef int64_t m
    nd[t].size -= 1
    if _key_lt(level, label, nd[t].level, nd[t].lane.label):
        nd[t].left = _rank_del(r, nd[t].left, level, label)
        return t
    if _key_lt(nd[t].level, nd[t].lane.label, level, label):
        nd[t].right = _rank_del(r, nd[t].right, level, label)
        return t
    m = _rank_merge(nd, nd[t].left, nd[t].right)
    nd[t].lane = NULL
    nd[t].left = r.free
    r.free = t
    return m


cdef inline void _rank_delete(Rank *r, int64_t level, Lane *lane) noexcept nogil:
    """Remove the key (level, lane's label), present."""
    r.root = _rank_del(r, r.root, level, lane.label)


cdef int64_t _rank_count_lt(Rank *r, int64_t level, int64_t label) noexcept nogil:
    """Keys below (level, label)."""
    cdef RNode *nd = r.nodes
    cdef int64_t t = r.root
    cdef int64_t n = 0
    while t:
        if _key_lt(nd[t].level, nd[t].lane.label, level, label):
            n += nd[nd[t].left].size + 1
            t = nd[t].right
        else:
            t = nd[t].left
    return n


cdef int64_t _rank_last_below(Rank *r, int64_t level, int64_t label) noexcept nogil:
    """The node of the greatest key below (level, label) (0: none)."""
    cdef RNode *nd = r.nodes
    cdef int64_t t = r.root
    cdef int64_t best = 0
    while t:
        if _key_lt(nd[t].level, nd[t].lane.label, level, label):
            best = t
            t = nd[t].right
        else:
            t = nd[t].left
    return best


cdef void _rank_fill(PClass *c) noexcept nogil:
    """Add the keys of every lane of the class's circle (the tree is empty; room reserved for
    them): O(n log n)."""
    cdef Lane *lane = c.cur
    cdef int64_t level
    while True:
        for level in range(1, lane.live + 1):
            _rank_insert(&c.rank, level, lane)
        lane = lane.rot_next
        if lane == c.cur:
            break


cdef void _rank_reset(Rank *r, bint release) noexcept nogil:
    """Forget every node (the class is empty); with release, a grown array is freed: memory
    follows depth. (Without: during evictions, which must not lose the node reserved for the
    job being admitted.)"""
    if release and r.cap > RANK_MIN:
        PyMem_RawFree(r.nodes)
        r.nodes = NULL
        r.cap = 0
        r.used = 0
    elif r.nodes != NULL:
        r.used = 1
    r.free = 0
    r.root = 0


cdef int _rank_prepare(PClass *c, Lane *lane) noexcept nogil:
    """Before an admission to lane: reserve the rank-tree node it needs and, if the lane joins
    a class that has RANK_LANES lanes already, make the tree from the class's jobs (O(n log n),
    amortised O(log n) per job: each job is in at most one such build; the tree is kept until
    the class is empty). -1 when out of memory (nothing observable changed)."""
    if c.ranked:
        return _rank_reserve(&c.rank, 1)
    if c.live == 0 or lane.rot_next != NULL or c.nlanes < RANK_LANES:
        return 0  # few enough lanes to walk them
    if _rank_reserve(&c.rank, c.live + 1) < 0:
        return -1
    _rank_fill(c)
    c.ranked = True
    return 0


# ---------------------------------------------------------------------------------------
# Round robin, tenants, deadline lanes (lock held, no GIL needed)

cdef void _relabel(PClass *c, Lane *new) noexcept nogil:
    """Spread the labels of the class's lanes evenly, in the circle's order from the one with
    the smallest label (new, just linked in, has none yet and goes where it is)."""
    cdef Lane *first = c.cur
    cdef Lane *lane = first.rot_next
    cdef int64_t n = c.nlanes, gap, i, step
    while lane != c.cur:
        if lane != new and (first == new or lane.label < first.label):
            first = lane
        lane = lane.rot_next
    gap = LABEL_END // (n + 1)
    lane = first
    for i in range(1, n + 1):
        lane.label = i * gap
        lane = lane.rot_next
    step = gap // (2 * n + 2)
    c.step = step if step else 1


cdef inline void _rot_insert(PClass *c, Lane *lane) noexcept nogil:
    """A lane that gets work joins its class's round robin at the back (just before cur), with
    a label between its neighbours' (see Queue._rot_insert in _core_py.py)."""
    cdef Lane *cur = c.cur
    cdef Lane *prev
    cdef int64_t lo, hi, gap
    if cur != NULL and cur.live == 0:
        # The empty default lane, kept alone in the circle: it leaves for good now.
        cur.rot_next = cur.rot_prev = NULL
        c.cur = cur = NULL
        c.nlanes = 0
    c.nlanes += 1
    if cur == NULL:
        lane.rot_next = lane.rot_prev = lane
        lane.label = LABEL_MID
        c.cur = lane
        return
    prev = cur.rot_prev
    lane.rot_prev = prev
    lane.rot_next = cur
    prev.rot_next = lane
    cur.rot_prev = lane
    lo = prev.label
    hi = cur.label
    if lo < hi:
        gap = (hi - lo) >> 1
        if gap:
            lane.label = lo + (gap if gap < c.step else c.step)
            return
    else:  # cur has the smallest label and prev the greatest: go past prev, or below cur
        gap = (LABEL_END - lo) >> 1
        if gap:
            lane.label = lo + (gap if gap < c.step else c.step)
            return
        gap = hi >> 1
        if gap:
            lane.label = hi - (gap if gap < c.step else c.step)
            return
    _relabel(c, lane)


cdef inline void _rot_remove(PClass *c, Lane *lane) noexcept nogil:
    """Take an emptied lane out of its class's round robin."""
    cdef Lane *nxt = lane.rot_next
    if nxt == lane:
        c.cur = NULL
    else:
        lane.rot_prev.rot_next = nxt
        nxt.rot_prev = lane.rot_prev
        if c.cur == lane:
            c.cur = nxt
    lane.rot_next = lane.rot_prev = NULL
    c.nlanes -= 1


cdef int64_t _class_rank(PClass *c, Lane *lane, int64_t k) noexcept nogil:
    """Jobs of the class (two or more lanes) the round robin hands out before lane's k-th
    (0-based) job: each lane from cur up to it in the circle gives min(its jobs, k + 1) first,
    every other lane min(its jobs, k), and the lane itself k. With a rank tree: the keys of
    level <= k, plus those of level k + 1 whose label lies in [cur's label, lane's) going
    round the circle, O(log n); without (at most RANK_LANES lanes), a walk round the circle."""
    cdef Rank *r = &c.rank
    cdef int64_t l_cur, label
    cdef int64_t ahead = k
    cdef Lane *other = c.cur
    if c.ranked:
        l_cur = c.cur.label
        label = lane.label
        if l_cur <= label:
            return _rank_count_lt(r, k + 1, 0) + _rank_count_lt(r, k + 1, label) - _rank_count_lt(r, k + 1, l_cur)
        # The range wraps past the greatest label: level <= k, then [l_cur, end), [0, label).
        return _rank_count_lt(r, k + 2, 0) - _rank_count_lt(r, k + 1, l_cur) + _rank_count_lt(r, k + 1, label)
    while other != lane:
        ahead += other.live if other.live <= k else k + 1
        other = other.rot_next
    other = lane.rot_next
    while other != c.cur:
        ahead += other.live if other.live < k else k
        other = other.rot_next
    return ahead


cdef int64_t _tail_position(State *s, PClass *c, Lane *lane, int p) noexcept nogil:
    """The position a job appended to lane would get (NULL: a tenant not queued yet)."""
    cdef int64_t pos
    if c.live == 0:
        pos = 0
    elif lane == NULL or lane.live == 0:
        pos = c.nlanes  # a lane that joins the round robin goes last
    elif lane.rot_next == lane:
        pos = lane.live
    else:
        pos = _class_rank(c, lane, lane.live)
    return pos + s.cls[0].live if p else pos


cdef int64_t _rank_of(State *s, Entry *e) noexcept nogil:
    """position() of a queued entry, or -1 when out of memory."""
    cdef Lane *lane = e.lane
    cdef int64_t k = _rank(lane, e.seq)
    if k < 0:
        return -1
    if lane.rot_next != lane:
        k = _class_rank(&s.cls[lane.prio], lane, k)
    return k + s.cls[0].live if lane.prio else k


cdef Lane *_victim_lane(PClass *c) noexcept nogil:
    """DROP_LRU's lane in a non-empty class: the most jobs; ties: the latest in the round
    robin. With a rank tree: the greatest key's level, among the lanes holding it the greatest
    label below cur's, else the greatest, O(log n); without, a walk."""
    cdef Rank *r = &c.rank
    cdef RNode *nd = r.nodes
    cdef int64_t t, x, top
    cdef Lane *best = c.cur
    cdef Lane *lane = best.rot_next
    if not c.ranked:
        while lane != c.cur:
            if lane.live >= best.live:
                best = lane
            lane = lane.rot_next
        return best
    t = r.root
    while nd[t].right:
        t = nd[t].right
    top = nd[t].level
    x = _rank_last_below(r, top, c.cur.label)
    if x and nd[x].level == top:
        t = x
    return nd[t].lane


cdef inline int64_t _tokens_of(Entry *e) noexcept nogil:
    return (<Task>e.task).tokens_c


cdef Tenant *_tenant_find(State *s, PyObject *name, uint64_t h) noexcept nogil:
    cdef Tenant *t
    cdef Py_ssize_t n
    cdef int kind
    if s.ttable == NULL:
        return NULL
    n = _ulen(name)
    kind = _ukind(name)
    t = s.ttable[h & s.ttmask]
    while t != NULL:
        if t.hash == h and t.nchars == n and t.kind == kind and memcmp(t.name, _udata(name), <size_t>(n * kind)) == 0:
            return t
        t = t.next
    return NULL


cdef int _tenant_table_resize(State *s, uint64_t size) noexcept nogil:
    cdef Tenant **table = <Tenant **>PyMem_RawMalloc(size * sizeof(Tenant *))
    cdef Tenant *t
    cdef Tenant *nxt
    cdef uint64_t i
    if table == NULL:
        return -1
    memset(table, 0, size * sizeof(Tenant *))
    if s.ttable != NULL:
        for i in range(s.ttmask + 1):
            t = s.ttable[i]
            while t != NULL:
                nxt = t.next
                t.next = table[t.hash & (size - 1)]
                table[t.hash & (size - 1)] = t
                t = nxt
        PyMem_RawFree(s.ttable)
    s.ttable = table
    s.ttmask = size - 1
    return 0


cdef Tenant *_tenant_new(State *s, PyObject *name, uint64_t h) noexcept nogil:
    """A record for a tenant that has no queued work (live 0), or NULL when out of memory."""
    cdef Py_ssize_t n = _ulen(name)
    cdef int kind = _ukind(name)
    cdef Py_ssize_t nbytes = n * kind
    cdef Tenant *t = s.tfree
    cdef int p
    if s.ttable == NULL:
        if _tenant_table_resize(s, MIN_TENANT_TABLE) < 0:
            return NULL
    elif s.ttcount >= <int64_t>(s.ttmask + 1):
        _tenant_table_resize(s, (s.ttmask + 1) * 2)  # on failure the chains just get longer
    if t != NULL and t.name_cap >= nbytes:
        # A tenant that comes and goes (one job at a time) reuses a record and its rings.
        s.tfree = t.next
        s.ntfree -= 1
    else:
        t = <Tenant *>PyMem_RawMalloc(sizeof(Tenant) + <size_t>(nbytes if nbytes > 32 else 32))
        if t == NULL:
            return NULL
        memset(t, 0, sizeof(Tenant))
        t.name_cap = nbytes if nbytes > 32 else 32
        t.name = <char *>(t + 1)
        for p in range(2):
            t.lanes[p].mask = -1
            t.lanes[p].prio = p
            t.lanes[p].tenant = t
    t.hash = h
    t.nchars = n
    t.kind = kind
    memcpy(t.name, _udata(name), <size_t>nbytes)
    t.next = s.ttable[h & s.ttmask]
    s.ttable[h & s.ttmask] = t
    s.ttcount += 1
    return t


cdef void _lane_release(Lane *c) noexcept nogil:
    """Free an empty lane's arrays (it allocates them again when next used)."""
    _ring_free(c)
    c.mask = -1
    c.head = c.tail = 0
    c.fen_size = 0
    c.fen_ok = False
    c.npending = 0
    c.pending_cap = 0


cdef void _tenant_free(State *s, Tenant *t) noexcept nogil:
    """Forget a tenant whose lanes are empty (the record may be kept for reuse)."""
    cdef Tenant **link = &s.ttable[t.hash & s.ttmask]
    cdef int p
    while link[0] != t:
        link = &link[0].next
    link[0] = t.next
    s.ttcount -= 1
    if s.ntfree < TENANT_FREELIST:
        for p in range(2):
            if t.lanes[p].mask + 1 > MIN_RING:
                _lane_release(&t.lanes[p])  # a grown ring is not kept
        t.next = s.tfree
        s.tfree = t
        s.ntfree += 1
        return
    _ring_free(&t.lanes[0])
    _ring_free(&t.lanes[1])
    PyMem_RawFree(t)


cdef DLane *_dlane_find(State *s, double max_wait_ms) noexcept nogil:
    cdef int64_t i
    for i in range(s.ndl):
        if s.dlanes[i].max_wait_ms == max_wait_ms:
            return s.dlanes[i]
    return NULL


cdef DLane *_dlane_new(State *s, double max_wait_ms) noexcept nogil:
    """An empty deadline lane for max_wait_ms, or NULL when out of memory."""
    cdef DLane **lanes
    cdef DLane *d
    cdef int64_t ncap
    if s.ndl == s.dl_cap:
        ncap = s.dl_cap * 2 if s.dl_cap else 4
        lanes = <DLane **>PyMem_RawRealloc(s.dlanes, ncap * sizeof(DLane *))
        if lanes == NULL:
            return NULL
        s.dlanes = lanes
        s.dl_cap = ncap
    d = <DLane *>PyMem_RawMalloc(sizeof(DLane))
    if d == NULL:
        return NULL
    memset(d, 0, sizeof(DLane))
    d.max_wait_ms = max_wait_ms
    d.head.dl_next = d.head.dl_prev = &d.head
    s.dlanes[s.ndl] = d
    s.ndl += 1
    return d


cdef inline double _due_hint(double enqueued_at, double max_wait_ms) noexcept nogil:
    # A lower bound (by far more than any rounding) of the first instant at which
    # (now - enqueued_at) * 1000.0 > max_wait_ms can hold: the sweep itself decides exactly.
    return enqueued_at + max_wait_ms / 1000.0 - (fabs(enqueued_at) + max_wait_ms / 1000.0 + 1.0) * 1e-9


cdef inline void _dl_unlink(State *s, Entry *e) noexcept nogil:
    e.dl_prev.dl_next = e.dl_next
    e.dl_next.dl_prev = e.dl_prev
    e.dl_prev = e.dl_next = NULL
    s.dl_jobs -= 1


cdef inline void _set_left_at(Entry *e, double t) noexcept nogil:
    memcpy(&e.hash, &t, sizeof(double))


cdef inline double _left_at(Entry *e) noexcept nogil:
    cdef double t
    memcpy(&t, &e.hash, sizeof(double))
    return t


cdef void _remove(State *s, Entry *e) noexcept nogil:
    """Unlink a queued entry from everything but the job-id index (cancel, evict, expire)."""
    cdef Lane *lane = e.lane
    cdef PClass *c = &s.cls[lane.prio]
    cdef Tenant *t = lane.tenant
    cdef int64_t tokens
    if c.ranked:
        _rank_delete(&c.rank, lane.live, lane)
    _ring_remove(lane, e)
    _lru_unlink(lane, e)
    c.live -= 1
    if s.budget:
        tokens = _tokens_of(e)
        c.tokens -= tokens
        s.queued_tokens -= tokens
    if e.dl_next != NULL:
        _dl_unlink(s, e)
    if lane.live == 0:
        _rot_remove(c, lane)
        if c.live == 0 and c.ranked:
            _rank_reset(&c.rank, not s.evicting)
            c.ranked = False
    if t != NULL:
        t.live -= 1
        if t.live == 0:
            _tenant_free(s, t)  # frees the lane too


cdef Entry *_pop_rr(State *s, PClass *c) noexcept nogil:
    """Remove and return the entry dequeue would take from a non-empty class (no stats)."""
    cdef Lane *lane = c.cur
    cdef Entry *e = lane.ring[lane.head & lane.mask]
    cdef bint stays = lane.live > 1
    cdef Lane *nxt = lane.rot_next
    _remove(s, e)  # may free the lane (its tenant's last job)
    if stays:
        c.cur = nxt
    return e


cdef inline void _wake_all(Waiter **first, Waiter **last) noexcept nogil:
    cdef Waiter *w
    while first[0] != NULL:
        w = first[0]
        first[0] = w.next
        w.next = w.prev = NULL
        w.woken = True
        PyThread_release_lock(w.lock)
    last[0] = NULL


cdef void _sweep(State *s, double now) noexcept nogil:
    """Expire every job whose wait at now exceeds its max_wait_ms, earliest deadline first
    (ties: the shorter max_wait_ms); O(deadline lanes) per expired job."""
    cdef DLane *best
    cdef DLane *d
    cdef Entry *h
    cdef Entry *e
    cdef double best_due = 0.0, due, mw
    cdef int64_t i, j, expired = 0
    while True:
        best = NULL
        for i in range(s.ndl):
            d = s.dlanes[i]
            h = d.head.dl_next
            if h == &d.head:
                continue
            mw = d.max_wait_ms
            if (now - h.enqueued_at) * 1000.0 > mw:
                due = h.enqueued_at + mw / 1000.0
                if best == NULL or due < best_due or (due == best_due and mw < best.max_wait_ms):
                    best = d
                    best_due = due
        if best == NULL:
            break
        e = best.head.dl_next
        _remove(s, e)
        _table_delete(s, e)
        _set_left_at(e, now)
        e.lru_next = NULL
        if s.exp_last == NULL:
            s.exp_first = e
        else:
            s.exp_last.lru_next = e
        s.exp_last = e
        expired += 1
    s.st.expired += expired
    due = INFINITY
    j = 0
    for i in range(s.ndl):
        d = s.dlanes[i]
        h = d.head.dl_next
        if h == &d.head:
            PyMem_RawFree(d)
        else:
            s.dlanes[j] = d
            j += 1
            mw = _due_hint(h.enqueued_at, d.max_wait_ms)
            if mw < due:
                due = mw
    s.ndl = j
    s.dl_due = due
    if expired and s.room_first != NULL:
        _wake_all(&s.room_first, &s.room_last)


cdef int _enqueue_general(State *s, Entry *e, Admit *a, Lane **lane_out) noexcept nogil:
    """Every admission but the plain task with room: tenants, deadlines, budgets, refusals and
    DROP_LRU evictions. On OK the entry's lane has room reserved and is in lane_out."""
    cdef PClass *inter = &s.cls[0]
    cdef int p = a.prio
    cdef PClass *c = &s.cls[p]
    cdef Lane *lane = &c.dflt
    cdef Tenant *tr = NULL
    cdef DLane *dl = NULL
    cdef PClass *vc
    cdef Entry *v
    cdef Entry *vlast = NULL
    cdef int64_t depth, n_el, t_el, deq, n
    cdef double win, d
    cdef bint has_mw = a.max_wait > 0
    cdef int code = OK
    cdef int full = OK
    a.victims = NULL
    a.nvict = 0
    a.ahead = 0
    a.retry_ms = 0
    a.used = 0
    a.pred_ms = 0.0
    a.ms_per_job = 0.0
    if s.closed:
        code = CLOSED
    elif s.max_tokens_limit and a.max_tokens > s.max_tokens_limit:
        code = OVER_LIMIT
    elif s.budget and a.tokens > s.budget:
        code = OVER_BUDGET
    elif a.has_key and _find(s, a.key, NULL) != NULL:
        code = DUPLICATE
    else:
        if a.tenant != NULL:
            s.tenants_seen = True  # tenants from now on: every task takes this path
            tr = _tenant_find(s, a.tenant, a.thash)
            if tr == NULL:
                lane = NULL
            else:
                lane = &tr.lanes[p]
                if s.tenant_cap and tr.live >= s.tenant_cap:
                    code = TENANT_CAP
                    a.ahead = tr.live
        if code == OK:
            # The position it would get: O(1) without tenants.
            if lane != NULL and (lane.rot_next == lane or c.nlanes == 0):
                a.position = lane.live + (inter.live if p else 0)
            else:
                a.position = _tail_position(s, c, lane, p)
            depth = inter.live + s.cls[1].live
            if depth >= s.capacity:
                full = FULL
            elif s.budget and s.queued_tokens + a.tokens > s.budget:
                full = FULL_TOKENS
            if s.policy == 2:  # FAIL_FAST
                if a.position:
                    code = AHEAD
                    a.ahead = a.position
                else:
                    code = full
            elif full != OK:
                if s.policy == 1 and a.waiter == NULL:
                    # DROP_LRU: only if evicting every job it may evict makes room.
                    n_el = s.cls[1].live
                    t_el = s.cls[1].tokens
                    if p == 0:
                        n_el += inter.live
                        t_el += inter.tokens
                    if depth - n_el >= s.capacity:
                        code = FULL
                    elif s.budget and s.queued_tokens - t_el + a.tokens > s.budget:
                        code = FULL_TOKENS
                else:
                    code = full
            if code == OK and has_mw and a.position and s.feasible:
                deq = _rate(s, a.now)
                if deq:
                    win = s.rate_win
                    a.pred_ms = <double>a.position * s.rate_ms
                    if a.pred_ms > a.max_wait:
                        code = UNMEETABLE
                        a.ahead = a.position
                        n = a.position - <int64_t>floor(a.max_wait * <double>deq / (1000.0 * win))
                        a.retry_ms = _retry_after(n if n > 0 else 1, deq, win)
            if code == OK:
                # Reserve memory first, so a failure leaves the queue as it was.
                if has_mw:
                    dl = _dlane_find(s, a.max_wait)
                    if dl == NULL:
                        dl = _dlane_new(s, a.max_wait)
                        if dl == NULL:
                            return NOMEM
                if a.tenant != NULL and tr == NULL:
                    tr = _tenant_new(s, a.tenant, a.thash)
                    if tr == NULL:
                        return NOMEM
                if tr != NULL:
                    lane = &tr.lanes[p]
                if _ring_reserve(lane) < 0 or _rank_prepare(c, lane) < 0:
                    if tr != NULL and tr.live == 0:
                        _tenant_free(s, tr)
                    return NOMEM
    if code == OK:
        if tr != NULL:
            tr.live += 1  # counted before evicting: an eviction cannot free it
        if full != OK:  # DROP_LRU: evict until both bounds fit
            s.evicting = True  # (keeps the rank-tree node reserved above)
            while inter.live + s.cls[1].live >= s.capacity or (
                s.budget and s.queued_tokens + a.tokens > s.budget
            ):
                vc = &s.cls[1] if s.cls[1].live else inter
                v = _victim_lane(vc).lru_first
                _remove(s, v)
                _table_delete(s, v)
                if vlast == NULL:
                    a.victims = v
                else:
                    vlast.lru_next = v
                vlast = v
                a.nvict += 1
            s.evicting = False
            s.st.evicted += a.nvict
            a.position = _tail_position(s, c, lane, p)
        if has_mw:
            e.dl_prev = dl.head.dl_prev
            e.dl_next = &dl.head
            dl.head.dl_prev.dl_next = e
            dl.head.dl_prev = e
            s.dl_jobs += 1
            if e.dl_prev == &dl.head:
                d = _due_hint(a.now, a.max_wait)
                if d < s.dl_due:
                    s.dl_due = d
        lane_out[0] = lane
        return OK
    if a.waiter != NULL and (code == FULL or code == FULL_TOKENS or code == AHEAD or code == UNMEETABLE):
        if a.waiter != &_PROBE:
            _link_waiter(&s.room_first, &s.room_last, a.waiter)
        return WAIT
    s.st.rejected[_reason_index(code)] += 1
    if code == FULL or code == FULL_TOKENS or code == AHEAD:
        deq = _rate(s, a.now)
        a.retry_ms = _retry_after(a.ahead if code == AHEAD else 1, deq, s.rate_win)
        a.used = s.queued_tokens
    return code


# ---------------------------------------------------------------------------------------
# Value types


@cython.final
@cython.freelist(32)
cdef class Task:
    """A request to run: what the front end admits.

    ``Task(model, max_tokens, session_id=None, *, priority=Priority.INTERACTIVE,
    job_id=None, payload=None, tenant=None, max_wait_ms=None, prompt_tokens=None)``.
    ``job_id`` lets the caller choose the id (it must not be queued already); ``payload`` is
    carried untouched; ``tenant`` names who the work is for (round-robin fairness and
    per-tenant caps); ``max_wait_ms`` is the longest the job may wait in the queue before it
    expires; ``prompt_tokens`` counts, with ``max_tokens``, against ``max_queued_tokens``.
    Immutable.
    """

    __match_args__ = ("model", "max_tokens", "session_id")

    def __init__(self, model, max_tokens, session_id=None, *, priority=_INTERACTIVE, job_id=None, payload=None,
                 tenant=None, max_wait_ms=None, prompt_tokens=None):
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
        if tenant is not None:
            tenant = _check_tenant(tenant)
        self.max_wait_c = 0.0
        if max_wait_ms is not None:
            max_wait_ms = _check_max_wait_ms(max_wait_ms)
            self.max_wait_c = max_wait_ms
        tokens = max_tokens
        if prompt_tokens is not None:
            tokens = max_tokens + _check_prompt_tokens(prompt_tokens)
        self.max_tokens_c = max_tokens if max_tokens < 2**62 else 2**62
        self.tokens_c = tokens if tokens < 2**62 else 2**62
        self.model = model
        self.max_tokens = max_tokens
        self.session_id = session_id
        self.priority = _PRIORITIES[self.prio]
        self.job_id = job_id
        self.payload = payload
        self.tenant = tenant
        self.max_wait_ms = max_wait_ms
        self.prompt_tokens = prompt_tokens
        self.tokens = tokens

    def __repr__(self):
        extra = ""
        if self.tenant is not None:
            extra += f", tenant={self.tenant!r}"
        if self.max_wait_ms is not None:
            extra += f", max_wait_ms={self.max_wait_ms!r}"
        if self.prompt_tokens is not None:
            extra += f", prompt_tokens={self.prompt_tokens!r}"
        return (
            f"Task(model={self.model!r}, max_tokens={self.max_tokens!r}, session_id={self.session_id!r}, "
            f"priority={self.priority.value!r}, job_id={self.job_id!r}{extra})"
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
    """A queued task as it leaves the queue (dequeued, drained, evicted or expired).

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
    """The task was admitted: ``job_id``, its ``position`` (0 = next), the job it ``evicted``
    under DROP_LRU (or None) and an advisory ``eta_ms``. Immutable; ``match Accepted(job_id=..)``.

    ``evicted`` is the first evicted job; ``evicted_all`` is every job evicted to make room
    (more than one when a token budget needed it), in eviction order.
    """

    __match_args__ = ("job_id", "position", "evicted")
    accepted = True

    def __init__(self, str job_id, Py_ssize_t position, Job evicted=None, *, eta_ms=None, evicted_all=None):
        self._job_id = job_id
        self.position = position
        if evicted_all is not None:
            evicted_all = tuple(evicted_all)
            if evicted is None and evicted_all:
                evicted = evicted_all[0]
        self.evicted = evicted
        self._evicted_all = evicted_all
        self._eta_kind = 0 if eta_ms is None else 1
        self._eta = float(eta_ms) if eta_ms is not None else 0.0

    @property
    def job_id(self):
        """The admitted job's id."""
        cdef str s
        if self._job_id is None:
            s = _own_id(self._prefix_dash, self._counter)
            self._job_id = s
            return s
        return self._job_id

    @property
    def evicted_all(self):
        """Every job evicted to make room, in eviction order (empty when none)."""
        if self._evicted_all is not None:
            return self._evicted_all
        return () if self.evicted is None else (self.evicted,)

    @property
    def eta_ms(self):
        """Advisory: milliseconds until the jobs ahead drain at the measured dequeue rate
        (``position`` over the rate of the metrics window), or None when nothing was dequeued
        in the window."""
        if self._eta_kind == 2:
            return <double>self.position * self._eta
        return self._eta if self._eta_kind else None

    def __eq__(self, other):
        if type(other) is not Accepted:
            return NotImplemented
        cdef Accepted o = <Accepted>other
        mine = self.evicted_all
        theirs = o.evicted_all
        return (
            self.job_id == o.job_id
            and self.position == o.position
            and self.evicted is o.evicted
            and self.eta_ms == o.eta_ms
            and len(mine) == len(theirs)
            and all(a is b for a, b in zip(mine, theirs, strict=True))
        )

    def __hash__(self):
        return hash((self.job_id, self.position, id(self.evicted), self.eta_ms))

    def __repr__(self):
        extra = ""
        if self._eta_kind:
            extra += f", eta_ms={self.eta_ms!r}"
        if len(self.evicted_all) > 1:
            extra += f", evicted_all={self.evicted_all!r}"
        return f"Accepted(job_id={self.job_id!r}, position={self.position!r}, evicted={self.evicted!r}{extra})"


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
        """True when the same task may be admitted later (``QUEUE_FULL``, ``DEADLINE_UNMEETABLE``)."""
        return self.reason is _FULL_R or self.reason is _UNMEETABLE_R

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

    def __cinit__(self):
        cdef int p
        memset(&self.s, 0, sizeof(State))
        for p in range(2):
            self.s.cls[p].dflt.prio = p
            self.s.cls[p].step = LABEL_STEP
            if _ring_init(&self.s.cls[p].dflt) < 0:
                raise MemoryError()
        self.s.table = <Entry **>PyMem_RawMalloc(MIN_TABLE * sizeof(Entry *))
        if self.s.table == NULL:
            raise MemoryError()
        memset(self.s.table, 0, MIN_TABLE * sizeof(Entry *))
        self.s.tmask = MIN_TABLE - 1
        self.s.next_id = 1
        self.s.dl_due = INFINITY
        self.s.rate_lo = INFINITY
        self.s.rate_hi = -INFINITY
        _LIVE_QUEUES.add(self)

    def __init__(self, capacity, policy=AdmissionPolicy.REJECT_NEW, *, pool_id="default", clock=None,
                 max_tokens_limit=None, id_prefix=None, max_wait_ms=None, admit_only_feasible=False,
                 max_queued_per_tenant=None, max_queued_tokens=None):
        cap, pol, pool, clk, limit, prefix = _check_queue_args(
            capacity, policy, pool_id, clock, max_tokens_limit, id_prefix
        )
        max_wait, feasible, tenant_cap, budget = _check_feature_args(
            max_wait_ms, admit_only_feasible, max_queued_per_tenant, max_queued_tokens
        )
        self.s.capacity = cap
        self.s.tfloor = MIN_TABLE
        while self.s.tfloor < TABLE_FLOOR_MAX and <int64_t>self.s.tfloor < (cap + 1) * 2:
            self.s.tfloor *= 2
        self._policy = pol
        self.s.policy = _POLICIES.index(pol)
        self._pool_id = pool
        self._clock = clk
        self.s.max_tokens_limit = limit
        self.s.max_wait = max_wait if max_wait is not None else 0.0
        self.s.feasible = feasible
        self.s.tenant_cap = tenant_cap
        self.s.budget = budget
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
        cdef Entry *nxt
        cdef Tenant *t
        cdef Tenant *tnext
        cdef int p, q
        cdef int64_t sq
        cdef uint64_t b
        cdef Lane *lane
        for p in range(2):
            lane = &self.s.cls[p].dflt
            if lane.ring != NULL:
                for sq in range(lane.head, lane.tail):
                    e = lane.ring[sq & lane.mask]
                    if e != NULL:
                        _free_entry(e)
            _ring_free(lane)
            PyMem_RawFree(self.s.cls[p].rank.nodes)
            self.s.cls[p].rank.nodes = NULL
        if self.s.ttable != NULL:
            for b in range(self.s.ttmask + 1):
                t = self.s.ttable[b]
                while t != NULL:
                    tnext = t.next
                    for q in range(2):
                        lane = &t.lanes[q]
                        if lane.ring != NULL:
                            for sq in range(lane.head, lane.tail):
                                e = lane.ring[sq & lane.mask]
                                if e != NULL:
                                    _free_entry(e)
                        _ring_free(lane)
                    PyMem_RawFree(t)
                    t = tnext
            PyMem_RawFree(self.s.ttable)
            self.s.ttable = NULL
        t = self.s.tfree
        while t != NULL:
            tnext = t.next
            _ring_free(&t.lanes[0])
            _ring_free(&t.lanes[1])
            PyMem_RawFree(t)
            t = tnext
        self.s.tfree = NULL
        e = self.s.exp_first
        while e != NULL:
            nxt = e.lru_next
            _free_entry(e)
            e = nxt
        self.s.exp_first = self.s.exp_last = NULL
        if self.s.dlanes != NULL:
            for sq in range(self.s.ndl):
                PyMem_RawFree(self.s.dlanes[sq])
            PyMem_RawFree(self.s.dlanes)
            self.s.dlanes = NULL
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

    cdef inline double _now_dl(self) except? -1.0:
        # The clock is read only while some queued job has a deadline (an overdue job is
        # expired before any operation looks at the queue); otherwise -inf: no sweep.
        if self.s.dl_jobs:
            return self._now()
        return -INFINITY

    cdef void _sweep_now(self) except *:
        cdef double now = self._now()
        oc_lock(&self._lock)
        if now >= self.s.dl_due:
            _sweep(&self.s, now)
        oc_unlock(&self._lock)

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

    @property
    def max_wait_ms(self):
        """Deadline of the tasks that set no ``max_wait_ms`` (None: they never expire)."""
        return self.s.max_wait if self.s.max_wait > 0 else None

    @property
    def admit_only_feasible(self):
        """Whether a task whose predicted wait exceeds its deadline is refused at once."""
        return self.s.feasible

    @property
    def max_queued_per_tenant(self):
        """Most jobs a named tenant may have queued (None: no cap)."""
        return self.s.tenant_cap or None

    @property
    def max_queued_tokens(self):
        """Bound on the queued jobs' ``Task.tokens`` (None: no bound)."""
        return self.s.budget or None

    def capacity(self):
        """The most jobs the queue holds."""
        return self.s.capacity

    def depth(self):
        """Jobs queued now (overdue jobs expire first)."""
        if self.s.dl_jobs:
            self._sweep_now()
        return self.s.cls[0].live + self.s.cls[1].live

    def __len__(self):
        if self.s.dl_jobs:
            self._sweep_now()
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
    # The hot methods are plain method descriptors (binding=False), about 9% fewer
    # instructions per enqueue+dequeue pair than a cyfunction's call; their signature for
    # inspect/help is the first line of the docstring (Argument Clinic's format).
    @cython.binding(False)
    @cython.embedsignature(False)
    def enqueue(self, task, wait=_ZERO):
        """enqueue($self, /, task, wait=0.0)
--

        Admit ``task`` or refuse it.

        Returns ``Accepted(job_id, position, evicted)`` or ``Rejected(reason, ...)``; raises
        ``TypeError`` when ``task`` is not a ``Task``. ``wait=0`` (default) never blocks; a
        number of seconds (or None: until room or close) first waits for room when the queue
        would refuse the task with a retriable reason (full, or its deadline unmeetable),
        without holding the lock and with the GIL released, then decides by the policy
        (DROP_LRU evicts only then).
        """
        if type(task) is not Task:
            raise TypeError(f"task must be a Task, got {task!r} ({type(task).__name__})")
        if not (wait is _ZERO or ((type(wait) is float or type(wait) is int) and wait == 0)):
            return self._enqueue_waiting(<Task>task, _timeout_s(wait, "wait"))
        return _attempt(self, <Task>task, NULL)

    def _try_admit(self, task):
        """One admission attempt as a waiting ``enqueue(task, wait=...)`` makes before its
        last (for ``AsyncQueue.put``): Accepted (never evicts), a non-retriable Rejected
        (counted), or None when the queue would refuse ``task`` with a retriable reason (full,
        fail-fast ahead, deadline unmeetable): then nothing is counted, evicted or registered."""
        if type(task) is not Task:
            raise TypeError(f"task must be a Task, got {task!r} ({type(task).__name__})")
        return _attempt(self, <Task>task, &_PROBE)

    cdef object _enqueue_waiting(self, Task t, double timeout):
        cdef double deadline = 0.0
        cdef double remaining
        cdef Waiter w
        cdef PyLockStatus r
        cdef long long us
        if timeout != 0:
            # First without a wake-up lock or a deadline: with room (the usual case) this
            # admits at once; a retriable refusal counts, evicts and registers nothing.
            res = _attempt(self, t, &_PROBE)
            if res is not None:
                return res
            if timeout > 0:
                deadline = _mono() + timeout
        while True:
            if timeout > 0 and _mono() >= deadline:
                timeout = 0.0  # the last attempt decides by the policy
            if timeout == 0:
                return _attempt(self, t, NULL)
            w.lock = PyThread_allocate_lock()
            if w.lock == NULL:
                raise MemoryError()
            PyThread_acquire_lock(w.lock, 1)
            w.woken = False
            try:
                res = _attempt(self, t, &w)
            except BaseException:
                PyThread_free_lock(w.lock)  # never registered: registration is the last step
                raise
            if res is not None:
                PyThread_free_lock(w.lock)
                return res
            # Registered as a room waiter: wait for dequeue/cancel/expiry/close (GIL released).
            while True:
                if timeout < 0:
                    us = -1
                else:
                    remaining = deadline - _mono()
                    if remaining <= 0:
                        break
                    # Compare as doubles first: converting an out-of-range double (inf,
                    # 1e300) to an integer is undefined behaviour.
                    if remaining * 1e6 >= <double>PY_TIMEOUT_MAX:
                        us = PY_TIMEOUT_MAX
                    else:
                        us = <long long>(remaining * 1e6)
                with nogil:
                    r = PyThread_acquire_lock_timed(w.lock, us, 1)
                if r != PY_LOCK_INTR:
                    break
                try:
                    _check_signals()
                except BaseException:
                    oc_lock(&self._lock)
                    if not w.woken:
                        _unlink_waiter(&self.s.room_first, &self.s.room_last, &w)
                    oc_unlock(&self._lock)
                    PyThread_free_lock(w.lock)
                    raise
            oc_lock(&self._lock)
            if not w.woken:
                _unlink_waiter(&self.s.room_first, &self.s.room_last, &w)
            oc_unlock(&self._lock)
            PyThread_free_lock(w.lock)

    def _refusal_message(self, int code, Task task, int64_t ahead, int64_t used, double pred_ms, double mw):
        if code == CLOSED:
            return f"queue {self._pool_id!r} is closed"
        if code == OVER_LIMIT:
            return f"max_tokens {task.max_tokens} exceeds this queue's max_tokens_limit {self.s.max_tokens_limit}"
        if code == OVER_BUDGET:
            return f"task of {task.tokens} tokens exceeds this queue's max_queued_tokens {self.s.budget}"
        if code == DUPLICATE:
            return f"job_id {task.job_id!r} is already queued"
        if code == TENANT_CAP:
            return (
                f"tenant {task.tenant!r} already has {ahead} job(s) queued "
                f"(max_queued_per_tenant {self.s.tenant_cap})"
            )
        if code == AHEAD:
            return f"fail-fast: {ahead} job(s) queued ahead of this {task.priority.value} task"
        if code == UNMEETABLE:
            return (
                f"deadline unmeetable: {ahead} job(s) ahead would take about {pred_ms:.0f} ms "
                f"at the measured dequeue rate, over max_wait_ms {mw:g}"
            )
        if code == FULL_TOKENS:
            msg = f"queue {self._pool_id!r} is full ({used} of {self.s.budget} queued tokens)"
            if self.s.policy == 1:
                msg += "; evicting every batch job would not make room for this batch task"
            return msg
        if self.s.policy == 1:
            return f"queue {self._pool_id!r} is full ({self.s.capacity}) of interactive jobs; a batch task cannot evict them"
        return f"queue {self._pool_id!r} is full ({self.s.capacity})"

    # -- leaving the queue ------------------------------------------------------------
    cdef Entry *_pop_locked(self, double now) noexcept nogil:
        cdef State *s = &self.s
        cdef PClass *c
        cdef Lane *lane
        cdef Tenant *t
        cdef Entry *e
        cdef int64_t tokens
        if now >= s.dl_due:
            _sweep(s, now)
        c = &s.cls[0] if s.cls[0].live else &s.cls[1]
        if not c.live:
            return NULL
        lane = c.cur
        e = _ring_pop_head(lane)
        _lru_unlink(lane, e)
        c.live -= 1
        if lane.live:
            c.cur = lane.rot_next
        elif lane.rot_next != lane or lane.tenant != NULL:
            _rot_remove(c, lane)
        # else: the default lane, alone: it stays in the circle, empty, until another lane joins
        if c.ranked:
            if c.live:
                _rank_delete(&c.rank, lane.live + 1, lane)
            else:
                _rank_reset(&c.rank, True)
                c.ranked = False
        if s.budget:
            tokens = _tokens_of(e)
            c.tokens -= tokens
            s.queued_tokens -= tokens
        if e.dl_next != NULL:
            _dl_unlink(s, e)
        t = lane.tenant
        if t != NULL:
            t.live -= 1
            if t.live == 0:
                _tenant_free(s, t)  # frees the lane too: not used below
        _table_delete(s, e)
        s.st.dequeued += 1
        _record_wait(&s.st, (now - e.enqueued_at) * 1000.0, now)
        if s.room_first != NULL:
            _wake_all(&s.room_first, &s.room_last)
        return e

    cdef Job _job_and_free(self, Entry *e, double now):
        cdef Job job = _make_job(self, e, now)
        _free_entry(e)
        return job

    @cython.binding(False)
    @cython.embedsignature(False)
    def dequeue(self, timeout=_ZERO):
        """dequeue($self, /, timeout=0.0)
--

        The next job, or None: INTERACTIVE first; within a priority round robin over
        tenants, FIFO within a tenant. An overdue job is never handed out (it expires).

        ``timeout=0`` (default) never waits; a number waits up to that many seconds;
        ``None`` waits until a job arrives or the queue is closed and empty. A wait never
        holds the engine's lock, releases the GIL and can be interrupted (KeyboardInterrupt).
        """
        cdef double now
        cdef double wait_s = 0.0
        cdef Entry *e
        cdef list taken
        if not (timeout is _ZERO or ((type(timeout) is float or type(timeout) is int) and timeout == 0)):
            wait_s = _timeout_s(timeout, "timeout")  # validated before anything is taken
        # First (and for timeout=0 only) a non-blocking attempt: a consumer that finds a job
        # waiting pays nothing for its timeout (no deadline, wake-up lock or result list).
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
        if e != NULL:
            return self._job_and_free(e, now)
        if wait_s == 0.0:
            return None
        taken = self._take(1, wait_s)
        return taken[0] if taken else None

    @cython.binding(False)
    @cython.embedsignature(False)
    def dequeue_many(self, max_jobs, timeout=0.0):
        """dequeue_many($self, /, max_jobs, timeout=0.0)
--

        Up to ``max_jobs`` jobs in dequeue order, taken under one lock acquisition.

        ``timeout`` is as for ``dequeue`` and applies to the first job only.
        """
        cdef Py_ssize_t n = _check_count(max_jobs, "max_jobs")
        return self._take(n, _timeout_s(timeout, "timeout"))

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
                        _link_waiter(&self.s.wait_first, &self.s.wait_last, &w)
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
                    # Compare as doubles first: converting an out-of-range double (inf,
                    # 1e300) to an integer is undefined behaviour.
                    if remaining * 1e6 >= <double>PY_TIMEOUT_MAX:
                        us = PY_TIMEOUT_MAX
                    else:
                        us = <long long>(remaining * 1e6)
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
                        _unlink_waiter(&self.s.wait_first, &self.s.wait_last, &w)
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
                _unlink_waiter(&self.s.wait_first, &self.s.wait_last, &w)
            oc_unlock(&self._lock)
            PyThread_free_lock(w.lock)
            w.lock = NULL
            if timeout > 0 and _mono() >= deadline:
                timeout = 0.0  # one last non-blocking attempt

    def take_expired(self):
        """The jobs that expired since the last call (earliest deadline first), to be reported
        to their clients. An expired job waited longer than its ``max_wait_ms`` (the task's,
        else the queue's); its ``wait_ms`` is how long it had waited when it expired. Expired
        jobs free their place at once but are held here until taken: call this regularly."""
        cdef double now = self._now_dl()
        cdef Entry *e
        cdef Entry *nxt
        cdef list out = []
        oc_lock(&self._lock)
        if now >= self.s.dl_due:
            _sweep(&self.s, now)
        e = self.s.exp_first
        self.s.exp_first = self.s.exp_last = NULL
        oc_unlock(&self._lock)
        while e != NULL:
            nxt = e.lru_next
            out.append(self._job_and_free(e, _left_at(e)))
            e = nxt
        return out

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
        if now >= self.s.dl_due:
            _sweep(&self.s, now)
        for p in range(2):
            c = &self.s.cls[p]
            while c.live:
                e = _pop_rr(&self.s, c)
                _table_delete(&self.s, e)
                e.lru_next = NULL
                if first == NULL:
                    first = e
                else:
                    last.lru_next = e
                last = e
                got += 1
        self.s.st.drained += got
        if got and self.s.room_first != NULL:
            _wake_all(&self.s.room_first, &self.s.room_last)
        oc_unlock(&self._lock)
        e = first
        while got:
            last = e.lru_next
            out.append(self._job_and_free(e, now))
            e = last
            got -= 1
        return out

    def close(self):
        """Refuse further enqueues (``QUEUE_CLOSED``) and wake every blocked consumer and
        producer.

        Queued jobs can still be dequeued or drained. Idempotent.
        """
        oc_lock(&self._lock)
        self.s.closed = True
        while self.s.wait_first != NULL:
            _wake_one(&self.s)
        _wake_all(&self.s.room_first, &self.s.room_last)
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
        cdef double now = self._now_dl()
        self._make_key(jid, &k)
        oc_lock(&self._lock)
        if now >= self.s.dl_due:
            _sweep(&self.s, now)
        e = _find(&self.s, &k, &slot)
        if e != NULL:
            _table_delete_slot(&self.s, slot)
            _remove(&self.s, e)
            self.s.st.cancelled += 1
            if self.s.room_first != NULL:
                _wake_all(&self.s.room_first, &self.s.room_last)
        oc_unlock(&self._lock)
        if e == NULL:
            return False
        _free_entry(e)
        return True

    def touch(self, job_id):
        """Mark a queued job as just used (DROP_LRU evicts it last in its tenant); False if not queued."""
        cdef str jid = self._id_arg(job_id)
        cdef Key k
        cdef Entry *e
        cdef Lane *lane
        cdef double now = self._now_dl()
        self._make_key(jid, &k)
        oc_lock(&self._lock)
        if now >= self.s.dl_due:
            _sweep(&self.s, now)
        e = _find(&self.s, &k, NULL)
        if e != NULL:
            lane = e.lane
            if lane.lru_last != e:
                _lru_unlink(lane, e)
                _lru_append(lane, e)
        oc_unlock(&self._lock)
        return e != NULL

    def position(self, job_id):
        """Jobs ``dequeue`` would hand out before this one (0 = next), or None if not queued.

        O(log n), with any number of tenants.
        """
        cdef str jid = self._id_arg(job_id)
        cdef Key k
        cdef Entry *e
        cdef int64_t rank = -2
        cdef double now = self._now_dl()
        self._make_key(jid, &k)
        oc_lock(&self._lock)
        if now >= self.s.dl_due:
            _sweep(&self.s, now)
        e = _find(&self.s, &k, NULL)
        if e != NULL:
            rank = _rank_of(&self.s, e)
        oc_unlock(&self._lock)
        if rank == -2:
            return None
        if rank < 0:
            raise MemoryError()
        return rank

    def eta_ms(self, job_id):
        """Advisory: milliseconds until the jobs ahead of this one drain at the measured
        dequeue rate (``position`` over the rate of the metrics window); None if it is not
        queued or nothing was dequeued in the window."""
        cdef str jid = self._id_arg(job_id)
        cdef Key k
        cdef Entry *e
        cdef int64_t rank = -2
        cdef int64_t deq = 0
        cdef double ms = 0.0
        cdef double now = self._now()
        self._make_key(jid, &k)
        oc_lock(&self._lock)
        if now >= self.s.dl_due:
            _sweep(&self.s, now)
        e = _find(&self.s, &k, NULL)
        if e != NULL:
            deq = _rate(&self.s, now)
            ms = self.s.rate_ms
            rank = _rank_of(&self.s, e) if deq else 0
        oc_unlock(&self._lock)
        if rank == -2 or not deq:
            return None
        if rank < 0:
            raise MemoryError()
        return <double>rank * ms

    def __contains__(self, job_id):
        if type(job_id) is not str:
            if not isinstance(job_id, str):
                return False
            job_id = str.__str__(job_id)  # never a subclass's __hash__ / __eq__
        cdef Key k
        cdef Entry *e
        cdef double now = self._now_dl()
        self._make_key(<str>job_id, &k)
        oc_lock(&self._lock)
        if now >= self.s.dl_due:
            _sweep(&self.s, now)
        e = _find(&self.s, &k, NULL)
        oc_unlock(&self._lock)
        return e != NULL

    cdef list _ids(self, int which, bint lru):
        """Job ids of class ``which`` (0, 1; 2 = both) in dequeue order, or in DROP_LRU's
        eviction order if ``lru``.

        Keys are copied into a C buffer under the lock; the strings are made after it.
        """
        cdef Py_ssize_t n, i = 0, j
        cdef PyObject **strs
        cdef uint64_t *counters
        cdef Entry *e
        cdef int p
        cdef PClass *c
        cdef bint done = False
        cdef bint nomem = False
        cdef double now = self._now_dl()
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
            if now >= self.s.dl_due:
                _sweep(&self.s, now)
            if self._live_of(which) == n:
                done = True
                for p in range(2):
                    if which != 2 and p != which:
                        continue
                    c = &self.s.cls[p]
                    if c.live and _class_keys(c, lru, strs + i, counters + i) < 0:
                        nomem = True
                        break
                    i += c.live
            oc_unlock(&self._lock)
            if done:
                break
            PyMem_Free(strs)  # the depth changed between sizing and locking: size again
            PyMem_Free(counters)
        try:
            if nomem:
                raise MemoryError()
            for j in range(i):
                if strs[j] == NULL:
                    out.append(_own_id(self._prefix_dash, counters[j]))
                else:
                    out.append(<object>strs[j])
        finally:
            if not nomem:
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
        """Job ids of one class in the order DROP_LRU would evict them: least recently used
        first (enqueue and ``touch`` make a job recent); with tenants, each eviction takes
        from the tenant with the most jobs in the class (ties: the latest in the round robin)."""
        return self._ids(_PRIORITIES.index(Priority.parse(priority, "priority")), True)

    # -- metrics ----------------------------------------------------------------------
    def metrics(self):
        """An immutable snapshot of counters, rates and wait percentiles (O(1) in depth,
        O(m) in the tenants with queued work)."""
        cdef double now = self._now()
        cdef Stats st
        cdef int64_t enq, deq
        cdef double win, wmax = 0.0, oldest = 0.0
        cdef bint has_oldest = False
        cdef bint slots[WINDOW_SLOTS]
        cdef int64_t hist[WAIT_BUCKETS]
        cdef int64_t live0, live1, queued_tokens, budget
        cdef bint closed
        cdef int i, b
        cdef PClass *c
        cdef Lane *lane
        cdef double t
        memset(hist, 0, sizeof(hist))
        oc_lock(&self._lock)
        if now >= self.s.dl_due:
            _sweep(&self.s, now)
        memcpy(&st, &self.s.st, sizeof(Stats))
        live0 = self.s.cls[0].live
        live1 = self.s.cls[1].live
        closed = self.s.closed
        queued_tokens = self.s.queued_tokens
        budget = self.s.budget
        for i in range(2):
            c = &self.s.cls[i]
            lane = c.cur if c.live else NULL  # (the circle may hold the empty default lane alone)
            while lane != NULL:
                t = lane.ring[lane.head & lane.mask].enqueued_at
                if not has_oldest or t < oldest:
                    oldest = t
                    has_oldest = True
                lane = lane.rot_next
                if lane == c.cur:
                    break
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
            st.expired,
            queued_tokens if budget else None,
        )
        return _build_metrics(self._pool_id, self._policy.value, raw)


# ---------------------------------------------------------------------------------------
# Admission (module level: called directly, so the compiler can inline the hot path)

cdef inline int _enqueue_locked(Queue self, Entry *e, Admit *a) noexcept nogil:
    """The locked part of an admission (the engine's lock held, no GIL needed)."""
    cdef State *s = &self.s
    cdef PClass *inter = &s.cls[0]
    cdef int p = a.prio
    cdef PClass *c = &s.cls[p]
    cdef Lane *lane = &c.dflt
    cdef int code
    cdef int slot
    cdef Waiter *w
    cdef bint fast = False
    if a.now >= s.dl_due:
        _sweep(s, a.now)
    if (
        a.tenant == NULL
        and a.max_wait <= 0
        and not s.budget
        and not s.tenants_seen
        and a.waiter == NULL
        and inter.live + s.cls[1].live < s.capacity
        and not s.closed
        and not (s.max_tokens_limit and a.max_tokens > s.max_tokens_limit)
        and not (a.has_key and _find(s, a.key, NULL) != NULL)
    ):
        # The plain task (no tenant, deadline or budget) with room: the hot path. No tenant was
        # ever seen, so the default lane is the class's only lane: the job goes after its jobs.
        a.position = lane.live + (inter.live if p else 0)
        if s.policy != 2 or a.position == 0:
            if _ring_reserve(lane) < 0:
                return NOMEM
            a.victims = NULL
            a.nvict = 0
            fast = True
    if not fast:
        code = _enqueue_general(s, e, a, &lane)
        if code != OK:
            return code
    # Admitted (room reserved, evictions done): the common end.
    if a.has_key:
        e.key_str = a.key.key_str
        e.counter = a.key.counter
        e.hash = a.key.hash
        if a.key.key_str == NULL and a.key.counter >= s.next_id:
            s.next_id = a.key.counter + 1
    else:
        e.key_str = NULL
        e.counter = s.next_id
        e.hash = _mix(s.next_id)
        s.next_id += 1
    e.lane = lane
    if lane.rot_next == NULL:
        _rot_insert(c, lane)
    _ring_push(lane, e)
    _lru_append(lane, e)
    c.live += 1
    if c.ranked:
        _rank_insert(&c.rank, lane.live, lane)
    if s.budget:
        c.tokens += a.tokens
        s.queued_tokens += a.tokens
    _table_insert(s, e)
    s.st.accepted += 1
    slot = _cur_slot(&s.st, a.now)
    s.st.win_enq[slot] += 1
    # Accepted.eta_ms = position * ms_per_job, multiplied only when it is read.
    a.ms_per_job = s.rate_ms if s.rate_lo <= a.now < s.rate_hi else _rate_ms_slow(s, a.now)
    w = s.wait_first
    if w != NULL:
        _unlink_waiter(&s.wait_first, &s.wait_last, w)
        w.woken = True
        PyThread_release_lock(w.lock)
    return OK


cdef inline void _admit_args(State *s, Task t, Admit *a, Key *k, Waiter *w, double now) noexcept:
    a.key = k
    a.prio = t.prio
    a.max_tokens = t.max_tokens_c
    a.tokens = t.tokens_c
    a.max_wait = t.max_wait_c if t.max_wait_c > 0 else s.max_wait
    a.now = now
    a.waiter = w


cdef object _refused(Queue self, Task t, Entry *e, Admit *a, Key *k, int code):
    """The end of an attempt that was not admitted: release the entry; None (WAIT), a
    MemoryError or the Rejected."""
    Py_DECREF(t)
    if a.has_key and k.key_str != NULL:
        Py_DECREF(<object>k.key_str)
    PyMem_Free(e)
    if code == WAIT:
        return None
    if code == NOMEM:
        raise MemoryError()
    return _make_rejected(
        _REASONS[_reason_index(code)],
        a.retry_ms,
        self._policy,
        self._refusal_message(code, t, a.ahead, a.used, a.pred_ms, a.max_wait),
    )


cdef void _report_victims(Queue self, Accepted res, Admit *a, double now) except *:
    """Accepted.evicted (and evicted_all) from the victims the locked part unlinked."""
    cdef Entry *v = a.victims
    cdef Entry *vnext
    cdef list evicted
    if a.nvict == 1:
        res.evicted = _make_job(self, v, now)
        _free_entry(v)
        return
    evicted = []
    while a.nvict:
        vnext = v.lru_next
        evicted.append(_make_job(self, v, now))
        _free_entry(v)
        v = vnext
        a.nvict -= 1
    res.evicted = evicted[0]
    res._evicted_all = tuple(evicted)


cdef inline object _attempt(Queue self, Task t, Waiter *w):
    """One admission attempt (all of Queue.enqueue for wait=0). With a waiter a retriable
    refusal registers it as a room waiter and returns None instead, and DROP_LRU does not
    evict."""
    cdef double now = self._now()
    cdef Key k
    cdef Admit a
    cdef int code
    cdef Entry *e
    cdef PyObject *key_str = NULL
    cdef uint64_t counter = 0
    cdef Accepted res
    a.has_key = t.job_id is not None
    if a.has_key:
        self._make_key(<str>t.job_id, &k)
    a.tenant = NULL
    if t.tenant is not None:
        a.tenant = <PyObject *>t.tenant
        a.thash = <uint64_t>PyObject_Hash(t.tenant)
    _admit_args(&self.s, t, &a, &k, w, now)
    e = <Entry *>PyMem_Malloc(sizeof(Entry))
    if e == NULL:
        raise MemoryError()
    e.task = <PyObject *>t
    e.enqueued_at = now
    e.lru_prev = e.lru_next = NULL
    e.dl_next = NULL  # (dl_prev is only read when dl_next is set)
    res = Accepted.__new__(Accepted)
    # The entry's references are taken before the entry becomes visible: once the lock
    # is released a consumer may dequeue and free it (at once on a free-threaded build,
    # or whenever the GIL is released around the locked part).
    Py_INCREF(t)
    if a.has_key and k.key_str != NULL:
        Py_INCREF(<object>k.key_str)
    if _release_gil:
        with nogil:
            oc_lock(&self._lock)
            code = _enqueue_locked(self, e, &a)
            key_str = e.key_str
            counter = e.counter
            oc_unlock(&self._lock)
    else:
        oc_lock(&self._lock)
        code = _enqueue_locked(self, e, &a)
        key_str = e.key_str
        counter = e.counter
        oc_unlock(&self._lock)
    if code != OK:
        return _refused(self, t, e, &a, &k, code)
    # From here on `e` may already be gone; only the copies taken under the lock are used.
    if key_str == NULL:
        res._prefix_dash = self._prefix_dash
        res._counter = counter
    else:
        res._job_id = <object>key_str  # alive: the task we hold references it as its job_id
    res.position = a.position
    if a.ms_per_job > 0:
        res._eta_kind = 2
        res._eta = a.ms_per_job
    if a.victims != NULL:
        _report_victims(self, res, &a, now)
    return res


# ---------------------------------------------------------------------------------------
# Key lists in dequeue or eviction order (lock held, GIL held: the keys are INCREF'd)

cdef inline void _put_key(Entry *e, PyObject **strs, uint64_t *counters, Py_ssize_t i) noexcept:
    strs[i] = e.key_str
    counters[i] = e.counter
    if e.key_str != NULL:
        Py_INCREF(<object>e.key_str)


cdef inline bint _heap_above(int64_t *count, int64_t a, int64_t b) noexcept nogil:
    # Eviction order: more jobs first; ties: the later lane in the round robin.
    return count[a] > count[b] or (count[a] == count[b] and a > b)


cdef int _class_keys(PClass *c, bint lru, PyObject **strs, uint64_t *counters) noexcept:
    """Copy the keys of a non-empty class in dequeue order (round robin over its lanes) or in
    DROP_LRU's eviction order; -1 when out of memory (nothing copied then)."""
    cdef int64_t m = c.nlanes
    cdef int64_t i, j, k, top, child, active
    cdef Py_ssize_t out = 0
    cdef Lane **lanes
    cdef int64_t *pos
    cdef int64_t *count
    cdef int64_t *heap
    cdef Entry **cursor
    cdef Lane *lane = c.cur
    cdef Entry *e
    if m == 1:
        if lru:
            e = lane.lru_first
            while e != NULL:
                _put_key(e, strs, counters, out)
                out += 1
                e = e.lru_next
        else:
            for k in range(lane.head, lane.tail):
                e = lane.ring[k & lane.mask]
                if e != NULL:
                    _put_key(e, strs, counters, out)
                    out += 1
        return 0
    lanes = <Lane **>PyMem_RawMalloc(m * sizeof(Lane *))
    pos = <int64_t *>PyMem_RawMalloc(m * sizeof(int64_t))
    count = <int64_t *>PyMem_RawMalloc(m * sizeof(int64_t))
    heap = <int64_t *>PyMem_RawMalloc(m * sizeof(int64_t))
    cursor = <Entry **>PyMem_RawMalloc(m * sizeof(Entry *))
    if lanes == NULL or pos == NULL or count == NULL or heap == NULL or cursor == NULL:
        PyMem_RawFree(lanes)
        PyMem_RawFree(pos)
        PyMem_RawFree(count)
        PyMem_RawFree(heap)
        PyMem_RawFree(cursor)
        return -1
    for i in range(m):
        lanes[i] = lane
        pos[i] = lane.head
        count[i] = lane.live
        cursor[i] = lane.lru_first
        lane = lane.rot_next
    if not lru:
        # Rounds over the lanes still holding jobs (heap[] lists them in circle order).
        active = m
        for i in range(m):
            heap[i] = i
        while active:
            j = 0
            for i in range(active):
                k = heap[i]
                lane = lanes[k]
                while lane.ring[pos[k] & lane.mask] == NULL:
                    pos[k] += 1
                _put_key(lane.ring[pos[k] & lane.mask], strs, counters, out)
                out += 1
                pos[k] += 1
                count[k] -= 1
                if count[k]:
                    heap[j] = k
                    j += 1
            active = j
    else:
        # A binary max-heap of lanes by (jobs left, index in the circle).
        for i in range(m):
            heap[i] = i
            j = i
            while j > 0 and _heap_above(count, heap[j], heap[(j - 1) // 2]):
                heap[j], heap[(j - 1) // 2] = heap[(j - 1) // 2], heap[j]
                j = (j - 1) // 2
        active = m
        while active:
            top = heap[0]
            e = cursor[top]
            _put_key(e, strs, counters, out)
            out += 1
            cursor[top] = e.lru_next
            count[top] -= 1
            if not count[top]:
                active -= 1
                heap[0] = heap[active]
            j = 0
            while True:
                child = 2 * j + 1
                if child >= active:
                    break
                if child + 1 < active and _heap_above(count, heap[child + 1], heap[child]):
                    child += 1
                if not _heap_above(count, heap[child], heap[j]):
                    break
                heap[j], heap[child] = heap[child], heap[j]
                j = child
    PyMem_RawFree(lanes)
    PyMem_RawFree(pos)
    PyMem_RawFree(count)
    PyMem_RawFree(heap)
    PyMem_RawFree(cursor)
    return 0


# ---------------------------------------------------------------------------------------
# Waiters (lock held)

cdef inline void _link_waiter(Waiter **first, Waiter **last, Waiter *w) noexcept nogil:
    w.woken = False
    w.next = NULL
    w.prev = last[0]
    if last[0] == NULL:
        first[0] = w
    else:
        last[0].next = w
    last[0] = w


cdef inline void _unlink_waiter(Waiter **first, Waiter **last, Waiter *w) noexcept nogil:
    if w.prev == NULL:
        first[0] = w.next
    else:
        w.prev.next = w.next
    if w.next == NULL:
        last[0] = w.prev
    else:
        w.next.prev = w.prev
    w.next = w.prev = NULL


cdef inline void _wake_one(State *s) noexcept nogil:
    cdef Waiter *w = s.wait_first
    _unlink_waiter(&s.wait_first, &s.wait_last, w)
    w.woken = True
    PyThread_release_lock(w.lock)


cdef inline int _reason_index(int code) noexcept nogil:
    # Order of RejectionReason: QUEUE_FULL, INVALID_REQUEST, POLICY_VIOLATION, QUEUE_CLOSED,
    # DEADLINE_UNMEETABLE
    if code == CLOSED:
        return 3
    if code == OVER_LIMIT or code == OVER_BUDGET or code == TENANT_CAP:
        return 2
    if code == DUPLICATE:
        return 1
    if code == UNMEETABLE:
        return 4
    return 0


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
        q.s.room_first = NULL
        q.s.room_last = NULL
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


cdef int _visit_lane(Lane *lane, visitproc visit, void *arg) noexcept:
    cdef int64_t sq
    cdef Entry *e
    cdef int r
    if lane.ring == NULL:
        return 0
    for sq in range(lane.head, lane.tail):
        e = lane.ring[sq & lane.mask]
        if e != NULL:
            r = visit(e.task, arg)
            if r:
                return r
    return 0


cdef int _queue_traverse(PyObject *o, visitproc visit, void *arg) noexcept:
    cdef State *s = <State *>((<char *>o) + _STATE_OFFSET)
    cdef int p, r
    cdef uint64_t b
    cdef Tenant *t
    cdef Entry *e
    # The entries only change under the GIL (or, free-threaded, while the collector has the
    # world stopped) unless the benchmark hook releases the GIL around operations: then do
    # not read them; not visiting only keeps objects alive, it never frees one.
    if not _release_gil:
        for p in range(2):
            r = _visit_lane(&s.cls[p].dflt, visit, arg)
            if r:
                return r
        if s.ttable != NULL:
            for b in range(s.ttmask + 1):
                t = s.ttable[b]
                while t != NULL:
                    for p in range(2):
                        r = _visit_lane(&t.lanes[p], visit, arg)
                        if r:
                            return r
                    t = t.next
        e = s.exp_first  # expired, not yet taken: their tasks are the queue's references too
        while e != NULL:
            r = visit(e.task, arg)
            if r:
                return r
            e = e.lru_next
    if _base_traverse != NULL:
        return _base_traverse(o, visit, arg)
    return 0


cdef int _queue_clear(PyObject *o) noexcept:
    # Break a cycle: drop the queued (and expired, untaken) jobs. No Python code of the
    # queue's runs here (the clock may already be cleared): unlink every entry under the
    # lock, then release the tasks after it. The queue is unreachable, so nobody sees its
    # counters again.
    cdef State *s = <State *>((<char *>o) + _STATE_OFFSET)
    cdef Queue q = <Queue>o
    cdef Entry *first = NULL
    cdef Entry *last = NULL
    cdef Entry *e
    cdef int p
    oc_lock(&q._lock)
    for p in range(2):
        while s.cls[p].live:
            e = _pop_rr(s, &s.cls[p])
            _table_delete(s, e)
            e.lru_next = NULL
            if first == NULL:
                first = e
            else:
                last.lru_next = e
            last = e
    if s.exp_first != NULL:
        if first == NULL:
            first = s.exp_first
        else:
            last.lru_next = s.exp_first
        s.exp_first = s.exp_last = NULL
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
