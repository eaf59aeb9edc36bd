// A VitePress 1 site with the tag on every page (`head`): counter.js follows VitePress's
// client-side router by itself.
export default {
  title: 'A tiny blog (VitePress)',
  head: [['script', { src: 'https://counter.example.com/counter.js', async: '' }]],
};
