"""Which engine is in use, proven in fresh interpreters."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = (
    "import orchestrator_core as oc; print(oc.ENGINE, oc.Queue.__module__, oc.Task.__module__, oc.Accepted.__module__)"
)

BLOCK_C = (
    "import sys, importlib.abc\n"
    "class Block(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'orchestrator_core._core_c':\n"
    "            raise ImportError('blocked for the test')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("ORCHESTRATOR_CORE_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=60)


@pytest.mark.c_extension
def test_compiled_engine_is_used_by_default() -> None:
    out = run(PROBE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["c"] + ["orchestrator_core._core_c"] * 3


def test_no_extensions_forces_the_pure_twin() -> None:
    out = run(PROBE, ORCHESTRATOR_CORE_NO_EXTENSIONS="1")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["py"] + ["orchestrator_core._core_py"] * 3


def test_missing_extension_falls_back_to_the_pure_twin() -> None:
    out = run(BLOCK_C + PROBE)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "py"


def test_require_extension_fails_loudly_when_it_is_missing() -> None:
    out = run(BLOCK_C + PROBE, ORCHESTRATOR_CORE_REQUIRE_EXTENSION="1")
    assert out.returncode != 0
    assert "ImportError: blocked for the test" in out.stderr


@pytest.mark.c_extension
def test_zero_means_unset() -> None:
    out = run(PROBE, ORCHESTRATOR_CORE_NO_EXTENSIONS="0")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split()[0] == "c"
