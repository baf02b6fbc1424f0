#!/usr/bin/env bash
# Create (once) a Python venv at ${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}/venv with
# eclipse-zenoh==1.10.2 (the zenoh Python binding, same protocol version as the
# nodes) and msgpack, for scripts that publish/subscribe on the mesh.
# Idempotent. Prints the venv's python path on stdout.
set -euo pipefail

ZENOH_VERSION=1.10.2
TOOLS="${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}"
VENV="$TOOLS/venv"
PY="$VENV/bin/python"

log() { echo "install-python: $*" >&2; }

check() {
    [ -x "$PY" ] || return 1
    timeout 60 "$PY" - "$ZENOH_VERSION" <<'PYEOF' >&2
import sys
import importlib.metadata as md
want = sys.argv[1]
import zenoh, msgpack  # noqa: F401  (import must work, not just be installed)
have = md.version("eclipse-zenoh")
# the binding has no zenoh.__version__; the distribution metadata is authoritative
if have != want:
    print(f"eclipse-zenoh is {have}, want {want}", file=sys.stderr)
    sys.exit(1)
print(f"eclipse-zenoh {have} (import zenoh ok: {zenoh.__file__}), msgpack {md.version('msgpack')}, python {sys.version.split()[0]}")
PYEOF
}

if check; then
    echo "$PY"
    exit 0
fi

# Pick a Python >= 3.8 to build the venv with.
BASE_PY="${PYTHON:-}"
if [ -z "$BASE_PY" ]; then
    for c in python3 python; do
        if command -v "$c" >/dev/null 2>&1; then BASE_PY="$c"; break; fi
    done
fi
if [ -z "$BASE_PY" ] || ! "$BASE_PY" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    log "no python3 with venv/ensurepip; installing python3-venv with apt"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv
    BASE_PY=/usr/bin/python3
fi

if [ ! -x "$PY" ]; then
    log "creating venv $VENV (with $("$BASE_PY" --version 2>&1))"
    mkdir -p "$TOOLS"
    "$BASE_PY" -m venv "$VENV"
fi
log "installing eclipse-zenoh==$ZENOH_VERSION msgpack"
"$PY" -m pip install --disable-pip-version-check -q --upgrade pip >&2 || true
"$PY" -m pip install --disable-pip-version-check -q "eclipse-zenoh==$ZENOH_VERSION" msgpack >&2

check || { log "verification failed"; exit 1; }
echo "$PY"
