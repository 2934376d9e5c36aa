#!/usr/bin/env bash
# Install Triton's perf_analyzer into .tools/perf_analyzer (ignored by git).
#
# The PyPI package `perf-analyzer` is an empty placeholder; the real binary
# ships inside the tritonclient manylinux wheels.  2.51.0 is the newest one
# that runs on Debian 12's glibc (2.36).  It needs libb64 (Debian libb64-0d)
# and libcudart.so.12 (PyPI nvidia-cuda-runtime-cu12, kept out of the venv);
# it runs without a GPU.
#
# Result: .tools/perf_analyzer/bin/perf_analyzer  (bash wrapper that sets
# LD_LIBRARY_PATH and execs perf_analyzer.bin).
#
# Idempotent: when the wrapper already exists and `--help` works, it exits.
# Env: PYTHON (default .venv/bin/python), FORCE=1 to reinstall.
set -euo pipefail

TRITONCLIENT_VERSION=2.51.0
CUDART_VERSION=12.6.77   # CUDA 12.6, what Triton 24.10 / client 2.51.0 was built with
# Debian packages for the binary's shared libs (libb64.so.0d, libssl.so.3,
# libstdc++.so.6, libz.so.1); all but libb64-0d are normally present already.
APT_PACKAGES=(libb64-0d libssl3 libstdc++6 zlib1g)

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO_ROOT"

PYTHON="${PYTHON:-.venv/bin/python}"
PREFIX="$REPO_ROOT/.tools/perf_analyzer"
BIN_DIR="$PREFIX/bin"
CUDA_DIR="$PREFIX/cuda"
WRAPPER="$BIN_DIR/perf_analyzer"
REAL_BIN="$BIN_DIR/perf_analyzer.bin"
CUDART_LIB_DIR="$CUDA_DIR/nvidia/cuda_runtime/lib"

log() { echo "[install_perf_analyzer] $*"; }
die() { echo "[install_perf_analyzer] ERROR: $*" >&2; exit 1; }

# perf_analyzer --help exits non-zero on some versions; judge by the text.
works() {
    local out
    out="$("$WRAPPER" --help 2>&1 || true)"
    grep -q -- "--concurrency-range" <<<"$out" || grep -qi "usage" <<<"$out"
}

# ---- fast path -------------------------------------------------------------
if [[ "${FORCE:-0}" != "1" && -x "$WRAPPER" && -x "$REAL_BIN" ]] && works; then
    log "already installed: $WRAPPER"
    echo "$WRAPPER"
    exit 0
fi

[[ "$(uname -s)-$(uname -m)" == "Linux-x86_64" ]] || die "only Linux x86_64 is supported"
[[ -x "$PYTHON" ]] || command -v "$PYTHON" >/dev/null 2>&1 || die "python not found: $PYTHON (set PYTHON=...)"
PIP=("$PYTHON" -m pip --disable-pip-version-check)

# ---- Debian packages -------------------------------------------------------
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
if ((${#missing[@]})); then
    if [[ "$(id -u)" == "0" ]]; then
        SUDO=()
    elif command -v sudo >/dev/null 2>&1; then
        SUDO=(sudo)
    else
        die "missing Debian packages: ${missing[*]}; not root and no sudo. Run: apt-get install -y ${missing[*]}"
    fi
    apt_install() {
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
            apt-get install -y --no-install-recommends "${missing[@]}"
    }
    log "apt-get install ${missing[*]}"
    if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null || ! apt_install; then
        log "apt-get update (package lists empty or install failed)"
        "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
        apt_install
    fi
else
    log "Debian packages present: ${APT_PACKAGES[*]}"
fi

# ---- perf_analyzer binary from the tritonclient wheel -----------------------
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$BIN_DIR"

log "downloading tritonclient==$TRITONCLIENT_VERSION wheel (manylinux x86_64)"
"${PIP[@]}" download -q --no-deps --only-binary=:all: \
    --platform manylinux1_x86_64 --platform manylinux2014_x86_64 \
    -d "$TMP/wheel" "tritonclient==$TRITONCLIENT_VERSION"
whl="$(ls "$TMP"/wheel/tritonclient-"$TRITONCLIENT_VERSION"-*.whl 2>/dev/null | head -n1)"
[[ -n "$whl" ]] || die "no tritonclient wheel downloaded"

log "extracting perf_analyzer from $(basename "$whl")"
"$PYTHON" - "$whl" "$REAL_BIN.tmp" <<'EOF'
import shutil, sys, zipfile
whl, dest = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    names = [n for n in z.namelist() if n.endswith(".data/data/bin/perf_analyzer")]
    if not names:
        sys.exit("perf_analyzer not found in " + whl)
    with z.open(names[0]) as src, open(dest, "wb") as dst:
        shutil.copyfileobj(src, dst)
EOF
chmod 0755 "$REAL_BIN.tmp"
mv -f "$REAL_BIN.tmp" "$REAL_BIN"

# ---- libcudart.so.12 ---------------------------------------------------------
if [[ -e "$CUDART_LIB_DIR/libcudart.so.12" ]]; then
    log "libcudart.so.12 present in $CUDART_LIB_DIR"
else
    log "pip install --target $CUDA_DIR nvidia-cuda-runtime-cu12==$CUDART_VERSION"
    rm -rf "$CUDA_DIR"
    "${PIP[@]}" install -q --no-deps --no-compile --target "$CUDA_DIR" \
        "nvidia-cuda-runtime-cu12==$CUDART_VERSION"
    [[ -e "$CUDART_LIB_DIR/libcudart.so.12" ]] \
        || die "libcudart.so.12 not found under $CUDA_DIR after install"
fi

# ---- wrapper -----------------------------------------------------------------
log "writing wrapper $WRAPPER"
cat >"$WRAPPER.tmp" <<'EOF'
#!/usr/bin/env bash
# Generated by benchmarks/install_perf_analyzer.sh
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export LD_LIBRARY_PATH="$here/../cuda/nvidia/cuda_runtime/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$here/perf_analyzer.bin" "$@"
EOF
chmod 0755 "$WRAPPER.tmp"
mv -f "$WRAPPER.tmp" "$WRAPPER"

# ---- verify ------------------------------------------------------------------
if ! works; then
    echo "---- $WRAPPER --help output:" >&2
    "$WRAPPER" --help 2>&1 | head -n 20 >&2 || true
    echo "---- ldd:" >&2
    LD_LIBRARY_PATH="$CUDART_LIB_DIR" ldd "$REAL_BIN" >&2 || true
    die "perf_analyzer does not run"
fi
log "installed: $WRAPPER"
echo "$WRAPPER"
