'use strict';
// Issue 4, point 2: many tabs of the blog with the counter on a plain-HTTP/1.1 origin. Chromium
// opens at most 6 connections per origin; with a stream per tab, tabs 7+ waited forever. The
// script elects one leader tab per browser over a BroadcastChannel, which holds the only stream
// (GET /api/v1/shared/{sid}) and relays the numbers to the other tabs over that channel. The
// election needs no Web Locks, so it works on insecure-context blogs (plain http:) too, which
// is where a plain-HTTP/1.1 counter is found: an https: page cannot load an http: counter.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const ALPHA = 9;
const BETA = 3;
let browser, blog, counter, ctx;

before(async () => {
  browser = await h.launchBrowser();
  blog = await h.startBlog({ counter: 'http://127.0.0.1:9' });
  counter = await h.startCounter({ allowOrigins: [blog.origin] });
  blog.counter = counter;
  ctx = await h.newContext(browser);
});
after(async () => {
  await ctx?.close();
  await browser?.close();
  await counter?.stop();
  await blog?.close();
});

/** Per page: EventSources it created and how many are still open. */
const streams = page => page.evaluate(() => window.__e2e.es.map(r => ({ url: r.url, closed: r.closed, errors: r.errors })));
/** The tabs holding an open stream (the leader, or more than one if the design broke). */
async function leaders(pages) {
  const out = [];
  for (const p of pages) if ((await streams(p)).some(s => !s.closed && s.errors === 0)) out.push(p);
  return out;
}
/** Open EventSources over all these tabs: the browser's streams to the counter. */
const openStreams = async pages => (await Promise.all(pages.map(streams))).flat().filter(s => !s.closed && s.errors === 0);
const allShow = (pages, pred, opts) => Promise.all(pages.map(p => h.waitShown(p, pred, opts)));

/**
 * ALPHA + BETA tabs of `origin`'s blog in `context`, counted by `c`: all live and counted, one
 * stream to the counter; then the leader and two followers close, then one more follower, then
 * a new tab opens. Returns the figures for the report.
 */
async function manyTabs(context, origin, c) {
  const started = Date.now();
  const alpha = [], beta = [];
  for (let i = 0; i < ALPHA + BETA; i++) {
    const p = await context.newPage();
    await p.goto(`${origin}${i % 4 === 3 ? '/posts/beta.html' : '/posts/alpha.html'}`);
    (i % 4 === 3 ? beta : alpha).push(p);
  }
  const all = [...alpha, ...beta];
  const loadedMs = Date.now() - started;
  await c.waitCount('alpha', n => n.live === ALPHA && n.total === ALPHA, { timeout: 10000 });
  await c.waitCount('beta', n => n.live === BETA && n.total === BETA, { timeout: 5000 });
  await allShow(alpha, s => s.live === ALPHA && s.total === ALPHA, { timeout: 5000 });
  await allShow(beta, s => s.live === BETA && s.total === BETA, { timeout: 5000 });
  const liveMs = Date.now() - started;

  // Browsers speak HTTP/2 only over TLS: a plain http: counter is HTTP/1.1. (nextHopProtocol
  // is empty here: the counter sends no Timing-Allow-Origin.)
  assert.equal(new URL(c.url).protocol, 'http:');
  let lead = await leaders(all);
  assert.equal(lead.length, 1, 'exactly one tab holds a stream');
  assert.equal((await openStreams(all)).length, 1, 'one stream open to the counter');
  const opened = (await Promise.all(all.map(streams))).flat();
  assert.ok(opened.every(s => new URL(s.url).pathname.startsWith('/api/v1/shared/')), 'only shared streams');
  const createdBefore = opened.length;
  const leaderIndex = all.indexOf(lead[0]);

  // Close the leader and two followers (one per post): live falls by exactly those readers, a
  // new leader takes over and re-attaches everyone, and nobody is counted twice.
  const followersToClose = [alpha.find(p => p !== lead[0]), beta.find(p => p !== lead[0])];
  const gone = [lead[0], ...followersToClose];
  const goneAlpha = gone.filter(p => alpha.includes(p)).length;
  const goneBeta = gone.length - goneAlpha;
  const closed = Date.now();
  for (const p of gone) await p.close();
  const rest = all.filter(p => !gone.includes(p));
  const restAlpha = alpha.filter(p => !gone.includes(p));
  const restBeta = beta.filter(p => !gone.includes(p));
  await c.waitCount('alpha', n => n.live === ALPHA - goneAlpha && n.total === ALPHA, { timeout: 5000 });
  await c.waitCount('beta', n => n.live === BETA - goneBeta && n.total === BETA, { timeout: 5000 });
  await allShow(restAlpha, s => s.live === ALPHA - goneAlpha && s.total === ALPHA, { timeout: 5000 });
  await allShow(restBeta, s => s.live === BETA - goneBeta && s.total === BETA, { timeout: 5000 });
  const recoveredMs = Date.now() - closed;
  lead = await h.until(async () => { const l = await leaders(rest); return l.length === 1 && l; },
    { what: 'one new leader' });
  assert.equal((await openStreams(rest)).length, 1, 'one stream open to the counter after the leader left');
  const takeovers = (await Promise.all(rest.map(streams))).flat().length;

  // A follower's own beacon: closing one lowers live at once, the leader's stream unchanged.
  const follower = restAlpha.find(p => p !== lead[0]);
  const oneClosed = Date.now();
  await follower.close();
  await c.waitCount('alpha', n => n.live === ALPHA - goneAlpha - 1 && n.total === ALPHA, { timeout: 2500 });
  const followerMs = Date.now() - oneClosed;
  const left = rest.filter(p => p !== follower);
  await allShow(left.filter(p => alpha.includes(p)), s => s.live === ALPHA - goneAlpha - 1, { timeout: 2500 });

  // A new tab after the leader change: one more view and one more live reader.
  const late = await context.newPage();
  await late.goto(`${origin}/posts/alpha.html`);
  const liveNow = ALPHA - goneAlpha;
  await c.waitCount('alpha', n => n.live === liveNow && n.total === ALPHA + 1, { timeout: 5000 });
  await allShow([late, ...left.filter(p => alpha.includes(p))], s => s.live === liveNow && s.total === ALPHA + 1);
  assert.equal((await leaders([...left, late])).length, 1, 'still one stream');
  assert.equal((await openStreams([...left, late])).length, 1, 'still one stream open to the counter');
  assert.deepEqual(await c.count('beta'), { live: BETA - goneBeta, total: BETA }, 'beta: no view counted twice');
  assert.deepEqual(await c.count('alpha'), { live: liveNow, total: ALPHA + 1 }, 'alpha: no view counted twice');

  return `${ALPHA} tabs on alpha + ${BETA} on beta (HTTP/1.1): loaded in ${loadedMs} ms, all counted live ` +
    `and showing alpha ${ALPHA}/${ALPHA}, beta ${BETA}/${BETA} ${liveMs} ms after the first tab opened; ` +
    `one stream open to the counter (leader = tab ${leaderIndex + 1}, ${createdBefore} EventSource created in all); ` +
    `closing the leader + 2 followers: server and every remaining tab at alpha ${ALPHA - goneAlpha}, ` +
    `beta ${BETA - goneBeta} (totals unchanged) within ${recoveredMs} ms, one new leader (${takeovers} stream` +
    `${takeovers === 1 ? '' : 's'} opened by the remaining tabs); closing one more follower: server live -1 after ` +
    `${followerMs} ms; a new tab: alpha total ${ALPHA}→${ALPHA + 1}, live ${liveNow}, still one stream`;
}

test(`many tabs on plain HTTP/1.1: ${ALPHA + BETA} tabs share one stream, all show live numbers and are counted live`, async t => {
  h.report(t, await manyTabs(ctx, blog.origin, counter));
});

test('back/forward with two tabs: a restore rejoins through the leader (or leads again) without a new view, and both pages enter the back/forward cache', async t => {
  // The previous test's tabs go first: these two are the browser's only tabs.
  for (const p of ctx.pages()) await p.close();
  const base = { alpha: await counter.count('alpha'), beta: await counter.count('beta') };
  const leader = await ctx.newPage();
  await leader.goto(blog.url('/posts/alpha.html'));
  await counter.waitCount('alpha', n => n.live === 1);
  const other = await ctx.newPage();
  await other.goto(blog.url('/posts/alpha.html'));
  await counter.waitCount('alpha', n => n.live === 2 && n.total === base.alpha.total + 2);
  assert.deepEqual(await h.streamHolders([leader, other]), [leader], 'the first tab leads');

  const restored = async (page, file) => {
    const ps = await h.until(() => page.evaluate(f => location.pathname.endsWith(f) && window.__e2e.pageshows.at(-1), file),
      { what: `the navigation to ${file}` });
    const why = await page.evaluate(() => JSON.stringify(performance.getEntriesByType('navigation')[0].notRestoredReasons));
    assert.equal(ps.persisted, true, `${file} not restored from bfcache: ${why}`);
  };
  const seen = [];
  // Each tab in turn: to beta by a link (a new page view), back to alpha, forward to beta.
  for (const [who, page] of [['follower', other], ['leader', leader]]) {
    const beta = (await counter.count('beta')).total;
    await page.click('#next');
    await page.waitForURL('**/posts/beta.html');
    await counter.waitCount('beta', n => n.live === 1 && n.total === beta + 1);
    await counter.waitCount('alpha', n => n.live === 1);
    await page.goBack({ waitUntil: 'commit' });
    await restored(page, 'alpha.html');
    await counter.waitCount('alpha', n => n.live === 2);
    await counter.waitCount('beta', n => n.live === 0);
    await page.goForward({ waitUntil: 'commit' });
    await restored(page, 'beta.html');
    await counter.waitCount('beta', n => n.live === 1);
    await counter.waitCount('alpha', n => n.live === 1);
    await page.goBack({ waitUntil: 'commit' });
    await restored(page, 'alpha.html');
    await counter.waitCount('alpha', n => n.live === 2);
    await Promise.all([leader, other].map(p => h.waitShown(p, s => s.live === 2)));
    seen.push(`${who}: alpha→beta (link)→back→forward→back, every restore from bfcache`);
  }
  assert.deepEqual(await counter.count('alpha'), { live: 2, total: base.alpha.total + 2 }, 'alpha: the restores counted no view');
  assert.deepEqual(await counter.count('beta'), { live: 0, total: base.beta.total + 2 }, 'beta: one view per link followed');
  h.report(t, `${seen.join('; ')}; alpha total +2 (the two tabs' first loads), beta total +2 (one per link ` +
    `followed), both tabs live 2 on alpha at the end`);
});

test(`an insecure-context blog (plain http on a real host name): the same ${ALPHA + BETA} tabs elect their leader over the channel and share one stream`, async t => {
  // blog.test resolves to 127.0.0.1 but, unlike 127.0.0.1 or localhost, is not "potentially
  // trustworthy": isSecureContext is false and navigator.locks is undefined there, as on any
  // http:// blog, while BroadcastChannel is there. The election must not need Web Locks.
  const b2 = await h.launchBrowser({ args: ['--host-resolver-rules=MAP blog.test 127.0.0.1'] });
  const origin = `http://blog.test:${blog.port}`;
  const c2 = await h.startCounter({ allowOrigins: [origin] });
  try {
    blog.counter = c2;
    const context = await h.newContext(b2);
    const probe = await context.newPage();
    await probe.goto(`${origin}/?notag`);
    const env = await probe.evaluate(() => ({ secure: isSecureContext, locks: 'locks' in navigator, channel: typeof BroadcastChannel }));
    assert.deepEqual(env, { secure: false, locks: false, channel: 'function' });
    await probe.close();
    const figures = await manyTabs(context, origin, c2);
    await context.close();
    h.report(t, `isSecureContext false, no navigator.locks: ${figures}`);
  } finally {
    blog.counter = counter;
    await b2.close();
    await c2.stop();
  }
});

test('without BroadcastChannel (Safari before 15.4), each tab leads itself: still counted, one stream per tab', async t => {
  const context = await h.newContext(browser);
  await context.addInitScript(() => { delete window.BroadcastChannel; });
  const before = await counter.count('gamma');
  try {
    const pages = [];
    for (let i = 0; i < 3; i++) {
      const p = await context.newPage();
      await p.goto(blog.url('/posts/gamma.html'));
      pages.push(p);
    }
    assert.equal(await pages[0].evaluate(() => typeof BroadcastChannel), 'undefined');
    await counter.waitCount('gamma', n => n.live === before.live + 3 && n.total === before.total + 3);
    await allShow(pages, s => s.live === before.live + 3 && s.total === before.total + 3);
    assert.equal((await openStreams(pages)).length, 3, 'one stream per tab');
    await pages[0].close();
    await counter.waitCount('gamma', n => n.live === before.live + 2 && n.total === before.total + 3, { timeout: 2500 });
    await allShow(pages.slice(1), s => s.live === before.live + 2);
    h.report(t, `no BroadcastChannel: 3 tabs, 3 streams (each its own leader, on a channel to nobody), all show ` +
      `live 3 / total 3; closing one: live 2, total 3. As /connect did, including its six-streams limit on HTTP/1.1`);
  } finally {
    await context.close();
  }
});
