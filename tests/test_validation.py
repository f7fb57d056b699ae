"""Bad input raises at once, names the parameter and the value, and changes nothing."""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import pytest


def state(q: Any) -> tuple[Any, ...]:
    m = q.metrics()
    return (
        q.snapshot(),
        q.lru_order("interactive"),
        q.lru_order("batch"),
        m.accepted,
        tuple(m.rejected.values()),
        m.evicted,
        m.cancelled,
        m.dequeued,
        m.drained,
        q.depth(),
        q.closed,
    )


@pytest.mark.parametrize(
    ("capacity", "exc", "text"),
    [
        (0, ValueError, "capacity must be a positive int, got 0"),
        (-1, ValueError, "capacity must be a positive int, got -1"),
        (1.5, TypeError, "capacity must be a positive int, got 1.5"),
        ("10", TypeError, "capacity must be a positive int, got '10'"),
        (True, TypeError, "capacity must be a positive int, got True"),
        (None, TypeError, "capacity must be a positive int, got None"),
    ],
)
def test_bad_capacity(impl: ModuleType, capacity: object, exc: type, text: str) -> None:
    with pytest.raises(exc) as info:
        impl.Queue(capacity)
    assert str(info.value) == text


def test_unknown_policy_lists_the_valid_ones(impl: ModuleType) -> None:
    with pytest.raises(ValueError, match=r"^policy must be one of") as info:
        impl.Queue(5, "lifo")
    assert str(info.value) == (
        "policy must be one of 'reject-new', 'drop-lru', 'fail-fast' (or AdmissionPolicy members), got 'lifo'"
    )


@pytest.mark.parametrize(
    ("kwargs", "exc", "text"),
    [
        ({"pool_id": ""}, ValueError, "pool_id must be a non-empty str, got ''"),
        ({"clock": 5}, TypeError, "clock must be a callable"),
        ({"max_tokens_limit": 0}, ValueError, "max_tokens_limit must be a positive int or None, got 0"),
        ({"max_tokens_limit": True}, TypeError, "max_tokens_limit must be a positive int or None, got True"),
        ({"id_prefix": "a-b"}, ValueError, "id_prefix may only contain"),
        ({"id_prefix": ""}, ValueError, "id_prefix must be a str of 1 to 32 characters"),
    ],
)
def test_bad_queue_options(impl: ModuleType, kwargs: dict[str, Any], exc: type, text: str) -> None:
    with pytest.raises(exc, match="^" + text.replace("(", r"\(").replace(")", r"\)")):
        impl.Queue(5, **kwargs)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "text"),
    [
        (("", 10), {}, ValueError, "model must be a non-empty str, got ''"),
        ((None, 10), {}, TypeError, "model must be a non-empty str, got None"),
        (("m", 0), {}, ValueError, "max_tokens must be a positive int, got 0"),
        (("m", -1), {}, ValueError, "max_tokens must be a positive int, got -1"),
        (("m", 1.5), {}, TypeError, "max_tokens must be a positive int, got 1.5"),
        (("m", True), {}, TypeError, "max_tokens must be a positive int, got True"),
        (("m", 10, ""), {}, ValueError, "session_id must be a non-empty str or None, got ''"),
        (("m", 10, 7), {}, TypeError, "session_id must be a non-empty str or None, got 7"),
        (("m", 10), {"priority": "urgent"}, ValueError, "priority must be one of 'interactive', 'batch'"),
        (("m", 10), {"priority": 0}, ValueError, "priority must be one of 'interactive', 'batch'"),
        (("m", 10), {"job_id": ""}, ValueError, "job_id must not be empty, got ''"),
        (("m", 10), {"job_id": "x" * 129}, ValueError, "job_id must be at most 128 characters, got 129"),
        (("m", 10), {"job_id": "a\nb"}, ValueError, "job_id must be printable"),
        (("m", 10), {"job_id": "a\x00b"}, ValueError, "job_id must be printable"),
        (("m", 10), {"job_id": 5}, TypeError, "job_id must be a str, got 5"),
    ],
)
def test_bad_task(impl: ModuleType, args: tuple[Any, ...], kwargs: dict[str, Any], exc: type, text: str) -> None:
    with pytest.raises(exc) as info:
        impl.Task(*args, **kwargs)
    assert str(info.value).startswith(text)


@pytest.mark.parametrize("bad", [None, "task", {"model": "m"}, 3])
def test_enqueue_of_a_non_task_raises_and_changes_nothing(make_queue: Any, impl: ModuleType, bad: object) -> None:
    q = make_queue(3)
    q.enqueue(impl.Task("m", 1))
    before = state(q)
    with pytest.raises(TypeError, match=r"^task must be a Task, got "):
        q.enqueue(bad)
    assert state(q) == before


def test_enqueue_of_the_other_engines_task_is_refused(make_queue: Any, impl: ModuleType) -> None:
    from orchestrator_core import _core_py

    from .conftest import core_c

    other = core_c if impl is _core_py else _core_py
    if other is None:
        pytest.skip("only one engine available")
    q = make_queue(3)
    with pytest.raises(TypeError, match="task must be a Task"):
        q.enqueue(other.Task("m", 1))


@pytest.mark.parametrize(
    ("timeout", "exc", "text"),
    [
        (-1, ValueError, "timeout must be >= 0 seconds or None, got -1"),
        (math.nan, ValueError, "timeout must be >= 0 seconds or None, got nan"),
        ("1", TypeError, "timeout must be a number of seconds or None, got '1'"),
        (True, TypeError, "timeout must be a number of seconds or None, got True"),
    ],
)
def test_bad_dequeue_timeout(make_queue: Any, impl: ModuleType, timeout: object, exc: type, text: str) -> None:
    q = make_queue(3)
    q.enqueue(impl.Task("m", 1))
    before = state(q)
    for call in (lambda: q.dequeue(timeout=timeout), lambda: q.dequeue_many(2, timeout=timeout)):
        with pytest.raises(exc) as info:
            call()
        assert str(info.value) == text
    assert state(q) == before


@pytest.mark.parametrize(
    ("n", "exc", "text"),
    [
        (0, ValueError, "max_jobs must be a positive int, got 0"),
        (-3, ValueError, "max_jobs must be a positive int, got -3"),
        (2.0, TypeError, "max_jobs must be a positive int, got 2.0"),
        (True, TypeError, "max_jobs must be a positive int, got True"),
    ],
)
def test_bad_dequeue_many(make_queue: Any, impl: ModuleType, n: object, exc: type, text: str) -> None:
    q = make_queue(3)
    q.enqueue(impl.Task("m", 1))
    before = state(q)
    with pytest.raises(exc) as info:
        q.dequeue_many(n)
    assert str(info.value) == text
    assert state(q) == before


@pytest.mark.parametrize("op", ["cancel", "touch", "position"])
@pytest.mark.parametrize(
    ("bad", "exc", "text"),
    [
        (123, TypeError, "job_id must be a str, got 123 (int)"),
        (None, TypeError, "job_id must be a str, got None (NoneType)"),
        ("", ValueError, "job_id must not be empty, got ''"),
        ("a\tb", ValueError, "job_id must be printable"),
    ],
)
def test_bad_job_id_argument(make_queue: Any, impl: ModuleType, op: str, bad: object, exc: type, text: str) -> None:
    q = make_queue(3)
    q.enqueue(impl.Task("m", 1))
    before = state(q)
    with pytest.raises(exc) as info:
        getattr(q, op)(bad)
    assert str(info.value).startswith(text)
    assert state(q) == before


def test_bad_snapshot_priority(make_queue: Any) -> None:
    q = make_queue(3)
    with pytest.raises(ValueError, match="priority must be one of"):
        q.snapshot("urgent")


def test_clock_returning_garbage_is_an_error_and_changes_nothing(impl: ModuleType) -> None:
    values: list[Any] = [0.0]
    q = impl.Queue(3, clock=lambda: values[0])
    q.enqueue(impl.Task("m", 1))
    before = state(q)
    for bad in ("soon", math.inf, None):
        values[0] = bad
        with pytest.raises(TypeError, match="clock\\(\\) must return a finite number of seconds"):
            q.enqueue(impl.Task("m", 1))
        with pytest.raises(TypeError):
            q.dequeue()
    values[0] = 1.0
    assert state(q) == before
