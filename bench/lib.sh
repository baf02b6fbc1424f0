# Sourced by the benchmark scripts (suite.sh, multinode.sh, ab.sh, rooms.sh,
# tokens.sh, uws-evidence.sh): the output folder, the machine line, waiting
# for a server's port, and fresh prscd nodes; every process in PIDS is
# killed on exit. Expects OUT (the output folder) to be set.

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/prscd-target}"
# PROFILE=debug runs the debug build (the suite's --smoke); release otherwise.
BENCH="$CARGO_TARGET_DIR/${PROFILE:-release}/prscd-bench"
ulimit -n 1048576 2>/dev/null || ulimit -n "$(ulimit -Hn)"
mkdir -p "$OUT/logs"
OUT=$(cd "$OUT" && pwd)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

# machine LINES...: machine.txt with the date, the given lines and the host.
machine() {
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    printf '%s\n' "$@"
    echo "nproc: $(nproc)"
    grep -m1 "model name" /proc/cpuinfo || true
    uname -sr
  } >"$OUT/machine.txt"
}

# wait_ready LOG: the port of the `ready: port=N` line a server writes to
# LOG once it listens (every server of bench/ does); fails after 20 s.
wait_ready() {
  for _ in $(seq 1 200); do
    if grep -q "ready: port=" "$1" 2>/dev/null; then
      grep -o "ready: port=[0-9]*" "$1" | head -1 | cut -d= -f2
      return 0
    fi
    sleep 0.1
  done
  echo "server not ready, see $1" >&2
  return 1
}

# start_node NAME BIN [VAR=VALUE...]: a fresh dev node on loopback with the
# load tool's limits off (one source address, no budget); sets SPID, URL.
start_node() {
  local log="$OUT/logs/$1.log" bin=$2
  shift 2
  env PORT=0 HOST=127.0.0.1 DEV_CERT_DIR="$OUT/dev-cert" PID_FILE= MESH_ID=bench \
    PEER_MSG_RATE=0 PEER_BYTE_RATE=0 APP_MAX_CONNECTIONS_PER_IP=0 \
    RUST_LOG=warn,prscd::server=info "$@" "$bin" 2>"$log" &
  SPID=$!
  PIDS+=("$SPID")
  URL="wss://127.0.0.1:$(wait_ready "$log")/v1"
}

stop_node() { kill "$SPID" 2>/dev/null || true; wait "$SPID" 2>/dev/null || true; }
