'use strict';
// Issue 13, points 2 and 3: index pages. Elements `data-viewcounter-watch="SLUG"` are filled
// live for that post without counting it, over the one shared stream the browser already
// holds (the leader tab's): watching adds no connection, on an index page (no slug of its own)
// as on a post that counts itself and watches others.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const path = require('node:path');
const h = require('../lib/harness');

let browser, blog, counter, ctx, elsewhere;

before(async () => {
  browser = await h.launchBrowser();
  blog = await h.startBlog({
    counter: 'http://127.0.0.1:9',
    extra: {
      '/examples/': path.join(h.ROOT, 'examples'),
      // The post the example index page links to second.
      '/posts/my-second-post/': '<!doctype html><title>My second post</title>' +
        '<script src="__COUNTER__/counter.js" data-slug="my-second-post" async></script><p>Hello.</p>',
    },
  });
});
after(() => Promise.all([browser?.close(), blog?.close()]));
beforeEach(async () => {
  blog.counter = counter = await h.startCounter({ allowOrigins: [blog.origin] });
  // `elsewhere` is another reader's browser: its own context, so its own stream.
  [ctx, elsewhere] = await Promise.all([h.newContext(browser), h.newContext(browser)]);
});
afterEach(async () => {
  await Promise.all([ctx?.close(), elsewhere?.close()]);
  await counter?.stop();
});

const open = async (context, pathname) => {
  const page = await context.newPage();
  await page.goto(blog.url(pathname));
  return page;
};
/** Streams open on the server, whoever holds them (`GET /api/v1/stats`, loopback). */
const serverStreams = async () => (await (await fetch(`${counter.url}/api/v1/stats`)).json()).streams;
/** EventSources still open in these pages: the browser's streams to the counter. */
const openStreams = async pages =>
  (await Promise.all(pages.map(p => p.evaluate(() => window.__e2e.es.filter(r => !r.closed && r.errorState !== 2).map(r => r.url)))))
    .flat();
const zero = { live: 0, total: 0 };

test('an index page watching 3 posts shows them, updates when a reader opens one, counts no view and holds one stream', async t => {
  const index = await open(ctx, '/watch/index.html');
  await h.waitWatched(index, w => ['alpha', 'beta', 'gamma', '*'].every(s => w[s].live === 0 && w[s].total === 0));
  const streams = await openStreams([index]);
  assert.equal(streams.length, 1, 'the index page holds the one stream');
  assert.match(new URL(streams[0]).pathname, /^\/api\/v1\/shared\//);
  await h.until(async () => (await serverStreams()) === 1, { what: 'one stream on the server' });

  // A reader of beta, in another browser.
  const opened = Date.now();
  const reader = await open(elsewhere, '/posts/beta.html');
  await h.waitWatched(index, w => w.beta.live === 1 && w.beta.total === 1, { timeout: 5000 });
  const arriveMs = Date.now() - opened;
  // "*": everyone reading any post, all views of all posts.
  await h.waitWatched(index, w => w['*'].live === 1 && w['*'].total === 1);
  const seen = await h.shownWatched(index);
  assert.deepEqual(seen, { alpha: zero, beta: { live: 1, total: 1 }, gamma: zero, '*': { live: 1, total: 1 } });

  // A second tab of the index page's browser, on alpha: still one stream for that browser.
  const tab = await open(ctx, '/posts/alpha.html');
  await h.waitShown(tab, s => s.live === 1 && s.total === 1);
  await h.waitWatched(index, w => w.alpha.live === 1 && w.alpha.total === 1);
  assert.equal((await openStreams([index, tab])).length, 1, 'watching adds no stream to the browser');
  const onServer = await serverStreams();
  assert.equal(onServer, 2, 'one stream per browser');

  const closed = Date.now();
  await reader.close();
  await h.waitWatched(index, w => w.beta.live === 0 && w.beta.total === 1, { timeout: 2500 });
  const leaveMs = Date.now() - closed;

  // Nothing counted the index page: one view each for the two readers, none for gamma.
  assert.deepEqual(await counter.count('alpha'), { live: 1, total: 1 });
  assert.deepEqual(await counter.count('beta'), { live: 0, total: 1 });
  assert.deepEqual(await counter.count('gamma'), zero);
  h.report(t, `index page of 3 watched posts filled with 0/0; a reader of beta elsewhere showed on it ` +
    `within ${arriveMs} ms of opening, its departure within ${leaveMs} ms; a second tab (alpha) of the ` +
    `same browser: still 1 EventSource in that browser, ${onServer} streams on the server ` +
    `(one per browser); totals alpha 1, beta 1, gamma 0 (the index page counted nothing)`);
});

test('a post counts itself and watches others over its one stream; a rescan replaces what it watches', async t => {
  const delta = await open(ctx, '/watch/delta.html');
  await h.waitShown(delta, s => s.live === 1 && s.total === 1);
  await h.waitWatched(delta, w => w.alpha.live === 0 && w.beta.live === 0 && w.beta.total === 0);
  assert.equal((await openStreams([delta])).length, 1);
  assert.deepEqual(await counter.count('delta'), { live: 1, total: 1 });

  const reader = await open(elsewhere, '/posts/alpha.html');
  await h.waitWatched(delta, w => w.alpha.live === 1);
  assert.deepEqual(await h.shown(delta), { live: 1, total: 1 }, 'its own numbers are its own post\'s');
  assert.deepEqual(await counter.count('alpha'), { live: 1, total: 1 }, 'watching alpha counted nothing');

  // A router swaps the list (as a client-side navigation would) and re-scans.
  await delta.evaluate(() => {
    document.getElementById('related').innerHTML =
      '<li data-viewcounter-watch="gamma"><span data-viewcounter="live">–</span> · <span data-viewcounter="total">–</span></li>';
    window.__viewcounter.scan();
  });
  await h.waitWatched(delta, w => w.gamma && w.gamma.live === 0 && w.gamma.total === 0);
  const watchBeacons = await delta.evaluate(() => window.__e2e.beacons.filter(b => b.url.endsWith('/watch')).map(b => b.body));
  assert.deepEqual(watchBeacons.at(-1).split('\n').slice(1), ['gamma'], `watch lists sent: ${JSON.stringify(watchBeacons)}`);
  await reader.close();
  await counter.waitCount('alpha', n => n.live === 0);
  const gammaReader = await open(elsewhere, '/posts/gamma.html');
  await h.waitWatched(delta, w => w.gamma.live === 1 && w.gamma.total === 1);
  await gammaReader.close();
  assert.deepEqual(await counter.count('delta'), { live: 1, total: 1 }, 'the rescan kept its own reader');
  assert.equal((await openStreams([delta])).length, 1);
  h.report(t, `delta counted once (1/1) and showed alpha and beta at 0; a reader of alpha elsewhere: ` +
    `alpha live 1 on delta, delta's own numbers unchanged; after a rescan the stream watches gamma only ` +
    `(watch lists sent: ${watchBeacons.map(b => JSON.stringify(b)).join(', ')}); one stream throughout`);
});

test('a second tab watching posts its browser already watches shows their numbers at once, though none changed', async t => {
  // A reader of beta elsewhere, so its numbers are not the zeros a placeholder might be taken for.
  await open(elsewhere, '/posts/beta.html');
  await counter.waitCount('beta', n => n.live === 1 && n.total === 1);
  const index = await open(ctx, '/watch/index.html');
  await h.waitWatched(index, w => w.alpha.total === 0 && w.beta.live === 1 && w.beta.total === 1 && w.gamma.total === 0);

  // delta watches alpha and beta, which the browser's stream already carries: the stream's
  // watch list does not change and no event comes until their numbers do. The leader hands
  // the new tab the last numbers it heard.
  const opened = Date.now();
  const delta = await open(ctx, '/watch/delta.html');
  const seen = await h.waitWatched(delta, w => w.alpha.live === 0 && w.beta.live === 1 && w.beta.total === 1, { timeout: 2000 });
  const shownMs = Date.now() - opened;
  assert.deepEqual(seen, { alpha: { live: 0, total: undefined }, beta: { live: 1, total: 1 } });
  await h.waitShown(delta, s => s.live === 1 && s.total === 1);
  assert.equal((await openStreams([index, delta])).length, 1, 'one stream for the browser');
  assert.deepEqual(await counter.count('alpha'), zero, 'watching counted nothing');
  assert.deepEqual(await counter.count('beta'), { live: 1, total: 1 });
  h.report(t, `index page watching alpha, beta, gamma; a second tab (delta, watching alpha and beta) ` +
    `showed their numbers ${shownMs} ms after it was opened (load and scan included), with no change ` +
    `to them and one stream in the browser`);
});

test('examples/index-page.html, served as it is, shows a reader of one of its posts and counts nothing', async t => {
  const index = await open(ctx, '/examples/index-page.html');
  const posts = ['my-first-post', 'my-second-post', 'my-third-post'];
  await h.waitWatched(index, w => posts.every(s => w[s].live === 0 && w[s].total === 0));
  // A reader of the second post, in another browser.
  await open(elsewhere, '/posts/my-second-post/');
  await h.waitWatched(index, w => w['my-second-post'].live === 1 && w['my-second-post'].total === 1);
  assert.deepEqual(await counter.count('my-first-post'), zero);
  assert.deepEqual(await counter.count('my-second-post'), { live: 1, total: 1 });
  assert.equal((await openStreams([index])).length, 1);
  h.report(t, 'the example index page filled its three posts with 0/0 and showed live 1 / total 1 for the ' +
    'post a reader opened elsewhere; it counted nothing and held one stream');
});
