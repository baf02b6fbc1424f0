#!/usr/bin/env bash
# Big rooms: `prscd-bench room-join` (members that behave like the published
# client) against two prscd builds, room size by room size, a fresh node per
# run. Prints one line per run: deliveries per measured join, the joiner's
# time to know every state, fill time and server CPU, memory per member.
#
#   bench/rooms.sh OLD_BIN NEW_BIN [--out DIR]
#
# Env: OLD_SIZES ("10 100 300": the old build's cost per join grows as N²,
# so its fill as N³), NEW_SIZES ("10 100 1000 5000"), JOINERS (5), RATE
# (joins/s while filling; default 100, 50 from 2,000 members). Every run is
# bounded by --duration-limit; nodes are killed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD_BIN=$(realpath "$1")
NEW_BIN=$(realpath "$2")
shift 2
OUT="bench/results/rooms-$(date -u +%Y-%m-%dT%H%M)"
[ "${1:-}" = --out ] && OUT=$2
OLD_SIZES=${OLD_SIZES-"10 100 300"} NEW_SIZES=${NEW_SIZES-"10 100 1000 5000"} JOINERS=${JOINERS:-5}
. bench/lib.sh

run() {
  local name=$1 bin=$2 n=$3
  local rate=${RATE:-100}
  [ -z "${RATE:-}" ] && [ "$n" -ge 2000 ] && rate=50
  start_node "$name" "$bin"
  echo "--> $name: prscd-bench room-join --members $n --join-rate $rate --joiners $JOINERS"
  "$BENCH" room-join --url "$URL" --server-pid "$SPID" --members "$n" --join-rate "$rate" \
    --joiners "$JOINERS" --step-timeout 30 --duration-limit 400 --threads 2 --quiet \
    --json "$OUT/$name.json" >/dev/null || echo "    (incomplete)"
  stop_node
  python3 - "$OUT/$name.json" <<'EOF'
import json, sys
try:
    r = json.load(open(sys.argv[1]))
except Exception as e:
    print(f"    no result: {e}")
    sys.exit(0)
f, j = r["fill"], r["join"]
k = j["know_all_us"] or {}
print(f"    N={r['members']}: {j['deliveries_median']} deliveries per join "
      f"({j['deliveries_per_member']} per member; {j['deliveries']}), "
      f"joiner knows all in p50 {k.get('p50')} / max {k.get('max')} us, "
      f"fill {f['seconds']} s, server CPU {f['server_cpu_s']} s, "
      f"{f['rss_kb_per_member']} kB/member, slow readers {r['slow_reader']}, "
      f"incomplete {j['incomplete']}, client failures {r['client_failures']}")
EOF
}

machine "old: $OLD_BIN" "new: $NEW_BIN"

for n in $OLD_SIZES; do
  run "old-$n" "$OLD_BIN" "$n"
  run "new-$n" "$NEW_BIN" "$n"
done
for n in $NEW_SIZES; do
  case " $OLD_SIZES " in *" $n "*) continue ;; esac
  run "new-$n" "$NEW_BIN" "$n"
done
