'use strict';
// Issue 4, point 1: the script in a real headless Chromium, the blog on one origin and the
// counter on another. Each test gets a fresh counter (new temp db) and a fresh browser context.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const zlib = require('node:zlib');
const h = require('../lib/harness');

let browser, blog, counter, ctx;

before(async () => {
  browser = await h.launchBrowser();
  blog = await h.startBlog({ counter: 'http://127.0.0.1:9' });
});
after(async () => {
  await browser?.close();
  await blog?.close();
});
beforeEach(async () => {
  counter = await h.startCounter({ allowOrigins: [blog.origin] });
  blog.counter = counter;
  ctx = await h.newContext(browser);
});
afterEach(async () => {
  await ctx?.close();
  await counter?.stop();
});

const open = async pathname => {
  const page = await ctx.newPage();
  await page.goto(blog.url(pathname));
  return page;
};
const e2e = (page, fn) => page.evaluate(fn);

test('two tabs on a post see each other arrive and leave; closing a tab lowers live within 2.5 s', async t => {
  const a = await open('/posts/alpha.html');
  await h.waitShown(a, s => s.live === 1 && s.total === 1);

  const b = await open('/posts/alpha.html');
  const arrived = Date.now();
  await h.waitShown(b, s => s.live === 2 && s.total === 2);
  await h.waitShown(a, s => s.live === 2 && s.total === 2);
  const arriveMs = Date.now() - arrived;

  const closed = Date.now();
  await b.close();
  await counter.waitCount('alpha', n => n.live === 1 && n.total === 2, { timeout: 2500 });
  const serverMs = Date.now() - closed;
  await h.waitShown(a, s => s.live === 1 && s.total === 2, { timeout: Math.max(0, 2500 - serverMs) });
  const pageMs = Date.now() - closed;
  assert.ok(pageMs <= 2500, `tab A showed the departure after ${pageMs} ms`);

  const lastClosed = Date.now();
  await a.close();
  await counter.waitCount('alpha', n => n.live === 0 && n.total === 2, { timeout: 2500 });
  h.report(t, `tab A saw tab B arrive (live 1→2, total 2) within ${arriveMs} ms of B's load; ` +
    `closing B: server live 2→1 after ${serverMs} ms, tab A showed live 1 after ${pageMs} ms; ` +
    `closing A: live 0 after ${Date.now() - lastClosed} ms; total stays 2`);
});

test('following a link moves the reader: the old post loses a live reader, the new post counts one view', async t => {
  const watcher = await open('/posts/alpha.html');
  await h.waitShown(watcher, s => s.live === 1);
  const reader = await open('/posts/alpha.html');
  await h.waitShown(watcher, s => s.live === 2 && s.total === 2);

  const clicked = Date.now();
  await reader.click('#next');
  await reader.waitForURL('**/posts/beta.html');
  await counter.waitCount('beta', n => n.live === 1 && n.total === 1);
  await counter.waitCount('alpha', n => n.live === 1 && n.total === 2);
  await h.waitShown(watcher, s => s.live === 1 && s.total === 2);
  await h.waitShown(reader, s => s.live === 1 && s.total === 1);
  h.report(t, `alpha live 2→1 (total 2), beta live 0→1 and total 0→1; watcher tab on alpha ` +
    `showed it ${Date.now() - clicked} ms after the click`);
});

test('back/forward: a bfcache restore counts no new view; a fresh load counts one', async t => {
  const page = await open('/posts/alpha.html');
  await counter.waitCount('alpha', n => n.live === 1 && n.total === 1);
  await page.click('#next');
  await page.waitForURL('**/posts/beta.html');
  await counter.waitCount('beta', n => n.live === 1 && n.total === 1);
  await counter.waitCount('alpha', n => n.live === 0 && n.total === 1);

  // Back: headless Chromium restores alpha from the back/forward cache (pageshow.persisted).
  await page.goBack({ waitUntil: 'commit' });
  const restored = await h.until(
    () => e2e(page, () => location.pathname.endsWith('alpha.html') && window.__e2e.pageshows.at(-1)),
    { what: 'the back navigation to alpha' });
  const why = await e2e(page, () => JSON.stringify(performance.getEntriesByType('navigation')[0].notRestoredReasons));
  assert.equal(restored.persisted, true, `alpha was not restored from bfcache; notRestoredReasons: ${why}`);
  await counter.waitCount('alpha', n => n.live === 1);
  await counter.waitCount('beta', n => n.live === 0);
  await h.waitShown(page, s => s.live === 1 && s.total === 1);
  // The only tab leads again: a new shared stream, and its reader joins with the same id.
  const streams = await e2e(page, () => window.__e2e.es.map(r => r.url));
  assert.equal(streams.length, 2, 'alpha opened one new stream on restore');
  // Each body is "ID SHOW": the same id (no new view), and the restore is a later showing, so
  // a late beacon of the first showing cannot take the restored page off.
  const joins = await e2e(page, () => window.__e2e.beacons.filter(b => /\/join\/alpha$/.test(b.url)).map(b => b.body));
  const ids = joins.map(body => body.split(' ')[0]);
  const shows = joins.map(body => Number(body.split(' ')[1]));
  assert.ok(joins.length >= 2 && ids.every(id => id === ids[0]), `with the same reader id: ${joins}`);
  assert.ok(shows.at(-1) > shows[0], `the restore is a later showing: ${joins}`);
  assert.deepEqual(await counter.count('alpha'), { live: 1, total: 1 }, 'the restore counted no view');

  // Forward: beta comes back from bfcache too, still one view.
  await page.goForward({ waitUntil: 'commit' });
  const forward = await h.until(
    () => e2e(page, () => location.pathname.endsWith('beta.html') && window.__e2e.pageshows.at(-1)),
    { what: 'the forward navigation to beta' });
  const whyNot = await e2e(page, () => JSON.stringify(performance.getEntriesByType('navigation')[0].notRestoredReasons));
  assert.equal(forward.persisted, true, `beta was not restored from bfcache; notRestoredReasons: ${whyNot}`);
  await counter.waitCount('beta', n => n.live === 1);
  await counter.waitCount('alpha', n => n.live === 0);
  assert.deepEqual(await counter.count('beta'), { live: 1, total: 1 });

  // A fresh load (reload) is a new page view: one more.
  await page.reload();
  await counter.waitCount('beta', n => n.live === 1 && n.total === 2);
  await h.waitShown(page, s => s.live === 1 && s.total === 2);
  // And a fresh navigation back to alpha counts one.
  await page.goto(blog.url('/posts/alpha.html'));
  await counter.waitCount('alpha', n => n.live === 1 && n.total === 2);
  await counter.waitCount('beta', n => n.live === 0 && n.total === 2);
  h.report(t, `bfcache works in headless Chromium (pageshow.persisted=true, Playwright's ` +
    `--disable-back-forward-cache removed): back to alpha → live 0→1, total stays 1 (a new shared stream, ` +
    `the same reader id joined); forward to beta → total stays 1; reload of beta → total 2; fresh load of alpha → total 2`);
});

// Client-side routers (Astro, Turbo, htmx, each the real package): tests/routers.test.js.

test('the stream a tab opens arrives on a fresh connection, not on the script\'s', async t => {
  const page = await ctx.newPage();
  const seen = [];
  page.on('response', r => {
    if (r.url().startsWith(counter.url)) seen.push(r);
  });
  await page.goto(blog.url('/posts/alpha.html'));
  await h.waitShown(page, s => s.live === 1 && s.total === 1);

  const script = seen.find(r => r.url().endsWith('/counter.js'));
  const stream = seen.find(r => /\/api\/v1\/(shared|connect)\//.test(r.url()));
  assert.ok(script && stream, `responses seen: ${seen.map(r => r.url()).join(', ')}`);
  const scriptHeaders = await script.allHeaders();
  const streamHeaders = await stream.allHeaders();
  // The script's connection is closed after it, so the stream cannot reuse it and reaches the
  // server's own stream path, which delimits the body by the close instead of chunking it.
  assert.equal(scriptHeaders.connection, 'close');
  assert.equal(streamHeaders['transfer-encoding'], undefined, 'a chunked stream: served by actix-web');
  assert.equal(streamHeaders.connection, 'close');
  h.report(t, `counter.js answered with connection: close; the stream (${new URL(stream.url()).pathname.split('/').slice(0, 4).join('/')}/…) came unchunked on its own connection`);
});

test('the stream opens only after the load event', async t => {
  const page = await open('/posts/alpha.html');
  await h.waitShown(page, s => s.live === 1);
  const tm = await e2e(page, () => {
    const nav = performance.getEntriesByType('navigation')[0];
    const js = performance.getEntriesByType('resource').find(r => r.name.includes('/counter.js'));
    return {
      loadEventStart: nav.loadEventStart,
      loadEventEnd: nav.loadEventEnd,
      scriptDone: js && js.responseEnd,
      esCreated: window.__e2e.es[0].createdAt,
    };
  });
  assert.ok(tm.esCreated >= tm.loadEventStart,
    `EventSource created at ${tm.esCreated} ms, load event started at ${tm.loadEventStart} ms`);
  const where = tm.esCreated <= tm.loadEventEnd ? 'in a load listener' : 'after the load event';
  h.report(t, `counter.js fetched by ${tm.scriptDone.toFixed(1)} ms, load event ` +
    `${tm.loadEventStart.toFixed(1)}–${tm.loadEventEnd.toFixed(1)} ms, EventSource created at ` +
    `${tm.esCreated.toFixed(1)} ms (${where})`);
});

test('counter.js is at most 2 KiB gzipped', async t => {
  const served = await (await fetch(`${counter.url}/counter.js`)).text();
  const size = zlib.gzipSync(served, { level: 9 }).length;
  const source = fs.readFileSync(path.join(h.ROOT, 'web/counter.js'), 'utf8');
  assert.ok(size <= 2048, `${size} bytes gzipped`);
  h.report(t, `${served.length} bytes, ${size} bytes gzipped (budget 2048); ` +
    `served copy ${served === source ? 'equals' : 'DIFFERS from (binary older than)'} web/counter.js`);
});

/**
 * Opens `pathname` with its stream held back until the page has painted its placeholders, so
 * the numbers always fill in over a painted layout (on a loaded machine the first event could
 * otherwise beat the first frame, and no shift could be seen, with or without reserved space).
 */
async function openPainted(pathname) {
  const page = await ctx.newPage();
  // The stream: the leader's GET /api/v1/shared/{sid} (or a per-tab /connect/{slug}).
  await page.route(u => /^\/api\/v1\/(connect\/|shared\/[^/]+$)/.test(u.pathname), async route => {
    await h.until(() => page.evaluate(() => new Promise(r => requestAnimationFrame(() =>
      requestAnimationFrame(() => r(performance.getEntriesByType('paint').length > 0))))), { what: 'first paint' });
    await route.continue();
  });
  await page.goto(blog.url(pathname));
  return page;
}

test('no layout shift when the numbers fill in (their space is reserved)', async t => {
  const a = await openPainted('/posts/alpha.html');
  await h.waitShown(a, s => s.live === 1);
  const b = await open('/posts/alpha.html'); // changes the numbers on a again
  await h.waitShown(a, s => s.live === 2 && s.total === 2);
  await b.close();
  await h.waitShown(a, s => s.live === 1);
  const shifts = await e2e(a, () => window.__e2e.shifts);
  assert.deepEqual(shifts, [], 'layout-shift entries on a post with reserved space');

  // Control: without reserved space the observer does see the shift. Tab A goes first: as the
  // leader it would carry C's reader and relay C's numbers, which could then beat C's first
  // paint past the stream that openPainted holds back.
  await a.close();
  const c = await openPainted('/shift.html');
  await h.waitShown(c, s => s.live === 1);
  const control = await h.until(() => e2e(c, () => window.__e2e.shifts.length && window.__e2e.shifts),
    { what: 'a layout shift on the control page' });
  const cls = control.reduce((s, e) => s + e.value, 0);
  h.report(t, `post: 0 layout-shift entries over the first fill (after first paint) and two updates; ` +
    `control page without reserved space: ${control.length} entr${control.length === 1 ? 'y' : 'ies'}, CLS ${cls.toFixed(4)}`);
});

test('page-load time with and without the tag (cold cache, 7 loads each, interleaved)', async t => {
  const runs = { with: [], without: [] };
  for (let i = 0; i < 7; i++) {
    for (const kind of i % 2 ? ['with', 'without'] : ['without', 'with']) {
      const c = await h.newContext(browser); // cold cache each time
      const page = await c.newPage();
      await page.goto(blog.url(`/posts/alpha.html${kind === 'with' ? '' : '?notag'}`));
      const nav = await page.evaluate(() => performance.getEntriesByType('navigation')[0].toJSON());
      runs[kind].push({ dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd });
      if (kind === 'with') await h.waitShown(page, s => s.live >= 1); // its view is in
      await c.close();
    }
  }
  const f = (k, field) => {
    const xs = runs[k].map(r => r[field]);
    return `${h.median(xs).toFixed(1)} (min ${Math.min(...xs).toFixed(1)})`;
  };
  h.report(t, `median (min) in ms — with the tag: DOMContentLoaded ${f('with', 'dcl')}, load ${f('with', 'load')}; ` +
    `without: DOMContentLoaded ${f('without', 'dcl')}, load ${f('without', 'load')} ` +
    `(loopback, shared 2-core machine: expect noise; the async tag can only delay the load event, by its own fetch)`);
  await counter.waitCount('alpha', n => n.live === 0 && n.total === 7);
});
