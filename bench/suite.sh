#!/usr/bin/env bash
# The full benchmark of BENCHMARKS.md, side by side in one run on this
# machine: prscd, the tokio-tungstenite ceiling (prscd-bench serve-ceiling),
# a uWebSockets.js pub/sub server, a Node `ws` broadcast server and a
# socket.io room server, all over TLS
# WebSocket on loopback, driven by the same prscd-bench client; then the
# prscd-only rows (WebTransport datagrams, the zenoh hop, node death), and
# three nodes of socket.io + Redis against three prscd nodes
# (bench/multinode.sh).
#
#   bench/suite.sh [--quick | --smoke] [--out DIR]
#   SECTIONS="fanout idle" bench/suite.sh --out DIR
#
# Writes one JSON per run into DIR (default bench/results/<UTC date>), then
# bench/report.py renders the tables and charts. --quick scales everything
# down (a minute or two) to try the suite itself. --smoke (CI) runs every
# section and server at tiny sizes on the debug build, and exits non-zero if
# any run is incomplete or the report cannot be rendered; its figures mean
# nothing. Every run is bounded by
# prscd-bench's --duration-limit; servers are killed on exit.
#
# SECTIONS (default: all) runs only those of: fanout load rooms idle storm
# transport hop death multinode; results of earlier runs in DIR are kept and reported
# with the new ones. BENCH_ONLY is the older name for it. PRSCD_MAX=<msg/s>
# sets the offered loads of `load` and `hop` when `fanout` is not run.
# HOP_REPS=N repeats the hop's same/cross pairs N times (3; 1 with --quick).
# SERVERS (default "prscd ceiling uws node-ws socketio") limits the servers of
# the single-node sections.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/prscd-target}"

QUICK=0 SMOKE=0
OUT="bench/results/$(date -u +%Y-%m-%d)"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --smoke) SMOKE=1 ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: [SECTIONS=\"...\"] bench/suite.sh [--quick | --smoke] [--out DIR]" >&2; exit 1 ;;
  esac
  shift
done
ALL_SECTIONS="fanout load rooms idle storm transport hop death multinode"
SECTIONS=${SECTIONS:-${BENCH_ONLY:-$ALL_SECTIONS}}
for s in $SECTIONS; do
  [[ " $ALL_SECTIONS " == *" $s "* ]] || { echo "unknown section: $s (sections: $ALL_SECTIONS)" >&2; exit 1; }
done

# Sizes: full, --quick or --smoke. MSGS_MIN/MSGS_MAX bound the messages of a
# fixed-rate run, IDLE_SETTLE the idle run's pause, WT_MSGS and LIGHT_MSGS the
# transport and light-hop runs.
IDLE_SETTLE=5 WT_MSGS=1000 LIGHT_MSGS=1000 MSGS_MIN=200 MSGS_MAX=20000 PROFILE=release
if [ "$SMOKE" = 1 ]; then
  SUBS=20 MSGS=100 REPS=1 FANOUT_REPS=1 ROOMS=5 ROOM_SECS=1 IDLE=100 STORM=100
  FRACTIONS="0.5" DEATH_TRIALS=1 HOP_REPS=1 WT_SUBS=10
  IDLE_SETTLE=0.5 WT_MSGS=100 LIGHT_MSGS=50 MSGS_MIN=50 MSGS_MAX=200 PROFILE=debug
elif [ "$QUICK" = 1 ]; then
  SUBS=200 MSGS=500 REPS=1 FANOUT_REPS=1 ROOMS=100 ROOM_SECS=3 IDLE=2000 STORM=2000
  FRACTIONS="0.25 0.5 0.9" DEATH_TRIALS=3 HOP_REPS=${HOP_REPS:-1} WT_SUBS=100
else
  SUBS=1000 MSGS=3000 REPS=3 FANOUT_REPS=5 ROOMS=1000 ROOM_SECS=10 IDLE=19000 STORM=19000
  FRACTIONS="0.1 0.25 0.5 0.75 0.9" DEATH_TRIALS=20 HOP_REPS=${HOP_REPS:-3} WT_SUBS=200
fi
export PROFILE

echo "==> build ($PROFILE) and comparison servers"
if [ "$PROFILE" = release ]; then
  cargo build --release --locked -p prscd -p prscd-bench 2>&1 | tail -1
else
  cargo build --locked -p prscd -p prscd-bench 2>&1 | tail -1
fi
bench/servers/install.sh
BIN="$CARGO_TARGET_DIR/$PROFILE"
# Idle capacity needs descriptors on both sides: lib.sh raises the limit as
# far as allowed (root with CAP_SYS_RESOURCE may raise the hard limit; this
# sandbox caps it at 20,000 per process, hence IDLE=19000 — set IDLE=100000
# where it is not). It also makes OUT absolute and kills PIDS on exit.
. bench/lib.sh
IDLE=${BENCH_IDLE:-$IDLE}
STORM=${BENCH_STORM:-$STORM}
MSGS=${BENCH_MSGS:-$MSGS}
FANOUT_REPS=${BENCH_FANOUT_REPS:-$FANOUT_REPS}
CERT_DIR="$OUT/dev-cert"

# start KIND [NAME [ENV...]]: starts a server; sets SPORT, SPID, URL.
start() {
  local kind=$1 name=${2:-$1}
  shift 2 || shift $#
  local log="$OUT/logs/$name.log"
  case "$kind" in
    prscd)
      # lib.sh's node (its dev certificate is $CERT_DIR); sets SPID and URL.
      start_node "$name" "$BIN/prscd" MESH_ID="${MESH_ID:-bench}" "$@"
      SPORT=${URL#wss://127.0.0.1:}
      SPORT=${SPORT%/v1}
      return
      ;;
    ceiling)
      "$BIN/prscd-bench" serve-ceiling --cert "$CERT_DIR/cert.pem" --key "$CERT_DIR/key.pem" 2>"$log" &
      ;;
    node-ws)
      CERT_FILE="$CERT_DIR/cert.pem" KEY_FILE="$CERT_DIR/key.pem" PORT=0 node bench/servers/ws-broadcast.js 2>"$log" &
      ;;
    socketio)
      CERT_FILE="$CERT_DIR/cert.pem" KEY_FILE="$CERT_DIR/key.pem" PORT=0 node bench/servers/socketio-rooms.js 2>"$log" &
      ;;
    uws)
      CERT_FILE="$CERT_DIR/cert.pem" KEY_FILE="$CERT_DIR/key.pem" PORT=0 node bench/servers/uws-rooms.js 2>"$log" &
      ;;
  esac
  SPID=$!
  PIDS+=("$SPID")
  SPORT=$(wait_ready "$log")
  if [ "$kind" = prscd ]; then URL="wss://127.0.0.1:$SPORT/v1"; else URL="wss://127.0.0.1:$SPORT/"; fi
}
stop() { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; }

# bench NAME ARGS...: one prscd-bench run into $OUT/NAME.json (an
# incomplete run is kept and reported, and counted in INCOMPLETE).
INCOMPLETE=0
bench() {
  local name=$1
  shift
  echo "--> $name: prscd-bench $*"
  "$BIN/prscd-bench" "$@" --quiet --json "$OUT/$name.json" | sed 's/^/    /' \
    || { echo "    (incomplete: see $name.json)"; INCOMPLETE=$((INCOMPLETE + 1)); }
}

# fresh KIND NAME SCENARIO ARGS...: one `bench NAME` run of SCENARIO against
# a fresh KIND server, stopped after it.
fresh() {
  local kind=$1 name=$2 scenario=$3
  shift 3
  start "$kind" "$name"
  bench "$name" "$scenario" --server "$kind" --url "$URL" --server-pid "$SPID" "$@"
  stop
}

# The dev certificate every server uses: prscd writes it on first start.
start prscd cert-maker
stop

{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "nproc: $(nproc)"
  grep -m1 "model name" /proc/cpuinfo || true
  grep MemTotal /proc/meminfo
  uname -sr
  echo "node: $(node --version)"
  echo "quick: $QUICK"
  echo "fanout: rounds of $FANOUT_REPS (every server once per round)"
  echo "loadavg before: $(cat /proc/loadavg)"
} >"$OUT/machine.txt"

SERVERS=${SERVERS:-"prscd ceiling uws node-ws socketio"}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }

if want fanout; then
echo "==> fan-out at max rate: 1 publisher -> $SUBS subscribers, 100-byte payloads, $FANOUT_REPS rounds"
# Rounds, every server once per round: this VM's speed drifts by ±10 % over
# minutes, so servers are compared round by round, not block by block.
# ceiling-frames, uws-frames: the ceiling and uWS relaying the exact bytes
# prscd delivers.
# fanout-max: the client on one thread, which bounds every server's rate
# here (BENCHMARKS-HISTORY.md, fix 11); fanout-max2: on two threads.
for rep in $(seq 1 "$FANOUT_REPS"); do
  for threads in 1 2; do
    name=fanout-max; [ "$threads" = 1 ] || name=fanout-max$threads
    for kind in prscd ceiling ceiling-frames uws uws-frames node-ws socketio; do
      [[ " $SERVERS " == *" ${kind%-frames} "* ]] || continue
      case $kind in
        ceiling-frames) server=ceiling; frames=(--frames prscd) ;;
        uws-frames) server=uws; frames=(--frames prscd) ;;
        *) server=$kind; frames=() ;;
      esac
      fresh "$server" "$name-$kind-$rep" fanout \
        --subscribers "$SUBS" --messages "$MSGS" --settle 1 --threads "$threads" \
        --duration-limit 120 "${frames[@]}"
    done
  done
done

fi

# Offered loads: fractions of prscd's median max rate (messages/s), from this
# run's fan-out, or PRSCD_MAX=<msg/s> when re-running later sections alone.
[ -n "${PRSCD_MAX:-}" ] || PRSCD_MAX=$(python3 - "$OUT" "$FANOUT_REPS" "$SUBS" <<'EOF'
import json, sys, statistics
out, reps, subs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rates = []
for rep in range(1, reps + 1):
    try:
        r = json.load(open(f"{out}/fanout-max-prscd-{rep}.json"))
        rates.append(r["delivery"]["msgs_per_s"] / subs)
    except Exception:
        pass
print(round(statistics.median(rates)) if rates else 100)
EOF
)

if want load; then
echo "==> fan-out latency vs offered load (prscd max: $PRSCD_MAX msg/s to $SUBS subscribers)"
for kind in $SERVERS; do
  for f in $FRACTIONS; do
    rate=$(python3 -c "print(max(1, round($PRSCD_MAX * $f)))")
    msgs=$(python3 -c "print(max($MSGS_MIN, min($MSGS_MAX, round($rate * 4))))")
    pct=$(python3 -c "print(round($f * 100))")
    fresh "$kind" "fanout-load-$kind-$pct" fanout \
      --subscribers "$SUBS" --messages "$msgs" --rate "$rate" --duration-limit 90
  done
done

fi

if want rooms; then
echo "==> many rooms: $ROOMS rooms of 10, each member publishing 1 msg/s for $ROOM_SECS s"
for kind in $SERVERS; do
  fresh "$kind" "rooms-$kind" rooms \
    --rooms "$ROOMS" --room-size 10 --rate 1 --duration "$ROOM_SECS" --connect-concurrency 64 --duration-limit 300
done

fi

if want idle; then
echo "==> idle connections: $IDLE per server (RSS vs connections)"
for kind in $SERVERS; do
  fresh "$kind" "idle-$kind" idle \
    --connections "$IDLE" --settle "$IDLE_SETTLE" --duration-limit 600 --step-timeout 30
done

fi

if want storm; then
echo "==> connect storm: $STORM TLS connect+join, 256 at a time (full handshakes: new clients)"
for kind in $SERVERS; do
  fresh "$kind" "storm-$kind" storm \
    --connections "$STORM" --connect-concurrency 256 --threads 2 --duration-limit 300
done
echo "==> reconnect storm: the same with TLS session resumption (prscd, ceiling)"
for kind in prscd ceiling; do
  fresh "$kind" "storm-resume-$kind" storm \
    --connections "$STORM" --connect-concurrency 256 --threads 2 --duration-limit 300 --tls-resume
done

fi

if want transport; then
echo "==> prscd over WebTransport datagrams vs WebSocket ($WT_SUBS subscribers, 200 msg/s)"
for t in datagram ws; do
  fresh prscd "fanout-transport-$t" fanout --transport "$t" \
    --subscribers "$WT_SUBS" --messages "$WT_MSGS" --rate 200 --duration-limit 120
done

fi

if want hop; then
echo "==> the zenoh hop: subscribers on node B, publisher on B (same node) or A (cross node), at 100 msg/s to 10 subscribers and at 50% of max to $SUBS"
HOP_RATE=$(python3 -c "print(max(1, round($PRSCD_MAX * 0.5)))")
HOP_MSGS=$(python3 -c "print(max($MSGS_MIN, min($MSGS_MAX, round($HOP_RATE * 4))))")
ZA=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
ZB=$(python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])")
MESH_ID=a start prscd hop-node-a ZENOH_LISTEN="tcp/127.0.0.1:$ZA"
URL_A=$URL
MESH_ID=b start prscd hop-node-b ZENOH_LISTEN="tcp/127.0.0.1:$ZB" ZENOH_CONNECT="tcp/127.0.0.1:$ZA"
URL_B=$URL
PID_B=$SPID
sleep 2
for rep in $(seq 1 "$HOP_REPS"); do
  bench "hop-light-same-$rep" fanout --url "$URL_B" --server-pid "$PID_B" --subscribers 10 \
    --messages "$LIGHT_MSGS" --rate 100 --channel "light-same-$rep" --duration-limit 90
  bench "hop-light-cross-$rep" cross-node --url "$URL_B" --pub-url "$URL_A" --server-pid "$PID_B" \
    --subscribers 10 --messages "$LIGHT_MSGS" --rate 100 --channel "light-cross-$rep" --duration-limit 90
  bench "hop-same-$rep" fanout --url "$URL_B" --server-pid "$PID_B" --subscribers "$SUBS" \
    --messages "$HOP_MSGS" --rate "$HOP_RATE" --channel "same-$rep" --duration-limit 90
  bench "hop-cross-$rep" cross-node --url "$URL_B" --pub-url "$URL_A" --server-pid "$PID_B" \
    --subscribers "$SUBS" --messages "$HOP_MSGS" --rate "$HOP_RATE" --channel "cross-$rep" --duration-limit 90
done
cleanup
PIDS=()

fi

if want death; then
echo "==> node death: 3 meshed nodes, kill -9 one, $DEATH_TRIALS trials"
bench node-death node-death --prscd "$BIN/prscd" --nodes 3 --clients 5 --trials "$DEATH_TRIALS" --duration-limit 600

fi

if want multinode; then
echo "==> three nodes each: socket.io + Redis adapter, prscd peer to peer, prscd through one zenohd router"
quick=(); [ "$QUICK" = 1 ] && quick=(--quick)
[ "$SMOKE" = 1 ] && quick=(--smoke)
bench/multinode.sh "${quick[@]}" --out "$OUT" | sed 's/^/    /' \
  || { echo "    (multinode incomplete)"; INCOMPLETE=$((INCOMPLETE + 1)); }

fi

echo "loadavg after: $(cat /proc/loadavg)" >>"$OUT/machine.txt"
echo "==> report"
python3 bench/report.py "$OUT"
echo "results in $OUT"
if [ "$INCOMPLETE" -gt 0 ]; then
  echo "$INCOMPLETE run(s) incomplete" >&2
  [ "$SMOKE" = 1 ] && exit 1
fi
