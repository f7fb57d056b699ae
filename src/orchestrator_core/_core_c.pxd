# Declarations of the compiled engine (see the invariants at the top of _core_c.pyx).
cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int64_t, uint64_t

cdef extern from "pythread.h":
    ctypedef void *PyThread_type_lock

cdef extern from "_oc_sync.h":
    ctypedef struct oc_lock_t:
        pass
    void oc_lock(oc_lock_t *) noexcept nogil
    void oc_unlock(oc_lock_t *) noexcept nogil
    double oc_monotonic() noexcept nogil


cdef enum:
    WAIT_BUCKETS = 94
    WINDOW_S = 10
    WINDOW_SLOTS = 11       # WINDOW_S completed seconds + the one in progress
    N_REASONS = 4


cdef struct Entry:
    PyObject *task          # owned reference
    PyObject *key_str       # owned exact str for foreign ids; NULL for this queue's own ids
    uint64_t counter        # the counter of an own id (key_str == NULL)
    uint64_t hash
    double enqueued_at
    int64_t seq
    Entry *lru_prev
    Entry *lru_next
    int prio


cdef struct PClass:
    Entry **ring
    int64_t mask
    int64_t head
    int64_t tail
    int64_t live
    int64_t dead
    Entry *lru_first
    Entry *lru_last
    int64_t *fen            # Fenwick tree over ring cells (fen_size = mask + 2 when valid)
    int64_t fen_size
    bint fen_ok
    int64_t *pending        # lazy Fenwick updates: 2 * cell + (1 for +1, 0 for -1)
    int64_t npending
    int64_t pending_cap


cdef struct Key:
    PyObject *key_str       # borrowed; NULL for an own id
    uint64_t counter
    uint64_t hash


cdef struct Waiter:
    PyThread_type_lock lock
    Waiter *next
    Waiter *prev
    bint woken


cdef struct Stats:
    int64_t accepted
    int64_t rejected[N_REASONS]
    int64_t evicted
    int64_t cancelled
    int64_t dequeued
    int64_t drained
    int64_t created_sec
    double created_at
    double sec_end
    int slot
    int64_t win_sec[WINDOW_SLOTS]
    int64_t win_enq[WINDOW_SLOTS]
    int64_t win_deq[WINDOW_SLOTS]
    int64_t win_hist[WINDOW_SLOTS][WAIT_BUCKETS]
    double win_max[WINDOW_SLOTS]
    int64_t life_hist[WAIT_BUCKETS]
    double life_sum


cdef struct State:
    PClass cls[2]
    Entry **table           # open addressing, linear probing, backward-shift deletion
    uint64_t tmask
    int64_t tcount
    int64_t capacity
    int policy              # 0 REJECT_NEW, 1 DROP_LRU, 2 FAIL_FAST
    int64_t max_tokens_limit
    uint64_t next_id
    bint closed
    Waiter *wait_first
    Waiter *wait_last
    Stats st


@cython.final
@cython.freelist(32)
cdef class Task:
    cdef readonly str model
    cdef readonly object max_tokens
    cdef readonly object session_id
    cdef readonly object priority
    cdef readonly object job_id
    cdef readonly object payload
    cdef int prio
    cdef int64_t max_tokens_c


@cython.final
@cython.freelist(32)
cdef class Job:
    cdef object _job_id
    cdef object _prefix_dash
    cdef uint64_t _counter
    cdef readonly Task task
    cdef readonly double enqueued_at
    cdef readonly double wait_ms


@cython.final
@cython.freelist(32)
cdef class Accepted:
    cdef object _job_id
    cdef object _prefix_dash
    cdef uint64_t _counter
    cdef readonly Py_ssize_t position
    cdef readonly object evicted


@cython.final
@cython.freelist(32)
cdef class Rejected:
    cdef readonly object reason
    cdef readonly int64_t retry_after_ms
    cdef readonly object policy
    cdef readonly str message


cdef class Queue:
    cdef oc_lock_t _lock
    cdef State s
    cdef object _policy
    cdef str _pool_id
    cdef object _clock
    cdef str _prefix
    cdef str _prefix_dash
    cdef bytes _prefix_dash_b
    cdef object __weakref__

    cdef inline double _now(self) except? -1.0
    cdef bint _make_key(self, str job_id, Key *k)
    cdef int _enqueue_locked(self, Entry *e, int64_t max_tokens, Key *k, bint has_key, double now,
                             Entry **victim, int64_t *position, int64_t *ahead, int64_t *retry_ms) noexcept nogil
    cdef Entry *_pop_locked(self, double now) noexcept nogil
    cdef Job _job_and_free(self, Entry *e, double now)
    cdef list _take(self, Py_ssize_t max_jobs, double timeout)
    cdef str _id_arg(self, object job_id)
    cdef list _ids(self, int which, bint lru)
    cdef Py_ssize_t _live_of(self, int which) noexcept nogil
