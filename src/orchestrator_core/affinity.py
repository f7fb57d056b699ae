"""Session affinity: remember which worker pool holds a session's KV cache.

A conversation's later turns run fastest on the pool that served its earlier turns, because that pool still holds the
session's KV cache. ``SessionAffinity`` remembers session id -> pool id for a bounded number of sessions:

* a binding lives for ``ttl_s`` seconds after its last *activity* (``bind`` or ``record_turn``); a binding whose age
  has reached ``ttl_s`` is expired and is never returned;
* a binding serves at most ``max_turns`` turns (``record_turn``); the turn that reaches the limit forgets the session,
  so the next turn is placed afresh and long conversations rebalance;
* when ``max_sessions`` live bindings exist, binding a new session evicts the least recently active one.

``get`` is a pure lookup: it neither counts a turn nor refreshes the binding, so ``place()`` can consult the map without
changing it and a placement can be replayed. Record the decision afterwards with ``bind``/``record_turn``.

Invariants (hold whenever the lock is free)::

    _bindings:        OrderedDict  oldest activity ... newest activity
                      (expires_at_s is non-decreasing from front to back, so expiry pops from the front)
    _sessions_by_pool pool_id -> {session_id, ...}, exactly the sessions bound to that pool, no empty sets
    len(_bindings) <= max_sessions;  every binding has turns_used < max_turns

The clock is called before the lock is taken (never while holding it). Readings are clamped to the latest reading seen,
so a clock that steps backwards, or two threads whose readings reach the lock out of order, cannot break the ordering.
Session and pool ids are stored as exact ``str``, so no user ``__hash__``/``__eq__`` runs under the lock.
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

__all__ = ["SessionAffinity"]

_DEFAULT_MAX_SESSIONS = 10_000
_DEFAULT_TTL_S = 600.0
_DEFAULT_MAX_TURNS = 8


def _check_id(value: object, param: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{param} must be a str, got {value!r} ({type(value).__name__})")
    if not value or value.isspace():
        raise ValueError(f"{param} must be a non-empty, non-blank str, got {value!r}")
    # A str subclass could override __hash__/__eq__; only exact str is stored or looked up under the lock.
    return value if type(value) is str else str.__str__(value)


def _check_positive_int(value: object, param: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{param} must be an int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{param} must be >= 1, got {value!r}")
    return int(value)


def _check_positive_seconds(value: object, param: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{param} must be a number of seconds (int or float), got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{param} must be a finite number of seconds > 0, got {value!r}")
    return float(value)


class _Binding:
    """One session's binding (internal; mutated only under the lock)."""

    __slots__ = ("expires_at_s", "pool_id", "turns_used")

    def __init__(self, pool_id: str, expires_at_s: float) -> None:
        self.pool_id = pool_id
        self.expires_at_s = expires_at_s
        self.turns_used = 0


class SessionAffinity:
    """Thread-safe, bounded session id -> pool id map with a TTL, a turn limit and LRU eviction.

    ``max_sessions`` bounds the number of live bindings (default 10,000); ``ttl_s`` is how long a binding lives after
    its last ``bind`` or ``record_turn`` (default 600 s, i.e. 10 minutes); ``max_turns`` is how many turns a binding
    serves before it is forgotten (default 8); ``clock`` returns the current time in seconds as a float (default
    ``time.monotonic``) and must not call back into this object. All arguments are keyword-only.
    """

    __slots__ = (
        "_bindings",
        "_clock",
        "_latest_now_s",
        "_lock",
        "_max_sessions",
        "_max_turns",
        "_sessions_by_pool",
        "_ttl_s",
    )

    def __init__(
        self,
        *,
        max_sessions: int = _DEFAULT_MAX_SESSIONS,
        ttl_s: float = _DEFAULT_TTL_S,
        max_turns: int = _DEFAULT_MAX_TURNS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max_sessions = _check_positive_int(max_sessions, "max_sessions")
        self._ttl_s = _check_positive_seconds(ttl_s, "ttl_s")
        self._max_turns = _check_positive_int(max_turns, "max_turns")
        if not callable(clock):
            raise TypeError(f"clock must be a callable returning seconds as a float, got {clock!r}")
        self._clock = clock
        self._lock = threading.Lock()
        self._bindings: OrderedDict[str, _Binding] = OrderedDict()
        self._sessions_by_pool: dict[str, dict[str, None]] = {}
        self._latest_now_s = -math.inf

    @property
    def max_sessions(self) -> int:
        """The largest number of live bindings kept at once."""
        return self._max_sessions

    @property
    def ttl_s(self) -> float:
        """Seconds a binding lives after its last ``bind`` or ``record_turn``."""
        return self._ttl_s

    @property
    def max_turns(self) -> int:
        """Turns a binding serves (``record_turn`` calls) before the session is forgotten."""
        return self._max_turns

    def __repr__(self) -> str:
        return (
            f"SessionAffinity(max_sessions={self._max_sessions!r}, ttl_s={self._ttl_s!r}, "
            f"max_turns={self._max_turns!r}, clock={self._clock!r})"
        )

    # -- public operations: validate, read the clock, then lock -------------------------------------------------

    def get(self, session_id: str) -> str | None:
        """Return the pool id bound to ``session_id``, or ``None`` if it is unknown, expired or exhausted.

        A pure lookup: it does not count a turn and does not refresh the binding's TTL or recency.
        """
        session_id = _check_id(session_id, "session_id")
        now_s = self._read_clock()
        with self._lock:
            self._purge_expired(now_s)
            binding = self._bindings.get(session_id)
            return None if binding is None else binding.pool_id

    def bind(self, session_id: str, pool_id: str) -> str | None:
        """Bind ``session_id`` to ``pool_id`` with a fresh TTL and no turns used; return the evicted session id.

        Rebinding a known session replaces its pool and resets its turn count. Binding a new session while
        ``max_sessions`` live bindings exist evicts the least recently active session, whose id is returned
        (``None`` when nothing was evicted).
        """
        session_id = _check_id(session_id, "session_id")
        pool_id = _check_id(pool_id, "pool_id")
        now_s = self._read_clock()
        evicted_session_id: str | None = None
        with self._lock:
            now_s = self._purge_expired(now_s)
            bindings = self._bindings
            binding = bindings.get(session_id)
            if binding is None:
                if len(bindings) >= self._max_sessions:
                    evicted_session_id, evicted = bindings.popitem(last=False)
                    self._unindex(evicted_session_id, evicted.pool_id)
                bindings[session_id] = _Binding(pool_id, now_s + self._ttl_s)
            else:
                if binding.pool_id != pool_id:
                    self._unindex(session_id, binding.pool_id)
                    binding.pool_id = pool_id
                binding.turns_used = 0
                binding.expires_at_s = now_s + self._ttl_s
                bindings.move_to_end(session_id)
            self._sessions_by_pool.setdefault(pool_id, {})[session_id] = None
        return evicted_session_id

    def record_turn(self, session_id: str) -> bool:
        """Count one turn served on the session's pool and refresh its TTL; return whether the session was live.

        The turn that brings the count to ``max_turns`` forgets the session. Returns ``False`` (and changes nothing)
        when the session is unknown, expired or already forgotten, e.g. after a concurrent ``forget_pool``.
        """
        session_id = _check_id(session_id, "session_id")
        now_s = self._read_clock()
        with self._lock:
            now_s = self._purge_expired(now_s)
            binding = self._bindings.get(session_id)
            if binding is None:
                return False
            binding.turns_used += 1
            if binding.turns_used >= self._max_turns:
                del self._bindings[session_id]
                self._unindex(session_id, binding.pool_id)
            else:
                binding.expires_at_s = now_s + self._ttl_s
                self._bindings.move_to_end(session_id)
            return True

    def forget(self, session_id: str) -> bool:
        """Drop the session's binding; return whether a live binding was dropped."""
        session_id = _check_id(session_id, "session_id")
        now_s = self._read_clock()
        with self._lock:
            self._purge_expired(now_s)
            binding = self._bindings.pop(session_id, None)
            if binding is None:
                return False
            self._unindex(session_id, binding.pool_id)
            return True

    def forget_pool(self, pool_id: str) -> int:
        """Drop every session bound to ``pool_id`` (the pool died); return how many live bindings were dropped."""
        pool_id = _check_id(pool_id, "pool_id")
        now_s = self._read_clock()
        with self._lock:
            self._purge_expired(now_s)
            session_ids = self._sessions_by_pool.pop(pool_id, None)
            if session_ids is None:
                return 0
            bindings = self._bindings
            for session_id in session_ids:
                del bindings[session_id]
            return len(session_ids)

    def __len__(self) -> int:
        """The number of live (unexpired, unexhausted) bindings."""
        now_s = self._read_clock()
        with self._lock:
            self._purge_expired(now_s)
            return len(self._bindings)

    # -- internals ------------------------------------------------------------------------------------------------

    def _read_clock(self) -> float:
        # Called before taking the lock: a user clock may be slow, block, or take locks of its own.
        now_s = self._clock()
        if not isinstance(now_s, (int, float)) or isinstance(now_s, bool):
            raise TypeError(f"clock() must return seconds as a float, got {now_s!r} ({type(now_s).__name__})")
        if not math.isfinite(now_s):
            raise ValueError(f"clock() must return a finite number of seconds, got {now_s!r}")
        return float(now_s)

    def _purge_expired(self, now_s: float) -> float:
        """Clamp ``now_s`` to the latest reading, drop expired bindings from the front, return the clamped time.

        Lock held. Because readings never go backwards, expiry times are non-decreasing front to back.
        """
        if now_s < self._latest_now_s:
            now_s = self._latest_now_s
        else:
            self._latest_now_s = now_s
        bindings = self._bindings
        while bindings:
            session_id, binding = next(iter(bindings.items()))
            if binding.expires_at_s > now_s:
                break
            del bindings[session_id]
            self._unindex(session_id, binding.pool_id)
        return now_s

    def _unindex(self, session_id: str, pool_id: str) -> None:
        """Remove ``session_id`` from the pool index (lock held)."""
        session_ids = self._sessions_by_pool[pool_id]
        del session_ids[session_id]
        if not session_ids:
            del self._sessions_by_pool[pool_id]

    def _check_invariants(self) -> None:
        """Raise ``AssertionError`` if an internal invariant is broken (for tests)."""
        with self._lock:
            bindings = self._bindings
            if len(bindings) > self._max_sessions:
                raise AssertionError(f"{len(bindings)} bindings exceed max_sessions={self._max_sessions}")
            previous_expiry_s = -math.inf
            expected_index: dict[str, set[str]] = {}
            for session_id, binding in bindings.items():
                if binding.expires_at_s < previous_expiry_s:
                    raise AssertionError(f"expiry order broken at session {session_id!r}")
                previous_expiry_s = binding.expires_at_s
                if not 0 <= binding.turns_used < self._max_turns:
                    raise AssertionError(f"session {session_id!r} has turns_used={binding.turns_used}")
                expected_index.setdefault(binding.pool_id, set()).add(session_id)
            actual_index = {pool_id: set(ids) for pool_id, ids in self._sessions_by_pool.items()}
            if actual_index != expected_index:
                raise AssertionError(f"pool index {actual_index!r} != bindings {expected_index!r}")
