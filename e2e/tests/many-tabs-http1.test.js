'use strict';
// Issue 4, point 2 (not built yet): 10 tabs of the blog with the counter on a plain-HTTP/1.1
// origin. Chromium opens at most 6 connections per origin, and each tab's EventSource holds
// one, so today tabs 7-10 wait. Marked `todo` until the shared-stream design lands: the test
// runs and reports what happens, without failing the run. Drop the `todo` to enable it.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

const TABS = 10;
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

test(`many tabs on plain HTTP/1.1: all ${TABS} tabs show live numbers and are counted live (issue 4 point 2, expected to fail until the shared stream lands)`, {
  todo: 'issue 4 point 2: one stream per tab starves tabs beyond the 6 connections per origin',
}, async t => {
  const pages = [];
  for (let i = 0; i < TABS; i++) {
    const p = await ctx.newPage();
    await p.goto(blog.url('/posts/alpha.html'), { waitUntil: 'domcontentloaded' });
    pages.push(p);
  }
  let ok = true;
  await counter.waitCount('alpha', n => n.live === TABS, { timeout: 5000 }).catch(() => { ok = false; });
  const server = await counter.count('alpha');
  const tabs = await Promise.all(pages.map(p => h.shown(p)));
  const showing = tabs.filter(s => Number.isFinite(s.live)).length;
  h.report(t, `now: server live ${server.live}, total ${server.total} of ${TABS} tabs; ${showing} tabs ` +
    `show numbers, ${TABS - showing} still show the placeholder after 5 s` +
    (ok ? '' : ' (the other streams wait for one of the 6 connections)'));
  assert.equal(server.live, TABS, 'every tab counted live');
  assert.equal(showing, TABS, 'every tab shows numbers');
});
