#!/usr/bin/env bash
# Two prscd builds side by side in one run: idle memory, the max-rate
# fan-out and the connect storm, alternating A and B round by round (this
# VM's speed drifts over minutes), with the same prscd-bench client.
#
#   bench/ab.sh A_BIN B_BIN [--out DIR]
#
# Env: IDLE (10000 connections), SUBS (1000), MSGS (3000), ROUNDS (3),
# STORM (10000), SECTIONS ("idle fanout storm": which to run). Writes one JSON per run into DIR and prints the medians and
# the B/A ratios. Every run is bounded by --duration-limit; servers are
# killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
A_BIN=$(realpath "$1")
B_BIN=$(realpath "$2")
shift 2
OUT="bench/results/ab-$(date -u +%Y-%m-%dT%H%M)"
[ "${1:-}" = --out ] && OUT=$2
IDLE=${IDLE:-10000} SUBS=${SUBS:-1000} MSGS=${MSGS:-3000} ROUNDS=${ROUNDS:-3} STORM=${STORM:-10000}
SECTIONS=${SECTIONS:-idle fanout storm}
want() { [[ " $SECTIONS " == *" $1 "* ]]; }
. bench/lib.sh
run() {
  local name=$1 bin=$2 scenario=$3
  shift 3
  start_node "$name" "$bin"
  echo "--> $name: prscd-bench $scenario $*"
  "$BENCH" "$scenario" --server prscd --url "$URL" --server-pid "$SPID" "$@" \
    --quiet --json "$OUT/$name.json" | sed 's/^/    /' || echo "    (incomplete)"
  stop_node
}

machine "A: $A_BIN" "B: $B_BIN"

want idle && for side in a b; do
  bin=$A_BIN; [ $side = b ] && bin=$B_BIN
  run "idle-$side" "$bin" idle --connections "$IDLE" --settle 5 --source-ips 16 \
    --duration-limit 600 --step-timeout 30
done
want fanout && for round in $(seq 1 "$ROUNDS"); do
  for side in a b; do
    bin=$A_BIN; [ $side = b ] && bin=$B_BIN
    run "fanout-$side-$round" "$bin" fanout --subscribers "$SUBS" --messages "$MSGS" \
      --settle 1 --duration-limit 120
  done
done
want storm && for round in $(seq 1 "$ROUNDS"); do
  for side in a b; do
    bin=$A_BIN; [ $side = b ] && bin=$B_BIN
    run "storm-$side-$round" "$bin" storm --connections "$STORM" --connect-concurrency 256 \
      --threads 2 --duration-limit 300
  done
done

python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def load(name):
    try:
        return json.load(open(f"{out}/{name}.json"))
    except Exception:
        return None
def find(d, *keys):
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d
idle = {s: load(f"idle-{s}") for s in "ab"}
per_conn = {s: find(idle[s], "server_process", "rss_kb_per_conn") for s in "ab"}
print(f"idle kB/connection: A {per_conn['a']}  B {per_conn['b']}")
for scenario, path in (
    ("fanout", ("delivery", "msgs_per_s")),
    ("fanout cpu us/delivery", ("server_process", "traffic_cpu_us_per_delivery")),
    ("storm", ("setup", "conn_per_s")),
):
    prefix = scenario.split()[0]
    ratios, vals = [], {"a": [], "b": []}
    for r in range(1, rounds + 1):
        got = {s: find(load(f"{prefix}-{s}-{r}"), *path) for s in "ab"}
        for s in "ab":
            if got[s] is not None:
                vals[s].append(got[s])
        if got["a"] and got["b"]:
            ratios.append(got["b"] / got["a"])
    med = {s: statistics.median(v) if v else None for s, v in vals.items()}
    rng = f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "-"
    ratio = f"{statistics.median(ratios):.2f}" if ratios else "-"
    print(f"{scenario}: A {vals['a']}  B {vals['b']}  medians A {med['a']} B {med['b']}  B/A per round median {ratio} ({rng})")
EOF
