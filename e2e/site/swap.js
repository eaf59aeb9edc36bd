// The body swap both router stand-ins share (astro/router.js, turbo/turbo-lite.js): fetch the
// page, let the router fire its pre-swap events, replace <body>, and re-activate the new body's
// scripts the way Astro and Turbo do (so counter.js sees its tag come back and must run once).
window.__swapTo = async (href, push, beforeSwap) => {
  const html = await (await fetch(href)).text();
  const next = new DOMParser().parseFromString(html, 'text/html');
  beforeSwap();
  if (push) history.pushState({ swapped: true }, '', href);
  document.title = next.title;
  document.body.replaceWith(document.adoptNode(next.body));
  for (const old of document.body.querySelectorAll('script')) {
    const s = document.createElement('script');
    for (const a of old.attributes) s.setAttribute(a.name, a.value);
    s.textContent = old.textContent;
    old.replaceWith(s);
  }
};
