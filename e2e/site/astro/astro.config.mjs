// The Astro blog of the e2e suite: Astro's own <ClientRouter /> (view transitions) around
// examples/astro/ViewCounter.astro (imported from there, so the tests render the example as it
// is), built by e2e/lib/harness.js buildAstro() with `astro build` into a temp dir and served
// under /astro/ by the test blog. The counter's URL is the examples' placeholder,
// https://counter.example.com, which the blog replaces in the HTML it serves.
export default {
  base: '/astro',
  trailingSlash: 'always',
  devToolbar: { enabled: false },
};
