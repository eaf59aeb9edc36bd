// A Docusaurus 3 site with the tag on every page (`scripts`): counter.js follows Docusaurus's
// client-side router by itself. Pages come from src/pages/ (@docusaurus/plugin-content-pages,
// which @docusaurus/preset-classic includes: a site using the preset needs only `scripts`).
export default {
  title: 'A tiny blog (Docusaurus)',
  url: 'https://blog.example.com',
  baseUrl: '/',
  plugins: ['@docusaurus/plugin-content-pages'],
  scripts: [{ src: 'https://counter.example.com/counter.js', async: true }],
  stylesheets: [],
};
