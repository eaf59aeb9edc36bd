// A stand-in for Astro's <ClientRouter /> (view transitions), enough to drive counter.js the way
// Astro does: links are fetched and swapped in without a reload, around the lifecycle events
// Astro dispatches at `document` (not bubbling): astro:before-preparation, astro:after-preparation,
// astro:before-swap, astro:after-swap, astro:page-load. Like Astro, scripts of the new body are
// re-inserted so that they run (counter.js must run only once however often its tag comes back),
// and back/forward (popstate) is a transition too. astro:page-load also fires after the first load.
(() => {
  const fire = type => document.dispatchEvent(new Event(type));
  window.__swaps = 0;
  async function navigate(href, push) {
    fire('astro:before-preparation');
    await window.__swapTo(href, push, () => {
      fire('astro:after-preparation');
      fire('astro:before-swap');
    });
    fire('astro:after-swap');
    window.__swaps++;
    fire('astro:page-load');
  }
  document.addEventListener('click', e => {
    const a = e.target.closest && e.target.closest('a[href]');
    if (!a || a.origin !== location.origin || !a.pathname.startsWith('/astro/')) return;
    e.preventDefault();
    navigate(a.href, true);
  });
  addEventListener('popstate', () => navigate(location.href, false));
  addEventListener('load', () => setTimeout(() => fire('astro:page-load')));
})();
