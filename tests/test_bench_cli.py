"""The ``bench`` command: runs in a subprocess with a tiny budget and prints a well-formed table.

No timing is asserted (speed is measured by the benchmarks); these tests check the table's structure: every
scenario has a row for every implementation, the figures and the ratios parse as numbers, each peer's
ratio against itself is exactly 1, and the engines measured follow the compiled engine's availability.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import orchestrator_core
from orchestrator_core import _bench

SRC = str(Path(orchestrator_core.__file__).resolve().parents[1])
HEADER = ["scenario", "implementation", "median", "unit", "vs queue.Queue", "vs deque"]
SINGLE_THREAD = {"pair": "ns/op", "request path": "ns/op", f"fill/drain {_bench.FILL_DEPTH}": "ns/op"}
THREADED = {
    f"{_bench.THREAD_PAIRS}p+{_bench.THREAD_PAIRS}c threads": "items/s",
    "wake-up p50": "us",
    "wake-up p99": "us",
}
PEERS = ["deque", "SimpleQueue", "queue.Queue", "asyncio.Queue"]
THREAD_PEERS = ["queue.Queue", "SimpleQueue"]


def _compiled_available() -> bool:
    return (
        os.environ.get("ORCHESTRATOR_CORE_NO_EXTENSIONS", "") in ("", "0")
        and importlib.util.find_spec("orchestrator_core._core_c") is not None
    )


def _run_bench(*args: str, no_extensions: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH", "")) if p)
    if no_extensions:
        env["ORCHESTRATOR_CORE_NO_EXTENSIONS"] = "1"
        env.pop("ORCHESTRATOR_CORE_REQUIRE_EXTENSION", None)
    return subprocess.run(
        [sys.executable, "-m", "orchestrator_core", "bench", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )


def _table(stdout: str) -> tuple[list[str], list[list[str]]]:
    """The Markdown table's header cells and its body rows (the separator line dropped)."""
    lines = [line for line in stdout.splitlines() if line.startswith("|")]
    assert len(lines) >= 3, stdout
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    assert all(set(c) <= set("-:") for c in cells[1]), lines[1]
    return cells[0], cells[2:]


def _ratio(text: str) -> float | None:
    if text == "-":
        return None
    assert text.endswith("x"), text
    return float(text[:-1])


def _check_table(stdout: str, engines: list[str], *, threads: bool) -> dict[tuple[str, str], list[str]]:
    header, rows = _table(stdout)
    assert header == HEADER
    by_key: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        assert len(row) == len(HEADER), row
        assert (row[0], row[1]) not in by_key, f"duplicate row {row}"
        by_key[(row[0], row[1])] = row
    expected: dict[tuple[str, str], str] = {}
    for scenario, unit in SINGLE_THREAD.items():
        expected.update({(scenario, impl): unit for impl in [*engines, *PEERS]})
    if threads:
        for scenario, unit in THREADED.items():
            expected.update({(scenario, impl): unit for impl in [*engines, *THREAD_PEERS]})
    assert set(by_key) == set(expected)
    for key, row in by_key.items():
        scenario, impl, median, unit, vs_queue, vs_deque = row
        assert unit == expected[key]
        assert float(median) > 0, row
        q_ratio = _ratio(vs_queue)
        assert q_ratio is not None and q_ratio > 0, row
        d_ratio = _ratio(vs_deque)
        if scenario in SINGLE_THREAD:
            assert d_ratio is not None and d_ratio > 0, row
        else:
            assert d_ratio is None, row  # deque cannot block: no threaded peer figure
        if impl == "queue.Queue":
            assert q_ratio == 1.0
        if impl == "deque":
            assert d_ratio == 1.0
    return by_key


def test_bench_command_prints_the_table_for_every_engine_and_peer() -> None:
    result = _run_bench("--seconds", "0.3")
    assert result.returncode == 0, result.stderr
    engines = ["c", "py"] if _compiled_available() else ["py"]
    _check_table(result.stdout, engines, threads=True)
    assert f"engines: {', '.join(engines)}" in result.stdout
    assert ("compiled engine: GIL" in result.stdout) == (engines[0] == "c")


def test_bench_command_measures_only_the_pure_engine_without_extensions() -> None:
    result = _run_bench("--seconds", "0.2", "--no-threads", no_extensions=True)
    assert result.returncode == 0, result.stderr
    rows = _check_table(result.stdout, ["py"], threads=False)
    assert not any(impl == "c" for _, impl in rows)
    assert "engines: py;" in result.stdout


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_bench_refuses_a_bad_budget_naming_the_value(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert _bench.main(["--seconds", value], out=out) == 2
    assert f"seconds must be a positive number, got {value!r}" in capsys.readouterr().err
    assert out.getvalue() == ""


def test_bench_accepts_its_own_subcommand_name_and_rejects_unknown_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _bench.main(["bench", "--no-such-option"], out=io.StringIO()) == 2
    assert "--no-such-option" in capsys.readouterr().err
    assert _bench.main(["--quick", "--seconds", "1"], out=io.StringIO()) == 2
    assert "not allowed with argument" in capsys.readouterr().err
