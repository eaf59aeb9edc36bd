#!/usr/bin/env bash
# Checks the Debian package end to end on this machine (CI runs this from .ci/run, as root):
#
#   bash deploy/deb/check.sh                      # package target/debug/viewcounter with cargo-deb
#   bash deploy/deb/check.sh path/to/viewcounter_0.1.0-1_amd64.deb    # a package built already
#
# 1. Without an argument it packages the binary `cargo test` built (`cargo deb --no-build
#    --profile dev`: a release build would cost CI about 11 minutes), with the metadata a user's
#    `cargo deb` uses (Cargo.toml, [package.metadata.deb]). cargo-deb 3.8 warns that it will
#    refuse the dev profile some day: hence the pinned version below.
# 2. `dpkg -i`, then the installed unit passes deploy/systemd/check.sh and the installed
#    environment file documents every VIEWCOUNTER_* setting of `viewcounter serve --help`.
# 3. The installed binary runs as the installed unit would run it. systemd is not PID 1 here, so
#    this emulates the unit from its own lines: only its Environment= variables and its
#    EnvironmentFile= (read as root, as systemd does: it is root's alone), then its ExecStart= as
#    a DynamicUser= would (an unused uid of systemd's dynamic range, no groups, no new
#    privileges), with its LimitNOFILE= and UMask=, from /, and its StateDirectory= laid out as
#    systemd does for a dynamic user (/var/lib/private/viewcounter, and /var/lib/viewcounter a
#    symlink to it), reachable by the uid only inside the process's own mount namespace (a
#    stand-in for the one systemd gives the service). The sandboxing directives
#    (ProtectSystem= ...) are not applied. The listen address is set the way an
#    owner would, in the installed environment file (a free port: 8080 may be taken here).
#    Checked: /healthz, one view (a reader's stream), `viewcounter export` through the running
#    server, and, once the server has stopped, the README's export command (as root) from the
#    file in the state directory.
# 4. `dpkg -r` keeps the totals and the edited environment file; `dpkg --purge` removes both.
#
# It refuses to run where viewcounter is installed or /var/lib/viewcounter exists: it would
# replace or remove them.
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { printf -- '-- %s\n' "$*"; }
fail() { echo "FAIL: $*" >&2; exit 1; }

pkg=viewcounter
# cargo-deb, pinned: installed below only when `cargo deb --version` names another.
cargo_deb_version=3.8.0

[ "$(id -u)" -eq 0 ] || fail "run as root (dpkg -i, a system user's state directory)"
if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -qv 'not-installed'; then
    fail "$pkg is installed on this machine; this check would remove it"
fi
[ ! -e /var/lib/$pkg ] && [ ! -L /var/lib/$pkg ] && [ ! -e /var/lib/private/$pkg ] ||
    fail "/var/lib/$pkg exists; this check would remove it"

tmp=$(mktemp -d -t vc-deb.XXXXXX)
server_pid=
made_private=
cleanup() {
    set +e
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null; wait "$server_pid" 2>/dev/null; fi
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -qv 'not-installed'; then
        dpkg --purge "$pkg" >/dev/null 2>&1
    fi
    rm -rf "/var/lib/private/$pkg" "/var/lib/$pkg"
    if [ -n "$made_private" ]; then rmdir /var/lib/private 2>/dev/null; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# --- 1. the package ---
if [ $# -ge 1 ]; then
    deb=$1
else
    [ -x target/debug/viewcounter ] || fail "no target/debug/viewcounter: run cargo build first"
    if [ "$(cargo deb --version 2>/dev/null || true)" != "cargo-deb $cargo_deb_version" ]; then
        say "installing cargo-deb $cargo_deb_version"
        cargo install --locked --quiet cargo-deb --version "$cargo_deb_version"
    fi
    say "cargo deb --no-build --profile dev"
    deb=$(cargo deb --no-build --profile dev --fast --output "$tmp/" | tail -1)
fi
[ -f "$deb" ] || fail "no package at $deb"
case $(basename "$deb") in "${pkg}"_*.deb) ;; *) fail "$deb is not named ${pkg}_*.deb" ;; esac
say "package: $deb ($(du -h "$deb" | cut -f1))"

# --- 2. installed ---
say "dpkg -i"
dpkg -i "$deb"
unit=/usr/lib/systemd/system/$pkg.service
envfile=/etc/$pkg/$pkg.env
for f in /usr/bin/$pkg "$unit" "$envfile" /etc/$pkg/slugs.txt \
    /usr/share/doc/$pkg/examples/caddy/Caddyfile; do
    [ -f "$f" ] || fail "the package installed no $f"
done
[ "$(stat -c %a "$envfile")" = 600 ] || fail "$envfile is not readable by root alone"
grep -qx "$envfile" /var/lib/dpkg/info/$pkg.conffiles || fail "$envfile is not a conffile"

missing=$(/usr/bin/$pkg serve --help | grep -o 'VIEWCOUNTER_[A-Z0-9_]*' | sort -u |
    while read -r var; do grep -q "^#$var=" "$envfile" || echo "$var"; done)
[ -z "$missing" ] || fail "$envfile does not document:" $missing
say "$envfile documents every VIEWCOUNTER_* setting of serve --help"

bash deploy/systemd/check.sh /usr/bin/$pkg "$unit"

# --- 3. run as the unit would ---
unit_value() { sed -n "s/^$1=//p" "$unit"; }
[ "$(unit_value DynamicUser)" = yes ] || fail "the unit has no DynamicUser=yes (emulated here)"
unit_env=()
while IFS= read -r assignment; do
    [[ $assignment =~ ^[A-Z_]+=[^\ \"\']*$ ]] || fail "Environment=$assignment: not emulated here"
    unit_env+=("$assignment")
done < <(unit_value Environment)
[ "$(unit_value EnvironmentFile)" = "-$envfile" ] || fail "the unit reads no $envfile"
read -ra exec_start <<<"$(unit_value ExecStart)"
[ "${exec_start[0]}" = /usr/bin/$pkg ] || fail "ExecStart= runs ${exec_start[0]}, not /usr/bin/$pkg"
state_dir=$(unit_value StateDirectory)
[ "$state_dir" = "$pkg" ] || fail "StateDirectory=$state_dir, not $pkg"

# A uid of systemd's DynamicUser= range (61184-65519) that nobody has.
uid=61184
while getent passwd "$uid" >/dev/null || getent group "$uid" >/dev/null; do uid=$((uid + 1)); done
[ -d /var/lib/private ] || made_private=yes
install -d -m 0700 /var/lib/private
install -d -m "$(unit_value StateDirectoryMode)" -o "$uid" -g "$uid" "/var/lib/private/$state_dir"
ln -s "private/$state_dir" "/var/lib/$state_dir"
mkdir "$tmp/hold"

# Sets cmd to the command that runs "$@" as the unit's process: a clean environment with the
# unit's variables, the environment file sourced as root, then (in a mount namespace where a
# 0755 tmpfs over /var/lib/private holds the state directory) the uid with no privileges. Each
# step execs the next, so the command's pid is the server's.
unit_command() {
    cmd=(env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin "${unit_env[@]}"
        unshare --mount --propagation private bash -c '
            set -euo pipefail
            envfile=$1 uid=$2 state_dir=$3 hold=$4 nofile=$5 umask=$6; shift 6
            set -a; . "$envfile"; set +a
            mount --bind /var/lib/private "$hold"
            mount -t tmpfs -o mode=0755 tmpfs /var/lib/private
            mkdir "/var/lib/private/$state_dir"
            mount --bind "$hold/$state_dir" "/var/lib/private/$state_dir"
            cd /
            umask "$umask"
            ulimit -Sn "$nofile"; ulimit -Hn "$nofile"
            exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs "$@"
        ' unit_command "$envfile" "$uid" "$state_dir" "$tmp/hold" "$nofile"
        "$(unit_value UMask)" "$@")
}

# LimitNOFILE=, as far as this machine lets root go: a container may hold root's hard limit
# below it (raising it needs CAP_SYS_RESOURCE), and then --max-streams is simply lower.
nofile=$(unit_value LimitNOFILE)
if [ "$(ulimit -Hn)" != unlimited ] && [ "$(ulimit -Hn)" -lt "$nofile" ]; then
    say "LimitNOFILE=$nofile: this machine's hard limit is $(ulimit -Hn); using that"
    nofile=$(ulimit -Hn)
fi

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
sed -i "s|^#VIEWCOUNTER_LISTEN=.*|VIEWCOUNTER_LISTEN=127.0.0.1:$port|" "$envfile"
grep -qx "VIEWCOUNTER_LISTEN=127.0.0.1:$port" "$envfile" ||
    fail "no #VIEWCOUNTER_LISTEN= line in $envfile"
base=http://127.0.0.1:$port

say "starting: ${exec_start[*]} as uid $uid, listening on 127.0.0.1:$port (from $envfile)"
unit_command "${exec_start[@]}"
coproc SERVER { exec "${cmd[@]}" 2>"$tmp/server.log"; }
server_pid=$SERVER_PID
listening=
while IFS= read -r -t 60 line <&"${SERVER[0]}"; do
    [[ $line == "listening on "* ]] && { listening=${line#listening on }; break; }
done
if [ "$listening" != "$base" ]; then
    cat "$tmp/server.log" >&2
    fail "the server did not say 'listening on $base'"
fi

[ "$(curl -sS "$base/healthz")" = ok ] || fail "/healthz did not answer ok"
say "/healthz: ok"

slug=$(grep -v '^#' /etc/$pkg/slugs.txt | grep -m1 .)
# A reader: its stream's first event is the post's numbers, its own view included. (curl's own
# User-Agent is on the bot list: numbers, but no view.)
exec {stream}< <(exec curl -sSN --max-time 60 \
    -A 'Mozilla/5.0 (X11; Linux x86_64) viewcounter-deb-check' "$base/api/v1/connect/$slug")
reader_pid=$!
first=
while IFS= read -r -t 30 line <&"$stream"; do
    [[ $line == data:* ]] && { first=${line#data: }; break; }
done
kill "$reader_pid" 2>/dev/null || true
exec {stream}<&-
[ "$first" = '{"live":1,"total":1}' ] ||
    fail "the reader's first event was '$first', not live 1, total 1"
say "a reader of $slug: $first"

unit_command /usr/bin/$pkg export
"${cmd[@]}" >"$tmp/export.csv" 2>"$tmp/export.err"
cat "$tmp/export.err"
grep -q "from the server at $base" "$tmp/export.err" || fail "export did not ask the running server"
grep -qx "$slug,1" "$tmp/export.csv" || { cat "$tmp/export.csv"; fail "export has no '$slug,1'"; }
say "export (server): $slug,1"

kill -TERM "$server_pid"
wait "$server_pid" || fail "the server exited with status $? on SIGTERM"
server_pid=
# The README's command ("Install"), as root, the server stopped: from the file.
sh -c 'set -a; . /etc/viewcounter/viewcounter.env
    exec viewcounter export --db /var/lib/viewcounter/viewcounter.redb' \
    >"$tmp/export.csv" 2>"$tmp/export.err"
cat "$tmp/export.err"
grep -q "from the file /var/lib/$state_dir/" "$tmp/export.err" ||
    fail "export did not read the state directory"
grep -qx "$slug,1" "$tmp/export.csv" || { cat "$tmp/export.csv"; fail "export has no '$slug,1'"; }
db=/var/lib/private/$state_dir/$pkg.redb
[ "$(stat -c '%u %a' "$db")" = "$uid 600" ] ||
    fail "$db: $(stat -c 'owner %u, mode %a' "$db"), not the unit's user's alone"
say "export (README's command, the file, after SIGTERM): $slug,1; $db is uid $uid's, mode 600"

# --- 4. removed, then purged ---
say "dpkg -r"
dpkg -r "$pkg"
[ ! -e /usr/bin/$pkg ] && [ ! -e "$unit" ] || fail "dpkg -r left the binary or the unit"
[ -f "/var/lib/$state_dir/$pkg.redb" ] || fail "dpkg -r removed the totals"
grep -qx "VIEWCOUNTER_LISTEN=127.0.0.1:$port" "$envfile" ||
    fail "dpkg -r did not keep the edited $envfile"
say "kept: /var/lib/$state_dir/$pkg.redb and $envfile"

say "dpkg --purge"
dpkg --purge "$pkg"
for gone in "/var/lib/$state_dir" "/var/lib/private/$state_dir" "/etc/$pkg"; do
    [ ! -e "$gone" ] && [ ! -L "$gone" ] || fail "dpkg --purge left $gone"
done
if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -qv 'not-installed'; then
    fail "dpkg --purge left $pkg known to dpkg"
fi
say "gone: /var/lib/$state_dir, /var/lib/private/$state_dir, /etc/$pkg"
echo "deb check: ok"
