#!/usr/bin/env bash
# Runs the gRPC tests against the native front end built with AddressSanitizer and
# UndefinedBehaviorSanitizer, reproducibly, in one command (from anywhere in the checkout):
#
#     bash native/asan.sh                  # build (incremental), check, run the tests
#     bash native/asan.sh -x -k fuzz       # extra arguments go to pytest
#     SKIP_BUILD=1 bash native/asan.sh     # reuse the last sanitized build
#
# What it does:
#   1. Builds ./native with -fsanitize=address,undefined into build/asan/ (ignored by git),
#      NOT into .venv: the venv's extension, native/build/ and the default build stay as
#      they are. Flags go in through scikit-build-core's config settings, so
#      native/CMakeLists.txt needs no sanitizer option.
#   2. Checks that, under exactly the environment the tests get, `import
#      conveyor_grpc_native` resolves to the sanitized build, that it links libasan, and
#      that a deliberate ASan error (a canary) does land in the log folder.
#   3. Runs the gRPC tests (pytest -k grpc in tests/integration, which takes in the native
#      front end's own tests, test_grpc_native.py, and its fuzz tests,
#      test_fuzz_grpc_native.py; plus the native codec's and the corking's unit tests) with
#      the native front end (CONVEYOR_GRPC_FRONTEND=native, the default). The servers under
#      test are subprocesses of pytest and inherit LD_PRELOAD, PYTHONPATH and the *SAN_OPTIONS.
#   4. Gathers every sanitizer report from every process into one file (REPORT, default
#      /tmp/asan_report.txt) and exits non-zero if pytest failed or any report was written.
#
# Only the extension (and its generated protobuf code) is instrumented. CPython, numpy,
# onnxruntime, torch, gRPC C++ and grpcio are not: ASan still catches the extension's bad
# accesses to memory they allocated (malloc is ASan's everywhere), but not their own bugs.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
# Under build/, which .gitignore ignores. cmake/: the CMake build folder, kept between runs
# so that a rerun recompiles only what changed; site/: the installed package, put first on
# sys.path; logs/: the sanitizers' reports and pytest's output.
ASAN_DIR="${ASAN_DIR:-$ROOT/build/asan}"
SITE="$ASAN_DIR/site"
LOGS="$ASAN_DIR/logs"
REPORT="${REPORT:-/tmp/asan_report.txt}"

# -fsanitize=undefined alongside ASan: GCC supports the pair, both runtimes load together.
# -fno-omit-frame-pointer: whole stacks in the reports (ASan unwinds by frame pointers).
# RelWithDebInfo: -O2 -g, so the reports carry file:line, while the code stays close to
# the Release build's (-O3); Debug's -O0 would change timing too much for the threaded
# server. NDEBUG stays defined, as in the shipped build.
SAN_FLAGS="${SAN_FLAGS:--fsanitize=address,undefined -fno-omit-frame-pointer}"
BUILD_TYPE="${BUILD_TYPE:-RelWithDebInfo}"

mkdir -p "$ASAN_DIR" "$LOGS"

# 1. Build. At most 2 compile jobs (the machine is shared, like `make native`).
# The build tools (native/pyproject.toml's build-system.requires: scikit-build-core,
# pybind11, from the lock: requirements/native-build.txt) live in their own venv, build/asan/buildenv, on the same base interpreter as
# .venv (so the same CPython ABI), and pip runs with --no-build-isolation: an isolated build
# puts pybind11 in a new /tmp folder every time, which makes CMake recompile everything
# (minutes under ASan); with a fixed one an unchanged rebuild takes seconds.
BUILD_ENV="$ASAN_DIR/buildenv"
if [[ ! -x "$BUILD_ENV/bin/python" ]]; then
    "$("$PYTHON" -c 'import sys; print(sys._base_executable)')" -m venv "$BUILD_ENV"
fi
"$BUILD_ENV/bin/python" -m pip install -q --require-hashes -r requirements/native-build.txt
# --target: install into a plain folder, not the venv; --upgrade replaces the previous
# build there; --no-deps: nothing else comes with it. build-dir: the CMake folder under
# build/asan (the default, native/build/{wheel_tag}, is the venv build's). The link needs
# the sanitizer flags too (CMAKE_MODULE_LINKER_FLAGS: pybind11's module is a MODULE
# library), so that the module records libasan/libubsan as its dependencies.
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    echo "[asan] building ./native ($BUILD_TYPE, $SAN_FLAGS) into $SITE"
    CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
        "$BUILD_ENV/bin/python" -m pip install -q --no-build-isolation --no-deps --upgrade \
        --target "$SITE" \
        --config-settings=build-dir="$ASAN_DIR/cmake" \
        --config-settings=cmake.build-type="$BUILD_TYPE" \
        --config-settings=cmake.define.CMAKE_CXX_FLAGS="$SAN_FLAGS" \
        --config-settings=cmake.define.CMAKE_MODULE_LINKER_FLAGS="$SAN_FLAGS" \
        ./native
fi

SO=$(ls "$SITE"/conveyor_grpc_native/_native*.so)
readelf -d "$SO" | grep -q 'NEEDED.*libasan' \
    || { echo "[asan] $SO does not link libasan: not a sanitized build" >&2; exit 1; }

# 2. The environment of the test run.
# The sanitized module first on sys.path, ahead of the venv's site-packages (PYTHONPATH
# entries come before them); the server subprocesses inherit it.
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
export CONVEYOR_GRPC_FRONTEND=native
# python is not linked with ASan, so its runtime must be loaded first, before any other
# library (else "ASan runtime does not come first in initial library list"): LD_PRELOAD.
# libubsan with it, so that both runtimes are in place before the module is dlopen()ed.
LIBASAN=$(g++ -print-file-name=libasan.so)
LIBUBSAN=$(g++ -print-file-name=libubsan.so)
[[ -e "$LIBASAN" && -e "$LIBUBSAN" ]] || { echo "[asan] no libasan/libubsan from g++" >&2; exit 1; }
export LD_PRELOAD="$LIBASAN $LIBUBSAN"
# detect_leaks=0: CPython does not free everything at exit (interned strings, static
#   types, module state) and neither do numpy/onnxruntime/torch, so LeakSanitizer would
#   report thousands of "leaks" from outside the extension at every interpreter exit.
# log_path: each process writes its reports to its own file, <log_path>.<pid>. The
#   servers run as pytest subprocesses whose stderr the test harness reads (and only shows
#   when a test fails); some tests also match on that stderr, which a report would upset.
# halt_on_error=1 (ASan's default, spelt out): the first error ends the process (exit 1),
#   so the test that caused it fails where it happened.
# detect_stack_use_after_return=1: also catch a callback that outlives a stack frame
#   it captured by reference (gRPC's threads call back into the extension); costs a little
#   memory per thread, only in instrumented frames.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:log_path=$LOGS/asan:halt_on_error=1:detect_stack_use_after_return=1}"
# UBSan: print the stack with each report; log like ASan. Its checks recover (GCC's
# default), so one finding does not end the server: every finding of the run is logged,
# and step 4 fails the run on any of them.
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=0:log_path=$LOGS/ubsan}"

rm -f "$LOGS"/asan.* "$LOGS"/ubsan.* "$LOGS"/canary.* "$REPORT"

# 3. The module the tests will import is the sanitized one (same interpreter, same env).
IMPORTED=$("$PYTHON" -c 'import conveyor_grpc_native as m; print(m.__file__)')
echo "[asan] conveyor_grpc_native: $IMPORTED"
[[ "$IMPORTED" == "$SITE/"* ]] || { echo "[asan] imported $IMPORTED, not the build in $SITE" >&2; exit 1; }
# And a report does reach the log folder: a deliberate use-after-free (libc's memset, which
# ASan intercepts, on a freed malloc block) in a throwaway interpreter, logged apart
# (a later log_path overrides the earlier one). No file here would mean that "no reports"
# at the end proves nothing.
ASAN_OPTIONS="$ASAN_OPTIONS:log_path=$LOGS/canary" "$PYTHON" -c 'import ctypes
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
block = libc.malloc(8)
libc.free(block)
ctypes.memset(block, 0, 8)' || true
if ! grep -qs "heap-use-after-free" "$LOGS"/canary.*; then
    echo "[asan] the canary's report did not reach $LOGS: ASan is not active" >&2
    exit 1
fi
rm -f "$LOGS"/canary.*

echo "[asan] LD_PRELOAD=$LD_PRELOAD"
echo "[asan] ASAN_OPTIONS=$ASAN_OPTIONS"
echo "[asan] UBSAN_OPTIONS=$UBSAN_OPTIONS"
start=$SECONDS
rc=0
"$PYTHON" -m pytest -q -p no:cacheprovider -k grpc \
    tests/integration tests/unit/test_grpc_native_codec.py tests/unit/test_grpc_native_cork.py \
    "$@" 2>&1 \
    | tee "$LOGS/pytest.log" || rc=$?
echo "[asan] pytest exited $rc after $((SECONDS - start)) s"

# 4. Reports, from pytest itself and from every server it started.
shopt -s nullglob
reports=("$LOGS"/asan.* "$LOGS"/ubsan.*)
if ((${#reports[@]})); then
    for f in "${reports[@]}"; do
        echo "==== $f"
        cat "$f"
    done >"$REPORT"
    echo "[asan] ${#reports[@]} sanitizer report file(s), gathered in $REPORT" >&2
    exit 1
fi
echo "[asan] no sanitizer reports"
exit "$rc"
