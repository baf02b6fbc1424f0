#!/usr/bin/env bash
# A flamegraph of a fan-out, taken through the node's own profile endpoint
# (GET /debug/pprof/profile on METRICS_PORT; README, "Observability") while
# prscd-bench runs a fan-out against it (BENCHMARKS.md, "A fan-out's
# flamegraph"). Builds nothing: uses the release binaries in
# $CARGO_TARGET_DIR (PROFILE=debug: the debug ones).
#
#   bench/flamegraph.sh [OUT.svg]        # default docs/flamegraph-fanout.svg
#   SUBSCRIBERS=1000 MESSAGES=20000 PROFILE_SECONDS=10 bench/flamegraph.sh
set -euo pipefail
cd "$(dirname "$0")/.."
svg=$(realpath -m "${1:-docs/flamegraph-fanout.svg}")
SUBSCRIBERS=${SUBSCRIBERS:-1000}
MESSAGES=${MESSAGES:-20000}
PROFILE_SECONDS=${PROFILE_SECONDS:-10}
OUT=$(mktemp -d)
source bench/lib.sh
BIN="$CARGO_TARGET_DIR/${PROFILE:-release}"
token=flamegraph-admin-token-$RANDOM$RANDOM
metrics=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
start_node prscd "$BIN/prscd" METRICS_PORT="$metrics" ADMIN_TOKEN="$token"
"$BIN/prscd-bench" fanout --url "$URL" --publickey dev --subscribers "$SUBSCRIBERS" \
  --messages "$MESSAGES" --rate max --payload 100 --duration-limit 300 \
  --server-pid "$SPID" --json "$OUT/fanout.json" --quiet >"$OUT/fanout.txt" 2>&1 &
bench=$!
PIDS+=("$bench")
# The profile starts with the traffic: once the node has read a message.
messages_in() {
  curl -sf "http://127.0.0.1:$metrics/health" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["messages_in"])'
}
for _ in $(seq 1 1200); do
  [ "$(messages_in || echo 0)" -gt 0 ] && break
  kill -0 "$bench" 2>/dev/null || { cat "$OUT/fanout.txt"; exit 1; }
  sleep 0.1
done
curl -sf -H "Authorization: Bearer $token" -o "$svg" \
  "http://127.0.0.1:$metrics/debug/pprof/profile?seconds=$PROFILE_SECONDS&format=svg"
wait "$bench" || echo "prscd-bench exited with $?" >&2
cat "$OUT/fanout.txt"
echo "flamegraph: $svg ($(wc -c <"$svg") bytes, ${PROFILE_SECONDS} s of the fan-out above)"
