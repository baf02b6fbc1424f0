#!/usr/bin/env node
// Browser end-to-end test for prscd with the published @yomo/presence client.
// See README.md. Usage:
//   node tests/browser/run.mjs --url https://127.0.0.1:PORT/v1 --spki <base64> [--publickey dev]
//                              [--token-secret S --token-app APP]   # a signed token per user instead
//                              [--case wt-ws|wt-pair|all|room|tabs|smoke] [--verbose] [--debug]
//   node tests/browser/run.mjs [--server PATH]     # no --url: start prscd itself (PORT=0 DEBUG=true)
//   node tests/browser/run.mjs --case mesh --url https://127.0.0.1:PORT/v1 --spki <base64>
//                              --url2 https://127.0.0.1:PORT2/v1 --spki2 <base64> --kill-pid <pid of node B>
//                              [--mesh1 NAME --mesh2 NAME] [--mesh-join sequential|together]
//   node tests/browser/run.mjs --case mesh [--server PATH]   # no --url: start two meshed nodes itself

import { spawn } from 'node:child_process';
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import { createServer as createTcpServer } from 'node:net';
import { get as httpsGet } from 'node:https';
import { mkdtempSync, readFileSync, rmSync, existsSync, readdirSync, readlinkSync } from 'node:fs';
import { tmpdir, homedir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isDeepStrictEqual, parseArgs } from 'node:util';

const HERE = dirname(fileURLToPath(import.meta.url));
const MAX_WAIT = 20_000;

// ---------------------------------------------------------------------------
// arguments

let opts;
try {
  ({ values: opts } = parseArgs({
    options: {
      url: { type: 'string' },
      spki: { type: 'string' },
      url2: { type: 'string' },
      spki2: { type: 'string' },
      'kill-pid': { type: 'string' },
      mesh1: { type: 'string' },
      mesh2: { type: 'string' },
      'mesh-join': { type: 'string', default: 'sequential' },
      publickey: { type: 'string', default: 'dev' },
      'token-secret': { type: 'string' },
      'token-app': { type: 'string' },
      case: { type: 'string', default: 'wt-ws' },
      server: { type: 'string' },
      chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
      channel: { type: 'string', default: 'room-1' },
      timeout: { type: 'string', default: String(MAX_WAIT) },
      netlog: { type: 'string' },
      verbose: { type: 'boolean', short: 'v', default: false },
      debug: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  }));
} catch (e) {
  console.error(`browser: bad arguments: ${e.message}`);
  console.log('browser: 0 passed, 1 failed');
  process.exit(2);
}
if (opts.help) {
  console.log(readFileSync(join(HERE, 'README.md'), 'utf8'));
  process.exit(0);
}
const CASES = { 'wt-ws': ['wt-ws'], 'wt-pair': ['wt-pair'], all: ['wt-ws', 'wt-pair'], room: ['room'], tabs: ['tabs'], smoke: ['smoke'], mesh: ['mesh'] };
const WAIT = Math.min(Math.max(Number(opts.timeout) || MAX_WAIT, 1000), MAX_WAIT);

// ---------------------------------------------------------------------------
// reporting

let passed = 0;
let failed = 0;
const say = (s) => console.log(`browser: ${s}`);
const detail = (s) => {
  for (const line of String(s).split('\n')) console.log(`browser:   | ${line}`);
};
const vlog = (s) => opts.verbose && detail(s);

class Fail extends Error {}

// ---------------------------------------------------------------------------
// resources, cleaned up on every exit path

// servers the runner started itself: { name, proc, log: [last lines] }
const servers = [];
const running = (p) => p && p.exitCode === null && p.signalCode === null;
let httpServer = null;
let browser = null;
let tmpDirs = [];
let cleaning = null;

async function cleanup() {
  if (cleaning) return cleaning;
  cleaning = (async () => {
    if (browser) {
      const b = browser;
      browser = null;
      await Promise.race([b.close().catch(() => {}), sleep(5000)]);
    }
    if (httpServer) {
      httpServer.closeAllConnections?.();
      httpServer.close();
      httpServer = null;
    }
    await Promise.all(
      servers.map(async ({ proc: p }) => {
        if (!running(p)) return;
        const exited = new Promise((r) => p.once('exit', r));
        p.kill('SIGTERM');
        if (!(await Promise.race([exited.then(() => true), sleep(3000).then(() => false)]))) {
          p.kill('SIGKILL');
          await Promise.race([exited, sleep(2000)]);
        }
      }),
    );
    for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
    tmpDirs = [];
  })();
  return cleaning;
}

process.on('exit', () => {
  // last resort (synchronous): never leave a server behind
  for (const { proc } of servers) if (running(proc)) proc.kill('SIGKILL');
});
for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, async () => {
    say(`FAIL interrupted by ${sig}`);
    failed++;
    await cleanup();
    summary();
    process.exit(130);
  });
}

let summarized = false;
function summary() {
  if (summarized) return; // exactly one summary line, whatever the exit path
  summarized = true;
  console.log(`browser: ${passed} passed, ${failed} failed`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// ---------------------------------------------------------------------------
// build the page bundle

async function buildBundle() {
  const esbuild = await import('esbuild');
  const outdir = join(HERE, 'dist');
  await esbuild.build({
    entryPoints: [join(HERE, 'page.js')],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'chrome120',
    outfile: join(outdir, 'bundle.js'),
    sourcemap: 'inline',
    logLevel: 'warning',
    absWorkingDir: HERE,
  });
  return { html: readFileSync(join(HERE, 'index.html')), js: readFileSync(join(outdir, 'bundle.js')) };
}

// ---------------------------------------------------------------------------
// tiny HTTP server for the page (http://127.0.0.1 is a secure context)

async function serve(files) {
  const srv = createServer((req, res) => {
    const path = new URL(req.url, 'http://x').pathname;
    const send = (code, type, body) => {
      res.writeHead(code, { 'content-type': type, 'cache-control': 'no-store' });
      res.end(body);
    };
    if (path === '/' || path === '/index.html') send(200, 'text/html; charset=utf-8', files.html);
    else if (path === '/bundle.js') send(200, 'text/javascript; charset=utf-8', files.js);
    else if (path === '/favicon.ico') send(204, 'image/x-icon', '');
    else send(404, 'text/plain', 'not found');
  });
  await new Promise((resolve, reject) => {
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', resolve);
  });
  httpServer = srv;
  return `http://127.0.0.1:${srv.address().port}`;
}

// ---------------------------------------------------------------------------
// optionally start prscd ourselves

function defaultServerBin() {
  if (process.env.PRSCD_BIN) return process.env.PRSCD_BIN;
  const target = process.env.CARGO_TARGET_DIR || join(homedir(), '.cache', 'prscd-target');
  return join(target, 'debug', 'prscd');
}

// name: a label for the log; extraEnv: added to the environment (mesh settings)
async function startServer(bin, name = 'prscd', extraEnv = {}) {
  if (!existsSync(bin)) throw new Fail(`server binary not found: ${bin} (build it, or pass --url/--spki)`);
  const cwd = mkdtempSync(join(tmpdir(), 'prscd-browser-'));
  tmpDirs.push(cwd);
  const env = { ...process.env, PORT: '0', DEBUG: 'true', ...extraEnv };
  for (const k of Object.keys(env)) if (env[k] === undefined) delete env[k];
  const p = spawn(bin, [], { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
  const serverLog = [];
  const srv = { name, proc: p, log: serverLog };
  servers.push(srv);
  let port = null;
  let spki = null;
  let ready = false;
  const onLine = (line) => {
    serverLog.push(line);
    if (serverLog.length > 400) serverLog.shift();
    if (opts.verbose) console.log(`${name}: ${line}`);
    const mp = line.match(/port=(\d+)/);
    if (mp && !port) port = Number(mp[1]);
    const ms = line.match(/spki=([A-Za-z0-9+/=]+)/);
    if (ms && !spki) spki = ms[1];
    if (/\bready\b/.test(line)) ready = true;
  };
  for (const stream of [p.stdout, p.stderr]) {
    let buf = '';
    stream.setEncoding('utf8');
    stream.on('data', (d) => {
      buf += d;
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        onLine(buf.slice(0, i).replace(/\x1b\[[0-9;]*m/g, ''));
        buf = buf.slice(i + 1);
      }
    });
  }
  const exited = new Promise((r) => p.once('exit', (code, sig) => r({ code, sig })));
  p.once('error', (e) => serverLog.push(`spawn error: ${e.message}`));
  const deadline = Date.now() + MAX_WAIT;
  while (!(ready && port)) {
    if (p.exitCode !== null || p.signalCode !== null) {
      const { code, sig } = await exited;
      throw new Fail(`server exited before ready (code=${code} signal=${sig})\n${serverLog.slice(-30).join('\n')}`);
    }
    if (Date.now() > deadline) {
      throw new Fail(`server printed no "ready ... port=N" line within ${MAX_WAIT} ms\n${serverLog.slice(-30).join('\n')}`);
    }
    await sleep(50);
  }
  // the spki line may come just before or after the ready line
  const spkiDeadline = Date.now() + 2000;
  while (!spki && Date.now() < spkiDeadline) await sleep(50);
  say(`started ${name === 'prscd' ? '' : `${name}: `}${bin} (pid ${p.pid}) on port ${port}${spki ? '' : ' (no spki= line seen)'}`);
  return { url: `https://127.0.0.1:${port}/v1`, spki, pid: p.pid, server: srv };
}

// ---------------------------------------------------------------------------
// browser and pages

// targets: one server, or two (the mesh case): Chromium trusts every given SPKI and
// forces QUIC for every origin (both flags take comma-separated lists).
async function launchBrowser(targets) {
  const { chromium } = await import('playwright-core');
  const uniq = (xs) => [...new Set(xs)];
  const origins = uniq(targets.map((t) => {
    const u = new URL(t.url);
    return `${u.hostname}:${u.port || '443'}`;
  }));
  const spkis = uniq(targets.map((t) => t.spki).filter(Boolean));
  const args = [
    '--disable-gpu',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    `--origin-to-force-quic-on=${origins.join(',')}`,
  ];
  if (spkis.length) args.push(`--ignore-certificate-errors-spki-list=${spkis.join(',')}`);
  if (opts.netlog) args.push(`--log-net-log=${opts.netlog}`, '--net-log-capture-mode=Everything');
  // playwright adds --headless, --no-sandbox and a fresh --user-data-dir
  browser = await chromium.launch({
    executablePath: opts.chromium,
    headless: true,
    args,
    timeout: MAX_WAIT,
    // our own handlers clean up and print the summary
    handleSIGINT: false,
    handleSIGTERM: false,
    handleSIGHUP: false,
  });
  vlog(`chromium ${browser.version()} args: ${args.join(' ')}`);
}

class TestPage {
  constructor(name, transport) {
    this.name = name;
    this.transport = transport; // 'wt' | 'ws'
    this.console = [];
    this.wire = []; // forwarded live by the page, survives the page's close
    this.closed = false;
  }
  async open(pageUrl) {
    this.context = await browser.newContext();
    this.page = await this.context.newPage();
    this.page.setDefaultTimeout(MAX_WAIT);
    this.page.on('console', (m) => {
      const line = `[${m.type()}] ${m.text()}`;
      this.console.push(line);
      if (this.console.length > 500) this.console.shift();
      if (opts.verbose && opts.debug) console.log(`page ${this.name}: ${line}`);
    });
    this.page.on('pageerror', (e) => this.console.push(`[pageerror] ${e.message}`));
    await this.page.exposeFunction('__prscdTap', (json) => {
      const e = JSON.parse(json);
      this.wire.push(e);
      if (opts.verbose) console.log(`wire ${this.name} ${fmtWire(e)}`);
    });
    await this.page.goto(`${pageUrl}/?transport=${this.transport}`, { waitUntil: 'load', timeout: MAX_WAIT });
    await this.page.waitForFunction(() => !!window.prscdTest, null, { timeout: MAX_WAIT });
  }
  eval(fn, arg) {
    return this.page.evaluate(fn, arg);
  }
  async state() {
    if (!this.page) throw new Error(`page ${this.name} was never opened`);
    return this.page.evaluate(() => window.prscdTest.snapshot());
  }
  // wait until pred(state) holds in the page; pred is a page-side function
  async waitFor(what, pred, arg) {
    try {
      await this.page.waitForFunction(pred, arg, { timeout: WAIT, polling: 50 });
    } catch (e) {
      if (/Timeout|timeout/.test(e.message)) throw new Fail(`${this.name}: timed out after ${WAIT} ms waiting for ${what}`);
      throw e;
    }
  }
  // Close the tab only (the browser and its network context live on), like a user
  // closing a tab. Closing the whole context instead tears down the network context,
  // and Chromium then sometimes drops a WebTransport session without a word (no
  // CLOSE_WEBTRANSPORT_SESSION, no FIN, no CONNECTION_CLOSE), so the server could only
  // notice at its idle timeout.
  async closePage() {
    if (this.closed) return;
    this.closed = true;
    await this.page.close();
  }
  async close() {
    this.closed = true;
    if (this.page && !this.page.isClosed()) await this.page.close().catch(() => {});
    await this.context.close();
  }
}

function fmtWire(e) {
  // the page's clock (UTC, like the server log), to line the wire up with the server log
  const at = e.t ? `${new Date(e.t).toISOString().slice(11, 23)}Z ` : '';
  const head = `${at}${e.dir} ${e.via} ${e.len}B`;
  if (e.error) return `${head} UNDECODABLE (${e.error}) ${e.hex || ''}`;
  if (e.text !== undefined) return `${head} TEXT ${JSON.stringify(e.text)}`;
  const m = e.msg || {};
  if (m.notAMap) return `${head} NOT A MAP ${JSON.stringify(m.value)}`;
  const { keys, ...rest } = m;
  return `${head} ${JSON.stringify(rest)} keys=${keys.join(',')}`;
}

async function dumpDiagnostics(pages) {
  for (const p of pages) {
    let st = null;
    if (!p.page) {
      detail(`--- page ${p.name} (${p.transport}) [never opened]`);
      continue;
    }
    if (!p.closed) st = await p.state().catch(() => null);
    detail(`--- page ${p.name} (${p.transport})${p.closed ? ' [closed]' : ''}`);
    if (st) {
      detail(`typeof WebTransport before lib=${st.typeofWebTransportBeforeLib} after=${st.typeofWebTransportAfterLib} native=${st.webTransportIsNative}`);
      detail(`connected=${st.connected} joined=${st.joined} url=${st.url}`);
      detail(`webtransports=${JSON.stringify(st.webtransports)}`);
      detail(`websockets=${JSON.stringify(st.websockets)}`);
      detail(`peers=${JSON.stringify(st.peers)} online=${JSON.stringify(st.online)} offline=${JSON.stringify(st.offline)}`);
      detail(`received=${JSON.stringify(st.received)}`);
      if (st.status.length) detail(`status=${JSON.stringify(st.status)}`);
      if (st.errors.length) detail(`errors=${JSON.stringify(st.errors)}`);
    }
    detail(`wire (${p.wire.length} messages, last 40):`);
    for (const e of p.wire.slice(-40)) detail(`  ${fmtWire(e)}`);
    detail(`console (last 40):`);
    for (const l of p.console.slice(-40)) detail(`  ${l}`);
  }
  for (const { name, log } of servers) {
    detail(`--- ${name === 'prscd' ? 'server' : name} log (last 60 lines)`);
    for (const l of log.slice(-60)) detail(`  ${l}`);
  }
}

// ---------------------------------------------------------------------------
// checks

async function runChecks(caseName, pages, steps) {
  let aborted = null;
  for (const [name, fn, { fatal = true } = {}] of steps) {
    if (aborted) {
      say(`skip ${caseName}: ${name} (after: ${aborted})`);
      continue;
    }
    try {
      // a step returns a note, or { title, note } to report under a title it measured
      let note = await fn();
      let title = name;
      if (note && typeof note === 'object') ({ title = name, note } = note);
      passed++;
      say(`ok ${caseName}: ${title}${note ? ` (${note})` : ''}`);
    } catch (e) {
      failed++;
      const msg = e instanceof Fail ? e.message : e.stack || String(e);
      say(`FAIL ${caseName}: ${name}: ${msg.split('\n')[0]}`);
      if (msg.includes('\n')) detail(msg.split('\n').slice(1).join('\n'));
      await dumpDiagnostics(pages);
      if (fatal) aborted = name;
    }
  }
}

const rand = () => Math.random().toString(36).slice(2, 7);

function rxOf(page, pred) {
  return page.wire.filter((e) => e.dir === 'rx' && e.msg && !e.msg.notAMap && pred(e.msg));
}

// wait, in node, for a condition over data the runner holds
async function until(what, cond) {
  const deadline = Date.now() + WAIT;
  while (!cond()) {
    if (Date.now() > deadline) throw new Fail(`timed out after ${WAIT} ms waiting for ${what}`);
    await sleep(50);
  }
}

// An HS256 token as an app's backend would mint it (README, "Signed tokens").
function mintToken(secret, claims) {
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const unsigned = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64(claims)}`;
  return `${unsigned}.${createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

// The server-vouched state a token carries, by user (token mode only).
const TOKEN_STATE = { alice: { name: 'Alice (verified)' } };

// What the page passes as publicKey for `id`: the app key, or its token.
function keyFor(id) {
  if (!opts['token-secret']) return opts.publickey;
  const claims = { app: opts['token-app'], sub: id, exp: Math.floor(Date.now() / 1000) + 300 };
  const state = TOKEN_STATE[id.split('-')[0]];
  if (state) claims.state = state;
  return mintToken(opts['token-secret'], claims);
}

async function connectAndCheck(p, target, id) {
  const forceWebSocket = p.transport === 'ws';
  const key = keyFor(id);
  await p.eval(
    ([url, key, id, o]) => window.prscdTest.connect(url, key, id, o),
    [target.url, key, id, { forceWebSocket, debug: opts.debug }],
  );
  await p.waitFor(`${id} to connect (createPresence to resolve)`, () => {
    const s = window.prscdTest.state;
    return s.connected || s.connectError || s.webtransports.some((w) => w.readyError || w.closedError) ||
      s.websockets.some((w) => w.closed || w.error);
  });
  const s = await p.state();
  if (!s.connected) throw new Fail(`${id} did not connect: ${JSON.stringify({ connectError: s.connectError, webtransports: s.webtransports, websockets: s.websockets })}`);
  const expectUrl = `${target.url}?publickey=${key}&id=${id}`;
  if (forceWebSocket) {
    if (s.webtransports.length) throw new Fail(`native WebTransport was used: ${JSON.stringify(s.webtransports)}`);
    const ws = s.websockets.filter((w) => w.opened);
    const wssUrl = expectUrl.replace(/^https:/, 'wss:');
    if (ws.length !== 1 || ws[0].url !== wssUrl) throw new Fail(`expected one open WebSocket to ${wssUrl}, got ${JSON.stringify(s.websockets)}`);
    return `WebSocket polyfill, ${ws[0].url}`;
  }
  if (s.websockets.length) throw new Fail(`a WebSocket was opened (downgrade?): ${JSON.stringify(s.websockets)}`);
  const wt = s.webtransports.filter((w) => w.ready);
  if (wt.length !== 1 || wt[0].url !== expectUrl) throw new Fail(`expected one ready native WebTransport to ${expectUrl}, got ${JSON.stringify(s.webtransports)}`);
  return `native WebTransport, ${wt[0].url}`;
}

async function joinAndCheck(p, id, channel, st) {
  await p.eval(([c, st]) => window.prscdTest.joinChannel(c, st, { events: ['chat'] }), [channel, st]);
  await p.waitFor(`${id}'s channel_join ack for ${channel}`, () => window.prscdTest.state.joined);
  const acks = rxOf(p, (m) => m.t === 'control' && m.op === 'channel_join');
  if (acks.length !== 1) throw new Fail(`expected exactly one channel_join ack, got ${acks.length}`);
  const a = acks[0].msg;
  if (a.c !== channel) throw new Fail(`channel_join ack has c=${JSON.stringify(a.c)}, expected ${channel}`);
  return `ack ${JSON.stringify({ c: a.c, p: a.p, mesh: a.mesh })}`;
}

async function seesPeer(p, other, otherState) {
  await p.waitFor(
    `${other} with its state in the peer list`,
    ([id, st]) => window.prscdTest.state.peers.some((x) => String(x.id) === id && Object.entries(st).every(([k, v]) => JSON.stringify(x[k]) === JSON.stringify(v))),
    [other, otherState],
  );
  const s = await p.state();
  if (s.peers.some((x) => String(x.id) === s.id)) throw new Fail(`own id ${s.id} is in its own peer list: ${JSON.stringify(s.peers)}`);
  return `peers=${JSON.stringify(s.peers)}`;
}

async function broadcastReaches(from, fromId, to, data) {
  await from.eval(([d]) => window.prscdTest.broadcast('chat', d), [data]);
  await to.waitFor(
    `the 'chat' broadcast from ${fromId}`,
    ([id, d]) => window.prscdTest.state.received.some((r) => r.event === 'chat' && r.from === id && JSON.stringify(r.data) === JSON.stringify(d)),
    [fromId, data],
  );
  const s = await to.state();
  const got = s.received.filter((r) => r.event === 'chat' && r.from === fromId);
  if (!isDeepStrictEqual(got[got.length - 1].data, data)) throw new Fail(`data differs: ${JSON.stringify(got)}`);
  return `received ${JSON.stringify(got[got.length - 1])}`;
}

async function noEcho(pairs) {
  await sleep(1500); // let any echo arrive
  const problems = [];
  for (const [p, id] of pairs) {
    const s = await p.state();
    const echoed = s.received.filter((r) => r.from === id);
    if (echoed.length) problems.push(`${id} received its own broadcast(s): ${JSON.stringify(echoed)}`);
    const wireEcho = rxOf(p, (m) => m.t === 'data' && m.p === id);
    if (wireEcho.length) problems.push(`${id} got ${wireEcho.length} data message(s) with p=${id} on the wire`);
    const dup = s.received.filter((r) => r.from !== id);
    if (dup.length !== 1) problems.push(`${id} received ${dup.length} chat messages, expected exactly 1: ${JSON.stringify(dup)}`);
  }
  if (problems.length) throw new Fail(problems.join('; '));
  return 'each side received exactly the other\'s one message';
}

function wireHygiene(pages) {
  const problems = [];
  let n = 0;
  for (const p of pages) {
    for (const e of p.wire.filter((e) => e.dir === 'rx')) {
      n++;
      if (e.error || e.text !== undefined || !e.msg || e.msg.notAMap) {
        problems.push(`${p.name}: ${fmtWire(e)}`);
        continue;
      }
      const m = e.msg;
      const bad = [];
      if (m.t !== 'control' && m.t !== 'data') bad.push(`t=${JSON.stringify(m.t)}`);
      if (m.t === 'control' && !['channel_join', 'peer_online', 'peer_state', 'peer_offline'].includes(m.op)) bad.push(`op=${JSON.stringify(m.op)}`);
      if ('sid' in m) bad.push('carries sid');
      if ('app' in m) bad.push('carries app');
      if (typeof m.c !== 'string') bad.push('c is not a string');
      if ((m.t === 'data' || (m.op && m.op !== 'channel_join')) && !m.p) bad.push('no p');
      if (m.t === 'data' && !(m.pl && typeof m.pl.event === 'string' && typeof m.pl.data === 'string')) bad.push('data pl is not {event, data:string}');
      if (bad.length) problems.push(`${p.name}: ${bad.join(', ')}: ${fmtWire(e)}`);
    }
  }
  if (problems.length) throw new Fail(`${problems.length} bad message(s) received\n${problems.slice(0, 20).join('\n')}`);
  return `${n} received messages, all single msgpack maps, no sid/app`;
}

async function offlineSeen(a, aId, b, bId) {
  await b.closePage();
  await until(`${aId} to receive peer_offline for ${bId}`, () => rxOf(a, (m) => m.t === 'control' && m.op === 'peer_offline' && m.p === bId).length > 0);
  await a.waitFor(`${bId} to leave ${aId}'s peer list`, (id) => !window.prscdTest.state.peers.some((x) => String(x.id) === id), bId);
  const bLeft = b.wire.some((e) => e.dir === 'tx' && e.msg && e.msg.op === 'peer_offline');
  const s = await a.state();
  return `${bLeft ? 'B had sent peer_offline itself (leave)' : 'no peer_offline from B seen: the server detected the disconnect'}; peers now ${JSON.stringify(s.peers)}`;
}

async function runPairCase(caseName, pageUrl, target) {
  const [ta, tb] = caseName === 'wt-ws' ? ['wt', 'ws'] : ['wt', 'wt'];
  const suffix = rand();
  const aId = `alice-${suffix}`;
  const bId = `bob-${suffix}`;
  const aState = { name: 'Alice', color: '#e33', n: 1 };
  const bState = { name: 'Bob ✓', color: '#33e', tags: ['x', 'y'] };
  const A = new TestPage(`A(${aId})`, ta);
  const B = new TestPage(`B(${bId})`, tb);
  const pages = [A, B];
  const chan = opts.channel;
  const kind = (t) => (t === 'ws' ? 'WebSocket polyfill' : 'native WebTransport');
  try {
    await runChecks(caseName, pages, [
      [`page A loads, ${kind(ta)}`, () => pageLoads(A, pageUrl)],
      [`page B loads, ${kind(tb)}`, () => pageLoads(B, pageUrl)],
      [`A connects over ${kind(ta)}`, () => connectAndCheck(A, target, aId)],
      [`A joins ${chan}`, () => joinAndCheck(A, aId, chan, aState)],
      [`B connects over ${kind(tb)}`, () => connectAndCheck(B, target, bId)],
      [`B joins ${chan}`, () => joinAndCheck(B, bId, chan, bState)],
      ['A sees B online with its state', () => seesPeer(A, bId, bState), { fatal: false }],
      ['B sees A online with its state', () => seesPeer(B, aId, { ...aState, ...(opts['token-secret'] ? TOKEN_STATE.alice : {}) }), { fatal: false }],
      ["A's broadcast reaches B with sender A", () => broadcastReaches(A, aId, B, { text: 'hello from A', n: 1, u: 'héllo ✓', nested: { a: [1, 2] } }), { fatal: false }],
      ["B's broadcast reaches A with sender B", () => broadcastReaches(B, bId, A, { text: 'hello from B', n: 2, ok: true }), { fatal: false }],
      ['no echo of own broadcasts', () => noEcho([[A, aId], [B, bId]]), { fatal: false }],
      ['received messages are well-formed (no sid/app)', () => wireHygiene(pages), { fatal: false }],
      ["A gets B's offline when B's page closes", () => offlineSeen(A, aId, B, bId), { fatal: false }],
    ]);
  } finally {
    for (const p of pages) if (p.context) await p.close().catch(() => {});
  }
}

// Several tabs in one room, joining one after the other: the node sends a
// repeated, unchanged state only to the tabs that have not seen it, and
// every tab must still see every member with its state.
async function runRoomCase(pageUrl, target) {
  const suffix = rand();
  const tabs = ['wt', 'ws', 'wt', 'ws'].map((t, i) => {
    const id = `tab${i}-${suffix}`;
    return { id, state: { name: `Tab ${i}`, n: i }, page: new TestPage(`T${i}(${id})`, t) };
  });
  const chan = `${opts.channel}-room`;
  const everyoneSeesEveryone = async (list) => {
    for (const a of list) for (const b of list) if (a !== b) await seesPeer(a.page, b.id, b.state);
    return `${list.length} tabs each see the other ${list.length - 1} with their states`;
  };
  const steps = [];
  for (const [i, t] of tabs.entries()) {
    steps.push([`tab ${i} loads`, () => pageLoads(t.page, pageUrl)]);
    steps.push([`tab ${i} connects`, () => connectAndCheck(t.page, target, t.id)]);
    steps.push([`tab ${i} joins ${chan}`, () => joinAndCheck(t.page, t.id, chan, t.state)]);
    steps.push([`the ${i + 1} tabs see each other`, () => everyoneSeesEveryone(tabs.slice(0, i + 1))]);
  }
  steps.push(['received messages are well-formed (no sid/app)', () => wireHygiene(tabs.map((t) => t.page))]);
  try {
    await runChecks('room', tabs.map((t) => t.page), steps);
  } finally {
    for (const t of tabs) if (t.page.context) await t.page.close().catch(() => {});
  }
}

// One user in two tabs (the same id, one on native WebTransport, one on the
// polyfill) and another user: the second tab is not announced again, closing
// one tab leaves the user online for the other, and closing the last one
// sends its peer_offline once.
async function runTabsCase(pageUrl, target) {
  const suffix = rand();
  const aId = `alice-${suffix}`;
  const bId = `bob-${suffix}`;
  const aState = { name: 'Alice' };
  const bState = { name: 'Bob' };
  const A1 = new TestPage(`A1(${aId})`, 'wt');
  const A2 = new TestPage(`A2(${aId})`, 'ws');
  const B = new TestPage(`B(${bId})`, 'wt');
  const pages = [A1, A2, B];
  const chan = `${opts.channel}-tabs`;
  const peersOnNode = async (n) => {
    const deadline = Date.now() + WAIT;
    for (;;) {
      const h = await health(target);
      if (h.peers === n) return `the node has ${n} connections`;
      if (Date.now() > deadline) throw new Fail(`the node has ${h.peers} connections, expected ${n}`);
      await sleep(50);
    }
  };
  const offlinesOf = (p, id) => rxOf(p, (m) => m.t === 'control' && m.op === 'peer_offline' && m.p === id).length;
  const onlinesOf = (p, id) => rxOf(p, (m) => m.t === 'control' && m.op === 'peer_online' && m.p === id).length;
  try {
    await runChecks('tabs', pages, [
      ['tab 1 of alice loads, native WebTransport', () => pageLoads(A1, pageUrl)],
      ['tab 2 of alice loads, WebSocket polyfill', () => pageLoads(A2, pageUrl)],
      ['bob loads, native WebTransport', () => pageLoads(B, pageUrl)],
      ['bob connects and joins', async () => `${await connectAndCheck(B, target, bId)}; ${await joinAndCheck(B, bId, chan, bState)}`],
      ['tab 1 connects and joins', async () => `${await connectAndCheck(A1, target, aId)}; ${await joinAndCheck(A1, aId, chan, aState)}`],
      ['tab 2 connects and joins as the same user', async () => `${await connectAndCheck(A2, target, aId)}; ${await joinAndCheck(A2, aId, chan, aState)}`],
      ['bob got one peer_online for alice (tab 2 is not announced again)', async () => {
        // Sent by tab 2 after its peer_online: anything relayed of that came first.
        const seen = await broadcastReaches(A2, aId, B, { text: 'tab 2 here' });
        const n = onlinesOf(B, aId);
        if (n !== 1) throw new Fail(`bob got ${n} peer_online for ${aId}`);
        return seen;
      }],
      ['bob sees alice once, with her state', async () => {
        const seen = await seesPeer(B, aId, aState);
        const s = await B.state();
        const n = s.peers.filter((x) => String(x.id) === aId).length;
        if (n !== 1) throw new Fail(`alice is ${n} times in bob's list: ${JSON.stringify(s.peers)}`);
        return seen;
      }],
      ['both tabs of alice see bob', async () => `${await seesPeer(A1, bId, bState)}; ${await seesPeer(A2, bId, bState)}`],
      ['tab 1 closes', async () => {
        await A1.closePage();
        return peersOnNode(2);
      }],
      ['bob still sees alice (no peer_offline)', async () => {
        // Sent after the node saw tab 1 go: anything about it came first.
        await broadcastReaches(A2, aId, B, { text: 'still here' });
        if (offlinesOf(B, aId)) throw new Fail(`bob got peer_offline for ${aId} while tab 2 is open`);
        const s = await B.state();
        if (!s.peers.some((x) => String(x.id) === aId)) throw new Fail(`alice left bob's list: ${JSON.stringify(s.peers)}`);
        return `peers=${JSON.stringify(s.peers)}`;
      }],
      ['tab 2 closes: bob gets one peer_offline', async () => {
        const seen = await offlineSeen(B, bId, A2, aId);
        const n = offlinesOf(B, aId);
        if (n !== 1) throw new Fail(`bob got ${n} peer_offline for ${aId}`);
        return seen;
      }],
      ['received messages are well-formed (no sid/app)', () => wireHygiene(pages)],
    ]);
  } finally {
    for (const p of pages) if (p.context) await p.close().catch(() => {});
  }
}

async function pageLoads(p, pageUrl) {
  await p.open(pageUrl);
  const s = await p.state();
  if (!s.isSecureContext) throw new Fail(`page is not a secure context`);
  if (s.typeofNativeWebTransport !== 'function') throw new Fail(`this Chromium has no WebTransport (typeof=${s.typeofNativeWebTransport})`);
  if (p.transport === 'ws') {
    if (s.typeofWebTransportBeforeLib !== 'undefined') throw new Fail(`could not remove WebTransport before the library loaded`);
    if (s.typeofWebTransportAfterLib !== 'function' || s.webTransportIsNative) throw new Fail(`library did not install its polyfill (after: ${s.typeofWebTransportAfterLib}, native=${s.webTransportIsNative})`);
    return `typeof WebTransport before lib=undefined, after=function ${s.webTransportName} (polyfill)`;
  }
  if (!s.webTransportIsNative) throw new Fail(`window.WebTransport is not native after the library loaded (${s.webTransportName})`);
  return `typeof WebTransport=function, native`;
}

async function runSmoke(pageUrl) {
  const A = new TestPage('wt-page', 'wt');
  const B = new TestPage('ws-page', 'ws');
  try {
    await runChecks('smoke', [A, B], [
      ['page loads with native WebTransport', () => pageLoads(A, pageUrl)],
      ['page loads with the WebSocket polyfill', () => pageLoads(B, pageUrl)],
    ]);
  } finally {
    for (const p of [A, B]) if (p.context) await p.close().catch(() => {});
  }
}

// ---------------------------------------------------------------------------
// mesh case: two meshed nodes, a page on each (see README.md)

// GET /health of a node (its dev certificate is self-signed: not verified here)
function health(target) {
  const u = new URL('/health', target.url);
  return new Promise((resolve, reject) => {
    const req = httpsGet(u, { rejectUnauthorized: false, timeout: 3000 }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => {
        try {
          resolve(JSON.parse(body));
        } catch {
          reject(new Error(`GET ${u}: ${res.statusCode} ${body.slice(0, 200)}`));
        }
      });
    });
    req.on('timeout', () => req.destroy(new Error(`GET ${u}: no answer within 3 s`)));
    req.on('error', reject);
  });
}

// Both nodes answer /health, are meshed (mesh.state "connected"), have different
// MESH_IDs (and the given ones, if --mesh1/--mesh2) and nobody left in them.
async function nodesReady(tA, tB, names) {
  const deadline = Date.now() + WAIT;
  let last = null;
  for (;;) {
    let why = null;
    try {
      const [a, b] = await Promise.all([health(tA), health(tB)]);
      last = { A: { mesh_id: a.mesh_id, mesh: a.mesh, peers: a.peers }, B: { mesh_id: b.mesh_id, mesh: b.mesh, peers: b.peers } };
      if (a.mesh?.state !== 'connected' || b.mesh?.state !== 'connected') why = 'a node is not meshed';
      else if (a.peers || b.peers || a.mesh.remote_members || b.mesh.remote_members) why = 'a node still has peers in it';
      else {
        if (a.mesh_id === b.mesh_id) throw new Fail(`both nodes have MESH_ID ${a.mesh_id}: the mesh case needs two different ones`);
        if (names.a && a.mesh_id !== names.a) throw new Fail(`node A (${tA.url}) has MESH_ID ${a.mesh_id}, expected ${names.a}`);
        if (names.b && b.mesh_id !== names.b) throw new Fail(`node B (${tB.url}) has MESH_ID ${b.mesh_id}, expected ${names.b}`);
        return `/health: A mesh_id=${a.mesh_id} zenoh peers=${a.mesh.peers}, B mesh_id=${b.mesh_id} zenoh peers=${b.mesh.peers}, no peers in either`;
      }
    } catch (e) {
      if (e instanceof Fail) throw e;
      why = e.message;
    }
    if (Date.now() > deadline) throw new Fail(`nodes not ready within ${WAIT} ms: ${why}; last /health: ${JSON.stringify(last)}`);
    await sleep(200);
  }
}

// Is pid the process that listens on port? true / false / null (cannot tell: no /proc)
function pidListensOn(pid, port) {
  try {
    const hexPort = port.toString(16).toUpperCase().padStart(4, '0');
    const inodes = new Set();
    for (const f of ['tcp', 'tcp6', 'udp', 'udp6']) {
      let text = '';
      try {
        text = readFileSync(`/proc/net/${f}`, 'utf8');
      } catch {
        continue;
      }
      for (const line of text.split('\n').slice(1)) {
        const cols = line.trim().split(/\s+/);
        if (cols.length < 10) continue;
        if (cols[1].endsWith(`:${hexPort}`) && (f.startsWith('udp') || cols[3] === '0A')) inodes.add(cols[9]);
      }
    }
    if (!inodes.size) return null;
    for (const fd of readdirSync(`/proc/${pid}/fd`)) {
      let link = '';
      try {
        link = readlinkSync(`/proc/${pid}/fd/${fd}`);
      } catch {
        continue;
      }
      const m = link.match(/^socket:\[(\d+)\]$/);
      if (m && inodes.has(m[1])) return true;
    }
    return false;
  } catch {
    return null;
  }
}

function cmdlineOf(pid) {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
  } catch {
    return null;
  }
}

// The process to kill is alive and is node B (listens on B's port), so that the
// runner never kills anything else.
function killTargetCheck(tB) {
  const pid = tB.pid;
  if (!pid) throw new Fail('no --kill-pid given: the runner cannot kill node B');
  try {
    process.kill(pid, 0);
  } catch (e) {
    throw new Fail(`process ${pid} (--kill-pid) does not exist or cannot be signalled: ${e.code || e.message}`);
  }
  const port = Number(new URL(tB.url).port || 443);
  const listens = pidListensOn(pid, port);
  const cmd = cmdlineOf(pid);
  if (listens === false) throw new Fail(`process ${pid} (${cmd}) does not listen on node B's port ${port}: refusing to kill it`);
  return `pid ${pid}${listens ? ` listens on ${port}` : ' (could not check its port)'}: ${cmd ?? '?'}`;
}

function meshOf(p, pred) {
  return rxOf(p, pred).map((e) => e.msg.mesh);
}

// The MESH_ID a's peer_offline for b must carry: b's node's (--mesh2, else the one
// b's earlier messages carried).
function checkOfflineMesh(a, bId, off, names) {
  const want = names.b || meshOf(a, (m) => m.p === bId && m.op !== 'peer_offline')[0];
  if (!off.msg.mesh || (want && off.msg.mesh !== want)) {
    throw new Fail(`peer_offline for ${bId} has mesh=${JSON.stringify(off.msg.mesh)}, expected ${want || 'a non-empty string'}`);
  }
}

// Every message that entered the mesh at A's node carries that node's MESH_ID, and
// every one that entered at B's node B's; the two differ; each join ack carries
// the node's own MESH_ID.
function meshFields(A, aId, B, bId, names) {
  const problems = [];
  const ops = (p, id) => [...new Set(rxOf(p, (m) => m.p === id).map((e) => e.msg.op || e.msg.t))].join('+');
  const one = (what, values, expect) => {
    const set = [...new Set(values)];
    if (!values.length) {
      problems.push(`no ${what} received`);
      return null;
    }
    if (set.length !== 1 || typeof set[0] !== 'string' || !set[0]) {
      problems.push(`${what}: mesh=${JSON.stringify(set)}, expected one non-empty string`);
      return null;
    }
    if (expect && set[0] !== expect) problems.push(`${what}: mesh=${set[0]}, expected ${expect}`);
    return set[0];
  };
  const mA = one(`message from ${aId} at B`, meshOf(B, (m) => m.p === aId), names.a);
  const mB = one(`message from ${bId} at A`, meshOf(A, (m) => m.p === bId), names.b);
  if (mA && mB && mA === mB) problems.push(`A-originated and B-originated messages both carry mesh=${mA}`);
  const ackA = one("A's channel_join ack", meshOf(A, (m) => m.op === 'channel_join'), mA || names.a);
  const ackB = one("B's channel_join ack", meshOf(B, (m) => m.op === 'channel_join'), mB || names.b);
  if (problems.length) throw new Fail(problems.join('; '));
  return `A-originated at B (${ops(B, aId)}): mesh=${mA}; B-originated at A (${ops(A, bId)}): mesh=${mB}; acks: A ${ackA}, B ${ackB}`;
}

// seesPeer, noting when p first listed `other` (the client lists a peer when its
// peer_state arrives), counted from the later of the two join acks.
async function seesPeerTimed(p, other, otherState, joined, otherPage) {
  let note;
  try {
    note = await seesPeer(p, other, otherState);
  } catch (e) {
    if (!(e instanceof Fail)) throw e;
    // say which presence messages were sent and which arrived (page clocks, UTC)
    const at = (t) => new Date(t).toISOString().slice(11, 23) + 'Z';
    const sent = otherPage.wire.filter((w) => w.dir === 'tx' && w.msg && /^(channel_join|peer_online|peer_state)$/.test(w.msg.op));
    const got = rxOf(p, (m) => m.p === other);
    throw new Fail(`${e.message}; ${other} sent ${sent.map((w) => `${w.msg.op}@${at(w.t)}`).join(' ') || 'nothing'}; ` +
      `${p.name} received from it ${got.map((w) => `${w.msg.op || w.msg.t}@${at(w.t)}`).join(' ') || 'nothing'}` +
      ' (the client sends peer_online/peer_state once, after its join ack: lost ones are not re-sent; see README.md)');
  }
  const st = await p.state();
  const first = st.peerHistory.find((h) => h.ids.includes(other));
  const t0 = Math.max(...joined.map((q) => (rxOf(q, (m) => m.op === 'channel_join')[0] || {}).t || 0));
  return first && t0 ? `${first.t - t0} ms after the later join ack; ${note}` : note;
}

async function offlineThroughMesh(a, aId, b, bId, names) {
  const t0 = Date.now();
  const note = await offlineSeen(a, aId, b, bId);
  const off = rxOf(a, (m) => m.t === 'control' && m.op === 'peer_offline' && m.p === bId)[0];
  checkOfflineMesh(a, bId, off, names);
  return `after ${off.t - t0} ms, mesh=${off.msg.mesh}; ${note}`;
}

// kill -9 node B; A must get peer_offline for B, and drop B from its peer list,
// within 10 s of the kill.
const KILL_LIMIT = 10_000;
function killSteps(A, aId, B, bId, tB, names) {
  let t0 = null;
  const offlines = () => rxOf(A, (m) => m.t === 'control' && m.op === 'peer_offline' && m.p === bId);
  return [
    ["kill -9 node B", () => {
      const who = killTargetCheck(tB);
      t0 = Date.now();
      process.kill(tB.pid, 'SIGKILL');
      return `${who}; SIGKILL sent`;
    }],
    ["A sees B offline when B's node is killed", async () => {
      const deadline = t0 + KILL_LIMIT;
      while (!offlines().length) {
        if (Date.now() > deadline) throw new Fail(`A got no peer_offline for ${bId} within ${KILL_LIMIT} ms of the kill`);
        await sleep(20);
      }
      const off = offlines()[0];
      checkOfflineMesh(A, bId, off, names);
      return { title: `A sees B offline after ${off.t - t0} ms when B's node is killed` };
    }, { fatal: false }],
    ["B leaves A's peer list after the kill", async () => {
      const left = `!window.prscdTest.state.peers.some((x) => String(x.id) === ${JSON.stringify(bId)})`;
      const remaining = t0 + KILL_LIMIT - Date.now();
      try {
        await A.page.waitForFunction(left, null, { timeout: Math.max(remaining, 1), polling: 50 });
      } catch (e) {
        if (/Timeout|timeout/.test(e.message)) throw new Fail(`${bId} still in A's peer list ${KILL_LIMIT} ms after the kill`);
        throw e;
      }
      const st = await A.state();
      const gone = st.peerHistory.find((h) => h.t >= t0 && !h.ids.includes(bId));
      const off = offlines()[0];
      const sOff = B.wire.some((e) => e.dir === 'tx' && e.msg && e.msg.op === 'peer_offline');
      return `after ${gone ? gone.t - t0 : '?'} ms; peer_offline ${JSON.stringify({ c: off.msg.c, p: off.msg.p, mesh: off.msg.mesh })}` +
        `${sOff ? ' (B had sent a leave itself!)' : ', B sent no leave'}; A's peers now ${JSON.stringify(st.peers)}`;
    }, { fatal: false }],
  ];
}

async function runMeshPhase(caseName, pageUrl, tA, tB, tb, ending, names) {
  const suffix = rand();
  const aId = `alice-${suffix}`;
  const bId = `bob-${suffix}`;
  const aState = { name: 'Alice', color: '#e33', n: 1 };
  const bState = { name: 'Bob ✓', color: '#33e', tags: ['x', 'y'] };
  const A = new TestPage(`A(${aId})@A`, 'wt');
  const B = new TestPage(`B(${bId})@B`, tb);
  const pages = [A, B];
  const chan = opts.channel;
  const kind = (t) => (t === 'ws' ? 'WebSocket polyfill' : 'native WebTransport');
  const joins = opts['mesh-join'] === 'together'
    ? [
      ["A connects to node A over native WebTransport", () => connectAndCheck(A, tA, aId)],
      [`B connects to node B over ${kind(tb)}`, () => connectAndCheck(B, tB, bId)],
      [`A and B join ${chan} at the same moment`, async () => {
        const [a, b] = await Promise.all([joinAndCheck(A, aId, chan, aState), joinAndCheck(B, bId, chan, bState)]);
        const [ta, tbk] = [A, B].map((p) => rxOf(p, (m) => m.op === 'channel_join')[0].t);
        return `acks ${tbk - ta} ms apart; A ${a}; B ${b}`;
      }],
    ]
    : [
      ["A connects to node A over native WebTransport", () => connectAndCheck(A, tA, aId)],
      [`A joins ${chan}`, () => joinAndCheck(A, aId, chan, aState)],
      [`B connects to node B over ${kind(tb)}`, () => connectAndCheck(B, tB, bId)],
      [`B joins ${chan}`, () => joinAndCheck(B, bId, chan, bState)],
    ];
  const ends = ending === 'kill'
    ? killSteps(A, aId, B, bId, tB, names)
    : [["A gets B's offline through the mesh when B's page closes", () => offlineThroughMesh(A, aId, B, bId, names), { fatal: false }]];
  try {
    await runChecks(caseName, pages, [
      ['both nodes meshed and empty', () => nodesReady(tA, tB, names)],
      ...(ending === 'kill' ? [['node B\'s process is known', () => killTargetCheck(tB), { fatal: false }]] : []),
      ['page A loads, native WebTransport', () => pageLoads(A, pageUrl)],
      [`page B loads, ${kind(tb)}`, () => pageLoads(B, pageUrl)],
      ...joins,
      ['A sees B online with its state', () => seesPeerTimed(A, bId, bState, [A, B], B), { fatal: false }],
      ['B sees A online with its state', () => seesPeerTimed(B, aId, aState, [A, B], A), { fatal: false }],
      ["A's broadcast reaches B with sender A", () => broadcastReaches(A, aId, B, { text: 'hello from A', n: 1, u: 'héllo ✓', nested: { a: [1, 2] } }), { fatal: false }],
      ["B's broadcast reaches A with sender B", () => broadcastReaches(B, bId, A, { text: 'hello from B', n: 2, ok: true }), { fatal: false }],
      ['no echo of own broadcasts', () => noEcho([[A, aId], [B, bId]]), { fatal: false }],
      ['messages carry the MESH_ID of the node where they entered', () => meshFields(A, aId, B, bId, names), { fatal: false }],
      ['received messages are well-formed (no sid/app)', () => wireHygiene(pages), { fatal: false }],
      ...ends,
    ]);
  } finally {
    if (ending === 'close') {
      // Leave cleanly before the next phase: close the tabs only and let the nodes see
      // the sessions end (closing a whole context can drop a WebTransport session
      // silently, leaving the peer on its node until the idle timeout; see README.md).
      for (const p of pages) if (p.page && !p.closed) await p.closePage().catch(() => {});
      const deadline = Date.now() + 5000;
      while (Date.now() < deadline) {
        const h = await Promise.all([health(tA), health(tB)]).catch(() => null);
        if (h && h.every((x) => !x.peers)) break;
        await sleep(100);
      }
    }
    for (const p of pages) if (p.context) await p.close().catch(() => {});
  }
}

function freeTcpPort() {
  return new Promise((resolve, reject) => {
    const s = createTcpServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function mainMesh(pageUrl) {
  if (!['sequential', 'together'].includes(opts['mesh-join'])) throw new Fail(`--mesh-join must be sequential or together, got ${opts['mesh-join']}`);
  const names = { a: opts.mesh1, b: opts.mesh2 };
  let tA;
  let tB;
  if (opts.url) {
    if (!opts.url2) throw new Fail('--case mesh with --url needs --url2 (node B) too');
    tA = { url: opts.url.replace(/\/$/, ''), spki: opts.spki };
    tB = { url: opts.url2.replace(/\/$/, ''), spki: opts.spki2, pid: null };
    const k = opts['kill-pid'];
    if (k !== undefined) {
      if (!/^[1-9][0-9]*$/.test(k)) throw new Fail(`--kill-pid must be a process id, got ${JSON.stringify(k)}`);
      tB.pid = Number(k);
    }
  } else {
    if (opts.url2 || opts['kill-pid']) throw new Fail('--url2/--kill-pid need --url (or pass none of them: the runner starts both nodes)');
    const bin = opts.server || defaultServerBin();
    const z = await freeTcpPort();
    const clean = Object.fromEntries(Object.keys(process.env).filter((k) => k.startsWith('ZENOH_')).map((k) => [k, undefined]));
    names.a ??= 'eu';
    names.b ??= 'us';
    tA = await startServer(bin, 'node A', { ...clean, HOST: '127.0.0.1', MESH_ID: names.a, ZENOH_LISTEN: `tcp/127.0.0.1:${z}` });
    tB = await startServer(bin, 'node B', { ...clean, HOST: '127.0.0.1', MESH_ID: names.b, ZENOH_CONNECT: `tcp/127.0.0.1:${z}` });
    if (opts.spki) tA.spki = opts.spki;
    if (opts.spki2) tB.spki = opts.spki2;
  }
  for (const [n, t] of [['--url', tA], ['--url2', tB]]) {
    if (new URL(t.url).protocol !== 'https:') throw new Fail(`${n} must be https://HOST:PORT/v1, got ${t.url}`);
  }
  if (!tA.spki || !tB.spki) say('warning: no --spki/--spki2 given; the node certificates must then be trusted by Chromium');
  await launchBrowser([tA, tB]);
  say(`chromium ${browser.version()} launched; page at ${pageUrl}; node A ${tA.url}, node B ${tB.url}`);
  // B on the polyfill first (its page closes: a clean leave through the mesh), then
  // native on both sides, which ends with node B killed.
  await runMeshPhase('mesh-ws', pageUrl, tA, tB, 'ws', 'close', names);
  await runMeshPhase('mesh', pageUrl, tA, tB, 'wt', 'kill', names);
}

// ---------------------------------------------------------------------------
// main

async function main() {
  const cases = CASES[opts.case];
  if (!cases) throw new Fail(`unknown --case ${opts.case} (wt-ws, wt-pair, all, smoke, mesh)`);
  const files = await buildBundle();
  say(`built dist/bundle.js (${files.js.length} bytes)`);
  const pageUrl = await serve(files);
  if (opts.case === 'mesh') return mainMesh(pageUrl);
  if (opts['mesh-join'] !== 'sequential') throw new Fail('--mesh-join is for --case mesh');

  let target = { url: 'https://127.0.0.1:1/v1', spki: opts.spki };
  if (!cases.includes('smoke')) {
    if (opts.url) {
      target = { url: opts.url.replace(/\/$/, ''), spki: opts.spki };
    } else {
      target = await startServer(opts.server || defaultServerBin());
      if (opts.spki) target.spki = opts.spki;
    }
    const u = new URL(target.url);
    if (u.protocol !== 'https:') throw new Fail(`--url must be https://HOST:PORT/v1, got ${target.url}`);
    if (!target.spki) say('warning: no --spki given; the server certificate must then be trusted by Chromium');
  }
  await launchBrowser([target]);
  say(`chromium ${browser.version()} launched; page at ${pageUrl}; server ${cases.includes('smoke') ? '(none)' : target.url}`);

  for (const c of cases) {
    if (c === 'smoke') await runSmoke(pageUrl);
    else if (c === 'room') await runRoomCase(pageUrl, target);
    else if (c === 'tabs') await runTabsCase(pageUrl, target);
    else await runPairCase(c, pageUrl, target);
  }
}

const watchdog = setTimeout(async () => {
  say('FAIL overall time limit (180 s) exceeded');
  failed++;
  await cleanup();
  summary();
  process.exit(1);
}, 180_000);

try {
  await main();
} catch (e) {
  failed++;
  say(`FAIL ${e instanceof Fail ? e.message.split('\n')[0] : e.stack || e}`);
  if (e instanceof Fail && e.message.includes('\n')) detail(e.message.split('\n').slice(1).join('\n'));
} finally {
  clearTimeout(watchdog);
  await cleanup();
}
if (passed === 0 && failed === 0) failed++; // nothing ran: not a success
summary();
process.exit(failed ? 1 : 0);
