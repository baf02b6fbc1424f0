#!/usr/bin/env bash
# A three-region prscd mesh on this machine (loopback only):
#
#   region  zenohd router        prscd node (peer of its router)
#   eu      127.0.0.11:7447      https://127.0.0.1:8443/v1   MESH_ID=eu
#   us      127.0.0.12:7447      https://127.0.0.2:8443/v1   MESH_ID=us
#   ap      127.0.0.13:7447      https://127.0.0.3:8443/v1   MESH_ID=ap
#
# Usage:
#   mesh/three-regions.sh start [--tls [--no-mtls]] [--build]
#   mesh/three-regions.sh stop
#   mesh/three-regions.sh status      # exit status 0 only if all six run
#   mesh/three-regions.sh restart [same options as start]
#
#   --tls       zenoh links over TLS (tls/127.0.0.1x:7447) with mutual TLS, certs from
#               mesh/certs.sh in $CERT_DIR (made if missing)
#   --no-mtls   with --tls: routers do not ask for client certificates
#   --build     run `cargo build --release` first even if the binary exists
#
# Environment:
#   RUN_DIR        run directory: logs, pid files, configs (default /tmp/prscd-three-regions)
#   PRSCD_BIN      prscd binary (default $CARGO_TARGET_DIR/release/prscd, built if missing)
#   ZENOHD_BIN     zenohd binary (default $PRSCD_TOOLS/bin/zenohd, installed if missing)
#   PRSCD_TOOLS    tools dir (default ~/.cache/prscd-tools)
#   CERT_DIR       zenoh TLS certs for --tls (default $RUN_DIR/certs)
#   PORT           prscd port on every node (default 8443)
#   APPS           passed to every node (default: unset = dev app, public key `dev`)
#   START_TIMEOUT  seconds to wait for everything to come up (default 45)
#   STOP_TIMEOUT   seconds to wait after SIGTERM before SIGKILL (default 15)
#   ZENOHD_LOG     RUST_LOG for the routers (default: info + session open/close at debug)
#   PRSCD_LOG      RUST_LOG for the nodes (default: unset, the node's own default)
set -Eeuo pipefail

trap 'log "failed: line $LINENO: $BASH_COMMAND"' ERR

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
RUN_DIR="${RUN_DIR:-/tmp/prscd-three-regions}"
PRSCD_TOOLS="${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}"
export PRSCD_TOOLS
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/prscd-target}"
export CARGO_TARGET_DIR
PORT="${PORT:-8443}"
START_TIMEOUT="${START_TIMEOUT:-45}"
STOP_TIMEOUT="${STOP_TIMEOUT:-15}"
ZENOHD_LOG="${ZENOHD_LOG:-info,zenoh::net::runtime::orchestrator=debug,zenoh_transport::unicast::establishment=debug,zenoh_link_tls=debug}"

REGIONS=(eu us ap)
declare -A ROUTER_IP=([eu]=127.0.0.11 [us]=127.0.0.12 [ap]=127.0.0.13)
declare -A NODE_IP=([eu]=127.0.0.1 [us]=127.0.0.2 [ap]=127.0.0.3)

log() { echo "three-regions: $*" >&2; }
die() { log "$*"; exit 1; }

# ---------------------------------------------------------------- processes ----
pidfile() { echo "$RUN_DIR/pids/$1.pid"; }        # $1 = router-eu | node-eu ...

# pid of a running component, or nothing. Checks that the pid still runs the
# expected binary, so a recycled pid is never signalled.
running_pid() {
    local f pid exe
    f="$(pidfile "$1")"
    [ -s "$f" ] || return 1
    pid="$(cat "$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    case "$1" in
        router-*) [[ "$exe" == */zenohd* ]] || return 1 ;;
        node-*)   [[ "$exe" == */prscd* ]] || return 1 ;;
    esac
    echo "$pid"
}

# ------------------------------------------------------------------ binaries ----
find_zenohd() {
    if [ -n "${ZENOHD_BIN:-}" ]; then
        [ -x "$ZENOHD_BIN" ] || die "ZENOHD_BIN=$ZENOHD_BIN is not executable"
        echo "$ZENOHD_BIN"; return
    fi
    if [ -x "$PRSCD_TOOLS/bin/zenohd" ]; then echo "$PRSCD_TOOLS/bin/zenohd"; return; fi
    log "zenohd not found; installing 1.10.2 with mesh/install-zenohd.sh (several minutes)"
    "$HERE/install-zenohd.sh"
}

find_prscd() {
    local build="$1"
    if [ -n "${PRSCD_BIN:-}" ]; then
        [ -x "$PRSCD_BIN" ] || die "PRSCD_BIN=$PRSCD_BIN is not executable"
        echo "$PRSCD_BIN"; return
    fi
    local bin="$CARGO_TARGET_DIR/release/prscd"
    if [ "$build" = 1 ] || [ ! -x "$bin" ]; then
        log "building prscd: cargo build --release (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
        (cd "$REPO" && cargo build --release >&2) || die "cargo build failed"
    fi
    [ -x "$bin" ] || die "no prscd binary at $bin"
    if [ -n "$(find "$REPO/src" "$REPO/Cargo.toml" "$REPO/Cargo.lock" -newer "$bin" -print -quit 2>/dev/null)" ]; then
        log "warning: $bin is older than the sources; add --build to rebuild it"
    fi
    echo "$bin"
}

# ------------------------------------------------------------------- configs ----
# Concrete zenoh configs in $RUN_DIR/config: copies of mesh/regions/*.json5, or for
# --tls the templates with @CERT_DIR@ replaced (zenoh does not expand env vars).
write_configs() {
    local tls="$1" mtls="$2" cert_dir="$3" r src
    mkdir -p "$RUN_DIR/config"
    for r in "${REGIONS[@]}"; do
        for src in "router-$r" "node-$r"; do
            if [ "$tls" = 1 ]; then
                sed -e "s|@CERT_DIR@|$cert_dir|g" "$HERE/regions/tls/$src.json5" > "$RUN_DIR/config/$src.json5"
                if [ "$mtls" = 0 ]; then
                    sed -i -e 's|enable_mtls: true|enable_mtls: false|' "$RUN_DIR/config/$src.json5"
                fi
                if grep -q '@CERT_DIR@' "$RUN_DIR/config/$src.json5"; then die "unreplaced placeholder in $src.json5"; fi
            else
                cp "$HERE/regions/$src.json5" "$RUN_DIR/config/$src.json5"
            fi
        done
    done
}

# ------------------------------------------------------------------- waiting ----
# wait_until SECONDS DESCRIPTION COMMAND...: polls COMMAND every 0.2 s.
wait_until() {
    local secs="$1" what="$2"; shift 2
    local deadline=$((SECONDS + secs))
    while ! "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || { log "timed out after ${secs}s waiting for $what"; return 1; }
        sleep 0.2
    done
}

listening() { # ip port
    ss -Hltn "src $1:$2" 2>/dev/null | grep -q LISTEN
}

component_ready() { # name logfile readiness-check...
    local name="$1"; shift
    if ! running_pid "$name" >/dev/null; then
        log "$name exited during start-up; last lines of $RUN_DIR/logs/$name.log:"
        tail -n 30 "$RUN_DIR/logs/$name.log" >&2 || true
        exit 1
    fi
    "$@"
}

# the previous run's log is kept as NAME.log.1
keep_previous_log() {
    local f="$RUN_DIR/logs/$1.log"
    if [ -e "$f" ]; then mv -f "$f" "$f.1"; fi
}

node_ready() { grep -q 'ready: port=' "$RUN_DIR/logs/$1.log" 2>/dev/null; }

# -------------------------------------------------------------------- start -----
start() {
    local tls=0 mtls=1 build=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --tls) tls=1 ;;
            --no-mtls) mtls=0 ;;
            --build) build=1 ;;
            *) die "unknown option for start: $1" ;;
        esac
        shift
    done
    [ "$mtls" = 1 ] || [ "$tls" = 1 ] || die "--no-mtls only makes sense with --tls"

    mkdir -p "$RUN_DIR"/{pids,logs,config}
    local mode="tcp"; [ "$tls" = 1 ] && { [ "$mtls" = 1 ] && mode="tls+mtls" || mode="tls"; }
    local any_running=0 c
    if [ -s "$RUN_DIR/port" ] && [ "$(cat "$RUN_DIR/port")" != "$PORT" ]; then
        for c in node-eu node-us node-ap; do
            if running_pid "$c" >/dev/null; then
                die "nodes already run on port $(cat "$RUN_DIR/port"); run '$0 stop' first"
            fi
        done
    fi
    for r in "${REGIONS[@]}"; do
        for c in "router-$r" "node-$r"; do
            if running_pid "$c" >/dev/null; then any_running=1; fi
        done
    done
    if [ "$any_running" = 1 ] && [ -s "$RUN_DIR/mode" ] && [ "$(cat "$RUN_DIR/mode")" != "$mode" ]; then
        die "already running in mode $(cat "$RUN_DIR/mode"); run '$0 stop' first"
    fi

    local zenohd prscd cert_dir=""
    zenohd="$(find_zenohd)"
    prscd="$(find_prscd "$build")"
    if [ "$tls" = 1 ]; then
        cert_dir="$(mkdir -p "${CERT_DIR:-$RUN_DIR/certs}" && cd "${CERT_DIR:-$RUN_DIR/certs}" && pwd)"
        "$HERE/certs.sh" "$cert_dir" router:eu router:us router:ap node:eu node:us node:ap backend:dev:dev
    fi
    write_configs "$tls" "$mtls" "$cert_dir"
    echo "$mode" > "$RUN_DIR/mode"
    echo "$PORT" > "$RUN_DIR/port"
    log "mode $mode, run dir $RUN_DIR"
    log "zenohd: $(RUST_LOG=off "$zenohd" --version 2>/dev/null | grep -m1 "^zenohd ") ($zenohd)"
    log "prscd:  $prscd"

    # routers first, so nodes find their router on their first dial
    local r name pid
    for r in "${REGIONS[@]}"; do
        name="router-$r"
        if pid="$(running_pid "$name")"; then log "$name already running (pid $pid)"; continue; fi
        if listening "${ROUTER_IP[$r]}" 7447; then die "${ROUTER_IP[$r]}:7447 is taken by another process"; fi
        mkdir -p "$RUN_DIR/$name"
        keep_previous_log "$name"
        (
            cd "$RUN_DIR/$name"
            exec env RUST_LOG="$ZENOHD_LOG" "$zenohd" -c "$RUN_DIR/config/$name.json5"
        ) >>"$RUN_DIR/logs/$name.log" 2>&1 </dev/null &
        echo $! > "$(pidfile "$name")"
        log "started $name (pid $!) on ${ROUTER_IP[$r]}:7447"
    done
    for r in "${REGIONS[@]}"; do
        wait_until "$START_TIMEOUT" "router-$r to listen on ${ROUTER_IP[$r]}:7447" \
            component_ready "router-$r" listening "${ROUTER_IP[$r]}" 7447 || exit 1
    done

    for r in "${REGIONS[@]}"; do
        name="node-$r"
        if pid="$(running_pid "$name")"; then log "$name already running (pid $pid)"; continue; fi
        if listening "${NODE_IP[$r]}" "$PORT"; then die "${NODE_IP[$r]}:$PORT is taken by another process"; fi
        mkdir -p "$RUN_DIR/$name"
        keep_previous_log "$name"   # readiness is judged on this run's log only
        (
            cd "$RUN_DIR/$name"
            unset ZENOH_LISTEN ZENOH_CONNECT CERT_FILE KEY_FILE
            export MESH_ID="$r" HOST="${NODE_IP[$r]}" \
                ZENOH_CONFIG="$RUN_DIR/config/$name.json5" \
                DEV_CERT_DIR="$RUN_DIR/$name/.prscd-dev" PID_FILE="$RUN_DIR/$name/prscd.pid"
            if [ -n "${PRSCD_LOG:-}" ]; then export RUST_LOG="$PRSCD_LOG"; fi
            exec env PORT="$PORT" "$prscd"
        ) >>"$RUN_DIR/logs/$name.log" 2>&1 </dev/null &
        echo $! > "$(pidfile "$name")"
        log "started $name (pid $!) on ${NODE_IP[$r]}:$PORT, zenoh peer of router-$r (its only link)"
    done
    for r in "${REGIONS[@]}"; do
        wait_until "$START_TIMEOUT" "node-$r to log 'ready:'" \
            component_ready "node-$r" node_ready "node-$r" || {
                log "last lines of $RUN_DIR/logs/node-$r.log:"; tail -n 30 "$RUN_DIR/logs/node-$r.log" >&2; exit 1; }
    done
    log "all up"
    print_access
}

# what to point a browser at
print_access() {
    local r spki spkis=() origins=() key
    if [ -n "${APPS:-}" ]; then key="(from APPS: ${APPS%%:*} ...)"; else key="dev"; fi
    echo
    for r in "${REGIONS[@]}"; do
        spki="$(grep -o 'spki=[A-Za-z0-9+/=]*' "$RUN_DIR/logs/node-$r.log" 2>/dev/null | tail -n1 | cut -d= -f2- || true)"
        echo "region $r  (MESH_ID=$r, zenoh via router-$r ${ROUTER_IP[$r]}:7447)"
        echo "  URL:        https://${NODE_IP[$r]}:$PORT/v1"
        echo "  public key: $key"
        if [ -n "$spki" ]; then
            echo "  Chromium:   --ignore-certificate-errors-spki-list=$spki --origin-to-force-quic-on=${NODE_IP[$r]}:$PORT"
            spkis+=("$spki")
        else
            echo "  Chromium:   (no dev certificate: the node uses CERT_FILE/KEY_FILE)"
        fi
        origins+=("${NODE_IP[$r]}:$PORT")
        echo "  health:     curl -k https://${NODE_IP[$r]}:$PORT/health"
        echo "  log:        $RUN_DIR/logs/node-$r.log"
    done
    if [ "${#spkis[@]}" -gt 0 ]; then
        local IFS=,
        echo
        echo "one Chromium for all three regions:"
        echo "  chromium --user-data-dir=/tmp/prscd-chromium --ignore-certificate-errors-spki-list=${spkis[*]} --origin-to-force-quic-on=${origins[*]}"
    fi
    echo
}

# --------------------------------------------------------------------- stop -----
stop() {
    local c pid pids=() names=()
    # nodes first (they drain and withdraw their liveliness tokens), then routers
    for c in node-eu node-us node-ap router-eu router-us router-ap; do
        if pid="$(running_pid "$c")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid"); names+=("$c")
            log "SIGTERM $c (pid $pid)"
        fi
        if [[ "$c" == node-ap ]] && [ "${#pids[@]}" -gt 0 ]; then
            # give the nodes their drain before the routers go (bounded)
            wait_gone "$STOP_TIMEOUT" "${pids[@]}" || true
        fi
    done
    if [ "${#pids[@]}" -gt 0 ] && ! wait_gone "$STOP_TIMEOUT" "${pids[@]}"; then
        for i in "${!pids[@]}"; do
            if kill -0 "${pids[$i]}" 2>/dev/null; then
                log "${names[$i]} (pid ${pids[$i]}) still running after ${STOP_TIMEOUT}s: SIGKILL"
                kill -KILL "${pids[$i]}" 2>/dev/null || true
            fi
        done
        wait_gone 5 "${pids[@]}" || log "some processes did not die: ${pids[*]}"
    fi
    for c in node-eu node-us node-ap router-eu router-us router-ap; do
        running_pid "$c" >/dev/null || rm -f "$(pidfile "$c")"
    done
    if [ "${#pids[@]}" -gt 0 ]; then log "stopped"; else log "nothing was running"; fi
}

wait_gone() { # seconds pid...
    local secs="$1"; shift
    local deadline=$((SECONDS + secs)) p alive
    while :; do
        alive=0
        for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] && return 0
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

# ------------------------------------------------------------------- status -----
status() {
    local r c pid up=0 total=0 health mode="-"
    [ -s "$RUN_DIR/port" ] && PORT="$(cat "$RUN_DIR/port")"
    [ -s "$RUN_DIR/mode" ] && mode="$(cat "$RUN_DIR/mode")"
    echo "run dir $RUN_DIR (mode $mode)"
    for r in "${REGIONS[@]}"; do
        for c in "router-$r" "node-$r"; do
            total=$((total + 1))
            if pid="$(running_pid "$c")"; then
                up=$((up + 1))
                if [[ "$c" == router-* ]]; then
                    local l="not listening"
                    listening "${ROUTER_IP[$r]}" 7447 && l="listening ${ROUTER_IP[$r]}:7447"
                    printf '  %-10s pid %-7s %s\n' "$c" "$pid" "$l"
                else
                    health="$(curl -sk --max-time 3 "https://${NODE_IP[$r]}:$PORT/health" 2>/dev/null || true)"
                    [ -n "$health" ] || health="(no answer on https://${NODE_IP[$r]}:$PORT/health)"
                    printf '  %-10s pid %-7s https://%s:%s/v1  %s\n' "$c" "$pid" "${NODE_IP[$r]}" "$PORT" \
                        "$(summarize_health "$health")"
                fi
            else
                printf '  %-10s stopped\n' "$c"
            fi
        done
    done
    # zenoh's own view: every router reachable through the first running one, with
    # its sessions (admin space), if the Python tools are installed
    # (mesh/install-python.sh). Uses that region's node config, so TLS works too.
    local py="$PRSCD_TOOLS/venv/bin/python"
    if [ -x "$py" ]; then
        for r in "${REGIONS[@]}"; do
            running_pid "router-$r" >/dev/null || continue
            echo "zenoh routers, as seen through router-$r:"
            timeout 15 "$py" "$HERE/zinfo.py" --config "$RUN_DIR/config/node-$r.json5" 2>&1 \
                | sed "s/^/  /" || echo "  (admin space query failed)"
            break
        done
    fi
    echo "$up of $total running"
    if [ "$up" -eq "$total" ]; then return 0; else return 1; fi
}

summarize_health() { # condense /health JSON to the interesting parts, without jq
    local h="$1"
    if command -v python3 >/dev/null 2>&1; then
        python3 -c '
import json, sys
try:
    h = json.loads(sys.argv[1])
except Exception:
    print(sys.argv[1][:120]); sys.exit()
out = [h.get("status", "?")]
m = h.get("mesh")
if isinstance(m, dict):
    out.append("mesh " + " ".join(f"{k}={v}" for k, v in m.items() if not isinstance(v, (dict, list))))
c = h.get("connections")
if c is not None:
    out.append(f"connections={c if not isinstance(c, dict) else sum(v for v in c.values() if isinstance(v, int))}")
print(", ".join(out))
' "$h"
    else
        echo "${h:0:120}"
    fi
}

# --------------------------------------------------------------------- main -----
cmd="${1:-}"; [ $# -gt 0 ] && shift
case "$cmd" in
    start) start "$@" ;;
    stop) stop ;;
    status) status || exit 1 ;;
    restart) stop; start "$@" ;;
    *) sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
