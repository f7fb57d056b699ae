"""The compiled engine's optional GIL release around short operations keeps entries safe.

Regression test: with the GIL released around the locked part of ``enqueue``, a consumer
could dequeue and free a new entry before the producer had finished with it (duplicate
job ids, use after free). References are now taken before the entry becomes visible.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from .conftest import core_c

pytestmark = pytest.mark.c_extension


@pytest.fixture
def release_gil() -> Iterator[None]:
    assert core_c is not None
    core_c._set_release_gil(True)
    try:
        yield
    finally:
        core_c._set_release_gil(False)


@pytest.mark.parametrize("prebuilt_task", [True, False])
def test_two_producers_two_consumers_with_the_gil_released(release_gil: None, prebuilt_task: bool) -> None:
    assert core_c is not None
    q = core_c.Queue(1024)
    per_producer = 20_000
    task = core_c.Task("m", 1)
    accepted: list[list[str]] = [[], []]
    received: list[list[Any]] = [[], []]
    done = threading.Event()

    def produce(k: int) -> None:
        out = accepted[k]
        sent = 0
        while sent < per_producer:
            res = q.enqueue(task if prebuilt_task else core_c.Task("m", 1, payload=[k, sent]))
            if res.accepted:
                out.append(res.job_id)
                sent += 1

    def consume(k: int) -> None:
        out = received[k]
        while not (done.is_set() and q.depth() == 0):
            job = q.dequeue(timeout=0.05)
            if job is not None:
                out.append((job.job_id, job.task.model))

    producers = [threading.Thread(target=produce, args=(k,)) for k in range(2)]
    consumers = [threading.Thread(target=consume, args=(k,)) for k in range(2)]
    for t in producers + consumers:
        t.start()
    for t in producers:
        t.join()
    done.set()
    for t in consumers:
        t.join()
    sent_ids = accepted[0] + accepted[1]
    got_ids = [job_id for job_id, _ in received[0] + received[1]]
    assert len(set(sent_ids)) == len(sent_ids) == 2 * per_producer
    assert Counter(got_ids) == Counter(sent_ids)
    assert all(model == "m" for _, model in received[0] + received[1])
    m = q.metrics()
    assert m.accepted == m.dequeued == 2 * per_producer
