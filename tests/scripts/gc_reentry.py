"""The cyclic GC must never run user code while the engine's lock is held.

``python gc_reentry.py ENGINE``: for every queue operation, and for every point in that
operation where an allocation could start a collection, a garbage cycle whose ``__del__``
uses the same queue (enqueue, dequeue, cancel, metrics, snapshot) is made collectable and
the GC threshold is set so that the k-th allocation from then on collects it (k swept from
0 to ``SWEEP``). If a collection ever happens inside the locked part, the ``__del__``
calls into a lock its own thread holds: a deadlock, which the watchdog turns into a
traceback on stderr and exit status 1. Prints one JSON line: how many collections ran
the ``__del__`` during an operation (the compiled engine's own objects come from free
lists, which do not count towards a collection, so fewer operations fire there), and
that the queue's counters still balance after every operation.
"""

from __future__ import annotations

import faulthandler
import gc
import importlib
import json
import sys
import time
from collections.abc import Callable
from typing import Any

ENGINE = sys.argv[1]
SWEEP = int(sys.argv[2]) if len(sys.argv) > 2 else 32
impl: Any = importlib.import_module(f"orchestrator_core._core_{ENGINE}")
Task = impl.Task

state = {"in_op": False, "inside": 0, "outside": 0, "errors": 0}
current: dict[str, Any] = {}
error_samples: list[str] = []  # the first few errors, for the report


class Bomb:
    """Part of a reference cycle; when the GC frees it, it uses the queue."""

    def __init__(self) -> None:
        self.cycle = self

    def __del__(self) -> None:
        q = current["q"]
        if state["in_op"]:
            state["inside"] += 1
        else:
            state["outside"] += 1
        try:
            q.metrics()
            q.enqueue(Task("m", 1, job_id=f"from-del-{state['inside']}-{state['outside']}"))
            q.dequeue()
            q.cancel("not-there")
            q.snapshot()
            _ = len(q)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            state["errors"] += 1
            if len(error_samples) < 5:
                error_samples.append(f"{current.get('op')} k={current.get('k')}: {exc!r}")


def setup(policy: str, fill: int, capacity: int = 4, **queue_kw: Any) -> Any:
    q = impl.Queue(capacity, policy, id_prefix="q", **queue_kw)
    for i in range(fill):
        q.enqueue(Task("m", 1, priority="batch" if i % 2 else "interactive", job_id=f"j{i}", tenant=f"t{i % 2}"))
    return q


def expired_setup() -> Any:
    q = setup("reject-new", 3, max_wait_ms=0.001)
    time.sleep(0.002)
    return q


def plain(fill: int, capacity: int = 100, policy: str = "reject-new", **queue_kw: Any) -> Any:
    """One lane (no tenants), every job a batch job."""
    q = impl.Queue(capacity, policy, id_prefix="q", **queue_kw)
    for i in range(fill):
        q.enqueue(Task("m", 1, priority="batch", job_id=f"j{i}"))
    return q


def tenants(fill: int, n: int = 3, policy: str = "drop-lru") -> Any:
    """Batch jobs of ``n`` tenants, uneven (the first tenant has the most)."""
    q = impl.Queue(100, policy, id_prefix="q")
    for i in range(fill):
        q.enqueue(Task("m", 1, priority="batch", job_id=f"j{i}", tenant=f"t{min(i % (n + 1), n - 1)}"))
    return q


def tombstones(q: Any) -> Any:
    """Cancel every other job of ``q`` but the first: tombstones inside the ring."""
    for job_id in q.snapshot()[1::2]:
        q.cancel(job_id)
    return q


def cancel_many(q: Any) -> None:
    """Enough cancels from the middle of one lane that it compacts (and shrinks)."""
    for i in range(1, 70):
        q.cancel(f"j{i}")


def half_expired() -> Any:
    q = plain(0)
    for i in range(4):
        q.enqueue(Task("m", 1, priority="batch", job_id=f"old{i}", max_wait_ms=0.001 if i % 2 else 60_000.0))
    time.sleep(0.002)
    return q


OPS: dict[str, tuple[Callable[[], Any], Callable[[Any], Any]]] = {
    "enqueue-accepted": (lambda: setup("reject-new", 1), lambda q: q.enqueue(Task("m", 1))),
    "enqueue-refused-full": (lambda: setup("reject-new", 4), lambda q: q.enqueue(Task("m", 1))),
    "enqueue-evicts": (lambda: setup("drop-lru", 4), lambda q: q.enqueue(Task("m", 1, job_id="new"))),
    "enqueue-fail-fast-refused": (lambda: setup("fail-fast", 1), lambda q: q.enqueue(Task("m", 1))),
    "enqueue-duplicate": (lambda: setup("reject-new", 2), lambda q: q.enqueue(Task("m", 1, job_id="j0"))),
    "enqueue-grows-ring": (lambda: setup("reject-new", 8, capacity=100), lambda q: q.enqueue(Task("m", 1))),
    "dequeue": (lambda: setup("reject-new", 3), lambda q: q.dequeue()),
    "dequeue-timeout": (lambda: setup("reject-new", 3), lambda q: q.dequeue(timeout=0.5)),
    "dequeue-empty-timeout": (lambda: setup("reject-new", 0), lambda q: q.dequeue(timeout=1e-6)),
    "dequeue-many": (lambda: setup("reject-new", 4), lambda q: q.dequeue_many(3, timeout=0.5)),
    "drain": (lambda: setup("drop-lru", 4), lambda q: q.drain()),
    "cancel": (lambda: setup("reject-new", 4), lambda q: q.cancel("j2")),
    "touch": (lambda: setup("drop-lru", 4), lambda q: q.touch("j1")),
    "position": (lambda: setup("reject-new", 4), lambda q: (q.cancel("j1"), q.position("j3"))),
    "contains": (lambda: setup("reject-new", 2), lambda q: "j1" in q),
    "snapshot": (lambda: setup("reject-new", 4), lambda q: q.snapshot()),
    "lru-order": (lambda: setup("drop-lru", 4), lambda q: q.lru_order("batch")),
    "metrics": (lambda: setup("reject-new", 3), lambda q: q.metrics()),
    "close": (lambda: setup("reject-new", 2), lambda q: q.close()),
    # Deadlines, tenants, token budgets, admission waits (issue 10)
    "enqueue-wait-room": (lambda: setup("reject-new", 1), lambda q: q.enqueue(Task("m", 1), wait=0.5)),
    "enqueue-wait-full": (lambda: setup("reject-new", 4), lambda q: q.enqueue(Task("m", 1), wait=1e-6)),
    "enqueue-tenant-cap": (
        lambda: setup("reject-new", 2, max_queued_per_tenant=1),
        lambda q: q.enqueue(Task("m", 1, tenant="t0")),
    ),
    "enqueue-token-budget": (
        lambda: setup("reject-new", 2, max_queued_tokens=3),
        lambda q: q.enqueue(Task("m", 5)),
    ),
    "enqueue-deadline": (
        lambda: setup("reject-new", 2, admit_only_feasible=True),
        lambda q: q.enqueue(Task("m", 1, max_wait_ms=0.001)),
    ),
    "take-expired": (expired_setup, lambda q: q.take_expired()),
    # Rarer internal paths: round robin over tenants, ring shrinking and compaction, the
    # tombstone tree, deadline sweeps inside other operations, multi-job evictions.
    "enqueue-plain-grows-ring": (lambda: plain(8), lambda q: q.enqueue(Task("m", 1, priority="batch"))),
    "enqueue-tenant-joins": (lambda: tenants(5), lambda q: q.enqueue(Task("m", 1, priority="batch", tenant="new"))),
    "enqueue-evicts-tokens": (
        lambda: plain(4, policy="drop-lru", max_queued_tokens=4),
        lambda q: q.enqueue(Task("m", 3, priority="batch", job_id="big")),
    ),
    "enqueue-evicts-tenants": (
        lambda: tenants(9, policy="drop-lru"),
        lambda q: [q.enqueue(Task("m", 1, tenant="t1")) for _ in range(2)],
    ),
    "dequeue-tenants": (lambda: tenants(7), lambda q: q.dequeue_many(5)),
    "dequeue-many-shrinks-ring": (lambda: plain(40), lambda q: q.dequeue_many(40)),
    "dequeue-expires": (half_expired, lambda q: q.dequeue()),
    "cancel-compacts": (lambda: plain(80), cancel_many),
    "position-tombstones": (
        lambda: tombstones(plain(20)),
        lambda q: (q.position("j18"), q.cancel("j16"), q.position("j18")),  # built, then updated
    ),
    "position-tenants": (lambda: tombstones(tenants(12)), lambda q: q.position("j8")),
    "snapshot-tenants": (lambda: tenants(9), lambda q: q.snapshot()),
    "lru-order-tenants": (lambda: tenants(9), lambda q: (q.touch("j0"), q.lru_order("batch"))),
    "drain-tenants": (lambda: tenants(9), lambda q: q.drain()),
    "metrics-after-waits": (lambda: (lambda q: (q.dequeue(), q.dequeue(), q)[2])(plain(6)), lambda q: q.metrics()),
    "len-expires": (half_expired, lambda q: len(q)),
    "eta": (lambda: setup("reject-new", 4), lambda q: q.eta_ms("j3")),
}


def check(q: Any, where: str) -> None:
    m = q.metrics()
    ok = (
        m.accepted == m.dequeued + m.cancelled + m.evicted + m.drained + m.expired + m.depth
        and len(q) == m.depth == len(q.snapshot())
        and m.depth <= q.capacity()
    )
    if not ok:
        print(json.dumps({"inconsistent": where, "metrics": repr(m)}), flush=True)
        sys.exit(2)


def main() -> None:
    threshold = gc.get_threshold()
    per_op: dict[str, int] = {}
    for name, (make, op) in OPS.items():
        # Each operation's sweep takes well under a second; a deadlock ends here, with tracebacks.
        faulthandler.dump_traceback_later(10, exit=True)
        before = state["inside"]
        current["op"] = name
        for k in range(SWEEP):
            current["k"] = k
            q = make()
            current["q"] = q
            gc.collect()
            Bomb()
            gc.set_threshold(gc.get_count()[0] + k)
            state["in_op"] = True
            try:
                op(q)
            finally:
                state["in_op"] = False
                gc.set_threshold(*threshold)
            gc.collect()
            check(q, f"{name} k={k}")
        per_op[name] = state["inside"] - before
    faulthandler.cancel_dump_traceback_later()
    summary = {"engine": ENGINE, "ops": len(OPS), "sweep": SWEEP, "inside_per_op": per_op, **state}
    print(json.dumps({**summary, "error_samples": error_samples}), flush=True)


if __name__ == "__main__":
    main()
