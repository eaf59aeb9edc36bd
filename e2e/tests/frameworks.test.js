'use strict';
// Issue 21: the framework examples in examples/ (Next.js App Router, Docusaurus, VitePress,
// SvelteKit), each built as it is by its own CLI from its pinned package (h.buildExample, all
// four at once), served as static files, and driven in Chromium. counter.js gets no glue from
// them: it follows each router by itself (history, the counter elements the router renders).
// Each: post alpha → beta by the router's link → back, no reload; a second tab on alpha; the
// numbers still shown once the page has hydrated, and no error in the console; one stream per
// browser; closing both tabs brings live to 0; totals count each page view once.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

/** Hydrated: React has attached its fiber to the element; Vue has mounted its app. */
const reactHydrated = () => Object.keys(document.querySelector('[data-viewcounter=live]')).some(k => k.startsWith('__reactFiber'));
const SITES = {
  nextjs: { alpha: '/posts/alpha/', hydrated: reactHydrated },
  docusaurus: { alpha: '/posts/alpha', hydrated: reactHydrated },
  vitepress: { alpha: '/posts/alpha.html', hydrated: () => !!document.querySelector('#app').__vue_app__ },
  sveltekit: { alpha: '/posts/alpha/' },
};

let browser, counter, ctx, buildMs;
const blogs = {};

before(async () => {
  const started = Date.now();
  const names = Object.keys(SITES);
  const dirs = await Promise.all(names.map(h.buildExample));
  buildMs = Date.now() - started;
  browser = await h.launchBrowser();
  for (const [i, name] of names.entries()) {
    blogs[name] = await h.startBlog({ counter: 'http://127.0.0.1:9', extra: { '/': dirs[i] } });
  }
});
after(async () => {
  await browser?.close();
  await Promise.all(Object.values(blogs).map(b => b.close()));
});
beforeEach(async () => {
  counter = await h.startCounter({ allowOrigins: Object.values(blogs).map(b => b.origin) });
  for (const blog of Object.values(blogs)) blog.counter = counter;
  ctx = await h.newContext(browser);
});
afterEach(async () => {
  await ctx?.close();
  await counter?.stop();
});

const path = page => page.evaluate(() => location.pathname);

async function frameworkFlow(name) {
  const site = blogs[name];
  const { alpha, hydrated } = SITES[name];
  // Errors thrown in the pages or logged to their console (a hydration mismatch is one);
  // a missing favicon is not ours.
  const errors = [];
  const open = async () => {
    const page = await ctx.newPage();
    page.on('pageerror', e => errors.push(`pageerror: ${e.message}`));
    page.on('console', m => m.type() === 'error' && !/^Failed to load resource/.test(m.text()) && errors.push(`console: ${m.text()}`));
    await page.goto(site.url(alpha));
    return page;
  };

  const a = await open();
  await counter.waitCount('alpha', n => n.live === 1 && n.total === 1);
  await h.waitShown(a, s => s.live === 1 && s.total === 1);
  const marker = await a.evaluate(() => window.__e2e.marker);

  // alpha → beta by the framework's own link: beta counted once and shown, alpha left.
  let started = Date.now();
  await a.click('#next');
  await h.until(async () => /beta/.test(await path(a)), { what: 'the router to show beta' });
  await counter.waitCount('beta', n => n.live === 1 && n.total === 1);
  await counter.waitCount('alpha', n => n.live === 0 && n.total === 1);
  await h.waitShown(a, s => s.live === 1 && s.total === 1);
  const forwardMs = Date.now() - started;

  // Back to alpha: a new page view, counted once.
  started = Date.now();
  await a.goBack({ waitUntil: 'commit' });
  await h.until(async () => /alpha/.test(await path(a)), { what: 'the router to show alpha again' });
  await counter.waitCount('alpha', n => n.live === 1 && n.total === 2);
  await counter.waitCount('beta', n => n.live === 0 && n.total === 1);
  await h.waitShown(a, s => s.live === 1 && s.total === 2);
  const backMs = Date.now() - started;
  assert.equal(await a.evaluate(() => window.__e2e.marker), marker, 'no reload happened');

  // A second tab on alpha: both show it, and the numbers are still there once it hydrated.
  const b = await open();
  await counter.waitCount('alpha', n => n.live === 2 && n.total === 3);
  await h.waitShown(b, s => s.live === 2 && s.total === 3);
  await h.waitShown(a, s => s.live === 2 && s.total === 3);
  await b.waitForLoadState('networkidle');
  if (hydrated) await h.until(() => b.evaluate(hydrated), { what: `${name} to hydrate` });
  assert.deepEqual(await h.shown(b), { live: 2, total: 3 }, 'the numbers stay after hydration');

  // One stream for the browser, in one tab.
  const holders = await h.streamHolders([a, b]);
  const created = (await Promise.all([a, b].map(p => p.evaluate(() => window.__e2e.es.length)))).reduce((x, y) => x + y);
  assert.equal(holders.length, 1, 'one tab holds the stream');
  assert.equal(created, 1, 'one EventSource created in the browser');

  // Closing brings live to 0; every page view counted once.
  await b.close();
  await counter.waitCount('alpha', n => n.live === 1);
  await h.waitShown(a, s => s.live === 1 && s.total === 3);
  await a.close();
  await counter.waitCount('alpha', n => n.live === 0);
  assert.deepEqual(await counter.count('alpha'), { live: 0, total: 3 });
  assert.deepEqual(await counter.count('beta'), { live: 0, total: 1 });
  assert.deepEqual(errors, [], 'no error in the pages');
  return `alpha→beta shown and counted within ${forwardMs} ms, back to alpha within ${backMs} ms, no reload; ` +
    `a second tab showed 2/3 and kept it after hydrating; 1 EventSource; closed: live 0; totals alpha 3, beta 1; no console error`;
}

test('Next.js (App Router) example: the script follows the router, keeps its numbers through hydration and counts each view once', async t => {
  h.report(t, `four examples built at once in ${buildMs} ms; ` + (await frameworkFlow('nextjs')));
});

test('Docusaurus example: the script follows the router, keeps its numbers through hydration and counts each view once', async t => {
  h.report(t, await frameworkFlow('docusaurus'));
});

test('VitePress example: the script follows the router, keeps its numbers through hydration and counts each view once', async t => {
  h.report(t, await frameworkFlow('vitepress'));
});

test('SvelteKit example: the script follows the router, keeps its numbers through hydration and counts each view once', async t => {
  h.report(t, await frameworkFlow('sveltekit'));
});
