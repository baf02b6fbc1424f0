#!/usr/bin/env node
// A plain `ws` room broadcast over TLS: what a Node user would write instead
// of a presence server. prscd-bench's `Raw` wire speaks it:
//   GET /?room=R&id=I   joins room R as soon as the handshake completes;
//   every binary frame a client sends goes to the room's OTHER members,
//   unchanged.
//
// Env: CERT_FILE, KEY_FILE (PEM), HOST (default 127.0.0.1), PORT (default 0:
// any free port). Prints `ready: port=N` on stderr once listening.
'use strict';

const fs = require('node:fs');
const https = require('node:https');
const { WebSocketServer } = require('ws');

const MAX_PAYLOAD = 1 << 20; // prscd's default MAX_MESSAGE_SIZE

const server = https.createServer({
  cert: fs.readFileSync(process.env.CERT_FILE),
  key: fs.readFileSync(process.env.KEY_FILE),
});
const wss = new WebSocketServer({ server, perMessageDeflate: false, maxPayload: MAX_PAYLOAD });

/** @type {Map<string, Set<import('ws').WebSocket>>} */
const rooms = new Map();

wss.on('connection', (ws, req) => {
  const room = new URL(req.url, 'https://localhost').searchParams.get('room') || '';
  let members = rooms.get(room);
  if (!members) {
    members = new Set();
    rooms.set(room, members);
  }
  members.add(ws);

  ws.on('message', (data, isBinary) => {
    if (!isBinary) return;
    for (const other of members) {
      if (other !== ws && other.readyState === other.OPEN) other.send(data);
    }
  });
  ws.on('close', () => {
    members.delete(ws);
    if (members.size === 0 && rooms.get(room) === members) rooms.delete(room);
  });
  ws.on('error', () => {}); // a reset peer: 'close' follows
});

server.listen(Number(process.env.PORT || 0), process.env.HOST || '127.0.0.1', () => {
  console.error(`ready: port=${server.address().port}`);
});
