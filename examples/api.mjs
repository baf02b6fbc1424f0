// Calls prscd's presence API (docs/openapi.yaml) from Node 18+ (global fetch), no dependency.
//
//   PRSCD_URL=https://presence.example.com APP=chat API_KEY=... node examples/api.mjs room-1 [user-to-disconnect]
//
// PRSCD_URL is a node's client port (https) or its METRICS_PORT (http, private).
// For a node on the dev certificate, start Node with NODE_EXTRA_CA_CERTS=.prscd-dev/cert.pem.
const base = (process.env.PRSCD_URL ?? 'https://127.0.0.1:8443').replace(/\/$/, '');
const app = encodeURIComponent(process.env.APP ?? 'dev');
const key = process.env.API_KEY;
if (!key) throw new Error('set API_KEY');

async function call(method, path, body) {
  const res = await fetch(`${base}/v1/apps/${app}${path}`, {
    method,
    headers: {
      authorization: `Bearer ${key}`,
      ...(body === undefined ? {} : { 'content-type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  return [res.status, await res.json()];
}

const channel = encodeURIComponent(process.argv[2] ?? 'room-1');
let [status, body] = await call('GET', '/channels');
console.log('channels', status, JSON.stringify(body));
[status, body] = await call('GET', `/channels/${channel}/users`);
console.log('users', status, JSON.stringify(body));
// Shaped as the published client sends data, so `subscribe('chat', cb)` fires.
const message = { from: 'backend', data: { event: 'chat', data: JSON.stringify({ text: 'hello from Node' }) } };
[status, body] = await call('POST', `/channels/${channel}/messages`, message);
console.log('message', status, JSON.stringify(body));
if (process.argv[3]) {
  [status, body] = await call('POST', `/users/${encodeURIComponent(process.argv[3])}/disconnect`);
  console.log('disconnect', status, JSON.stringify(body));
}
process.exitCode = status < 300 ? 0 : 1;
