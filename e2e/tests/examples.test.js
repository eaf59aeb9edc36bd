'use strict';
// Issue 4, point 4: the embedding examples in examples/, each rendered and driven in Chromium.
// - plain.html: served as it is from the blog's origin (its counter.example.com placeholder
//   replaced by the test counter's URL);
// - astro/ViewCounter.astro: rendered by e2e/site/astro's layout, built with the real `astro`
//   (`astro build`, h.buildAstro()), then loaded in two tabs;
// - htmx.html: served with htmx from e2e/node_modules in place of its CDN URL;
// - hugo/layouts/partials/viewcounter.html: built into a one-post site by Debian's hugo (when
//   hugo is installed; e2e/run.sh installs it), else its markup is checked as text.

const { test, before, after, beforeEach, afterEach } = require('node:test');
const assert = require('node:assert/strict');
const { execFileSync } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const h = require('../lib/harness');

const EXAMPLES = path.join(h.ROOT, 'examples');
let browser, blog, counter, ctx, astroSite;
const pages = {}; // path -> HTML, served by the blog

before(async () => {
  astroSite = h.buildAstro();
  browser = await h.launchBrowser();
  blog = await h.startBlog({ counter: 'http://127.0.0.1:9', extra: { '/examples/': EXAMPLES, '/astro/': astroSite, ...h.VENDOR } });
  // Routes added by the tests below are looked up at request time.
  const extra = blog.server.listeners('request')[0];
  blog.server.removeAllListeners('request');
  blog.server.on('request', (req, res) => {
    const p = new URL(req.url, 'http://x').pathname;
    if (pages[p] !== undefined) {
      const body = pages[p].replaceAll('https://counter.example.com', blog.counter.url);
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      return res.end(body);
    }
    if (p.startsWith('/hugo/') && pages.hugoDir) {
      let f = path.join(pages.hugoDir, p.slice('/hugo/'.length));
      if (fs.existsSync(f) && fs.statSync(f).isDirectory()) f = path.join(f, 'index.html');
      if (fs.existsSync(f)) {
        res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
        return res.end(fs.readFileSync(f, 'utf8').replaceAll('https://counter.example.com', blog.counter.url));
      }
    }
    return extra(req, res);
  });
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

/** Opens `url` in two tabs: both show live 2, total 2, and nothing shifted. */
async function twoReaders(url, slug) {
  const a = await ctx.newPage();
  await a.goto(blog.url(url));
  await h.waitShown(a, s => s.live === 1 && s.total === 1);
  const b = await ctx.newPage();
  await b.goto(blog.url(url));
  await h.waitShown(a, s => s.live === 2 && s.total === 2);
  await h.waitShown(b, s => s.live === 2 && s.total === 2);
  assert.deepEqual(await counter.count(slug), { live: 2, total: 2 });
  assert.deepEqual(await a.evaluate(() => window.__e2e.shifts), [], 'no layout shift');
  await b.close();
  await h.waitShown(a, s => s.live === 1);
}

test('example: plain HTML (examples/plain.html) counts and shows live numbers', async t => {
  await twoReaders('/examples/plain.html', 'my-first-post');
  h.report(t, 'two tabs: both showed live 2 / total 2, then live 1 after one closed; 0 layout shifts');
});

test('example: the Astro component (examples/astro/ViewCounter.astro) builds with astro, renders and counts', async t => {
  // e2e/site/astro's layout renders the example itself, inside Astro's <ClientRouter />.
  const html = fs.readFileSync(path.join(astroSite, 'alpha/index.html'), 'utf8');
  assert.match(html, /<p class="viewcounter[^"]*"[^>]* data-viewcounter-slug="astro-alpha"/);
  assert.match(html, /<script src="https:\/\/counter\.example\.com\/counter\.js" async><\/script>/);
  assert.doesNotMatch(html, /is:inline/);
  assert.match(html, /\[data-viewcounter\][^{]*\{[^}]*min-width/, "the component's scoped style");
  await twoReaders('/astro/alpha/', 'astro-alpha');
  h.report(t, `built by astro ${require('astro/package.json').version} (astro build, with <ClientRouter />); rendered markup: ` +
    `${/<p class="viewcounter[\s\S]*?<\/script>/.exec(html)[0].replace(/\s+/g, ' ').slice(0, 160)}…; two tabs: live 2 / total 2, 0 layout shifts`);
});

test('example: htmx (examples/htmx.html) counts and shows live numbers, with the htmx it pins', async t => {
  const source = fs.readFileSync(path.join(EXAMPLES, 'htmx.html'), 'utf8');
  const cdn = /<script src="(https:\/\/cdn\.jsdelivr\.net\/npm\/htmx\.org@([\d.]+)\/dist\/htmx\.min\.js)"><\/script>/.exec(source);
  assert.ok(cdn, 'the example loads htmx from jsDelivr');
  const installed = require('htmx.org/package.json').version;
  assert.equal(cdn[2], installed, 'the example pins the htmx that e2e/package.json tests');
  assert.match(source, /<body hx-boost="true">/);
  // The same page, with htmx served from e2e/node_modules (no network in the tests).
  pages['/htmx-example.html'] = source.replace(cdn[1], '/vendor/htmx/htmx.min.js');
  await twoReaders('/htmx-example.html', 'my-first-post');
  const boosted = await ctx.newPage();
  await boosted.goto(blog.url('/htmx-example.html'));
  assert.equal(await boosted.evaluate(() => typeof window.htmx?.version === 'string' && window.htmx.version), installed);
  h.report(t, `htmx ${installed} (hx-boost on <body>): two tabs: live 2 / total 2, then live 1; 0 layout shifts`);
});

test('example: the Hugo partial (examples/hugo/layouts/partials/viewcounter.html) builds, renders and counts', async t => {
  const partial = fs.readFileSync(path.join(EXAMPLES, 'hugo/layouts/partials/viewcounter.html'), 'utf8');
  assert.match(partial, /data-viewcounter="live"/);
  assert.match(partial, /data-viewcounter="total"/);
  assert.match(partial, /\/counter\.js" async><\/script>/);
  let hugo = true;
  try { execFileSync('hugo', ['version'], { stdio: 'pipe' }); } catch { hugo = false; }
  if (!hugo) return t.skip('hugo is not installed (e2e/run.sh installs it): markup checked as text only');

  const site = h.tempDir('hugo');
  fs.mkdirSync(path.join(site, 'layouts/_default'), { recursive: true });
  fs.mkdirSync(path.join(site, 'layouts/partials'), { recursive: true });
  fs.mkdirSync(path.join(site, 'content/posts'), { recursive: true });
  fs.copyFileSync(path.join(EXAMPLES, 'hugo/layouts/partials/viewcounter.html'), path.join(site, 'layouts/partials/viewcounter.html'));
  fs.writeFileSync(path.join(site, 'hugo.toml'), `baseURL = "${blog.origin}/hugo/"
title = "Hugo example"
disableKinds = ["taxonomy", "term", "RSS", "sitemap", "robotsTXT", "404"]
[params.viewcounter]
url = "https://counter.example.com"
`);
  fs.writeFileSync(path.join(site, 'layouts/_default/single.html'), `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,"><title>{{ .Title }}</title></head>
<body><article><h1>{{ .Title }}</h1>{{ partial "viewcounter.html" . }}{{ .Content }}</article></body></html>
`);
  fs.writeFileSync(path.join(site, 'layouts/_default/list.html'), '<!doctype html><title>{{ .Title }}</title>\n');
  fs.writeFileSync(path.join(site, 'content/posts/example-hugo.md'), '---\ntitle: "A Hugo post"\n---\nText.\n');
  execFileSync('hugo', ['--quiet', '--source', site, '--destination', path.join(site, 'public')], { stdio: 'pipe' });
  const built = fs.readFileSync(path.join(site, 'public/posts/example-hugo/index.html'), 'utf8');
  // Hugo's RelPermalink carries the baseURL's path: the default slug is the page's path there.
  const slug = /data-viewcounter-slug="([^"]+)"/.exec(built)[1];
  assert.equal(slug, 'hugo/posts/example-hugo');
  assert.match(built, /<script src="https:\/\/counter\.example\.com\/counter\.js" async><\/script>/);
  pages.hugoDir = path.join(site, 'public');
  // This slug is not on the test allow-list: serve it from a counter that takes any slug.
  await counter.stop();
  counter = await h.startCounter({ allowOrigins: [blog.origin], args: ['--allow-any-slug'] });
  blog.counter = counter;
  await twoReaders('/hugo/posts/example-hugo/', slug);
  h.report(t, `built by hugo (${execFileSync('hugo', ['version']).toString().split(' ')[1]}); slug from the page path ` +
    `"${slug}"; two tabs: live 2 / total 2, 0 layout shifts`);
});
