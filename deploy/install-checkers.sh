#!/usr/bin/env bash
# Create (once) a Python venv at ${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}/deploy-venv
# with the pinned packages deploy/check.py needs (python-hcl2, PyYAML, json5).
# Idempotent: does nothing when they are installed at these versions. Prints the
# venv's python path on stdout.
set -euo pipefail

TOOLS="${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}"
VENV="$TOOLS/deploy-venv"
PY="$VENV/bin/python"
# exact pins, dependencies included
PINS=(python-hcl2==8.1.4 lark==1.3.1 regex==2026.11.19 PyYAML==6.0.4 json5==0.17.3)

source "$(dirname "${BASH_SOURCE[0]}")/../scripts/python-venv.sh"
log() { echo "install-checkers: $*" >&2; }

check() {
    [ -x "$PY" ] || return 1
    timeout 60 "$PY" - "${PINS[@]}" <<'PYEOF' >&2
import sys
import importlib.metadata as md
bad = []
for pin in sys.argv[1:]:
    name, want = pin.split("==")
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have != want:
        bad.append(f"{name} {have or 'missing'} (want {want})")
import hcl2, yaml, json5  # noqa: F401,E401  (import must work, not just be installed)
if bad:
    print("; ".join(bad), file=sys.stderr)
    sys.exit(1)
print(f"deploy checkers: {' '.join(sys.argv[1:])}, python {sys.version.split()[0]}")
PYEOF
}

if check 2>/dev/null; then
    check
    echo "$PY"
    exit 0
fi

make_venv "$VENV" 11 python3.11 python3 python
log "installing ${PINS[*]}"
"$PY" -m pip install --disable-pip-version-check -q "${PINS[@]}" >&2

check || { log "verification failed"; exit 1; }
echo "$PY"
