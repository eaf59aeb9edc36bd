// The tag once, in the root layout: it stays in the page across client-side navigations, and
// counter.js follows the App Router by itself (history and the counter elements it renders).
import './globals.css';

export const metadata = { title: 'A tiny blog (Next.js)' };

export default function RootLayout({ children }) {
  return (
    <html lang="en">
      <head>
        <script src="https://counter.example.com/counter.js" async />
      </head>
      <body>{children}</body>
    </html>
  );
}
