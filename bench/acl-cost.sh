#!/usr/bin/env bash
# What the zenoh ACLs cost on the cross-node fan-out (issue #24): the shipped
# TLS region configs (mesh/regions/tls: two zenohd routers, a prscd node behind
# each, certificates from mesh/certs.sh), once as shipped (access_control on,
# default deny) and once with access_control turned off, everything else equal.
# prscd-bench cross-node publishes on node eu to subscribers on node us, so every
# message crosses node eu's zenoh, both routers and node us's zenoh, each of
# which checks its ACL.
#
#   bench/acl-cost.sh [--subscribers N] [--messages M] [--rate R|max] [--reps K] [--out DIR]
#
# Alternates on/off K times (default 1) on fresh processes; prints one line per
# run and writes the prscd-bench JSON into DIR (default bench/results/acl-DATE).
# Needs zenohd (mesh/install-zenohd.sh) and release builds of prscd and prscd-bench.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/prscd-target}"
SUBS=200 MSGS=5000 RATE=max REPS=1
OUT="bench/results/acl-$(date -u +%Y-%m-%d)"
while [ $# -gt 0 ]; do
  case "$1" in
    --subscribers) SUBS=$2; shift ;;
    --messages) MSGS=$2; shift ;;
    --rate) RATE=$2; shift ;;
    --reps) REPS=$2; shift ;;
    --out) OUT=$2; shift ;;
    *) sed -n '2,14p' "$0" >&2; exit 1 ;;
  esac
  shift
done
BIN="$CARGO_TARGET_DIR/release"
ZENOHD="${ZENOHD_BIN:-${PRSCD_TOOLS:-$HOME/.cache/prscd-tools}/bin/zenohd}"
for b in "$BIN/prscd" "$BIN/prscd-bench" "$ZENOHD"; do
  [ -x "$b" ] || { echo "missing $b (cargo build --release --workspace; mesh/install-zenohd.sh)" >&2; exit 1; }
done
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
CERTS="$OUT/certs"
mesh/certs.sh "$CERTS" node:eu node:us router:eu router:us 2>/dev/null

PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  PIDS=()
}
trap cleanup EXIT
free_port() { python3 -c "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"; }
wait_log() { # file needle
  for _ in $(seq 1 300); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "no '$2' in $1" >&2; return 1
}

# config SRC ACL(on|off) PORT_EU PORT_US -> path of a concrete copy
config() {
  local src=$1 acl=$2 dst="$OUT/$1-$2.json5"
  sed -e "s|@CERT_DIR@|$CERTS|g" -e "s|127.0.0.11:7447|127.0.0.1:$3|g" -e "s|127.0.0.12:7447|127.0.0.1:$4|g" \
    -e "s|127.0.0.13:7447|127.0.0.1:9|g" "mesh/regions/tls/$src.json5" > "$dst"
  if [ "$acl" = off ]; then
    python3 - "$dst" <<'PY'
import re, sys
p = sys.argv[1]; s = open(p).read()
s, n = re.subn(r"access_control: \{\n    enabled: true,", "access_control: {\n    enabled: false,", s)
assert n == 1, p
open(p, "w").write(s)
PY
  fi
  echo "$dst"
}

run() { # acl rep
  local acl=$1 rep=$2 peu pus
  peu=$(free_port); pus=$(free_port)
  for r in eu us; do
    local port=$peu; [ $r = us ] && port=$pus
    RUST_LOG=warn "$ZENOHD" -c "$(config router-$r "$acl" "$peu" "$pus")" >"$OUT/logs/router-$r-$acl-$rep.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  done
  local urls=() pid_us=
  for r in eu us; do
    local log="$OUT/logs/node-$r-$acl-$rep.log"
    env -i PATH="$PATH" HOME="$HOME" PORT=0 HOST=127.0.0.1 DEV_CERT_DIR="$OUT/dev-cert" PEER_MSG_RATE=0 PEER_BYTE_RATE=0 \
      APP_MAX_CONNECTIONS_PER_IP=0 PID_FILE= MESH_ID=$r RUST_LOG=warn,prscd::server=info,prscd::mesh=info \
      ZENOH_CONFIG="$(config node-$r "$acl" "$peu" "$pus")" "$BIN/prscd" 2>"$log" &
    PIDS+=($!)
    [ $r = us ] && pid_us=$!
    wait_log "$log" "ready: port="
    wait_log "$log" "mesh: connected"
    urls+=("wss://127.0.0.1:$(grep -o 'ready: port=[0-9]*' "$log" | head -1 | cut -d= -f2)/v1")
  done
  sleep 1
  echo "--> acl $acl, run $rep: prscd-bench cross-node --subscribers $SUBS --messages $MSGS --rate $RATE"
  "$BIN/prscd-bench" cross-node --url "${urls[1]}" --pub-url "${urls[0]}" --server-pid "$pid_us" \
    --subscribers "$SUBS" --messages "$MSGS" --rate "$RATE" --channel "acl-$acl-$rep" \
    --duration-limit 120 --quiet --json "$OUT/cross-acl-$acl-$rep.json" | sed 's/^/    /' \
    || echo "    (incomplete: see cross-acl-$acl-$rep.json)"
  cleanup
  sleep 1
}

{ echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"; echo "commit: $(git rev-parse --short HEAD)"; echo "nproc: $(nproc)"; uptime; } | tee "$OUT/env.txt"
for rep in $(seq 1 "$REPS"); do
  run on "$rep"
  run off "$rep"
done
# One line per run: what the zenoh path carried, and the delivery latency.
python3 - "$OUT" <<'PY'
import glob, json, sys
print("| ACL | run | published msg/s | delivered msg/s | p50 ms | p99 ms | node us CPU µs/delivery | host busy % |")
print("|---|---|---|---|---|---|---|---|")
for f in sorted(glob.glob(f"{sys.argv[1]}/cross-acl-*.json"), key=lambda f: (f.split("-")[-1], "off" in f)):
    d = json.load(open(f)); lat = d["latency_us"]; t = d["machine"]["traffic"]
    cpu = d.get("server_process", {}).get("traffic_cpu_us_per_delivery", "")
    busy = 100 * t["busy_s"] / max(1e-9, t["busy_s"] + t["idle_s"])
    acl, run = f.rsplit("/", 1)[1][:-5].split("-")[2:4]
    print(f"| {acl} | {run} | {d['publish']['msgs_per_s']:.0f} | {d['delivery']['msgs_per_s']:.0f} | "
          f"{lat['p50']/1000:.2f} | {lat['p99']/1000:.2f} | {cpu} | {busy:.0f} |")
PY
