// Two posts, alpha and beta, each linking to the other (next/link: client-side navigation).
import Link from 'next/link';
import ViewCounter from '../../ViewCounter';

const next = { alpha: 'beta', beta: 'alpha' };

export const dynamicParams = false;
export function generateStaticParams() {
  return Object.keys(next).map(slug => ({ slug }));
}

export default async function Post({ params }) {
  const { slug } = await params;
  return (
    <article>
      <h1>Post {slug}</h1>
      <ViewCounter slug={slug} />
      <Link id="next" href={`/posts/${next[slug]}/`}>{next[slug]} →</Link>
    </article>
  );
}
