'use strict';
// Issue 13, points 1 and 3 (the dashboard's part): the owner logs in to /admin through nginx
// (deploy/nginx/viewcounter-http.conf, so the server sees a proxied, non-loopback owner and
// asks for the token), sees a reader arrive in the table within a second of a post opening in
// another page and leave when it closes, a chart of the days imported before the server
// started, and the pulse (issue 20: readers minute by minute, live). Screenshots at 1280 px and 375 px (light and dark) go to e2e/artifacts/.

const { test, before, after } = require('node:test');
const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const { execFileSync } = require('node:child_process');
const h = require('../lib/harness');

const TOKEN = 'e2e-dashboard-token-0123456789';
const ARTIFACTS = path.join(h.E2E, 'artifacts');
/** The contract: a reader arriving shows on the dashboard within a second. */
const ARRIVAL_MS = 1000;

/** `YYYY-MM-DD`, `back` days before today in UTC (the server's default --timezone). */
const dayBack = back => new Date(Date.now() - back * 86400e3).toISOString().slice(0, 10);
/** Views per day imported before the server starts: [slug, days back, views]. */
const HISTORY = [
  ['alpha', 1, 5], ['alpha', 2, 8], ['alpha', 10, 3], ['alpha', 40, 12],
  ['beta', 3, 4], ['beta', 200, 7],
];

let browser, blog, counter, nginx, ctx, dash;

before(async () => {
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  const dir = h.tempDir('dashboard');
  const db = path.join(dir, 'viewcounter.redb');
  const csv = path.join(dir, 'daily.csv');
  fs.writeFileSync(csv, 'slug,day,views\n' + HISTORY.map(([s, back, v]) => `${s},${dayBack(back)},${v}`).join('\n') + '\n');
  const imported = execFileSync(h.BIN, ['import', '--db', db, csv], { encoding: 'utf8' });
  assert.match(imported, /^import into the file .*: /, imported);

  browser = await h.launchBrowser();
  blog = await h.startBlog({ counter: 'http://127.0.0.1:9' });
  counter = await h.startCounter({ dir, db, allowOrigins: [blog.origin], args: ['--admin-token', TOKEN] });
  blog.counter = counter.url;
  nginx = await h.startNginx({ recipe: 'viewcounter-http.conf', counter });
  ctx = await h.newContext(browser, { viewport: { width: 1280, height: 900 } });
  dash = await ctx.newPage();
});
after(async () => {
  await ctx?.close();
  await browser?.close();
  await nginx?.stop();
  await counter?.stop();
  await blog?.close();
});

/** What the dashboard's table shows for a post: {live, today, total}, or null. */
const rowOf = slug => dash.evaluate(s => {
  const tr = [...document.querySelectorAll('#rows tr')].find(r => r.dataset.slug === s);
  if (!tr) return null;
  const n = k => Number(tr.querySelector(`td.${k}`).textContent.replace(/[^\d]/g, ''));
  return { live: n('live'), today: n('today'), total: n('total') };
}, slug);

/** The chart's bars: day -> views. */
const bars = () => dash.evaluate(() => Object.fromEntries(
  [...document.querySelectorAll('#chart rect.day')].map(r => [r.dataset.day, Number(r.dataset.views)])));

test('login through nginx: a wrong token is told so, the right one sets a strict HttpOnly cookie', async t => {
  const res = await dash.goto(`${nginx.url}/admin`);
  assert.equal(res.status(), 200);
  assert.ok(await dash.isVisible('#token'), 'the login form');

  await dash.fill('#token', 'not-the-token');
  const [wrong] = await Promise.all([dash.waitForNavigation(), dash.click('button[type=submit]')]);
  assert.equal(wrong.status(), 401);
  assert.match(await dash.textContent('#message'), /Wrong token/);

  await dash.fill('#token', TOKEN);
  await Promise.all([dash.waitForNavigation(), dash.click('button[type=submit]')]);
  assert.equal(new URL(dash.url()).pathname, '/admin');
  await dash.waitForSelector('#rows tr');
  const [cookie] = (await ctx.cookies(nginx.url)).filter(c => c.name === 'viewcounter_admin');
  assert.ok(cookie, 'a session cookie');
  assert.equal(cookie.httpOnly, true);
  assert.equal(cookie.sameSite, 'Strict');
  assert.equal(cookie.path, '/');
  assert.equal(cookie.secure, false, 'plain HTTP through nginx: not Secure');
  assert.equal(await dash.evaluate(() => document.cookie), '', 'invisible to scripts');
  const rows = await dash.$$eval('#rows tr', trs => trs.length);
  assert.equal(rows, h.SLUGS.length, 'every listed post has a row');
  const streams = await dash.evaluate(() => window.__e2e.es.map(r => r.url));
  assert.deepEqual(streams.map(u => new URL(u, dash.url()).pathname), ['/api/v1/admin/stream'], 'one stream');
  h.report(t, `login through nginx: wrong token 401 with its message, then 303 and the dashboard; ` +
    `cookie HttpOnly, SameSite=Strict, Path=/, not Secure; ${rows} rows; one EventSource`);
});

test('a reader shows in the table within 1 s of opening a post, and leaves when it closes', async t => {
  await h.until(async () => (await rowOf('gamma'))?.live === 0, { what: 'gamma row at 0' });
  const shiftsBefore = await dash.evaluate(() => window.__e2e.shifts.length);
  const pollsBefore = await dash.evaluate(() => performance.getEntriesByType('resource').length);

  const reader = await ctx.newPage();
  const opened = Date.now();
  await reader.goto(blog.url('/posts/gamma.html'));
  const loaded = Date.now();
  await h.until(async () => (await rowOf('gamma'))?.live === 1, { what: 'gamma live 1 on the dashboard', interval: 10, timeout: 5000 });
  const shown = Date.now();
  const row = await rowOf('gamma');
  assert.deepEqual(row, { live: 1, today: 1, total: 1 });
  const top = await dash.$eval('#rows tr', tr => tr.dataset.slug);
  assert.equal(top, 'gamma', 'sorted by reading now');
  // The reader's own stream opens after its page's load event (and its tab election).
  const streamAt = await reader.evaluate(() => performance.timeOrigin + window.__e2e.es[0].createdAt);
  const fromOpen = shown - opened;
  const fromStream = Math.round(shown - streamAt);
  assert.ok(fromOpen < ARRIVAL_MS, `the reader showed ${fromOpen} ms after the post was opened`);

  const closed = Date.now();
  await reader.close();
  await h.until(async () => (await rowOf('gamma'))?.live === 0, { what: 'gamma live 0', interval: 10, timeout: 2500 });
  const leftMs = Date.now() - closed;
  assert.deepEqual(await rowOf('gamma'), { live: 0, today: 1, total: 1 });

  const shifts = await dash.evaluate(n => window.__e2e.shifts.slice(n), shiftsBefore);
  assert.deepEqual(shifts, [], 'no layout shift as numbers move');
  const fetched = await dash.evaluate(n => performance.getEntriesByType('resource').slice(n).map(e => e.name), pollsBefore);
  assert.deepEqual(fetched, [], 'no request while the table updates: no polling');
  h.report(t, `dashboard showed the reader ${fromOpen} ms after the post page was opened ` +
    `(load ${loaded - opened} ms, its stream created ${fromOpen - fromStream} ms in, ${fromStream} ms before the row moved); ` +
    `live back to 0 ${leftMs} ms after the page closed; 0 layout shifts, 0 requests`);
});

test('the chart shows the imported days, for all posts and for one', async t => {
  const sum30 = {};
  for (const [, back, views] of HISTORY) if (back < 30) sum30[dayBack(back)] = (sum30[dayBack(back)] || 0) + views;
  await h.until(async () => Object.keys(await bars()).length === 30, { what: '30 bars' });
  const all = await bars();
  for (const [day, views] of Object.entries(sum30)) assert.equal(all[day], views, `all posts on ${day}`);
  assert.equal(all[dayBack(0)], 1, 'today: the reader of the test before');

  await dash.click('.ranges button[data-days="90"]');
  await h.until(async () => Object.keys(await bars()).length === 90, { what: '90 bars' });
  assert.equal((await bars())[dayBack(40)], 12);

  await dash.click('#rows tr[data-slug="beta"]');
  await h.until(async () => (await dash.textContent('#chart-what')) === 'beta', { what: 'the chart to show beta' });
  await h.until(async () => (await bars())[dayBack(1)] === 0, { what: "beta's own days" });
  const beta = await bars();
  assert.equal(beta[dayBack(3)], 4);
  await dash.click('.ranges button[data-days="365"]');
  await h.until(async () => Object.keys(await bars()).length === 365, { what: '365 bars' });
  assert.equal((await bars())[dayBack(200)], 7);
  const shown = Object.values(await bars()).filter(v => v > 0).length;

  await dash.click('#show-all-posts');
  await h.until(async () => (await dash.textContent('#chart-what')) === 'all posts', { what: 'all posts again' });
  await dash.click('.ranges button[data-days="30"]');
  await h.until(async () => Object.keys(await bars()).length === 30, { what: '30 bars again' });
  h.report(t, `chart: 30 d all posts ${JSON.stringify(sum30)} as imported; 90 d shows day -40 (12); ` +
    `beta over 365 d: ${shown} days with views (day -200: 7)`);
});

/** The pulse as drawn: minutes in the curve, readers of the minute under way, what it shows. */
const pulse = () => dash.evaluate(() => {
  const area = document.querySelector('#pulse path.pulse-area');
  const dot = document.querySelector('#pulse circle.pulse-now');
  return {
    minutes: area ? Number(area.dataset.minutes) : 0,
    now: dot ? Number(dot.dataset.live) : null,
    what: document.getElementById('pulse-what').textContent,
  };
});

test('the pulse: 24 h of minutes, the minute under way moved by the stream, a post\'s own on click, each closed minute pushed', async t => {
  await h.until(async () => (await pulse()).minutes === 1440, { what: 'the 24 h pulse drawn' });
  const requestsBefore = await dash.evaluate(() => performance.getEntriesByType('resource').length);
  const shiftsBefore = await dash.evaluate(() => window.__e2e.shifts.length);

  const reader = await ctx.newPage();
  const opened = Date.now();
  await reader.goto(blog.url('/posts/alpha.html'));
  // (The minute under way may already hold 1: the reader of an earlier test.)
  await h.until(async () => (await dash.textContent('#pulse-now')) === '1 reading now' && (await pulse()).now >= 1,
    { what: 'the reader on the pulse', interval: 10, timeout: 5000 });
  const shownMs = Date.now() - opened;
  const fetched = await dash.evaluate(n => performance.getEntriesByType('resource').slice(n).map(e => e.name), requestsBefore);
  assert.deepEqual(fetched, [], 'the pulse moved with the stream: no request');

  await dash.click('#rows tr[data-slug="alpha"]');
  await h.until(async () => { const p = await pulse(); return p.what === 'alpha' && p.minutes === 1440 && p.now === 1; }, { what: "alpha's own pulse" });
  await dash.click('#rows tr[data-slug="alpha"]');
  await h.until(async () => (await pulse()).what === 'all posts', { what: 'all posts again' });

  // The minute under way closes (at most a minute away): the server pushes it, the curve moves on.
  const minuteStart = Date.now();
  const closing = await dash.evaluate(() => new Promise(resolve => {
    // The dashboard's own EventSource is private: a second one on the same stream sees the same events.
    const es = new EventSource('api/v1/admin/stream');
    es.addEventListener('pulse', e => { es.close(); resolve(JSON.parse(e.data)); });
  }));
  const waitedMs = Date.now() - minuteStart;
  assert.ok(closing.live >= 1, `the closed minute had the reader: ${JSON.stringify(closing)}`);
  assert.match(closing.at, /^\d{4}-\d\d-\d\dT\d\d:\d\d:00\+00:00$/);
  await h.until(async () => (await pulse()).now === 1, { what: 'the next minute under way' });
  assert.equal((await pulse()).minutes, 1440, 'still 24 h');
  // Shifts right after a click (the row selected) are the page answering its user, which
  // Layout Instability leaves out of its score; the pulse moving by itself may shift nothing.
  const shifts = await dash.evaluate(n => window.__e2e.shifts.slice(n).filter(s => !s.hadRecentInput), shiftsBefore);
  assert.deepEqual(shifts, [], 'no layout shift as the pulse moves');
  await reader.close();
  h.report(t, `pulse: 1440 minutes drawn; a reader on it ${shownMs} ms after the post opened, no request; ` +
    `alpha's own on click; a closed minute pushed ${waitedMs} ms later (${JSON.stringify(closing)}); 0 layout shifts`);
});

/** A post's reading-time and peak cells as shown: {read: "1m 12s" | "–", peak}. */
const readPeakOf = slug => dash.evaluate(s => {
  const tr = [...document.querySelectorAll('#rows tr')].find(r => r.dataset.slug === s);
  return tr && { read: tr.querySelector('td.read').textContent, peak: Number(tr.querySelector('td.peak').textContent.replace(/[^\d]/g, '')) };
}, slug);
/** "1m 12s" or "45s" in seconds; null for anything else ("–"). */
const seconds = text => {
  const m = /^(?:(\d+)m )?(\d+)s$/.exec(text);
  return m ? Number(m[1] || 0) * 60 + Number(m[2]) : null;
};
/** The reading-time histogram as drawn: [{start, reads}] per bucket. */
const buckets = () => dash.evaluate(() => [...document.querySelectorAll('#reads rect.bucket')]
  .map(r => ({ start: Number(r.dataset.start), reads: Number(r.dataset.reads) })));

test('the peak column shows the most readers at once; a reader who leaves after a visible time shows in the median column at once, no reload, and in the histogram', async t => {
  await h.until(async () => (await readPeakOf('beta'))?.read === '–', { what: 'beta without a reading time' });
  assert.equal((await readPeakOf('beta')).peak, 0);
  const requestsBefore = await dash.evaluate(() => performance.getEntriesByType('resource').length);
  const streamsBefore = await dash.evaluate(() => window.__e2e.es.length);

  const readers = [await ctx.newPage(), await ctx.newPage()];
  await Promise.all(readers.map(r => r.goto(blog.url('/posts/beta.html'))));
  await h.until(async () => (await readPeakOf('beta')).peak === 2, { what: 'peak 2 on the dashboard', interval: 10, timeout: 5000 });
  // Both showings are counted from here: their reading time runs from their views, which
  // the script sends after load and idle (up to 2 s after the page opened on a busy machine;
  // timed from the page's opening, one reading once fell in the 2 s bucket).
  const opened = Date.now();
  const fetched = await dash.evaluate(n => performance.getEntriesByType('resource').slice(n).map(e => e.name), requestsBefore);
  assert.deepEqual(fetched, [], 'the peak came with the stream: no request');
  // The reading time under test is this long: both pages stay visible for it.
  const READ_MS = 3500;
  await new Promise(resolve => setTimeout(resolve, READ_MS - (Date.now() - opened)));
  await Promise.all(readers.map(r => r.close()));
  const closed = Date.now();
  // The readings move the median over the open stream: no reload, no request, no new stream.
  await h.until(async () => seconds((await readPeakOf('beta'))?.read ?? '') !== null, { what: 'beta median shown without a reload', interval: 10, timeout: 5000 });
  const medianMs = Date.now() - closed;
  await h.until(async () => (await rowOf('beta'))?.live === 0, { what: 'beta readers gone' });
  const { read, peak } = await readPeakOf('beta');
  assert.ok(seconds(read) >= 3 && seconds(read) < 60, `median ${read} for readings of ${READ_MS} ms`);
  assert.equal(peak, 2, 'the peak stays once they leave');
  // A selected post's pulse is asked once a minute (see README): the one request allowed.
  const asked = await dash.evaluate(n => performance.getEntriesByType('resource').slice(n).map(e => e.name), requestsBefore);
  assert.deepEqual(asked.filter(url => !new URL(url).pathname.startsWith('/api/v1/pulse/')), [], 'the median came with the stream');
  assert.equal(await dash.evaluate(() => window.__e2e.es.length), streamsBefore, 'the same stream, no reconnect');

  // A fresh snapshot says the same.
  await dash.reload();
  await h.until(async () => seconds((await readPeakOf('beta'))?.read ?? '') !== null, { what: 'beta median after a reload', timeout: 5000 });
  assert.deepEqual(await readPeakOf('beta'), { read, peak: 2 }, 'the same from storage after the reload');

  await dash.click('#rows tr[data-slug="beta"]');
  await h.until(async () => (await buckets()).length > 0, { what: "beta's reading-time histogram" });
  const drawn = await buckets();
  const read2 = drawn.filter(b => b.reads > 0);
  assert.equal(read2.reduce((n, b) => n + b.reads, 0), 2, `two readings in the histogram: ${JSON.stringify(read2)}`);
  for (const b of read2) assert.ok(b.start >= 3 && b.start < 8, `bucket starting at ${b.start} s`);
  assert.equal(await dash.isVisible('#reads-panel'), true);
  h.report(t, `peak 2 with the stream, no request; median ${read} with the stream ${medianMs} ms after the readers closed, the same after a reload; ` +
    `histogram ${JSON.stringify(read2)} over ${drawn.length} buckets`);
});

test('screenshots at 1280 px and 375 px, light and dark; nothing wider than the phone', async t => {
  const shots = [];
  const shoot = async (name, width, colorScheme) => {
    await dash.setViewportSize({ width, height: width > 600 ? 900 : 812 });
    await dash.emulateMedia({ colorScheme });
    await h.until(async () => Object.keys(await bars()).length === 30, { what: 'the chart drawn' });
    // The chart is redrawn a moment after a resize: wait for the drawing of this width.
    await h.until(() => dash.evaluate(() => {
      const box = document.getElementById('chart');
      const svg = box.querySelector('svg');
      return svg && Number(svg.getAttribute('viewBox').split(' ')[2]) === Math.max(box.clientWidth, 280);
    }), { what: `the chart drawn for ${width} px` });
    const file = path.join(ARTIFACTS, `${name}.png`);
    await dash.screenshot({ path: file, fullPage: true });
    shots.push(path.relative(h.ROOT, file));
    return dash.evaluate(() => ({
      scroll: document.documentElement.scrollWidth,
      table: document.querySelector('#posts').getBoundingClientRect().width,
      bg: getComputedStyle(document.body).backgroundColor,
    }));
  };
  const wide = await shoot('dashboard-1280', 1280, 'light');
  const phone = await shoot('dashboard-375', 375, 'light');
  const dark = await shoot('dashboard-375-dark', 375, 'dark');
  await shoot('dashboard-1280-dark', 1280, 'dark');
  assert.ok(phone.scroll <= 375, `no horizontal scroll on a phone (${phone.scroll} px)`);
  assert.ok(phone.table <= 375, `the table fits (${phone.table} px)`);
  assert.notEqual(dark.bg, phone.bg, 'dark mode changes the colours');
  assert.ok(wide.scroll <= 1280);
  for (const f of shots) assert.ok(fs.statSync(path.join(h.ROOT, f)).size > 10_000, f);
  h.report(t, `screenshots: ${shots.join(', ')}; at 375 px the page is ${phone.scroll} px wide; ` +
    `background light ${phone.bg}, dark ${dark.bg}`);
});

test('cluster mode (a real redis-server): the nodes and Redis state show; loopback needs no login without a token', async t => {
  const port = await h.freePort();
  const redisDir = h.tempDir('redis');
  const { spawn } = require('node:child_process');
  const redis = spawn('redis-server', ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', redisDir], { stdio: 'ignore' });
  try {
    await h.until(() => new Promise(resolve => {
      const sock = require('node:net').connect(port, '127.0.0.1', () => { sock.destroy(); resolve(true); });
      sock.on('error', () => resolve(false));
    }), { what: 'redis-server to listen' });
    const node = await h.startCounter({ args: ['--redis', `redis://127.0.0.1:${port}/0`] });
    try {
      const page = await ctx.newPage();
      const res = await page.goto(`${node.url}/admin`);
      assert.equal(res.status(), 200, 'direct loopback: the dashboard, no login');
      await page.waitForSelector('#cluster:not([hidden]) dl');
      const shown = await page.$$eval('#cluster-state dt, #cluster-state dd', els => els.map(e => e.textContent));
      assert.deepEqual(shown, ['Nodes', '1', 'Redis', 'ok']);
      assert.equal(await dash.isHidden('#cluster'), true, 'hidden without cluster mode');
      await page.close();
      h.report(t, `cluster panel on a node of a real redis-server: ${JSON.stringify(shown)}; hidden on the single server`);
    } finally {
      await node.stop();
    }
  } finally {
    redis.kill('SIGTERM');
  }
});
