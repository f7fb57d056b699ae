"""Scripts the hardening tests run in a fresh interpreter, and helpers those tests share.

A subprocess is used wherever a failure could take the interpreter down or hang it
(deadlock, crash, fork, signals) and wherever a measurement must not see the test
runner's own allocations (memory). Each script takes the engine (``c`` or ``py``) as its
first argument and prints one JSON object per line; ``run_script`` returns them parsed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import orchestrator_core

SCRIPTS = Path(__file__).resolve().parent
#: Where the package under test lives (the source tree or site-packages), for the child.
PACKAGE_ROOT = Path(orchestrator_core.__file__).resolve().parent.parent


def engine_arg(impl: ModuleType) -> str:
    """``"c"`` or ``"py"`` for an engine module."""
    return "c" if impl.__name__.endswith("_core_c") else "py"


@dataclass
class ScriptResult:
    returncode: int
    stdout: str
    stderr: str
    records: list[dict[str, Any]]


def run_script(name: str, *args: str, timeout: float = 120.0, env: dict[str, str] | None = None) -> ScriptResult:
    """Run ``tests/scripts/<name>.py args...``; a hang past ``timeout`` fails the calling test."""
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), child_env.get("PYTHONPATH", "")]))
    child_env.pop("PYTHONWARNINGS", None)
    if env:
        child_env.update(env)
    try:
        proc = subprocess.run(
            [sys.executable, str(SCRIPTS / f"{name}.py"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=child_env,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        err = exc.stderr.decode() if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        raise AssertionError(f"{name} {' '.join(args)} hung for {timeout} s\nstdout:\n{out}\nstderr:\n{err}") from None
    records = []
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return ScriptResult(proc.returncode, proc.stdout, proc.stderr, records)


#: Engine bugs found by the hardening tests, reported in /tmp/requests/hardening.md:
#: name -> (engines affected, explanation, strict). A test that shows one is marked
#: xfail for the affected engines only, so the suite stays green and a fix is noticed:
#: with ``strict`` the test then passes, strict xfail turns that into a failure, and the
#: entry here is deleted. Non-strict entries are limitations that may pass by luck.
#: None is open (the last ones, the pure engine's cyclic GC and signal handlers inside its
#: locked sections, were fixed for issue #8).
KNOWN_BUGS: dict[str, tuple[frozenset[str], str, bool]] = {}


def known_bug(request: pytest.FixtureRequest, impl: ModuleType | str, bug: str) -> None:
    """Mark the running test xfail if ``bug`` (a ``KNOWN_BUGS`` key) affects ``impl``."""
    if bug not in KNOWN_BUGS:
        return
    engines, reason, strict = KNOWN_BUGS[bug]
    engine = impl if isinstance(impl, str) else engine_arg(impl)
    if engine in engines:
        request.applymarker(pytest.mark.xfail(reason=f"{bug}: {reason}", strict=strict))
