# Declarations of the compiled engine (see the invariants at the top of _core_c.pyx).
cimport cython
from cpython.object cimport PyObject
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

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
    N_REASONS = 5


cdef struct Lane
cdef struct Tenant


cdef struct Entry:
    PyObject *task          # owned reference
    PyObject *key_str       # owned exact str for foreign ids; NULL for this queue's own ids
    uint64_t counter        # the counter of an own id (key_str == NULL)
    uint64_t hash           # on the expired list (out of the index): the time it expired, as double bits
    double enqueued_at
    int64_t seq
    Entry *lru_prev
    Entry *lru_next
    Lane *lane              # its tenant's lane (the class is lane.prio)
    Entry *dl_prev          # deadline lane links, circular through the DLane's sentinel; NULL: no deadline
    Entry *dl_next


cdef struct Lane:
    # The fields of every enqueue and dequeue first (one cache line), the rest after.
    Entry **ring            # NULL until a tenant's lane is first used
    int64_t mask
    int64_t head
    int64_t tail
    int64_t live
    int64_t dead
    Entry *lru_first
    Entry *lru_last
    Lane *rot_next          # round-robin links; NULL while the lane is empty
    Lane *rot_prev
    Tenant *tenant          # NULL: the default tenant (tenant=None)
    int prio
    int64_t label           # its place in the round robin (the circle is in label order, see _rot_insert)
    bint fen_ok
    int64_t *fen            # Fenwick tree over ring cells (fen_size = mask + 2 when valid)
    int64_t fen_size
    int64_t *pending        # lazy Fenwick updates: 2 * cell + (1 for +1, 0 for -1)
    int64_t npending
    int64_t pending_cap


cdef struct RNode:
    Lane *lane              # key (level, lane.label): the lane has >= level jobs (the label is
    int64_t level           # read through the lane: relabelling keeps the tree valid)
    int32_t left            # node indices (0: none; node 0 is never used); free list via left
    int32_t right
    int32_t size            # nodes in the subtree
    uint32_t prio           # treap heap order (max at the root)


cdef struct Rank:
    # A class's rank tree (kept while it has had over RANK_LANES lanes): an order-statistics treap
    # over the keys (level, label), one per queued job.
    RNode *nodes            # NULL until used
    int64_t cap             # nodes allocated (node 0 included)
    int64_t used            # nodes handed out so far (high-water mark, node 0 included)
    int64_t free            # free list head (0: none)
    int64_t root
    uint64_t seed           # xorshift64 state of the priorities


cdef struct PClass:
    Lane dflt               # the default tenant's lane
    Lane *cur               # the lane served next; NULL when the class is empty
    Rank rank
    bint ranked             # rank kept: over RANK_LANES lanes joined since it was last empty
    int64_t step            # the largest label gap a lane joining the circle takes
    int64_t live            # jobs in the class
    int64_t nlanes          # lanes in the round robin
    int64_t tokens          # their tokens (kept only with max_queued_tokens)


cdef struct Tenant:
    Tenant *next            # hash chain
    uint64_t hash
    int64_t live            # jobs queued, both classes
    Py_ssize_t nchars
    int kind
    Py_ssize_t name_cap     # bytes available for the name (records are reused)
    char *name              # nchars * kind bytes of the name's data, right after the struct
    Lane lanes[2]


cdef struct DLane:
    double max_wait_ms
    Entry head              # sentinel: head.dl_next is the first (earliest) job, head.dl_prev the last


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
    int64_t expired
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
    # What every enqueue and dequeue reads comes first (a few cache lines); the rest after.
    double dl_due           # lower bound of the earliest deadline lane head's expiry (inf: none)
    int64_t capacity
    int policy              # 0 REJECT_NEW, 1 DROP_LRU, 2 FAIL_FAST
    bint closed
    int64_t max_tokens_limit
    int64_t budget          # max_queued_tokens; 0: none
    uint64_t next_id
    Entry **table           # open addressing, linear probing, backward-shift deletion
    uint64_t tmask
    uint64_t tfloor         # the table never shrinks below this many slots
    int64_t tcount
    Waiter *wait_first      # consumers waiting for a job
    Waiter *room_first      # producers waiting for room (enqueue(wait=...))
    double rate_lo          # the window's dequeues and length, valid for now in [rate_lo, rate_hi)
    double rate_hi
    double rate_ms          # 1000 * rate_win / rate_deq: milliseconds per job ahead (when rate_deq)
    int64_t rate_deq
    double rate_win
    PClass cls[2]
    bint tenants_seen       # every task takes the general path from then on
    bint evicting           # inside DROP_LRU's eviction loop
    int64_t queued_tokens   # kept only with a budget
    int64_t dl_jobs         # queued jobs with a deadline
    Tenant **ttable         # tenants with queued work: chained hash table (NULL until the first)
    uint64_t ttmask
    int64_t ttcount
    Tenant *tfree           # a few emptied tenant records kept for reuse (chained through next)
    int64_t ntfree
    DLane **dlanes          # one per distinct max_wait_ms value queued
    int64_t ndl
    int64_t dl_cap
    Entry *exp_first        # expired, not yet taken: chained through lru_next
    Entry *exp_last
    double max_wait         # default max_wait_ms; <= 0: none
    bint feasible
    int64_t tenant_cap
    Waiter *wait_last
    Waiter *room_last
    Stats st


cdef struct Admit:
    # in
    int prio
    int64_t max_tokens
    int64_t tokens
    double max_wait         # <= 0: none
    Key *key
    bint has_key
    PyObject *tenant        # borrowed exact str, or NULL
    uint64_t thash
    double now
    Waiter *waiter          # enqueue(wait=...) before its last attempt: register instead of refusing
    # out
    Entry *victims          # chained through lru_next
    int64_t nvict
    int64_t position
    int64_t ahead
    int64_t retry_ms
    int64_t used
    double pred_ms
    double ms_per_job       # > 0: the measured rate, for Accepted.eta_ms


@cython.final
@cython.freelist(32)
cdef class Task:
    cdef readonly str model
    cdef readonly object max_tokens
    cdef readonly object session_id
    cdef readonly object priority
    cdef readonly object job_id
    cdef readonly object payload
    cdef readonly object tenant
    cdef readonly object max_wait_ms
    cdef readonly object prompt_tokens
    cdef readonly object tokens
    cdef int prio
    cdef int64_t max_tokens_c
    cdef int64_t tokens_c
    cdef double max_wait_c      # 0: none


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
    cdef object _evicted_all
    cdef double _eta            # _eta_kind 1: eta_ms; 2: milliseconds per job ahead (eta = position * _eta)
    cdef int _eta_kind          # 0: no eta


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
    cdef inline double _now_dl(self) except? -1.0
    cdef bint _make_key(self, str job_id, Key *k)
    cdef object _enqueue_waiting(self, Task t, double timeout)
    cdef void _sweep_now(self) except *
    cdef Entry *_pop_locked(self, double now) noexcept nogil
    cdef Job _job_and_free(self, Entry *e, double now)
    cdef list _take(self, Py_ssize_t max_jobs, double timeout)
    cdef str _id_arg(self, object job_id)
    cdef list _ids(self, int which, bint lru)
    cdef Py_ssize_t _live_of(self, int which) noexcept nogil
