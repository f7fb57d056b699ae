#!/usr/bin/env bash
# Local packaging checks (Linux, no Docker): sdist -> wheel built FROM the sdist -> metadata and
# content checks -> install into a fresh virtual environment -> test suite against the installed
# wheel (compiled engine required) -> auditwheel verdict. Also builds the pure-Python wheel
# (ORCHESTRATOR_CORE_NO_EXTENSIONS=1, what PyPy installs) from the same sdist and checks it.
#
# Usage: bash .ci/packaging.sh [WORKDIR]
#   WORKDIR  scratch directory (created if missing; default: a fresh mktemp -d). Everything the
#            script installs goes into virtual environments under it; the checkout is never written.
# Environment:
#   PYTHON   interpreter for the virtual environments (default: python3)
#   PYTEST_ARGS  extra arguments for the test run (default: none)
# Exit status: non-zero as soon as any step fails.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${1:-$(mktemp -d "${TMPDIR:-/tmp}/oc-packaging.XXXXXX")}"
PYTHON="${PYTHON:-python3}"
PKG=orchestrator_core
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"

step() { printf '\n==> %s\n' "$*"; }
fail() {
    printf 'packaging.sh: FAIL: %s\n' "$*" >&2
    exit 1
}

step "work directory: $WORK"
rm -rf "$WORK/src" "$WORK/dist" "$WORK/purewheel" "$WORK/unpacked" "$WORK/testrun" "$WORK/venv-test"
mkdir -p "$WORK/src" "$WORK/dist" "$WORK/purewheel" "$WORK/unpacked" "$WORK/testrun"

# A copy of the checkout as a clean clone would have it (tracked files plus new files not yet
# ignored), so building never writes egg-info or generated C into the working tree.
step "copy the checkout (git-tracked and unignored files)"
existing_files() {
    local f
    while IFS= read -r -d '' f; do
        if [ -e "$f" ]; then printf '%s\0' "$f"; fi
    done
}
(cd "$ROOT" && git ls-files -z --cached --others --exclude-standard | existing_files | tar --null -T - -cf -) |
    tar -C "$WORK/src" -xf -

step "tools venv (build, twine, check-wheel-contents, auditwheel)"
"$PYTHON" -m venv "$WORK/venv-tools"
TOOLS="$WORK/venv-tools/bin/python"
"$TOOLS" -m pip install -q --upgrade pip
"$TOOLS" -m pip install -q build twine check-wheel-contents auditwheel

# ---------------------------------------------------------------------------------------------
step "build the sdist"
"$TOOLS" -m build --sdist --outdir "$WORK/dist" "$WORK/src"
shopt -s nullglob
sdists=("$WORK"/dist/*.tar.gz)
[ "${#sdists[@]}" -eq 1 ] || fail "expected exactly one sdist, found ${#sdists[@]}"
SDIST="${sdists[0]}"
echo "sdist: $(basename "$SDIST") ($(stat -c %s "$SDIST") bytes)"

step "sdist contents"
tar -tzf "$SDIST" | sed 's|^[^/]*/||' | sort >"$WORK/sdist-files.txt"
for f in \
    pyproject.toml setup.py MANIFEST.in README.md PKG-INFO \
    src/$PKG/__init__.py src/$PKG/_core_py.py src/$PKG/_core_c.pyx src/$PKG/_core_c.pxd \
    src/$PKG/_core_c.pyi src/$PKG/_oc_sync.h src/$PKG/py.typed tests/conftest.py; do
    grep -qxF "$f" "$WORK/sdist-files.txt" || fail "sdist lacks $f"
done
if grep -E '\.(c|so|pyd|pyc)$' "$WORK/sdist-files.txt"; then
    fail "sdist contains generated or compiled files (listed above)"
fi
echo "ok: .pyx/.pxd/.h/.pyi/py.typed/tests present; no generated .c, no binaries"

# ---------------------------------------------------------------------------------------------
step "build the wheel from the unpacked sdist"
tar -xzf "$SDIST" -C "$WORK/unpacked"
SDIST_DIR="$(find "$WORK/unpacked" -mindepth 1 -maxdepth 1 -type d)"
env -u ORCHESTRATOR_CORE_NO_EXTENSIONS "$TOOLS" -m build --wheel --outdir "$WORK/dist" "$SDIST_DIR"
wheels=("$WORK"/dist/*.whl)
[ "${#wheels[@]}" -eq 1 ] || fail "expected exactly one wheel, found ${#wheels[@]}"
WHEEL="${wheels[0]}"
echo "wheel: $(basename "$WHEEL") ($(stat -c %s "$WHEEL") bytes)"
case "$(basename "$WHEEL")" in
*-py3-none-any.whl) fail "the wheel is pure Python: the compiled engine was not built" ;;
esac

step "wheel contents"
"$TOOLS" -m zipfile -l "$WHEEL" | awk 'NR > 1 {print $1}' | sort >"$WORK/wheel-files.txt"
for f in $PKG/__init__.py $PKG/_core_py.py $PKG/_core_c.pyi $PKG/py.typed; do
    grep -qxF "$f" "$WORK/wheel-files.txt" || fail "wheel lacks $f"
done
grep -qE "^$PKG/_core_c\..*(\.so|\.pyd)$" "$WORK/wheel-files.txt" || fail "wheel lacks the compiled _core_c module"
if grep -E '\.(c|pyx|pxd|h)$' "$WORK/wheel-files.txt"; then
    fail "wheel contains C/Cython sources (listed above)"
fi
if grep -E '^(tests|benchmarks)/' "$WORK/wheel-files.txt"; then
    fail "wheel contains tests or benchmarks (listed above)"
fi
echo "ok: compiled module, py.typed and _core_c.pyi present; no .c/.pyx/.pxd/.h"

# ---------------------------------------------------------------------------------------------
step "pure-Python wheel (ORCHESTRATOR_CORE_NO_EXTENSIONS=1) from the same sdist"
ORCHESTRATOR_CORE_NO_EXTENSIONS=1 "$TOOLS" -m build --wheel --outdir "$WORK/purewheel" "$SDIST_DIR"
pure=("$WORK"/purewheel/*.whl)
[ "${#pure[@]}" -eq 1 ] || fail "expected exactly one pure wheel, found ${#pure[@]}"
PURE="${pure[0]}"
case "$(basename "$PURE")" in
*-py3-none-any.whl) ;;
*) fail "ORCHESTRATOR_CORE_NO_EXTENSIONS=1 did not give a py3-none-any wheel: $(basename "$PURE")" ;;
esac
if "$TOOLS" -m zipfile -l "$PURE" | grep -E '\.(so|pyd|c|pyx|pxd|h)\b'; then
    fail "the pure wheel contains compiled or C/Cython files (listed above)"
fi
echo "pure wheel: $(basename "$PURE") ($(stat -c %s "$PURE") bytes)"

# ---------------------------------------------------------------------------------------------
step "twine check --strict"
"$TOOLS" -m twine check --strict "$SDIST" "$WHEEL" "$PURE"

step "check-wheel-contents"
# --package compares a wheel with the source package: W101 (a source file missing from the wheel)
# and W102 (a wheel file with no source). The engine's C/Cython sources stay out of wheels on
# purpose (--package-omit). The compiled wheel's one extra file, the built _core_c module, is
# what W102 would flag, so the compiled wheel skips W102 and the check below lists its extras.
OMIT='.*,CVS,RCS,*.pyc,*.pyo,*.egg-info,__pycache__,*.c,*.pyx,*.pxd,*.h,*.so,*.pyd'
CWC="$WORK/venv-tools/bin/check-wheel-contents"
"$CWC" --toplevel "$PKG" --package "$SDIST_DIR/src/$PKG" --package-omit "$OMIT" "$PURE"
"$CWC" --toplevel "$PKG" --package "$SDIST_DIR/src/$PKG" --package-omit "$OMIT" --ignore W102 "$WHEEL"
extra="$(grep -vE "^$PKG-[^/]*\.dist-info/" "$WORK/wheel-files.txt" |
    grep -vxF -f <("$TOOLS" -m zipfile -l "$PURE" | awk 'NR > 1 {print $1}') || true)"
if [ "$(printf '%s\n' "$extra" | grep -c .)" -ne 1 ] || ! printf '%s\n' "$extra" | grep -qE "^$PKG/_core_c\..*(so|pyd)$"; then
    fail "the compiled wheel should differ from the pure one by the _core_c module only; differs by: $extra"
fi
echo "ok: the compiled wheel = the pure wheel + $extra"

# ---------------------------------------------------------------------------------------------
if [ "$(uname -s)" = Linux ]; then
    step "auditwheel show"
    "$WORK/venv-tools/bin/auditwheel" show "$WHEEL" | tee "$WORK/auditwheel.txt"
    grep -q 'manylinux_' "$WORK/auditwheel.txt" || fail "auditwheel found no manylinux policy the wheel satisfies"
fi

# ---------------------------------------------------------------------------------------------
step "install the wheel (+ test extra) into a fresh venv"
"$PYTHON" -m venv "$WORK/venv-test"
VPY="$WORK/venv-test/bin/python"
"$VPY" -m pip install -q --upgrade pip
"$VPY" -m pip install -q "${WHEEL}[test]"

step "test suite against the installed wheel (ORCHESTRATOR_CORE_REQUIRE_EXTENSION=1)"
# A copy of tests/ (with pyproject.toml for the pytest configuration and README.md, whose
# examples tests/test_readme.py runs) outside the source tree: the only orchestrator_core
# importable from here is the installed one.
cp -r "$SDIST_DIR/tests" "$WORK/testrun/tests"
cp "$SDIST_DIR/pyproject.toml" "$SDIST_DIR/README.md" "$WORK/testrun/"
cd "$WORK/testrun"
export ORCHESTRATOR_CORE_REQUIRE_EXTENSION=1
unset ORCHESTRATOR_CORE_NO_EXTENSIONS PYTHONPATH
"$VPY" - <<'EOF'
import pathlib, sys
import orchestrator_core, orchestrator_core._core_c as c
where = pathlib.Path(orchestrator_core.__file__).resolve()
assert pathlib.Path(sys.prefix).resolve() in where.parents, f"imported from {where}, not the venv"
assert orchestrator_core.ENGINE == "c", orchestrator_core.ENGINE
assert orchestrator_core.Queue is c.Queue
print(f"installed package: {where.parent} (ENGINE={orchestrator_core.ENGINE}, {pathlib.Path(c.__file__).name})")
EOF
# shellcheck disable=SC2086  # PYTEST_ARGS is a list of words on purpose
"$VPY" -m pytest -p no:cacheprovider -q tests ${PYTEST_ARGS:-}

step "packaging checks passed"
echo "sdist: $(basename "$SDIST")"
echo "wheel: $(basename "$WHEEL") ($(stat -c %s "$WHEEL") bytes)"
echo "pure wheel: $(basename "$PURE") ($(stat -c %s "$PURE") bytes)"
