#!/usr/bin/env node
// A socket.io room server over TLS: what many users would write instead of
// a presence server. prscd-bench's `socketio` wire speaks it (WebSocket
// transport only):
//   emit('join', room, ack)      joins the room, then acks;
//   emit('msg', room, payload)   sends the binary payload to the room's
//                                other members as emit('msg', payload).
//
// Env: CERT_FILE, KEY_FILE (PEM), HOST (default 127.0.0.1), PORT (default 0:
// any free port), REDIS_URL (e.g. redis://127.0.0.1:6379: several of these
// servers share their rooms through @socket.io/redis-adapter, the way
// socket.io users run more than one node). Prints `ready: port=N` on stderr
// once listening.
'use strict';

const fs = require('node:fs');
const https = require('node:https');
const { Server } = require('socket.io');

const server = https.createServer({
  cert: fs.readFileSync(process.env.CERT_FILE),
  key: fs.readFileSync(process.env.KEY_FILE),
});
const io = new Server(server, {
  transports: ['websocket'],
  perMessageDeflate: false,
  serveClient: false,
  maxHttpBufferSize: 1 << 20, // prscd's default MAX_MESSAGE_SIZE
});

io.on('connection', (socket) => {
  socket.on('join', (room, ack) => {
    socket.join(String(room));
    if (typeof ack === 'function') ack();
  });
  socket.on('msg', (room, payload) => {
    socket.to(String(room)).emit('msg', payload);
  });
});

async function main() {
  if (process.env.REDIS_URL) {
    const { createClient } = require('redis');
    const { createAdapter } = require('@socket.io/redis-adapter');
    const pubClient = createClient({ url: process.env.REDIS_URL });
    const subClient = pubClient.duplicate();
    for (const c of [pubClient, subClient]) c.on('error', (e) => console.error(`redis: ${e.message}`));
    await Promise.all([pubClient.connect(), subClient.connect()]);
    io.adapter(createAdapter(pubClient, subClient));
  }
  server.listen(Number(process.env.PORT || 0), process.env.HOST || '127.0.0.1', () => {
    console.error(`ready: port=${server.address().port}`);
  });
}

main().catch((e) => {
  console.error(`socketio-rooms: ${e.stack || e}`);
  process.exit(1);
});
