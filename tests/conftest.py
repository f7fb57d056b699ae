"""Shared fixtures: every behavioural test runs on both engines through ``impl``.

``impl`` is the engine module (``_core_c`` or ``_core_py``): use ``impl.Queue``,
``impl.Task`` and so on. Tests that need the compiled engine carry the
``c_extension`` marker and are deselected when ``ORCHESTRATOR_CORE_NO_EXTENSIONS`` is set
(the pure-only run); when ``ORCHESTRATOR_CORE_REQUIRE_EXTENSION`` is set a missing
compiled engine is an error, never a skip.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
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

ENGINE_PARAMS = [
    pytest.param(core_c, id="c", marks=pytest.mark.c_extension),
    pytest.param(_core_py, id="py"),
]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False, help="run tests marked slow")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow: pass --run-slow")
    deselected = []
    kept = []
    for item in items:
        if "c_extension" in item.keywords and core_c is None:
            if REQUIRE_EXTENSION:
                raise pytest.UsageError("ORCHESTRATOR_CORE_REQUIRE_EXTENSION is set but _core_c is missing")
            deselected.append(item)
            continue
        if "slow" in item.keywords and not config.getoption("--run-slow"):
            item.add_marker(skip_slow)
        kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


@pytest.fixture(params=ENGINE_PARAMS)
def impl(request: pytest.FixtureRequest) -> ModuleType:
    """The engine module under test."""
    return request.param  # type: ignore[no-any-return]


class FakeClock:
    """A manual clock in seconds for deterministic tests."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def make_queue(impl: ModuleType) -> Callable[..., Any]:
    """``make_queue(capacity, policy=..., **kw)`` on the engine under test, ids prefixed ``q``."""

    def make(capacity: int = 10, policy: str = "reject-new", **kw: Any) -> Any:
        kw.setdefault("id_prefix", "q")
        return impl.Queue(capacity, policy, **kw)

    return make
