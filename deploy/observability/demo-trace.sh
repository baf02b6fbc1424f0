#!/usr/bin/env bash
# One message, one trace, three nodes: a demo you can look at.
#
#   deploy/observability/demo-trace.sh [--screenshot FILE] [--attributes-screenshot FILE]
#                                      [--width N] [--height N] [--keep] [--timeout S]
#
# Starts, in a temp dir and on free loopback ports: a Phoenix trace store
# (phoenix.sh) and three meshed dev nodes `eu`, `us`, `ap` (zenoh over TCP;
# us connects to eu, ap to eu and us) exporting every span to it. Then one
# WebSocket client per node (alice@eu, bob@us, carol@ap) joins channel `demo`,
# alice sends one `data` message, bob and carol receive it, and the script
# waits until that message's trace is in Phoenix with all 7 spans:
#
#   message (eu) ─┬─ deliver (eu, nobody else there)
#                 └─ mesh.publish (eu) ─┬─ mesh.receive (us) ── deliver (us, bob)
#                                       └─ mesh.receive (ap) ── deliver (ap, carol)
#
# It prints the trace id and the Phoenix URL of the trace,
# http://127.0.0.1:<http>/redirects/traces/<trace_id>.
#
#   --screenshot FILE             open that URL in headless Chromium (driven by
#                                 playwright-core) and save a PNG of the trace view: the
#                                 span tree with all 7 spans, and the `mesh.receive` span
#                                 of `us` selected, its attributes table in view
#                                 (mesh_id=us, origin_mesh=eu, peer, hop_us, ...)
#   --attributes-screenshot FILE  a second PNG, the same with the `mesh.receive` of `ap`
#   --width N / --height N        browser viewport (default 1400 x 1000: the 16
#                                 attributes of a mesh.receive span fit)
#   --keep                        leave everything running until Enter (or end of
#                                 stdin) or Ctrl-C, to browse the trace yourself
#   --timeout S                   bound for each wait (default 60 s; Phoenix's start-up
#                                 gets max(90, S))
#
# Needs: the prscd binary ($PRSCD_BIN, else $CARGO_TARGET_DIR/debug/prscd, else
# $HOME/.cache/prscd-target/debug/prscd, else target/debug/prscd), Phoenix
# (install-phoenix.sh), node >= 20 and tests/browser/node_modules
# (`cd tests/browser && npm ci`: @msgpack/msgpack for the clients,
# playwright-core for the screenshot), python3, and for screenshots Chromium
# ($CHROMIUM, default /usr/bin/chromium).
#
# Everything it started is stopped on every exit path (nodes: SIGTERM, 5 s,
# SIGKILL; Phoenix: phoenix.sh stop) and the temp dir removed.
# Exit status: 0 ok, 1 failure, 2 usage.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
NODE_MODULES="$ROOT/tests/browser/node_modules"
CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"

SHOT=""
ATTR_SHOT=""
WIDTH=1400
HEIGHT=1000
KEEP=0
TIMEOUT=60

usage() { sed -n '2,43p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit "${1:-2}"; }
log() { echo "demo-trace: $*" >&2; }
die() { log "FAILED: $*"; exit 1; }

while [[ $# -gt 0 ]]; do
    case "$1" in
        --screenshot) SHOT="${2:?--screenshot needs a file}"; shift 2 ;;
        --attributes-screenshot) ATTR_SHOT="${2:?--attributes-screenshot needs a file}"; shift 2 ;;
        --width) WIDTH="${2:-}"; shift 2 ;;
        --height) HEIGHT="${2:-}"; shift 2 ;;
        --keep) KEEP=1; shift ;;
        --timeout) TIMEOUT="${2:-}"; shift 2 ;;
        -h|--help) usage 0 ;;
        *) log "unknown argument: $1"; usage ;;
    esac
done
[[ "$WIDTH" =~ ^[0-9]+$ && "$HEIGHT" =~ ^[0-9]+$ && "$TIMEOUT" =~ ^[0-9]+$ ]] \
    || { log "--width, --height and --timeout take integers"; usage; }
# Screenshot paths are relative to the caller's directory.
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
[[ -z "$SHOT" ]] || SHOT="$(abs "$SHOT")"
[[ -z "$ATTR_SHOT" ]] || ATTR_SHOT="$(abs "$ATTR_SHOT")"
for f in "$SHOT" "$ATTR_SHOT"; do
    [[ -z "$f" || -d "$(dirname "$f")" ]] || { log "no such directory: $(dirname "$f")"; exit 2; }
done

# --- prerequisites -----------------------------------------------------------
BIN="${PRSCD_BIN:-}"
if [[ -z "$BIN" ]]; then
    for b in "${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/debug/prscd}" \
             "$HOME/.cache/prscd-target/debug/prscd" "$ROOT/target/debug/prscd"; do
        [[ -n "$b" && -x "$b" ]] && { BIN="$b"; break; }
    done
fi
[[ -n "$BIN" && -x "$BIN" ]] || die "no prscd binary: build it (cargo build) or set PRSCD_BIN"
command -v node >/dev/null || die "node is not installed"
command -v python3 >/dev/null || die "python3 is not installed"
[[ -d "$NODE_MODULES/@msgpack/msgpack" ]] \
    || die "no $NODE_MODULES/@msgpack/msgpack: run (cd tests/browser && npm ci)"
if [[ -n "$SHOT$ATTR_SHOT" ]]; then
    [[ -d "$NODE_MODULES/playwright-core" ]] \
        || die "no $NODE_MODULES/playwright-core: run (cd tests/browser && npm ci)"
    [[ -x "$CHROMIUM" ]] || die "no Chromium at $CHROMIUM (set CHROMIUM)"
fi
# Node 20 has WebSocket behind a flag; 22+ has it on by default.
NODE_WS=()
node -e 'process.exit(typeof WebSocket === "function" ? 0 : 1)' 2>/dev/null \
    || NODE_WS=(--experimental-websocket)

# --- resources, cleaned up on every exit path ---------------------------------
T="$(mktemp -d "${TMPDIR:-/tmp}/prscd-demo-trace.XXXXXX")"
NODE_PIDS=()
PHOENIX_STARTED=0
HELPER_PID=""

cleanup() {
    local rc=$? pid i
    trap - EXIT INT TERM HUP
    set +e
    if [[ -n "$HELPER_PID" ]] && kill -0 "$HELPER_PID" 2>/dev/null; then
        kill -TERM "$HELPER_PID" 2>/dev/null
        for ((i = 0; i < 30; i++)); do kill -0 "$HELPER_PID" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$HELPER_PID" 2>/dev/null
    fi
    # nodes: SIGTERM (they drain and flush their spans), then SIGKILL after 5 s
    for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
    for pid in "${NODE_PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            log "node pid $pid still running after 5 s; SIGKILL"
            kill -KILL "$pid" 2>/dev/null
        fi
        wait "$pid" 2>/dev/null
    done
    if [[ "$PHOENIX_STARTED" == 1 ]]; then
        "$HERE/phoenix.sh" stop --dir "$T/phoenix" >/dev/null 2>&1
    fi
    if [[ $rc -eq 1 ]]; then
        for f in "$T"/node-*/prscd.log; do
            [[ -f "$f" ]] || continue
            log "last lines of $(basename "$(dirname "$f")")'s log:"
            tail -n 15 "$f" >&2
        done
    fi
    rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT
WAITING=0  # --keep: Ctrl-C is the normal way out
trap 'if [[ $WAITING == 1 ]]; then exit 0; fi; log "interrupted"; exit 130' INT TERM HUP

# N distinct loopback ports, free right now.
free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# Runs a helper in the background so that a signal to this script still
# reaches cleanup promptly, and waits for it.
run_helper() {
    "$@" &
    HELPER_PID=$!
    local rc=0
    wait "$HELPER_PID" || rc=$?
    HELPER_PID=""
    return "$rc"
}

# --- Phoenix ------------------------------------------------------------------
# grpc, http, and one zenoh listener per node
read -r GRPC_PORT HTTP_PORT Z_EU Z_US Z_AP <<<"$(free_ports 5)"
log "starting Phoenix (grpc $GRPC_PORT, http $HTTP_PORT; takes 15-40 s)"
PHOENIX_STARTED=1
run_helper "$HERE/phoenix.sh" start --dir "$T/phoenix" --grpc-port "$GRPC_PORT" \
    --http-port "$HTTP_PORT" --timeout "$(( TIMEOUT > 90 ? TIMEOUT : 90 ))" >/dev/null \
    || die "Phoenix did not start"
PHOENIX_URL="http://127.0.0.1:$HTTP_PORT"

# --- three meshed nodes ---------------------------------------------------------
MESH=(eu us ap)
ZPORTS=("$Z_EU" "$Z_US" "$Z_AP")
WS_PORTS=()
for i in "${!MESH[@]}"; do
    id="${MESH[$i]}"
    dir="$T/node-$id"
    mkdir -p "$dir"
    connect=""
    for ((j = 0; j < i; j++)); do connect+="${connect:+,}tcp/127.0.0.1:${ZPORTS[$j]}"; done
    # A clean environment: nothing inherited (OTEL_*, APPS, RUST_LOG, ...) and
    # its own working dir, so no .env is picked up and the dev certificate
    # lands in $dir/.prscd-dev.
    (cd "$dir" && exec env -i PATH="$PATH" HOME="$HOME" \
        HOST=127.0.0.1 PORT=0 MESH_ID="$id" \
        ZENOH_LISTEN="tcp/127.0.0.1:${ZPORTS[$i]}" ZENOH_CONNECT="$connect" \
        OTEL_EXPORTER_OTLP_ENDPOINT="http://127.0.0.1:$GRPC_PORT" \
        OTEL_TRACES_SAMPLER=always_on OTEL_BSP_SCHEDULE_DELAY=100 \
        "$BIN" </dev/null >/dev/null 2>"$dir/prscd.log") &
    NODE_PIDS+=($!)
    port=""
    for ((k = 0; k < TIMEOUT * 10; k++)); do
        port="$(grep -o 'ready: port=[0-9]*' "$dir/prscd.log" 2>/dev/null | head -n1 | cut -d= -f2 || true)"
        [[ -n "$port" ]] && break
        kill -0 "${NODE_PIDS[$i]}" 2>/dev/null || die "node $id exited during start-up"
        sleep 0.1
    done
    [[ -n "$port" ]] || die "node $id not ready after ${TIMEOUT} s"
    WS_PORTS+=("$port")
    log "node $id: wss://127.0.0.1:$port/v1 (zenoh tcp/127.0.0.1:${ZPORTS[$i]}${connect:+, connects to $connect})"
done

# --- the clients: join, wait for the mesh to know everyone, send one message ----
cat > "$T/clients.mjs" <<'EOF'
// alice@eu, bob@us, carol@ap join `demo`; alice sends one data message;
// exits 0 once bob and carol have it. argv: node_modules dir, timeout s, ports...
import { createRequire } from 'node:module';
import { get } from 'node:https';
const [nodeModules, timeoutS, ...ports] = process.argv.slice(2);
const require = createRequire(`${nodeModules}/`);
const { encode, decode } = require('@msgpack/msgpack');
const DEADLINE = Date.now() + Number(timeoutS) * 1000;
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const fail = (why) => { console.error(`clients: ${why}`); process.exit(1); };
const until = async (what, ok) => {
  while (!(await ok())) {
    if (Date.now() > DEADLINE) fail(`timed out waiting for ${what}`);
    await sleep(50);
  }
};
// /health over TLS; the dev certificate is self-signed (loopback only)
const health = (port) => new Promise((resolve) => {
  const req = get({ host: '127.0.0.1', port, path: '/health', rejectUnauthorized: false, timeout: 2000 }, (res) => {
    let body = '';
    res.on('data', (c) => (body += c));
    res.on('end', () => { try { resolve(JSON.parse(body)); } catch { resolve(null); } });
  });
  req.on('error', () => resolve(null));
  req.on('timeout', () => req.destroy());
});

const names = ['alice', 'bob', 'carol'];
const clients = ports.map((port, i) => {
  const c = { name: names[i], port, open: false, data: [] };
  c.ws = new WebSocket(`wss://127.0.0.1:${port}/v1?publickey=dev&id=${c.name}`);
  c.ws.binaryType = 'arraybuffer';
  c.ws.onopen = () => (c.open = true);
  c.ws.onerror = (e) => fail(`${c.name}: websocket error ${e.message ?? ''}`);
  c.ws.onmessage = (e) => {
    const m = decode(new Uint8Array(e.data));
    if (m.t === 'data') c.data.push(m);
  };
  return c;
});
await until('the websockets to open', () => clients.every((c) => c.open));
for (const c of clients) {
  c.ws.send(encode({ t: 'control', op: 'channel_join', c: 'demo', pl: encode({ id: c.name }) }));
}
// every node knows the other two nodes' members of `demo`
await until('every node to see 2 remote members', async () =>
  (await Promise.all(ports.map(health))).every((h) => h?.mesh?.remote_members === 2));
const [alice, ...others] = clients;
alice.ws.send(encode({ t: 'data', c: 'demo', pl: encode({ event: 'chat', data: '{"text":"hi"}' }) }));
await until('bob and carol to receive the message', () => others.every((c) => c.data.length > 0));
for (const c of others) console.error(`clients: ${c.name} got ${JSON.stringify({ event: decode(c.data[0].pl).event, peer: c.data[0].p ?? c.data[0].peer })}`);
for (const c of clients) c.ws.close(1000);
await sleep(200);
process.exit(0);
EOF
log "clients: alice@eu, bob@us, carol@ap join \"demo\"; alice sends one message"
# The nodes' dev certificates are self-signed; the clients only talk to loopback.
run_helper env NODE_TLS_REJECT_UNAUTHORIZED=0 node --no-warnings "${NODE_WS[@]}" "$T/clients.mjs" \
    "$NODE_MODULES" "$TIMEOUT" "${WS_PORTS[@]}" \
    || die "the message did not go through the mesh"

# --- the trace in Phoenix --------------------------------------------------------
Q=(python3 "$HERE/query_spans.py" --http "$PHOENIX_URL")
run_helper "${Q[@]}" --name message --attribute op:data --attribute mesh_id:eu \
    --wait-count 1 --timeout "$TIMEOUT" >"$T/message.jsonl" \
    || die "no 'message' span for the data message in Phoenix"
TRACE_ID="$(python3 -c 'import json, sys; print(json.loads(sys.stdin.readline())["trace_id"])' <"$T/message.jsonl")"
run_helper "${Q[@]}" --trace-id "$TRACE_ID" --wait-count 7 --timeout "$TIMEOUT" >"$T/trace.jsonl" \
    || die "trace $TRACE_ID: not all 7 spans arrived"
python3 - "$T/trace.jsonl" <<'EOF' || die "trace has not the expected shape"
import json, sys
spans = [json.loads(l) for l in open(sys.argv[1])]
by_id = {s["span_id"]: s for s in spans}
receives = sorted(s["attributes"].get("mesh_id") for s in spans if s["name"] == "mesh.receive")
assert receives == ["ap", "us"], receives
assert sum(s["name"] == "deliver" for s in spans) == 3
def node(s):  # deliver spans carry no mesh_id: they run on their parent's node
    while "mesh_id" not in s["attributes"] and s["parent_id"] in by_id:
        s = by_id[s["parent_id"]]
    return s["attributes"].get("mesh_id", "?")
def show(s, depth):  # depth first, children by start time
    a = s["attributes"]
    extra = " ".join(f"{k}={a[k]}" for k in ("peer", "origin_mesh", "hop_us", "delivered") if k in a)
    label = "  " * depth + s["name"]
    print(f"demo-trace:   {label:<20} on {node(s)}  {extra}".rstrip(), file=sys.stderr)
    for c in spans:
        if c["parent_id"] == s["span_id"]:
            show(c, depth + 1)
for s in spans:
    if s["parent_id"] not in by_id:
        show(s, 0)
EOF
TRACE_URL="$PHOENIX_URL/redirects/traces/$TRACE_ID"
echo "trace_id $TRACE_ID"
echo "url $TRACE_URL"

# --- screenshots ------------------------------------------------------------------
if [[ -n "$SHOT$ATTR_SHOT" ]]; then
    cat > "$T/shot.mjs" <<'EOF'
// Opens the trace in Phoenix's UI (arize-phoenix 20.26.1) and saves PNGs.
// argv: node_modules dir, chromium, trace url, width, height, timeout s,
//       shot file ('' = none), attributes shot file ('' = none).
import { createRequire } from 'node:module';
const [nodeModules, chromiumPath, url, width, height, timeoutS, shot, attrShot] = process.argv.slice(2);
const require = createRequire(`${nodeModules}/`);
const { chromium } = require('playwright-core');
const T = Number(timeoutS) * 1000;
const say = (s) => console.error(`shot: ${s}`);
const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true, // playwright adds --headless, --no-sandbox and its own --user-data-dir
  args: ['--disable-gpu', '--no-first-run', '--disable-background-networking',
         '--disable-component-update', '--disable-sync'],
  timeout: T,
  handleSIGINT: false, handleSIGTERM: false, handleSIGHUP: false,
});
const close = () => Promise.race([browser.close().catch(() => {}), new Promise((r) => setTimeout(r, 5000))]);
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, async () => { await close(); process.exit(130); });

// Rows of the trace tree, and the mesh_id row of the selected span's attributes.
const EXPECTED = ['message', 'deliver', 'mesh.publish', 'mesh.receive', 'deliver', 'mesh.receive', 'deliver'];
let code = 0;
try {
  const page = await browser.newPage({ viewport: { width: Number(width), height: Number(height) } });
  page.setDefaultTimeout(T);
  page.on('pageerror', (e) => say(`page error: ${e.message}`));
  page.on('response', (r) => r.status() >= 400 && say(`HTTP ${r.status()} ${r.url()}`));
  page.on('requestfailed', (r) => {
    const why = r.failure()?.errorText ?? '';
    if (why !== 'net::ERR_ABORTED') say(`request failed: ${r.url()} ${why}`); // aborted: the app cancelled it
  });
  await page.goto(url, { waitUntil: 'domcontentloaded' });
  // The tree's rows; while loading they are empty placeholders.
  const nodes = page.locator('.span-node-wrap');
  const names = async () => (await nodes.allInnerTexts()).map((t) => t.split('\n')[0].trim());
  const deadline = Date.now() + T;
  let reloadAt = Date.now() + 20_000;
  for (;;) {
    const got = await names();
    if ([...got].sort().join() === [...EXPECTED].sort().join()) break;
    // the tree may come up collapsed: expand it (the trace list behind has an
    // "Expand all rows" button: match exactly; never block on it)
    const expand = page.getByRole('button', { name: 'Expand all', exact: true });
    if (got.some(Boolean) && (await expand.count())) await expand.first().click({ timeout: 1000 }).catch(() => {});
    if (Date.now() > deadline) {
      if (shot || attrShot) await page.screenshot({ path: `${shot || attrShot}.failed.png` }).catch(() => {});
      throw new Error(`trace tree shows [${got.join(', ')}], wanted [${EXPECTED.join(', ')}]` +
                      ` (page as it was: ${shot || attrShot}.failed.png)`);
    }
    // seen once on a starved machine: the placeholders never filled in; load again
    if (Date.now() > reloadAt) {
      say(`trace tree still shows [${got.join(', ')}] after 20 s; reloading`);
      await page.reload({ waitUntil: 'domcontentloaded' });
      reloadAt = Date.now() + 20_000;
    }
    await page.waitForTimeout(250);
  }
  say(`trace view at ${page.url()} shows ${(await names()).join(', ')}`);
  // more room for the trace panel
  await page.getByRole('button', { name: 'Collapse side navigation' }).click().catch(() => {});

  const meshIdShown = async () => {
    const row = page.getByRole('row', { name: /mesh_id/ });
    if ((await row.count()) !== 1) return null;
    return (await row.innerText()).split(/\s+/).filter(Boolean).pop();
  };
  // Selects the mesh.receive span of node `id`, shows its attributes table.
  const select = async (id) => {
    const receives = nodes.filter({ hasText: 'mesh.receive' });
    for (let i = 0; i < (await receives.count()); i++) {
      await receives.nth(i).click();
      const until = Date.now() + 5000;
      let seen = null;
      // the details pane follows the click: wait for a mesh.receive's mesh_id
      while (Date.now() < until) {
        seen = await meshIdShown();
        if (seen === id) break;
        await page.waitForTimeout(100);
      }
      if (seen !== id) continue;
      await page.getByRole('tab', { name: 'Attributes' }).click();
      await page.getByRole('row', { name: /mesh_id/ }).scrollIntoViewIfNeeded();
      await page.waitForTimeout(500); // let the tab transition finish
      return;
    }
    throw new Error(`no mesh.receive span with mesh_id=${id} in the tree`);
  };
  if (shot) {
    await select('us');
    await page.screenshot({ path: shot });
    say(`saved ${shot}: the tree, mesh.receive on us selected`);
  }
  if (attrShot) {
    await select('ap');
    await page.screenshot({ path: attrShot });
    say(`saved ${attrShot}: the tree, mesh.receive on ap selected`);
  }
} catch (e) {
  say(`FAILED: ${e.message}`);
  code = 1;
} finally {
  await close();
}
process.exit(code);
EOF
    run_helper node --no-warnings "$T/shot.mjs" "$NODE_MODULES" "$CHROMIUM" "$TRACE_URL" \
        "$WIDTH" "$HEIGHT" "$TIMEOUT" "$SHOT" "$ATTR_SHOT" \
        || die "screenshot failed"
    for f in "$SHOT" "$ATTR_SHOT"; do
        [[ -n "$f" ]] && log "saved $f ($(( $(stat -c %s "$f") / 1024 )) KB)"
    done
fi

if [[ "$KEEP" == 1 ]]; then
    log "running; open $TRACE_URL (Enter or Ctrl-C stops everything)"
    WAITING=1
    read -r _ || true
    WAITING=0
fi
log "stopping"
