'use strict';
// Issue 4, point 1: the server restarts (same port, same db) while tabs are open. The pages
// must reconnect by themselves, live must recover, and no page view may be counted twice. The
// three tabs share the leader tab's stream; its reconnect re-joins all three readers.
// Two restarts: a graceful one (SIGTERM: the server ends each stream with a random `retry:`)
// and a crash (SIGKILL: the connections just drop).

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const h = require('../lib/harness');

let browser, blog, counter, ctx;
const dir = h.tempDir('restart');
const pages = [];
/** What each restart showed, asserted by the tests below. */
const outcome = {};

async function restart(kind) {
  const before = { alpha: await counter.count('alpha'), beta: await counter.count('beta') };
  const port = counter.port;
  // The three tabs share one stream, held by the leader tab.
  const errors = async () => (await Promise.all(pages.map(p => p.evaluate(() => window.__e2e.es.reduce((n, r) => n + r.errors, 0))))).reduce((a, b) => a + b);
  const errorsBefore = await errors();
  const down = Date.now();
  await counter.stop(kind === 'graceful' ? 'SIGTERM' : 'SIGKILL');
  const stopped = Date.now();
  // The leader sees the drop (its stream ends) before the server is back.
  await h.until(async () => (await errors()) > errorsBefore, { what: 'the shared stream to end' });
  await h.sleep(1000); // the server stays down a moment, as a real restart does
  counter = await h.startCounter({ dir, port, db: counter.db, allowOrigins: [blog.origin] });
  blog.counter = counter;
  const up = Date.now();
  await counter.waitCount('alpha', n => n.live === 2, { timeout: 20000 });
  await counter.waitCount('beta', n => n.live === 1, { timeout: 20000 });
  const recovered = Date.now() - up;
  for (const p of pages.slice(0, 2)) await h.waitShown(p, s => s.live === 2, { timeout: 5000 });
  await h.waitShown(pages[2], s => s.live === 1, { timeout: 5000 });
  await h.sleep(500); // late duplicates, if any, would land now
  const after = { alpha: await counter.count('alpha'), beta: await counter.count('beta') };
  const es = await Promise.all(pages.map(p => p.evaluate(() => window.__e2e.es.map(r => ({ opens: r.opens, errors: r.errors, errorState: r.errorState })))));
  outcome[kind] = { before, after, stopMs: stopped - down, downMs: up - down, recovered, es };
}

before(async () => {
  browser = await h.launchBrowser();
  blog = await h.startBlog({ counter: 'http://127.0.0.1:9' });
  counter = await h.startCounter({ dir, allowOrigins: [blog.origin] });
  blog.counter = counter;
  ctx = await h.newContext(browser);
  for (const slug of ['alpha', 'alpha', 'beta']) {
    const p = await ctx.newPage();
    await p.goto(blog.url(`/posts/${slug}.html`));
    pages.push(p);
  }
  await counter.waitCount('alpha', n => n.live === 2 && n.total === 2);
  await counter.waitCount('beta', n => n.live === 1 && n.total === 1);
  await restart('graceful');
  await restart('crash');
});
after(async () => {
  await ctx?.close();
  await browser?.close();
  await counter?.stop();
  await blog?.close();
});

test('server restart while tabs are open: the pages reconnect and live recovers', async t => {
  for (const kind of ['graceful', 'crash']) {
    const o = outcome[kind];
    assert.ok(o, `${kind} restart ran`);
    assert.equal(o.after.alpha.live, 2);
    assert.equal(o.after.beta.live, 1);
    h.report(t, `${kind} (${kind === 'graceful' ? 'SIGTERM' : 'SIGKILL'}): server down ${o.downMs} ms; ` +
      `live back to alpha 2, beta 1 ${o.recovered} ms after it was up again; totals before ` +
      `alpha ${o.before.alpha.total}, beta ${o.before.beta.total} → after alpha ${o.after.alpha.total}, ` +
      `beta ${o.after.beta.total}; EventSource objects per page (so far): ${o.es.map(l => l.length).join('/')} ` +
      `(errors ${o.es.map(l => l.map(r => r.errors).join('+') || '-').join('/')}): the leader tab's one shared stream for all three`);
  }
});

test('server restart while tabs are open: no view is counted twice', async () => {
  for (const kind of ['graceful', 'crash']) {
    const o = outcome[kind];
    assert.deepEqual(
      { alpha: o.after.alpha.total, beta: o.after.beta.total },
      { alpha: o.before.alpha.total, beta: o.before.beta.total },
      `${kind} restart: totals after reconnecting (left) vs before the restart (right)`,
    );
  }
});
