#!/usr/bin/env bash
# The Debian packages the native gRPC front end builds against: gRPC C++ 1.51, protobuf and
# protoc (Debian 12). Idempotent: installs only what is missing, `apt-get update` only if the
# first try fails (as benchmarks/install_perf_analyzer.sh does).
set -euo pipefail

PACKAGES=(libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev cmake g++)

missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

SUDO=()
[[ "$(id -u)" -eq 0 ]] || SUDO=(sudo)
echo "[native] installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}" \
    || { "${SUDO[@]}" apt-get update && "${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"; }
