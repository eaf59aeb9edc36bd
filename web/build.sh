#!/usr/bin/env bash
# Builds the served script, web/counter.js, from its readable source, web/src/counter.js.
#
#   bash web/build.sh          # writes web/counter.js (commit it with the source)
#   bash web/build.sh OUT      # writes OUT instead (CI compares it with the committed file)
#
# esbuild and terser are pinned in web/package.json and web/package-lock.json; this runs
# `npm ci` in web/ when either is not installed at its pinned version. esbuild checks the
# syntax: only syntax up to ES2019 gets through (--target), which is what the script has always
# assumed of browsers. terser then minifies (--ecma 2019: it writes no newer syntax): ~90 B
# (gzipped) smaller than esbuild's --minify, against a 2 KiB gzipped budget (design.md "The
# script"); inline=1 (inline only functions without arguments) because inlining the others grew
# the gzipped file. Both are deterministic: CI rebuilds and compares byte for byte.
set -euo pipefail
out=$(realpath -m "${1:-$(dirname "$0")/counter.js}")
cd "$(dirname "$0")"

pinned() { node -p "require('./package.json').devDependencies['$1']"; }
if [ "$(node_modules/.bin/esbuild --version 2>/dev/null)" != "$(pinned esbuild)" ] ||
    [ "$(node_modules/.bin/terser --version 2>/dev/null)" != "terser $(pinned terser)" ]; then
    npm ci --no-audit --no-fund --loglevel=error >&2
fi

# Into a temporary file first: a failed build leaves the previous one in place.
trap 'rm -f "$out.part"' EXIT
{
    echo '/*! viewcounter: source web/src/counter.js */'
    node_modules/.bin/esbuild src/counter.js \
        --target=es2019 \
        --legal-comments=none \
        --log-level=warning |
        node_modules/.bin/terser --ecma 2019 --compress passes=3,inline=1 --mangle --toplevel
} >"$out.part"
mv "$out.part" "$out"
