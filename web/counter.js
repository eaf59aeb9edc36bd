/*! viewcounter: live view counter. How it works: web/README.md */
(() => {
  const w = window, d = document;
  if (w.__viewcounter) return; // the tag may be re-inserted
  const me = d.currentScript || d.querySelector('script[src*="counter.js"]');
  if (!me) return;
  const base = me.src; // API URLs are relative to it
  let slug, token, es, timer, tries = 0;
  w.__viewcounter = { scan }; // for other routers, after load

  // Element attribute first, else our tag (or its copy, after a body swap)
  const readSlug = () => {
    const el = d.querySelector('[data-viewcounter-slug]');
    const tag = [...d.scripts].filter(s => s.src == base && s.dataset.slug).pop();
    const s = el ? el.getAttribute('data-viewcounter-slug') : tag && tag.dataset.slug;
    return s && /^[\w./-]{1,200}$/.test(s) && !/(^|\/)\.?\.?(\/|$)/.test(s) ? s : ''; // server's rules
  };

  const api = what => new URL(`api/v1/${what}/${slug}`, base);

  // Opening the stream is the view
  function open() {
    const src = es = new EventSource(api('connect') + '?view=' + token);
    src.onmessage = e => {
      tries = 0;
      try {
        const n = JSON.parse(e.data);
        for (const k of ['live', 'total']) if (typeof n[k] == 'number')
          d.querySelectorAll(`[data-viewcounter=${k}]`).forEach(el => el.textContent = n[k].toLocaleString());
      } catch (_) {}
    };
    // CONNECTING retries by itself; CLOSED (a non-200) is final: back off 1-60 s, full jitter
    src.onerror = () => {
      if (src != es || src.readyState != 2) return;
      es = null;
      timer = setTimeout(() => { timer = 0; open(); }, Math.random() * Math.min(6e4, 1e3 * 2 ** tries++));
    };
  }

  // Keeps slug and token for a bfcache restore
  function leave() {
    clearTimeout(timer);
    timer = 0;
    if (!es) return;
    es.close();
    es = null;
    try { navigator.sendBeacon(api('leave'), token); } catch (_) {}
  }

  // A new slug is a new page view (new token); the same one is only reopened if left
  function scan() {
    const s = readSlug();
    if (s != slug) {
      leave();
      slug = s;
      token = [...crypto.getRandomValues(new Uint8Array(16))].map(b => (b + 256).toString(16).slice(1)).join('');
      tries = 0;
    }
    if (slug && !es && !timer) open();
  }

  // Capture: Astro's events at document do not bubble
  const on = (types, fn) => types.split(' ').forEach(t => w.addEventListener(t, fn, true));

  function start() {
    if (d.prerendering) return on('prerenderingchange', start);
    on('pagehide astro:before-preparation turbo:before-cache turbo:visit', leave);
    on('astro:page-load turbo:load', scan);
    on('pageshow', e => e.persisted && scan());
    // Only if the router (given time to render) changed the post
    on('popstate', () => setTimeout(() => readSlug() != slug && scan(), 50));
    scan();
  }

  d.readyState == 'complete' ? start() : on('load', start); // after the page's own load
})();
