"""Benchmark configuration: collection of ``bench_*.py``, the ``heavy`` marker, engine fixtures, a targets summary.

Run everything with ``pytest benchmarks --benchmark-only``; a quick run deselects the heavy cases
(depth 1,000,000 and the pure engine's memory run) with ``-m "not heavy"``. This file does not depend on
``tests/conftest.py``.

* Files named ``bench_*.py`` are collected as test modules (their ``test_*`` functions are the benchmarks)
  as well as the usual ``test_*.py``; a file whose optional dependency is missing skips itself with
  ``pytest.importorskip`` and the rest of the run goes on.
* ``impl`` (alias ``engine``) is parametrised over the two engine modules, ids ``c`` and ``py``:
  ``orchestrator_core._core_c`` and ``orchestrator_core._core_py``. The ``c`` case is skipped when the
  compiled engine is absent or ``ORCHESTRATOR_CORE_NO_EXTENSIONS`` is set; with
  ``ORCHESTRATOR_CORE_REQUIRE_EXTENSION`` set a missing compiled engine is an error.
* ``pedantic_rounds`` (rounds of the threaded and depth-1,000,000 scenarios) follows ``--benchmark-min-rounds``.
* ``--bench-all-deep`` also runs the depth-1,000,000 fill/drain for the pure engine, ``queue.Queue`` and
  ``asyncio.Queue`` (minutes; off by default).
* At the end of a run the issue's targets are printed as ratios of medians from that same run. A target's
  verdict comes from its interleaved benchmark (``test_interleaved_*``: the compared workloads timed in
  alternation, one round of each per cycle in a shuffled order; see ``interleave``) when that ran; the
  ratio of the separate benchmarks' medians is printed beside it.
* pytest-benchmark's warm-up is on by default here (``--benchmark-warmup=off`` turns it off).
"""

from __future__ import annotations

import fnmatch
import importlib
import math
import os
import random
import statistics
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from orchestrator_core import _core_py

NO_EXTENSIONS = os.environ.get("ORCHESTRATOR_CORE_NO_EXTENSIONS", "") not in ("", "0")
REQUIRE_EXTENSION = os.environ.get("ORCHESTRATOR_CORE_REQUIRE_EXTENSION", "") not in ("", "0")


def _load_c() -> ModuleType | None:
    if NO_EXTENSIONS:
        return None
    try:
        return importlib.import_module("orchestrator_core._core_c")
    except ImportError:
        if REQUIRE_EXTENSION:
            raise
        return None


core_c = _load_c()
core_py = _core_py

_NO_C = pytest.mark.skip(reason="the compiled engine orchestrator_core._core_c is not available")

ENGINE_PARAMS = [
    pytest.param(core_c, id="c", marks=[_NO_C] if core_c is None else []),
    pytest.param(core_py, id="py"),
]

BENCH_FILES = "bench_*.py"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("orchestrator_core benchmarks")
    group.addoption(
        "--bench-interleave-s",
        type=float,
        default=3.0,
        help="seconds each interleaved benchmark spends on its cycles (default 3)",
    )
    group.addoption(
        "--bench-all-deep",
        action="store_true",
        default=False,
        help="also fill/drain depth 1,000,000 on the pure engine, queue.Queue and asyncio.Queue (slow)",
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "heavy: long benchmark (depth 1,000,000 and similar); deselect with -m 'not heavy'"
    )
    # Warm-up on unless asked otherwise (pytest-benchmark turns it on only on PyPy): without it,
    # on the VM these figures come from, the first second of a benchmark ran up to 2x slow and
    # moved the medians (position at depth 100,000: 267 ns cold vs 132 ns warm, same code).
    if not any(_is_warmup_flag(arg) for arg in config.invocation_params.args):
        config.option.benchmark_warmup = True


def _is_warmup_flag(arg: str) -> bool:
    return arg == "--benchmark-warmup" or arg.startswith("--benchmark-warmup=")


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Collect ``bench_*.py`` like test modules (pytest's own hook already takes ``test_*.py``).

    A path named on the command line is collected by pytest itself, so it is left alone here.
    """
    if file_path.suffix != ".py" or not fnmatch.fnmatch(file_path.name, BENCH_FILES):
        return None
    if parent.session.isinitpath(file_path):
        return None
    if any(fnmatch.fnmatch(file_path.name, pat) for pat in parent.config.getini("python_files")):
        return None
    module: pytest.Module = pytest.Module.from_parent(parent, path=file_path)
    return module


@pytest.fixture(params=ENGINE_PARAMS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The engine module under benchmark (ids ``c`` and ``py``)."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def engine(impl: ModuleType) -> ModuleType:
    """Alias of ``impl``."""
    return impl


@pytest.fixture
def all_deep(request: pytest.FixtureRequest) -> bool:
    """True when ``--bench-all-deep`` asks for the slow depth-1,000,000 cases."""
    return bool(request.config.getoption("--bench-all-deep"))


@pytest.fixture
def pedantic_rounds(request: pytest.FixtureRequest) -> int:
    """Rounds for ``benchmark.pedantic`` scenarios: ``--benchmark-min-rounds`` (pytest-benchmark's default 5)."""
    return max(1, int(request.config.getoption("benchmark_min_rounds", 5) or 5))


# ---------------------------------------------------------------------------------------
# Interleaved measurement of compared workloads

Workload = Callable[[], float]
"""One round of a workload; returns the seconds it took (set-up excluded)."""

INTERLEAVE_MAX_CYCLES = 5000
INTERLEAVE_WARMUP_CYCLES = 2


def timed(fn: Callable[[], object]) -> Workload:
    """A workload that times one call of ``fn``."""
    clock = time.perf_counter

    def run() -> float:
        t0 = clock()
        fn()
        return clock() - t0

    return run


class Interleave:
    """Times compared workloads in alternation, so that both meet the same states of a noisy host.

    On a shared VM the host's speed changes from second to second: position at depth 100 measured
    92-215 ns per call in separate processes running the same code. Two benchmarks run seconds apart
    then compare two host states, and a ratio of their medians moves by up to 2x between runs.
    Here each cycle runs one round of every workload, in an order shuffled per cycle (like Google
    Benchmark's random interleaving), for about ``--bench-interleave-s`` seconds (at least
    ``min_cycles``), after ``INTERLEAVE_WARMUP_CYCLES`` untimed cycles. pytest-benchmark times whole
    cycles (for ``--benchmark-compare``); ``extra_info["interleaved_ns_per_op"]`` holds each workload's
    median round over its ``ops`` operations, in nanoseconds.
    """

    timed = staticmethod(timed)

    def __init__(self, budget_s: float):
        self.budget_s = budget_s

    def __call__(
        self,
        benchmark: Any,
        workloads: dict[str, Workload],
        ops: dict[str, int],
        *,
        min_cycles: int = 20,
        seed: int = 20261127,
    ) -> dict[str, float]:
        names = list(workloads)
        times: dict[str, list[float]] = {name: [] for name in names}
        order = names[:]
        rng = random.Random(seed)

        def cycle() -> None:
            rng.shuffle(order)
            for name in order:
                times[name].append(workloads[name]())

        cycles = 1
        if not getattr(benchmark, "disabled", False):
            t0 = time.perf_counter()
            for _ in range(INTERLEAVE_WARMUP_CYCLES):
                cycle()
            per_cycle = (time.perf_counter() - t0) / INTERLEAVE_WARMUP_CYCLES
            cycles = max(min_cycles, min(INTERLEAVE_MAX_CYCLES, math.ceil(self.budget_s / max(per_cycle, 1e-9))))
            for samples in times.values():
                samples.clear()
        benchmark.pedantic(cycle, rounds=cycles)
        medians = {name: statistics.median(times[name]) / ops[name] * 1e9 for name in names}
        benchmark.extra_info["interleaved_ns_per_op"] = {name: round(ns, 1) for name, ns in medians.items()}
        benchmark.extra_info["interleaved_cycles"] = len(times[names[0]])
        return medians


@pytest.fixture
def interleave(request: pytest.FixtureRequest) -> Interleave:
    """``interleave(benchmark, workloads, ops)``: see ``Interleave``."""
    return Interleave(float(request.config.getoption("--bench-interleave-s")))


# ---------------------------------------------------------------------------------------
# The targets, as ratios of medians from this run (printed after pytest-benchmark's tables).


OWN_FILES = ("bench_queue.py", "bench_contention.py")


def _own_benchmarks(config: pytest.Config) -> Iterator[tuple[str, str, Any]]:
    """``(group, implementation id, metadata)`` of the benchmarks of this directory's queue files that ran."""
    session = getattr(config, "_benchmarksession", None)
    for bench in getattr(session, "benchmarks", None) or []:
        if not any(name in str(getattr(bench, "fullname", "")) for name in OWN_FILES):
            continue
        impl = bench.extra_info.get("impl")
        group = getattr(bench, "group", None)
        if impl is None or group is None or getattr(bench, "stats", None) is None:
            continue
        yield group, str(impl), bench


def _per_op_medians(config: pytest.Config) -> dict[tuple[str, str], float]:
    """``(group, implementation id) -> median seconds per operation`` (round median / ``ops_per_round``);
    an interleaved benchmark adds ``(group, workload) -> median seconds per operation`` for each workload."""
    out: dict[tuple[str, str], float] = {}
    for group, impl, bench in _own_benchmarks(config):
        interleaved = bench.extra_info.get("interleaved_ns_per_op")
        if interleaved is not None:
            for workload, ns in interleaved.items():
                out[(group, str(workload))] = float(ns) / 1e9
        else:
            ops = float(bench.extra_info.get("ops_per_round", 1))
            out[(group, impl)] = bench.stats.median / ops
    return out


def _extra(config: pytest.Config, group: str, impl: str, key: str) -> Any:
    for bgroup, bimpl, bench in _own_benchmarks(config):
        if bgroup == group and bimpl == impl:
            return bench.extra_info.get(key)
    return None


Key = tuple[str, str]


def _targets(config: pytest.Config) -> list[tuple[str, str, str]]:
    """``(target, figure, verdict)`` rows for every target whose benchmarks ran.

    ``num`` / ``den`` name medians per operation (``(group, implementation)``) of the separate benchmarks;
    ``inum`` / ``iden`` the same workloads in an interleaved benchmark. The verdict comes from the
    interleaved pair when it ran (the separate ratio is printed beside it), else from the separate pair.
    """
    med = _per_op_medians(config)
    rows: list[tuple[str, str, str]] = []

    def ratio(label: str, num: Key, den: Key, inum: Key, iden: Key, limit: float, *, at_least: bool) -> None:
        separate = med[num] / med[den] if num in med and den in med and med[den] > 0 else None
        if inum in med and iden in med and med[iden] > 0:
            r = med[inum] / med[iden]
            figure = f"{r:.2f}x  ({med[inum] * 1e9:.0f} ns / {med[iden] * 1e9:.0f} ns) interleaved"
            if separate is not None:
                figure += f"; separate {separate:.2f}x"
        elif separate is not None:
            r = separate
            figure = f"{r:.2f}x  ({med[num] * 1e9:.0f} ns / {med[den] * 1e9:.0f} ns) separate"
        else:
            return
        ok = r >= limit if at_least else r <= limit
        rows.append((label, figure, "met" if ok else "NOT MET"))

    def pair(label: str, num: str, den: str, limit: float, *, at_least: bool) -> None:
        ratio(
            label,
            ("pair", num),
            ("pair", den),
            ("interleaved-pair", num),
            ("interleaved-pair", den),
            limit,
            at_least=at_least,
        )

    pair("pair: c vs queue.Queue, >= 8x faster", "queue.Queue", "c", 8.0, at_least=True)
    pair("pair: c within 5x of deque (aim)", "c", "deque", 5.0, at_least=False)
    pair("pair: c vs py, >= 10x faster", "py", "c", 10.0, at_least=True)
    pair("pair: py vs queue.Queue, <= 2x slower", "py", "queue.Queue", 2.0, at_least=False)
    for eng in ("c", "py"):
        ratio(
            f"drop-lru at capacity vs pair [{eng}], <= 1.5x",
            ("drop-lru", eng),
            ("pair", eng),
            (f"interleaved-drop-lru-{eng}", "drop-lru"),
            (f"interleaved-drop-lru-{eng}", "pair"),
            1.5,
            at_least=False,
        )
        for op in ("cancel", "position"):
            ratio(
                f"{op} depth 100,000 vs 100 [{eng}], <= 2x",
                (f"{op}-100000", eng),
                (f"{op}-100", eng),
                (f"interleaved-{op}-{eng}", "100000"),
                (f"interleaved-{op}-{eng}", "100"),
                2.0,
                at_least=False,
            )
    ratio(
        "2p+2c throughput [c-gil-held] vs queue.Queue, >= 4x",
        ("contended-2p2c", "queue.Queue"),
        ("contended-2p2c", "c-gil-held"),
        ("interleaved-contended-2p2c", "queue.Queue"),
        ("interleaved-contended-2p2c", "c-gil-held"),
        4.0,
        at_least=True,
    )
    # The targets hold the default (GIL held); the GIL-released figures are in the GIL section.
    num = _extra(config, "wakeup", "queue.Queue", "p50_us")
    den = _extra(config, "wakeup", "c-gil-held", "p50_us")
    if num is not None and den is not None:
        ok = den <= num
        figure = f"{den:.1f} us vs queue.Queue {num:.1f} us ({num / den:.2f}x)"
        rows.append(("wake-up p50 [c-gil-held] no slower than queue.Queue", figure, "met" if ok else "NOT MET"))
    bpj = _extra(config, "memory-1000000", "c", "bytes_per_job")
    if bpj is not None:
        rows.append(("memory per queued job [c], <= 120 B", f"{bpj:.1f} B/job", "met" if bpj <= 120 else "NOT MET"))
    return rows


def _gil_rows(config: pytest.Config) -> list[str]:
    """The compiled engine with the GIL held vs released: contended throughput and wake-up latency."""
    lines = []
    subjects = ("c-gil-held", "c-gil-released", "queue.Queue")
    for n in (1, 2, 4):
        group = f"contended-{n}p{n}c"
        rates = [_extra(config, group, subject, "items_per_s") for subject in subjects]
        if any(r is not None for r in rates):
            figures = ", ".join(f"{s} {r:,} items/s" for s, r in zip(subjects, rates, strict=True) if r is not None)
            lines.append(f"{group}: {figures}")
    for subject in subjects:
        p50 = _extra(config, "wakeup", subject, "p50_us")
        p99 = _extra(config, "wakeup", subject, "p99_us")
        if p50 is not None and p99 is not None:
            lines.append(f"wake-up {subject}: p50 {p50:.1f} us, p99 {p99:.1f} us")
    return lines


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    rows = _targets(config)
    if rows:
        terminalreporter.section("orchestrator_core targets (ratios of medians from this run)")
        width = max(len(r[0]) for r in rows)
        for label, figure, verdict in rows:
            terminalreporter.write_line(f"{label.ljust(width)}  {figure:<72}  {verdict}")
    gil = _gil_rows(config)
    if gil:
        terminalreporter.section("orchestrator_core GIL question (compiled engine, GIL held vs released)")
        for line in gil:
            terminalreporter.write_line(line)
