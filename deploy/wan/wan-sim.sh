#!/usr/bin/env bash
# A simulated WAN on this machine: three regions (eu, us, ap) as Linux network
# namespaces, each with one prscd node (zenoh peer), joined ONLY through a fourth
# namespace, "wan", where prscd-netem relays the inter-region zenoh links with
# one-way delays. IP forwarding is off in "wan" and the regions have no route to
# each other, so the delayed relays are the only way between regions.
#
#   this host ─edge─ [eu 10.201.1.2] ──veth── 10.201.1.1 ┐
#   (browsers)  veths  [us 10.201.2.2] ──veth── 10.201.2.1 ├─ [wan: prscd-netem,
#   10.202.R.1/.2      [ap 10.201.3.2] ──veth── 10.201.3.1 ┘   no IP forwarding]
#
#   eu dials us via 10.201.1.1:7451 (30 ms) and ap via 10.201.1.1:7452 (140 ms);
#   us dials ap via 10.201.2.1:7452 (70 ms); delays apply to each direction.
#
# Usage (as root):
#   deploy/wan/wan-sim.sh start [--build]   # build the topology, start netem + 3 nodes
#   deploy/wan/wan-sim.sh status            # processes, each node's /health, netem lateness
#   deploy/wan/wan-sim.sh cut REGION        # silent partition: REGION's WAN link down
#   deploy/wan/wan-sim.sh heal REGION       # and up again
#   deploy/wan/wan-sim.sh stop              # stop everything, remove the namespaces
#
#   --build   cargo build --release -p prscd -p prscd-netem first (also done
#             when a binary is missing)
#
# Environment:
#   SIM_PREFIX     namespace name prefix (default prscd-sim): $SIM_PREFIX-{wan,eu,us,ap}
#   RUN_DIR        logs, pid files, node working dirs (default /tmp/prscd-wan-sim)
#   PRSCD_BIN      prscd binary (default $CARGO_TARGET_DIR/release/prscd)
#   NETEM_BIN      prscd-netem binary (default $CARGO_TARGET_DIR/release/prscd-netem)
#   DELAY_EU_US, DELAY_US_AP, DELAY_EU_AP   one-way delays (default 30ms, 70ms, 140ms)
#   PORT           node port, TCP + UDP, in every region (default 8443)
#   APPS           passed to every node (default: unset = dev app, public key `dev`)
#   EDGE           1 (default): a veth from this host to each region (10.202.R.1 <->
#                  10.202.R.2) so a browser here can reach the nodes; 0: none
#   START_TIMEOUT  seconds to wait for everything to come up (default 30)
set -Eeuo pipefail

trap 'log "failed: line $LINENO: $BASH_COMMAND"' ERR

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/../.." && pwd)"
SIM_PREFIX="${SIM_PREFIX:-prscd-sim}"
RUN_DIR="${RUN_DIR:-/tmp/prscd-wan-sim}"
CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/prscd-target}"
export CARGO_TARGET_DIR
PORT="${PORT:-8443}"
export PORT
EDGE="${EDGE:-1}"
START_TIMEOUT="${START_TIMEOUT:-30}"
ZENOH_PORT=7447

REGIONS=(eu us ap)
declare -A IDX=([eu]=1 [us]=2 [ap]=3)
# one relay per pair, dialled by the first region of the pair
PAIRS=("eu us ${DELAY_EU_US:-30ms}" "eu ap ${DELAY_EU_AP:-140ms}" "us ap ${DELAY_US_AP:-70ms}")

WAN_NS="$SIM_PREFIX-wan"
ns() { echo "$SIM_PREFIX-$1"; }
region_addr() { echo "10.201.${IDX[$1]}.2"; }
wan_addr() { echo "10.201.${IDX[$1]}.1"; }
edge_addr() { echo "10.202.${IDX[$1]}.2"; }
host_addr() { echo "10.202.${IDX[$1]}.1"; }
relay_port() { echo $((7450 + IDX[$1] - 1)); } # the relay towards region $1

log() { echo "wan-sim: $*" >&2; }
die() { log "$*"; exit 1; }

need_root() { [ "$(id -u)" = 0 ] || die "needs root (network namespaces); try: sudo $0 $*"; }

need_ip() {
    if ! command -v ip >/dev/null 2>&1; then
        log "iproute2 missing: installing it with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2 >/dev/null
    fi
    command -v ip >/dev/null 2>&1 || die "no ip command"
}

ns_exists() { [ -e "/run/netns/$1" ]; }

# ---------------------------------------------------------------- processes ----
pidfile() { echo "$RUN_DIR/pids/$1.pid"; } # netem | node-eu ...

running_pid() { # name -> pid, if it still runs the expected binary
    local f pid exe
    f="$(pidfile "$1")"
    [ -s "$f" ] || return 1
    pid="$(cat "$f")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null || true)"
    case "$1" in
        netem) [[ "$exe" == */prscd-netem* ]] || return 1 ;;
        node-*) [[ "$exe" == */prscd* && "$exe" != */prscd-netem* ]] || return 1 ;;
    esac
    echo "$pid"
}

wait_until() { # seconds description command...
    local secs="$1" what="$2"; shift 2
    local deadline=$((SECONDS + secs))
    while ! "$@"; do
        [ "$SECONDS" -lt "$deadline" ] || { log "timed out after ${secs}s waiting for $what"; return 1; }
        sleep 0.2
    done
}

logged() { grep -q "$2" "$RUN_DIR/logs/$1.log" 2>/dev/null; }

alive_or_die() { # name: fails with the log's tail when it exited
    if ! running_pid "$1" >/dev/null; then
        log "$1 exited; last lines of $RUN_DIR/logs/$1.log:"
        tail -n 30 "$RUN_DIR/logs/$1.log" >&2 || true
        exit 1
    fi
}

ready() { alive_or_die "$1"; logged "$1" "$2"; }

health() { # region -> /health JSON, asked from inside the region
    ip netns exec "$(ns "$1")" curl -sk --max-time 3 "https://127.0.0.1:$PORT/health" 2>/dev/null || true
}

meshed() { # region: both other regions are zenoh peers
    health "$1" | grep -q '"peers":2'
}

# ------------------------------------------------------------------ binaries ----
binaries() {
    local build="$1"
    PRSCD_BIN="${PRSCD_BIN:-$CARGO_TARGET_DIR/release/prscd}"
    NETEM_BIN="${NETEM_BIN:-$CARGO_TARGET_DIR/release/prscd-netem}"
    if [ "$build" = 1 ] || [ ! -x "$PRSCD_BIN" ] || [ ! -x "$NETEM_BIN" ]; then
        log "building: cargo build --release -p prscd -p prscd-netem (CARGO_TARGET_DIR=$CARGO_TARGET_DIR)"
        (cd "$REPO" && cargo build --release -p prscd -p prscd-netem >&2) || die "cargo build failed"
    fi
    [ -x "$PRSCD_BIN" ] || die "no prscd binary at $PRSCD_BIN"
    [ -x "$NETEM_BIN" ] || die "no prscd-netem binary at $NETEM_BIN"
}

# ------------------------------------------------------------------ topology ----
build_topology() {
    local r n
    ip netns add "$WAN_NS"
    ip -n "$WAN_NS" link set lo up
    # the wan namespace must never route between regions
    ip netns exec "$WAN_NS" sh -c 'echo 0 > /proc/sys/net/ipv4/ip_forward'
    for r in "${REGIONS[@]}"; do
        n="$(ns "$r")"
        ip netns add "$n"
        ip -n "$n" link set lo up
        ip link add name "$r" netns "$WAN_NS" type veth peer name wan netns "$n"
        ip -n "$WAN_NS" addr add "$(wan_addr "$r")/24" dev "$r"
        ip -n "$WAN_NS" link set "$r" up
        ip -n "$n" addr add "$(region_addr "$r")/24" dev wan
        ip -n "$n" link set wan up
        if [ "$EDGE" = 1 ]; then
            if ip link show "$SIM_PREFIX-$r" >/dev/null 2>&1; then ip link del "$SIM_PREFIX-$r"; fi
            # this host <-> the region: for browsers here; the region gets no route
            # beyond this /24, so regions still cannot reach each other
            ip link add name "$SIM_PREFIX-$r" type veth peer name edge netns "$n"
            ip addr add "$(host_addr "$r")/24" dev "$SIM_PREFIX-$r"
            ip link set "$SIM_PREFIX-$r" up
            ip -n "$n" addr add "$(edge_addr "$r")/24" dev edge
            ip -n "$n" link set edge up
        fi
    done
}

remove_topology() {
    local n pid r
    # the edge veths at once (a deleted namespace is torn down asynchronously)
    for r in "${REGIONS[@]}"; do
        if ip link show "$SIM_PREFIX-$r" >/dev/null 2>&1; then ip link del "$SIM_PREFIX-$r"; fi
    done
    for n in "$WAN_NS" "$(ns eu)" "$(ns us)" "$(ns ap)"; do
        ns_exists "$n" || continue
        for pid in $(ip netns pids "$n" 2>/dev/null); do
            log "killing leftover pid $pid in $n"
            kill -KILL "$pid" 2>/dev/null || true
        done
        ip netns del "$n" && log "removed namespace $n"
    done
}

# -------------------------------------------------------------------- start -----
start() {
    local build=0
    while [ $# -gt 0 ]; do
        case "$1" in
            --build) build=1 ;;
            *) die "unknown option for start: $1" ;;
        esac
        shift
    done
    need_root start
    need_ip
    if ns_exists "$WAN_NS"; then die "already started ($WAN_NS exists); '$0 stop' first"; fi
    binaries "$build"
    command -v curl >/dev/null 2>&1 || log "note: curl is missing; status cannot ask the nodes' /health"
    mkdir -p "$RUN_DIR"/{pids,logs}
    build_topology

    local links=() pair a b d r name connect listen
    for pair in "${PAIRS[@]}"; do
        read -r a b d <<<"$pair"
        links+=(--link "$a-$b=$(wan_addr "$a"):$(relay_port "$b"),$(region_addr "$b"):$ZENOH_PORT,$d")
    done
    ip netns exec "$WAN_NS" "$NETEM_BIN" "${links[@]}" >"$RUN_DIR/logs/netem.log" 2>&1 </dev/null &
    echo $! >"$(pidfile netem)"
    wait_until 10 "prscd-netem" ready netem "netem: ready" || exit 1
    log "prscd-netem in $WAN_NS (pid $(cat "$(pidfile netem)")): ${PAIRS[*]}"

    for r in ap us eu; do # the dialled side first
        name="node-$r"
        connect=""
        for pair in "${PAIRS[@]}"; do
            read -r a b d <<<"$pair"
            [ "$a" = "$r" ] && connect="${connect:+$connect,}tcp/$(wan_addr "$r"):$(relay_port "$b")"
        done
        mkdir -p "$RUN_DIR/$name"
        listen="tcp/$(region_addr "$r"):$ZENOH_PORT"
        (
            cd "$RUN_DIR/$name"
            unset ZENOH_CONFIG CERT_FILE KEY_FILE
            # Plaintext zenoh in namespaces of this script only: the opt-out
            # of the node's refusal to listen beyond loopback unauthenticated.
            export MESH_ALLOW_UNAUTHENTICATED=true
            export MESH_ID="$r" HOST=0.0.0.0 ZENOH_LISTEN="$listen" ZENOH_CONNECT="$connect" \
                DEV_CERT_DIR="$RUN_DIR/$name/.prscd-dev" PID_FILE="$RUN_DIR/$name/prscd.pid"
            [ -n "$connect" ] || unset ZENOH_CONNECT
            exec ip netns exec "$(ns "$r")" "$PRSCD_BIN"
        ) >"$RUN_DIR/logs/$name.log" 2>&1 </dev/null &
        echo $! >"$(pidfile "$name")"
        log "started $name in $(ns "$r") (pid $!): zenoh listen $(region_addr "$r"):$ZENOH_PORT${connect:+, dials $connect}"
    done
    for r in "${REGIONS[@]}"; do
        wait_until "$START_TIMEOUT" "node-$r to log 'ready:'" ready "node-$r" "ready: port=" || exit 1
    done
    if command -v curl >/dev/null 2>&1; then
        for r in "${REGIONS[@]}"; do
            wait_until "$START_TIMEOUT" "node-$r to mesh with both other regions" meshed "$r" || exit 1
        done
        log "all three nodes meshed over the delayed links"
    fi
    print_access
}

print_access() {
    local r spki spkis=() origins=() key a b d
    if [ -n "${APPS:-}" ]; then key="(from APPS: ${APPS%%:*} ...)"; else key="dev"; fi
    echo
    echo "one-way delays (each direction), through prscd-netem in $WAN_NS:"
    for pair in "${PAIRS[@]}"; do
        read -r a b d <<<"$pair"
        echo "  $a <-> $b  $d"
    done
    echo
    for r in "${REGIONS[@]}"; do
        spki="$(grep -o 'spki=[A-Za-z0-9+/=]*' "$RUN_DIR/logs/node-$r.log" 2>/dev/null | tail -n1 | cut -d= -f2- || true)"
        echo "region $r  (MESH_ID=$r, namespace $(ns "$r"), zenoh tcp/$(region_addr "$r"):$ZENOH_PORT)"
        if [ "$EDGE" = 1 ]; then
            echo "  URL from this host: https://$(edge_addr "$r"):$PORT/v1   public key: $key"
            origins+=("$(edge_addr "$r"):$PORT")
            [ -n "$spki" ] && spkis+=("$spki")
        fi
        echo "  inside the region:  ip netns exec $(ns "$r") <client> https://127.0.0.1:$PORT/v1"
        echo "  health:             ip netns exec $(ns "$r") curl -sk https://127.0.0.1:$PORT/health"
        echo "  log:                $RUN_DIR/logs/node-$r.log"
    done
    if [ "${#spkis[@]}" -gt 0 ]; then
        local IFS=,
        echo
        echo "one Chromium on this host for all three regions (dev certificates, WebTransport forced on):"
        echo "  chromium --user-data-dir=/tmp/prscd-chromium --ignore-certificate-errors-spki-list=${spkis[*]} --origin-to-force-quic-on=${origins[*]}"
    fi
    echo
    echo "from another machine (WebSocket only; ssh forwards TCP, not WebTransport's UDP):"
    echo "  ssh -L 8443:$(edge_addr eu):$PORT -L 8444:$(edge_addr us):$PORT -L 8445:$(edge_addr ap):$PORT root@THIS_HOST"
    echo "  then wss://localhost:8443/v1 (eu), :8444 (us), :8445 (ap)"
    echo
    echo "try a partition: $0 cut ap   (peers on ap go offline elsewhere within ~2 s);  $0 heal ap"
    echo
}

# --------------------------------------------------------------------- stop -----
stop() {
    need_root stop
    need_ip
    local c pid pids=()
    for c in node-eu node-us node-ap netem; do
        if pid="$(running_pid "$c")"; then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
            log "SIGTERM $c (pid $pid)"
        fi
        rm -f "$(pidfile "$c")"
    done
    local deadline=$((SECONDS + 15)) p alive=1
    while [ "$alive" = 1 ] && [ "$SECONDS" -lt "$deadline" ]; do
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ "$alive" = 0 ] || sleep 0.2
    done
    for p in "${pids[@]}"; do
        if kill -0 "$p" 2>/dev/null; then log "pid $p still running: SIGKILL"; kill -KILL "$p" 2>/dev/null || true; fi
    done
    remove_topology # also removes the edge veths (their other end is in a region)
    log "stopped"
}

# ------------------------------------------------------------------- status -----
status() {
    need_root status
    need_ip
    local r n up=0 pid h
    for n in "$WAN_NS" "$(ns eu)" "$(ns us)" "$(ns ap)"; do
        if ns_exists "$n"; then echo "namespace $n"; else echo "namespace $n: missing"; fi
    done
    if pid="$(running_pid netem)"; then
        up=$((up + 1))
        echo "netem   pid $pid"
        local before
        before="$(grep -c 'netem: report' "$RUN_DIR/logs/netem.log" || true)"
        kill -USR1 "$pid"
        sleep 0.3
        grep 'netem: report' "$RUN_DIR/logs/netem.log" | tail -n +$((before + 1)) | sed 's/^/  /'
    else
        echo "netem   stopped"
    fi
    for r in "${REGIONS[@]}"; do
        if pid="$(running_pid "node-$r")"; then
            up=$((up + 1))
            h="$(health "$r" | grep -o '"mesh":{[^}]*}' || true)"
            printf 'node-%s pid %-7s %s\n' "$r" "$pid" "${h:-(no answer on /health)}"
        else
            echo "node-$r stopped"
        fi
    done
    echo "$up of 4 running"
    [ "$up" = 4 ]
}

cut_heal() { # down|up region
    need_root "$1"
    need_ip
    local state="$1" r="${2:-}"
    if [ -z "$r" ] || [ -z "${IDX[$r]:-}" ]; then die "which region? eu, us or ap"; fi
    ns_exists "$WAN_NS" || die "not started"
    ip -n "$WAN_NS" link set "$r" "$state"
    log "$r's WAN link is $state"
}

# --------------------------------------------------------------------- main -----
cmd="${1:-}"; [ $# -gt 0 ] && shift
case "$cmd" in
    start) start "$@" ;;
    stop) stop ;;
    status) status || exit 1 ;;
    cut) cut_heal down "$@" ;;
    heal) cut_heal up "$@" ;;
    *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0" >&2; exit 2 ;;
esac
