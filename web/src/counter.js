// viewcounter: the live view counter's browser script.
//
// This is the readable source. The served file, web/counter.js, is its minified build
// (`bash web/build.sh`); both are committed. The long reasoning behind each part is in
// web/README.md, cited below by section ("README: Election" means its bullet "Election.").
//
// In short: the tabs of one browser elect a leader over a BroadcastChannel; the leader holds
// the only stream (GET api/v1/shared/{streamId}), attaches every tab's reader to it with
// beacons, and relays the stream's events to all tabs, which fill in their own post's numbers.
// Index pages watch posts without counting them: the leader asks its stream to carry the posts
// all tabs watch, and each tab fills the elements of each post it watches.
(() => {
  // Run once per document, however many times the tag is inserted (routers re-insert scripts).
  if (window.__viewcounter) return;
  const ownTag = document.currentScript || document.querySelector('script[src*="counter.js"]');
  if (!ownTag) return;
  // For routers that fire none of the events we listen to (README: "What the script does").
  window.__viewcounter = { scan };

  // The API sits beside the script: https://host/vc/counter.js talks to https://host/vc/api/v1/.
  const scriptUrl = ownTag.src;

  // Messages between tabs are arrays, [kind, ...] (README: "Channel messages are arrays").
  // Every kind but HELLO and DATA is also a question, "is there a leader?", which the leader
  // answers with HELLO.
  const HELLO = 'h'; // [HELLO, streamId]: the leader's claim, its answers and its heartbeat
  const DATA = 'd'; // [DATA, event data]: the leader relays one event of its stream
  const ASK = 'q'; // [ASK, 0]: a follower whose leader has been quiet asks
  const JOIN = 'join'; // [JOIN, slug, reader]: attach my reader; also the API's path word
  const LEAVE = 'leave'; // [LEAVE, slug, reader, visibleMs]: detach it; also the API's path word
  const WATCH = 'watch'; // [WATCH, tab, slugs]: the posts this tab watches; also a path word
  // The protocol's version is in the channel's name: tabs running a script that speaks
  // another one stay on their own channel (README: "Older scripts").
  const CHANNEL_PREFIX = 'viewcounter 3 ';

  // Election timings, each scaled by this tab's rank, drawn once per document in [1, 2):
  // the lowest rank claims first (README: "Election", "Liveness").
  const rank = 1 + Math.random();
  const CLAIM_MS = 200; // a question unanswered for 200–400 ms: this tab leads
  const LIVENESS_MS = 3000; // 3–6 s after the last HELLO: ask (follower) or say HELLO (leader)

  // Posts one page may watch, and one stream (all tabs together): the server's limits.
  const PAGE_WATCHES = 100;
  const STREAM_WATCHES = 200;

  // Backoff after the stream is closed for good: full jitter (README: "Reconnects").
  const RETRY_BASE_MS = 1000;
  const RETRY_MAX_MS = 60000;

  // EventSource.readyState values.
  const OPEN = 1;
  const CLOSED = 2;

  // This page.
  let slug = ''; // the post it counts, from the last scan ('' for none)
  let pageViewId; // its reader id: new for each new slug, kept across bfcache restores
  let showing = 0; // how often it has been shown: 1 at load, +1 at each bfcache restore
  let channel; // to the other tabs; a new one for each showing
  let electionTimer; // the one election timer: a pending claim, or the liveness timer
  let claiming = false; // a claim is pending: further questions do not push it back
  let lastHeardStreamId; // from the last HELLO: another one means a new leader or stream
  let watching = []; // the posts it watches, from the last scan
  // slug -> the last numbers heard for it: a router's or a framework's new element is filled
  // from here, and the leader hands a new watcher the numbers of posts already watched.
  const known = Object.create(null); // no prototype: a post may be called "constructor"
  let observer; // the MutationObserver (README: "Following the page")
  let rescanTimer;
  let visibleMs = 0; // reading time: how long the page was visible while counted, until…
  let visibleSince = 0; // …when it last became visible (performance.now()); 0 while hidden

  // Only while this tab leads.
  let streamId = ''; // '' while it follows
  let stream = null; // the EventSource; null while waiting to retry
  let readers; // reader -> slug: every reader the tabs announced
  let watches; // tab (its rank) -> the slugs it watches
  let watchesSent = ''; // the watch list the stream was last given
  let watchNumber = 0; // numbers the stream's watch lists: a late beacon loses
  let retryTimer;
  let failures = 0; // streams closed for good since the last one opened

  // --- Helpers ---

  // An element's data-viewcounter-slug wins over the tag's data-slug (the last tag of this
  // script that has one). A slug the server would refuse opens nothing: up to 200 of
  // [A-Za-z0-9_./-], with no empty, "." or ".." path segment.
  function readSlug() {
    const element = document.querySelector('[data-viewcounter-slug]');
    const tag = [...document.scripts].filter(s => s.src === scriptUrl && s.dataset.slug).pop();
    const found = element ? element.dataset.viewcounterSlug : tag && tag.dataset.slug;
    return isSlug(found) ? found : '';
  }

  const isSlug = found =>
    found && /^[\w./-]{1,200}$/.test(found) && !/(^|\/)\.?\.?(\/|$)/.test(found);

  const SELECTOR = '[data-viewcounter],[data-viewcounter-slug],[data-viewcounter-watch]';

  const apiUrl = (...path) => new URL('api/v1/' + path.join('/'), scriptUrl);

  // POST api/v1/{path} with a text/plain body: no preflight, and nobody reads the answer.
  const beacon = (body, ...path) => navigator.sendBeacon(apiUrl(...path), body);

  // 16 random bytes, each in base 36: 16–32 of [0-9a-z], as the server wants ids.
  const randomId = () =>
    [...crypto.getRandomValues(new Uint8Array(16))].map(byte => byte.toString(36)).join('');

  // The reader is the page view's id and this showing: a late beacon of an earlier showing
  // (before a bfcache restore) must not end this one (README: "Page showings").
  const reader = () => pageViewId + ' ' + showing;

  // Reading time, sent with the leave (README: "Reading time"): the time the page was visible
  // (Page Visibility) since it was counted, in whole milliseconds within a u32.
  const readingMs = () =>
    Math.min(2 ** 32 - 1, Math.round(visibleMs + (visibleSince && performance.now() - visibleSince)));

  function startReading() {
    visibleMs = 0;
    visibleSince = 0;
    visibilityChanged();
  }

  function visibilityChanged() {
    if (document.visibilityState !== 'visible') [visibleMs, visibleSince] = [readingMs(), 0];
    else if (!visibleSince) visibleSince = performance.now();
  }

  const listen = (types, handler) =>
    types.split(' ').forEach(type => window.addEventListener(type, handler, true));

  // --- Tab to tab ---

  // To every tab, this one too: a BroadcastChannel does not deliver to its sender, and the
  // leader handles its own reader like anyone else's.
  function broadcast(message) {
    channel.postMessage(message);
    handle(message);
  }

  function announce() {
    if (slug) broadcast([JOIN, slug, reader()]);
    if (watching.length) broadcast([WATCH, rank, watching]);
  }

  function armElectionTimer(delayMs, then) {
    clearTimeout(electionTimer);
    electionTimer = setTimeout(then, delayMs * rank);
  }

  function handle([kind, first, second, third]) {
    if (kind === HELLO) heardHello(first);
    else if (kind === DATA) heardNumbers(first);
    else if (!streamId) claimUnlessClaiming(); // a question, and this tab does not lead
    else if (kind === WATCH) watchesOf(first, second);
    else if (second) attachOrDetach(kind, first, second, third); // JOIN or LEAVE, to the leader
  }

  // Every tab hears each HELLO, its sender too (broadcast).
  function heardHello(leaderStreamId) {
    // Two leaders: the one with the greater streamId steps down (README: "Two leaders").
    if (leaderStreamId < streamId) stopLeading();
    claiming = false;
    armElectionTimer(LIVENESS_MS, checkLeader);
    if (leaderStreamId !== lastHeardStreamId) {
      lastHeardStreamId = leaderStreamId;
      announce(); // the new leader or its new stream knows nobody yet
    }
  }

  // The liveness timer: the leader's heartbeat, or a follower's question.
  function checkLeader() {
    broadcast(streamId ? [HELLO, streamId] : [ASK, 0]);
  }

  // A question that no HELLO answers in time makes this tab the leader.
  function claimUnlessClaiming() {
    if (claiming) return;
    claiming = true;
    armElectionTimer(CLAIM_MS, lead);
  }

  // One event, {"slug":…,"live":…,"total":…}: kept, and shown.
  function heardNumbers(data) {
    try {
      const numbers = JSON.parse(data);
      known[numbers.slug] = numbers;
      fill();
    } catch {} // malformed: ignore
  }

  // Fills every number element from the last numbers of its post: an element inside a
  // [data-viewcounter-watch] shows that post, any other this page's own (README: "Watching").
  // Writes only what differs, so a refill of an unchanged page touches nothing.
  function fill() {
    document.querySelectorAll('[data-viewcounter]').forEach(element => {
      const box = element.closest('[data-viewcounter-watch]');
      const numbers = known[box ? box.dataset.viewcounterWatch : slug];
      let value = numbers && numbers[element.dataset.viewcounter];
      if (typeof value === 'number' && element.textContent !== (value = value.toLocaleString())) {
        element.textContent = value;
      }
    });
    // Our own writes are no news to the observer (set up before any number arrives).
    observer.takeRecords();
  }

  // --- The leader ---

  function lead() {
    readers = {};
    watches = {};
    openStream();
  }

  // A new stream has a new id; its HELLO makes every tab announce its reader again.
  function openStream() {
    streamId = randomId();
    watchesSent = ''; // a new stream carries nothing yet
    stream = new EventSource(apiUrl('shared', streamId));
    stream.onopen = () => {
      failures = 0;
      // A stream (re)opens with nobody attached.
      for (const id in readers) beacon(id, 'shared', streamId, JOIN, readers[id]);
      watchesSent = '';
      sendWatches();
    };
    stream.onmessage = event => broadcast([DATA, event.data]);
    // Only a CLOSED stream is ours to retry; while CONNECTING the browser reconnects by itself.
    stream.onerror = () => {
      if (stream.readyState !== CLOSED) return;
      stream = null;
      const delayMs = Math.random() * Math.min(RETRY_MAX_MS, RETRY_BASE_MS * 2 ** failures++);
      retryTimer = setTimeout(openStream, delayMs);
    };
    broadcast([HELLO, streamId]);
  }

  // A JOIN attaches a reader it did not have yet; a LEAVE always detaches. While the stream is
  // not open the list is only kept: `onopen` attaches everyone.
  // A LEAVE's reading time goes along (none from an older tab's script).
  function attachOrDetach(kind, readerSlug, id, ms) {
    if (kind === JOIN) {
      if (readers[id] === readerSlug) return;
      readers[id] = readerSlug;
    } else {
      delete readers[id];
    }
    const body = ms === undefined ? id : id + ' ' + ms;
    if (stream && stream.readyState === OPEN) beacon(body, 'shared', streamId, kind, readerSlug);
  }

  // A tab's watch list replaces the one it had (none: it watches nothing any more). Posts the
  // stream already carries get no event until they change: the tab gets the last ones now
  // (README: "Watching").
  function watchesOf(tab, slugs) {
    const carried = watchesSent.split('\n');
    slugs.forEach(s => known[s] && carried.includes(s) && broadcast([DATA, JSON.stringify(known[s])]));
    watches[tab] = slugs;
    sendWatches();
  }

  // The stream carries what all tabs watch, first come first: one numbered list, sent when it
  // changes while the stream is open (README: "Watching").
  function sendWatches() {
    const all = [...new Set(Object.values(watches).flat())].slice(0, STREAM_WATCHES).join('\n');
    if (all === watchesSent || !stream || stream.readyState !== OPEN) return;
    watchesSent = all;
    beacon(++watchNumber + '\n' + all, 'shared', streamId, WATCH);
  }

  // Closing the stream lets every reader on it go (server side).
  function stopLeading() {
    clearTimeout(retryTimer);
    if (stream) stream.close();
    stream = null;
    streamId = '';
  }

  // --- This page's life ---

  // Stops counting this page at once, leader or not, and tells the leader. A leader's LEAVE is
  // its goodbye: a question nobody answers any more (README: "Leaving").
  function leave() {
    if (!slug) return;
    const ms = readingMs();
    beacon(reader() + ' ' + ms, 'leave', slug);
    broadcast([LEAVE, slug, reader(), ms]);
  }

  // The posts this page watches, as the page says now: a router's swap replaces them.
  function scanWatches(hiding) {
    const found = hiding
      ? []
      : [...document.querySelectorAll('[data-viewcounter-watch]')].map(e => e.dataset.viewcounterWatch);
    // "*" is the whole site (README: "Watching"): on the wire, one more watched name.
    const now = [...new Set(found.filter(s => s === '*' || isSlug(s)))].slice(0, PAGE_WATCHES);
    if (now + '' !== watching + '') broadcast([WATCH, rank, now]);
    if (!hiding) watching = now;
  }

  // A new slug is a new page view: leave the old post, join the new one with a new id. The same
  // slug (a router's swap within one post) keeps the reader attached (README: "Client-side
  // routers").
  function scan() {
    scanWatches();
    const newSlug = readSlug();
    if (newSlug === slug) return;
    leave();
    slug = newSlug;
    pageViewId = randomId();
    startReading();
    announce();
  }

  // At load and at each bfcache restore. Without BroadcastChannel (Safari before 15.4) the
  // channel reaches nobody and this tab leads itself (README: "Fallback").
  function pageShown() {
    showing++;
    startReading();
    channel = window.BroadcastChannel
      ? new BroadcastChannel(CHANNEL_PREFIX + scriptUrl)
      : new MessageChannel().port1;
    channel.onmessage = event => {
      handle(event.data);
      if (streamId) broadcast([HELLO, streamId]); // the leader answers every message
    };
    announce();
  }

  // A page in the bfcache must hold no channel: a message on it evicts the page
  // (README: "Back/forward cache"). The slug and id are kept for a restore.
  function pageHidden() {
    stopLeading();
    leave();
    scanWatches(true); // tells the leader; the list is kept for a restore
    // Also drops the claim that our own LEAVE just armed, and a pending rescan (it would post
    // on the closed channel).
    clearTimeout(electionTimer);
    clearTimeout(rescanTimer);
    claiming = false;
    channel.close();
  }

  // Client-side routers swap in a new page without a load: scan once it is rendered, then fill
  // the new elements from the last numbers heard (no event comes for numbers that did not
  // change). Astro's <ClientRouter /> fires astro:page-load, Turbo Drive turbo:load, htmx
  // htmx:afterSettle (htmx 2) or htmx:after:settle (htmx 4): scan at once. Any other router is
  // noticed by the history it writes (the Navigation API's navigatesuccess, else pushState and
  // replaceState) and by the counter elements it inserts, removes or changes, which also
  // catches a framework (React) rendering our text back to its placeholder: scan a little
  // later, once (README: "Following the page").
  function rescan() {
    scan();
    fill();
  }
  const rescanSoon = () => {
    clearTimeout(rescanTimer);
    rescanTimer = setTimeout(rescan, 50);
  };

  function followRouters() {
    listen('astro:page-load turbo:load htmx:afterSettle htmx:after:settle', rescan);
    listen('popstate', rescanSoon);
    if (window.navigation) navigation.addEventListener('navigatesuccess', rescanSoon);
    else {
      ['pushState', 'replaceState'].forEach(name => {
        const write = history[name];
        history[name] = function () {
          write.apply(this, arguments);
          rescanSoon();
        };
      });
    }
    // The check per mutation is cheap: does it touch one of our elements or their text?
    const ours = node => node.nodeType === 1 && (node.matches(SELECTOR) || node.querySelector(SELECTOR));
    observer = new MutationObserver(records => {
      for (const record of records) {
        const target = record.target.closest ? record.target : record.target.parentNode;
        if (
          record.type === 'attributes' ||
          (target && target.closest && target.closest(SELECTOR)) ||
          [...record.addedNodes, ...record.removedNodes].some(ours)
        ) {
          return rescanSoon();
        }
      }
    });
    observer.observe(document, {
      subtree: true,
      childList: true,
      characterData: true,
      attributeFilter: ['data-viewcounter-slug', 'data-viewcounter-watch'],
    });
  }

  function start() {
    // A prerendered page has not been seen yet.
    if (document.prerendering) return listen('prerenderingchange', start);
    // Capture listeners on window also see Astro's events at document and Turbo's at <html>.
    listen('pagehide', pageHidden);
    listen('visibilitychange', visibilityChanged);
    listen('pageshow', event => event.persisted && pageShown());
    followRouters();
    pageShown();
    scan();
  }

  // After load and once the page is idle, so the page's own loading is untouched and a
  // framework hydrating server-rendered HTML (React) has done so before we write into it
  // (README: "Frameworks that hydrate").
  const startWhenIdle = () => (window.requestIdleCallback ? requestIdleCallback(start, { timeout: 2000 }) : start());
  if (document.readyState === 'complete') startWhenIdle();
  else listen('load', startWhenIdle);
})();
