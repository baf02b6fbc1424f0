#!/usr/bin/env bash
# Start/stop a local Arize Phoenix OTLP trace store for prscd tests and dev.
#
#   deploy/observability/phoenix.sh start  [--dir DIR] [--grpc-port N] [--http-port N] [--timeout S]
#   deploy/observability/phoenix.sh stop   [--dir DIR]
#   deploy/observability/phoenix.sh status [--dir DIR]
#
# Everything Phoenix writes (sqlite db phoenix.db, its own pid dir, our
# phoenix.pid / phoenix.log / phoenix.env) lives in DIR.  Both listeners are
# bound to 127.0.0.1 only:
#   OTLP/gRPC   127.0.0.1:<grpc-port>            (default 4317)
#   HTTP        http://127.0.0.1:<http-port>      (default 6006)
#               UI at /, REST API at /v1/..., OTLP/HTTP (protobuf) at /v1/traces
#
# `start` returns once /healthz answers (bounded by --timeout, default 90 s)
# and the gRPC port accepts connections; it fails if a port is already in use
# (so a test never talks to somebody else's server).  After `start`,
# DIR/phoenix.env holds shell-sourceable PHOENIX_HTTP_URL / PHOENIX_GRPC_ENDPOINT
# / PHOENIX_GRPC_PORT / PHOENIX_HTTP_PORT / PHOENIX_PID.
#
# Env:
#   PRSCD_TOOLS    tools root (default $HOME/.cache/prscd-tools); the venv is
#                  $PRSCD_TOOLS/phoenix-venv (see install-phoenix.sh)
#   PHOENIX_VENV   override the venv path
#   PHOENIX_DIR    default for --dir (default $PRSCD_TOOLS/phoenix-data)
#
# Exit status: 0 ok / running; 1 error; 3 (status) not running.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TOOLS="${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}"
VENV="${PHOENIX_VENV:-$TOOLS/phoenix-venv}"
DIR="${PHOENIX_DIR:-$TOOLS/phoenix-data}"
GRPC_PORT=4317
HTTP_PORT=6006
TIMEOUT=90
HOST=127.0.0.1

usage() { sed -n '2,27p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit "${1:-1}"; }
log() { echo "phoenix.sh: $*" >&2; }

[[ $# -ge 1 ]] || usage
CMD="$1"; shift
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dir) DIR="$2"; shift 2 ;;
        --grpc-port) GRPC_PORT="$2"; shift 2 ;;
        --http-port) HTTP_PORT="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
[[ "$GRPC_PORT" =~ ^[0-9]+$ && "$HTTP_PORT" =~ ^[0-9]+$ && "$TIMEOUT" =~ ^[0-9]+$ ]] \
    || { log "ports and timeout must be integers"; exit 1; }
[[ "$GRPC_PORT" != "$HTTP_PORT" ]] || { log "--grpc-port and --http-port must differ"; exit 1; }

PIDFILE="$DIR/phoenix.pid"
LOGFILE="$DIR/phoenix.log"
ENVFILE="$DIR/phoenix.env"

# pid of a live phoenix we started from DIR, or nothing
running_pid() {
    [[ -f "$PIDFILE" ]] || return 1
    local pid; pid="$(cat "$PIDFILE" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # guard against pid reuse: it must be our launcher
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q 'phoenix_serve_loopback.py serve' || return 1
    echo "$pid"
}

port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

healthy() {
    local url="http://$HOST:$HTTP_PORT/healthz" code
    if command -v curl >/dev/null; then
        code="$(curl -s -o /dev/null -m 2 -w '%{http_code}' "$url" 2>/dev/null || true)"
    else
        code="$("$VENV/bin/python" -c 'import sys, urllib.request as u; print(u.urlopen(sys.argv[1], timeout=2).status)' "$url" 2>/dev/null || true)"
    fi
    [[ "$code" == 200 ]]
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        [[ -f "$ENVFILE" ]] && . "$ENVFILE"
        echo "running pid=$pid dir=$DIR http=${PHOENIX_HTTP_URL:-?} grpc=${PHOENIX_GRPC_ENDPOINT:-?}"
        return 0
    fi
    echo "not running (dir=$DIR)"
    return 3
}

cmd_stop() {
    local pid i
    if ! pid="$(running_pid)"; then
        log "not running (dir=$DIR)"
        rm -f "$PIDFILE"
        return 0
    fi
    # phoenix was started with setsid: pid is the process-group leader
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do               # up to 15 s for a clean shutdown
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "pid $pid did not exit after SIGTERM; sending SIGKILL"
        kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$PIDFILE" "$ENVFILE"
    log "stopped pid $pid"
}

cmd_start() {
    local pid
    if pid="$(running_pid)"; then
        [[ -f "$ENVFILE" ]] && . "$ENVFILE"
        if [[ "${PHOENIX_GRPC_PORT:-}" == "$GRPC_PORT" && "${PHOENIX_HTTP_PORT:-}" == "$HTTP_PORT" ]]; then
            log "already running, pid $pid (dir=$DIR)"
            cmd_status
            return 0
        fi
        log "already running from $DIR with other ports (grpc ${PHOENIX_GRPC_PORT:-?}, http ${PHOENIX_HTTP_PORT:-?}); stop it first"
        return 1
    fi
    # (cheap check: importing phoenix takes 10-20 s)
    if [[ ! -x "$VENV/bin/python" || ! -x "$VENV/bin/phoenix" ]]; then
        log "no phoenix in $VENV; run deploy/observability/install-phoenix.sh first"
        return 1
    fi
    local p
    for p in "$GRPC_PORT" "$HTTP_PORT"; do
        if port_open "$p"; then
            log "port $HOST:$p is already in use; pick free ports with --grpc-port/--http-port"
            return 1
        fi
    done

    mkdir -p "$DIR"
    DIR="$(cd "$DIR" && pwd)"
    PIDFILE="$DIR/phoenix.pid"; LOGFILE="$DIR/phoenix.log"; ENVFILE="$DIR/phoenix.env"
    rm -f "$ENVFILE"

    # Scrub inherited PHOENIX_* / OTEL_* (a test shell may carry prscd's
    # OTEL_EXPORTER_OTLP_* settings, or a PHOENIX_SQL_DATABASE_URL) and set
    # exactly what we want.
    local -a scrub=()
    local v
    for v in $(compgen -e); do
        case "$v" in PHOENIX_*|OTEL_*) scrub+=(-u "$v") ;; esac
    done

    local start_ts; start_ts=$(date +%s)
    env "${scrub[@]}" \
        PHOENIX_HOST="$HOST" \
        PHOENIX_PORT="$HTTP_PORT" \
        PHOENIX_GRPC_PORT="$GRPC_PORT" \
        PHOENIX_WORKING_DIR="$DIR" \
        PHOENIX_SQL_DATABASE_URL="sqlite:///$DIR/phoenix.db" \
        PHOENIX_TELEMETRY_ENABLED=false \
        PHOENIX_ALLOW_EXTERNAL_RESOURCES=false \
        PHOENIX_DISABLE_AGENT_ASSISTANT=true \
        PHOENIX_ENABLE_MCP_SERVER=false \
        PHOENIX_ENABLE_PROMETHEUS=false \
        PHOENIX_LOG_MIGRATIONS=false \
        PYTHONUNBUFFERED=1 \
        setsid "$VENV/bin/python" "$HERE/phoenix_serve_loopback.py" serve \
        </dev/null >"$LOGFILE" 2>&1 &
    pid=$!
    echo "$pid" > "$PIDFILE"

    local deadline=$((start_ts + TIMEOUT))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            log "phoenix exited during startup; last lines of $LOGFILE:"
            tail -n 30 "$LOGFILE" >&2 || true
            rm -f "$PIDFILE"
            return 1
        fi
        if healthy && port_open "$GRPC_PORT"; then break; fi
        if (( $(date +%s) >= deadline )); then
            log "phoenix not ready after ${TIMEOUT}s; stopping it. last lines of $LOGFILE:"
            tail -n 30 "$LOGFILE" >&2 || true
            cmd_stop
            return 1
        fi
        sleep 0.5
    done

    cat > "$ENVFILE" <<EOT
PHOENIX_PID=$pid
PHOENIX_HTTP_PORT=$HTTP_PORT
PHOENIX_GRPC_PORT=$GRPC_PORT
PHOENIX_HTTP_URL=http://$HOST:$HTTP_PORT
PHOENIX_GRPC_ENDPOINT=http://$HOST:$GRPC_PORT
EOT
    log "ready in $(( $(date +%s) - start_ts )) s: pid $pid, http://$HOST:$HTTP_PORT (OTLP/HTTP /v1/traces), grpc http://$HOST:$GRPC_PORT, log $LOGFILE"
    cmd_status
}

case "$CMD" in
    start) cmd_start ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    -h|--help|help) usage 0 ;;
    *) log "unknown command: $CMD"; usage ;;
esac
