// A static export (`next build` writes out/): any web server can serve it. The counter works
// the same with `next start` or on Vercel.
export default {
  output: 'export',
  trailingSlash: true,
};
