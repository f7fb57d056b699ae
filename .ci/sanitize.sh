#!/usr/bin/env bash
# Runs the test suite against the compiled engine built with AddressSanitizer and
# UndefinedBehaviorSanitizer (ORCHESTRATOR_CORE_SANITIZE=1, see setup.py).
#
#   bash .ci/sanitize.sh [pytest args...]      (default: tests, i.e. the whole suite;
#                                              add --run-slow for the long runs)
#
# The source tree is copied to a temporary directory and the extension is built there, in a
# virtual environment that sees the system's site-packages (pytest, hypothesis, Cython);
# nothing in the checkout changes. CPython is not built with ASan, so libasan is preloaded;
# leak detection is off (the interpreter "leaks" its own objects at exit) and
# PYTHONMALLOC=malloc makes every Python allocation visible to ASan, so an overrun of an
# engine buffer into a neighbouring Python object is caught too. ORCHESTRATOR_CORE_SANITIZED=1
# tells the tests; the resident-size bound of tests/test_memory.py is skipped then (ASan's
# quarantine keeps freed memory resident by design), the tracemalloc bounds still apply.
#
# ASan reports are written to files (log_path), which also catches reports from the
# subprocesses the tests start (memory, fork and signal scripts) even when a test would
# otherwise only look at their exit status; UBSan (which ignores log_path here) aborts the
# process it finds undefined behaviour in (halt_on_error=1) and its report is found in the
# test output. The script fails (exit 1) if pytest fails or if any report was written or
# printed, and shows the reports.
#
# Environment: PYTHON (default python3), KEEP_SANITIZE_WORK=1 keeps the temporary directory.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/oc-sanitize.XXXXXX")"
cleanup() {
    if [[ "${KEEP_SANITIZE_WORK:-}" == "1" ]]; then
        echo "sanitize: kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

echo "sanitize: copying the tree to $WORK/tree"
mkdir -p "$WORK/tree"
tar -C "$ROOT" \
    --exclude='./build' --exclude='./dist' --exclude='./.git' --exclude='*.so' --exclude='*.pyd' \
    --exclude='__pycache__' --exclude='*.egg-info' --exclude='./src/orchestrator_core/_core_c.c' \
    -cf - ./src ./tests ./setup.py ./pyproject.toml $(cd "$ROOT" && ls -d README.md MANIFEST.in 2>/dev/null) \
    | tar -C "$WORK/tree" -xf -

echo "sanitize: virtual environment"
# --without-pip: a venv's bundled setuptools would shadow the system's (pyproject needs >= 77).
"$PY" -m venv --system-site-packages --without-pip "$WORK/venv"
VPY="$WORK/venv/bin/python"
# The build requirements and the `test` extra (read from pyproject.toml), unless all of them
# are importable already: on a fresh machine (CI) nothing is.
if ! "$VPY" - >/dev/null 2>&1 <<'PYEOF'
import Cython, hypothesis, pytest, setuptools, redis, prometheus_client, starlette, httpx, jsonschema
assert int(setuptools.__version__.split(".")[0]) >= 77
assert tuple(int(x) for x in Cython.__version__.split(".")[:2]) >= (3, 1)
PYEOF
then
    "$VPY" -m ensurepip -q
    mapfile -t TEST_REQS < <("$VPY" - "$WORK/tree/pyproject.toml" <<'PYEOF'
import sys, tomllib
extras = tomllib.load(open(sys.argv[1], "rb"))["project"]["optional-dependencies"]
seen, todo = [], ["test"]
while todo:  # the extra and the extras it names (orchestrator_core[...])
    for req in extras[todo.pop()]:
        if req.startswith("orchestrator_core[") or req.startswith("orchestrator-core["):
            todo.extend(x.strip() for x in req.split("[", 1)[1].split("]", 1)[0].split(","))
        elif req not in seen:
            seen.append(req)
print("\n".join(seen))
PYEOF
    )
    "$VPY" -m pip install -q "Cython>=3.1" "setuptools>=77" "${TEST_REQS[@]}"
fi

echo "sanitize: building the engine with ORCHESTRATOR_CORE_SANITIZE=1"
# GCC's -fsanitize=undefined leaves out float-cast-overflow (an out-of-range double converted
# to an integer, e.g. a timeout of inf turned into microseconds): add it.
(
    cd "$WORK/tree"
    export CFLAGS="${CFLAGS:-} -fsanitize=float-cast-overflow"
    export LDFLAGS="${LDFLAGS:-} -fsanitize=float-cast-overflow"
    ORCHESTRATOR_CORE_SANITIZE=1 "$VPY" setup.py build_ext --inplace -q
)
SO="$(ls "$WORK"/tree/src/orchestrator_core/_core_c*.so)"
if [[ "$(nm -D "$SO" | grep -c '__asan_init')" == "0" ]]; then
    echo "sanitize: $SO is not instrumented" >&2
    exit 1
fi

LIBASAN="$(gcc -print-file-name=libasan.so)"
if [[ ! -e "$LIBASAN" ]]; then
    echo "sanitize: libasan not found (gcc -print-file-name=libasan.so gave $LIBASAN)" >&2
    exit 1
fi
# libstdc++ too: ASan intercepts __cxa_throw only if libstdc++ is loaded when it starts, and
# C++ extensions the suite imports (matplotlib's ft2font) throw exceptions internally.
PRELOAD="$LIBASAN"
LIBSTDCXX="$(gcc -print-file-name=libstdc++.so)"
if [[ -e "$LIBSTDCXX" ]]; then
    PRELOAD="$PRELOAD $LIBSTDCXX"
fi
REPORTS="$WORK/reports"
mkdir -p "$REPORTS"

echo "sanitize: running pytest ${*:-tests}"
# The output goes to a file and is streamed with `tail --pid`, not through a pipe: if the
# run is killed mid-test (UBSan halts the process), a server a fixture started survives it
# (until the process-group kill below) and would hold a pipe open.
: >"$WORK/pytest.log"
set +e
set -m  # the run gets its own process group: whatever it leaves behind can be found below
(
    cd "$WORK/tree"
    export LD_PRELOAD="$PRELOAD"
    export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:log_path=$REPORTS/asan:verify_asan_link_order=0"
    export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
    export PYTHONMALLOC=malloc
    export PYTHONPATH="$WORK/tree/src"
    export ORCHESTRATOR_CORE_REQUIRE_EXTENSION=1
    export ORCHESTRATOR_CORE_SANITIZED=1
    unset ORCHESTRATOR_CORE_NO_EXTENSIONS
    "$VPY" -c 'import orchestrator_core._core_c as c, sys; print("sanitize: engine", c.__file__)'
    # --capture=sys: pytest captures Python's sys.stdout/stderr only, so a report the C
    # runtime writes to file descriptor 2 (UBSan ignores log_path next to ASan) reaches the
    # log even when it kills the process in the middle of a test.
    exec "$VPY" -m pytest -q -p no:cacheprovider --capture=sys "${@:-tests}"
) >>"$WORK/pytest.log" 2>&1 &
PYTEST_PID=$!
set +m
tail -n +1 -f --pid="$PYTEST_PID" "$WORK/pytest.log"
wait "$PYTEST_PID"
STATUS=$?
# A process the run started and left behind (a fixture's Redis server, when a sanitizer
# halted pytest before teardown) is still in its process group: end it.
kill -- -"$PYTEST_PID" 2>/dev/null || true
set -e

if grep -qE "runtime error:|ERROR: AddressSanitizer|AddressSanitizer: CHECK failed|ERROR: LeakSanitizer" "$WORK/pytest.log"; then
    echo "sanitize: SANITIZER REPORT in the test output (see above)" >&2
    exit 1
fi
if compgen -G "$REPORTS/*" >/dev/null; then
    echo "sanitize: SANITIZER REPORTS:" >&2
    for f in "$REPORTS"/*; do
        echo "---- $f" >&2
        cat "$f" >&2
    done
    exit 1
fi
if [[ $STATUS -ne 0 ]]; then
    echo "sanitize: pytest failed (exit $STATUS)" >&2
    exit 1
fi
echo "sanitize: OK (no sanitizer report, tests passed)"
