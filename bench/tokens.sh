#!/usr/bin/env bash
# Connect+join rate with signed-token verification against plain public
# keys, side by side on one prscd build: a connect storm per round with
# each, alternating (this VM's speed drifts over minutes), a fresh node
# every run. Prints the medians and the token/plain ratio per round.
#
#   bench/tokens.sh [PRSCD_BIN] [--out DIR]
#
# Env: STORM (10000 connections), ROUNDS (3). Every run is bounded by
# --duration-limit; nodes are killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$(realpath "${1:-${CARGO_TARGET_DIR:-$HOME/.cache/prscd-target}/release/prscd}")
[ $# -gt 0 ] && shift
OUT="bench/results/tokens-$(date -u +%Y-%m-%dT%H%M)"
[ "${1:-}" = --out ] && OUT=$2
STORM=${STORM:-10000} ROUNDS=${ROUNDS:-3}
SECRET=bench-token-secret-0123456789abcdef
. bench/lib.sh

run() {
  local name=$1
  shift
  start_node "$name" "$BIN" APPS=dev:bench APP_TOKEN_SECRETS="bench:$SECRET"
  echo "--> $name: prscd-bench storm $*"
  "$BENCH" storm --server prscd --url "$URL" --server-pid "$SPID" --connections "$STORM" \
    --connect-concurrency 256 --threads 2 --duration-limit 300 "$@" \
    --quiet --json "$OUT/$name.json" | sed 's/^/    /' || echo "    (incomplete)"
  stop_node
}

machine "prscd: $BIN"

for round in $(seq 1 "$ROUNDS"); do
  run "plain-$round" --publickey dev
  run "token-$round" --token-secret "$SECRET" --token-app bench
done

python3 - "$OUT" "$ROUNDS" <<'EOF'
import json, statistics, sys
out, rounds = sys.argv[1], int(sys.argv[2])
def rate(name):
    try:
        return json.load(open(f"{out}/{name}.json"))["setup"]["conn_per_s"]
    except Exception:
        return None
plain = [rate(f"plain-{r}") for r in range(1, rounds + 1)]
token = [rate(f"token-{r}") for r in range(1, rounds + 1)]
ratios = [t / p for p, t in zip(plain, token) if p and t]
med = lambda v: statistics.median([x for x in v if x]) if any(v) else None
print(f"connect+join/s plain: {plain} median {med(plain)}")
print(f"connect+join/s token: {token} median {med(token)}")
if ratios:
    print(f"token/plain per round: {[round(r, 3) for r in ratios]} median {statistics.median(ratios):.3f}")
EOF
