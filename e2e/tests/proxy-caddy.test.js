'use strict';
// The counter behind Caddy (deploy/caddy/Caddyfile, as it is, with the site's port and a
// self-signed certificate swapped in): TLS + HTTP/2 to Chromium, the blog on its own HTTPS
// origin through the same Caddy. One browser reaches Caddy over IPv4 (127.0.0.1), the others
// over IPv6 (::1: Chromium's --host-resolver-rules maps counter.example.com there), and Caddy
// reaches viewcounter over IPv4, from 127.0.0.1. So the server's per-client limit
// (--ip-stream-limit 1: one open reader per client address) shows which address it saw: the
// browser's, which Caddy forwards in X-Forwarded-For, or Caddy's own, the same for all.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let blog, counter, caddy, cert, blogOrigin;
const browsers = [];

before(async () => {
  cert = h.selfSignedCert(['counter.example.com', 'blog.example.com']);
  blog = await h.startBlog({ counter: 'http://127.0.0.1:9' });
  const blogPort = await h.freePort();
  blogOrigin = `https://blog.example.com:${blogPort}`;
  counter = await h.startCounter({
    allowOrigins: [blogOrigin],
    // As the recipe says: the client's address from X-Forwarded-For (the default), only.
    args: ['--ip-stream-limit', '1', '--client-ip-header', 'x-forwarded-for'],
  });
  caddy = await h.startCaddy({
    counter,
    cert,
    // Test-only: the readers' addresses, and the blog behind TLS + HTTP/2 too.
    global: '\tdefault_bind 127.0.0.1 [::1]',
    sites: `blog.example.com:${blogPort} {
\ttls ${cert.cert} ${cert.key}
\treverse_proxy 127.0.0.1:${blog.port}
}`,
  });
  blog.counter = `https://counter.example.com:${caddy.port}`;
});
after(async () => {
  for (const b of browsers) await b.close();
  await caddy?.stop();
  await counter?.stop();
  await blog?.close();
});

/** A browser on its own machine: it reaches the counter at `address`, and so from it. */
async function readerAt(address) {
  const browser = await h.launchBrowser({
    args: ['--ignore-certificate-errors',
      `--host-resolver-rules=MAP counter.example.com ${address}, MAP blog.example.com 127.0.0.1`],
  });
  browsers.push(browser);
  const ctx = await h.newContext(browser, { ignoreHTTPSErrors: true });
  const page = await ctx.newPage();
  // The protocol of every response, stream included (Resource Timing hides it cross-origin).
  page.protocols = [];
  const cdp = await ctx.newCDPSession(page);
  cdp.on('Network.responseReceived', e => page.protocols.push({
    path: new URL(e.response.url).pathname, protocol: e.response.protocol, status: e.response.status,
  }));
  await cdp.send('Network.enable');
  await page.goto(`${blogOrigin}/posts/alpha.html`);
  return page;
}

/** The status of a stream opened from `address` through Caddy, by a client that is no browser. */
function streamStatus(address, headers) {
  return new Promise((resolve, reject) => {
    const req = require('node:https').get({
      host: address, port: caddy.port, servername: 'counter.example.com', rejectUnauthorized: false,
      path: '/api/v1/shared/spoofedxxxxxxxxxxxxxxxx', headers: { host: `counter.example.com:${caddy.port}`, ...headers },
    }, res => { resolve(res.statusCode); req.destroy(); });
    req.on('error', reject);
  });
}

const streams = page => page.evaluate(() => window.__e2e.es.map(r => ({ url: r.url, opens: r.opens, state: r.errorState, closed: r.closed })));

test('behind Caddy (TLS + HTTP/2): live and total flow, leaving drops live, the server sees each browser\'s address', async t => {
  const a = await readerAt('127.0.0.1');
  await h.waitShown(a, s => s.live === 1 && s.total === 1);
  const b = await readerAt('[::1]');
  const arrived = Date.now();
  await h.waitShown(b, s => s.live === 2 && s.total === 2);
  await h.waitShown(a, s => s.live === 2 && s.total === 2);
  const arriveMs = Date.now() - arrived;
  assert.deepEqual(await counter.count('alpha'), { live: 2, total: 2 });

  // Every response over HTTP/2: the page, counter.js, the stream, the join beacon.
  const protocols = new Set(b.protocols.map(r => r.protocol));
  assert.deepEqual([...protocols], ['h2'], JSON.stringify(b.protocols));
  assert.ok(b.protocols.some(r => r.path.startsWith('/api/v1/shared/')), JSON.stringify(b.protocols));
  for (const page of [a, b]) {
    const [stream, ...more] = await streams(page);
    assert.equal(more.length, 0, 'one stream per browser');
    assert.equal(new URL(stream.url).origin, blog.counter, 'the stream goes through Caddy');
    assert.equal(stream.opens, 1);
  }

  // Had the server seen Caddy's address (127.0.0.1) for everyone, b would have been refused.
  // It sees the browsers': so a second browser from ::1 is.
  const c = await readerAt('[::1]');
  const refused = await h.until(async () => {
    const s = await streams(c);
    return s.length > 0 && s.every(r => r.opens === 0 && r.state === 2) && s;
  }, { what: 'the third browser\'s stream to be refused (429: one reader per address)' });
  const answers = c.protocols.filter(r => r.path.startsWith('/api/v1/shared/'));
  assert.ok(answers.length > 0 && answers.every(r => r.status === 429 && r.protocol === 'h2'), `the server's answers: ${JSON.stringify(answers)}`);
  assert.deepEqual(await counter.count('alpha'), { live: 2, total: 2 }, 'the refused browser counted nothing');
  // A client from ::1 that names another address in its own X-Forwarded-For is refused too:
  // Caddy replaces the header (appended to, it would name a new client to viewcounter).
  const spoofed = await streamStatus('::1', { 'x-forwarded-for': '203.0.113.7' });
  assert.equal(spoofed, 429, 'a client cannot choose its address through Caddy');
  // Nor in its own Forwarded header, which Caddy passes on as it came: the server reads
  // X-Forwarded-For only (--client-ip-header x-forwarded-for).
  const spoofedRfc = await streamStatus('::1', { forwarded: 'for=203.0.113.8' });
  assert.equal(spoofedRfc, 429, 'a client cannot choose its address in a Forwarded header');

  // b leaves: live drops, on the server and in a.
  const closed = Date.now();
  await b.context().close();
  await counter.waitCount('alpha', n => n.live === 1 && n.total === 2, { timeout: 2500 });
  await h.waitShown(a, s => s.live === 1 && s.total === 2, { timeout: 2500 });
  const leftMs = Date.now() - closed;
  h.report(t, `two browsers (from 127.0.0.1 and ::1) through Caddy ${require('node:child_process').execFileSync('caddy', ['version']).toString().split(' ')[0].trim()}: ` +
    `${b.protocols.length} responses (page, counter.js, stream, beacons) all over h2; a saw b arrive (live 2 / total 2) within ${arriveMs} ms; one stream per browser, through Caddy; ` +
    `a second browser from ::1 refused with 429 (--ip-stream-limit 1, ${refused.length} attempt${refused.length === 1 ? '' : 's'} so far), counted nothing; a client from ::1 claiming X-Forwarded-For 203.0.113.7: ${spoofed}, Forwarded for=203.0.113.8: ${spoofedRfc}; ` +
    `b closed: live 2→1 on the server and in a within ${leftMs} ms`);
});
