'use strict';
// Client-side routers, each the real package from npm, driving counter.js in Chromium:
// - Astro's <ClientRouter /> (view transitions, `astro` package): e2e/site/astro, built with
//   `astro build` around examples/astro/ViewCounter.astro;
// - Turbo Drive (`@hotwired/turbo`): e2e/site/turbo/;
// - htmx's boosted links (`hx-boost`, `htmx.org` 2, and 4 as the alias `htmx4`): e2e/site/htmx/
//   (htmx 4 boosts a body's links only with `hx-boost:inherited`: the pages carry both).
// Each: post A → post B by the router (no reload) → B again → back (→ back) to A. B shows its
// numbers, A's live drops, B counts once, the same post again sends nothing and still shows its
// numbers, back counts A once.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const h = require('../lib/harness');

// htmx 4 beside htmx 2: e2e/package.json installs it as "htmx4" (npm:htmx.org@4).
const HTMX4 = path.join(h.E2E, 'node_modules/htmx4/dist');

let browser, blog, blog4, counter, ctx, astroBuilt;

/** A post of site/spa/: its router (site/spa/router.js) swaps the <article> and nothing else. */
const spaPost = (post, next) => `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">
<title>${post} (spa) · a tiny blog</title><link rel="stylesheet" href="/style.css">
<script src="/spa/router.js" defer></script>
<script src="__COUNTER__/counter.js" async></script>
</head><body>
<article data-viewcounter-slug="spa-${post}">
<nav><a id="next" href="/spa/${next}.html">${next} →</a><a id="self" href="/spa/${post}.html">this post again</a></nav>
<h1>${post}</h1>
<p class="views"><span data-viewcounter="live">–</span> reading now · <span data-viewcounter="total">–</span> views</p>
</article>
</body></html>`;

before(async () => {
  const started = Date.now();
  const astro = h.buildAstro();
  astroBuilt = Date.now() - started;
  browser = await h.launchBrowser();
  const spa = { '/spa/alpha.html': spaPost('alpha', 'beta'), '/spa/beta.html': spaPost('beta', 'alpha') };
  blog = await h.startBlog({ counter: 'http://127.0.0.1:9', extra: { '/astro/': astro, ...h.VENDOR, ...spa } });
  blog4 = await h.startBlog({ counter: 'http://127.0.0.1:9', extra: { ...h.VENDOR, '/vendor/htmx/': HTMX4 } });
});
after(async () => {
  await browser?.close();
  await blog?.close();
  await blog4?.close();
});
beforeEach(async () => {
  counter = await h.startCounter({ allowOrigins: [blog.origin, blog4.origin] });
  blog.counter = counter;
  blog4.counter = counter;
  ctx = await h.newContext(browser);
});
afterEach(async () => {
  await ctx?.close();
  await counter?.stop();
});

const e2e = (page, fn, arg) => page.evaluate(fn, arg);

/**
 * The flow, on `/${kind}/` pages whose slugs are `${kind}-alpha` and `${kind}-beta`. `done` is
 * the event the router fires once it has rendered a page: the test counts them in
 * `window.__swaps` (its listener is added after counter.js's, so the scan has run by then).
 */
async function routerFlow(kind, { alpha, done, site = blog }) {
  const slug = p => `${kind}-${p}`;
  const page = await ctx.newPage();
  await page.goto(site.url(alpha));
  await counter.waitCount(slug('alpha'), n => n.live === 1 && n.total === 1);
  await h.waitShown(page, s => s.live === 1 && s.total === 1);
  const marker = await e2e(page, () => window.__e2e.marker);
  await e2e(page, type => {
    window.__swaps = 0;
    addEventListener(type, () => window.__swaps++, true);
  }, done);
  const swaps = n => h.until(() => e2e(page, m => window.__swaps >= m, n), { what: `${n} ${done} events` });

  // Post A → post B: B's numbers, A's live drops, B counted once.
  await page.click('#next');
  await swaps(1);
  assert.match(await e2e(page, () => location.pathname), /beta/);
  await counter.waitCount(slug('beta'), n => n.live === 1 && n.total === 1);
  await counter.waitCount(slug('alpha'), n => n.live === 0 && n.total === 1);
  await h.waitShown(page, s => s.live === 1 && s.total === 1);

  // The same post again: the reader stays attached as it is, so nothing is sent. (Astro and
  // Turbo replace the history entry for a link to the current page; htmx pushes one.)
  const beaconsBefore = await e2e(page, () => window.__e2e.beacons.length);
  const historyBefore = await e2e(page, () => history.length);
  await page.click('#self');
  await swaps(2);
  const selfPushed = (await e2e(page, () => history.length)) > historyBefore;
  assert.deepEqual(await e2e(page, n => window.__e2e.beacons.slice(n), beaconsBefore), [], 'same post: no leave, no join');
  assert.deepEqual(await counter.count(slug('beta')), { live: 1, total: 1 }, 'same post: no new view');
  // Its new body shows the numbers at once, though none changed (no event came).
  await h.waitShown(page, s => s.live === 1 && s.total === 1, { timeout: 1000 });

  // Back (to B again, if the router pushed an entry: nothing sent), then back to A: a new page
  // view, counted once.
  let swapped = 2;
  if (selfPushed) {
    await page.goBack({ waitUntil: 'commit' });
    await swaps(++swapped);
    assert.match(await e2e(page, () => location.pathname), /beta/);
    assert.deepEqual(await e2e(page, n => window.__e2e.beacons.slice(n), beaconsBefore), [], 'back to the same post: nothing sent');
  }
  await page.goBack({ waitUntil: 'commit' });
  await swaps(++swapped);
  assert.match(await e2e(page, () => location.pathname), /alpha/);
  await counter.waitCount(slug('alpha'), n => n.live === 1 && n.total === 2);
  await counter.waitCount(slug('beta'), n => n.live === 0 && n.total === 1);
  await h.waitShown(page, s => s.live === 1 && s.total === 2);

  const info = await e2e(page, () => ({
    marker: window.__e2e.marker,
    streams: window.__e2e.es.map(r => ({ path: new URL(r.url).pathname, closed: r.closed })),
    beacons: window.__e2e.beacons.map(b => new URL(b.url).pathname.replace(/^\/api\/v1\/(shared\/[^/]+\/)?/, (_, sh) => sh ? 'shared ' : '')),
    counterTags: [...document.scripts].filter(s => s.src.includes('counter.js')).length,
  }));
  info.selfPushed = selfPushed;
  assert.equal(info.marker, marker, 'no reload happened');
  // One tab: it leads, and its shared stream outlives the router's navigations (same document).
  assert.equal(info.streams.length, 1, `one stream for the whole flow: ${JSON.stringify(info.streams)}`);
  assert.equal(info.streams[0].closed, false);
  // Let any stray (double) stream or late scan show itself before the final word.
  await h.sleep(300);
  assert.deepEqual(await counter.count(slug('alpha')), { live: 1, total: 2 });
  assert.deepEqual(await counter.count(slug('beta')), { live: 0, total: 1 });
  return info;
}

const summary = (kind, info) =>
  `alpha→beta→beta(again, ${info.selfPushed ? 'a new history entry' : 'the entry replaced'})→back${info.selfPushed ? '→back' : ''} to alpha ` +
  `without reload; ${info.streams.length} shared stream, open throughout; ` +
  `beacons: ${info.beacons.join(', ')}; final ${kind}-alpha {live 1,total 2}, ${kind}-beta {live 0,total 1}`;

test('Astro <ClientRouter /> (astro package, view transitions) moves the reader without a reload or a double count', async t => {
  const info = await routerFlow('astro', { alpha: '/astro/alpha/', done: 'astro:page-load' });
  h.report(t, `astro build ${astroBuilt} ms; ` + summary('astro', info));
});

test('Turbo Drive (@hotwired/turbo) moves the reader without a reload or a double count', async t => {
  const info = await routerFlow('turbo', { alpha: '/turbo/alpha.html', done: 'turbo:load' });
  h.report(t, summary('turbo', info));
});

test('htmx boosted links (htmx.org, hx-boost) move the reader without a reload or a double count', async t => {
  const info = await routerFlow('htmx', { alpha: '/htmx/alpha.html', done: 'htmx:afterSettle' });
  h.report(t, summary('htmx', info));
});

test('htmx 4 boosted links (htmx.org 4, hx-boost) move the reader without a reload or a double count', async t => {
  // The same pages, on a blog that serves htmx 4 where they load htmx from.
  const info = await routerFlow('htmx', { alpha: '/htmx/alpha.html', done: 'htmx:after:settle', site: blog4 });
  h.report(t, summary('htmx', info));
});

// A router counter.js has no event for: e2e/site/spa/router.js writes the history, then swaps the
// article once it fetched the next page. The script notices the history write (the Navigation
// API's navigatesuccess in Chromium, or its wrapped pushState where there is no Navigation API)
// and the new article (its MutationObserver), and rescans once the article is there.
test('a router the script has no event for (history first, the page later) moves the reader, through the Navigation API', async t => {
  const info = await routerFlow('spa', { alpha: '/spa/alpha.html', done: 'spa:swapped' });
  h.report(t, summary('spa', info));
});

test('a router the script has no event for moves the reader also where the browser has no Navigation API (pushState wrapped)', async t => {
  // As in Firefox before 147 and Safari before 26: no `navigation`.
  await ctx.addInitScript(() => delete window.navigation);
  const page = await ctx.newPage();
  await page.goto(blog.url('/spa/alpha.html'));
  assert.equal(await e2e(page, () => typeof window.navigation), 'undefined', 'the Navigation API is gone');
  await page.close();
  const info = await routerFlow('spa', { alpha: '/spa/alpha.html', done: 'spa:swapped' });
  h.report(t, 'no Navigation API: ' + summary('spa', info));
});

test('numbers a framework renders back to their placeholder are filled again, in place or in new elements', async t => {
  const page = await ctx.newPage();
  await page.goto(blog.url('/spa/alpha.html'));
  await h.waitShown(page, s => s.live === 1 && s.total === 1);
  const beaconsBefore = await e2e(page, () => window.__e2e.beacons.length);
  // As React 18 does when it hydrates text that differs from the server's: puts it back.
  let started = Date.now();
  await e2e(page, () => document.querySelectorAll('[data-viewcounter]').forEach(e => { e.firstChild.nodeValue = '–'; }));
  await h.waitShown(page, s => s.live === 1 && s.total === 1, { timeout: 1000 });
  const inPlaceMs = Date.now() - started;
  // As a client-side render does: new elements in place of ours.
  started = Date.now();
  await e2e(page, () => { document.querySelector('.views').outerHTML = '<p class="views"><span data-viewcounter="live">–</span> · <span data-viewcounter="total">–</span></p>'; });
  await h.waitShown(page, s => s.live === 1 && s.total === 1, { timeout: 1000 });
  const replacedMs = Date.now() - started;
  assert.deepEqual(await e2e(page, n => window.__e2e.beacons.slice(n), beaconsBefore), [], 'nothing sent: the same post');
  assert.deepEqual(await counter.count('spa-alpha'), { live: 1, total: 1 });
  h.report(t, `text put back to "–": filled again within ${inPlaceMs} ms; elements replaced: within ${replacedMs} ms; nothing sent, counted once`);
});
