// prscd console: reads /console/api/* with the token kept in this tab
// (sessionStorage), follows the event stream (fetch streaming, so the token
// travels in a header, never in a URL), and prints every value as text.
'use strict';

const KEY = 'prscd-console-token';
const $ = (id) => document.getElementById(id);
const SVG_NS = 'http' + '://www.w3.org/2000/svg';

let token = null;
let prev = null; // the previous snapshot, for rates
let streamAbort = null;
let apps = [];
const channelsPage = { offset: 0, limit: 25, q: '' };
const usersPage = { offset: 0, limit: 25, q: '' };
let inspected = null; // { app, name }
let inspectTimer = null;

function auth() {
  return { Authorization: `Bearer ${token}` };
}

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function row(cells, attrs) {
  const tr = document.createElement('tr');
  for (const c of cells) {
    const td = document.createElement('td');
    if (c instanceof Node) td.appendChild(c);
    else td.textContent = c === undefined || c === null ? '–' : String(c);
    tr.appendChild(td);
  }
  for (const [k, v] of Object.entries(attrs || {})) tr.setAttribute(k, v);
  return tr;
}

function fill(tbody, rows) {
  tbody.replaceChildren(...rows);
}

function fmt(n, digits = 1) {
  return n === null || n === undefined ? '–' : Number(n).toFixed(digits);
}

function rate(cur, old, field, dt) {
  if (!old || !(dt > 0)) return null;
  const d = cur[field] - old[field];
  return d >= 0 ? d / dt : null;
}

// ---- sign in -------------------------------------------------------------

function start() {
  // A token handed over in the fragment (never sent to the server) is kept
  // and wiped from the address bar.
  const m = location.hash.match(/token=([^&]+)/);
  if (m) {
    sessionStorage.setItem(KEY, decodeURIComponent(m[1]));
    history.replaceState(null, '', location.pathname);
  }
  token = sessionStorage.getItem(KEY);
  $('login-form').addEventListener('submit', (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $('token').value.trim());
    $('token').value = '';
    token = sessionStorage.getItem(KEY);
    open();
  });
  $('logout').addEventListener('click', () => logout(''));
  $('profile').addEventListener('click', profile);
  wireInspector();
  if (token) open();
  else showLogin('');
}

function showLogin(why) {
  $('login').hidden = false;
  $('main').hidden = true;
  $('logout').hidden = true;
  $('login-error').textContent = why;
}

function logout(why) {
  sessionStorage.removeItem(KEY);
  token = null;
  if (streamAbort) streamAbort.abort();
  stopInspecting();
  showLogin(why);
}

async function open() {
  const res = await fetch('/console/api/snapshot', { headers: auth() }).catch(() => null);
  if (!res || !res.ok) {
    logout(res && res.status === 401 ? 'That token opens nothing here.' : 'The node did not answer.');
    return;
  }
  $('login').hidden = true;
  $('main').hidden = false;
  $('logout').hidden = false;
  render(await res.json());
  follow();
}

// ---- the event stream ----------------------------------------------------

async function follow() {
  if (streamAbort) streamAbort.abort();
  const abort = new AbortController();
  streamAbort = abort;
  while (!abort.signal.aborted && token) {
    try {
      const res = await fetch('/console/api/events', { headers: auth(), signal: abort.signal });
      if (res.status === 401) return logout('The token was refused.');
      if (res.ok) {
        setLive(true);
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += decoder.decode(value, { stream: true });
          let cut;
          while ((cut = buf.indexOf('\n\n')) >= 0) {
            onEvent(buf.slice(0, cut));
            buf = buf.slice(cut + 2);
          }
        }
      }
    } catch (e) {
      if (abort.signal.aborted) return;
    }
    setLive(false);
    await new Promise((r) => setTimeout(r, 1000));
  }
}

function onEvent(chunk) {
  const data = chunk
    .split('\n')
    .filter((l) => l.startsWith('data: '))
    .map((l) => l.slice(6))
    .join('\n');
  if (data) render(JSON.parse(data));
}

function setLive(on) {
  $('live').textContent = on ? 'live' : 'reconnecting';
  $('live').className = on ? 'badge ok' : 'badge warn';
}

// ---- rendering -------------------------------------------------------------

function render(s) {
  const dt = prev ? (s.time_ms - prev.time_ms) / 1000 : 0;
  const oldNodes = new Map((prev ? prev.nodes : []).map((n) => [n.mesh_id, n]));
  const oldApps = new Map((prev ? prev.apps : []).map((a) => [a.app, a]));
  $('node').textContent = `node ${s.mesh_id}`;
  $('viewer').textContent = s.viewer;
  $('profile').hidden = s.viewer !== 'admin';
  $('nodes-up').textContent = s.nodes_up;
  $('mesh-state').textContent = s.mesh_state;

  fill(
    $('nodes').tBodies[0],
    s.nodes.map((n) => {
      const o = oldNodes.get(n.mesh_id);
      const hop = n.hop_p50_ms === null ? '–' : `${fmt(n.hop_p50_ms, 2)} / ${fmt(n.hop_p99_ms, 2)}`;
      return row(
        [
          n.mesh_id, n.state, n.link, fmt(n.rtt_ms, 2), hop,
          n.connections.websocket, n.connections.webtransport, n.channels, n.users,
          fmt(rate(n, o, 'messages_in', dt)), fmt(rate(n, o, 'messages_out', dt)),
        ],
        { 'data-node': n.mesh_id, 'data-state': n.state, class: `state-${n.state}` },
      );
    }),
  );
  drawMap(s);
  const routers = s.routers.length ? `zenoh routers linked: ${s.routers.join(', ')}` : '';
  const others = s.other_peers ? ` · other zenoh peers (backends, tools): ${s.other_peers}` : '';
  $('routers').textContent = routers + others;

  fill(
    $('apps').tBodies[0],
    s.apps.map((a) => {
      const o = oldApps.get(a.app);
      const drops = Object.entries(a.dropped).map(([r, n]) => `${r} ${n}`).join(', ') || '0';
      return row(
        [
          a.app, a.connections.websocket, a.connections.webtransport, a.channels, a.users,
          fmt(rate(a, o, 'messages_in', dt)), fmt(rate(a, o, 'messages_out', dt)),
          a.slow_readers, drops,
        ],
        { 'data-app': a.app },
      );
    }),
  );
  updateAppSelect(s.apps.map((a) => a.app));

  const c = s.counters;
  $('counters-section').hidden = !c;
  if (c) {
    fill($('rejections').tBodies[0], Object.entries(c.handshake_rejected).map(([k, v]) => row([k, v])));
    fill(
      $('drops').tBodies[0],
      Object.entries(c.dropped).map(([k, v]) => row([k, v], { class: v ? 'hot' : '' })),
    );
  }

  fill(
    $('errors').tBodies[0],
    s.errors.map((e) =>
      row([new Date(e.time_ms).toLocaleTimeString(), e.kind, e.app, e.detail, e.count]),
    ),
  );
  prev = s;
}

function drawMap(s) {
  const svg = $('mesh-map');
  const nodes = s.nodes;
  const me = nodes.find((n) => n.state === 'self');
  const others = nodes.filter((n) => n !== me);
  const cx = 160, cy = 120, r = 90;
  const at = new Map();
  if (me) at.set(me.mesh_id, [cx, cy]);
  others.forEach((n, i) => {
    const a = (2 * Math.PI * i) / Math.max(others.length, 1) - Math.PI / 2;
    at.set(n.mesh_id, [cx + r * Math.cos(a), cy + r * Math.sin(a)]);
  });
  const parts = [];
  for (const n of others) {
    const [x, y] = at.get(n.mesh_id);
    const line = document.createElementNS(SVG_NS, 'line');
    for (const [k, v] of Object.entries({ x1: cx, y1: cy, x2: x, y2: y })) line.setAttribute(k, v);
    line.setAttribute('class', `link link-${n.link}`);
    parts.push(line);
  }
  for (const n of nodes) {
    const [x, y] = at.get(n.mesh_id);
    const g = document.createElementNS(SVG_NS, 'g');
    g.setAttribute('class', `map-node state-${n.state}`);
    const dot = document.createElementNS(SVG_NS, 'circle');
    dot.setAttribute('cx', x);
    dot.setAttribute('cy', y);
    dot.setAttribute('r', 16);
    const label = document.createElementNS(SVG_NS, 'text');
    label.setAttribute('x', x);
    label.setAttribute('y', y + 30);
    label.textContent = n.mesh_id;
    const count = document.createElementNS(SVG_NS, 'text');
    count.setAttribute('x', x);
    count.setAttribute('y', y + 4);
    count.setAttribute('class', 'count');
    count.textContent = n.connections.websocket + n.connections.webtransport;
    g.append(dot, count, label);
    parts.push(g);
  }
  svg.replaceChildren(...parts);
}

// ---- the channel inspector ---------------------------------------------------

function updateAppSelect(names) {
  if (names.join('\n') === apps.join('\n')) return;
  apps = names;
  const sel = $('app-select');
  const was = sel.value;
  sel.replaceChildren(...names.map((n) => el('option', n)));
  if (names.includes(was)) sel.value = was;
  loadChannels();
}

function wireInspector() {
  $('app-select').addEventListener('change', () => {
    channelsPage.offset = 0;
    loadChannels();
  });
  let typing = null;
  $('channel-search').addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      channelsPage.q = $('channel-search').value;
      channelsPage.offset = 0;
      loadChannels();
    }, 250);
  });
  $('channels-prev').addEventListener('click', () => {
    channelsPage.offset = Math.max(0, channelsPage.offset - channelsPage.limit);
    loadChannels();
  });
  $('channels-next').addEventListener('click', () => {
    channelsPage.offset += channelsPage.limit;
    loadChannels();
  });
  $('user-search').addEventListener('input', () => {
    clearTimeout(typing);
    typing = setTimeout(() => {
      usersPage.q = $('user-search').value;
      usersPage.offset = 0;
      loadChannel();
    }, 250);
  });
  $('users-prev').addEventListener('click', () => {
    usersPage.offset = Math.max(0, usersPage.offset - usersPage.limit);
    loadChannel();
  });
  $('users-next').addEventListener('click', () => {
    usersPage.offset += usersPage.limit;
    loadChannel();
  });
  $('payloads').addEventListener('change', loadChannel);
  $('channel-close').addEventListener('click', stopInspecting);
  // Channel counts move: the list is read again every few seconds.
  setInterval(() => token && !$('main').hidden && loadChannels(), 3000);
}

function query(params) {
  return Object.entries(params)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`)
    .join('&');
}

async function getJson(path, params) {
  const res = await fetch(`${path}?${query(params)}`, { headers: auth() });
  if (res.status === 401) {
    logout('The token was refused.');
    return null;
  }
  return res.ok ? res.json() : null;
}

async function loadChannels() {
  const app = $('app-select').value;
  if (!app) {
    fill($('channels').tBodies[0], []);
    return;
  }
  const v = await getJson('/console/api/channels', { app, ...channelsPage });
  if (!v) return;
  const last = Math.min(v.offset + v.channels.length, v.total);
  $('channels-range').textContent = v.total ? `${v.offset + 1}–${last} of ${v.total}` : 'none';
  fill(
    $('channels').tBodies[0],
    v.channels.map((c) => {
      const link = el('a', c.name);
      link.href = '#';
      link.addEventListener('click', (ev) => {
        ev.preventDefault();
        inspect(app, c.name);
      });
      return row([link, c.members], { 'data-channel': c.name });
    }),
  );
}

function inspect(app, name) {
  inspected = { app, name };
  usersPage.offset = 0;
  usersPage.q = '';
  $('user-search').value = '';
  $('channel-name').textContent = `${app} / ${name}`;
  $('channel-view').hidden = false;
  loadChannel();
  clearInterval(inspectTimer);
  // Polling keeps the node's watch of the channel alive; closing ends it.
  inspectTimer = setInterval(loadChannel, 1000);
}

function stopInspecting() {
  inspected = null;
  clearInterval(inspectTimer);
  $('channel-view').hidden = true;
}

function json(v) {
  if (v === null || v === undefined) return '–';
  return JSON.stringify(v);
}

async function loadChannel() {
  if (!inspected) return;
  const payloads = $('payloads').checked ? '1' : '0';
  const v = await getJson('/console/api/channel', { ...inspected, ...usersPage, payloads });
  if (!v || !inspected || v.name !== inspected.name) return;
  const last = Math.min(v.offset + v.users.length, v.total);
  $('users-range').textContent = v.total ? `${v.offset + 1}–${last} of ${v.total}` : 'none';
  fill(
    $('users').tBodies[0],
    v.users.map((u) => {
      const here = u.connections.map((c) => `${c.transport}${c.closing ? ' (closing)' : ''}`).join(', ');
      const away = u.elsewhere.map((e) => `${e.node}×${e.connections}`).join(', ');
      const state = el('code', json(u.state));
      return row([u.id + (u.leaving ? ' (leaving)' : ''), here || u.here, away || '–', state], {
        'data-user': u.id,
      });
    }),
  );
  fill(
    $('samples').tBodies[0],
    v.samples.slice(0, 20).map((m) =>
      row([
        new Date(m.time_ms).toLocaleTimeString(), m.from, m.mesh, m.op, m.bytes,
        m.payload === undefined ? '' : el('code', json(m.payload)),
      ]),
    ),
  );
}

// ---- profile ---------------------------------------------------------------

async function profile(ev) {
  // The endpoint wants the token too: fetched with it, then saved.
  ev.preventDefault();
  const link = $('profile');
  link.textContent = 'profiling…';
  try {
    const res = await fetch(link.getAttribute('href'), { headers: auth() });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const blob = await res.blob();
    const a = document.createElement('a');
    a.href = URL.createObjectURL(blob);
    a.download = (res.headers.get('content-type') || '').includes('svg') ? 'profile.svg' : 'profile.pb';
    a.click();
    URL.revokeObjectURL(a.href);
    link.textContent = 'CPU profile (10 s)';
  } catch (e) {
    link.textContent = `CPU profile failed: ${e.message}`;
  }
}

document.addEventListener('DOMContentLoaded', start);
