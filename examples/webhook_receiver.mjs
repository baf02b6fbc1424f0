// A receiver of prscd's webhooks that checks their signature; Node 18+, no dependency.
//
//   API_KEY=<the app's first API key> PORT=8000 node examples/webhook_receiver.mjs
//
// Point the app's webhook at it (APP_WEBHOOKS=app:http://HOST:8000/hook). Each event is
// printed as one JSON line; a request whose X-Prscd-Signature is not the HMAC-SHA256 of
// its body under the key is refused with 401, and prscd retries it.
import { createHmac, timingSafeEqual } from 'node:crypto';
import { createServer } from 'node:http';

const key = process.env.API_KEY;
if (!key) throw new Error('set API_KEY');
const MAX_BODY = 1 << 20;

createServer((req, res) => {
  const chunks = [];
  let size = 0;
  req.on('data', (c) => {
    size += c.length;
    if (size > MAX_BODY) req.destroy();
    else chunks.push(c);
  });
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const expected = Buffer.from(`sha256=${createHmac('sha256', key).update(body).digest('hex')}`);
    const given = Buffer.from(req.headers['x-prscd-signature'] ?? '');
    // timingSafeEqual: no early exit that would time the prefix.
    if (given.length !== expected.length || !timingSafeEqual(given, expected)) {
      res.writeHead(401).end();
      return;
    }
    for (const event of JSON.parse(body).events) console.log(JSON.stringify(event));
    res.writeHead(204).end();
  });
}).listen(Number(process.env.PORT ?? 8000), '127.0.0.1', function () {
  console.error(`listening on ${this.address().port}`);
});
