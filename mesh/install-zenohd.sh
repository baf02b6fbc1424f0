#!/usr/bin/env bash
# Install zenohd (the zenoh router) exactly 1.10.2 from crates.io into
# ${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}/bin. Idempotent: does nothing when the
# installed binary already reports 1.10.2. Prints the binary's path on stdout.
#
#   mesh/install-zenohd.sh            # install if needed, print path
#   ZENOHD_JOBS=1 mesh/install-zenohd.sh   # fewer parallel rustc jobs (low memory)
set -euo pipefail

VERSION=1.10.2
TOOLS="${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}"
BIN="$TOOLS/bin/zenohd"

log() { echo "install-zenohd: $*" >&2; }

installed_version() {
    # `zenohd --version` prints "zenohd v1.10.2 built with rustc ..." (after an INFO
    # log line on stdout unless RUST_LOG=off)
    [ -x "$BIN" ] || return 1
    RUST_LOG=off timeout 20 "$BIN" --version 2>/dev/null | grep -m1 '^zenohd '
}

if v="$(installed_version)" && grep -Eq "(^|[^0-9.])v?${VERSION//./\\.}([^0-9]|$)" <<<"$v"; then
    log "already installed: $v"
    echo "$BIN"
    exit 0
fi

# Build prerequisites: a C toolchain (ring's and other build scripts) and
# pkg-config. zenoh uses rustls/ring, so no libssl-dev or cmake is needed. Only installed
# when missing, non-interactively.
need_pkgs=()
command -v cc >/dev/null 2>&1 || need_pkgs+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "installing Debian packages: ${need_pkgs[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}"
fi

command -v cargo >/dev/null 2>&1 || { log "cargo not found (install Rust: https://rustup.rs)"; exit 1; }

mkdir -p "$TOOLS"
log "building zenohd $VERSION into $TOOLS (takes a while) ..."
jobs_args=()
[ -n "${ZENOHD_JOBS:-}" ] && jobs_args=(--jobs "$ZENOHD_JOBS")
# A dedicated target dir keeps the build cache across re-runs without
# touching prscd's CARGO_TARGET_DIR.
CARGO_TARGET_DIR="${ZENOHD_TARGET_DIR:-$TOOLS/zenohd-target}" \
    cargo install --locked zenohd --version "$VERSION" --root "$TOOLS" "${jobs_args[@]}" >&2

# the build cache is large and not needed once installed
[ -z "${ZENOHD_TARGET_DIR:-}" ] && rm -rf "$TOOLS/zenohd-target"
v="$(installed_version)" || { log "zenohd not runnable after install: $BIN"; exit 1; }
if ! grep -Eq "(^|[^0-9.])v?${VERSION//./\\.}([^0-9]|$)" <<<"$v"; then
    log "unexpected version after install: $v"
    exit 1
fi
log "installed: $v"
echo "$BIN"
