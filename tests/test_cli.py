"""The command line, run as users run it: ``python -m orchestrator_core`` in a subprocess."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import orchestrator_core
from orchestrator_core.__main__ import main
from orchestrator_core.simulate import POLICIES, REPORT_SCHEMA

SRC = str(Path(orchestrator_core.__file__).resolve().parent.parent)  # the package under test: src/ or site-packages
QUICK = ["--duration", "60", "--slots", "8", "--capacity", "16", "--samples", "12"]


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = SRC + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("COLUMNS", None)
    env.update(extra)
    return env


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "orchestrator_core", *args],
        check=False,
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=300,
    )


def run_code(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=_env(**env), timeout=300
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    """Exit 2, no traceback, exactly one error line (after at most a usage line)."""
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert all(line.startswith("usage:") for line in lines if line not in errors), proc.stderr
    assert len(lines) <= 2, proc.stderr
    for needle in needles:
        assert needle in errors[0], proc.stderr
    return errors[0]


def test_bare_command_runs_the_default_scenario() -> None:
    proc = cli()
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # a pipe: no progress
    lines = proc.stdout.splitlines()
    engine = orchestrator_core.ENGINE
    label = "compiled" if engine == "c" else "pure Python"
    assert lines[0] == f"orchestrator-core {orchestrator_core.__version__} | engine: {engine} ({label})"
    assert lines[1].startswith("scenario   3600 s virtual, seed 1, capacity 64, 32 slots")
    assert "= 1.30x the pool's" in lines[2]
    text = proc.stdout
    for needle in ("policy reject-new", "rejected QUEUE_FULL", "wait p99 ms", "honour Retry-After", "utilised"):
        assert needle in text
    assert text.rstrip().endswith("(--compare runs the same traffic under all three policies side by side)")
    assert "drained: ok" in text


def test_pure_engine_is_reported_when_forced() -> None:
    proc = cli(*QUICK, ORCHESTRATOR_CORE_NO_EXTENSIONS="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].endswith("| engine: py (pure Python)")


def test_json_file_alongside_the_text_report(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    proc = cli("simulate", *QUICK, "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "policy reject-new" in proc.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["schema_version"] == 1
    assert report["engine"] == orchestrator_core.ENGINE
    assert set(report) == set(REPORT_SCHEMA["properties"])
    assert report["config"]["duration_s"] == 60.0 and report["config"]["slots"] == 8


def test_json_to_stdout_is_only_json() -> None:
    proc = cli(*QUICK, "--compare", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [run["policy"] for run in report["runs"]] == list(POLICIES)
    assert len({run["totals"]["offered"] for run in report["runs"]}) == 1
    assert proc.stderr == ""


def test_same_seed_gives_byte_identical_json_files(tmp_path: Path) -> None:
    paths = [tmp_path / f"{name}.json" for name in ("a", "b", "c")]
    for path, seed in zip(paths, ("7", "7", "8"), strict=True):
        proc = cli(*QUICK, "--seed", seed, "--policy", "drop-lru", "--json", str(path))
        assert proc.returncode == 0, proc.stderr
    a, b, c = (path.read_bytes() for path in paths)
    assert a == b
    assert a != c


def test_compare_prints_the_policies_side_by_side() -> None:
    proc = cli(*QUICK, "--compare", "--load", "2")
    assert proc.returncode == 0, proc.stderr
    header = next(line for line in proc.stdout.splitlines() if "reject-new" in line and "fail-fast" in line)
    assert header.split() == list(POLICIES)
    assert "same traffic under each policy" in proc.stdout


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--rate", "-1"], "--rate"),
        (["--rate", "abc"], "--rate"),
        (["--load", "0"], "--load"),
        (["--slots", "0"], "--slots"),
        (["--slots", "2.5"], "--slots"),
        (["--capacity", "-3"], "--capacity"),
        (["--policy", "drop-newest"], "--policy"),
        (["--pattern", "spiky"], "--pattern"),
        (["--interactive-share", "1.5"], "--interactive-share"),
        (["--duration", "nan"], "--duration"),
        (["--duration", "0"], "--duration"),
        (["--tokens-per-second", "-5"], "--tokens-per-second"),
        (["--pattern", "bursty", "--burst-length", "90"], "--burst-every"),
        (["--max-retries", "x"], "--max-retries"),
        (["--bogus"], "--bogus"),
        (["simulat"], "simulat"),
        (["simulate", "--json"], "--json"),
    ],
)
def test_bad_options_give_one_line_and_status_2(args: list[str], needle: str) -> None:
    assert_one_line_error(cli(*args), needle)


def test_unwritable_output_path_fails_before_running(tmp_path: Path) -> None:
    target = tmp_path / "missing" / "report.json"
    assert_one_line_error(cli(*QUICK, "--json", str(target)), "--json", "does not exist")
    assert_one_line_error(cli(*QUICK, "--plot", str(tmp_path)), "--plot", "is a directory")


def test_plot_writes_a_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "sim.png"
    proc = cli(*QUICK, "--compare", "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1100, 1000)


def test_plot_without_matplotlib_is_one_line_and_status_2(tmp_path: Path) -> None:
    out = tmp_path / "sim.png"
    # None in sys.modules makes every `import matplotlib` raise ImportError, as if it were not installed.
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from orchestrator_core.__main__ import main\n"
        f"sys.exit(main(['simulate', '--plot', {str(out)!r}]))\n"
    )
    proc = run_code(code)
    line = assert_one_line_error(proc, "--plot", "matplotlib", "pip install 'orchestrator-core[plot]'")
    assert line.startswith("orchestrator-core simulate: error:")
    assert proc.stdout == ""  # refused before simulating
    assert not out.exists()


def test_progress_is_shown_when_asked_and_erased() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator_core", *QUICK, "--compare", "--progress", "on"],
        check=False,
        capture_output=True,
        env=_env(),
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    err = proc.stderr.decode()
    assert "\rorchestrator-core: simulating reject-new (1/3)   0.0%" in err
    assert "\rorchestrator-core: simulating fail-fast (3/3) 100.0%" in err
    assert "\n" not in err
    last = err.rsplit("\r", 2)
    assert last[-1] == "" and last[-2].strip() == ""  # the line is blanked out at the end
    assert b"\r" not in proc.stdout


def test_progress_off_and_auto_on_a_pipe_are_silent() -> None:
    for mode in ("auto", "off"):
        proc = cli(*QUICK, "--progress", mode)
        assert proc.returncode == 0 and proc.stderr == ""


def test_version() -> None:
    proc = cli("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"orchestrator-core {orchestrator_core.__version__}"


def test_help_lists_the_commands() -> None:
    proc = cli("--help")
    assert proc.returncode == 0
    for command in ("simulate", "bench", "demo"):
        assert command in proc.stdout
    sim = cli("simulate", "--help")
    assert sim.returncode == 0
    # argparse's layout differs between versions (3.13 prints a metavar once): check the content.
    assert "--honour-retry-after" in sim.stdout and "(default: reject-new)" in sim.stdout


def test_demo_shows_each_policy() -> None:
    proc = cli("demo")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for policy in POLICIES:
        assert f"\n{policy}:\n" in out
    assert "Rejected  QUEUE_FULL, HTTP 429, Retry-After 1 s" in out
    assert "drop_lru-4 at position 1, evicting drop_lru-1 (batch)" in out
    assert "dequeue order: fail_fast-2, fail_fast-1" in out


def test_bench_without_the_bench_module_is_one_line_and_status_2() -> None:
    code = (
        "import sys; sys.modules['orchestrator_core._bench'] = None\n"
        "from orchestrator_core.__main__ import main\n"
        "sys.exit(main(['bench']))\n"
    )
    line = assert_one_line_error(run_code(code), "orchestrator_core._bench")
    assert line.startswith("orchestrator-core bench: error:")


def test_bench_passes_its_arguments_to_the_bench_module() -> None:
    # A stand-in _bench module: the contract is main(argv) -> exit status.
    code = (
        "import sys, types\n"
        "bench = types.ModuleType('orchestrator_core._bench')\n"
        "bench.main = lambda argv: print('bench got', argv) or 7\n"
        "sys.modules['orchestrator_core._bench'] = bench\n"
        "from orchestrator_core.__main__ import main\n"
        "sys.exit(main(['bench', '--quick', '-k', 'enqueue']))\n"
    )
    proc = run_code(code)
    assert proc.returncode == 7, proc.stderr
    assert proc.stdout == "bench got ['--quick', '-k', 'enqueue']\n"


def test_bench_argument_errors_are_returned_not_raised() -> None:
    code = (
        "import sys, types\n"
        "bench = types.ModuleType('orchestrator_core._bench')\n"
        "def fail(argv): raise SystemExit(2)\n"
        "bench.main = fail\n"
        "sys.modules['orchestrator_core._bench'] = bench\n"
        "from orchestrator_core.__main__ import main\n"
        "status = main(['bench', '--nope'])\n"
        "print('returned', status)\n"
    )
    proc = run_code(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "returned 2\n"


def test_main_is_the_console_script_entry(capsys: Any, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert main(["simulate", *QUICK, "--json", str(out), "--progress", "off"]) == 0
    assert "policy reject-new" in capsys.readouterr().out
    assert json.loads(out.read_text(encoding="utf-8"))["runs"][0]["policy"] == "reject-new"
    assert main(["--slots", "0"]) == 2
    assert "argument --slots: must be at least 1, got 0" in capsys.readouterr().err
