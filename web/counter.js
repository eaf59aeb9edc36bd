/*! viewcounter: live view counter. How it works: web/README.md */
(() => {
  const w = window, d = document;
  if (w.__viewcounter) return;
  const me = d.currentScript || d.querySelector('script[src*="counter.js"]');
  if (!me) return;
  const base = me.src, rank = 1 + Math.random();
  let slug, token, ch, R, es, sid, timer, tm, seen, asked, tries = 0, shows = 0;
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
  // a reader is its page view's id and this showing of the page: a late beacon of an earlier
  // showing (before a back/forward restore) must not end this one
  const who = () => token + ' ' + shows;
  const join = () => slug && post(['join', slug, who()]);
  // no answer 200-400 ms after a message: lead. Ask every 3-6 s
  const arm = (t, f) => { clearTimeout(tm); tm = setTimeout(f, t * rank); };

  function got([k, s, t]) {
    if (k == 'h') s < sid && stop(), arm(3e3, () => post([sid ? 'h' : 'q', sid]), asked = 0), s != seen && (seen = s, join());
    else if (k == 'd') try {
      const n = JSON.parse(s);
      if (n.slug == slug) for (const k of ['live', 'total']) if (typeof n[k] == 'number')
        d.querySelectorAll(`[data-viewcounter=${k}]`).forEach(el => el.textContent = n[k].toLocaleString());
    } catch {}
    else if (!sid) asked || arm(asked = 200, lead);
    else if (t) (k == 'join' ? R[t] != s && (R[t] = s) : delete R[t]) && es.readyState == 1 && send(t, 'shared', sid, k, s); // leader
  }

  function open() {
    es = new EventSource(api('shared', sid = rand()));
    es.onopen = () => { tries = 0; for (const t in R) send(t, 'shared', sid, 'join', R[t]); };
    es.onmessage = e => post(['d', e.data]);
    es.onerror = () => es.readyState > 1 && (es = 0, timer = setTimeout(open, Math.random() * Math.min(6e4, 1e3 * 2 ** tries++)));
    post(['h', sid]);
  }

  const lead = () => open(R = {});
  const stop = () => { clearTimeout(timer); es && es.close(); es = sid = 0; };

  function up() {
    shows++;
    ch = w.BroadcastChannel ? new BroadcastChannel('viewcounter 2 ' + base) : new MessageChannel().port1;
    ch.onmessage = e => { got(e.data); sid && post(['h', sid]); }; // the leader answers
    join();
  }

  const leave = () => slug && (send(who(), 'leave', slug), post(['leave', slug, who()]));

  function down() {
    stop();
    leave(); // also the leader's bye
    clearTimeout(tm, asked = 0);
    ch.close();
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
