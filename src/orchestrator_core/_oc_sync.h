/* The engine's lock and clock.
 *
 * Lock: on CPython 3.13+ (and always on free-threaded builds) a PyMutex: a one-byte
 * compare-and-swap fast path that detaches the thread state (releases the GIL) if it has
 * to park. Before 3.13 PyMutex is not public, and PyThread_type_lock costs two semaphore
 * calls per critical section, so a word-sized compare-and-swap lock is used instead. Its
 * critical sections are a few hundred nanoseconds of C that never need the GIL, so a
 * contended acquirer spins briefly and then yields the CPU: the holder always finishes
 * without waiting for anything.
 *
 * Clock: CLOCK_MONOTONIC on Linux (what time.monotonic() reads there) without PyTime's
 * integer round trip; elsewhere PyTime_MonotonicRaw, i.e. time.monotonic() itself.
 */
#ifndef OC_SYNC_H
#define OC_SYNC_H

#include <Python.h>

#if PY_VERSION_HEX >= 0x030d0000
typedef PyMutex oc_lock_t;
static inline void oc_lock(oc_lock_t *l) { PyMutex_Lock(l); }
static inline void oc_unlock(oc_lock_t *l) { PyMutex_Unlock(l); }
#else
typedef struct { volatile long v; } oc_lock_t;
#  if defined(_MSC_VER)
#    include <intrin.h>
#    include <windows.h>
#    define OC_TRY(l) (_InterlockedCompareExchange(&(l)->v, 1, 0) == 0)
#    define OC_RELEASE(l) _InterlockedExchange(&(l)->v, 0)
#    define OC_YIELD() SwitchToThread()
#    define OC_PAUSE() YieldProcessor()
#  else
#    include <sched.h>
static inline int oc_try(volatile long *p) {
    long expected = 0;
    return __atomic_compare_exchange_n(p, &expected, 1, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED);
}
#    define OC_TRY(l) oc_try(&(l)->v)
#    define OC_RELEASE(l) __atomic_store_n(&(l)->v, 0, __ATOMIC_RELEASE)
#    define OC_YIELD() sched_yield()
#    if defined(__x86_64__) || defined(__i386__)
#      define OC_PAUSE() __builtin_ia32_pause()
#    else
#      define OC_PAUSE() ((void)0)
#    endif
#  endif
static inline void oc_lock(oc_lock_t *l) {
    int spins = 0;
    while (!OC_TRY(l)) {
        if (++spins < 100) {
            OC_PAUSE();
        } else {
            OC_YIELD();
        }
    }
}
static inline void oc_unlock(oc_lock_t *l) { OC_RELEASE(l); }
#endif

#if defined(__linux__)
#  include <time.h>
static inline double oc_monotonic(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
#else
static inline double oc_monotonic(void) {
#  if PY_VERSION_HEX >= 0x030d0000
    PyTime_t t;
    (void)PyTime_MonotonicRaw(&t);
    return PyTime_AsSecondsDouble(t);
#  else
    return _PyTime_AsSecondsDouble(_PyTime_GetMonotonicClock());
#  endif
}
#endif

#endif /* OC_SYNC_H */
