'use strict';
// The e2e harness: the real viewcounter binary on one origin, a tiny static blog (e2e/site/)
// on another, headless Debian Chromium driven by playwright-core, and nginx in front when a
// test asks for it. Every process is started here and stopped by the test that started it.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..', '..');
const E2E = path.join(ROOT, 'e2e');
const SITE = path.join(E2E, 'site');

/** The server under test: CI builds it with `cargo build --release`. */
const BIN = path.resolve(ROOT, process.env.VIEWCOUNTER_BIN || 'target/release/viewcounter');
const CHROMIUM = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
/** Headless Chromium says "HeadlessChrome", which the server's bot list refuses to count. */
const UA =
  'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36';

/** The posts the blog has; the counter's allow-list. */
const SLUGS = [
  'alpha', 'beta', 'gamma', 'astro-alpha', 'astro-beta', 'turbo-alpha', 'turbo-beta', 'htmx-alpha', 'htmx-beta', 'spa-alpha', 'spa-beta',
  'shift', 'my-first-post', 'delta', 'my-second-post', 'my-third-post',
];

const tempDirs = [];
/** A fresh temp folder, removed when the test process exits (kept with E2E_KEEP=1). */
function tempDir(name) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `vc-e2e-${name}-`));
  tempDirs.push(dir);
  return dir;
}
/** Servers started here; any still running when the test process exits is killed. */
const children = [];
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  if (process.env.E2E_KEEP) return;
  for (const dir of tempDirs) fs.rmSync(dir, { recursive: true, force: true });
});

const sleep = ms => new Promise(r => setTimeout(r, ms));

/**
 * Polls `fn` until it returns a truthy value, or throws after `timeout` ms with the last value.
 * The synchronisation primitive of these tests: never a fixed sleep.
 */
async function until(fn, { timeout = 5000, interval = 50, what = 'condition' } = {}) {
  const start = Date.now();
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      if (e && e.fatal) throw e;
      last = e;
    }
    if (Date.now() - start > timeout) {
      const shown = last instanceof Error ? last.message : JSON.stringify(last);
      throw new Error(`timed out after ${timeout} ms waiting for ${what} (last: ${shown})`);
    }
    await sleep(interval);
  }
}

/** Collects a child's output lines; keeps the last few hundred for failure reports. */
function capture(stream, into, onLine) {
  let buf = '';
  stream.setEncoding('utf8');
  stream.on('data', chunk => {
    buf += chunk;
    let nl;
    while ((nl = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, nl);
      buf = buf.slice(nl + 1);
      into.push(line);
      if (into.length > 400) into.shift();
      if (onLine) onLine(line);
    }
  });
}

function childEnv() {
  const env = { ...process.env };
  for (const k of Object.keys(env)) if (k.startsWith('VIEWCOUNTER_')) delete env[k];
  env.VIEWCOUNTER_LOG = process.env.E2E_SERVER_LOG || 'info';
  return env;
}

/**
 * Starts `viewcounter serve` on 127.0.0.1 (port 0 unless given) with a temp db and the blog's
 * allow-list; resolves once it printed `listening on http://...`.
 * Test defaults, each overridden by the same flag in `args`: `--flush-after 200ms --heartbeat 1s
 * --ip-stream-limit 0 --ip-view-rate 0` (every tab comes from 127.0.0.1).
 */
async function startCounter({ dir = tempDir('counter'), port = 0, db, allowOrigins = [], args = [] } = {}) {
  if (!fs.existsSync(BIN)) {
    throw new Error(`no server binary at ${BIN}: run \`cargo build --release\` or set VIEWCOUNTER_BIN`);
  }
  db = db || path.join(dir, 'viewcounter.redb');
  const slugs = path.join(dir, 'slugs.txt');
  fs.writeFileSync(slugs, SLUGS.join('\n') + '\n');
  const defaults = { '--flush-after': '200ms', '--heartbeat': '1s', '--ip-stream-limit': '0', '--ip-view-rate': '0' };
  const argv = [
    'serve', '--listen', `127.0.0.1:${port}`, '--db', db, '--slugs', slugs,
    ...Object.entries(defaults).filter(([flag]) => !args.includes(flag)).flat(),
    ...allowOrigins.flatMap(o => ['--allow-origin', o]),
    ...args,
  ];
  const proc = spawn(BIN, argv, { stdio: ['ignore', 'pipe', 'pipe'], env: childEnv() });
  children.push(proc);
  const log = [];
  const exited = new Promise(resolve => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`viewcounter did not start:\n${log.join('\n')}`)), 15000);
    capture(proc.stderr, log);
    capture(proc.stdout, log, line => {
      const m = /listening on (http:\/\/\S+)/.exec(line);
      if (m) {
        clearTimeout(timer);
        resolve(m[1].replace(/\/$/, ''));
      }
    });
    exited.then(({ code, signal }) => {
      clearTimeout(timer);
      reject(new Error(`viewcounter exited (${code ?? signal}) before listening:\n${log.join('\n')}`));
    });
  });
  const counter = {
    url,
    port: Number(new URL(url).port),
    db,
    dir,
    proc,
    log,
    exited,
    /** Server-side numbers; counts nothing. */
    async count(slug) {
      const res = await fetch(`${url}/api/v1/count/${slug}`);
      if (res.status !== 200) throw new Error(`count ${slug}: ${res.status} ${await res.text()}`);
      return res.json();
    },
    /** Waits until `pred(counts)` holds; returns the counts. */
    async waitCount(slug, pred, opts = {}) {
      let seen;
      await until(async () => pred((seen = await counter.count(slug))), {
        what: `${slug} counts to satisfy ${pred}`,
        ...opts,
      }).catch(e => {
        throw new Error(`${e.message}; last ${slug}: ${JSON.stringify(seen)}`);
      });
      return seen;
    },
    /** SIGTERM (graceful: flush, then exit) and wait; SIGKILL after 10 s. */
    async stop(signal = 'SIGTERM') {
      if (proc.exitCode !== null || proc.signalCode !== null) return exited;
      proc.kill(signal);
      const kill = setTimeout(() => proc.kill('SIGKILL'), 10000);
      const r = await exited;
      clearTimeout(kill);
      return r;
    },
  };
  return counter;
}

const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.ico': 'image/x-icon',
  // Next.js's static export: the client takes a .txt payload for text/plain only.
  '.txt': 'text/plain; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.woff2': 'font/woff2',
};

/**
 * The blog: serves e2e/site/ (and `extra` mounts: URL prefix -> folder, or path -> string) on
 * its own origin. In HTML, `__COUNTER__` becomes the counter's base URL (`blog.counter`, which a
 * test may change) and `https://counter.example.com` (the examples' placeholder) too.
 * `?notag` strips the counter's script tag (page-load comparison). HTML is sent without
 * `Cache-Control: no-store`, so pages may enter the back/forward cache.
 */
async function startBlog({ counter, extra = {}, host = '127.0.0.1' } = {}) {
  const blog = { counter, hits: [] };
  const server = http.createServer((req, res) => {
    const u = new URL(req.url, 'http://x');
    blog.hits.push(u.pathname + u.search);
    let file = null;
    let body = null;
    for (const [prefix, target] of Object.entries(extra)) {
      if (typeof target === 'string' && fs.existsSync(target) && fs.statSync(target).isDirectory()) {
        if (u.pathname.startsWith(prefix)) file = path.join(target, u.pathname.slice(prefix.length));
      } else if (u.pathname === prefix) {
        body = target;
        file = prefix;
      }
    }
    if (!file) file = path.join(SITE, u.pathname);
    if (body === null) {
      if (file.endsWith('/')) file += 'index.html';
      if (!fs.existsSync(file) || fs.statSync(file).isDirectory()) {
        if (fs.existsSync(path.join(file, 'index.html'))) file = path.join(file, 'index.html');
        else {
          res.writeHead(404, { 'content-type': 'text/plain' });
          return res.end('not found');
        }
      }
      body = fs.readFileSync(file);
    }
    const type = TYPES[path.extname(file)] || 'text/html; charset=utf-8';
    // Built frameworks carry the placeholder in their scripts and payloads too.
    if (type.startsWith('text/')) {
      let html = body.toString('utf8');
      const base = typeof blog.counter === 'string' ? blog.counter : blog.counter.url;
      // The placeholder first: `base` itself may be https://counter.example.com:PORT (Caddy's test).
      html = html.replaceAll('https://counter.example.com', base).replaceAll('__COUNTER__', base);
      if (u.searchParams.has('notag')) html = html.replace(/<script[^>]*counter\.js[^>]*><\/script>/g, '');
      body = html;
    }
    res.writeHead(200, { 'content-type': type, 'cache-control': 'no-cache' });
    res.end(body);
  });
  await new Promise(r => server.listen(0, host, r));
  blog.origin = `http://${host}:${server.address().port}`;
  blog.port = server.address().port;
  blog.url = p => blog.origin + p;
  blog.close = () => new Promise(r => { server.closeAllConnections(); server.close(r); });
  blog.server = server;
  return blog;
}

/**
 * Headless Debian Chromium. Playwright gives every launch a fresh empty --user-data-dir.
 * Playwright disables the back/forward cache by default; we take that switch out, since
 * bfcache restores are one of the scenarios.
 */
async function launchBrowser({ args = [] } = {}) {
  const { chromium } = require('playwright-core');
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      `--user-agent=${UA}`,
      ...args,
    ],
    ignoreDefaultArgs: ['--disable-back-forward-cache'],
  });
}

/**
 * Runs in every document before its own scripts: records each EventSource (creation time,
 * opens, messages, errors), each `navigator.sendBeacon` (URL, body, time), `load` and
 * `pageshow` events, and layout shifts.
 */
function instrument() {
  const vc = (window.__e2e = { es: [], beacons: [], pageshows: [], shifts: [], loadAt: null, marker: Math.random() });
  const beacon = navigator.sendBeacon.bind(navigator);
  navigator.sendBeacon = (url, data) => {
    vc.beacons.push({ url: String(url), body: String(data), at: performance.now() });
    return beacon(url, data);
  };
  const Orig = window.EventSource;
  window.EventSource = class extends Orig {
    constructor(url, init) {
      super(url, init);
      const rec = { url: String(url), createdAt: performance.now(), opens: 0, messages: 0, errors: 0, closed: false, last: null };
      vc.es.push(rec);
      this.addEventListener('open', () => rec.opens++);
      this.addEventListener('message', e => { rec.messages++; rec.last = e.data; });
      this.addEventListener('error', () => { rec.errors++; rec.errorState = this.readyState; });
      const close = this.close.bind(this);
      this.close = () => { rec.closed = true; close(); };
      this.__rec = rec;
    }
  };
  addEventListener('load', () => { vc.loadAt = performance.now(); }, true);
  addEventListener('pageshow', e => vc.pageshows.push({ persisted: e.persisted, at: performance.now() }));
  try {
    new PerformanceObserver(list => {
      for (const e of list.getEntries()) vc.shifts.push({ value: e.value, hadRecentInput: e.hadRecentInput, at: e.startTime });
    }).observe({ type: 'layout-shift', buffered: true });
  } catch (_) {}
}

async function newContext(browser, opts = {}) {
  const context = await browser.newContext({ userAgent: UA, ...opts });
  await context.addInitScript(instrument);
  return context;
}

/**
 * The pages holding an open EventSource. The script opens one stream per browser (the leader
 * tab's shared stream), so among the tabs of one context this is one page, except in the
 * moments after the leader left.
 */
async function streamHolders(pages) {
  const open = await Promise.all(pages.map(p => p.evaluate(() => window.__e2e.es.some(r => !r.closed && r.errorState !== 2)).catch(() => false)));
  return pages.filter((_, i) => open[i]);
}

/** The numbers a page shows, as integers (NaN while it still shows the placeholder). */
async function shown(page) {
  return page.evaluate(() => {
    const get = k => {
      const el = document.querySelector(`[data-viewcounter="${k}"]`);
      return el ? Number(el.textContent.replace(/[^\d]/g, '') || NaN) : NaN;
    };
    return { live: get('live'), total: get('total') };
  });
}

/**
 * The numbers each `[data-viewcounter-watch]` element of the page shows, by slug (NaN while
 * still a placeholder, undefined for a number the element does not hold).
 */
async function shownWatched(page) {
  return page.evaluate(() => {
    const out = {};
    for (const box of document.querySelectorAll('[data-viewcounter-watch]')) {
      const get = k => {
        const el = box.querySelector(`[data-viewcounter="${k}"]`);
        return el ? Number(el.textContent.replace(/[^\d]/g, '') || NaN) : undefined;
      };
      out[box.dataset.viewcounterWatch] = { live: get('live'), total: get('total') };
    }
    return out;
  });
}

/** Waits until the watched numbers of the page satisfy `pred`; returns them. */
async function waitWatched(page, pred, opts = {}) {
  let seen;
  await until(async () => pred((seen = await shownWatched(page))), { what: `watched numbers ${pred}`, ...opts }).catch(e => {
    throw new Error(`${e.message}; page shows ${JSON.stringify(seen)}`);
  });
  return seen;
}

/** Waits until the page shows numbers that satisfy `pred`. */
async function waitShown(page, pred, opts = {}) {
  let seen;
  await until(async () => pred((seen = await shown(page))), { what: `page numbers ${pred}`, ...opts }).catch(e => {
    throw new Error(`${e.message}; page shows ${JSON.stringify(seen)}`);
  });
  return seen;
}

/** A port nobody listens on right now (bound, then released). */
function freePort() {
  return new Promise((resolve, reject) => {
    const srv = require('node:net').createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Whether something accepts TCP connections on 127.0.0.1:`port` now. */
function accepts(port) {
  return new Promise(resolve => {
    const sock = require('node:net').connect(port, '127.0.0.1', () => { sock.destroy(); resolve(true); });
    sock.on('error', () => resolve(false));
  });
}

const DEPLOY = path.join(ROOT, 'deploy', 'nginx');

/**
 * Runs nginx in the foreground with a temp prefix, in front of `counter`, using one of the
 * recipes in deploy/nginx/ as it is, except for these substitutions: viewcounter's address
 * (127.0.0.1:8080), the listen port, and the certificate paths. `httpExtra` is added to the
 * `http { }` block (test-only settings such as a shorter proxy_read_timeout, or a server block
 * for the blog).
 */
async function startNginx({ recipe, counter, cert, httpExtra = '' }) {
  const prefix = tempDir('nginx');
  fs.mkdirSync(path.join(prefix, 'logs'));
  fs.mkdirSync(path.join(prefix, 'tmp'));
  const port = await freePort();
  let conf = fs.readFileSync(path.join(DEPLOY, recipe), 'utf8');
  const swap = (from, to) => {
    if (!conf.includes(from)) throw new Error(`${recipe} no longer contains ${from}`);
    conf = conf.replaceAll(from, to);
  };
  swap('server 127.0.0.1:8080;', `server 127.0.0.1:${counter.port};`);
  if (cert) {
    swap('listen 443 ssl http2;', `listen 127.0.0.1:${port} ssl http2;`);
    swap('/etc/letsencrypt/live/counter.example.com/fullchain.pem', cert.cert);
    swap('/etc/letsencrypt/live/counter.example.com/privkey.pem', cert.key);
  } else {
    swap('listen 80;', `listen 127.0.0.1:${port};`);
  }
  fs.writeFileSync(path.join(prefix, recipe), conf);
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi']
    .map(k => `  ${k}_temp_path ${prefix}/tmp/${k};`).join('\n');
  fs.writeFileSync(path.join(prefix, 'nginx.conf'), `daemon off;
master_process off; # one process: nothing outlives a killed test
worker_processes 1;
pid ${prefix}/nginx.pid;
error_log ${prefix}/logs/error.log info;
events { worker_connections 1024; }
http {
  log_format e2e '$remote_addr "$request" $status $body_bytes_sent $request_time upstream=$upstream_status';
  access_log ${prefix}/logs/access.log e2e;
${temp}
${httpExtra}
  include ${prefix}/${recipe};
}
`);
  const proc = spawn('nginx', ['-p', prefix, '-c', path.join(prefix, 'nginx.conf'), '-e', path.join(prefix, 'logs/error.log')], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(proc);
  const log = [];
  capture(proc.stdout, log);
  capture(proc.stderr, log);
  const exited = new Promise(resolve => proc.on('exit', (code, signal) => resolve({ code, signal })));
  const scheme = cert ? 'https' : 'http';
  const url = `${scheme}://127.0.0.1:${port}`;
  const errorLog = () => fs.existsSync(path.join(prefix, 'logs/error.log')) ? fs.readFileSync(path.join(prefix, 'logs/error.log'), 'utf8') : '';
  let dead = null;
  exited.then(r => { dead = r; });
  await until(async () => {
    if (dead) throw Object.assign(new Error(`nginx exited ${JSON.stringify(dead)}: ${log.join('\n')}\n${errorLog()}`), { fatal: true });
    return accepts(port);
  }, { timeout: 10000, what: 'nginx to listen' });
  return {
    url, port, prefix, proc,
    /** Completed requests (nginx logs a stream when it ends). */
    access: () => {
      const f = path.join(prefix, 'logs/access.log');
      return fs.existsSync(f) ? fs.readFileSync(f, 'utf8').split('\n').filter(Boolean) : [];
    },
    errorLog,
    async stop() {
      if (dead) return dead;
      proc.kill('SIGQUIT'); // graceful: finish the open requests
      const t = setTimeout(() => proc.kill('SIGKILL'), 3000);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
}

/**
 * Runs Caddy (`caddy run`) in front of `counter`, with deploy/caddy/Caddyfile as it is except
 * for these substitutions: viewcounter's address (127.0.0.1:8080), the site's port (the recipe's
 * site is counter.example.com on 443; here counter.example.com:PORT, which the browser maps to
 * loopback with --host-resolver-rules) and a self-signed certificate in place of the one Caddy
 * would get from an ACME CA. `global` goes into the test's global options block (the recipe has
 * none), `sites` after the recipe (test-only sites, such as the blog). Caddy keeps its state in
 * a temp dir (XDG_DATA_HOME, XDG_CONFIG_HOME), and its admin endpoint is off.
 */
async function startCaddy({ counter, cert, global = '', sites = '' }) {
  const dir = tempDir('caddy');
  const port = await freePort();
  let conf = fs.readFileSync(path.join(ROOT, 'deploy', 'caddy', 'Caddyfile'), 'utf8');
  const swap = (from, to) => {
    if (!conf.includes(from)) throw new Error(`deploy/caddy/Caddyfile no longer contains ${from}`);
    conf = conf.replaceAll(from, to);
  };
  swap('reverse_proxy 127.0.0.1:8080 {', `reverse_proxy 127.0.0.1:${counter.port} {`);
  swap('\ncounter.example.com {\n', `\ncounter.example.com:${port} {\n\ttls ${cert.cert} ${cert.key}\n`);
  const file = path.join(dir, 'Caddyfile');
  fs.writeFileSync(file, `{
\tadmin off
\tauto_https disable_redirects
\tskip_install_trust
${global}
}
${conf}
${sites}
`);
  const proc = spawn('caddy', ['run', '--adapter', 'caddyfile', '--config', file], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, XDG_DATA_HOME: path.join(dir, 'data'), XDG_CONFIG_HOME: path.join(dir, 'config'), HOME: dir },
  });
  children.push(proc);
  const log = [];
  capture(proc.stdout, log);
  capture(proc.stderr, log);
  let dead = null;
  const exited = new Promise(resolve => proc.on('exit', (code, signal) => resolve({ code, signal })));
  exited.then(r => { dead = r; });
  await until(async () => {
    if (dead) throw Object.assign(new Error(`caddy exited ${JSON.stringify(dead)}:\n${log.join('\n')}`), { fatal: true });
    return accepts(port);
  }, { timeout: 10000, what: 'caddy to listen' });
  return {
    port, dir, proc, log, file,
    async stop() {
      if (dead) return dead;
      proc.kill('SIGTERM');
      const t = setTimeout(() => proc.kill('SIGKILL'), 3000);
      const r = await exited;
      clearTimeout(t);
      return r;
    },
  };
}

/** A self-signed certificate for 127.0.0.1, localhost and `names`, made by openssl now. */
function selfSignedCert(names = []) {
  const dir = tempDir('cert');
  const cert = path.join(dir, 'cert.pem');
  const key = path.join(dir, 'key.pem');
  require('node:child_process').execFileSync('openssl', [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', key, '-out', cert, '-days', '2', '-subj', '/CN=127.0.0.1',
    '-addext', `subjectAltName=${['IP:127.0.0.1', 'DNS:localhost', ...names.map(n => `DNS:${n}`)].join(',')}`,
  ], { stdio: 'pipe' });
  return { cert, key };
}

/**
 * Builds e2e/site/astro with the real `astro` package (`astro build`, its <ClientRouter /> and
 * examples/astro/ViewCounter.astro) into a temp dir; returns the built site, to mount at
 * /astro/ (`startBlog({ extra: { '/astro/': dir } })`). About 3 s.
 */
function buildAstro() {
  const dist = path.join(tempDir('astro'), 'dist');
  require('node:child_process').execFileSync(process.execPath, [
    path.join(E2E, 'node_modules/astro/astro.js'), 'build', '--silent',
    '--root', path.join(SITE, 'astro'), '--outDir', dist,
  ], { stdio: 'pipe', env: { ...process.env, ASTRO_TELEMETRY_DISABLED: '1' } });
  return dist;
}

/**
 * The framework examples in examples/, each built by its own CLI from its package in
 * e2e/node_modules (pinned in e2e/package.json): `cli` (under node_modules), its arguments for
 * the copy's folder, and where the built site lands in it.
 */
const FRAMEWORKS = {
  nextjs: { cli: 'next/dist/bin/next', args: dir => ['build', dir], out: 'out' },
  docusaurus: { cli: '@docusaurus/core/bin/docusaurus.mjs', args: dir => ['build', dir, '--out-dir', path.join(dir, 'build')], out: 'build' },
  vitepress: { cli: 'vitepress/bin/vitepress.js', args: dir => ['build', dir], out: '.vitepress/dist' },
  sveltekit: { cli: 'vite/bin/vite.js', args: () => ['build', '--logLevel', 'warn'], out: 'build' },
};

/**
 * Builds examples/`name` as it is: copied into a fresh folder under e2e/.build/ (inside e2e/,
 * so the framework resolves its packages from e2e/node_modules) and built there; resolves to
 * the built site's folder, to serve at / (`startBlog({ extra: { '/': dir } })`). Several
 * builds may run at once.
 */
function buildExample(name) {
  const { cli, args, out } = FRAMEWORKS[name];
  fs.mkdirSync(path.join(E2E, '.build'), { recursive: true });
  const dir = fs.mkdtempSync(path.join(E2E, '.build', `${name}-`));
  tempDirs.push(dir);
  fs.cpSync(path.join(ROOT, 'examples', name), dir, { recursive: true });
  const proc = spawn(process.execPath, [path.join(E2E, 'node_modules', cli), ...args(dir)], {
    cwd: dir,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, NEXT_TELEMETRY_DISABLED: '1', CI: '1' },
  });
  children.push(proc);
  const log = [];
  capture(proc.stdout, log);
  capture(proc.stderr, log);
  return new Promise((resolve, reject) => proc.on('exit', code => code === 0
    ? resolve(path.join(dir, out))
    : reject(new Error(`building examples/${name} failed (${code}):\n${log.join('\n')}`))));
}

/** The routers' own files from npm, for `startBlog({ extra })`: /vendor/turbo/, /vendor/htmx/. */
const VENDOR = {
  '/vendor/turbo/': path.join(E2E, 'node_modules/@hotwired/turbo/dist'),
  '/vendor/htmx/': path.join(E2E, 'node_modules/htmx.org/dist'),
};

const median = xs => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

/** One line of figures in the test output, also appended to $E2E_RESULTS (run.sh prints it). */
function report(t, line) {
  t.diagnostic(line);
  if (process.env.E2E_RESULTS) fs.appendFileSync(process.env.E2E_RESULTS, `- ${t.name}: ${line}\n`);
}

module.exports = {
  ROOT, E2E, SITE, BIN, CHROMIUM, UA, SLUGS,
  tempDir, sleep, until, capture, startCounter, startBlog, launchBrowser, newContext, instrument,
  shown, waitShown, shownWatched, waitWatched, streamHolders, median, report, freePort, startNginx,
  startCaddy, selfSignedCert, buildAstro, buildExample, VENDOR,
};
