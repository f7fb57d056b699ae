"""Picks the engine: the compiled ``_core_c`` or the pure-Python ``_core_py``.

* ``ORCHESTRATOR_CORE_NO_EXTENSIONS`` set (non-empty, not ``0``), or an interpreter other
  than CPython: the pure twin.
* Otherwise the compiled engine; if it cannot be imported, the pure twin, unless
  ``ORCHESTRATOR_CORE_REQUIRE_EXTENSION`` is set, in which case the ImportError propagates.
"""

from __future__ import annotations

import os
import platform

__all__ = ["ENGINE", "engine"]


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


if _flag("ORCHESTRATOR_CORE_NO_EXTENSIONS") or platform.python_implementation() != "CPython":
    from . import _core_py as engine

    ENGINE = "py"
else:
    try:
        from . import _core_c as engine  # type: ignore[no-redef]

        ENGINE = "c"
    except ImportError:
        if _flag("ORCHESTRATOR_CORE_REQUIRE_EXTENSION"):
            raise
        from . import _core_py as engine

        ENGINE = "py"
