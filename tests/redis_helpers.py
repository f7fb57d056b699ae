"""Redis servers for the Redis tests and benchmarks (imported explicitly; not a conftest).

* ``ORCHESTRATOR_CORE_REDIS_URL`` set (``.ci/run`` starts a server with ``.ci/redis-server.sh``):
  the tests use that server.
* Otherwise, when ``redis-server`` is on ``PATH``, a private server is started on a free
  loopback port in a temporary directory for the session and stopped at its end.
* When neither is possible, or the ``redis`` package is missing, the tests skip with the
  reason, except when ``CI`` is set: then they fail, so a CI run can never pass without them.

Tests that restart or kill Redis start their own ``RedisServer`` (append-only file,
``appendfsync always``) on another free port.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

URL_ENV = "ORCHESTRATOR_CORE_REDIS_URL"
IN_CI = os.environ.get("CI", "") not in ("", "0", "false")


def unavailable(reason: str) -> NoReturn:
    """Skip with ``reason``, or fail when ``CI`` is set (a missing server must not pass CI)."""
    if IN_CI:
        pytest.fail(f"CI is set but {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def redis_server_binary() -> str:
    """Path of ``redis-server``, or skip / fail."""
    path = shutil.which("redis-server")
    if path is None:
        unavailable("redis-server is not on PATH (apt-get install redis-server)")
    return path


def free_port() -> int:
    """A loopback TCP port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A ``redis-server`` child process on a loopback port, optionally with an append-only file."""

    def __init__(self, directory: Path, port: int | None = None, *, appendonly: bool = False) -> None:
        self.binary = redis_server_binary()
        self.directory = directory
        self.port = port if port is not None else free_port()
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start it and wait until it answers PING (loading the append-only file included)."""
        args = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.directory),
            "--save",
            "",
            "--logfile",
            str(self.directory / f"redis-{self.port}.log"),
        ]
        if self.appendonly:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.process = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.wait_ready(timeout_s)

    def wait_ready(self, timeout_s: float) -> None:
        import redis

        client = redis.Redis(port=self.port, socket_timeout=1.0, socket_connect_timeout=1.0)
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    log = (self.directory / f"redis-{self.port}.log").read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"redis-server on port {self.port} exited: {log}")
                try:
                    if client.ping():
                        return
                except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
                    pass  # not listening yet, or still loading the append-only file
                if time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not answer PING in {timeout_s} s")
                time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """SIGKILL: what a crash looks like (acknowledged writes must survive via the append-only file)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None


def session_server() -> Iterator[str]:
    """The body of the session fixture: yields the URL of a server for the tests."""
    import redis

    url = os.environ.get(URL_ENV)
    if url:
        client = redis.Redis.from_url(url, socket_connect_timeout=2.0)
        try:
            client.ping()
        except redis.ConnectionError as exc:
            unavailable(f"{URL_ENV}={url} does not answer PING ({exc})")
        finally:
            client.close()
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="oc-redis-") as tmp:
        server = RedisServer(Path(tmp))
        server.start()
        try:
            yield server.url
        finally:
            server.stop()


def unique_name(label: str = "t") -> str:
    """A queue name no other test (or run) uses."""
    return f"test-{label}-{uuid.uuid4().hex[:12]}"
