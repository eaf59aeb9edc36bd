// A SvelteKit 2 site, prerendered to static files (adapter-static writes build/). The counter
// works the same with any adapter.
import adapter from '@sveltejs/adapter-static';

export default {
  kit: { adapter: adapter() },
};
