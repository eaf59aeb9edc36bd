// A stand-in for Hotwired Turbo Drive, enough to drive counter.js the way Turbo does: links are
// fetched and the <body> replaced without a reload, with Turbo's events dispatched at <html>
// (bubbling): turbo:click, turbo:before-visit, turbo:visit, turbo:before-cache, turbo:before-render,
// turbo:render, turbo:load. Like Turbo, <script>s in the new body are re-activated, head scripts
// are kept, back/forward is a restoration visit, and turbo:load also fires after the first load.
(() => {
  const fire = (type, target = document.documentElement) =>
    target.dispatchEvent(new CustomEvent(type, { bubbles: true, cancelable: true }));
  window.__swaps = 0;
  async function visit(href, push) {
    fire('turbo:before-visit');
    fire('turbo:visit');
    await window.__swapTo(href, push, () => {
      fire('turbo:before-cache');
      fire('turbo:before-render');
    });
    fire('turbo:render');
    window.__swaps++;
    fire('turbo:load');
  }
  document.addEventListener('click', e => {
    const a = e.target.closest && e.target.closest('a[href]');
    if (!a || a.origin !== location.origin || !a.pathname.startsWith('/turbo/')) return;
    fire('turbo:click', a);
    e.preventDefault();
    visit(a.href, true);
  });
  addEventListener('popstate', () => visit(location.href, false));
  addEventListener('load', () => setTimeout(() => fire('turbo:load')));
})();
