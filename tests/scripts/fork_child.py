"""Fork while other threads use the queues: ``python fork_child.py ENGINE FORKS``.

The parent keeps worker threads hammering ``busy`` (enqueue, dequeue, cancel, metrics)
and one thread blocked in ``idle.dequeue(timeout=None)``, and forks ``FORKS`` times. Each
child, under a watchdog (SIGALRM after ``CHILD_TIMEOUT_S``: a hang kills it), must either
use both queues fully - the counters of ``busy`` balance, a job enqueued into ``idle`` by
a child thread reaches a consumer blocked in the child, ``close()`` wakes another - or
get a clear error (a RuntimeError that mentions fork) from the engine; it exits 0 (works)
or 4 (clear error), anything else is a failure (5-7: a lost wake-up, -14: hung, killed by
the watchdog, -11: crashed). The parent stops at the first failure, reports the children's
statuses as one JSON line, then checks that its own blocked thread still gets a job.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import threading
import time
import warnings
from typing import Any

ENGINE = sys.argv[1]
FORKS = int(sys.argv[2]) if len(sys.argv) > 2 else 8
CHILD_TIMEOUT_S = 6
impl: Any = importlib.import_module(f"orchestrator_core._core_{ENGINE}")
Task = impl.Task

warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() with threads running


def child(busy: Any, idle: Any) -> int:
    signal.alarm(CHILD_TIMEOUT_S)
    try:
        # 1. The busy queue: every operation, then the counters must balance.
        res = busy.enqueue(Task("m", 1, job_id="child-job"))
        busy.position("child-job")
        busy.touch("child-job")
        busy.dequeue()
        busy.cancel("child-job")
        busy.metrics()
        busy.drain()
        m = busy.metrics()
        if m.accepted != m.dequeued + m.cancelled + m.evicted + m.drained + m.expired + m.depth or m.depth != 0:
            return 3
        if not res.accepted:
            return 3
        # 2. The idle queue (a parent thread was blocked on it): a consumer blocked in the
        #    child receives a job a child thread enqueues - the wake-up goes to a live waiter.
        got: list[Any] = []
        consumer = threading.Thread(target=lambda: got.append(idle.dequeue(timeout=None)), daemon=True)
        consumer.start()
        time.sleep(0.05)
        idle.enqueue(Task("m", 1, job_id="for-child-consumer"))
        consumer.join(CHILD_TIMEOUT_S / 3)
        if consumer.is_alive() or not got or got[0] is None or got[0].job_id != "for-child-consumer":
            return 5
        # 3. The main thread blocks; a timer thread enqueues.
        threading.Timer(0.05, lambda: idle.enqueue(Task("m", 1, job_id="for-child-main"))).start()
        job = idle.dequeue(timeout=None)
        if job is None or job.job_id != "for-child-main":
            return 6
        # 4. close() wakes a blocked consumer.
        closed: list[Any] = []
        waiter = threading.Thread(target=lambda: closed.append(idle.dequeue(timeout=None)), daemon=True)
        waiter.start()
        time.sleep(0.05)
        idle.close()
        waiter.join(CHILD_TIMEOUT_S / 3)
        if waiter.is_alive() or closed != [None]:
            return 7
        return 0
    except RuntimeError as exc:
        return 4 if "fork" in str(exc) else 8


def main() -> None:
    busy = impl.Queue(256, "drop-lru", id_prefix="b")
    idle = impl.Queue(16, "reject-new", id_prefix="i")
    stop = threading.Event()

    def hammer(k: int) -> None:
        task = Task("m", 1, priority="batch" if k % 2 else "interactive")
        n = 0
        while not stop.is_set():
            res = busy.enqueue(task)
            if n % 3 == 0 and res.accepted:
                busy.cancel(res.job_id)
            busy.dequeue()
            if n % 50 == 0:
                busy.metrics()
                busy.snapshot()
            n += 1

    parent_got: list[Any] = []
    blocked = threading.Thread(target=lambda: parent_got.append(idle.dequeue(timeout=None)), daemon=True)
    blocked.start()
    workers = [threading.Thread(target=hammer, args=(k,), daemon=True) for k in range(3)]
    for t in workers:
        t.start()
    time.sleep(0.2)
    statuses = []
    for _ in range(FORKS):
        time.sleep(0.01)
        pid = os.fork()
        if pid == 0:
            code = 9
            try:
                code = child(busy, idle)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        statuses.append(os.waitstatus_to_exitcode(status))
        if statuses[-1] not in (0, 4):
            break  # one failure is enough (a hung child costs CHILD_TIMEOUT_S)
    stop.set()
    for t in workers:
        t.join()
    # The parent's own blocked consumer was not disturbed by the children.
    idle.enqueue(Task("m", 1, job_id="for-parent"))
    blocked.join(CHILD_TIMEOUT_S)
    parent_ok = not blocked.is_alive() and [j.job_id for j in parent_got] == ["for-parent"]
    m = busy.metrics()
    balanced = m.accepted == m.dequeued + m.cancelled + m.evicted + m.drained + m.expired + m.depth
    print(
        json.dumps({"engine": ENGINE, "statuses": statuses, "parent_ok": parent_ok, "balanced": balanced}), flush=True
    )


if __name__ == "__main__":
    main()
