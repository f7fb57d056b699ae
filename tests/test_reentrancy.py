"""Re-entrancy: user code that calls back into the same queue never deadlocks or corrupts it.

User code reaches the engine through a task's payload (``__del__``, ``__eq__``,
``__hash__``), a ``str`` subclass passed as a job id, the ``clock=`` callable and the
cyclic GC. The engines promise that no user code runs while their lock is held, so a
callback may use the queue freely. Every case that could deadlock runs in a thread with a
timeout (or, for the GC sweep, a subprocess with a watchdog): a deadlock fails the test
instead of hanging the suite.
"""

from __future__ import annotations

import sys
import threading
import weakref
from collections import Counter
from collections.abc import Callable
from types import ModuleType
from typing import Any, ClassVar

import pytest

from .scripts import engine_arg, known_bug, run_script

DEADLOCK_TIMEOUT_S = 60.0  # a hang check: a healthy run takes milliseconds


def run_guarded(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging) if it does not finish."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(DEADLOCK_TIMEOUT_S)
    assert not t.is_alive(), f"deadlock: the call did not return within {DEADLOCK_TIMEOUT_S} s"
    if errors:
        raise errors[0]
    return result[0]


def assert_consistent(q: Any) -> None:
    m = q.metrics()
    assert m.accepted == m.dequeued + m.cancelled + m.evicted + m.drained + m.expired + m.depth
    assert len(q) == m.depth == len(q.snapshot()) == m.depth_interactive + m.depth_batch
    assert m.depth <= q.capacity()
    assert q.snapshot() == q.snapshot("interactive") + q.snapshot("batch")


class CallsBack:
    """A payload whose ``__del__`` uses ``target`` (a queue) every way it can."""

    def __init__(self, impl: ModuleType, target: Any, log: list[Any], tag: str) -> None:
        self.impl = impl
        self.target = target
        self.log = log
        self.tag = tag

    def __del__(self) -> None:
        q = self.target
        job_id = f"from-del-{self.tag}"
        res = q.enqueue(self.impl.Task("m", 1, job_id=job_id))
        self.log.append(
            (
                self.tag,
                res.accepted,
                job_id in q.snapshot(),
                q.position(job_id) is not None,
                q.touch(job_id),
                q.cancel("not-there"),
                q.metrics().depth == len(q),
            )
        )


EXIT_PATHS = ["dequeue", "dequeue-blocking", "dequeue-many", "cancel", "evict", "drain", "close-drain", "queue-freed"]


@pytest.mark.parametrize("exit_path", EXIT_PATHS)
def test_payload_del_calls_back_into_the_queue(impl: ModuleType, exit_path: str) -> None:
    """When a job leaves, its payload's ``__del__`` may enqueue into and query the same queue.

    With ``cancel`` and a queue being freed the ``__del__`` runs inside the engine's call
    (the engine drops the last reference); for a freed queue it calls into a second queue.
    """
    q = impl.Queue(3, "drop-lru", id_prefix="q")
    other = impl.Queue(3, "drop-lru", id_prefix="o")
    log: list[Any] = []
    target = other if exit_path == "queue-freed" else q
    res = q.enqueue(impl.Task("m", 1, priority="batch", payload=CallsBack(impl, target, log, "x")))
    job_id = res.job_id
    del res

    def leave() -> None:
        nonlocal q
        if exit_path == "dequeue":
            q.dequeue()
        elif exit_path == "dequeue-blocking":
            assert q.dequeue(timeout=None).job_id == job_id
        elif exit_path == "dequeue-many":
            assert len(q.dequeue_many(5, timeout=1.0)) == 1
        elif exit_path == "cancel":
            assert q.cancel(job_id)
        elif exit_path == "evict":
            q.enqueue(impl.Task("m", 1, priority="batch"))
            q.enqueue(impl.Task("m", 1, priority="batch"))
            assert q.enqueue(impl.Task("m", 1, priority="batch")).evicted.job_id == job_id
        elif exit_path == "drain":
            assert [j.job_id for j in q.drain()] == [job_id]
        elif exit_path == "close-drain":
            q.close()
            assert len(q.drain()) == 1
        elif exit_path == "queue-freed":
            del q

    run_guarded(leave)
    # The __del__ ran once, and saw a consistent queue: its enqueue was admitted (or refused
    # as closed), then visible to snapshot, position and touch.
    assert len(log) == 1
    _, accepted, in_snapshot, has_position, touched, cancelled_missing, depth_ok = log[0]
    if exit_path == "close-drain":
        assert (accepted, in_snapshot, has_position, touched) == (False, False, False, False)
    else:
        assert (accepted, in_snapshot, has_position, touched) == (True, True, True, True)
    assert cancelled_missing is False and depth_ok is True
    assert_consistent(target)


def test_del_during_cancel_can_cancel_and_dequeue_the_same_queue(impl: ModuleType) -> None:
    """A ``__del__`` that runs inside ``cancel`` cancels and dequeues other jobs of the queue."""
    q = impl.Queue(10, id_prefix="q")
    seen: list[Any] = []

    class Greedy:
        def __del__(self) -> None:
            seen.append((q.cancel("b"), q.dequeue().job_id, q.dequeue_many(10), q.drain()))

    for job_id in ("a", "b", "c"):
        q.enqueue(impl.Task("m", 1, job_id=job_id, payload=Greedy() if job_id == "a" else None))
    assert run_guarded(lambda: q.cancel("a")) is True
    assert seen == [(True, "c", [], [])]
    m = q.metrics()
    assert (m.cancelled, m.dequeued, m.depth) == (2, 1, 0)
    assert_consistent(q)


def test_del_inside_cancel_closes_a_queue_with_a_blocked_consumer(impl: ModuleType) -> None:
    """A ``__del__`` run inside ``r.cancel`` closes ``q``, waking the consumer blocked on ``q``."""
    q = impl.Queue(4)
    r = impl.Queue(4)

    class Closer:
        def __del__(self) -> None:
            q.close()

    got: list[Any] = []
    consumer = threading.Thread(target=lambda: got.append(q.dequeue(timeout=None)), daemon=True)
    consumer.start()
    r.enqueue(impl.Task("m", 1, job_id="doomed", payload=Closer()))
    assert run_guarded(lambda: r.cancel("doomed")) is True
    consumer.join(DEADLOCK_TIMEOUT_S)
    assert not consumer.is_alive(), "the consumer was not woken by close()"
    assert got == [None] and q.closed and not r.closed


# ---------------------------------------------------------------------------------------
# The clock


def test_clock_that_calls_back_into_the_queue(impl: ModuleType) -> None:
    """``clock=`` is read outside the lock: it may query and change the queue it times."""
    holder: dict[str, Any] = {}
    inside = [False]
    reentered = Counter[str]()
    now = [100.0]

    def clock() -> float:
        q = holder.get("q")
        if q is not None and not inside[0]:
            inside[0] = True
            try:
                m = q.metrics()  # calls the clock again (not re-entered: guarded)
                assert m.depth == len(q) == len(q.snapshot())
                q.cancel("not-there")
                q.position("not-there")
                reentered["calls"] += 1
            finally:
                inside[0] = False
        now[0] += 0.001
        return now[0]

    q = impl.Queue(3, "drop-lru", clock=clock, id_prefix="q")
    holder["q"] = q

    def workload() -> None:
        for i in range(6):
            q.enqueue(impl.Task("m", 1, priority="batch" if i % 2 else "interactive"))
        q.dequeue()
        q.dequeue(timeout=0.5)
        q.dequeue_many(2, timeout=0.5)
        q.enqueue(impl.Task("m", 1, job_id="x"))
        q.cancel("x")
        q.enqueue(impl.Task("m", 1))
        q.drain()
        q.metrics()
        q.dequeue(timeout=0.01)  # empty: waits, re-reading the clock

    run_guarded(workload)
    assert reentered["calls"] >= 15
    assert_consistent(q)


def test_clock_that_enqueues_feeds_a_blocked_dequeue(impl: ModuleType) -> None:
    """The clock read at the start of a blocking dequeue admits a job; the dequeue returns it."""
    holder: dict[str, Any] = {}
    fed = [False]

    def clock() -> float:
        q = holder.get("q")
        if q is not None and not fed[0]:
            fed[0] = True
            assert q.enqueue(impl.Task("m", 1, job_id="from-clock")).accepted
        return 5.0

    q = impl.Queue(3, clock=clock)
    holder["q"] = q
    job = run_guarded(lambda: q.dequeue(timeout=None))
    assert job.job_id == "from-clock"
    assert_consistent(q)


def test_clock_that_dequeues_during_enqueue(impl: ModuleType) -> None:
    holder: dict[str, Any] = {}
    taken: list[Any] = []

    def clock() -> float:
        q = holder.pop("q", None)  # once: the dequeue below reads the clock too
        if q is not None:
            taken.append(q.dequeue())
        return 5.0

    q = impl.Queue(1, "reject-new", clock=clock, id_prefix="q")
    assert q.enqueue(impl.Task("m", 1, job_id="first")).accepted
    holder["q"] = q
    # Full when enqueue starts; the clock empties it before the admission decision.
    res = run_guarded(lambda: q.enqueue(impl.Task("m", 1, job_id="second")))
    assert [j.job_id for j in taken] == ["first"]
    assert res.accepted and res.position == 0
    assert q.snapshot() == ["second"]
    assert_consistent(q)


def test_clock_raising_after_a_wake_up_passes_it_on(impl: ModuleType, request: pytest.FixtureRequest) -> None:
    """A consumer woken for a job, whose next clock read raises, must not swallow the wake-up."""
    known_bug(request, impl, "clock-raise-loses-wake-up")
    main = threading.current_thread()
    armed = [False]

    def clock() -> float:
        if armed[0] and threading.current_thread() is not main:
            armed[0] = False  # once: the first consumer to read the clock after the enqueue
            raise RuntimeError("the clock broke")
        return 5.0

    q = impl.Queue(4, clock=clock)
    outcomes: list[Any] = []

    def consume() -> None:
        try:
            job = q.dequeue(timeout=None)
            outcomes.append(None if job is None else job.job_id)
        except RuntimeError:
            outcomes.append("raised")

    consumers = [threading.Thread(target=consume, daemon=True) for _ in range(2)]
    for t in consumers:
        t.start()
    threading.Event().wait(0.2)  # both blocked (if not, the checks below still hold)
    armed[0] = True
    assert q.enqueue(impl.Task("m", 1, job_id="x")).accepted
    # The woken consumer raised; the other one must now get the job (a hang check, not a speed one).
    pause = threading.Event()
    for _ in range(100):
        if len(outcomes) == 2:
            break
        pause.wait(0.05)
    before_close = sorted(outcomes, key=str)
    q.close()  # releases a consumer left blocked (which would then take "x" as it leaves)
    for t in consumers:
        t.join(DEADLOCK_TIMEOUT_S)
    assert before_close == ["raised", "x"], outcomes


# ---------------------------------------------------------------------------------------
# __eq__ / __hash__ of user objects are never called


class Hostile:
    """A payload whose comparison and hashing must never be used by the engine."""

    calls: ClassVar[Counter[str]] = Counter()

    def __init__(self, q: Any) -> None:
        self.q = q

    def __eq__(self, other: object) -> bool:
        Hostile.calls["eq"] += 1
        self.q.metrics()
        raise AssertionError("the engine compared a payload")

    def __hash__(self) -> int:
        Hostile.calls["hash"] += 1
        self.q.metrics()
        raise AssertionError("the engine hashed a payload")


def test_payload_eq_and_hash_are_never_called(impl: ModuleType) -> None:
    Hostile.calls.clear()
    q = impl.Queue(4, "drop-lru", id_prefix="q")

    def workload() -> None:
        ids = [q.enqueue(impl.Task("m", 1, payload=Hostile(q), priority="batch")).job_id for _ in range(6)]
        q.touch(ids[-1])
        q.position(ids[-1])
        q.cancel(ids[-2])
        _ = ids[-1] in q
        q.snapshot()
        q.lru_order("batch")
        q.dequeue()
        q.dequeue_many(1)
        q.metrics()
        q.drain()

    run_guarded(workload)
    assert Hostile.calls == Counter()
    assert_consistent(q)


class EvilId(str):
    """A job id whose hashing and comparison call back into a queue and then fail loudly."""

    calls: ClassVar[Counter[str]] = Counter()
    queue: ClassVar[Any] = None

    def __hash__(self) -> int:
        EvilId.calls["hash"] += 1
        if EvilId.queue is not None:
            EvilId.queue.metrics()
        raise AssertionError("the engine hashed a str subclass")

    def __eq__(self, other: object) -> bool:
        EvilId.calls["eq"] += 1
        if EvilId.queue is not None:
            EvilId.queue.enqueue  # noqa: B018 - touching the queue from inside is the point
        raise AssertionError("the engine compared a str subclass")

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)


def test_str_subclass_job_id_never_has_its_methods_called(impl: ModuleType) -> None:
    EvilId.calls.clear()
    q = impl.Queue(4, "drop-lru", id_prefix="q")
    EvilId.queue = q
    try:

        def workload() -> list[Any]:
            res = q.enqueue(impl.Task("m", 1, job_id=EvilId("evil-1")))
            q.enqueue(impl.Task("m", 1, job_id=EvilId("evil-2")))
            dup = q.enqueue(impl.Task("m", 1, job_id=EvilId("evil-1")))
            return [
                type(res.job_id) is str,
                dup.reason.value,
                q.position(EvilId("evil-2")),
                q.touch(EvilId("evil-1")),
                q.lru_order("interactive"),
                q.cancel(EvilId("evil-1")),
                q.cancel(EvilId("evil-1")),
                [type(j) for j in q.snapshot()],
            ]

        got = run_guarded(workload)
    finally:
        EvilId.queue = None
    assert got == [True, "INVALID_REQUEST", 1, True, ["evil-2", "evil-1"], True, False, [str]]
    assert EvilId.calls == Counter()
    assert_consistent(q)


def test_str_subclass_job_id_membership_matches_position(impl: ModuleType, request: pytest.FixtureRequest) -> None:
    """``EvilId(x) in q`` must agree with ``q.position(EvilId(x))`` (both take the str value)."""
    known_bug(request, impl, "contains-str-subclass")
    EvilId.calls.clear()
    q = impl.Queue(4, id_prefix="q")
    q.enqueue(impl.Task("m", 1, job_id="evil-1"))
    assert q.position(EvilId("evil-1")) == 0
    assert (EvilId("evil-1") in q) is True
    assert (EvilId("nope") in q) is False
    assert EvilId.calls == Counter()


# ---------------------------------------------------------------------------------------
# The cyclic GC during an engine call


def test_gc_never_runs_user_code_under_the_lock(impl: ModuleType) -> None:
    """A collection that runs a ``__del__`` using the queue, at every point of every operation.

    See ``tests/scripts/gc_reentry.py``: the GC threshold is swept so that a collection
    starts at each successive allocation inside the operation; a deadlock is caught by the
    script's watchdog (exit 1 with tracebacks), an inconsistent queue by its checks (exit 2),
    a collection inside a locked section of the pure engine by the ``__del__``'s calls being
    refused (counted as errors).
    """
    res = run_script("gc_reentry", engine_arg(impl), timeout=600)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    (summary,) = res.records
    assert summary["errors"] == 0, summary["error_samples"]
    assert summary["inside"] > 0, "the sweep never ran a collection inside an operation"


def test_weakref_callback_uses_the_queue(impl: ModuleType) -> None:
    """A weakref callback on a payload (run when the engine drops the task) uses the queue."""
    q = impl.Queue(4, id_prefix="q")
    seen: list[Any] = []

    class P:
        pass

    p = P()
    ref = weakref.ref(p, lambda _: seen.append((q.enqueue(impl.Task("m", 1, job_id="cb")).accepted, len(q))))
    q.enqueue(impl.Task("m", 1, job_id="a", payload=p))
    del p
    assert run_guarded(lambda: q.cancel("a")) is True
    assert ref() is None and seen == [(True, 1)]
    assert_consistent(q)


# ---------------------------------------------------------------------------------------
# User code in the middle of an operation


REENTRANT_PREFIX = "reentrant call to Queue."


def test_code_run_in_the_middle_of_an_operation_is_served_or_refused_never_deadlocked(impl: ModuleType) -> None:
    """Code that runs in the middle of an operation and uses the same queue, as a signal
    handler can (and, on 3.12, a collection another thread scheduled) inside the pure
    engine's locked sections, which are Python: each of its calls is served, or refused with
    ``RuntimeError("reentrant call to Queue.<method>() ...")`` when it interrupted the part
    that changes the queue; never a deadlock, and the queue stays consistent.

    A profiling hook (``sys.setprofile``) stands for the interruption: it runs at every call
    the thread makes, including those inside the pure engine's locked sections (the compiled
    engine's are C: there it only runs between operations, and nothing is refused).
    """
    outcomes = Counter[str]()
    refusals: list[str] = []
    running = [False]
    holder: dict[str, Any] = {}

    def hook(frame: Any, event: str, arg: Any) -> None:
        q = holder.get("q")
        if q is None or running[0] or event not in ("call", "c_call"):
            return
        running[0] = True
        try:
            depth = q.metrics().depth
            if depth < q.capacity() and not q.closed:  # (no eviction: the workload's results stay)
                assert q.enqueue(impl.Task("m", 1, priority="batch", job_id="from-hook")).accepted
                assert q.cancel("from-hook")
            assert len(q.snapshot()) == len(q) == depth
        except RuntimeError as exc:
            refusals.append(str(exc))
        else:
            outcomes["served"] += 1
        finally:
            running[0] = False

    def workload(q: Any) -> list[Any]:
        got: list[Any] = [q.enqueue(impl.Task("m", 1, job_id=f"i{i}")).position for i in range(3)]
        for i in range(5):
            task = impl.Task("m", 1, priority="batch", tenant=f"t{i % 2}", job_id=f"b{i}", max_wait_ms=60_000)
            res = q.enqueue(task)
            got.append((res.position, None if res.evicted is None else res.evicted.job_id))
        got.append(q.dequeue().job_id)
        got.append([j.job_id for j in q.dequeue_many(2)])
        eta = q.eta_ms("b4")
        got += [q.touch("b3"), q.position("b4"), q.cancel("b0"), "b1" in q, eta is None or eta >= 0]
        got += [q.snapshot(), q.lru_order("batch"), len(q), q.metrics().depth]
        got.append([j.job_id for j in q.drain()])
        q.close()
        got.append(q.enqueue(impl.Task("m", 1)).accepted)
        return got

    expected = workload(impl.Queue(6, "drop-lru", id_prefix="q"))

    def interrupted() -> list[Any]:
        q = holder["q"] = impl.Queue(6, "drop-lru", id_prefix="q")
        sys.setprofile(hook)
        try:
            return workload(q)
        finally:
            sys.setprofile(None)

    assert run_guarded(interrupted) == expected  # every operation finished as without the hook
    assert outcomes["served"] > 0
    assert all(message.startswith(REENTRANT_PREFIX) for message in refusals), refusals[:3]
    if engine_arg(impl) == "c":
        assert refusals == []
    else:
        assert refusals, "nothing ran inside a locked section: the test no longer tests the pure engine's guard"
    assert_consistent(holder["q"])
