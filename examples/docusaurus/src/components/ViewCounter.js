/**
 * "N reading now · M views" for one post: <ViewCounter slug="my-post" /> in a page or in MDX.
 *
 * It renders the placeholders, counter.js fills in the numbers. React must leave them alone:
 * `suppressHydrationWarning` on each number element lets the page hydrate with our numbers in
 * place of the server's "–" (without it React reports a hydration mismatch when the numbers
 * came first; counter.js fills them again if a re-render puts the "–" back).
 */
import React from 'react';

const reserved = { display: 'inline-block', minWidth: '4ch', textAlign: 'right', fontVariantNumeric: 'tabular-nums' };

export default function ViewCounter({ slug }) {
  return (
    <p className="viewcounter" data-viewcounter-slug={slug}>
      <span data-viewcounter="live" style={reserved} suppressHydrationWarning>–</span> reading now ·{' '}
      <span data-viewcounter="total" style={reserved} suppressHydrationWarning>–</span> views
    </p>
  );
}
