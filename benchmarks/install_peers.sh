#!/usr/bin/env bash
# Install the two peers that benchmarks/python_peers.py compares Conveyor's Python models
# with, each in a virtualenv of its own under .tools/ (ignored by git):
#
#   .tools/pytriton-venv   nvidia-pytriton (Triton Inference Server's own front end,
#                          bundled in the wheel, with a Python function as the model).
#                          PyTriton 0.7 needs numpy<2.
#   .tools/mlserver-venv   mlserver==1.7.1 (Seldon's server; a custom MLModel runtime).
#                          uvloop 0.22+ breaks MLServer 1.7's event-loop setup, hence
#                          uvloop<0.22.
#
# Their dependencies (numpy<2, FastAPI, their own grpcio and protobuf pins) would clash
# with Conveyor's, so neither goes into .venv.
#
# The PyTriton wheel bundles tritonserver and its libraries (libb64, libnuma, libcurl, ...);
# from the system it needs only glibc >= 2.35, libstdc++6 and zlib1g for the server, and,
# for the Python backend's stub process (triton_python_backend_stub, which runs the
# model's proxy), libpython3.11 and libexpat1. Debian 12 has those in a standard install;
# any that is missing is installed with apt-get (after one apt-get update).
#
# Idempotent: a venv whose packages import (and, for PyTriton, whose executables find all
# their shared libraries) is left as it is. FORCE=1 rebuilds both.
# Env: PYTHON (default python3, must be 3.11), PYTRITON_VERSION, MLSERVER_VERSION.
set -euo pipefail

PYTRITON_VERSION="${PYTRITON_VERSION:-0.7.0}"
MLSERVER_VERSION="${MLSERVER_VERSION:-1.7.1}"
APT_PACKAGES=(libstdc++6 zlib1g libpython3.11 libexpat1)

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$REPO_ROOT/.tools"
PYTHON="${PYTHON:-python3}"
PYTRITON_VENV="$TOOLS/pytriton-venv"
MLSERVER_VENV="$TOOLS/mlserver-venv"
PIP_FLAGS=(-q --disable-pip-version-check)

log() { echo "[install_peers] $*"; }
die() { echo "[install_peers] ERROR: $*" >&2; exit 1; }

command -v "$PYTHON" >/dev/null 2>&1 || die "python not found: $PYTHON (set PYTHON=...)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON is not Python 3.11"
mkdir -p "$TOOLS"

# The executables shipped inside the installed pytriton package: tritonserver and the
# Python backend's stub for Python 3.11.
triton_bins() {
    "$PYTRITON_VENV/bin/python" -c '
import pathlib
import pytriton

root = pathlib.Path(pytriton.__file__).parent / "tritonserver"
print(root / "bin" / "tritonserver")
print(root / "python_backend_stubs" / "3.11" / "triton_python_backend_stub")
'
}

# Shared libraries that the dynamic linker cannot find for those executables, one a line.
missing_libs() {
    local bins bin
    bins="$(triton_bins)" || { echo "pytriton does not import"; return 0; }
    for bin in $bins; do
        if [[ ! -x "$bin" ]]; then
            echo "$bin: not installed"
            continue
        fi
        ldd "$bin" | grep "not found" | sed "s|^|$(basename "$bin"): |" || true
    done
}

pytriton_works() {
    [[ -x "$PYTRITON_VENV/bin/python" ]] || return 1
    "$PYTRITON_VENV/bin/python" -c 'import pytriton.triton, numpy' >/dev/null 2>&1 || return 1
    [[ -z "$(missing_libs)" ]]
}

mlserver_works() {
    [[ -x "$MLSERVER_VENV/bin/mlserver" ]] || return 1
    "$MLSERVER_VENV/bin/python" -c 'import mlserver, mlserver.grpc, uvloop' >/dev/null 2>&1
}

install_apt_packages() {
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$pkg")
        fi
    done
    ((${#missing[@]})) || return 0
    local sudo=()
    if [[ "$(id -u)" != "0" ]]; then
        command -v sudo >/dev/null 2>&1 \
            || die "missing Debian packages: ${missing[*]}; run: apt-get install -y ${missing[*]}"
        sudo=(sudo)
    fi
    log "apt-get update; apt-get install ${missing[*]}"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "${missing[@]}"
}

new_venv() {
    rm -rf "$1"
    "$PYTHON" -m venv "$1"
    "$1/bin/python" -m pip install "${PIP_FLAGS[@]}" --upgrade pip
}

# ---- PyTriton ----------------------------------------------------------------
if [[ "${FORCE:-0}" != "1" ]] && pytriton_works; then
    log "PyTriton already installed: $PYTRITON_VENV"
else
    # Keep a venv whose packages are in place and only lack system libraries.
    if [[ "${FORCE:-0}" == "1" ]] \
        || ! "$PYTRITON_VENV/bin/python" -c 'import pytriton.triton' >/dev/null 2>&1; then
        log "creating $PYTRITON_VENV (nvidia-pytriton==$PYTRITON_VERSION)"
        new_venv "$PYTRITON_VENV"
        "$PYTRITON_VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" \
            "nvidia-pytriton==$PYTRITON_VERSION" "numpy<2"
    fi
    install_apt_packages
    if ! pytriton_works; then
        missing_libs >&2
        die "PyTriton's tritonserver in $PYTRITON_VENV cannot start (above)"
    fi
    log "PyTriton installed: $PYTRITON_VENV"
fi

# ---- MLServer ----------------------------------------------------------------
if [[ "${FORCE:-0}" != "1" ]] && mlserver_works; then
    log "MLServer already installed: $MLSERVER_VENV"
else
    log "creating $MLSERVER_VENV (mlserver==$MLSERVER_VERSION)"
    new_venv "$MLSERVER_VENV"
    "$MLSERVER_VENV/bin/python" -m pip install "${PIP_FLAGS[@]}" \
        "mlserver==$MLSERVER_VERSION" "uvloop<0.22"
    mlserver_works || die "mlserver does not import in $MLSERVER_VENV"
    log "MLServer installed: $MLSERVER_VENV"
fi

"$PYTRITON_VENV/bin/python" -m pip show nvidia-pytriton 2>/dev/null | grep '^Version' \
    | sed 's/^Version:/[install_peers] nvidia-pytriton/' || true
"$MLSERVER_VENV/bin/mlserver" --version 2>/dev/null | sed 's/^/[install_peers] /' || true
