"""``python -m orchestrator_core bench``: a short side-by-side comparison with the standard library's queues.

Runs on the user's machine in a few seconds (``--seconds``, default 3; ``--quick`` for about 1), using only the
standard library (``timeit`` and ``time.perf_counter``), and prints a Markdown table: for every scenario and
implementation the median figure and how many times faster it is than ``queue.Queue`` and than
``collections.deque`` in the same scenario (above 1 = faster). Both engines are measured; only the pure one
when the compiled engine is absent (or ``ORCHESTRATOR_CORE_NO_EXTENSIONS`` is set).

The full benchmark suite, with baselines and regression checks, is ``pytest benchmarks --benchmark-only``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import math
import os
import platform
import queue
import statistics
import sys
import threading
import time
import timeit
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from types import ModuleType
from typing import Any, TextIO

__all__ = ["ConservationError", "Row", "engines", "format_table", "main", "run"]

DEFAULT_SECONDS = 3.0
QUICK_SECONDS = 1.0
REPEATS = 5
CAPACITY = 1024
FILL_DEPTH = 1000
THREAD_PAIRS = 2
ROUND_ITEMS = 4000
MIN_WAKEUPS = 10
MAX_WAKEUPS = 100
WAKEUP_SETTLE_S = 0.0005
MODEL = "llama-3.1-8b-instruct"
MAX_TOKENS = 100
SESSION = "sess-123"

PEERS = ("deque", "SimpleQueue", "queue.Queue", "asyncio.Queue")
THREAD_PEERS = ("queue.Queue", "SimpleQueue")

# Shares of the time budget.
_MICRO_SHARE = 0.5
_CONTENDED_SHARE = 0.3
_WAKEUP_SHARE = 0.2


@dataclass(frozen=True)
class Row:
    """One measured figure: ``value`` in ``unit`` for ``implementation`` in ``scenario``.

    ``higher_is_better`` is True for throughputs, False for times.
    """

    scenario: str
    implementation: str
    value: float
    unit: str
    higher_is_better: bool = False


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def engines() -> dict[str, ModuleType]:
    """The engines to measure: ``{"c": _core_c, "py": _core_py}``, or only ``py`` without the compiled one."""
    out: dict[str, ModuleType] = {}
    if not _flag("ORCHESTRATOR_CORE_NO_EXTENSIONS") and platform.python_implementation() == "CPython":
        with contextlib.suppress(ImportError):
            out["c"] = importlib.import_module("orchestrator_core._core_c")
    out["py"] = importlib.import_module("orchestrator_core._core_py")
    return out


# ---------------------------------------------------------------------------------------
# single thread


def _namespace(impl: str, mods: dict[str, ModuleType], capacity: int) -> dict[str, Any]:
    """Globals for timeit: ``put``, ``get``, a prebuilt ``item``, ``Task`` (engines) and a request's fields."""
    ns: dict[str, Any] = {"m": MODEL, "n": MAX_TOKENS, "s": SESSION, "r": range(FILL_DEPTH)}
    if impl in mods:
        mod = mods[impl]
        q = mod.Queue(capacity)
        ns.update(put=q.enqueue, get=q.dequeue, item=mod.Task(MODEL, MAX_TOKENS, SESSION), Task=mod.Task)
        return ns
    ns["item"] = object()
    if impl == "deque":
        d: deque[Any] = deque()
        ns.update(put=d.append, get=d.popleft)
    elif impl == "SimpleQueue":
        sq: queue.SimpleQueue[Any] = queue.SimpleQueue()
        ns.update(put=sq.put, get=sq.get)
    elif impl == "queue.Queue":
        qq: queue.Queue[Any] = queue.Queue(maxsize=capacity)
        ns.update(put=qq.put, get=qq.get)
    else:
        aq: asyncio.Queue[Any] = asyncio.Queue(maxsize=capacity)
        ns.update(put=aq.put_nowait, get=aq.get_nowait)
    return ns


def _calibrate(timer: timeit.Timer, per_repeat: float) -> int:
    """How many executions take about ``per_repeat`` seconds (the runs double as a warm-up)."""
    number = 1
    while True:
        elapsed = timer.timeit(number)
        if elapsed >= per_repeat:
            return number
        number = max(number * 2, int(number * per_repeat / elapsed * 1.1) if elapsed > 0 else number * 10)


def _single_thread(mods: dict[str, ModuleType], budget_s: float) -> list[Row]:
    """Time per operation; the implementations' repeats are interleaved so a burst of load hits them alike."""
    impls = [*mods, *PEERS]
    fill = "for _ in r: put(item)\nfor _ in r: get()"
    # (scenario, statement for the engines, statement for the peers, operations per statement)
    scenarios: list[tuple[str, str, str, int]] = [
        ("pair", "put(item); get()", "put(item); get()", 1),
        ("request path", "put(Task(m, n, s)); get()", "put((m, n, s)); get()", 1),
        (f"fill/drain {FILL_DEPTH}", fill, fill, FILL_DEPTH),
    ]
    per_repeat = max(budget_s / (len(scenarios) * len(impls) * (REPEATS + 2)), 0.0005)
    rows = []
    for scenario, engine_stmt, peer_stmt, ops in scenarios:
        timers = {
            impl: timeit.Timer(
                engine_stmt if impl in mods else peer_stmt,
                globals=_namespace(impl, mods, max(CAPACITY, FILL_DEPTH)),
            )
            for impl in impls
        }
        numbers = {impl: _calibrate(timer, per_repeat) for impl, timer in timers.items()}
        times: dict[str, list[float]] = {impl: [] for impl in impls}
        for _ in range(REPEATS):
            for impl in impls:
                times[impl].append(timers[impl].timeit(numbers[impl]) / (numbers[impl] * ops))
        rows += [Row(scenario, impl, statistics.median(times[impl]) * 1e9, "ns/op") for impl in impls]
    return rows


# ---------------------------------------------------------------------------------------
# threads


class ConservationError(AssertionError):
    """Items sent and items received differ: a bug in the queue under test."""


def _contended_round(impl: str, mods: dict[str, ModuleType], items: int) -> float:
    """Seconds for ``THREAD_PAIRS`` producers and as many consumers to move ``items`` through capacity 1024."""
    n = THREAD_PAIRS
    per = items // n
    start = threading.Event()
    sent: list[list[Any]] = [[] for _ in range(n)]
    got: list[list[Any]] = [[] for _ in range(n)]
    stop = object()
    finish: Callable[[], None]
    if impl in mods:
        mod = mods[impl]
        q = mod.Queue(CAPACITY)
        # Prebuilt items, as the peers' integers: each producer's own tasks, with caller-chosen ids.
        tasks = [[mod.Task(MODEL, MAX_TOKENS, SESSION, job_id=f"p{k}-{i}") for i in range(per)] for k in range(n)]

        def produce(k: int) -> None:
            start.wait()
            enqueue, append = q.enqueue, sent[k].append
            for task in tasks[k]:
                res = enqueue(task, 1.0)  # full: wait for room (as queue.Queue's put blocks)
                while not res.accepted:
                    res = enqueue(task, 1.0)
                append(task.job_id)

        def consume(out: list[Any]) -> None:
            start.wait()
            dequeue, append = q.dequeue, out.append
            while True:
                job = dequeue(0.05)
                if job is not None:
                    append(job.job_id)
                elif q.closed and not q.depth():
                    return

        finish = q.close
    else:
        pq: queue.Queue[Any] | queue.SimpleQueue[Any] = (
            queue.Queue(maxsize=CAPACITY) if impl == "queue.Queue" else queue.SimpleQueue()
        )

        def produce(k: int) -> None:
            start.wait()
            put, append = pq.put, sent[k].append
            for item in range(k * per, (k + 1) * per):  # each producer sends its own integers
                put(item)
                append(item)

        def consume(out: list[Any]) -> None:
            start.wait()
            get, append, empty = pq.get, out.append, queue.Empty
            while True:
                try:
                    item = get(timeout=0.05)
                except empty:
                    continue
                if item is stop:
                    return
                append(item)

        def finish() -> None:
            for _ in range(n):
                pq.put(stop)

    producers = [threading.Thread(target=produce, args=(i,), daemon=True) for i in range(n)]
    consumers = [threading.Thread(target=consume, args=(got[i],), daemon=True) for i in range(n)]
    for t in producers + consumers:
        t.start()
    t0 = time.perf_counter()
    start.set()
    for t in producers:
        t.join()
    finish()
    for t in consumers:
        t.join()
    elapsed = time.perf_counter() - t0
    sent_all = Counter(x for part in sent for x in part)
    got_all = Counter(x for part in got for x in part)
    if sum(sent_all.values()) != per * n or max(sent_all.values()) != 1 or got_all != sent_all:
        raise ConservationError(f"{impl}: items sent and received differ ({len(sent_all)} sent, {len(got_all)} got)")
    return elapsed


def _contended(mods: dict[str, ModuleType], budget_s: float) -> list[Row]:
    """Median throughput over rounds of ``ROUND_ITEMS`` items, the implementations' rounds interleaved."""
    impls = [*mods, *THREAD_PEERS]
    rates: dict[str, list[float]] = {impl: [] for impl in impls}
    spent = 0.0
    # At least one round each, then more while the budget lasts (up to 25).
    while not rates[impls[0]] or (spent < budget_s and len(rates[impls[0]]) < 25):
        for impl in impls:
            elapsed = _contended_round(impl, mods, ROUND_ITEMS)
            spent += elapsed
            rates[impl].append(ROUND_ITEMS / elapsed)
    scenario = f"{THREAD_PAIRS}p+{THREAD_PAIRS}c threads"
    return [Row(scenario, impl, statistics.median(rates[impl]), "items/s", True) for impl in impls]


def _wakeups(impl: str, mods: dict[str, ModuleType], budget_s: float) -> list[float]:
    """Wake-up latencies (s) of a consumer blocked in a get with a timeout, from just before the put."""
    count = max(MIN_WAKEUPS, min(MAX_WAKEUPS, int(budget_s / (WAKEUP_SETTLE_S + 0.0002))))
    woke = [0.0] * count
    sent = [0.0] * count
    ack = threading.Semaphore(0)
    put: Callable[[], Any]
    get: Callable[[], Any]
    if impl in mods:
        mod = mods[impl]
        q = mod.Queue(CAPACITY)
        put = partial(q.enqueue, mod.Task(MODEL, MAX_TOKENS, SESSION))
        get = partial(q.dequeue, 5.0)
    else:
        pq: queue.Queue[Any] | queue.SimpleQueue[Any] = (
            queue.Queue(maxsize=CAPACITY) if impl == "queue.Queue" else queue.SimpleQueue()
        )
        put = partial(pq.put, 1)
        get = partial(pq.get, timeout=5.0)
    missed: list[int] = []

    def consumer() -> None:
        clock = time.perf_counter
        for i in range(count):
            item = get()
            woke[i] = clock()
            if item is None:
                missed.append(i)
            ack.release()

    thread = threading.Thread(target=consumer, daemon=True)
    thread.start()
    try:
        for i in range(count):
            time.sleep(WAKEUP_SETTLE_S)  # the consumer is blocked in its get by now
            sent[i] = time.perf_counter()
            put()
            if not ack.acquire(timeout=10.0):
                raise ConservationError(f"{impl}: the blocked consumer did not wake up")
    finally:
        thread.join(timeout=10.0)
    if missed:
        raise ConservationError(f"{impl}: a woken consumer got nothing ({len(missed)} times)")
    return [w - s for w, s in zip(woke, sent, strict=True)]


def _wakeup(mods: dict[str, ModuleType], budget_s: float) -> list[Row]:
    """p50 and p99 wake-up latency; each implementation's samples come in ``chunks`` interleaved runs."""
    impls = [*mods, *THREAD_PEERS]
    chunks = 4
    samples: dict[str, list[float]] = {impl: [] for impl in impls}
    for _ in range(chunks):
        for impl in impls:
            samples[impl] += _wakeups(impl, mods, budget_s / (len(impls) * chunks))
    p50: list[Row] = []
    p99: list[Row] = []
    for impl in impls:
        us = sorted(s * 1e6 for s in samples[impl])
        p50.append(Row("wake-up p50", impl, statistics.median(us), "us"))
        p99.append(Row("wake-up p99", impl, us[min(len(us) - 1, math.ceil(0.99 * len(us)) - 1)], "us"))
    return p50 + p99


# ---------------------------------------------------------------------------------------
# report


def run(seconds: float, *, threads: bool = True) -> list[Row]:
    """Measure every scenario within about ``seconds`` and return the rows (both engines when available)."""
    mods = engines()
    rows = _single_thread(mods, seconds * (_MICRO_SHARE if threads else 1.0))
    if threads:
        rows += _contended(mods, seconds * _CONTENDED_SHARE)
        rows += _wakeup(mods, seconds * _WAKEUP_SHARE)
    return rows


def _ratio(row: Row, peer: Row | None) -> str:
    if peer is None or row.value <= 0 or peer.value <= 0:
        return "-"
    r = row.value / peer.value if row.higher_is_better else peer.value / row.value
    return f"{r:.2f}x" if r >= 0.1 else f"{r:.2g}x"  # two significant digits for the tiny ones


def _number(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def format_table(rows: list[Row]) -> list[str]:
    """The Markdown table: scenario, implementation, median, unit, and the two ratios."""
    peers = {(r.scenario, r.implementation): r for r in rows}
    lines = [
        "| scenario | implementation | median | unit | vs queue.Queue | vs deque |",
        "|---|---|---:|---|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.scenario} | {r.implementation} | {_number(r.value)} | {r.unit} | "
            f"{_ratio(r, peers.get((r.scenario, 'queue.Queue')))} | {_ratio(r, peers.get((r.scenario, 'deque')))} |"
        )
    return lines


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seconds must be a positive number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"seconds must be a positive number, got {text!r}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m orchestrator_core bench",
        description="Compare the admission queue's engines with queue.Queue, deque, SimpleQueue and asyncio.Queue.",
    )
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument(
        "--seconds", type=_seconds, default=DEFAULT_SECONDS, help=f"time budget (default {DEFAULT_SECONDS:g})"
    )
    budget.add_argument("--quick", action="store_true", help=f"a quicker, noisier run (about {QUICK_SECONDS:g} second)")
    parser.add_argument("--no-threads", action="store_true", help="skip the multi-threaded scenarios")
    return parser


def _header(mods: dict[str, ModuleType], seconds: float) -> list[str]:
    from . import __version__

    impl = platform.python_implementation()
    machine = f"{impl} {platform.python_version()} on {platform.system()} {platform.machine()}"
    lines = [
        f"orchestrator_core {__version__} bench: {machine}, {os.cpu_count()} CPUs; "
        + f"engines: {', '.join(mods)}; budget {seconds:g} s",
    ]
    c = mods.get("c")
    if c is not None and hasattr(c, "_get_release_gil"):
        held = "released" if c._get_release_gil() else "held"
        lines.append(f"compiled engine: GIL {held} around enqueue/dequeue (always released while waiting)")
    lines.append(
        "Medians. Ratios: how many times faster than the peer in the same scenario (above 1 = faster); "
        "- = no such peer."
    )
    return lines


def main(argv: list[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the ``bench`` command with ``argv`` (a leading ``"bench"`` is skipped); returns the exit status."""
    stream = sys.stdout if out is None else out
    args_in = list(sys.argv[1:] if argv is None else argv)
    if args_in[:1] == ["bench"]:
        args_in = args_in[1:]
    try:
        args = _parser().parse_args(args_in)
    except SystemExit as exc:  # --help or a usage error: argparse has printed the message
        return exc.code if isinstance(exc.code, int) else 2
    seconds = QUICK_SECONDS if args.quick else args.seconds
    mods = engines()
    started = time.perf_counter()
    try:
        rows = run(seconds, threads=not args.no_threads)
    except ConservationError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for line in [*_header(mods, seconds), "", *format_table(rows), ""]:
        print(line, file=stream)
    print(f"measured in {time.perf_counter() - started:.1f} s", file=stream)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
