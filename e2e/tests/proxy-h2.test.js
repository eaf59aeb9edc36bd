'use strict';
// Issue 4, point 3: the counter behind a TLS-terminating HTTP/2 proxy
// (deploy/nginx/viewcounter-https.conf, as it is, with a self-signed certificate made by openssl
// now). The blog is served over HTTPS + HTTP/2 too, on its own origin. 20 tabs must all be live:
// over HTTP/2 the six-per-origin limit does not apply anyway; the script holds one shared stream
// per browser whatever the protocol, and the leader leaving must not lose anyone.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const TABS = 20;
let browser, blog, counter, nginx, ctx, blogTls;

before(async () => {
  const cert = h.selfSignedCert();
  blog = await h.startBlog({ counter: 'http://127.0.0.1:9' });
  const blogPort = await h.freePort();
  blogTls = `https://127.0.0.1:${blogPort}`;
  counter = await h.startCounter({ allowOrigins: [blogTls] });
  nginx = await h.startNginx({
    recipe: 'viewcounter-https.conf',
    counter,
    cert,
    httpExtra: `  server { # the blog, also behind TLS + HTTP/2 (not part of the recipe)
    listen 127.0.0.1:${blogPort} ssl http2;
    ssl_certificate ${cert.cert};
    ssl_certificate_key ${cert.key};
    location / { proxy_pass http://127.0.0.1:${blog.port}; }
  }`,
  });
  blog.counter = nginx.url;
  browser = await h.launchBrowser({ args: ['--ignore-certificate-errors'] });
  ctx = await h.newContext(browser, { ignoreHTTPSErrors: true });
});
after(async () => {
  await ctx?.close();
  await browser?.close();
  await nginx?.stop();
  await counter?.stop();
  await blog?.close();
});

test(`behind a TLS-terminating HTTP/2 proxy: ${TABS} tabs are all live`, async t => {
  const started = Date.now();
  const pages = [];
  for (let i = 0; i < TABS; i++) {
    const p = await ctx.newPage();
    await p.goto(`${blogTls}/posts/alpha.html`);
    pages.push(p);
  }
  const loadedMs = Date.now() - started;
  await counter.waitCount('alpha', n => n.live === TABS && n.total === TABS, { timeout: 10000 });
  for (const p of pages) await h.waitShown(p, s => s.live === TABS && s.total === TABS, { timeout: 5000 });
  const allLiveMs = Date.now() - started;

  const proto = await pages[TABS - 1].evaluate(() => ({
    page: performance.getEntriesByType('navigation')[0].nextHopProtocol,
    script: performance.getEntriesByType('resource').find(r => r.name.includes('/counter.js'))?.nextHopProtocol,
  }));
  assert.equal(proto.page, 'h2');
  // One tab (the leader) holds the browser's one shared stream, through the proxy.
  const holders = await h.streamHolders(pages);
  assert.equal(holders.length, 1, 'one stream for all tabs');
  const stream = await holders[0].evaluate(() => window.__e2e.es.find(r => !r.closed).url);
  assert.equal(new URL(stream).origin, nginx.url);

  // Half the tabs leave, the leader among them: every beacon gets through too, a new leader
  // re-attaches the others, and they see it.
  const leaving = [holders[0], ...pages.filter(p => p !== holders[0]).slice(0, TABS / 2 - 1)];
  for (const p of leaving) pages.splice(pages.indexOf(p), 1);
  const closed = Date.now();
  for (const p of leaving) await p.close();
  await counter.waitCount('alpha', n => n.live === TABS / 2 && n.total === TABS, { timeout: 2500 });
  for (const p of pages) await h.waitShown(p, s => s.live === TABS / 2 && s.total === TABS, { timeout: 2500 });
  const leftMs = Date.now() - closed;
  const log = nginx.access();
  // nginx logs a request when it ends: the old leader's stream, and every join beacon.
  const ended = log.filter(l => /"GET \/api\/v1\/shared\/[^/ ]+ /.test(l));
  // Joins: the first ones, then each new leader's re-joins. Closing tabs in a row may pass the
  // lead along (a tab that claims the lead may be closed next): a re-join that reaches the
  // server after its leader's stream closed is answered 404, harmlessly.
  const joins = log.filter(l => /"POST \/api\/v1\/shared\/[^/]+\/join\/alpha /.test(l));
  const joined = joins.filter(l => / 204 /.test(l));
  const streamsUsed = new Set(joins.map(l => l.split('/')[4])).size;
  assert.ok(ended.length >= 1 && ended.every(l => l.includes('HTTP/2.0')), `the stream was HTTP/2: ${ended}`);
  assert.ok(joined.length >= TABS && joins.every(l => l.includes('HTTP/2.0') && / (204|404) /.test(l)), `joins: ${joins}`);
  const leaves = await h.until(() => {
    const l = nginx.access().filter(x => x.includes('POST /api/v1/leave/alpha HTTP/2.0'));
    return l.length === TABS / 2 && l;
  }, { what: 'a beacon from each closed tab in the nginx log' }).catch(() => nginx.access().filter(x => x.includes('/leave/')));
  assert.ok(leaves.length > 0 && leaves.every(l => / 204 /.test(l)), `beacons: ${leaves}`);
  h.report(t, `${TABS} tabs loaded in ${loadedMs} ms; all ${TABS} show live ${TABS} / total ${TABS} ` +
    `${allLiveMs} ms after the first was opened (page ${proto.page}, counter.js ${proto.script || 'from cache'}); ` +
    `one shared stream; closing ${TABS / 2} tabs (the leader among them): live ${TABS}→${TABS / 2} on the server ` +
    `and every remaining tab within ${leftMs} ms (totals unchanged); nginx logged ${ended.length} ended stream${ended.length === 1 ? '' : 's'} (leaders that left), ` +
    `${joins.length} join beacons over ${streamsUsed} leaders' streams (${joined.length} answered 204, ` +
    `${joins.length - joined.length} 404 after their stream closed) and ${leaves.length} leave beacons (204), all HTTP/2.0`);
});
