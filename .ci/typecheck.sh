#!/usr/bin/env bash
# Static checks: ruff (lint + format check), mypy --strict on the package, and mypy.stubtest of
# the compiled engine's stub (_core_c.pyi) against the built module AND against the pure twin
# (_core_py.py, the annotated specification), so the stub agrees with both.
#
# Usage: bash .ci/typecheck.sh [WORKDIR]
#   WORKDIR  where the tools venv goes (default: a fresh mktemp -d). The script makes its own venv
#            with pinned mypy and ruff plus the optional dependencies' packages (for their types);
#            it does not use the caller's environment.
# Environment:
#   PYTHON   interpreter for the venv (default: python3)
# Needs the compiled engine built in place (src/orchestrator_core/_core_c*.so for that
# interpreter); if it is missing the script builds it in place (setup.py build_ext --inplace).
# Runs every check, then exits non-zero if any failed.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$(mktemp -d "${TMPDIR:-/tmp}/oc-typecheck.XXXXXX")}"
PYTHON="${PYTHON:-python3}"
MYPY_VERSION=2.4.1
RUFF_VERSION=0.17.6
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
cd "$ROOT"

step() { printf '\n==> %s\n' "$*"; }
failed=()
check() {
    local name="$1"
    shift
    step "$name"
    if "$@"; then
        echo "ok: $name"
    else
        echo "FAILED: $name"
        failed+=("$name")
    fi
}

step "tools venv in $WORK/venv-typecheck (mypy==$MYPY_VERSION, ruff==$RUFF_VERSION)"
if [ ! -x "$WORK/venv-typecheck/bin/python" ]; then
    "$PYTHON" -m venv "$WORK/venv-typecheck"
fi
VPY="$WORK/venv-typecheck/bin/python"
"$VPY" -m pip install -q --upgrade pip
# The optional dependencies (prometheus_client, redis, matplotlib, ...) are installed so that mypy
# checks our use of them against their real types; they are read from pyproject.toml.
"$VPY" -m pip install -q "mypy==$MYPY_VERSION" "ruff==$RUFF_VERSION" 'tomli; python_version < "3.11"'
# Also the build requirements (setuptools, Cython), for building the engine in place if needed.
mapfile -t extras < <("$VPY" - <<'EOF'
import sys
if sys.version_info >= (3, 11):
    import tomllib
else:
    import tomli as tomllib
with open("pyproject.toml", "rb") as f:
    config = tomllib.load(f)
project = config["project"]
deps = set(project.get("dependencies", [])) | set(config["build-system"]["requires"])
for group in project.get("optional-dependencies", {}).values():
    deps.update(group)
print("\n".join(sorted(deps)))
EOF
)
if [ "${#extras[@]}" -gt 0 ]; then
    "$VPY" -m pip install -q "${extras[@]}"
fi

# The compiled engine for stubtest: the in-place build, or build it in place now.
export PYTHONPATH="$ROOT/src"
if ! "$VPY" -c 'import orchestrator_core._core_c' 2>/dev/null; then
    step "building the compiled engine in place (none importable for $("$VPY" -c 'import sys; print(sys.version.split()[0])'))"
    "$VPY" setup.py -q build_ext --inplace
fi

RUFF="$WORK/venv-typecheck/bin/ruff"
check "ruff check" "$RUFF" check --no-cache .
check "ruff format --check" "$RUFF" format --check --no-cache .
check "mypy --strict (package)" "$VPY" -m mypy --strict --no-incremental src/orchestrator_core

check "stubtest: _core_c.pyi vs the compiled module" \
    "$VPY" -m mypy.stubtest orchestrator_core._core_c --allowlist .ci/stubtest-allowlist.txt

# The same stub against the pure twin: a copy of the package in which _core_c.py IS _core_py.py.
# Expected differences only: being a __slots__ class, Queue is a disjoint base through its slots
# rather than by being a C type, and the twin's Queue has a __del__ that breaks its internal
# reference cycles (the compiled engine frees its C entries in its dealloc instead).
twin_check() {
    local twin="$WORK/twin"
    rm -rf "$twin"
    mkdir -p "$twin"
    cp -r src/orchestrator_core "$twin/"
    rm -f "$twin"/orchestrator_core/_core_c.*.so "$twin"/orchestrator_core/_core_c.*.pyd
    cp src/orchestrator_core/_core_py.py "$twin/orchestrator_core/_core_c.py"
    printf '%s\n' 'orchestrator_core._core_c.Queue' 'orchestrator_core._core_c.Queue.__del__' >"$twin/allowlist.txt"
    # Only the stub is under test here: errors mypy finds in the twin's own modules are the
    # concern of the mypy step above.
    printf '[mypy]\n[mypy-orchestrator_core.*]\nignore_errors = True\n[mypy-orchestrator_core._core_c]\nignore_errors = False\n' \
        >"$twin/mypy.ini"
    (cd "$twin" && PYTHONPATH="$twin" ORCHESTRATOR_CORE_NO_EXTENSIONS=1 "$VPY" -m mypy.stubtest \
        orchestrator_core._core_c --allowlist allowlist.txt --mypy-config-file mypy.ini)
}
check "stubtest: _core_c.pyi vs the pure twin _core_py.py" twin_check

if [ "${#failed[@]}" -gt 0 ]; then
    printf '\ntypecheck.sh: FAILED: %s\n' "${failed[*]}" >&2
    exit 1
fi
printf '\ntypecheck.sh: all checks passed\n'
