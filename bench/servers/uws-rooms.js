#!/usr/bin/env node
// A uWebSockets.js room server: the fastest WebSocket server a Node user
// could pick instead of a presence server, set up the way its documentation
// recommends for pub/sub (topics, no compression, a backpressure limit).
// prscd-bench's `Raw` wire speaks it, like ws-broadcast.js:
//   GET /?room=R&id=I   subscribes to topic R as soon as the handshake completes;
//   every binary frame a client sends is published to topic R, which reaches
//   the room's OTHER members (`ws.publish` skips the publisher), unchanged.
//
// uWS corks on its own inside a handler (the message handler here), and
// batches what `publish` queues per subscriber until the event loop
// iteration ends, so that is all the corking pub/sub can get.
//
// Env: CERT_FILE, KEY_FILE (PEM; TLS=0 serves plain ws:// instead), HOST
// (default 127.0.0.1), PORT (default 0: any free port), MAX_BACKPRESSURE
// (bytes a subscriber may have buffered before uWS skips it; default 1 MiB,
// as prscd's default PEER_QUEUE_BYTES). Prints `ready: port=N` on stderr.
'use strict';

const uWS = require('uwebsockets');

const MAX_PAYLOAD = 1 << 20; // prscd's default MAX_MESSAGE_SIZE
const tls = process.env.TLS !== '0';

const app = tls
  ? uWS.SSLApp({ cert_file_name: process.env.CERT_FILE, key_file_name: process.env.KEY_FILE })
  : uWS.App();

app.ws('/*', {
  compression: uWS.DISABLED,
  maxPayloadLength: MAX_PAYLOAD,
  maxBackpressure: Number(process.env.MAX_BACKPRESSURE || 1 << 20),
  // Like prscd's slow-reader rule: a subscriber past the limit is closed,
  // not silently skipped.
  closeOnBackpressureLimit: true,
  idleTimeout: 0,
  sendPingsAutomatically: false,
  upgrade: (res, req, context) => {
    const room = new URLSearchParams(req.getQuery() || '').get('room') || '';
    res.upgrade(
      { room },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  open: (ws) => {
    ws.subscribe(ws.getUserData().room);
  },
  message: (ws, message, isBinary) => {
    if (isBinary) ws.publish(ws.getUserData().room, message, true);
  },
});

app.listen(process.env.HOST || '127.0.0.1', Number(process.env.PORT || 0), (token) => {
  if (!token) {
    console.error('uws-rooms: listen failed');
    process.exit(1);
  }
  console.error(`ready: port=${uWS.us_socket_local_port(token)}`);
});
