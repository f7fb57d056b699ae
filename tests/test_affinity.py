"""Tests for orchestrator_core.affinity.SessionAffinity: TTL, turn limit, LRU bound, pool loss, threads."""

from __future__ import annotations

import random
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from orchestrator_core.affinity import SessionAffinity

TTL_S = 600.0


class FakeClock:
    """A settable clock in seconds."""

    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s
        self.calls = 0

    def __call__(self) -> float:
        self.calls += 1
        return self.now_s

    def advance(self, seconds: float) -> None:
        self.now_s += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_defaults_match_the_documented_values() -> None:
    affinity = SessionAffinity()
    assert (affinity.ttl_s, affinity.max_turns, affinity.max_sessions) == (600.0, 8, 10_000)
    assert "ttl_s=600.0" in repr(affinity)


def test_bind_then_get_and_unknown_sessions(clock: FakeClock) -> None:
    affinity = SessionAffinity(clock=clock)
    assert affinity.get("s1") is None
    assert affinity.bind("s1", "pool-a") is None
    assert affinity.bind("s2", "pool-b") is None
    assert (affinity.get("s1"), affinity.get("s2"), affinity.get("s3"), len(affinity)) == ("pool-a", "pool-b", None, 2)


def test_rebinding_moves_the_session_to_the_new_pool(clock: FakeClock) -> None:
    affinity = SessionAffinity(clock=clock)
    affinity.bind("s1", "pool-a")
    affinity.bind("s1", "pool-b")
    assert (affinity.get("s1"), len(affinity)) == ("pool-b", 1)
    assert affinity.forget_pool("pool-a") == 0
    assert affinity.get("s1") == "pool-b"
    affinity._check_invariants()


# -- TTL -------------------------------------------------------------------------------------------------------------


def test_a_binding_expires_exactly_ttl_seconds_after_its_last_activity(clock: FakeClock) -> None:
    affinity = SessionAffinity(ttl_s=TTL_S, clock=clock)
    affinity.bind("s1", "pool-a")
    clock.advance(TTL_S - 0.001)
    assert affinity.get("s1") == "pool-a"
    clock.advance(0.001)
    assert affinity.get("s1") is None
    assert len(affinity) == 0
    assert affinity.record_turn("s1") is False
    assert affinity.forget("s1") is False


def test_record_turn_refreshes_the_ttl_and_get_does_not(clock: FakeClock) -> None:
    affinity = SessionAffinity(ttl_s=TTL_S, clock=clock)
    affinity.bind("turns", "pool-a")
    affinity.bind("lookups", "pool-a")
    clock.advance(TTL_S / 2)
    assert affinity.record_turn("turns") is True
    assert affinity.get("lookups") == "pool-a"
    clock.advance(TTL_S / 2)
    assert (affinity.get("turns"), affinity.get("lookups")) == ("pool-a", None)


def test_rebinding_refreshes_the_ttl(clock: FakeClock) -> None:
    affinity = SessionAffinity(ttl_s=10.0, clock=clock)
    affinity.bind("s1", "pool-a")
    clock.advance(9.0)
    affinity.bind("s1", "pool-a")
    clock.advance(9.0)
    assert affinity.get("s1") == "pool-a"


def test_expired_sessions_do_not_count_against_the_bound(clock: FakeClock) -> None:
    affinity = SessionAffinity(max_sessions=2, ttl_s=10.0, clock=clock)
    affinity.bind("old1", "p")
    affinity.bind("old2", "p")
    clock.advance(10.0)
    assert affinity.bind("new", "p") is None  # the expired ones were purged, nothing live was evicted
    assert len(affinity) == 1


# -- turn limit ----------------------------------------------------------------------------------------------------


def test_a_session_is_forgotten_after_max_turns(clock: FakeClock) -> None:
    affinity = SessionAffinity(max_turns=3, clock=clock)
    affinity.bind("s1", "pool-a")
    assert [affinity.record_turn("s1") for _ in range(2)] == [True, True]
    assert affinity.get("s1") == "pool-a"
    assert affinity.record_turn("s1") is True  # the third turn is served, then the session is exhausted
    assert (affinity.get("s1"), len(affinity), affinity.record_turn("s1")) == (None, 0, False)
    affinity._check_invariants()


def test_default_turn_limit_is_eight() -> None:
    affinity = SessionAffinity()
    affinity.bind("s1", "p")
    for _ in range(7):
        affinity.record_turn("s1")
    assert affinity.get("s1") == "p"
    affinity.record_turn("s1")
    assert affinity.get("s1") is None


def test_rebinding_resets_the_turn_count(clock: FakeClock) -> None:
    affinity = SessionAffinity(max_turns=2, clock=clock)
    affinity.bind("s1", "pool-a")
    affinity.record_turn("s1")
    affinity.bind("s1", "pool-b")
    affinity.record_turn("s1")
    assert affinity.get("s1") == "pool-b"


def test_record_turn_of_an_unknown_session_is_false_and_binds_nothing(clock: FakeClock) -> None:
    affinity = SessionAffinity(clock=clock)
    assert affinity.record_turn("ghost") is False
    assert (affinity.get("ghost"), len(affinity)) == (None, 0)


# -- LRU bound ------------------------------------------------------------------------------------------------------


def test_binding_a_new_session_when_full_evicts_the_least_recently_active(clock: FakeClock) -> None:
    affinity = SessionAffinity(max_sessions=3, clock=clock)
    for session_id in ("a", "b", "c"):
        affinity.bind(session_id, "p")
        clock.advance(1.0)
    affinity.record_turn("a")  # "b" is now the least recently active
    assert affinity.get("b") == "p"  # a lookup is not activity
    assert affinity.bind("d", "p") == "b"
    assert [affinity.get(s) for s in ("a", "b", "c", "d")] == ["p", None, "p", "p"]
    assert affinity.bind("e", "q") == "c"
    assert len(affinity) == 3
    affinity._check_invariants()


def test_rebinding_a_known_session_when_full_evicts_nothing(clock: FakeClock) -> None:
    affinity = SessionAffinity(max_sessions=2, clock=clock)
    affinity.bind("a", "p")
    affinity.bind("b", "p")
    assert affinity.bind("a", "q") is None
    assert (affinity.get("a"), affinity.get("b")) == ("q", "p")


# -- forgetting -----------------------------------------------------------------------------------------------------


def test_forget_drops_one_session(clock: FakeClock) -> None:
    affinity = SessionAffinity(clock=clock)
    affinity.bind("a", "p")
    affinity.bind("b", "p")
    assert affinity.forget("a") is True
    assert affinity.forget("a") is False
    assert (affinity.get("a"), affinity.get("b"), len(affinity)) == (None, "p", 1)


def test_forget_pool_drops_exactly_that_pools_sessions(clock: FakeClock) -> None:
    affinity = SessionAffinity(clock=clock)
    for i in range(10):
        affinity.bind(f"s{i}", "dead" if i % 3 == 0 else "alive")
    assert affinity.forget_pool("dead") == 4
    assert affinity.forget_pool("dead") == 0
    assert affinity.forget_pool("never-seen") == 0
    assert [affinity.get(f"s{i}") for i in range(10)] == [None if i % 3 == 0 else "alive" for i in range(10)]
    assert len(affinity) == 6
    affinity._check_invariants()


def test_forget_pool_does_not_count_expired_sessions(clock: FakeClock) -> None:
    affinity = SessionAffinity(ttl_s=10.0, clock=clock)
    affinity.bind("old", "dead")
    clock.advance(5.0)
    affinity.bind("new", "dead")
    clock.advance(5.0)
    assert affinity.forget_pool("dead") == 1


# -- the clock ---------------------------------------------------------------------------------------------------


def test_the_clock_is_never_called_while_the_lock_is_held() -> None:
    holder: list[SessionAffinity] = []
    lock_states: list[bool] = []

    def clock() -> float:
        if holder:
            lock_states.append(holder[0]._lock.locked())
        return 5.0

    affinity = SessionAffinity(clock=clock, max_sessions=1)
    holder.append(affinity)
    affinity.bind("a", "p")
    affinity.bind("b", "p")
    affinity.get("b")
    affinity.record_turn("b")
    affinity.forget("b")
    affinity.forget_pool("p")
    len(affinity)
    assert lock_states == [False] * 7


def test_a_clock_that_steps_backwards_keeps_every_guarantee(clock: FakeClock) -> None:
    affinity = SessionAffinity(ttl_s=10.0, max_sessions=3, clock=clock)
    affinity.bind("a", "p")
    clock.advance(-100.0)  # readings are clamped to the latest one seen
    affinity.bind("b", "p")
    affinity._check_invariants()
    clock.advance(100.0 + 10.0)
    assert (affinity.get("a"), affinity.get("b"), len(affinity)) == (None, None, 0)


@pytest.mark.parametrize(
    ("reading", "error"),
    [(float("nan"), ValueError), (float("inf"), ValueError), ("12", TypeError), (None, TypeError), (True, TypeError)],
)
def test_a_bad_clock_reading_raises_and_changes_nothing(reading: object, error: type[Exception]) -> None:
    readings = [1.0]
    affinity = SessionAffinity(clock=lambda: readings[0])
    affinity.bind("a", "p")
    readings[0] = reading  # type: ignore[call-overload]
    with pytest.raises(error, match=r"clock\(\)"):
        affinity.bind("b", "p")
    readings[0] = 1.0
    assert (affinity.get("a"), affinity.get("b")) == ("p", None)


def test_integer_clock_readings_are_accepted() -> None:
    affinity = SessionAffinity(ttl_s=5, clock=lambda: 10)
    affinity.bind("a", "p")
    assert affinity.get("a") == "p"


# -- validation -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_sessions": 0}, ValueError, "max_sessions must be >= 1, got 0"),
        ({"max_sessions": -3}, ValueError, "max_sessions must be >= 1, got -3"),
        ({"max_sessions": True}, TypeError, "max_sessions must be an int, got True"),
        ({"max_sessions": 2.0}, TypeError, "max_sessions must be an int, got 2.0"),
        ({"max_turns": 0}, ValueError, "max_turns must be >= 1, got 0"),
        ({"max_turns": "8"}, TypeError, "max_turns must be an int, got '8'"),
        ({"ttl_s": 0}, ValueError, "ttl_s must be a finite number of seconds > 0, got 0"),
        ({"ttl_s": -1.0}, ValueError, "ttl_s must be .*, got -1.0"),
        ({"ttl_s": float("nan")}, ValueError, "ttl_s must be .*, got nan"),
        ({"ttl_s": float("inf")}, ValueError, "ttl_s must be .*, got inf"),
        ({"ttl_s": False}, TypeError, "ttl_s must be .*, got False"),
        ({"clock": 3.0}, TypeError, "clock must be a callable"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        SessionAffinity(**kwargs)  # type: ignore[arg-type]


def test_constructor_arguments_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        SessionAffinity(10)  # type: ignore[call-arg]


@pytest.mark.parametrize("method", ["get", "record_turn", "forget", "forget_pool"])
@pytest.mark.parametrize(("bad_id", "error"), [("", ValueError), (" ", ValueError), (None, TypeError), (1, TypeError)])
def test_bad_ids_raise_naming_the_parameter(method: str, bad_id: object, error: type[Exception]) -> None:
    affinity = SessionAffinity()
    param = "pool_id" if method == "forget_pool" else "session_id"
    with pytest.raises(error, match=f"{param} must be .*, got {bad_id!r}"):
        getattr(affinity, method)(bad_id)


@pytest.mark.parametrize(("session_id", "pool_id", "param"), [("", "p", "session_id"), ("s", "", "pool_id")])
def test_bind_validates_both_ids(session_id: str, pool_id: str, param: str) -> None:
    affinity = SessionAffinity()
    with pytest.raises(ValueError, match=param):
        affinity.bind(session_id, pool_id)
    assert len(affinity) == 0


def test_str_subclass_ids_are_stored_as_exact_str() -> None:
    class Sneaky(str):
        def __hash__(self) -> int:
            raise AssertionError("user __hash__ must not run inside the map")

        def __eq__(self, other: object) -> bool:
            raise AssertionError("user __eq__ must not run inside the map")

    affinity = SessionAffinity()
    affinity.bind(Sneaky("s1"), Sneaky("p"))
    pool_id = affinity.get(Sneaky("s1"))
    assert type(pool_id) is str
    assert str.__eq__(pool_id, "p")
    assert affinity.forget_pool(Sneaky("p")) == 1


# -- hypothesis: the map against a reference model ---------------------------------------------------------------


@dataclass
class _ModelBinding:
    pool_id: str
    last_activity_s: float
    turns_used: int


SESSION_IDS = st.sampled_from(["s0", "s1", "s2", "s3", "s4", "s5"])
POOL_IDS = st.sampled_from(["p0", "p1", "p2"])


class AffinityMachine(RuleBasedStateMachine):
    """Runs the same operations on SessionAffinity and on a naive model and compares every answer."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(0.0)
        self.max_sessions = 3
        self.ttl_s = 10.0
        self.max_turns = 3
        self.affinity = SessionAffinity(
            max_sessions=self.max_sessions, ttl_s=self.ttl_s, max_turns=self.max_turns, clock=self.clock
        )
        self.model: OrderedDict[str, _ModelBinding] = OrderedDict()

    def _live_model(self) -> OrderedDict[str, _ModelBinding]:
        now_s = self.clock.now_s
        for session_id in [s for s, b in self.model.items() if b.last_activity_s + self.ttl_s <= now_s]:
            del self.model[session_id]
        return self.model

    @rule(seconds=st.sampled_from([0.0, 0.5, 3.0, 9.999, 10.0, 25.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule(session_id=SESSION_IDS)
    def get(self, session_id: str) -> None:
        binding = self._live_model().get(session_id)
        assert self.affinity.get(session_id) == (None if binding is None else binding.pool_id)

    @rule(session_id=SESSION_IDS, pool_id=POOL_IDS)
    def bind(self, session_id: str, pool_id: str) -> None:
        model = self._live_model()
        expected_evicted = None
        if session_id not in model and len(model) >= self.max_sessions:
            expected_evicted = next(iter(model))  # the model is kept in activity order, oldest first
            del model[expected_evicted]
        model[session_id] = _ModelBinding(pool_id, self.clock.now_s, 0)
        model.move_to_end(session_id)
        assert self.affinity.bind(session_id, pool_id) == expected_evicted

    @rule(session_id=SESSION_IDS)
    def record_turn(self, session_id: str) -> None:
        model = self._live_model()
        binding = model.get(session_id)
        assert self.affinity.record_turn(session_id) is (binding is not None)
        if binding is not None:
            binding.turns_used += 1
            binding.last_activity_s = self.clock.now_s
            model.move_to_end(session_id)
            if binding.turns_used >= self.max_turns:
                del model[session_id]

    @rule(session_id=SESSION_IDS)
    def forget(self, session_id: str) -> None:
        assert self.affinity.forget(session_id) is (self._live_model().pop(session_id, None) is not None)

    @rule(pool_id=POOL_IDS)
    def forget_pool(self, pool_id: str) -> None:
        model = self._live_model()
        doomed = [s for s, b in model.items() if b.pool_id == pool_id]
        for session_id in doomed:
            del model[session_id]
        assert self.affinity.forget_pool(pool_id) == len(doomed)

    @invariant()
    def same_size_within_bound(self) -> None:
        size = len(self.affinity)
        assert size == len(self._live_model())
        assert size <= self.max_sessions
        self.affinity._check_invariants()


AffinityMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
TestAffinityAgainstModel = AffinityMachine.TestCase


@settings(max_examples=200, deadline=None)
@given(
    ttl_s=st.floats(min_value=0.001, max_value=1e6, allow_nan=False),
    bound_at_s=st.floats(min_value=-1e6, max_value=1e6, allow_nan=False),
    elapsed_fraction=st.floats(min_value=1.0, max_value=10.0),
)
def test_property_a_ttl_expired_session_is_never_returned(
    ttl_s: float, bound_at_s: float, elapsed_fraction: float
) -> None:
    clock = FakeClock(bound_at_s)
    affinity = SessionAffinity(ttl_s=ttl_s, clock=clock)
    affinity.bind("s", "p")
    clock.now_s = bound_at_s + ttl_s * elapsed_fraction
    if clock.now_s - bound_at_s >= ttl_s:  # float rounding can shrink the step; only assert on a true expiry
        assert affinity.get("s") is None
        assert affinity.record_turn("s") is False
        assert len(affinity) == 0


@settings(max_examples=200, deadline=None)
@given(
    max_sessions=st.integers(1, 8),
    session_ids=st.lists(st.text(alphabet="abcdefghij", min_size=1, max_size=2), max_size=60),
)
def test_property_the_map_never_exceeds_its_bound(max_sessions: int, session_ids: list[str]) -> None:
    affinity = SessionAffinity(max_sessions=max_sessions, clock=FakeClock())
    live: OrderedDict[str, None] = OrderedDict()
    for session_id in session_ids:
        evicted = affinity.bind(session_id, "p")
        if session_id not in live and len(live) == max_sessions:
            assert evicted == next(iter(live))
            del live[evicted]
        else:
            assert evicted is None
        live[session_id] = None
        live.move_to_end(session_id)
        assert len(affinity) == len(live) <= max_sessions
    assert all(affinity.get(session_id) == "p" for session_id in live)


# -- threads ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def fast_switching() -> Iterator[None]:
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(previous)


def _run_threads(target: Callable[[int], None], count: int) -> list[Exception]:
    errors: list[Exception] = []
    barrier = threading.Barrier(count)

    def runner(index: int) -> None:
        try:
            barrier.wait()
            target(index)
        except Exception as error:  # noqa: BLE001 - any failure in a worker is returned to the test
            errors.append(error)

    threads = [threading.Thread(target=runner, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.mark.usefixtures("fast_switching")
def test_threads_binding_distinct_sessions_lose_nothing() -> None:
    threads, per_thread = 8, 300
    affinity = SessionAffinity(max_sessions=threads * per_thread)

    def work(index: int) -> None:
        own_pool = f"pool-{index}"
        for i in range(per_thread):
            affinity.bind(f"t{index}-s{i}", own_pool)
        for i in range(per_thread):
            assert affinity.get(f"t{index}-s{i}") == own_pool
        for i in range(0, per_thread, 2):
            assert affinity.forget(f"t{index}-s{i}") is True
        for i in range(1, per_thread, 2):
            assert affinity.record_turn(f"t{index}-s{i}") is True

    assert _run_threads(work, threads) == []
    assert len(affinity) == threads * per_thread // 2
    for index in range(threads):
        assert [affinity.get(f"t{index}-s{i}") for i in range(per_thread)] == [
            None if i % 2 == 0 else f"pool-{index}" for i in range(per_thread)
        ]
    affinity._check_invariants()


@pytest.mark.usefixtures("fast_switching")
def test_threads_churning_a_small_map_keep_the_invariants() -> None:
    max_sessions = 16
    ticks = iter(range(10**9))
    tick_lock = threading.Lock()
    frozen_at_s: list[float] = []

    def clock() -> float:
        # Advances on every call while the threads run, so sessions also expire (ttl 5 s = 500 calls); frozen
        # afterwards so the final checks see one consistent state.
        with tick_lock:
            return frozen_at_s[0] if frozen_at_s else next(ticks) * 0.01

    affinity = SessionAffinity(max_sessions=max_sessions, ttl_s=5.0, max_turns=4, clock=clock)
    pools = [f"pool-{i}" for i in range(4)]

    def pool_of(session_id: str) -> str:
        # Every thread binds a given session to the same pool, so any answer can be checked.
        return pools[int(session_id[1:]) % len(pools)]

    def work(index: int) -> None:
        rng = random.Random(index)
        for _ in range(3000):
            session_id = f"s{rng.randrange(64)}"
            operation = rng.random()
            if operation < 0.4:
                affinity.bind(session_id, pool_of(session_id))
            elif operation < 0.7:
                assert affinity.get(session_id) in (None, pool_of(session_id))
            elif operation < 0.85:
                affinity.record_turn(session_id)
            elif operation < 0.97:
                affinity.forget(session_id)
            else:
                dead_pool = rng.choice(pools)
                affinity.forget_pool(dead_pool)
            assert len(affinity) <= max_sessions

    assert _run_threads(work, 8) == []
    affinity._check_invariants()
    frozen_at_s.append(clock())
    size = len(affinity)
    assert 0 < size <= max_sessions
    survivors_total = 0
    for pool_id in pools:
        survivors = [f"s{i}" for i in range(64) if affinity.get(f"s{i}") == pool_id]
        assert all(pool_of(session_id) == pool_id for session_id in survivors)
        assert affinity.forget_pool(pool_id) == len(survivors)
        survivors_total += len(survivors)
    assert survivors_total == size
    assert len(affinity) == 0
