// Drives the operator's console (/console) in headless Chromium for
// tests/console.rs and scripts/console-screenshots. Talks to its caller
// over stdio: prints one `SEEN <json>` line per step, and waits for a line
// on stdin where the caller acts between steps (e.g. kills a node).
//
//   node console.mjs --url http://127.0.0.1:PORT/console --token ADMIN \
//     --step 'nodes=3' --step 'nodes=2' [--app-key KEY --hidden app2,secret]
//     [--shots DIR]
//
// A step `nodes=N` waits (bounded) until the page shows N nodes up, then
// prints what the page shows: every node row (state, connections) and
// every app row. With --app-key, the page is then opened with that key
// and must not show any of --hidden anywhere in its text.

import { parseArgs } from 'node:util';
import { createInterface } from 'node:readline';

const { values: opts } = parseArgs({
  options: {
    url: { type: 'string' },
    token: { type: 'string' },
    step: { type: 'string', multiple: true, default: [] },
    'app-key': { type: 'string' },
    hidden: { type: 'string', default: '' },
    inspect: { type: 'string' }, // app/channel to open in the inspector
    shots: { type: 'string' },
    chromium: { type: 'string', default: process.env.CHROMIUM || '/usr/bin/chromium' },
  },
});

const WAIT_MS = 20_000;
const lines = createInterface({ input: process.stdin });
const pending = [];
const waiting = [];
lines.on('line', (l) => (waiting.length ? waiting.shift()(l) : pending.push(l)));
const nextLine = () => (pending.length ? Promise.resolve(pending.shift()) : new Promise((r) => waiting.push(r)));

function fail(why) {
  console.log(`FAIL ${why}`);
  process.exit(1);
}

async function signIn(page, token, ok = true) {
  await page.goto(opts.url);
  await page.evaluate(() => sessionStorage.clear());
  await page.reload();
  await page.waitForSelector('#login-form', { state: 'visible', timeout: WAIT_MS });
  await page.fill('#token', token);
  await page.click('#login-form button');
  if (ok) await page.waitForSelector('#main', { state: 'visible', timeout: WAIT_MS });
  else await page.waitForFunction(() => document.getElementById('login-error').textContent.length > 0, null, { timeout: WAIT_MS });
  // The token must never reach the address bar.
  if (page.url().includes(token)) fail('token in the URL');
}

async function shown(page) {
  return page.evaluate(() => {
    const cells = (tr) => [...tr.querySelectorAll('td')].map((td) => td.textContent);
    return {
      nodes_up: Number(document.getElementById('nodes-up').textContent),
      viewer: document.getElementById('viewer').textContent,
      nodes: [...document.querySelectorAll('#nodes tbody tr')].map((tr) => {
        const c = cells(tr);
        return {
          mesh_id: tr.dataset.node, state: tr.dataset.state, link: c[2],
          websocket: Number(c[5]), webtransport: Number(c[6]),
          channels: Number(c[7]), users: Number(c[8]), in_per_s: c[9], out_per_s: c[10],
        };
      }),
      apps: [...document.querySelectorAll('#apps tbody tr')].map((tr) => {
        const c = cells(tr);
        return {
          app: tr.dataset.app, websocket: Number(c[1]), webtransport: Number(c[2]),
          channels: Number(c[3]), users: Number(c[4]), in_per_s: c[5], out_per_s: c[6],
        };
      }),
      errors: document.querySelectorAll('#errors tbody tr').length,
    };
  });
}

async function waitNodesUp(page, n) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const s = await shown(page);
    // Every row present and the count settled, rates computed (2 snapshots).
    const up = s.nodes.filter((r) => r.state !== 'down');
    if (s.nodes_up === n && up.length === n && up.every((r) => r.in_per_s !== '–')) return s;
    if (Date.now() > deadline) fail(`nodes up stuck at ${s.nodes_up}, wanted ${n}: ${JSON.stringify(s)}`);
    await page.waitForTimeout(200);
  }
}

async function shot(page, name) {
  if (opts.shots) await page.screenshot({ path: `${opts.shots}/${name}.png`, fullPage: true });
}

async function inspect(page, target) {
  const [app, channel] = target.split('/');
  await page.selectOption('#app-select', app);
  await page.fill('#channel-search', channel);
  const link = page.locator(`#channels tbody tr[data-channel="${channel}"] a`);
  await link.waitFor({ timeout: WAIT_MS });
  await link.click();
  await page.waitForSelector('#users tbody tr', { timeout: WAIT_MS });
  await page.check('#payloads');
  await page.waitForSelector('#samples tbody tr', { timeout: WAIT_MS });
}

const { chromium } = await import('playwright-core');
const browser = await chromium.launch({
  executablePath: opts.chromium,
  headless: true,
  args: ['--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-sync'],
});
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 1000 } });
  const page = await context.newPage();
  const problems = [];
  page.on('pageerror', (e) => problems.push(String(e)));

  // A wrong token opens nothing.
  await signIn(page, 'not-the-token-0123456789', false);
  if (!(await page.isVisible('#login')) || (await page.isVisible('#main'))) fail('a wrong token opened the page');
  console.log('SEEN {"wrong_token":"refused"}');

  await signIn(page, opts.token);
  for (const [i, step] of opts.step.entries()) {
    const n = Number(step.replace('nodes=', ''));
    const s = await waitNodesUp(page, n);
    if (i === 0 && opts.inspect) await inspect(page, opts.inspect);
    // Shots show rates over a few live updates, not the first two.
    if (opts.shots) await page.waitForTimeout(3000);
    await shot(page, `console-step${i + 1}`);
    console.log(`SEEN ${JSON.stringify(s)}`);
    if (i + 1 < opts.step.length) await nextLine();
  }
  if (opts.shots && opts.inspect) {
    await page.locator('#inspector').screenshot({ path: `${opts.shots}/console-inspector.png` });
  }

  if (opts['app-key']) {
    await signIn(page, opts['app-key']);
    await page.waitForFunction(() => document.getElementById('viewer').textContent.startsWith('app:'), null, { timeout: WAIT_MS });
    await page.waitForSelector('#apps tbody tr', { timeout: WAIT_MS });
    await page.waitForTimeout(2500); // a few live updates
    const text = await page.evaluate(() => document.body.innerText);
    const leaked = opts.hidden.split(',').filter((h) => h && text.includes(h));
    if (leaked.length) fail(`the app's key sees ${leaked.join(', ')}`);
    await shot(page, 'console-app-view');
    console.log(`SEEN ${JSON.stringify({ app_view: await shown(page) })}`);
  }
  if (problems.length) fail(`page errors: ${problems.join('; ')}`);
  console.log('DONE');
} finally {
  await browser.close();
}
process.exit(0);
