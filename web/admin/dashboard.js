// The owner's dashboard (served at /admin). One EventSource on api/v1/admin/stream keeps the
// table live: a `snapshot` event carries every post, then each message is one post's new
// numbers. Nothing is polled for the table. The chart reads api/v1/history once per choice
// (range, post) and keeps its last bar, today, in step with the stream. The pulse (readers
// minute by minute, 24 h) reads api/v1/pulse once per choice (all posts, one post); the stream's
// `pulse` events then add each minute as it closes, and its rows move the minute under way.
// Plain script, no build step: the server sends this file as it is.
'use strict';
(() => {
  /** Rows the table shows before "Show all". */
  const LIMIT = 100;
  const fmt = new Intl.NumberFormat();
  const $ = id => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';

  const state = {
    day: null, // the server's today, from the snapshot
    posts: new Map(), // slug -> {slug, live, today, total, peak, read_median_s}
    selected: null, // slug whose history the chart shows; null: all posts
    days: 30,
    showAll: false,
    history: null, // {key, days: [{day, views, read_buckets?}], starts: [s]} (buckets: one post's)
    pulse: null, // {key, minutes: [{t (ms), live}]}, oldest first, the minute under way last
    ended: false,
  };
  const rowEls = new Map(); // slug -> {tr, cells: {live, today, total, read, peak}}

  // --- the table -------------------------------------------------------------------------

  const byReading = ([a, x], [b, y]) =>
    y.live - x.live || y.today - x.today || y.total - x.total || (a < b ? -1 : a > b ? 1 : 0);

  let pending = false;
  /** Many messages in a burst make one render. */
  function schedule() {
    if (pending) return;
    pending = true;
    setTimeout(() => { pending = false; render(); }, 0);
  }

  function render() {
    const all = [...state.posts.entries()].sort(byReading);
    const shown = state.showAll ? all : all.slice(0, LIMIT);
    const body = $('rows');
    const keep = new Set();
    for (const [slug, post] of shown) {
      keep.add(slug);
      const row = rowEls.get(slug) || makeRow(slug);
      setCell(row.cells.live, post.live);
      row.cells.live.classList.toggle('reading', post.live > 0);
      setCell(row.cells.today, post.today);
      setCell(row.cells.total, post.total);
      setCell(row.cells.read, post.read_median_s ?? null, duration(post.read_median_s));
      setCell(row.cells.peak, post.peak ?? 0);
      row.tr.setAttribute('aria-selected', String(slug === state.selected));
      body.appendChild(row.tr); // moves it into sorted place
    }
    for (const [slug, row] of rowEls) {
      if (!keep.has(slug)) { row.tr.remove(); rowEls.delete(slug); }
    }
    $('empty').hidden = all.length > 0;
    const more = $('more');
    more.hidden = all.length <= LIMIT;
    more.textContent = state.showAll ? `Show the top ${LIMIT}` : `Show all ${fmt.format(all.length)} posts`;
    $('posts-count').textContent = all.length ? `${fmt.format(all.length)} posts · by reading now` : '';
    renderSums();
    renderTodayBar();
    renderPulseNow();
  }

  function makeRow(slug) {
    const tr = document.createElement('tr');
    tr.tabIndex = 0;
    tr.dataset.slug = slug;
    const name = document.createElement('td');
    name.className = 'slug';
    name.textContent = slug;
    name.title = slug;
    tr.appendChild(name);
    const cells = {};
    for (const k of ['live', 'today', 'total', 'read', 'peak']) {
      const td = document.createElement('td');
      td.className = `n ${k}`;
      td.dataset.value = '';
      tr.appendChild(td);
      cells[k] = td;
    }
    const row = { tr, cells };
    rowEls.set(slug, row);
    return row;
  }

  /** A reading time in seconds as "1m 12s" or "45s"; "–" without one (null). */
  function duration(s) {
    if (s === null || s === undefined) return '–';
    const whole = Math.round(s);
    if (whole < 60) return `${whole}s`;
    // Whole minutes as "2m": the histogram's labels stay short enough for a phone.
    return whole % 60 ? `${Math.floor(whole / 60)}m ${whole % 60}s` : `${whole / 60}m`;
  }

  /** Writes a number (as `text`, else formatted); a cell that changed flashes once
   *  (background only: nothing moves). */
  function setCell(td, value, text = fmt.format(value)) {
    if (td.textContent === text) return;
    const first = td.dataset.value === '';
    td.textContent = text;
    td.dataset.value = String(value);
    if (first) return;
    td.classList.remove('changed');
    void td.offsetWidth; // restarts the animation
    td.classList.add('changed');
  }

  function renderSums() {
    let live = 0, today = 0, total = 0;
    for (const p of state.posts.values()) { live += p.live; today += p.today; total += p.total; }
    $('sum-live').textContent = fmt.format(live);
    $('sum-today').textContent = fmt.format(today);
    $('sum-total').textContent = fmt.format(total);
  }

  function select(slug) {
    state.selected = state.selected === slug ? null : slug;
    // The histogram's room opens (or closes) with the click, not when its numbers arrive:
    // a move the user caused, so no layout shift by itself later.
    $('reads-panel').hidden = state.selected === null;
    if (state.selected !== null) note('reads', 'reads-caption', 'Reading…');
    render();
    loadHistory();
    loadPulse();
  }

  $('rows').addEventListener('click', e => {
    const tr = e.target.closest('tr');
    if (tr) select(tr.dataset.slug);
  });
  $('rows').addEventListener('keydown', e => {
    const tr = e.target.closest('tr');
    if (tr && (e.key === 'Enter' || e.key === ' ')) { e.preventDefault(); select(tr.dataset.slug); }
  });
  $('more').addEventListener('click', () => { state.showAll = !state.showAll; render(); });
  $('show-all-posts').addEventListener('click', () => select(state.selected));

  // --- the chart -------------------------------------------------------------------------

  const historyKey = () => `${state.selected ?? ''}|${state.days}`;
  const pathOf = slug => slug.split('/').map(encodeURIComponent).join('/');

  async function loadHistory() {
    const key = historyKey();
    const what = state.selected === null ? 'all posts' : state.selected;
    $('chart-what').textContent = what;
    $('show-all-posts').hidden = state.selected === null;
    const url = state.selected === null
      ? `api/v1/history?days=${state.days}`
      : `api/v1/history/${pathOf(state.selected)}?days=${state.days}`;
    let body;
    try {
      const res = await fetch(url, { cache: 'no-store', credentials: 'same-origin' });
      if (res.status === 401) return sessionEnded();
      body = await res.json();
      if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
    } catch (e) {
      if (key === historyKey()) chartNote(`The history could not be read: ${e.message}`);
      return;
    }
    if (key !== historyKey()) return; // a newer choice is on its way
    state.history = { key, days: body.days, starts: body.read_bucket_starts_s };
    drawChart();
    drawReads();
  }

  for (const b of document.querySelectorAll('.ranges button')) {
    b.addEventListener('click', () => {
      state.days = Number(b.dataset.days);
      for (const o of document.querySelectorAll('.ranges button')) {
        o.setAttribute('aria-pressed', String(o === b));
      }
      loadHistory();
    });
  }

  /** One number (`live`, `today`) of what the charts show, from the stream: the selected
   *  post's, or all posts' together. */
  function shownNumber(key) {
    if (state.selected !== null) return state.posts.get(state.selected)?.[key] ?? 0;
    let sum = 0;
    for (const p of state.posts.values()) sum += p[key];
    return sum;
  }
  const todayOfChart = () => shownNumber('today');

  let drawnToday = null;
  function renderTodayBar() {
    if (state.history && state.history.key === historyKey() && todayOfChart() !== drawnToday) drawChart();
  }

  function el(tag, attrs = {}, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  /** 1, 2 or 5 times a power of ten, at least `n`. */
  function niceMax(n) {
    const p = 10 ** Math.floor(Math.log10(Math.max(n, 1)));
    return [1, 2, 5, 10].map(m => m * p).find(m => m >= n);
  }

  const shortDay = day => {
    const [y, m, d] = day.split('-').map(Number);
    return new Date(Date.UTC(y, m - 1, d)).toLocaleDateString(undefined, { month: 'short', day: 'numeric', timeZone: 'UTC' });
  };

  /** A sentence in place of a chart (`box`), its caption emptied. */
  function note(box, caption, text) {
    const p = document.createElement('p');
    p.className = 'note';
    p.textContent = text;
    $(box).replaceChildren(p);
    $(caption).textContent = '';
  }
  const chartNote = text => note('chart', 'chart-caption', text);

  /** The value axis of a chart: lines at 0, half and `max`, labelled. */
  function valueAxis(svg, pad, W, plotH, max) {
    for (const f of [0, 0.5, 1]) {
      const y = pad.t + plotH * (1 - f);
      svg.appendChild(el('line', { class: f ? 'grid' : 'axis', x1: pad.l, x2: W - pad.r, y1: y, y2: y }));
      svg.appendChild(el('text', { x: pad.l - 6, y: y + 4, 'text-anchor': 'end' }, fmt.format(max * f)));
    }
  }

  function drawChart() {
    const days = state.history.days.map(d => ({ ...d }));
    const last = days[days.length - 1];
    if (last && last.day === state.day) last.views = Math.max(last.views, todayOfChart());
    drawnToday = todayOfChart();
    const box = $('chart');
    const W = Math.max(box.clientWidth, 280);
    const H = box.clientHeight || 220;
    const pad = { l: 44, r: 6, t: 8, b: 22 };
    const max = niceMax(Math.max(1, ...days.map(d => d.views)));
    const plotH = H - pad.t - pad.b;
    const step = (W - pad.l - pad.r) / days.length;
    const gap = step > 4 ? Math.min(2, step * 0.2) : 0;
    const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `Daily views, last ${days.length} days` });
    valueAxis(svg, pad, W, plotH, max);
    days.forEach((d, i) => {
      const h = (d.views / max) * plotH;
      const x = pad.l + i * step;
      const title = `${d.day}: ${fmt.format(d.views)} views`;
      const hit = el('rect', { class: 'hit', x, y: pad.t, width: step, height: plotH });
      hit.appendChild(el('title', {}, title));
      svg.appendChild(hit);
      const bar = el('rect', {
        class: d.day === state.day ? 'day today' : 'day',
        x: x + gap / 2, y: pad.t + plotH - h, width: Math.max(step - gap, 0.5), height: h,
        'data-day': d.day, 'data-views': d.views,
      });
      bar.appendChild(el('title', {}, title));
      svg.appendChild(bar);
    });
    const labels = days.length > 1 ? [0, Math.floor((days.length - 1) / 2), days.length - 1] : [0];
    for (const i of labels) {
      const anchor = i === 0 ? 'start' : i === days.length - 1 ? 'end' : 'middle';
      const x = i === 0 ? pad.l : i === days.length - 1 ? W - pad.r : pad.l + (i + 0.5) * step;
      svg.appendChild(el('text', { x, y: H - 6, 'text-anchor': anchor }, shortDay(days[i].day)));
    }
    box.replaceChildren(svg);
    const sum = days.reduce((s, d) => s + d.views, 0);
    const best = days.reduce((a, d) => (d.views > a.views ? d : a), days[0]);
    $('chart-caption').textContent = sum
      ? `${fmt.format(sum)} views in ${days.length} days · busiest ${best.day} (${fmt.format(best.views)})`
      : `No views in the last ${days.length} days.`;
  }

  // --- one post's reading times ----------------------------------------------------------

  /** The selected post's reading-time histogram over the chosen days (from its history). */
  function drawReads() {
    const panel = $('reads-panel');
    const { days, starts } = state.history;
    const summed = starts ? starts.map((_, i) => days.reduce((n, d) => n + (d.read_buckets?.[i] ?? 0), 0)) : null;
    if (state.selected === null || !summed) { panel.hidden = true; return; }
    panel.hidden = false;
    $('reads-what').textContent = `${state.selected}, last ${days.length} days`;
    const box = $('reads');
    const W = Math.max(box.clientWidth, 280);
    const H = box.clientHeight || 160;
    const pad = { l: 44, r: 6, t: 8, b: 22 };
    const max = niceMax(Math.max(1, ...summed));
    const plotH = H - pad.t - pad.b;
    const step = (W - pad.l - pad.r) / summed.length;
    const gap = Math.min(2, step * 0.2);
    const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `Readings by reading time, last ${days.length} days` });
    valueAxis(svg, pad, W, plotH, max);
    summed.forEach((n, i) => {
      const h = (n / max) * plotH;
      const x = pad.l + i * step;
      const upTo = i + 1 < starts.length ? duration(starts[i + 1]) : 'more';
      const bar = el('rect', {
        class: 'bucket', x: x + gap / 2, y: pad.t + plotH - h, width: Math.max(step - gap, 0.5), height: h,
        'data-start': starts[i], 'data-reads': n,
      });
      bar.appendChild(el('title', {}, `${duration(starts[i])} to ${upTo}: ${fmt.format(n)} readings`));
      svg.appendChild(bar);
    });
    // Every bucket's start would crowd a phone: every other one, always the first.
    const every = step < 30 ? 2 : 1;
    starts.forEach((s, i) => {
      if (i % every) return;
      svg.appendChild(el('text', { x: pad.l + (i + 0.5) * step, y: H - 6, 'text-anchor': 'middle' }, duration(s)));
    });
    box.replaceChildren(svg);
    const total = summed.reduce((a, n) => a + n, 0);
    $('reads-caption').textContent = total
      ? `${fmt.format(total)} readings in ${days.length} days, by time spent reading`
      : `No readings in the last ${days.length} days.`;
  }

  // --- the pulse -------------------------------------------------------------------------

  const PULSE_MINUTES = 1440;
  const MINUTE = 60000;
  const pulseKey = () => state.selected ?? '';
  const pulseUrl = minutes => state.selected === null
    ? `api/v1/pulse?minutes=${minutes}`
    : `api/v1/pulse/${pathOf(state.selected)}?minutes=${minutes}`;

  async function fetchPulse(minutes) {
    const res = await fetch(pulseUrl(minutes), { cache: 'no-store', credentials: 'same-origin' });
    if (res.status === 401) { sessionEnded(); return null; }
    const body = await res.json();
    if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
    return body.minutes.map(m => ({ t: Date.parse(m.at), live: m.live }));
  }

  async function loadPulse() {
    const key = pulseKey();
    $('pulse-what').textContent = state.selected === null ? 'all posts' : state.selected;
    let minutes;
    try {
      minutes = await fetchPulse(PULSE_MINUTES);
    } catch (e) {
      if (key === pulseKey()) note('pulse', 'pulse-caption', `The pulse could not be read: ${e.message}`);
      return;
    }
    if (!minutes || key !== pulseKey()) return;
    state.pulse = { key, minutes };
    renderPulseNow();
    drawPulse();
  }

  /** Minutes in, by time: a minute already there takes the newer value. */
  function mergeMinutes(minutes) {
    const list = state.pulse.minutes;
    for (const m of minutes) {
      const i = list.findIndex(o => o.t === m.t);
      if (i >= 0) list[i] = m;
      else if (!list.length || m.t > list[list.length - 1].t) list.push(m);
    }
    while (list.length > PULSE_MINUTES) list.shift();
  }

  /** A minute of the site closed (`event: pulse`): in, and the next one under way. */
  async function minuteClosed(at, live) {
    if (!state.pulse) return;
    const t = Date.parse(at);
    if (state.pulse.key === '') {
      mergeMinutes([{ t, live }, { t: t + MINUTE, live: liveNow() }]);
    } else {
      // A post's minutes are not on the stream: its last two, asked as the site's minute closes.
      const key = state.pulse.key;
      let minutes;
      try { minutes = await fetchPulse(2); } catch (_) { return; }
      if (!minutes || !state.pulse || key !== state.pulse.key) return;
      mergeMinutes(minutes);
    }
    drawPulse();
  }

  const liveNow = () => shownNumber('live');

  /** The minute under way keeps the most readers the stream has shown in it. */
  function renderPulseNow() {
    const now = liveNow();
    $('pulse-now').textContent = `${fmt.format(now)} reading now`;
    if (!state.pulse || state.pulse.key !== pulseKey()) return;
    const last = state.pulse.minutes[state.pulse.minutes.length - 1];
    if (last && now > last.live) {
      last.live = now;
      drawPulse();
    }
  }


  const clock = t => new Date(t).toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });

  function drawPulse() {
    const minutes = state.pulse.minutes;
    const box = $('pulse');
    const W = Math.max(box.clientWidth, 280);
    const H = box.clientHeight || 140;
    const pad = { l: 44, r: 6, t: 8, b: 22 };
    const max = niceMax(Math.max(1, ...minutes.map(m => m.live)));
    const plotH = H - pad.t - pad.b;
    const n = Math.max(minutes.length, 2);
    const x = i => pad.l + (i / (n - 1)) * (W - pad.l - pad.r);
    const y = v => pad.t + plotH * (1 - v / max);
    const svg = el('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `Readers per minute, last ${minutes.length} minutes` });
    valueAxis(svg, pad, W, plotH, max);
    let d = `M${x(0)},${y(0)}`;
    minutes.forEach((m, i) => { d += `L${x(i).toFixed(1)},${y(m.live).toFixed(1)}`; });
    d += `L${x(minutes.length - 1)},${y(0)}Z`;
    const area = el('path', { class: 'pulse-area', d, 'data-minutes': minutes.length });
    svg.appendChild(area);
    const last = minutes[minutes.length - 1];
    if (last) {
      const dot = el('circle', { class: 'pulse-now', cx: x(minutes.length - 1), cy: y(last.live), r: 3, 'data-live': last.live });
      dot.appendChild(el('title', {}, `${clock(last.t)}: ${fmt.format(last.live)} reading`));
      svg.appendChild(dot);
    }
    if (minutes.length) {
      svg.appendChild(el('text', { x: pad.l, y: H - 6, 'text-anchor': 'start' }, clock(minutes[0].t)));
      svg.appendChild(el('text', { x: W - pad.r, y: H - 6, 'text-anchor': 'end' }, 'now'));
    }
    box.replaceChildren(svg);
    const best = minutes.reduce((a, m) => (m.live > a.live ? m : a), minutes[0] || { live: 0 });
    $('pulse-caption').textContent = best.live
      ? `Most at once: ${fmt.format(best.live)} at ${clock(best.t)}`
      : `Nobody read in the last ${Math.round(minutes.length / 60)} h.`;
  }

  let resized = null;
  addEventListener('resize', () => {
    clearTimeout(resized);
    resized = setTimeout(() => {
      if (state.history) { drawChart(); drawReads(); }
      if (state.pulse) drawPulse();
    }, 100);
  });

  // --- the stream ------------------------------------------------------------------------

  function setStatus(kind, text) {
    const s = $('status');
    s.dataset.state = kind;
    s.textContent = text;
  }

  let source = null;
  let failures = 0;

  function connect() {
    if (state.ended) return;
    source = new EventSource('api/v1/admin/stream');
    source.addEventListener('snapshot', e => {
      const snap = JSON.parse(e.data);
      const newDay = snap.day !== state.day;
      state.day = snap.day;
      state.posts = new Map(snap.posts.map(p => [p.slug, p]));
      failures = 0;
      setStatus('live', 'live');
      render();
      if (newDay || !state.history) loadHistory();
      loadPulse(); // a snapshot may follow a gap in the stream: the minutes missed meanwhile
      loadStats();
    });
    source.addEventListener('pulse', e => {
      const m = JSON.parse(e.data);
      minuteClosed(m.at, m.live);
    });
    source.addEventListener('message', e => {
      const post = JSON.parse(e.data);
      state.posts.set(post.slug, post);
      schedule();
    });
    source.addEventListener('open', () => setStatus('live', 'live'));
    // The server could not read its numbers; it ends the stream and the browser retries.
    source.addEventListener('unavailable', () => setStatus('retrying', 'storage unavailable, retrying…'));
    source.addEventListener('error', () => {
      if (source.readyState !== EventSource.CLOSED) return setStatus('retrying', 'reconnecting…');
      source.close();
      retryLater();
    });
  }

  /** The browser gave up (an answer other than the stream): logged out, or try again. */
  async function retryLater() {
    try {
      const res = await fetch('api/v1/stats', { cache: 'no-store', credentials: 'same-origin' });
      if (res.status === 401) return sessionEnded();
    } catch (_) { /* the server is away: retry below */ }
    failures = Math.min(failures + 1, 5);
    const wait = 1000 * 2 ** failures * (0.75 + Math.random() / 2);
    setStatus('retrying', `reconnecting in ${Math.round(wait / 1000)} s…`);
    setTimeout(connect, wait);
  }

  function sessionEnded() {
    if (state.ended) return;
    state.ended = true;
    if (source) source.close();
    setStatus('ended', 'logged out: reload to log in');
  }

  // --- cluster mode (when /api/v1/stats has "nodes" or "redis") --------------------------

  let statsTimer = null;
  async function loadStats() {
    clearTimeout(statsTimer);
    let stats;
    try {
      const res = await fetch('api/v1/stats', { cache: 'no-store', credentials: 'same-origin' });
      if (res.status === 401) return sessionEnded();
      if (!res.ok) return;
      stats = await res.json();
    } catch (_) {
      return;
    }
    const cluster = 'nodes' in stats || 'redis' in stats;
    $('cluster').hidden = !cluster;
    if (!cluster) return;
    // Today `nodes` is a count and `redis` is "ok" or "down"; anything richer is shown as JSON.
    const state = { Nodes: stats.nodes, Redis: stats.redis };
    const dl = list(Object.fromEntries(Object.entries(state).filter(([, v]) => v !== undefined)));
    dl.classList.toggle('down', stats.redis !== undefined && stats.redis !== 'ok');
    $('cluster-state').replaceChildren(dl);
    // Node and Redis state is not on the stream: looked at again while it is shown.
    statsTimer = setTimeout(loadStats, 15000);
  }

  /** An object as a definition list, text only. */
  function list(item) {
    const dl = document.createElement('dl');
    dl.className = 'kv';
    for (const [k, v] of Object.entries(item)) {
      const dt = document.createElement('dt');
      dt.textContent = k;
      const dd = document.createElement('dd');
      dd.textContent = v !== null && typeof v === 'object' ? JSON.stringify(v) : String(v);
      dl.append(dt, dd);
    }
    return dl;
  }

  connect();
})();
