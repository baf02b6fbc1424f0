#!/usr/bin/env bash
# Install (idempotently) Arize Phoenix, a self-contained OTLP trace store, into
# a private venv for prscd's tracing tests.
#
#   deploy/observability/install-phoenix.sh          # prints the phoenix binary path
#   PRSCD_TOOLS=/opt/tools deploy/observability/install-phoenix.sh
#
# Env:
#   PRSCD_TOOLS      tools root (default: $HOME/.cache/prscd-tools)
#   PHOENIX_VERSION  override the pinned version (default below)
#   PYTHON           interpreter used to create the venv (default: python3;
#                    phoenix needs Python >= 3.11, < 3.15)
#   PHOENIX_CONSTRAINTS  pip constraints file (default: phoenix-constraints.txt
#                    next to this script when PHOENIX_VERSION is the pinned one,
#                    none otherwise; set it empty to resolve freely)
#
# The last line of stdout is the absolute path of the venv's `phoenix`
# executable; progress goes to stderr.
set -euo pipefail

PINNED_VERSION=20.26.1
PHOENIX_VERSION="${PHOENIX_VERSION:-$PINNED_VERSION}"
PIP_VERSION=26.3
TOOLS="${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}"
VENV="$TOOLS/phoenix-venv"
PY="${PYTHON:-python3}"
STAMP="$VENV/.prscd-phoenix-version"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -n "${PHOENIX_CONSTRAINTS+set}" ]]; then
    CONSTRAINTS="$PHOENIX_CONSTRAINTS"
elif [[ "$PHOENIX_VERSION" == "$PINNED_VERSION" ]]; then
    CONSTRAINTS="$HERE/phoenix-constraints.txt"
else
    CONSTRAINTS=""   # the lock file belongs to $PINNED_VERSION
fi

log() { echo "install-phoenix: $*" >&2; }

if [[ -x "$VENV/bin/phoenix" && -f "$STAMP" && "$(cat "$STAMP")" == "$PHOENIX_VERSION" ]]; then
    log "arize-phoenix==$PHOENIX_VERSION already installed in $VENV"
    echo "$VENV/bin/phoenix"
    exit 0
fi

if ! "$PY" -c 'import sys; sys.exit(0 if (3, 11) <= sys.version_info[:2] < (3, 15) else 1)'; then
    log "error: $PY is $("$PY" -V 2>&1); arize-phoenix $PHOENIX_VERSION needs Python >=3.11,<3.15 (set PYTHON=...)"
    exit 1
fi

mkdir -p "$TOOLS"
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating venv $VENV"
    "$PY" -m venv "$VENV"
fi

start=$(date +%s)
log "installing arize-phoenix==$PHOENIX_VERSION (first install downloads ~150 packages; takes a few minutes)"
# phoenix-constraints.txt pins the ~140 transitive deps to the set this was
# tested with, so a fresh CI machine gets the same server.
constraints=()
if [[ -n "$CONSTRAINTS" ]]; then constraints=(-c "$CONSTRAINTS"); fi
# a known pip (the venv's bundled one depends on the Python patch release)
"$VENV/bin/python" -m pip install --disable-pip-version-check -q "pip==$PIP_VERSION" >&2
"$VENV/bin/python" -m pip install --disable-pip-version-check -q \
    "${constraints[@]}" "arize-phoenix==$PHOENIX_VERSION" >&2
log "done in $(( $(date +%s) - start )) s"

# cheap sanity check (`phoenix --help` imports the whole server: 10-20 s)
got="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("arize-phoenix"))')"
[[ "$got" == "$PHOENIX_VERSION" && -x "$VENV/bin/phoenix" ]] || { log "error: installed arize-phoenix is '$got'"; exit 1; }
echo "$PHOENIX_VERSION" > "$STAMP"
echo "$VENV/bin/phoenix"
