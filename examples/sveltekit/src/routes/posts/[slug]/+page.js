// Two posts, alpha and beta, each linking to the other.
const next = { alpha: 'beta', beta: 'alpha' };

export const entries = () => Object.keys(next).map(slug => ({ slug }));

export const load = ({ params }) => ({ slug: params.slug, next: next[params.slug] });
