# Sourced by the install scripts that keep a private Python venv
# (mesh/install-python.sh, deploy/install-checkers.sh); they define `log`.
#
# make_venv VENV MIN_MINOR CANDIDATE...: creates VENV unless it exists, with
# $PYTHON or the first CANDIDATE on PATH, which must be Python >= 3.MIN_MINOR
# with venv and ensurepip; without one, installs Debian's python3-venv (root,
# or passwordless sudo) and uses /usr/bin/python3.
make_venv() {
    local venv=$1 min=$2
    shift 2
    local base="${PYTHON:-}" c
    if [ -z "$base" ]; then
        for c in "$@"; do
            if command -v "$c" >/dev/null 2>&1; then base="$c"; break; fi
        done
    fi
    if [ -z "$base" ] || ! "$base" -c "import sys, venv, ensurepip; assert sys.version_info >= (3, $min)" >/dev/null 2>&1; then
        log "no python3 >= 3.$min with venv/ensurepip; installing python3-venv with apt"
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3 python3-venv
        base=/usr/bin/python3
    fi
    if [ ! -x "$venv/bin/python" ]; then
        log "creating venv $venv (with $("$base" --version 2>&1))"
        mkdir -p "$(dirname "$venv")"
        "$base" -m venv "$venv"
    fi
}
