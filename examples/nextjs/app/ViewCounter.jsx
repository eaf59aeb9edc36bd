/**
 * "N reading now · M views" for one post: <ViewCounter slug="my-post" />.
 *
 * A server component: it renders the placeholders, counter.js fills in the numbers. React must
 * leave them alone: `suppressHydrationWarning` on each number element lets the page hydrate
 * with our numbers in place of the server's "–" (without it React reports a hydration mismatch
 * when the numbers came first).
 */
export default function ViewCounter({ slug }) {
  return (
    <p className="viewcounter" data-viewcounter-slug={slug}>
      <span data-viewcounter="live" suppressHydrationWarning>–</span> reading now ·{' '}
      <span data-viewcounter="total" suppressHydrationWarning>–</span> views
    </p>
  );
}
