#!/usr/bin/env bash
# End-to-end tests: headless Chromium, nginx (HTTP/1.1 and TLS + HTTP/2), Caddy (TLS + HTTP/2),
# client-side routers (astro, @hotwired/turbo, htmx.org), the embedding examples.
#
#   bash e2e/run.sh                          # builds target/release/viewcounter, then tests it
#   VIEWCOUNTER_BIN=path/to/viewcounter bash e2e/run.sh    # tests that binary, builds nothing
#   bash e2e/run.sh tests/proxy-h2.test.js   # only some test files (paths relative to e2e/)
#
# Installs what it needs, idempotently: Debian's chromium, nginx-light, caddy, openssl and hugo (apt),
# and e2e/package-lock.json (npm ci). Never downloads a browser: playwright-core drives
# /usr/bin/chromium. Takes about a minute and a half once everything is installed.
# tests/frameworks.test.js also builds the Next.js, Docusaurus, VitePress and SvelteKit examples
# (their packages are in package-lock.json too): about 2.5 minutes more, builds included.
set -euo pipefail
cd "$(dirname "$0")"
E2E=$(pwd)
ROOT=$(cd .. && pwd)

step() { printf '\n== %s\n' "$*"; }

step "system packages (chromium nginx-light caddy openssl hugo)"
missing=()
for pkg in chromium nginx-light caddy openssl hugo; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    echo "all installed"
fi
chromium --version 2>/dev/null || true
nginx -v 2>&1
caddy version

step "npm ci (playwright-core; astro, @hotwired/turbo, htmx.org for the router tests)"
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error

if [ -z "${VIEWCOUNTER_BIN:-}" ]; then
    step "cargo build --release"
    (cd "$ROOT" && cargo build --release)
    VIEWCOUNTER_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/viewcounter"
fi
VIEWCOUNTER_BIN=$(cd "$ROOT" && realpath "$VIEWCOUNTER_BIN")
export VIEWCOUNTER_BIN
echo "server under test: $VIEWCOUNTER_BIN"

step "end-to-end tests"
rm -rf "$E2E/.build" # the framework examples' build folders: nothing kept from an earlier run
export E2E_RESULTS
E2E_RESULTS=$(mktemp -t vc-e2e-results.XXXXXX)
if [ $# -gt 0 ]; then files=("$@"); else files=(tests/*.test.js); fi
status=0
# One file at a time: each starts its own Chromium, and the machine has 2 cores.
node --test --test-concurrency=1 --test-reporter=spec "${files[@]}" || status=$?

step "figures"
cat "$E2E_RESULTS"
rm -f "$E2E_RESULTS"
exit $status
