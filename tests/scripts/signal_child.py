"""Signals during blocking calls: ``python signal_child.py ENGINE SCENARIO``.

Scenarios that wait for a signal print ``{"event": "ready"}`` just before blocking; the
test then waits until every thread of this process sleeps (so the main thread really is
blocked in the engine) and sends the signal.

* ``dequeue-none`` / ``dequeue-timeout`` / ``dequeue-many``: the main thread blocks in
  ``dequeue(timeout=None)`` / ``dequeue(timeout=3600)`` / ``dequeue_many(4, timeout=None)``
  while a second thread is blocked in ``dequeue(timeout=None)`` too. SIGINT must raise
  KeyboardInterrupt in the main thread; afterwards a job the main thread enqueues must
  reach the other waiter (the interrupted waiter left the queue cleanly, the wake-up is
  not lost), and the main thread can block again and receive a job.
* ``uncaught``: the same, but nothing catches the KeyboardInterrupt: the process must die
  of it (traceback on stderr).
* ``handler-while-blocked``: a SIGUSR1 handler enqueues into the queue the main thread is
  blocked on; the main thread must return that job.
* ``handler-while-busy``: a SIGALRM interval timer's handler uses the queue (metrics,
  enqueue, dequeue, cancel, snapshot) while the main thread is busy with it; no deadlock
  (watchdog: exit 1 with tracebacks) and the counters balance (exit 2 otherwise). The pure
  engine refuses a call made while the handler interrupts one of its locked sections
  (RuntimeError "reentrant call to Queue.<method>()", which the handler catches and counts);
  any other exception ends the child with a traceback.
"""

from __future__ import annotations

import faulthandler
import importlib
import json
import signal
import sys
import threading
import time
from typing import Any

ENGINE = sys.argv[1]
SCENARIO = sys.argv[2]
impl: Any = importlib.import_module(f"orchestrator_core._core_{ENGINE}")
Task = impl.Task


def emit(**record: Any) -> None:
    print(json.dumps(record), flush=True)


def balanced(q: Any) -> bool:
    m = q.metrics()
    return bool(
        m.accepted == m.dequeued + m.cancelled + m.evicted + m.drained + m.expired + m.depth and m.depth == len(q)
    )


def interrupted_wait() -> None:
    q = impl.Queue(8, id_prefix="q")
    other: list[Any] = []
    other_waiter = threading.Thread(target=lambda: other.append(q.dequeue(timeout=None)), daemon=True)
    other_waiter.start()
    time.sleep(0.05)  # usually registers first; the checks below hold in either order
    emit(event="ready")
    if SCENARIO == "uncaught":
        q.dequeue(timeout=None)
        emit(event="not-interrupted")
        return
    try:
        if SCENARIO == "dequeue-none":
            q.dequeue(timeout=None)
        elif SCENARIO == "dequeue-timeout":
            q.dequeue(timeout=3600.0)
        else:
            q.dequeue_many(4, timeout=None)
    except KeyboardInterrupt:
        emit(event="interrupted")
    else:
        emit(event="not-interrupted")
        return
    # The other waiter receives the next job: the interrupted waiter does not swallow it.
    q.enqueue(Task("m", 1, job_id="after-interrupt"))
    other_waiter.join(10)
    other_got = [j.job_id for j in other if j is not None]
    # The main thread can wait again and be woken.
    threading.Timer(0.05, lambda: q.enqueue(Task("m", 1, job_id="second"))).start()
    job = q.dequeue(timeout=10)
    emit(
        event="after",
        other_waiter_got=other_got,
        main_got=None if job is None else job.job_id,
        depth=len(q),
        balanced=balanced(q),
    )


def handler_while_blocked() -> None:
    q = impl.Queue(8, id_prefix="q")
    signal.signal(signal.SIGUSR1, lambda signum, frame: q.enqueue(Task("m", 1, job_id="from-handler")))
    emit(event="ready")
    job = q.dequeue(timeout=None)
    emit(event="after", main_got=None if job is None else job.job_id, depth=len(q), balanced=balanced(q))


def handler_while_busy() -> None:
    faulthandler.dump_traceback_later(60, exit=True)
    q = impl.Queue(64, "drop-lru", id_prefix="q")
    counts = {"handler_calls": 0, "completed": 0, "refused": 0}

    def on_alarm(signum: int, frame: Any) -> None:
        counts["handler_calls"] += 1
        try:
            q.metrics()
            res = q.enqueue(Task("m", 1, priority="batch"))
            q.dequeue()
            if res.accepted:
                q.cancel(res.job_id)
            q.snapshot()
        except RuntimeError as exc:
            if not str(exc).startswith("reentrant call to Queue."):
                raise
            counts["refused"] += 1  # the handler interrupted a locked section (pure engine)
        else:
            counts["completed"] += 1

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
    task = Task("m", 1)
    ops = 0
    deadline_ops = 200_000 if ENGINE == "c" else 60_000
    while ops < deadline_ops:
        res = q.enqueue(task)
        if ops % 3 == 0:
            q.cancel(res.job_id)
        q.dequeue()
        if ops % 100 == 0:
            q.metrics()
            q.position(res.job_id)
        ops += 1
    signal.setitimer(signal.ITIMER_REAL, 0, 0)
    faulthandler.cancel_dump_traceback_later()
    ok = balanced(q)
    emit(event="after", ops=ops, balanced=ok, **counts)
    if not ok:
        sys.exit(2)


if __name__ == "__main__":
    if SCENARIO in ("dequeue-none", "dequeue-timeout", "dequeue-many", "uncaught"):
        interrupted_wait()
    elif SCENARIO == "handler-while-blocked":
        handler_while_blocked()
    elif SCENARIO == "handler-while-busy":
        handler_while_busy()
    else:
        raise SystemExit(f"unknown scenario {SCENARIO!r}")
