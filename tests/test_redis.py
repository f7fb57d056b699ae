"""``RedisQueue`` / ``AsyncRedisQueue`` against a real Redis server.

The server comes from ``ORCHESTRATOR_CORE_REDIS_URL`` or is started privately (see
``tests/redis_helpers.py``); without one the tests skip, or fail when ``CI`` is set.

* A hypothesis state machine drives a ``RedisQueue`` and the pure engine's ``Queue`` (the
  model) with the same operations and the same fake clock, and compares every result.
* Producer and consumer *processes* (spawn) share one queue: capacity holds, ids are unique,
  every job is delivered exactly once when no consumer dies.
* A consumer killed with SIGKILL while holding leases: its jobs are redelivered and completed
  by another consumer.
* Redis killed and restarted (append-only file, ``appendfsync always``): nothing accepted is
  lost, and while it is down the queue raises ``QueueUnavailableError`` (never an answer).
"""

from __future__ import annotations

import asyncio
import json
import math
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

import orchestrator_core
from orchestrator_core import Accepted, Job, Priority, Rejected, RejectionReason, Task, _core_py

from .conftest import FakeClock
from .redis_helpers import URL_ENV, RedisServer, free_port, session_server, unavailable, unique_name

try:
    import redis

    from orchestrator_core.redis import (
        WIRE_VERSION,
        AsyncRedisQueue,
        QueueUnavailableError,
        RedisQueue,
        decode_task,
        encode_task,
    )
except ModuleNotFoundError as exc:
    if exc.name != "redis":
        raise
    unavailable("the redis package is not installed (pip install 'orchestrator-core[redis]')")

ROOT = Path(__file__).resolve().parents[1]
PRIOS = ("interactive", "batch")
POLICIES = ("reject-new", "drop-lru", "fail-fast")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of the Redis server of this test session."""
    yield from session_server()


@pytest.fixture
def client(redis_url: str) -> Iterator[Any]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


@pytest.fixture
def make_rq(client: Any) -> Iterator[Callable[..., RedisQueue]]:
    """``make_rq(capacity, policy, **kw)``: a RedisQueue on a fresh name (deleted afterwards), ids prefixed ``q``."""
    made: list[RedisQueue] = []

    def make(capacity: int = 10, policy: str = "reject-new", **kw: Any) -> RedisQueue:
        kw.setdefault("id_prefix", "q")
        name = kw.pop("name", None) or unique_name()
        q = RedisQueue(client, name, capacity, policy, **kw)
        made.append(q)
        return q

    yield make
    for q in made:
        q.delete()


def _outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return ("ok", call())
    except Exception as exc:  # noqa: BLE001 - type and message are what is compared
        return ("raise", (type(exc), str(exc)))


def _task_view(task: Any) -> tuple[Any, ...]:
    return (task.model, task.max_tokens, task.session_id, task.priority.value, task.job_id, task.payload)


# ---------------------------------------------------------------------------------------
# Differential state machine: RedisQueue against the in-process Queue


class RedisVsQueue(RuleBasedStateMachine):
    """The same operations on a ``RedisQueue`` and on ``_core_py.Queue``; every result must agree."""

    url: str = ""

    def __init__(self) -> None:
        super().__init__()
        self.clock = FakeClock(100.0)
        self.client = redis.Redis.from_url(self.url)
        self.rq: RedisQueue | None = None
        self.model: Any = None
        self.to_redis: dict[str, str] = {}  # model job id -> RedisQueue job id
        self.known_ids: list[str] = ["q-1", "nope", "q-0", "q-ff", "caller-a"]
        self.steps = 0

    @initialize(
        capacity=st.integers(1, 5),
        policy=st.sampled_from(POLICIES),
        limit=st.sampled_from([None, None, 50]),
        leases=st.booleans(),
    )
    def setup(self, capacity: int, policy: str, limit: int | None, leases: bool) -> None:
        kw: dict[str, Any] = {"id_prefix": "q", "clock": self.clock, "max_tokens_limit": limit, "pool_id": "p"}
        self.model = _core_py.Queue(capacity, policy, **kw)
        self.rq = RedisQueue(self.client, unique_name("sm"), capacity, policy, lease_s=60.0 if leases else None, **kw)

    def teardown(self) -> None:
        if self.rq is not None:
            self.rq.delete()
        self.client.close()

    # -- helpers ----------------------------------------------------------------------
    def r_id(self, model_id: str) -> str:
        return self.to_redis.get(model_id, model_id)

    def check_job(self, got: Any, want: Any) -> None:
        if want is None:
            assert got is None
            return
        assert type(got) is Job
        assert got.job_id == self.r_id(want.job_id)
        assert _task_view(got.task) == _task_view(want.task)
        assert (got.enqueued_at, got.wait_ms, got.priority) == (want.enqueued_at, want.wait_ms, want.priority)

    def check_result(self, got: Any, want: Any) -> None:
        assert got.accepted == want.accepted, (got, want)
        if want.accepted:
            assert type(got) is Accepted
            self.to_redis.setdefault(want.job_id, got.job_id)
            assert got.job_id == self.r_id(want.job_id)
            assert got.position == want.position
            self.check_job(got.evicted, want.evicted)
            self.known_ids.append(want.job_id)
        else:
            assert type(got) is Rejected
            assert (got.reason, got.retry_after_ms, got.retriable, got.policy, got.message) == (
                want.reason,
                want.retry_after_ms,
                want.retriable,
                want.policy,
                want.message,
            )

    def both(self, model_call: Callable[[Any], Any], redis_call: Callable[[RedisQueue], Any]) -> tuple[Any, Any]:
        want = _outcome(lambda: model_call(self.model))
        got = _outcome(lambda: redis_call(self.rq))  # type: ignore[arg-type]
        if want[0] == "raise" or got[0] == "raise":
            assert got == want
        return got[1], want[1]

    def pick_id(self, data: st.DataObject) -> str:
        queued = self.model.snapshot()
        if queued and data.draw(st.integers(0, 3)) > 0:
            return str(data.draw(st.sampled_from(queued)))
        return str(data.draw(st.sampled_from(self.known_ids)))

    def complete(self, jobs: list[Any]) -> None:
        assert self.rq is not None
        for job in jobs:
            assert self.rq.complete(job.job_id) is (self.rq.lease_s is not None)

    def make_task(self, data: st.DataObject) -> tuple[Any, Any]:
        prio = data.draw(st.sampled_from(PRIOS), "priority")
        max_tokens = data.draw(st.sampled_from([1, 10, 100]), "max_tokens")
        pick = data.draw(st.sampled_from([None, None, None, "known", "fresh"]), "job id")
        job_id = None
        if pick == "known":
            job_id = data.draw(st.sampled_from(self.known_ids))
        elif pick == "fresh":
            job_id = data.draw(st.sampled_from(["caller-a", "caller-b", "q-7", "q-1a", "q-07"]))
        payload = data.draw(
            st.one_of(
                st.none(), st.integers(-5, 5), st.dictionaries(st.sampled_from("ab"), st.lists(st.integers(0, 9)))
            ),
            "payload",
        )
        session = data.draw(st.sampled_from([None, "s1"]), "session")
        model_task = _core_py.Task("m", max_tokens, session, priority=prio, job_id=job_id, payload=payload)
        redis_job_id = None if job_id is None else self.r_id(job_id)
        redis_task = Task("m", max_tokens, session, priority=prio, job_id=redis_job_id, payload=payload)
        return model_task, redis_task

    # -- rules ------------------------------------------------------------------------
    @rule(data=st.data())
    def enqueue(self, data: st.DataObject) -> None:
        model_task, redis_task = self.make_task(data)
        got, want = self.both(lambda q: q.enqueue(model_task), lambda q: q.enqueue(redis_task))
        self.check_result(got, want)

    @rule(data=st.data(), n=st.integers(1, 4))
    def enqueue_many(self, data: st.DataObject, n: int) -> None:
        pairs = [self.make_task(data) for _ in range(n)]
        want = [self.model.enqueue(m) for m, _ in pairs]
        assert self.rq is not None
        got = self.rq.enqueue_many([r for _, r in pairs])
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            self.check_result(g, w)

    @rule(timeout=st.sampled_from([0, 0, 0.01]))
    def dequeue(self, timeout: float) -> None:
        got, want = self.both(lambda q: q.dequeue(timeout=timeout), lambda q: q.dequeue(timeout=timeout))
        self.check_job(got, want)
        if got is not None:
            self.complete([got])

    @rule(n=st.integers(1, 4))
    def dequeue_many(self, n: int) -> None:
        got, want = self.both(lambda q: q.dequeue_many(n), lambda q: q.dequeue_many(n))
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            self.check_job(g, w)
        self.complete(got)

    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job_id = self.pick_id(data)
        got, want = self.both(lambda q: q.cancel(job_id), lambda q: q.cancel(self.r_id(job_id)))
        assert got is want

    @rule(data=st.data())
    def touch(self, data: st.DataObject) -> None:
        job_id = self.pick_id(data)
        got, want = self.both(lambda q: q.touch(job_id), lambda q: q.touch(self.r_id(job_id)))
        assert got is want

    @rule(data=st.data())
    def position_and_contains(self, data: st.DataObject) -> None:
        job_id = self.pick_id(data)
        got, want = self.both(lambda q: q.position(job_id), lambda q: q.position(self.r_id(job_id)))
        assert got == want
        assert (self.r_id(job_id) in self.rq) is (job_id in self.model)  # type: ignore[operator]
        for odd in ("", "x" * 200, "a\nb", 7, None):
            assert (odd in self.rq) is (odd in self.model) is False  # type: ignore[operator]

    @rule(priority=st.sampled_from([None, "interactive", "batch", Priority.BATCH]))
    def snapshot(self, priority: Any) -> None:
        got, want = self.both(lambda q: q.snapshot(priority), lambda q: q.snapshot(priority))
        assert got == [self.r_id(j) for j in want]

    @rule(priority=st.sampled_from(PRIOS))
    def lru_order(self, priority: str) -> None:
        got, want = self.both(lambda q: q.lru_order(priority), lambda q: q.lru_order(priority))
        assert got == [self.r_id(j) for j in want]

    @rule()
    def drain(self) -> None:
        got, want = self.both(lambda q: q.drain(), lambda q: q.drain())
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            self.check_job(g, w)

    @precondition(lambda self: self.steps > 15)
    @rule()
    def close(self) -> None:
        self.both(lambda q: q.close(), lambda q: q.close())
        assert self.rq is not None and self.rq.closed is self.model.closed is True

    @rule(seconds=st.sampled_from([0.25, 0.5, 1.0, 3.0, 12.0]))
    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def metrics(self) -> None:
        got, want = self.both(lambda q: q.metrics(), lambda q: q.metrics())
        assert got == want

    @rule(
        bad=st.sampled_from(
            [
                ("dequeue", (-1.0,)),
                ("dequeue", ("x",)),
                ("dequeue_many", (0,)),
                ("dequeue_many", (2, -3)),
                ("cancel", (7,)),
                ("touch", (None,)),
                ("position", ("",)),
                ("snapshot", ("urgent",)),
                ("lru_order", ("urgent",)),
                ("enqueue", ("not a task",)),
            ]
        )
    )
    def bad_arguments(self, bad: tuple[str, tuple[Any, ...]]) -> None:
        name, args = bad
        got, want = self.both(lambda q: getattr(q, name)(*args), lambda q: getattr(q, name)(*args))
        assert got == want

    @invariant()
    def same_depth_and_order(self) -> None:
        if self.rq is None:
            return
        self.steps += 1
        assert self.rq.depth() == self.model.depth() == len(self.rq)
        assert self.rq.snapshot() == [self.r_id(j) for j in self.model.snapshot()]


def test_state_machine_against_in_process_queue(redis_url: str) -> None:
    RedisVsQueue.url = redis_url
    run_state_machine_as_test(
        RedisVsQueue,
        settings=settings(
            max_examples=60,
            stateful_step_count=30,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


# ---------------------------------------------------------------------------------------
# Single-process behaviour


def test_wire_format_is_versioned_json(make_rq: Callable[..., RedisQueue], client: Any) -> None:
    q = make_rq(5)
    res = q.enqueue(Task("llama", 7, "s", priority="batch", payload={"prompt": "héllo", "n": [1, 2.5]}))
    assert res.accepted
    stored = client.hget(f"oc:{{{q.name}}}:task", res.job_id)
    assert stored.startswith(b"2|")  # class|enqueued_at|redeliveries|encoded task
    raw = stored.split(b"|", 3)[3]
    assert json.loads(raw) == {
        "v": WIRE_VERSION,
        "model": "llama",
        "max_tokens": 7,
        "session_id": "s",
        "priority": "batch",
        "job_id": None,
        "payload": {"prompt": "héllo", "n": [1, 2.5]},
    }
    assert raw.isascii()
    job = q.dequeue()
    assert _task_view(job.task) == ("llama", 7, "s", "batch", None, {"prompt": "héllo", "n": [1, 2.5]})
    with pytest.raises(ValueError, match="task encoding version must be 1, got 2"):
        decode_task(json.dumps({**json.loads(raw), "v": 2}))
    assert _task_view(decode_task(encode_task(Task("m", 1, job_id="x")))) == ("m", 1, None, "interactive", "x", None)


@pytest.mark.parametrize(
    ("payload", "error", "match"),
    [
        (object(), TypeError, "payload must be JSON-encodable"),
        ({"x": {1, 2}}, TypeError, "payload must be JSON-encodable"),
        (float("nan"), ValueError, "payload must be JSON-encodable"),
        (b"bytes", TypeError, "payload must be JSON-encodable"),
    ],
)
def test_unencodable_payload_is_refused_and_nothing_is_enqueued(
    make_rq: Callable[..., RedisQueue], payload: Any, error: type[Exception], match: str
) -> None:
    q = make_rq(5)
    with pytest.raises(error, match=match):
        q.enqueue(Task("m", 1, payload=payload))
    with pytest.raises(error, match=match):
        q.enqueue_many([Task("m", 1), Task("m", 2, payload=payload), Task("m", 3)])
    assert q.depth() == 0
    assert q.metrics().accepted == 0
    assert q.enqueue(Task("m", 1)).job_id == "q-1"  # no id was used up either


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"tenant": "acme"}, "tenant is not supported by the Redis backend .*got tenant='acme'"),
        ({"max_wait_ms": 250}, "max_wait_ms is not supported by the Redis backend .*got max_wait_ms=250"),
        ({"prompt_tokens": 900}, "prompt_tokens is not supported by the Redis backend .*got prompt_tokens=900"),
    ],
)
def test_in_process_only_task_fields_are_refused_and_nothing_is_enqueued(
    make_rq: Callable[..., RedisQueue], kw: dict[str, Any], match: str
) -> None:
    """A deadline, tenant or prompt-token count would be lost on the way to Redis: a clear error instead."""
    q = make_rq(5)
    with pytest.raises(ValueError, match=match):
        q.enqueue(Task("m", 1, **kw))
    with pytest.raises(ValueError, match=match):
        q.enqueue_many([Task("m", 1), Task("m", 2, **kw)])
    assert q.depth() == 0 and q.metrics().accepted == 0


def test_job_ids_are_unique_across_instances_with_one_counter(client: Any) -> None:
    name = unique_name()
    a = RedisQueue(client, name, 100, id_prefix="a")
    b = RedisQueue(client, name, 100, id_prefix="b")
    try:
        ids = [q.enqueue(Task("m", 1)).job_id for q in (a, b, a, b)]
        assert ids == ["a-1", "b-2", "a-3", "b-4"]
        assert b.enqueue(Task("m", 1, job_id="a-5")).accepted  # the caller took a-5...
        assert a.enqueue(Task("m", 1)).job_id == "a-6"  # ...and the generator steps over it
        assert b.enqueue(Task("m", 1, job_id="b-9")).job_id == "b-9"
        assert b.enqueue(Task("m", 1)).job_id == "b-a"  # own-format caller ids move the counter past them
    finally:
        a.delete()


def test_configuration_mismatch_is_an_error(make_rq: Callable[..., RedisQueue], client: Any) -> None:
    q = make_rq(5, "drop-lru", lease_s=10.0)
    with pytest.raises(ValueError, match=r"exists on Redis with capacity=5, policy=drop-lru, lease_ms=10000"):
        RedisQueue(client, q.name, 6, "drop-lru", lease_s=10.0)
    same = RedisQueue(client, q.name, 5, "drop-lru", lease_s=10.0, pool_id="other", max_tokens_limit=3)
    assert same.enqueue(Task("m", 4)).reason is RejectionReason.POLICY_VIOLATION


@pytest.mark.parametrize(
    ("args", "kw", "error", "match"),
    [
        ((0,), {}, ValueError, "capacity must be a positive int, got 0"),
        ((5, "lifo"), {}, ValueError, "policy must be one of"),
        ((5,), {"lease_s": 0}, ValueError, "lease_s must be between"),
        ((5,), {"lease_s": "1"}, TypeError, "lease_s must be a number"),
        ((5,), {"max_redeliveries": -1}, ValueError, "max_redeliveries must be an int >= 0, got -1"),
        ((5,), {"replay_window_s": -1}, ValueError, "replay_window_s must be between"),
        ((5,), {"name": "a{b}"}, ValueError, "name must not contain"),
        ((5,), {"name": ""}, ValueError, "name must not be empty"),
        ((5,), {"id_prefix": "a-b"}, ValueError, "id_prefix may only contain"),
    ],
)
def test_constructor_validation(
    client: Any, args: tuple[Any, ...], kw: dict[str, Any], error: type, match: str
) -> None:
    kw = dict(kw)
    name = kw.pop("name", unique_name())
    with pytest.raises(error, match=match):
        RedisQueue(client, name, *args, **kw)
    with pytest.raises(TypeError, match=r"client must be a redis\.Redis"):
        RedisQueue(object(), unique_name(), 5)  # type: ignore[arg-type]


def test_constructor_errors_match_the_in_process_queue(client: Any) -> None:
    for args in [(0,), (-1,), (1.5,), (5, "x"), (True,)]:
        want = _outcome(lambda args=args: _core_py.Queue(*args))
        got = _outcome(lambda args=args: RedisQueue(client, unique_name(), *args))
        assert got == want


def test_url_constructor_and_disconnect(redis_url: str) -> None:
    q = RedisQueue(redis_url, unique_name(), 3)
    try:
        assert q.enqueue(Task("m", 1)).accepted
        assert q.depth() == 1
    finally:
        q.delete()
        q.disconnect()


def test_blocking_dequeue_wakes_on_enqueue_from_another_client(
    make_rq: Callable[..., RedisQueue], redis_url: str
) -> None:
    q = make_rq(5)
    got: list[Any] = []
    consumer_client = redis.Redis.from_url(redis_url)
    consumer = RedisQueue(consumer_client, q.name, 5, id_prefix="c")
    thread = threading.Thread(target=lambda: got.append(consumer.dequeue(timeout=None)))
    thread.start()
    res = q.enqueue(Task("m", 3, payload="hi"))
    thread.join(30)
    consumer_client.close()
    assert not thread.is_alive()
    assert got[0].job_id == res.job_id and got[0].task.payload == "hi"


def test_close_wakes_every_blocked_consumer(make_rq: Callable[..., RedisQueue], redis_url: str) -> None:
    q = make_rq(5)
    results: list[Any] = []
    clients = [redis.Redis.from_url(redis_url) for _ in range(3)]
    threads = [
        threading.Thread(target=lambda c=c: results.append(RedisQueue(c, q.name, 5).dequeue(timeout=None)))
        for c in clients
    ]
    for t in threads:
        t.start()
    q.close()
    for t in threads:
        t.join(30)
    for c in clients:
        c.close()
    assert not any(t.is_alive() for t in threads)
    assert results == [None, None, None]
    assert q.dequeue(timeout=None) is None  # closed and empty: returns at once


def test_timed_dequeue_on_empty_queue_returns_none(make_rq: Callable[..., RedisQueue]) -> None:
    q = make_rq(5)
    assert q.dequeue(timeout=0.05) is None
    assert q.dequeue_many(3, timeout=0.05) == []


def test_expired_lease_redelivers_at_the_head_of_its_class(make_rq: Callable[..., RedisQueue]) -> None:
    q = make_rq(5, lease_s=60.0)
    first = q.enqueue(Task("m", 1, payload={"n": 1})).job_id
    q.enqueue(Task("m", 1, priority="batch"))
    job = q.dequeue()
    assert job.job_id == first
    later = q.enqueue(Task("m", 1)).job_id  # queued behind nothing: the lease holder is not queued
    assert q.position(later) == 0 and first not in q
    dup = q.enqueue(Task("m", 1, job_id=first))
    assert dup.reason is RejectionReason.INVALID_REQUEST
    assert dup.message == f"job_id {first!r} is leased to a consumer and not completed yet"
    assert q.renew(first, 0.001)  # let the lease run out now
    time.sleep(0.01)  # the next operation notices the expiry
    assert q.position(later) == 1 and q.position(first) == 0  # back ahead of everything in its class
    again = q.dequeue()
    assert again.job_id == first and again.task.payload == {"n": 1} and again.enqueued_at == job.enqueued_at
    assert q.complete(job.job_id) is True
    assert q.complete(job.job_id) is False
    stats = q.lease_stats()
    assert (stats.leased, stats.completed, stats.redelivered, stats.dead_lettered) == (0, 1, 1, 0)
    m = q.metrics()
    assert m.accepted + stats.redelivered == m.dequeued + m.cancelled + m.evicted + m.drained + m.depth


def test_dead_letter_after_max_redeliveries(make_rq: Callable[..., RedisQueue]) -> None:
    q = make_rq(5, lease_s=0.05, max_redeliveries=1)
    job_id = q.enqueue(Task("m", 9, "s", payload=[1, "x"])).job_id
    assert q.dequeue().job_id == job_id
    assert q.dequeue(timeout=30).job_id == job_id  # redelivered once
    assert q.dequeue(timeout=0.3) is None  # the second expiry dead-letters it
    stats = q.lease_stats()
    assert (stats.leased, stats.redelivered, stats.dead_lettered, stats.dead_letter_depth) == (0, 1, 1, 1)
    (dead,) = q.dead_letters()
    assert dead.job_id == job_id and dead.deliveries == 2
    assert _task_view(dead.task) == ("m", 9, "s", "interactive", None, [1, "x"])
    assert q.complete(job_id) is False
    assert q.enqueue(Task("m", 1, job_id=job_id)).accepted  # the id is free again
    assert q.clear_dead_letters() == 1 and q.dead_letters() == []


def test_renew_extends_a_lease(make_rq: Callable[..., RedisQueue]) -> None:
    q = make_rq(5, lease_s=10.0)
    job_id = q.enqueue(Task("m", 1)).job_id
    q.dequeue()
    assert q.lease_stats().next_expiry_ms <= 10_000
    assert q.renew(job_id, 60.0) is True
    assert q.leased() == [job_id]
    assert q.lease_stats().next_expiry_ms > 30_000
    assert q.renew("unknown") is False
    assert q.complete_many([job_id, "unknown"]) == 1
    assert q.leased() == []


def test_without_leases_dequeue_forgets_the_job(make_rq: Callable[..., RedisQueue]) -> None:
    q = make_rq(5, lease_s=None)
    job_id = q.enqueue(Task("m", 1)).job_id
    assert q.dequeue().job_id == job_id
    assert q.complete(job_id) is False
    assert q.leased() == [] and q.lease_stats().next_expiry_ms is None
    assert q.enqueue(Task("m", 1, job_id=job_id)).accepted


def test_redelivery_into_a_full_queue_is_never_lost(make_rq: Callable[..., RedisQueue]) -> None:
    q = make_rq(1, lease_s=60.0)
    leased = q.enqueue(Task("m", 1)).job_id
    q.dequeue()
    other = q.enqueue(Task("m", 1)).job_id  # fills the queue while the first is leased
    assert q.renew(leased, 0.001)
    time.sleep(0.01)
    assert q.snapshot() == [leased, other]  # back at the head although the queue was full
    assert q.depth() == 2 and q.enqueue(Task("m", 1)).reason is RejectionReason.QUEUE_FULL
    assert q.dequeue().job_id == leased


def test_a_retried_call_gets_the_first_answer(make_rq: Callable[..., RedisQueue]) -> None:
    """What redis-py does after a lost reply: the same command again, with the same nonce."""
    q = make_rq(1, "reject-new")
    tasks = [Task("m", 1, job_id="mine")]
    args = q._enqueue_args(tasks)
    first = q._enqueue_results(tasks, q._call(args))
    again = q._enqueue_results(tasks, q._call(args))
    assert first[0].accepted and again[0].accepted  # not "already queued", not "full"
    assert (again[0].job_id, again[0].position) == ("mine", 0)
    assert q.metrics().accepted == 1
    deq = q._args("deq", True) + [1]
    j1 = q._jobs(q._call(deq), 2, 4)
    j2 = q._jobs(q._call(deq), 2, 4)
    assert [j.job_id for j in j1] == [j.job_id for j in j2] == ["mine"]
    cancel_args = q._args("cancel", True)
    q.enqueue(Task("m", 1, job_id="c"))
    assert q._call(cancel_args + ["c"]) == 1 and q._call(cancel_args + ["c"]) == 1
    assert q.metrics().cancelled == 1


def test_unreachable_redis_raises_a_clear_error() -> None:
    port = free_port()
    c = redis.Redis(port=port, retry=redis.retry.Retry(redis.backoff.NoBackoff(), 0))
    with pytest.raises(QueueUnavailableError, match=r"Redis is unavailable for queue 'x'") as info:
        RedisQueue(c, "x", 5)
    assert isinstance(info.value, redis.ConnectionError)
    c.close()


# ---------------------------------------------------------------------------------------
# asyncio twin


def test_async_queue_matches_the_sync_queue(redis_url: str, client: Any) -> None:
    clock = FakeClock(50.0)
    sync_q = RedisQueue(client, unique_name("s"), 3, "drop-lru", clock=clock, id_prefix="q", pool_id="p")

    async def run() -> list[Any]:
        aclient = redis.asyncio.Redis.from_url(redis_url)
        aq = await AsyncRedisQueue.create(
            aclient, unique_name("a"), 3, "drop-lru", clock=clock, id_prefix="q", pool_id="p"
        )
        out: list[Any] = []
        try:
            for i, prio in enumerate(["batch", "interactive", "batch", "interactive", "interactive", "batch"]):
                task = Task("m", 1 + i, priority=prio, payload={"i": i})
                out.append(("enq", await aq.enqueue(task), sync_q.enqueue(task)))
                clock.advance(0.5)
                if i == 2:
                    out.append(("touch", await aq.touch("q-1"), sync_q.touch("q-1")))
            out.append(("pos", await aq.position("q-4"), sync_q.position("q-4")))
            out.append(("snap", await aq.snapshot(), sync_q.snapshot()))
            out.append(("lru", await aq.lru_order("interactive"), sync_q.lru_order("interactive")))
            out.append(("many", await aq.enqueue_many([Task("m", 1)] * 2), sync_q.enqueue_many([Task("m", 1)] * 2)))
            out.append(("deq", await aq.dequeue(), sync_q.dequeue()))
            out.append(("deqm", await aq.dequeue_many(2), sync_q.dequeue_many(2)))
            out.append(("cancel", await aq.cancel("q-9"), sync_q.cancel("q-9")))
            out.append(("depth", await aq.depth(), sync_q.depth()))
            out.append(("in", await aq.contains("q-5"), "q-5" in sync_q))
            clock.advance(2.0)
            out.append(("metrics", await aq.metrics(), sync_q.metrics()))
            out.append(("drain", await aq.drain(), sync_q.drain()))
            await aq.close()
            sync_q.close()
            out.append(("closed", await aq.is_closed(), sync_q.closed))
            out.append(("after", await aq.enqueue(Task("m", 1)), sync_q.enqueue(Task("m", 1))))
            a_stats, s_stats = await aq.lease_stats(), sync_q.lease_stats()
            out.append(("stats", a_stats.leased, s_stats.leased))  # next_expiry_ms depends on timing
        finally:
            await aq.delete()
            await aclient.aclose()
        return out

    try:
        steps = asyncio.run(run())
    finally:
        sync_q.delete()

    def view(x: Any) -> Any:
        if isinstance(x, list):
            return [view(i) for i in x]
        if isinstance(x, Job):
            return (x.job_id, _task_view(x.task), x.enqueued_at, x.wait_ms)
        if isinstance(x, Accepted):
            return (x.job_id, x.position, view(x.evicted))
        if isinstance(x, Rejected):
            return (x.reason, x.retry_after_ms, x.message)
        return x

    for name, a, s in steps:
        assert view(a) == view(s), name
    assert any(name == "enq" and s.evicted is not None for name, _, s in steps)


def test_async_blocking_dequeue_wakes_without_polling(redis_url: str) -> None:
    async def run() -> tuple[Any, Any, Any]:
        producer_client = redis.asyncio.Redis.from_url(redis_url)
        consumer_client = redis.asyncio.Redis.from_url(redis_url)
        name = unique_name("aw")
        producer = AsyncRedisQueue(producer_client, name, 5, lease_s=0.2)
        consumer = AsyncRedisQueue(consumer_client, name, 5, lease_s=0.2)
        try:
            waiting = asyncio.create_task(consumer.dequeue(timeout=None))
            await asyncio.sleep(0.05)
            res = await producer.enqueue(Task("m", 1))
            job = await asyncio.wait_for(waiting, 30)
            # Not completed: the lease expires and a blocked consumer gets it again.
            again = await asyncio.wait_for(consumer.dequeue(timeout=None), 30)
            await consumer.complete(again.job_id)
            return res, job, (again, await consumer.lease_stats())
        finally:
            await producer.delete()
            await producer_client.aclose()
            await consumer_client.aclose()

    res, job, (again, stats) = asyncio.run(run())
    assert job.job_id == res.job_id == again.job_id
    assert (stats.redelivered, stats.completed, stats.leased) == (1, 1, 0)


# ---------------------------------------------------------------------------------------
# Several processes


def _producer(url: str, name: str, capacity: int, index: int, count: int) -> tuple[list[str], list[int], int]:
    q = RedisQueue(url, name, capacity, lease_s=30.0)
    ids: list[str] = []
    positions: list[int] = []
    rejected = 0
    try:
        for i in range(count):
            res = q.enqueue(Task("m", 1, payload={"producer": index, "i": i}))
            if res.accepted:
                ids.append(res.job_id)
                positions.append(res.position)
            else:
                assert res.reason is RejectionReason.QUEUE_FULL
                rejected += 1
    finally:
        q.disconnect()
    return ids, positions, rejected


def _consumer(url: str, name: str, capacity: int, batch: int) -> list[str]:
    q = RedisQueue(url, name, capacity, lease_s=30.0)
    seen: list[str] = []
    try:
        while True:
            jobs = q.dequeue_many(batch, timeout=None)
            if not jobs:  # closed and empty
                return seen
            seen += [j.job_id for j in jobs]
            assert q.complete_many([j.job_id for j in jobs]) == len(jobs)
    finally:
        q.disconnect()


def _spawn() -> Any:
    return multiprocessing.get_context("spawn")


def test_producer_processes_respect_capacity_and_ids_are_unique(redis_url: str, client: Any) -> None:
    name, capacity = unique_name("prod"), 20
    q = RedisQueue(client, name, capacity, lease_s=30.0)
    try:
        with _spawn().Pool(5) as pool:
            producers = [pool.apply_async(_producer, (redis_url, name, capacity, i, 300)) for i in range(3)]
            consumers = [pool.apply_async(_consumer, (redis_url, name, capacity, b)) for b in (1, 4)]
            depths = [q.depth()]
            while not all(p.ready() for p in producers):
                depths.append(q.depth())
            produced = [p.get(60) for p in producers]
            q.close()
            consumed = [c.get(60) for c in consumers]
        accepted = [job_id for ids, _, _ in produced for job_id in ids]
        assert len(accepted) == len(set(accepted))  # unique across processes
        assert all(0 <= pos < capacity for _, positions, _ in produced for pos in positions)
        assert depths and max(depths) <= capacity
        received = [job_id for ids in consumed for job_id in ids]
        assert sorted(received) == sorted(accepted)  # every accepted job exactly once
        m = q.metrics()
        rejected = sum(r for _, _, r in produced)
        assert (m.accepted, m.dequeued, m.rejected[RejectionReason.QUEUE_FULL], m.depth) == (
            len(accepted),
            len(accepted),
            rejected,
            0,
        )
        assert len(accepted) + rejected == 900
        assert q.lease_stats().completed == len(accepted)
    finally:
        q.delete()


def test_consumer_processes_receive_every_job_exactly_once(redis_url: str, client: Any) -> None:
    name = unique_name("cons")
    q = RedisQueue(client, name, 1000, lease_s=30.0)
    try:
        results = q.enqueue_many(Task("m", 1, priority=PRIOS[i % 2], payload=i) for i in range(600))
        accepted = [r.job_id for r in results]
        assert all(r.accepted for r in results)
        q.close()
        with _spawn().Pool(3) as pool:
            consumed = pool.starmap(_consumer, [(redis_url, name, 1000, b) for b in (1, 5, 16)])
        received = [job_id for ids in consumed for job_id in ids]
        assert len(received) == len(set(received)) == 600
        assert set(received) == set(accepted)
        assert q.lease_stats().leased == 0
    finally:
        q.delete()


def _holder(url: str, name: str, count: int, conn: Any) -> None:
    q = RedisQueue(url, name, 100, lease_s=1.0)
    jobs = q.dequeue_many(count)
    conn.send([j.job_id for j in jobs])
    threading.Event().wait()  # hold the leases until killed


def _completer(url: str, name: str, count: int) -> list[str]:
    q = RedisQueue(url, name, 100, lease_s=1.0)
    done: list[str] = []
    try:
        while len(done) < count:
            job = q.dequeue(timeout=30)
            assert job is not None, f"only {done} came back"
            assert q.complete(job.job_id)
            done.append(job.job_id)
    finally:
        q.disconnect()
    return done


def test_killed_consumer_jobs_are_redelivered_and_completed_by_another(redis_url: str, client: Any) -> None:
    name = unique_name("kill")
    q = RedisQueue(client, name, 100, lease_s=1.0)
    try:
        enqueued = [r.job_id for r in q.enqueue_many(Task("m", 1, payload=i) for i in range(8))]
        ctx = _spawn()
        parent_end, child_end = ctx.Pipe()
        holder = ctx.Process(target=_holder, args=(redis_url, name, 5, child_end))
        holder.start()
        assert parent_end.poll(60)
        held = parent_end.recv()
        assert held == enqueued[:5]
        os.kill(holder.pid, 9)  # SIGKILL while holding five leases
        holder.join(30)
        assert holder.exitcode == -9
        with ctx.Pool(1) as pool:
            done = pool.apply(_completer, (redis_url, name, 8))
        assert sorted(done) == sorted(enqueued)  # the dead consumer's five included, each once
        stats = q.lease_stats()
        assert (stats.leased, stats.completed, stats.redelivered, stats.dead_lettered) == (0, 8, 5, 0)
        assert q.depth() == 0
    finally:
        q.delete()


# ---------------------------------------------------------------------------------------
# Redis restarts


def test_restart_with_append_only_file_loses_nothing(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, appendonly=True)
    server.start()
    fast_fail = redis.retry.Retry(redis.backoff.NoBackoff(), 1)
    c = redis.Redis(port=server.port, socket_timeout=5.0, socket_connect_timeout=1.0, retry=fast_fail)
    try:
        q = RedisQueue(c, "restart", 50, "drop-lru", lease_s=300.0)
        tasks = [Task("m", i + 1, priority=PRIOS[1 if i % 3 == 0 else 0], payload={"i": i}) for i in range(20)]
        accepted = [r.job_id for r in q.enqueue_many(tasks)]
        leased = q.dequeue_many(3)
        assert q.complete(leased[0].job_id)
        before = q.snapshot()
        assert len(before) == 17

        server.kill()  # a crash, not a clean shutdown
        for call in (
            lambda: q.enqueue(Task("m", 1)),
            lambda: q.dequeue(),
            lambda: q.dequeue(timeout=1.0),
            lambda: q.dequeue_many(4, timeout=None),
            lambda: q.depth(),
        ):
            with pytest.raises(QueueUnavailableError, match="Redis is unavailable for queue 'restart'"):
                call()

        server.start()
        assert q.snapshot() == before
        assert sorted(q.leased()) == sorted(j.job_id for j in leased[1:])
        new = q.enqueue(Task("m", 1))
        assert new.accepted and new.job_id not in accepted
        order = q.snapshot()
        assert set(order) == {*before, new.job_id}
        jobs = q.drain()
        assert [j.job_id for j in jobs] == order
        assert {j.job_id: j.task.payload for j in jobs if j.job_id != new.job_id} == {
            job_id: {"i": accepted.index(job_id)} for job_id in before
        }
        assert q.complete_many(j.job_id for j in leased[1:]) == 2
        m = q.metrics()
        assert (m.accepted, m.dequeued, m.drained) == (21, 3, 18)
    finally:
        c.close()
        server.stop()


# ---------------------------------------------------------------------------------------
# The CI rule


def test_missing_server_fails_under_ci_and_skips_otherwise(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env[URL_ENV] = f"redis://127.0.0.1:{free_port()}/0"  # nobody listens there
    # The same orchestrator_core as this process (the source tree or an installed wheel).
    env["PYTHONPATH"] = os.pathsep.join([str(Path(orchestrator_core.__file__).parents[1]), env.get("PYTHONPATH", "")])
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-rs",
        f"{ROOT / 'tests' / 'test_redis.py'}::test_timed_dequeue_on_empty_queue_returns_none",
    ]
    skipped = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout, skipped.stdout + skipped.stderr
    assert "does not answer PING" in skipped.stdout
    failed = subprocess.run(
        cmd, check=False, cwd=ROOT, env={**env, "CI": "1"}, capture_output=True, text=True, timeout=120
    )
    assert failed.returncode != 0, failed.stdout
    assert "CI is set but" in failed.stdout and "does not answer PING" in failed.stdout


def test_wait_histogram_buckets_match_the_engine_next_to_every_bound(client: Any) -> None:
    """Waits on and next to every bucket bound: the server's log2 must round as the engines' does."""
    clock = FakeClock(1000.0)
    model = _core_py.Queue(10_000, clock=clock, id_prefix="q")
    rq = RedisQueue(client, unique_name("hist"), 10_000, clock=clock, id_prefix="q", lease_s=None)
    try:
        enqueued_at = []
        for i in range(94):
            t = 1000.0 - 0.1 * 2 ** (i / 4) / 1000.0
            for _ in range(3):
                t = math.nextafter(t, -math.inf)
            for _ in range(7):  # three ulps either side of the bound, and the bound
                enqueued_at.append(t)
                t = math.nextafter(t, math.inf)
        for t in enqueued_at:
            clock.now = t
            model.enqueue(_core_py.Task("m", 1))
            rq.enqueue(Task("m", 1))
        clock.now = 1000.0
        got, want = rq.dequeue_many(10_000), model.dequeue_many(10_000)
        assert [j.wait_ms for j in got] == [j.wait_ms for j in want]
        assert rq.metrics().wait_histogram == model.metrics().wait_histogram
        assert rq.metrics().wait_sum_ms == model.metrics().wait_sum_ms
    finally:
        rq.delete()
