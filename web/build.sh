#!/usr/bin/env bash
# Builds the served script, web/counter.js, from its readable source, web/src/counter.js.
#
#   bash web/build.sh          # writes web/counter.js (commit it with the source)
#   bash web/build.sh OUT      # writes OUT instead (CI compares it with the committed file)
#
# esbuild is pinned in web/package.json and web/package-lock.json; this runs `npm ci` in web/
# when it is not installed yet. Only syntax up to ES2019 gets through (--target): that is what
# the script has always assumed of browsers.
set -euo pipefail
out=$(realpath -m "${1:-$(dirname "$0")/counter.js}")
cd "$(dirname "$0")"

version=$(node -p 'require("./package.json").devDependencies.esbuild')
if [ "$(node_modules/.bin/esbuild --version 2>/dev/null)" != "$version" ]; then
    npm ci --no-audit --no-fund --loglevel=error >&2
fi

node_modules/.bin/esbuild src/counter.js \
    --minify \
    --target=es2019 \
    --legal-comments=none \
    --banner:js='/*! viewcounter: live view counter. Source: web/src/counter.js; how it works: web/README.md */' \
    --log-level=warning \
    --outfile="$out"
