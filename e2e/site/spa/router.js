// A router of the kind counter.js knows nothing about: it writes the history first and
// renders the next page later (fetch, then swap <article>), as VitePress and Docusaurus do; it
// fires no event counter.js listens to. `spa:swapped` is for the test only.
const swap = async url => {
  const html = await (await fetch(url)).text();
  const next = new DOMParser().parseFromString(html, 'text/html');
  document.querySelector('article').replaceWith(next.querySelector('article'));
  dispatchEvent(new Event('spa:swapped'));
};
document.addEventListener('click', event => {
  const link = event.target.closest('a[href]');
  if (!link) return;
  event.preventDefault();
  history.pushState(null, '', link.href);
  swap(link.href);
});
addEventListener('popstate', () => swap(location.href));
