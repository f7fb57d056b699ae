"""Signals: Ctrl-C interrupts a blocking dequeue at once and leaves the queue usable.

Each case runs ``tests/scripts/signal_child.py`` in a fresh interpreter. The test waits
until every thread of the child is asleep (the main thread is blocked inside the engine,
not on its way there), sends the signal and expects the child to report within
``HANG_BOUND_S``: a generous bound that only tells "interrupted" from "hung", not a
measure of speed. POSIX (Linux /proc) only.
"""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .scripts import PACKAGE_ROOT, SCRIPTS, engine_arg, run_script

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="needs POSIX signals and /proc to see the child block"
)

HANG_BOUND_S = 5.0
STARTUP_TIMEOUT_S = 60.0


class Child:
    """A signal_child.py process whose JSON lines can be awaited."""

    def __init__(self, engine: str, scenario: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH", "")]))
        self.proc = subprocess.Popen(
            [sys.executable, str(SCRIPTS / "signal_child.py"), engine, scenario],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[dict[str, Any]] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.lines.put(json.loads(line))

    def next_event(self, timeout: float) -> dict[str, Any]:
        try:
            return self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no event from the child within {timeout} s: hung?\n{self.finish()}") from None

    def wait_until_all_threads_sleep(self) -> None:
        """Until every thread of the child has been asleep for a few consecutive looks."""
        task_dir = Path(f"/proc/{self.proc.pid}/task")
        calm = 0
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while calm < 5:
            assert time.monotonic() < deadline, "the child never blocked"
            states = []
            for stat in task_dir.glob("*/stat"):
                try:
                    states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
                except (OSError, IndexError):
                    states.append("?")
            calm = calm + 1 if states and all(s == "S" for s in states) else 0
            time.sleep(0.02)

    def finish(self, timeout: float = 30.0) -> str:
        try:
            _, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()


def interrupt(engine: str, scenario: str) -> tuple[Child, float]:
    child = Child(engine, scenario)
    assert child.next_event(STARTUP_TIMEOUT_S) == {"event": "ready"}
    child.wait_until_all_threads_sleep()
    sent = time.monotonic()
    child.proc.send_signal(signal.SIGINT)
    return child, sent


@pytest.mark.parametrize("scenario", ["dequeue-none", "dequeue-timeout", "dequeue-many"])
def test_ctrl_c_interrupts_a_blocking_dequeue(impl: ModuleType, scenario: str) -> None:
    child, sent = interrupt(engine_arg(impl), scenario)
    try:
        event = child.next_event(HANG_BOUND_S)
        assert event == {"event": "interrupted"}
        assert time.monotonic() - sent < HANG_BOUND_S
        after = child.next_event(30)
        # The other blocked consumer got the next job; the main thread could wait again.
        assert after == {
            "event": "after",
            "other_waiter_got": ["after-interrupt"],
            "main_got": "second",
            "depth": 0,
            "balanced": True,
        }
        err = child.finish()
        assert child.proc.returncode == 0, err
    finally:
        child.kill()


def test_uncaught_ctrl_c_ends_the_process(impl: ModuleType) -> None:
    child, sent = interrupt(engine_arg(impl), "uncaught")
    try:
        err = child.finish(timeout=HANG_BOUND_S)
        assert time.monotonic() - sent < HANG_BOUND_S
        assert child.proc.returncode == -signal.SIGINT, err
        assert "KeyboardInterrupt" in err and "dequeue" in err
        assert child.lines.empty()  # "not-interrupted" never printed
    finally:
        child.kill()


def test_signal_handler_enqueues_into_the_queue_the_main_thread_waits_on(impl: ModuleType) -> None:
    child = Child(engine_arg(impl), "handler-while-blocked")
    try:
        assert child.next_event(STARTUP_TIMEOUT_S) == {"event": "ready"}
        child.wait_until_all_threads_sleep()
        child.proc.send_signal(signal.SIGUSR1)
        after = child.next_event(HANG_BOUND_S)
        assert after == {"event": "after", "main_got": "from-handler", "depth": 0, "balanced": True}
        err = child.finish()
        assert child.proc.returncode == 0, err
    finally:
        child.kill()


def test_signal_handler_uses_the_queue_the_main_thread_is_using(impl: ModuleType) -> None:
    """An interval timer's handler uses the queue while the main thread works on it.

    The compiled engine's locked sections are C, where no handler can run: every handler
    call is served. The pure engine's are Python: a handler can run inside one, and a call it
    then makes is refused (``RuntimeError("reentrant call to Queue.<method>() ...")``, which
    the handler catches) instead of waiting for the lock its own thread holds. Either way: no
    deadlock (the child's watchdog), no other exception, and the counters balance.
    """
    res = run_script("signal_child", engine_arg(impl), "handler-while-busy", timeout=300)
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout}\n{res.stderr}"
    (after,) = res.records
    assert after["balanced"] is True
    assert after["handler_calls"] > 0
    assert after["completed"] + after["refused"] == after["handler_calls"]
    if engine_arg(impl) == "c":
        assert after["refused"] == 0
