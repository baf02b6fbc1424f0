#!/usr/bin/env bash
# Three nodes of each, side by side in one run (issue #27):
#   socketio-redis  three socket.io servers sharing rooms through
#                   @socket.io/redis-adapter and one redis-server;
#   prscd-p2p       three prscd nodes, zenoh peers connected to each other;
#   prscd-router    three prscd nodes, zenoh clients of one zenohd router:
#                   every hop goes through it. (Nodes in zenoh's peer mode
#                   behind one router exchange nothing through it: zenoh
#                   expects peers to reach each other directly.)
# Scenarios, each against fresh nodes:
#   cross-max       the publisher on node A, subscribers spread over B and C,
#                   at max rate (throughput);
#   cross-rate      the same at a fixed rate (p50/p99 latency);
#   rooms           rooms of 9 with three members on each node, every member
#                   publishing 1 msg/s (after the load tool's 1 s pause for
#                   the nodes to learn each other's subscriptions).
# What each does to presence when a node dies is not a throughput figure:
# BENCHMARKS.md says it (prscd: the `death` section of bench/suite.sh).
#
#   bench/multinode.sh [--quick | --smoke] [--out DIR]
#
# Env: KINDS (default "socketio-redis prscd-p2p prscd-router"), SCENARIOS
# (default "cross-max cross-rate rooms"), SUBS (1000),
# MSGS (2000), RATE (10 msg/s: 10,000 deliveries/s, which socket.io sustains
# here), ROOMS (300), ROOM_SECS (10).
set -euo pipefail
cd "$(dirname "$0")/.."
QUICK=0
OUT="bench/results/multinode-$(date -u +%Y-%m-%dT%H%M)"
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1 ;;
    --smoke) QUICK=smoke ;;
    --out) OUT="$2"; shift ;;
    *) echo "usage: bench/multinode.sh [--quick | --smoke] [--out DIR]" >&2; exit 1 ;;
  esac
  shift
done
# --smoke (the suite's, in CI): the debug build, tiny sizes, non-zero exit on
# an incomplete run; its figures mean nothing.
if [ "$QUICK" = smoke ]; then
  : "${SUBS:=20}" "${MSGS:=100}" "${RATE:=20}" "${ROOMS:=5}" "${ROOM_SECS:=1}" "${RATE_SECS:=2}"
  export PROFILE=debug
elif [ "$QUICK" = 1 ]; then
  : "${SUBS:=100}" "${MSGS:=200}" "${RATE:=50}" "${ROOMS:=30}" "${ROOM_SECS:=3}"
else
  : "${SUBS:=1000}" "${MSGS:=2000}" "${RATE:=10}" "${ROOMS:=300}" "${ROOM_SECS:=10}"
fi
KINDS=${KINDS:-"socketio-redis prscd-p2p prscd-router"}
. bench/lib.sh
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
  cargo build --release --locked -p prscd -p prscd-bench 2>&1 | tail -1
else
  cargo build --locked -p prscd -p prscd-bench 2>&1 | tail -1
fi
PRSCD="$CARGO_TARGET_DIR/$PROFILE/prscd"
bench/servers/install.sh
mesh/install-zenohd.sh >/dev/null
ZENOHD="${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}/bin/zenohd"
line="multinode: kinds $KINDS; subs $SUBS, msgs $MSGS, rate $RATE, rooms $ROOMS x 9 for $ROOM_SECS s; quick $QUICK"
# Inside bench/suite.sh's results the machine file is the suite's.
if [ -f "$OUT/machine.txt" ]; then echo "$line" >>"$OUT/machine.txt"; else machine "$line"; fi
CERT_DIR="$OUT/dev-cert"
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }

# up KIND NAME: three nodes of KIND; sets URLS (A B C) and NODE_PIDS.
up() {
  local kind=$1 name=$2 i
  URLS=() NODE_PIDS=()
  case $kind in
    socketio-redis)
      local rport
      rport=$(free_port)
      redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no \
        >"$OUT/logs/$name-redis.log" 2>&1 &
      PIDS+=($!)
      for _ in $(seq 1 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.1; done
      for i in a b c; do
        env REDIS_URL="redis://127.0.0.1:$rport" CERT_FILE="$CERT_DIR/cert.pem" KEY_FILE="$CERT_DIR/key.pem" \
          PORT=0 node bench/servers/socketio-rooms.js 2>"$OUT/logs/$name-$i.log" &
        PIDS+=($!) NODE_PIDS+=($!)
        URLS+=("wss://127.0.0.1:$(wait_ready "$OUT/logs/$name-$i.log")/")
      done
      ;;
    prscd-p2p)
      local za zb zc
      za=$(free_port) zb=$(free_port) zc=$(free_port)
      local -A listen=([a]=$za [b]=$zb [c]=$zc)
      local -A connect=([a]="" [b]="tcp/127.0.0.1:$za" [c]="tcp/127.0.0.1:$za,tcp/127.0.0.1:$zb")
      for i in a b c; do
        start_node "$name-$i" "$PRSCD" MESH_ID="$i" \
          ZENOH_LISTEN="tcp/127.0.0.1:${listen[$i]}" ZENOH_CONNECT="${connect[$i]}"
        URLS+=("$URL") NODE_PIDS+=("$SPID")
      done
      ;;
    prscd-router)
      local zr
      zr=$(free_port)
      cat >"$OUT/router.json5" <<EOF
{ mode: "router", listen: { endpoints: ["tcp/127.0.0.1:$zr"] },
  scouting: { multicast: { enabled: false }, gossip: { enabled: true } },
  transport: { link: { tx: { lease: 2000, keep_alive: 4 } } } }
EOF
      cat >"$OUT/node-client.json5" <<EOF
{ mode: "client", connect: { endpoints: ["tcp/127.0.0.1:$zr"] },
  scouting: { multicast: { enabled: false } },
  transport: { link: { tx: { lease: 2000, keep_alive: 4 } } } }
EOF
      "$ZENOHD" -c "$OUT/router.json5" >"$OUT/logs/$name-zenohd.log" 2>&1 &
      PIDS+=($!)
      for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$zr") 2>/dev/null && break; sleep 0.1; done
      for i in a b c; do
        start_node "$name-$i" "$PRSCD" MESH_ID="$i" ZENOH_CONFIG="$OUT/node-client.json5"
        URLS+=("$URL") NODE_PIDS+=("$SPID")
      done
      ;;
  esac
  # The zenoh sessions are up before traffic (prscd: /health's mesh state);
  # the load tool's --settle covers the channel subscriptions.
  if [[ $kind == prscd-* ]]; then
    for u in "${URLS[@]}"; do
      local port=${u#wss://127.0.0.1:}
      port=${port%%/*}
      for _ in $(seq 1 100); do
        curl -sk "https://127.0.0.1:$port/health" | python3 -c \
          'import json,sys; m=json.load(sys.stdin)["mesh"]; sys.exit(0 if m["state"] == "connected" else 1)' \
          2>/dev/null && break
        sleep 0.1
      done
    done
  fi
}

down() {
  { cleanup; wait; } 2>/dev/null || true
  PIDS=()
}

server_of() { case $1 in socketio-redis) echo socketio ;; *) echo prscd ;; esac; }

# The dev certificate every server uses: prscd writes it on first start.
start_node cert-maker "$PRSCD" DEV_CERT_DIR="$CERT_DIR"
stop_node

# run KIND SCENARIO: one prscd-bench run of SCENARIO against three fresh
# KIND nodes, into $OUT/SCENARIO-KIND.json. The server figures (CPU, RSS)
# are node B's, a subscribers' node.
run() {
  local kind=$1 what=$2 name="$2-$1" args
  up "$kind" "$name"
  case $what in
    cross-max) args=(cross-node --pub-url "${URLS[0]}" --url "${URLS[1]}" --sub-urls "${URLS[2]}"
                 --subscribers "$SUBS" --messages "$MSGS" --settle 2) ;;
    cross-rate) args=(cross-node --pub-url "${URLS[0]}" --url "${URLS[1]}" --sub-urls "${URLS[2]}"
                  --subscribers "$SUBS" --messages $((RATE * ${RATE_SECS:-10})) --rate "$RATE" --settle 2) ;;
    rooms) args=(rooms --url "${URLS[1]}" --sub-urls "${URLS[2]},${URLS[0]}" --rooms "$ROOMS"
             --room-size 9 --rate 1 --duration "$ROOM_SECS" --connect-concurrency 64) ;;
  esac
  echo "--> $name: prscd-bench ${args[*]}"
  "$BENCH" "${args[@]}" --server "$(server_of "$kind")" --server-pid "${NODE_PIDS[1]}" \
    --duration-limit 240 --quiet --json "$OUT/$name.json" | sed 's/^/    /' \
    || { echo "    (incomplete: see $name.json)"; INCOMPLETE=$((INCOMPLETE + 1)); }
  down
}

INCOMPLETE=0
for what in ${SCENARIOS:-cross-max cross-rate rooms}; do
  for kind in $KINDS; do
    run "$kind" "$what"
  done
done
python3 bench/report.py "$OUT" >/dev/null && echo "report: $OUT/report.md"
if [ "$INCOMPLETE" -gt 0 ]; then
  echo "$INCOMPLETE run(s) incomplete" >&2
  [ "$QUICK" = smoke ] && exit 1
fi
