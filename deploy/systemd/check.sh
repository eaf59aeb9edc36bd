#!/usr/bin/env bash
# Checks deploy/systemd/viewcounter.service (CI runs this from .ci/run):
#
#   bash deploy/systemd/check.sh target/debug/viewcounter        # the binary ExecStart should run
#   bash deploy/systemd/check.sh BIN path/to/other.service       # another unit file
#   bash deploy/systemd/check.sh /usr/bin/viewcounter /usr/lib/systemd/system/viewcounter.service
#                                     # the unit the package installed (deploy/deb/check.sh)
#
# - `systemd-analyze verify` on a copy whose ExecStart points at BIN (the unit's own
#   /usr/bin/viewcounter does not exist on a build machine without the package, and verify
#   fails on a missing executable). verify exits 0 on what it only warns about, such as a misspelt directive
#   ("Unknown key 'ProtectHomee' in section [Service], ignoring."), so any line it prints about
#   the unit fails the check too.
# - `systemd-analyze security --offline=true`: the exposure score the README quotes must stay at
#   most 2.0 ("OK").
set -euo pipefail
bin=$(realpath "${1:?usage: check.sh VIEWCOUNTER_BIN [UNIT]}")
unit=${2:-$(dirname "$0")/viewcounter.service}
[ -x "$bin" ] || { echo "no executable at $bin" >&2; exit 1; }
if ! command -v systemd-analyze >/dev/null; then
    echo "installing systemd (for systemd-analyze)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends systemd >/dev/null
fi

dir=$(mktemp -d -t vc-unit.XXXXXX)
trap 'rm -rf "$dir"' EXIT
copy="$dir/viewcounter.service"
grep -q '^ExecStart=/usr/bin/viewcounter ' "$unit" ||
    { echo "$unit: no 'ExecStart=/usr/bin/viewcounter ' line to point at $bin" >&2; exit 1; }
sed "s#^ExecStart=/usr/bin/viewcounter #ExecStart=$bin #" "$unit" > "$copy"

status=0
out=$(systemd-analyze verify "$copy" 2>&1) || status=$?
[ -n "$out" ] && printf '%s\n' "$out"
if [ "$status" -ne 0 ]; then
    echo "systemd-analyze verify failed (exit $status)" >&2
    exit 1
fi
if grep -q 'viewcounter\.service' <<<"$out"; then
    echo "systemd-analyze verify warned about the unit (above)" >&2
    exit 1
fi
echo "systemd-analyze verify: no errors, no warnings"

systemd-analyze security --offline=true --threshold=20 "$copy" | tail -1
