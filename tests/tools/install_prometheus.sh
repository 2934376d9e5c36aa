#!/usr/bin/env bash
# Install Debian's `prometheus` package, which brings /usr/bin/prometheus and
# /usr/bin/promtool: the integration tests start the binary themselves (temporary
# config and data folder, loopback port) and the unit tests run `promtool check rules`.
#
# The package's system service is not started: when no /usr/sbin/policy-rc.d exists,
# one that refuses every service start is put in place for the install and removed after.
#
# Idempotent: when both binaries already run, it exits at once.
set -euo pipefail

PACKAGE=prometheus
POLICY=/usr/sbin/policy-rc.d

log() { echo "[install_prometheus] $*"; }
die() { echo "[install_prometheus] ERROR: $*" >&2; exit 1; }

works() {
    prometheus --version >/dev/null 2>&1 && promtool --version >/dev/null 2>&1
}

if works; then
    log "already installed: $(command -v prometheus), $(command -v promtool)"
    exit 0
fi

if [[ "$(id -u)" == "0" ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
else
    die "not root and no sudo. Run: apt-get install -y --no-install-recommends $PACKAGE"
fi

if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$POLICY" >/dev/null
    "${SUDO[@]}" chmod 0755 "$POLICY"
    trap '"${SUDO[@]}" rm -f "$POLICY"' EXIT
fi

apt_install() {
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y --no-install-recommends "$PACKAGE"
}
log "apt-get install $PACKAGE"
if ! compgen -G "/var/lib/apt/lists/*_Packages*" >/dev/null || ! apt_install; then
    log "apt-get update (package lists empty or install failed)"
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q
    apt_install
fi

works || die "prometheus or promtool does not run after installing $PACKAGE"
log "installed: $(prometheus --version 2>&1 | head -n1)"
