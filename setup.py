"""Declares the Cython engine; all metadata lives in pyproject.toml.

Environment switches (build time):
  ORCHESTRATOR_CORE_NO_EXTENSIONS=1  build a pure-Python wheel (PyPy, unsupported platforms)
  ORCHESTRATOR_CORE_DEBUG_BUILD=1    -O0 -g, assertions on
  ORCHESTRATOR_CORE_CYTHON_TRACE=1   line tracing for coverage (never for releases)
  ORCHESTRATOR_CORE_SANITIZE=1       AddressSanitizer + UndefinedBehaviorSanitizer
A failed compile fails the build: there is no silent fallback to the pure twin.
"""

import os
import platform

from setuptools import Extension, setup


def _flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def extensions() -> list:
    if _flag("ORCHESTRATOR_CORE_NO_EXTENSIONS") or platform.python_implementation() != "CPython":
        return []
    from Cython.Build import cythonize

    directives = {
        "language_level": 3,
        "embedsignature": True,
        "freethreading_compatible": True,
        "boundscheck": False,
        "wraparound": False,
        "cdivision": True,
        "initializedcheck": False,
    }
    macros = []
    compile_args: list = []
    link_args: list = []
    if _flag("ORCHESTRATOR_CORE_CYTHON_TRACE"):
        directives["linetrace"] = True
        macros.append(("CYTHON_TRACE_NOGIL", "1"))
    if os.name != "nt":
        if _flag("ORCHESTRATOR_CORE_DEBUG_BUILD") or _flag("ORCHESTRATOR_CORE_SANITIZE"):
            compile_args += ["-O0", "-g3", "-UNDEBUG"]
        else:
            compile_args += ["-O2", "-g0"]  # sysconfig's -g would ship 1 MB of DWARF per wheel
        if _flag("ORCHESTRATOR_CORE_SANITIZE"):
            san = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
            compile_args += san
            link_args += san
    ext = Extension(
        "orchestrator_core._core_c",
        ["src/orchestrator_core/_core_c.pyx"],
        depends=["src/orchestrator_core/_oc_sync.h", "src/orchestrator_core/_core_c.pxd"],
        define_macros=macros,
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    return cythonize([ext], compiler_directives=directives)


setup(ext_modules=extensions())
