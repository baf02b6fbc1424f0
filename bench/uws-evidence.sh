#!/usr/bin/env bash
# Why uWebSockets.js's fan-out is what it is (issue #27): the same fan-out
# against uWS over TLS, uWS without TLS (ws://) and prscd, each
#   - once plain, for throughput and server CPU per delivery;
#   - once under `strace -c` on the server, attached after the joins, for
#     the send syscalls per delivery;
# and once under `perf record` on uWS (TLS), for where its CPU goes
# (kernel, uws, libc).
#
#   bench/uws-evidence.sh [--out DIR]
#
# Env: SUBS (1000), MSGS (2000) for the plain runs; the strace runs use 200
# subscribers and 500 messages (strace slows every syscall). Needs strace,
# perf (for the profile; skipped without it), Node and bench/servers.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="bench/results/uws-evidence-$(date -u +%Y-%m-%dT%H%M)"
[ "${1:-}" = --out ] && OUT=$2
SUBS=${SUBS:-1000} MSGS=${MSGS:-2000}
. bench/lib.sh
bench/servers/install.sh
machine "fan-out: $SUBS subscribers, $MSGS messages; strace runs: 200 x 500"
CERT_DIR="$OUT/dev-cert"

# server KIND NAME: starts uws-tls | uws-plain | prscd; sets SPID, URL.
server() {
  local kind=$1 name=$2 log="$OUT/logs/$2.log"
  case $kind in
    prscd)
      start_node "$name" "$CARGO_TARGET_DIR/release/prscd" DEV_CERT_DIR="$CERT_DIR"
      return
      ;;
    uws-tls) env TLS=1 CERT_FILE="$CERT_DIR/cert.pem" KEY_FILE="$CERT_DIR/key.pem" node bench/servers/uws-rooms.js 2>"$log" & ;;
    uws-plain) env TLS=0 node bench/servers/uws-rooms.js 2>"$log" & ;;
  esac
  SPID=$!
  PIDS+=("$SPID")
  local port
  port=$(wait_ready "$log")
  if [ "$kind" = uws-plain ]; then URL="ws://127.0.0.1:$port/"; else URL="wss://127.0.0.1:$port/"; fi
}

kind_of() { case $1 in prscd) echo prscd ;; *) echo uws ;; esac; }

# The dev certificate: prscd writes it on first start.
server prscd cert-maker
stop_node

for kind in uws-tls uws-plain prscd; do
  echo "--> $kind: fanout $SUBS x $MSGS"
  server "$kind" "$kind"
  "$BENCH" fanout --server "$(kind_of "$kind")" --url "$URL" --server-pid "$SPID" \
    --subscribers "$SUBS" --messages "$MSGS" --settle 1 --duration-limit 120 --quiet \
    --json "$OUT/fanout-$kind.json" >/dev/null || echo "    (incomplete)"
  stop_node

  echo "--> $kind: fanout 200 x 500 under strace -c"
  server "$kind" "strace-$kind"
  "$BENCH" fanout --server "$(kind_of "$kind")" --url "$URL" --subscribers 200 --messages 500 \
    --settle 3 --duration-limit 120 --quiet --json "$OUT/strace-$kind.json" >/dev/null &
  bench_pid=$!
  sleep 1.5 # the joins of 200 take ~0.1-0.3 s; the settle is 3 s
  strace -c -f -p "$SPID" -o "$OUT/strace-$kind.txt" 2>/dev/null &
  strace_pid=$!
  wait "$bench_pid" || echo "    (incomplete)"
  kill -INT "$strace_pid" 2>/dev/null || true
  wait "$strace_pid" 2>/dev/null || true
  stop_node
done

if command -v perf >/dev/null; then
  echo "--> uws-tls: fanout 500 x 3000 under perf record (4 s)"
  server uws-tls perf-uws-tls
  "$BENCH" fanout --server uws --url "$URL" --subscribers 500 --messages 3000 --settle 2 \
    --duration-limit 120 --quiet --json "$OUT/perf-uws-tls.json" >/dev/null &
  bench_pid=$!
  sleep 2.5
  perf record -F 499 -g -p "$SPID" -o "$OUT/perf-uws-tls.data" -- sleep 4 >/dev/null 2>&1 || true
  wait "$bench_pid" || true
  stop_node
  perf report -i "$OUT/perf-uws-tls.data" --stdio --no-children --sort dso 2>/dev/null \
    | grep -E '^ +[0-9]' | awk '{print $1, $2}' >"$OUT/perf-uws-tls-by-dso.txt" || true
  rm -f "$OUT/perf-uws-tls.data"
fi

python3 - "$OUT" <<'EOF'
import json, os, re, sys
out = sys.argv[1]
def load(name):
    try:
        return json.load(open(os.path.join(out, name)))
    except Exception:
        return None
def sends(kind):
    try:
        text = open(os.path.join(out, f"strace-{kind}.txt")).read()
    except OSError:
        return None
    n = 0
    for line in text.splitlines():
        f = line.split()
        if f and f[-1] in ("sendto", "sendmsg", "write", "writev") and f[3].isdigit():
            n += int(f[3])
    return n
lines = ["| server | delivered msg/s | server CPU µs/delivery | send syscalls per delivery (strace, 200 x 500) |",
         "|---|---|---|---|"]
for kind in ["uws-tls", "uws-plain", "prscd"]:
    r, s = load(f"fanout-{kind}.json"), load(f"strace-{kind}.json")
    rate = r["delivery"]["msgs_per_s"] if r else None
    cpu = ((r or {}).get("server_process") or {}).get("traffic_cpu_us_per_delivery")
    n = sends(kind)
    per = n / s["delivery"]["delivered"] if (n is not None and s and s["delivery"]["delivered"]) else None
    fmt = lambda v, d=0: "—" if v is None else f"{v:,.{d}f}"
    lines.append(f"| {kind} | {fmt(rate)} | {fmt(cpu, 2)} | {fmt(per, 3)} ({fmt(n)} calls) |")
p = os.path.join(out, "perf-uws-tls-by-dso.txt")
if os.path.exists(p):
    lines.append("\nuws-tls CPU by object (perf, 4 s of the fan-out):\n\n" + open(p).read())
open(os.path.join(out, "summary.md"), "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
rm -rf "$CERT_DIR"
echo "results in $OUT"
