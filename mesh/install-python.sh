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

source "$(dirname "${BASH_SOURCE[0]}")/../scripts/python-venv.sh"
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

make_venv "$VENV" 8 python3 python
log "installing eclipse-zenoh==$ZENOH_VERSION msgpack"
"$PY" -m pip install --disable-pip-version-check -q --upgrade pip >&2 || true
"$PY" -m pip install --disable-pip-version-check -q "eclipse-zenoh==$ZENOH_VERSION" msgpack >&2

check || { log "verification failed"; exit 1; }
echo "$PY"
