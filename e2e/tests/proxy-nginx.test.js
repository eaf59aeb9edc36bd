'use strict';
// Issue 4, point 3: the counter behind nginx (deploy/nginx/viewcounter-http.conf, as it is),
// with nginx's defaults: proxy_buffering on, no WebSocket upgrade headers. The read timeout is
// scaled down for the test, with the heartbeat: proxy_read_timeout 3s and --heartbeat 1s (the
// recipe's defaults are 60 s and 15 s: the same margin, a heartbeat well inside the timeout).

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const http = require('node:http');
const h = require('../lib/harness');

const READ_TIMEOUT_S = 3;
let browser, blog, counter, control, nginx, ctx;

before(async () => {
  browser = await h.launchBrowser();
  blog = await h.startBlog({ counter: 'http://127.0.0.1:9' });
  counter = await h.startCounter({ allowOrigins: [blog.origin] });
  // Control: the same proxy settings in front of a counter whose heartbeat (30 s) is longer
  // than the read timeout, to show that the timeout is real and the heartbeat is what helps.
  control = await h.startCounter({ args: ['--heartbeat', '30s'] });
  const controlPort = await h.freePort();
  nginx = await h.startNginx({
    recipe: 'viewcounter-http.conf',
    counter,
    httpExtra: `  proxy_read_timeout ${READ_TIMEOUT_S}s; # test scale: 60 s in production
  server {
    listen 127.0.0.1:${controlPort};
    location / {
      proxy_pass http://127.0.0.1:${control.port};
      proxy_http_version 1.1;
    }
  }`,
  });
  nginx.controlUrl = `http://127.0.0.1:${controlPort}`;
  blog.counter = nginx.url; // the blog embeds the counter through nginx
});
after(async () => {
  await browser?.close();
  await nginx?.stop();
  await counter?.stop();
  await control?.stop();
  await blog?.close();
});
beforeEach(async () => {
  ctx = await h.newContext(browser);
});
afterEach(async () => {
  await ctx?.close();
});

const open = async pathname => {
  const page = await ctx.newPage();
  await page.goto(blog.url(pathname));
  return page;
};

test('behind nginx (proxy_buffering on): counts flow live both ways', async t => {
  const base = await counter.count('alpha');
  const a = await open('/posts/alpha.html');
  await h.waitShown(a, s => s.live === 1 && s.total === base.total + 1);
  const src = await a.evaluate(() => window.__e2e.es[0].url);
  assert.equal(new URL(src).port, String(nginx.port), 'the stream goes through nginx');

  const b = await open('/posts/alpha.html');
  const arrived = Date.now();
  await h.waitShown(a, s => s.live === 2 && s.total === base.total + 2, { timeout: 2000 });
  const arriveMs = Date.now() - arrived;
  const closed = Date.now();
  await b.close();
  await h.waitShown(a, s => s.live === 1, { timeout: 2500 });
  const leaveMs = Date.now() - closed;
  h.report(t, `through nginx: tab A showed live 1→2 ${arriveMs} ms after tab B loaded, and 2→1 ` +
    `${leaveMs} ms after B closed (buffering on in nginx; the stream's X-Accel-Buffering: no turns it off)`);
});

test(`behind nginx: an idle stream outlives proxy_read_timeout (${READ_TIMEOUT_S}s) thanks to heartbeats`, async t => {
  const base = await counter.count('gamma');
  const p = await open('/posts/gamma.html');
  await h.waitShown(p, s => s.live === 1 && s.total === base.total + 1);
  const idleMs = READ_TIMEOUT_S * 2500; // 2.5 read timeouts with nothing but heartbeats
  await h.sleep(idleMs);
  const es = await p.evaluate(() => window.__e2e.es.map(r => ({ opens: r.opens, errors: r.errors })));
  assert.deepEqual(es, [{ opens: 1, errors: 0 }], 'one stream, never dropped');
  const stream = new URL(await p.evaluate(() => window.__e2e.es[0].url)).pathname;
  assert.equal(nginx.access().filter(l => l.includes(`"GET ${stream} `)).length, 0, 'nginx has not ended (logged) the stream');
  assert.deepEqual(await counter.count('gamma'), { live: 1, total: base.total + 1 });
  // ...and it still carries updates.
  const q = await open('/posts/gamma.html');
  await h.waitShown(p, s => s.live === 2, { timeout: 2000 });
  await q.close();

  // Control: without a heartbeat inside the timeout, nginx cuts the stream.
  const cut = await new Promise((resolve, reject) => {
    const started = Date.now();
    const req = http.get(`${nginx.controlUrl}/api/v1/connect/gamma`, { headers: { 'user-agent': h.UA } }, res => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', c => { body += c; });
      res.on('end', () => resolve({ ms: Date.now() - started, status: res.statusCode, body }));
      res.on('error', () => resolve({ ms: Date.now() - started, status: res.statusCode, body }));
    });
    req.on('error', reject);
    req.setTimeout(15000, () => req.destroy(new Error('control stream was not cut within 15 s')));
  });
  assert.equal(cut.status, 200);
  assert.match(cut.body, /data: \{"live":1/);
  assert.ok(cut.ms >= READ_TIMEOUT_S * 1000 - 200 && cut.ms < READ_TIMEOUT_S * 1000 + 2000, `control cut after ${cut.ms} ms`);
  h.report(t, `stream idle for ${idleMs} ms (read timeout ${READ_TIMEOUT_S} s, heartbeat 1 s): still the ` +
    `first connection, 0 errors, live 1, and it carried the next update; control (heartbeat 30 s): ` +
    `nginx cut the stream after ${cut.ms} ms`);
});

test('behind nginx: the leave beacon passes (POST /api/v1/leave answered 204)', async t => {
  const base = await counter.count('beta');
  const p = await open('/posts/beta.html');
  await counter.waitCount('beta', n => n.live === base.live + 1);
  await p.click('#next'); // pagehide: beacon + close
  await p.waitForURL('**/posts/gamma.html');
  const line = await h.until(() => nginx.access().find(l => l.includes('"POST /api/v1/leave/beta HTTP/1.1"')),
    { what: 'the beacon in the nginx access log' });
  assert.match(line, /" 204 /);
  await counter.waitCount('beta', n => n.live === base.live);
  h.report(t, `nginx access log: ${line.replace(/^\S+ /, '')}`);
});

test('behind nginx: when the counter restarts, nginx answers 502 and the script backs off and reconnects', async t => {
  const pages = [await open('/posts/alpha.html'), await open('/posts/alpha.html')];
  const before = await counter.waitCount('alpha', n => n.live === 2);
  // The two tabs share one stream, held by the leader tab.
  const [leader] = await h.until(async () => { const l = await h.streamHolders(pages); return l.length === 1 && l; },
    { what: 'one tab holding the stream' });
  const before502 = nginx.access().filter(l => / 502 /.test(l)).length;
  const { port, db, dir } = counter;
  await counter.stop();
  await h.until(() => leader.evaluate(() => window.__e2e.es.some(r => r.errorState === 2)),
    { timeout: 15000, what: 'the leader to get a 502 (EventSource CLOSED)' });
  await h.sleep(1000);
  counter = await h.startCounter({ dir, port, db, allowOrigins: [blog.origin] });
  const up = Date.now();
  await counter.waitCount('alpha', n => n.live === 2, { timeout: 45000 });
  const backMs = Date.now() - up;
  for (const p of pages) await h.waitShown(p, s => s.live === 2);
  const perPage = await Promise.all(pages.map(p => p.evaluate(() => window.__e2e.es.length)));
  assert.ok(perPage[pages.indexOf(leader)] >= 2, `the leader opened new EventSources: ${perPage}`);
  assert.equal((await counter.count('alpha')).total, before.total, 'the re-joins counted no view');
  const n502 = nginx.access().filter(l => / 502 /.test(l)).length - before502;
  h.report(t, `${n502} answers 502 while the counter was down; EventSource objects per page ` +
    `${perPage.join('/')} (the leader's backoff; the other tab has none), live back to 2 ${backMs} ms after ` +
    `the counter was up; total unchanged (${before.total})`);
});

/**
 * A stream opened through nginx at `port` from the local address `from`, by a client that is
 * no browser, sending `headers` of its own: its status, and `close()` to end it.
 */
function openStream(port, from, headers = {}) {
  const view = `forged${require('node:crypto').randomBytes(12).toString('hex')}`;
  return new Promise((resolve, reject) => {
    const req = http.get({
      host: '127.0.0.1', port, localAddress: from, path: `/api/v1/connect/alpha?view=${view}`,
      headers: { 'user-agent': h.UA, accept: 'text/event-stream', ...headers },
    }, res => resolve({ status: res.statusCode, close: () => req.destroy() }));
    req.on('error', reject);
  });
}

test('behind nginx: a client naming another address in X-Forwarded-For or Forwarded keeps its own budget', async t => {
  // One reader per client address, the client's address read as the recipe says.
  const limited = await h.startCounter({ args: ['--ip-stream-limit', '1', '--client-ip-header', 'x-forwarded-for'] });
  const proxy = await h.startNginx({ recipe: 'viewcounter-http.conf', counter: limited });
  const open = [];
  try {
    const first = await openStream(proxy.port, '127.0.0.1', { 'x-forwarded-for': '203.0.113.1' });
    open.push(first);
    assert.equal(first.status, 200);
    const forged = [
      { 'x-forwarded-for': '203.0.113.2' },
      { 'x-forwarded-for': '203.0.113.1, 203.0.113.2' },
      { forwarded: 'for=203.0.113.3' },
    ];
    const answers = [];
    for (const headers of forged) {
      const s = await openStream(proxy.port, '127.0.0.1', headers);
      open.push(s);
      answers.push(s.status);
    }
    assert.deepEqual(answers, [429, 429, 429], `a client from 127.0.0.1 naming other addresses: ${JSON.stringify(forged)}`);
    // Another client (127.0.0.2) is admitted: the server sees each client, not nginx.
    const other = await openStream(proxy.port, '127.0.0.2');
    open.push(other);
    assert.equal(other.status, 200, 'a client from 127.0.0.2 was refused: the server saw nginx for everyone');
    await limited.waitCount('alpha', n => n.live === 2);
    h.report(t, `through nginx (X-Forwarded-For $remote_addr), --ip-stream-limit 1: a client from 127.0.0.1 admitted, ` +
      `the same client naming 203.0.113.x in its own X-Forwarded-For or Forwarded: ${answers.join(', ')}; a client from 127.0.0.2: ${other.status}`);
  } finally {
    for (const s of open) s.close();
    await proxy.stop();
    await limited.stop();
  }
});
