/*! viewcounter: live view counter. How it works: web/README.md */
(() => {
  const w = window, d = document, L = navigator.locks;
  if (w.__viewcounter) return;
  const me = d.currentScript || d.querySelector('script[src*="counter.js"]');
  if (!me) return;
  const base = me.src, name = 'viewcounter ' + base;
  let slug, token, ch, ac, R, es, sid, timer, tries = 0;
  w.__viewcounter = { scan };

  const readSlug = () => {
    const el = d.querySelector('[data-viewcounter-slug]');
    const tag = [...d.scripts].filter(s => s.src == base && s.dataset.slug).pop();
    const s = el ? el.dataset.viewcounterSlug : tag && tag.dataset.slug;
    return s && /^[\w./-]{1,200}$/.test(s) && !/(^|\/)\.?\.?(\/|$)/.test(s) ? s : '';
  };

  const api = (...p) => new URL('api/v1/' + p.join('/'), base);
  const send = (t, ...p) => navigator.sendBeacon(api(...p), t);
  const rand = () => [...crypto.getRandomValues(new Uint8Array(16))].map(b => b.toString(36)).join('');

  const post = m => { ch.postMessage(m); got(m); }; // to every tab, this one too
  const join = () => slug && post(['join', slug, token]);

  function got([k, s, t]) {
    if (k == 'h') join();
    else if (k == 'd') try {
      const n = JSON.parse(s);
      if (n.slug == slug) for (const k of ['live', 'total']) if (typeof n[k] == 'number')
        d.querySelectorAll(`[data-viewcounter=${k}]`).forEach(el => el.textContent = n[k].toLocaleString());
    } catch {}
    else if (sid) { // leader
      k == 'join' ? R[t] = [k, s, t] : delete R[t];
      es.readyState == 1 && send(t, 'shared', sid, k, s);
    }
  }

  function open() {
    es = new EventSource(api('shared', sid = rand()));
    es.onopen = () => { tries = 0; Object.values(R).forEach(got); };
    es.onmessage = e => post(['d', e.data]);
    // CLOSED (a non-200) is final; CONNECTING retries itself
    es.onerror = () => es.readyState > 1 && (es = 0, timer = setTimeout(open, Math.random() * Math.min(6e4, 1e3 * 2 ** tries++)));
  }

  const lead = () => { R = {}; open(); post(['h']); };

  function up() {
    ch = L ? new BroadcastChannel(name) : { postMessage() {}, close() {} };
    ch.onmessage = e => got(e.data);
    const s = (ac = new AbortController).signal;
    // a restored page shows before the one it replaces hides
    L ? setTimeout(() => L.request(name, { signal: s }, () => new Promise(r => { s.onabort = r; lead(); })).catch(() => {}), 50) : lead();
    join();
  }

  const leave = () => slug && (send(token, 'leave', slug), post(['leave', slug, token]));

  function down() {
    clearTimeout(timer);
    es && es.close();
    ac.abort();
    leave();
    ch.close();
    es = sid = 0;
  }

  function scan() {
    const s = readSlug();
    if (s != slug) leave(), slug = s, token = rand(), join();
  }

  const on = (types, fn) => types.split(' ').forEach(t => w.addEventListener(t, fn, true));

  function start() {
    if (d.prerendering) return on('prerenderingchange', start);
    on('pagehide', down);
    on('pageshow', e => e.persisted && up());
    on('astro:page-load turbo:load', scan);
    on('popstate', () => setTimeout(scan, 50));
    up();
    scan();
  }

  d.readyState == 'complete' ? start() : on('load', start);
})();
