// One post of the example: its title, its counter, a link to the next post (@docusaurus/Link:
// client-side navigation).
import React from 'react';
import Link from '@docusaurus/Link';
import Layout from '@theme/Layout';
import ViewCounter from './ViewCounter';

export default function Post({ slug, next }) {
  return (
    <Layout title={`Post ${slug}`}>
      <article>
        <h1>Post {slug}</h1>
        <ViewCounter slug={slug} />
        <Link id="next" to={`/posts/${next}`}>{next} →</Link>
      </article>
    </Layout>
  );
}
