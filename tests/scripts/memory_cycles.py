"""Memory stays flat over many cycles: ``python memory_cycles.py ENGINE SCALE``.

For each scenario (a cycle that leaves the queue as it found it), runs a warm-up, then
``cycles`` cycles under tracemalloc and reports the change in traced memory; then runs the
main enqueue/dequeue cycle and every scenario again without tracemalloc and reports the
change in resident size (Linux: /proc/self/statm). Prints one JSON object per line.
Every scenario keeps the queue's depth bounded, so anything that grows is a leak.

Cycle counts are per engine (the pure engine is ~6x slower, and ~15x slower under
tracemalloc), multiplied by SCALE (1 by default; the slow test uses 10). At SCALE 1 the
compiled engine runs 1,000,000 enqueue/dequeue cycles for the resident-size check.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import sys
import time
import tracemalloc
from collections.abc import Callable
from typing import Any

ENGINE = sys.argv[1]
SCALE = float(sys.argv[2]) if len(sys.argv) > 2 else 1.0
impl: Any = importlib.import_module(f"orchestrator_core._core_{ENGINE}")

# cycles under tracemalloc per scenario / main cycles for RSS / cycles per scenario for RSS
COUNTS = {"c": (20_000, 1_000_000, 10_000), "py": (2_000, 150_000, 2_000)}
TRACED, RSS_MAIN, RSS_EACH = (int(n * SCALE) for n in COUNTS[ENGINE])
# Scenarios that cost many times an enqueue/dequeue run fewer cycles (still thousands).
WEIGHT = {"metrics-snapshot": 0.1, "close-and-free": 0.25, "drain": 0.5, "cancel-touch-position": 0.5}
WARMUP = 1_000


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Payload:
    __slots__ = ("n", "__weakref__")

    def __init__(self, n: int) -> None:
        self.n = n


def scenarios() -> dict[str, Callable[[int], None]]:
    Task = impl.Task
    Queue = impl.Queue
    shared = Task("m", 1)

    q1 = Queue(100, "reject-new", id_prefix="a")

    def enqueue_dequeue(i: int) -> None:
        q1.enqueue(shared)
        q1.dequeue()

    q2 = Queue(100, "reject-new", id_prefix="b")

    def fresh_task_own_id(i: int) -> None:
        q2.enqueue(Task("m", 1 + i % 5, f"s{i}", payload=Payload(i), priority="batch" if i & 1 else "interactive"))
        q2.dequeue_many(2)

    q3 = Queue(100, "reject-new", id_prefix="c")

    def caller_ids(i: int) -> None:
        # A fresh str id each time: a leaked reference to the key would keep it alive.
        q3.enqueue(Task("m", 1, job_id=f"job-{i}", payload=Payload(i)))
        q3.dequeue()

    q4 = Queue(4, "reject-new", id_prefix="d")
    for _ in range(4):
        q4.enqueue(shared)

    def reject_new_full(i: int) -> None:
        q4.enqueue(Task("m", 1, job_id=f"r-{i}", payload=Payload(i)))

    q5 = Queue(4, "drop-lru", id_prefix="e")
    for k in range(4):
        q5.enqueue(Task("m", 1, priority="batch", job_id=f"seed-{k}"))

    def drop_lru_evicts(i: int) -> None:
        res = q5.enqueue(Task("m", 1, priority="batch", job_id=f"v-{i}", payload=Payload(i)))
        assert res.evicted is not None

    q6 = Queue(4, "fail-fast", id_prefix="f")

    def fail_fast(i: int) -> None:
        q6.enqueue(Task("m", 1, payload=Payload(i)))
        q6.enqueue(Task("m", 1, payload=Payload(i)))  # refused: one job ahead
        q6.dequeue()

    q7 = Queue(64, "drop-lru", id_prefix="g")

    def cancel_touch_position(i: int) -> None:
        ids = [q7.enqueue(Task("m", 1, job_id=f"k{i}-{j}", payload=Payload(j))).job_id for j in range(4)]
        q7.cancel(ids[1])  # a tombstone in the middle: Fenwick tree and pending list
        q7.position(ids[3])
        q7.touch(ids[2])
        q7.cancel(ids[0])
        q7.cancel("missing")
        q7.dequeue_many(4)

    q8 = Queue(16, "reject-new", id_prefix="h")

    def drain(i: int) -> None:
        for j in range(5):
            q8.enqueue(Task("m", 1, job_id=f"d{i}-{j}" if j & 1 else None, payload=Payload(j)))
        q8.drain()

    def close_and_free(i: int) -> None:
        q = Queue(8, "drop-lru", id_prefix="i")
        for j in range(3):
            q.enqueue(Task("m", 1, job_id=f"c{j}" if j else None, payload=Payload(j)))
        q.close()
        q.enqueue(shared)  # refused: closed
        # the queue is freed here with three jobs still queued

    q9 = Queue(8, "reject-new", id_prefix="j")

    def timed_waits(i: int) -> None:
        q9.dequeue(timeout=1e-9)  # allocates and frees a waiter each time
        q9.dequeue_many(4, timeout=1e-9)

    q10 = Queue(32, "drop-lru", id_prefix="k")
    for k in range(20):
        q10.enqueue(Task("m", 1, priority="batch" if k & 1 else "interactive"))

    def snapshots(i: int) -> None:
        q10.metrics()
        q10.snapshot()
        q10.lru_order("batch")
        q10.enqueue(shared)
        q10.dequeue()

    return {
        "enqueue-dequeue": enqueue_dequeue,
        "fresh-task-own-id": fresh_task_own_id,
        "caller-ids": caller_ids,
        "reject-new-full": reject_new_full,
        "drop-lru-evicts": drop_lru_evicts,
        "fail-fast": fail_fast,
        "cancel-touch-position": cancel_touch_position,
        "drain": drain,
        "close-and-free": close_and_free,
        "timed-waits": timed_waits,
        "metrics-snapshot": snapshots,
    }


def run(fn: Callable[[int], None], n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        fn(i)


def main() -> None:
    gc.collect()
    all_scenarios = scenarios()
    for fn in all_scenarios.values():
        run(fn, WARMUP)
    # 1. tracemalloc: traced memory after cycles == before (per scenario).
    tracemalloc.start()
    for name, fn in all_scenarios.items():
        run(fn, WARMUP, start=10_000_000)  # warm up again under tracing (freelists, dict sizes)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        cycles = int(TRACED * WEIGHT.get(name, 1.0))
        run(fn, cycles, start=20_000_000)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        print(
            json.dumps(
                {
                    "phase": "traced",
                    "scenario": name,
                    "cycles": cycles,
                    "delta_bytes": after - before,
                    "seconds": round(time.perf_counter() - t0, 3),
                }
            ),
            flush=True,
        )
    tracemalloc.stop()
    # 2. resident size after the main cycle and every scenario again, untraced.
    gc.collect()
    rss_before = rss_bytes()
    t0 = time.perf_counter()
    run(all_scenarios["enqueue-dequeue"], RSS_MAIN, start=30_000_000)
    for name, fn in all_scenarios.items():
        run(fn, int(RSS_EACH * WEIGHT.get(name, 1.0)), start=40_000_000)
    gc.collect()
    rss_after = rss_bytes()
    print(
        json.dumps(
            {
                "phase": "rss",
                "main_cycles": RSS_MAIN,
                "cycles_each": RSS_EACH,
                "scenarios": len(all_scenarios),
                "delta_bytes": rss_after - rss_before,
                "rss_bytes": rss_after,
                "seconds": round(time.perf_counter() - t0, 3),
            }
        ),
        flush=True,
    )


if __name__ == "__main__":
    main()
