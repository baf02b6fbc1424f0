// Test page for prscd: drives the published @yomo/presence client and records
// everything the test runner (run.mjs) needs to assert on, in window.prscdTest.
//
// Bundled by esbuild into dist/bundle.js and loaded by index.html, which (for
// ?transport=ws) deletes window.WebTransport *before* this bundle runs, so the
// library's import-time check installs its WebSocket polyfill.
//
// Besides the library's own callbacks, the page taps the wire: every message
// the client writes or reads (native WebTransport datagrams, or WebSocket
// frames of the polyfill) is msgpack-decoded into state.wire, and forwarded
// to the runner through window.__prscdTap when the runner exposed it.

import { createPresence } from '@yomo/presence';
import { decode } from '@msgpack/msgpack';

const boot = window.__prscdBoot || { mode: 'wt' };
const mode = boot.mode;

const isNative = (fn) =>
  typeof fn === 'function' && /\{\s*\[native code\]\s*\}/.test(Function.prototype.toString.call(fn));

const state = {
  mode,
  isSecureContext: window.isSecureContext,
  typeofNativeWebTransport: boot.typeofNativeWebTransport,
  typeofWebTransportBeforeLib: boot.typeofWebTransportBeforeLib,
  // after the library was imported:
  typeofWebTransportAfterLib: typeof window.WebTransport,
  webTransportIsNative: isNative(window.WebTransport),
  webTransportName: window.WebTransport ? window.WebTransport.name : null,
  url: null,
  id: null,
  connected: false,
  connectError: null,
  status: [], // presence.on('open'|'closed'|'connecting') notifications after connect
  channel: null,
  joined: false,
  joinedState: null,
  peers: [], // latest list given to subscribePeers (a copy)
  peerHistory: [], // [{t, ids}]
  online: [], // ids that appeared in the peer list
  offline: [], // ids that disappeared from the peer list
  received: [], // [{event, data, from, t}] from channel.subscribe
  sent: [], // [{event, data, t}]
  wire: [], // decoded messages, [{dir:'tx'|'rx', via:'wt'|'ws', len, msg|error|text}]
  webtransports: [], // one record per `new WebTransport()` (native only)
  websockets: [], // one record per `new WebSocket()`
  errors: [],
};

// ---------------------------------------------------------------------------
// wire tap

const toU8 = (v) => {
  if (v instanceof Uint8Array) return v;
  if (v instanceof ArrayBuffer) return new Uint8Array(v);
  if (ArrayBuffer.isView(v)) return new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
  return null;
};
const hex = (u8, max = 96) =>
  Array.from(u8.subarray(0, max), (b) => b.toString(16).padStart(2, '0')).join('') +
  (u8.byteLength > max ? '…' : '');

function plain(v) {
  // make a decoded msgpack value JSON-friendly
  if (v instanceof Uint8Array) return { bin: hex(v) };
  if (Array.isArray(v)) return v.map(plain);
  if (v && typeof v === 'object') {
    const o = {};
    for (const [k, x] of Object.entries(v)) o[k] = plain(x);
    return o;
  }
  if (typeof v === 'bigint') return v.toString();
  return v;
}

function summarize(msg) {
  if (!msg || typeof msg !== 'object' || Array.isArray(msg) || msg instanceof Uint8Array) {
    return { notAMap: true, value: plain(msg) };
  }
  const out = { keys: Object.keys(msg) };
  for (const k of Object.keys(msg)) {
    if (k === 'pl') continue;
    out[k] = plain(msg[k]);
  }
  if ('pl' in msg) {
    const pl = toU8(msg.pl);
    if (pl) {
      out.plLen = pl.byteLength;
      try {
        out.pl = plain(decode(pl));
      } catch (e) {
        out.plError = String(e);
        out.plHex = hex(pl);
      }
    } else {
      out.plNotBinary = plain(msg.pl);
    }
  }
  return out;
}

function tap(dir, via, data) {
  const entry = { dir, via, t: Date.now() };
  if (typeof data === 'string') {
    entry.text = data.slice(0, 200);
    entry.len = data.length;
  } else {
    const u8 = toU8(data);
    if (!u8) {
      entry.error = 'not binary: ' + Object.prototype.toString.call(data);
    } else {
      entry.len = u8.byteLength;
      try {
        entry.msg = summarize(decode(u8)); // throws on trailing bytes, like the client
      } catch (e) {
        entry.error = String(e);
        entry.hex = hex(u8);
      }
    }
  }
  state.wire.push(entry);
  if (typeof window.__prscdTap === 'function') {
    try {
      const p = window.__prscdTap(JSON.stringify(entry));
      if (p && p.catch) p.catch(() => {});
    } catch {
      /* runner gone */
    }
  }
}

const errStr = (e) => {
  if (!e) return String(e);
  const parts = [`${e.name || 'Error'}: ${e.message || ''}`];
  if (e.source !== undefined) parts.push(`source=${e.source}`);
  if (e.streamErrorCode !== undefined && e.streamErrorCode !== null) parts.push(`streamErrorCode=${e.streamErrorCode}`);
  if (e.code !== undefined) parts.push(`code=${e.code}`);
  if (e.reason !== undefined) parts.push(`reason=${e.reason}`);
  if (e.type && !e.message) parts.push(`event=${e.type}`);
  return parts.join(' ');
};

// WebSocket (used by the polyfill; looked up as the global at construction time)
const NativeWebSocket = window.WebSocket;
class TapWebSocket extends NativeWebSocket {
  constructor(url, protocols) {
    super(url, protocols);
    const rec = { url: String(url), opened: false, error: false, closed: null };
    state.websockets.push(rec);
    this.addEventListener('open', () => (rec.opened = true));
    this.addEventListener('error', () => (rec.error = true));
    this.addEventListener('close', (e) => (rec.closed = { code: e.code, reason: e.reason, wasClean: e.wasClean }));
    this.addEventListener('message', (e) => tap('rx', 'ws', e.data));
  }
  send(data) {
    tap('tx', 'ws', data);
    return super.send(data);
  }
}
window.WebSocket = TapWebSocket;

// native WebTransport (the client does `new window.WebTransport(url)` at connect time)
if (state.webTransportIsNative) {
  const NativeWebTransport = window.WebTransport;
  class TapWebTransport extends NativeWebTransport {
    constructor(url, options) {
      super(url, options);
      const rec = { url: String(url), ready: false, readyError: null, closed: null, closedError: null };
      state.webtransports.push(rec);
      this.ready.then(
        () => (rec.ready = true),
        (e) => (rec.readyError = errStr(e)),
      );
      this.closed.then(
        (info) => (rec.closed = { closeCode: info && info.closeCode, reason: info && info.reason }),
        (e) => (rec.closedError = errStr(e)),
      );
      // Wrap the reader/writer methods the client uses; the streams themselves are untouched.
      const dg = super.datagrams;
      const readable = dg.readable;
      const getReader = readable.getReader.bind(readable);
      readable.getReader = (...a) => {
        const reader = getReader(...a);
        const read = reader.read.bind(reader);
        reader.read = async () => {
          const r = await read();
          if (!r.done) tap('rx', 'wt', r.value);
          return r;
        };
        return reader;
      };
      const writable = dg.writable;
      const getWriter = writable.getWriter.bind(writable);
      writable.getWriter = (...a) => {
        const writer = getWriter(...a);
        const write = writer.write.bind(writer);
        writer.write = (chunk) => {
          tap('tx', 'wt', chunk);
          return write(chunk);
        };
        return writer;
      };
    }
  }
  window.WebTransport = TapWebTransport;
}

// ---------------------------------------------------------------------------
// API for the runner

let presence = null;
let channel = null;

function ids(list) {
  return list.map((p) => String(p.id));
}

function onPeers(peers) {
  const snap = JSON.parse(JSON.stringify(peers)); // the client passes its live array
  const before = new Set(ids(state.peers));
  const after = new Set(ids(snap));
  for (const id of after) if (!before.has(id)) state.online.push(id);
  for (const id of before) if (!after.has(id)) state.offline.push(id);
  state.peers = snap;
  state.peerHistory.push({ t: Date.now(), ids: [...after] });
}

function subscribe(event) {
  if (!channel) throw new Error('subscribe: not joined');
  channel.subscribe(event, (data, peer) => {
    state.received.push({ event, data, from: peer && peer.id, t: Date.now() });
  });
}

window.prscdTest = {
  state,
  snapshot() {
    return JSON.parse(JSON.stringify(state));
  },

  // Starts connecting; the runner waits for state.connected (createPresence
  // never rejects: the client retries forever).
  connect(url, publicKey, id, { forceWebSocket = false, debug = false, autoDowngrade = false } = {}) {
    if (!!forceWebSocket !== (mode === 'ws')) {
      throw new Error(
        `page loaded with transport=${mode}, but connect() asked forceWebSocket=${forceWebSocket}; ` +
          'load index.html?transport=ws to force the WebSocket polyfill',
      );
    }
    state.url = url;
    state.id = id;
    // autoDowngrade defaults to false here (the library's default is true) so that a failing
    // native WebTransport connection fails the test instead of silently falling back to WebSocket.
    createPresence(url, { publicKey, id, debug, autoDowngrade }).then(
      (p) => {
        presence = p;
        state.connected = true;
        for (const s of ['connecting', 'open', 'closed']) {
          p.on(s, (o) => state.status.push({ ...o, t: Date.now() }));
        }
      },
      (e) => (state.connectError = errStr(e)),
    );
  },

  // Starts joining; the runner waits for state.joined. Peers and the given
  // events are subscribed to as soon as the join is acknowledged.
  joinChannel(name, st, { events = ['chat'] } = {}) {
    if (!presence) throw new Error('joinChannel: not connected');
    state.channel = name;
    presence.joinChannel(name, st).then(
      (ch) => {
        channel = ch;
        ch.subscribePeers(onPeers);
        for (const ev of events) subscribe(ev);
        state.joined = true;
        state.joinedState = st;
      },
      (e) => state.errors.push('joinChannel: ' + errStr(e)),
    );
  },

  subscribe,

  broadcast(event, data) {
    if (!channel) throw new Error('broadcast: not joined');
    channel.broadcast(event, data);
    state.sent.push({ event, data, t: Date.now() });
  },

  leave() {
    if (!channel) throw new Error('leave: not joined');
    channel.leave();
  },
};

window.addEventListener('error', (e) => state.errors.push('error: ' + (e.message || e)));
window.addEventListener('unhandledrejection', (e) => state.errors.push('unhandledrejection: ' + errStr(e.reason)));
