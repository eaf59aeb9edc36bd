#!/usr/bin/env bash
# Fault tests that need root: a full disk, a read-only disk, a client that vanishes without
# FIN or RST, and memory after a churn of readers. Each scenario prints one PASS or FAIL line
# with what it measured; the exit status is non-zero if any failed.
#
#   sudo bash faults/run.sh                 # builds target/debug/viewcounter if needed
#   VIEWCOUNTER_BIN=path/to/viewcounter bash faults/run.sh [scenario…]
#
# Scenarios: disk-full read-only vanished-client memory (default: all, in that order).
# Needs: root, tmpfs mounts, network namespaces; installs curl and iproute2 if missing.
# Clients are bash (/dev/tcp) and curl; nothing here sleeps to synchronise: every wait polls
# for a state with a deadline, and sleeps stand only where time passing is what is measured.
set -uo pipefail
cd "$(dirname "$0")/.."

UA='Mozilla/5.0 (X11; Linux x86_64) viewcounter-faults'
NS=vcfaults        # network namespace of the vanishing client
VETH_HOST=vcf-h    # veth pair: host side / client side
VETH_NS=vcf-c
NET_HOST=10.231.7.1
NET_NS=10.231.7.2

say() { printf '%s\n' "$*" >&2; }
now() { printf '%s' "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }
elapsed2() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

# ---------------------------------------------------------------------------------------------
# Setup and cleanup.

if [ "$(id -u)" != 0 ]; then
    say "faults/run.sh needs root (tmpfs mounts, network namespaces)"
    exit 2
fi

need() { # command package
    command -v "$1" >/dev/null && return 0
    say "installing $2"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null ||
        { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$2" >/dev/null; }
}
need curl curl
need ip iproute2

if [ -z "${VIEWCOUNTER_BIN:-}" ]; then
    say "VIEWCOUNTER_BIN unset: cargo build --bin viewcounter"
    cargo build --quiet --bin viewcounter || exit 2
    VIEWCOUNTER_BIN="${CARGO_TARGET_DIR:-target}/debug/viewcounter"
fi
BIN=$(realpath "$VIEWCOUNTER_BIN") || exit 2
[ -x "$BIN" ] || { say "not executable: $BIN"; exit 2; }

WORK=$(mktemp -d /tmp/viewcounter-faults.XXXXXX)
MOUNTS=()

cleanup() {
    local pids m
    # This shell's background jobs still running (servers, clients), and nothing else.
    pids=$(jobs -pr)
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    wait 2>/dev/null
    for m in "${MOUNTS[@]}"; do
        umount "$m" 2>/dev/null
    done
    ip netns del "$NS" 2>/dev/null
    ip link del "$VETH_HOST" 2>/dev/null
    if [ -n "${KEEP_WORK:-}" ]; then say "logs kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
# What a run killed halfway may have left behind (only names this script owns).
ip netns del "$NS" 2>/dev/null
ip link del "$VETH_HOST" 2>/dev/null
awk '$1 ~ /^viewcounter-faults-/ { print $2 }' /proc/mounts | xargs -r -n1 umount 2>/dev/null

{
    printf '# posts the fault tests read\nalpha\nbeta\ngamma\nquiet\n'
    for i in $(seq 0 29); do printf 'sleeper-%d\n' "$i"; done
} >"$WORK/slugs.txt"

# A tmpfs at $WORK/$1 of size $2; sets DISK to its path.
mount_tmpfs() {
    DISK="$WORK/$1"
    mkdir -p "$DISK"
    mount -t tmpfs -o "size=$2" "viewcounter-faults-$1" "$DISK" || return 1
    MOUNTS+=("$DISK")
}

# ---------------------------------------------------------------------------------------------
# The server.

# start_server NAME DB [FLAGS…]: sets SPID and SADDR (host:port). LISTEN overrides the address.
start_server() {
    local name=$1 db=$2 deadline
    shift 2
    local unset=()
    while IFS= read -r var; do unset+=(-u "$var"); done < <(compgen -e | grep '^VIEWCOUNTER_')
    env "${unset[@]}" VIEWCOUNTER_LOG=info "$BIN" serve --listen "${LISTEN:-127.0.0.1:0}" \
        --db "$db" --slugs "$WORK/slugs.txt" "$@" \
        >"$WORK/$name.out" 2>"$WORK/$name.log" </dev/null &
    SPID=$!
    deadline=$((SECONDS + 20))
    SADDR=""
    while [ -z "$SADDR" ]; do
        SADDR=$(sed -n 's|^listening on http://||p' "$WORK/$name.out" 2>/dev/null)
        if [ -z "$SADDR" ]; then
            if ! kill -0 "$SPID" 2>/dev/null || [ $SECONDS -ge $deadline ]; then
                say "server $name did not start:"; cat "$WORK/$name.log" >&2
                return 1
            fi
            sleep 0.05
        fi
    done
    SADDR=${SADDR/0.0.0.0/127.0.0.1}
}

# stop_server PID: SIGTERM, then its exit status (124 if still running after 15 s).
stop_server() {
    local pid=$1 deadline=$((SECONDS + 15))
    kill -TERM "$pid"
    while kill -0 "$pid" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || return 124
        sleep 0.05
    done
    wait "$pid"
}

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# GET from the server (loopback, so admin endpoints answer); body on stdout, fails on non-2xx.
get() { curl -sf -m 5 -A "$UA" "http://$SADDR$1"; }

# Field $2 of the JSON object $1 (numbers only).
field() { sed -n "s/.*\"$2\":\([0-9]*\).*/\1/p" <<<"$1"; }

# Every post actor asleep and no stream open (GET /api/v1/stats).
posts_asleep() {
    local s
    s=$(get /api/v1/stats) && [ "$(field "$s" posts_awake)" = 0 ] && [ "$(field "$s" streams)" = 0 ]
}

# The totals the server reports, as `slug,total` lines.
server_totals() {
    get /api/v1/totals | grep -o '"slug":"[^"]*","total":[0-9]*' |
        sed 's/"slug":"\(.*\)","total":\(.*\)/\1,\2/' | sort
}

# The totals in the file, as `slug,total` lines (no server may hold it).
file_totals() { "$BIN" export --db "$1" 2>>"$WORK/export.log" | tail -n +2 | sort; }

sum_totals() { awk -F, '{ s += $2 } END { print s + 0 }'; }

# await DESCRIPTION SECONDS COMMAND…: polls COMMAND until it succeeds.
await() {
    local what=$1 deadline=$((SECONDS + $2))
    shift 2
    until "$@"; do
        if [ $SECONDS -ge $deadline ]; then
            say "timed out after $2 s waiting for: $what"
            return 1
        fi
        sleep 0.1
    done
}

# ---------------------------------------------------------------------------------------------
# Clients: raw HTTP/1.1 over bash's /dev/tcp.

# new_token VAR WHAT: a fresh, valid view token (unique across this run's subshells) in VAR.
TOKENS=0
new_token() {
    TOKENS=$((TOKENS + 1))
    printf -v "$1" 'faults-%s-%07d-%s' "$BASHPID" "$TOKENS" "$2"
}

# open_stream ADDR SLUG TOKEN: opens a reader's stream and reads up to its first event; on
# 200 and a first event, sets STREAM_FD (left open) and FIRST_TOTAL. Otherwise sets
# STREAM_ANSWER to what the server answered (status line and body, or why there was none), so
# a failure is judged by its own answer, not by a later request that may find things repaired.
open_stream() {
    local fd line status="" body=""
    FIRST_TOTAL=""
    STREAM_ANSWER=""
    if ! exec {fd}<>"/dev/tcp/${1%:*}/${1##*:}" 2>/dev/null; then
        STREAM_ANSWER="no connection"
        return 1
    fi
    printf 'GET /api/v1/connect/%s?view=%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nAccept: text/event-stream\r\n\r\n' \
        "$2" "$3" "$1" "$UA" >&"$fd" 2>/dev/null
    while IFS= read -r -t 5 line <&"$fd"; do
        if [ -z "$status" ]; then
            status=${line%$'\r'}
            [[ $status == "HTTP/1.1 200"* ]] || break
        fi
        if [[ $line == data:* ]]; then
            FIRST_TOTAL=${line##*\"total\":}
            FIRST_TOTAL=${FIRST_TOTAL%%\}*}
            break
        fi
    done
    if [ -z "$FIRST_TOTAL" ]; then
        if [ -n "$status" ] && [[ $status != "HTTP/1.1 200"* ]]; then
            # A refusal: its head, then its JSON body (answered with Connection: close).
            # The body ends without a newline: the last `read` fails but still fills `line`.
            while IFS= read -r -t 5 line <&"$fd" || { [ -n "$line" ] && [[ $line == "{"* ]]; }; do
                line=${line%$'\r'}
                if [[ $line == "{"* ]]; then
                    body=$line
                    break
                fi
            done
        fi
        STREAM_ANSWER="${status:-no answer within 5 s}${body:+ $body}"
        exec {fd}>&-
        return 1
    fi
    STREAM_FD=$fd
}

# join ADDR SLUG TOKEN: a reader comes and goes (FIN); prints the total of its first event.
join() {
    open_stream "$@" || return 1
    exec {STREAM_FD}>&-
    printf '%s\n' "$FIRST_TOTAL"
}

# beacon ADDR SLUG TOKEN: the sendBeacon leave; succeeds on 204.
beacon() {
    local fd status=""
    exec {fd}<>"/dev/tcp/${1%:*}/${1##*:}" 2>/dev/null || return 1
    printf 'POST /api/v1/leave/%s HTTP/1.1\r\nHost: %s\r\nUser-Agent: %s\r\nContent-Type: text/plain;charset=UTF-8\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s' \
        "$2" "$1" "$UA" "${#3}" "$3" >&"$fd" 2>/dev/null
    IFS= read -r -t 5 status <&"$fd"
    exec {fd}>&-
    [[ $status == "HTTP/1.1 204"* ]]
}

# churn ADDR JOINS WORKERS SLUG_PREFIX POSTS: JOINS joins over POSTS posts by WORKERS parallel
# clients; every third reader sends a beacon before closing. Prints the joins that succeeded.
churn() {
    local addr=$1 joins=$2 workers=$3 prefix=$4 posts=$5 w
    local out="$WORK/churn.$RANDOM"
    mkdir -p "$out"
    for ((w = 0; w < workers; w++)); do
        (
            ok=0
            for ((i = w; i < joins; i += workers)); do
                slug="$prefix$((i % posts))"
                new_token tok churn
                if [ $((i % 3)) = 0 ]; then
                    # The page is hidden: a beacon while the stream is open, then it closes.
                    if open_stream "$addr" "$slug" "$tok"; then
                        beacon "$addr" "$slug" "$tok" && ok=$((ok + 1))
                        exec {STREAM_FD}>&-
                    fi
                else
                    join "$addr" "$slug" "$tok" >/dev/null && ok=$((ok + 1))
                fi
            done
            echo "$ok" >"$out/$w"
        ) &
    done
    wait
    cat "$out"/* | awk '{ s += $1 } END { print s + 0 }'
}

# A steady load for a fault: joins on alpha, beta, gamma (no pause) until the file $1 exists;
# appends one line per answered join to $2. Runs in the background; sets LOAD_PID.
start_load() {
    local stop=$1 log=$2 addr=$SADDR
    (
        i=0
        slugs=(alpha beta gamma)
        until [ -e "$stop" ]; do
            i=$((i + 1))
            new_token tok load
            join "$addr" "${slugs[i % 3]}" "$tok" >>"$log" || true
            sleep 0.01
        done
    ) &
    LOAD_PID=$!
}

# A reader that stays: curl with the stream going to $2; sets WATCH_PID.
start_watcher() {
    local tok
    new_token tok watch
    curl -s -N -A "$UA" -H 'Accept: text/event-stream' "http://$1/api/v1/connect/alpha?view=$tok" >"$2" &
    WATCH_PID=$!
}

# Checks, once a second while the file $1 does not exist, that the count endpoint answers for
# an awake post (alpha) and a sleeping one (quiet), and that a reader can join a post nobody
# reads (sleeper-N, a new one each time); failures go to $2, answered joins to $3.
start_count_probe() {
    local stop=$1 log=$2 joins=$3 addr=$SADDR
    (
        k=0
        until [ -e "$stop" ]; do
            for slug in alpha quiet; do
                body=$(curl -s -m 5 -w ' HTTP %{http_code}' -A "$UA" "http://$addr/api/v1/count/$slug")
                [[ $body == *'"total":'*' HTTP 200' ]] || echo "count/$slug: $body" >>"$log"
            done
            new_token tok probe
            if [ $k -lt 30 ]; then
                # Not `join` in a command substitution: its answer (STREAM_ANSWER) must stay here.
                if open_stream "$addr" "sleeper-$k" "$tok"; then
                    exec {STREAM_FD}>&-
                    printf '%s\n' "$FIRST_TOTAL" >>"$joins"
                elif [[ $STREAM_ANSWER == "HTTP/1.1 503"*'storage unavailable'* ]]; then
                    # A post not read since the server started has its total only in the file:
                    # while the file cannot be read, an honest 503 (retry later) is the answer.
                    echo "unavailable sleeper-$k (never read since start): $STREAM_ANSWER" >>"$log"
                else
                    echo "join sleeper-$k failed: $STREAM_ANSWER" >>"$log"
                fi
                k=$((k + 1))
            fi
            sleep 1
        done
    ) &
    PROBE_PID=$!
}

# How many lines of file $2 match $1; 0 when there is no such file.
lines_in() {
    local n=0
    [ -n "$2" ] && [ -f "$2" ] && n=$(grep -c -- "$1" "$2" || true)
    echo "${n:-0}"
}

data_lines() { grep -c '^data:' "$1" 2>/dev/null || true; }
last_total() { grep '^data:' "$1" | tail -1 | sed -n 's/.*"total":\([0-9]*\).*/\1/p'; }
count_lines() { grep -c -- "$2" "$1" 2>/dev/null || true; }

# The arguments joined with "; ".
joined() {
    local out="" part
    for part in "$@"; do out+="${out:+; }$part"; done
    printf '%s' "$out"
}

RESULTS=()
report() { # scenario status message
    local line
    line=$(printf '%-4s %-15s %s' "$2" "$1" "$3")
    RESULTS+=("$line")
    printf '%s\n' "$line"
}

# ---------------------------------------------------------------------------------------------
# Storage faults: shared by the full and the read-only disk.

FLUSH=(--flush-after 200ms --flush-max-wait 3s)
MAX_WAIT_S=3

# STOP=kill|term storage_fault NAME BREAK_CMD FIX_CMD ERROR_TEXT
#   A server on a tmpfs; views on every post, all posts asleep; BREAK_CMD makes writing fail;
#   for FAULT_SECONDS a load joins, a reader stays, counts and new readers are asked for;
#   FIX_CMD makes writing work; then nothing may be lost: after SIGTERM (STOP=term) or after
#   kill -9 once every view is older than the max wait (STOP=kill: the retries alone wrote
#   them), the file equals the totals the server reported and the views clients were counted.
FAULT_SECONDS=8
storage_fault() {
    local name=$1 break_cmd=$2 fix_cmd=$3 error_text=$4
    local disk problems=() stop="$WORK/$name.stop" joined="$WORK/$name.joins"
    local log="$WORK/$name.log" stream="$WORK/$name.stream" probe="$WORK/$name.probe"
    mount_tmpfs "$name" 64m || { report "$name" FAIL "cannot mount a tmpfs"; return; }
    disk=$DISK
    start_server "$name" "$disk/viewcounter.redb" "${FLUSH[@]}" --heartbeat 1s \
        --dedupe-window 1s --ip-stream-limit 0 --ip-view-rate 0 ||
        { report "$name" FAIL "server did not start"; return; }
    local pid=$SPID addr=$SADDR
    # Before the fault: views on every post, written (quiet then falls asleep with its row).
    local before=0 i tok
    for i in 1 2 3 4 5 6; do
        for slug in alpha beta gamma quiet; do
            new_token tok pre
            join "$addr" "$slug" "$tok" >/dev/null && before=$((before + 1))
        done
    done
    # Every post asleep (after --dedupe-window 1s and its idle grace), its views written: the
    # count of `quiet` during the fault is answered from the store, not from an actor.
    await "every post asleep before the fault" 20 posts_asleep ||
        problems+=("posts still awake before the fault")
    start_watcher "$addr" "$stream"
    await "the watcher's first event" 5 bash -c "grep -q '^data:' '$stream'" ||
        problems+=("the staying reader got no first event")

    eval "$break_cmd" || { report "$name" FAIL "could not break the disk: $break_cmd"; return; }
    local broken_at
    broken_at=$(now)
    : >"$joined"
    start_load "$stop" "$joined"
    start_count_probe "$stop" "$probe" "$joined"
    await "a failing write logged" 20 grep -q "cannot write totals" "$log" ||
        problems+=("no failing write was logged")
    NOTE=""
    if [ -n "${AFTER_FIRST_FAILURE:-}" ]; then
        eval "$AFTER_FIRST_FAILURE" || problems+=("$AFTER_FIRST_FAILURE failed")
    fi
    local data_at_fault faulted_for
    data_at_fault=$(data_lines "$stream")
    # Time passing is what is tested: the fault lasts FAULT_SECONDS under load.
    sleep "$FAULT_SECONDS"
    eval "$fix_cmd" || problems+=("could not repair the disk: $fix_cmd")
    faulted_for=$(elapsed "$broken_at")
    local fixed_at
    fixed_at=$(now)
    await "writing works again" 10 writing_works "$log" ||
        problems+=("writing did not resume after the fix")
    local recovered_in
    recovered_in=$(elapsed "$fixed_at")
    touch "$stop"
    wait "$LOAD_PID" "$PROBE_PID" 2>/dev/null
    kill "$WATCH_PID" 2>/dev/null

    local data_during new_total joins_ok reported reported_sum
    data_during=$(($(data_lines "$stream") - data_at_fault))
    new_total=$(last_total "$stream")
    joins_ok=$(wc -l <"$joined")
    reported=$(server_totals)
    reported_sum=$(sum_totals <<<"$reported")
    local how exit=0
    if [ "$STOP" = kill ]; then
        # Not the final flush on SIGTERM: the retries alone must have written every view.
        # Time passing is what is tested: every view is older than the max wait.
        sleep $((MAX_WAIT_S + 1))
        kill -KILL "$pid"
        wait "$pid" 2>/dev/null
        how="kill -9 ${MAX_WAIT_S}+1 s after the last view"
    else
        stop_server "$pid"
        exit=$?
        how="SIGTERM"
    fi
    local stored stored_sum
    stored=$(file_totals "$disk/viewcounter.redb")
    stored_sum=$(sum_totals <<<"$stored")

    # Judgement.
    [ "$exit" = 0 ] || problems+=("exit status $exit after SIGTERM")
    [ "$joins_ok" -ge 50 ] || problems+=("only $joins_ok joins answered during the fault")
    local failed_counts failed_joins unavailable request_failed
    failed_counts=$(lines_in '^count/' "$probe")
    failed_joins=$(lines_in '^join' "$probe")
    unavailable=$(lines_in '^unavailable' "$probe")
    request_failed=$(count_lines "$log" "request failed")
    [ "$failed_counts" = 0 ] || problems+=("$failed_counts failed counts, e.g. $(grep -m1 '^count/' "$probe")")
    [ "$failed_joins" = 0 ] || problems+=("$failed_joins failed joins, e.g. $(grep -m1 '^join' "$probe")")
    [ "$request_failed" = 0 ] || problems+=("$request_failed 'request failed' lines logged")
    [ "$data_during" -ge 3 ] || problems+=("the staying reader got $data_during events during the fault")
    local errors retries error_kinds min_gap
    errors=$(count_lines "$log" "cannot write totals")
    retries=$(count_lines "$log" "reopened the database")
    error_kinds=$(grep "cannot write totals" "$log" | grep -c -- "$error_text" || true)
    min_gap=$(min_failure_gap "$log")
    [ "$errors" -ge 2 ] || problems+=("the failure was logged $errors time(s) in ${faulted_for} s: not once per interval")
    # At most once per --flush-max-wait within one failing spell (a success starts a new one).
    awk -v g="$min_gap" -v w="$MAX_WAIT_S" 'BEGIN { exit !(g == "none" || g >= w - 0.05) }' ||
        problems+=("two failure lines ${min_gap}s apart, less than --flush-max-wait ${MAX_WAIT_S}s")
    [ "$error_kinds" -ge 1 ] || problems+=("no logged failure mentions '$error_text'")
    grep -q "panicked" "$log" && problems+=("the server panicked")
    [ "$reported" = "$stored" ] || problems+=("file ($stored_sum: $(tr '\n' ' ' <<<"$stored")) != server totals ($reported_sum: $(tr '\n' ' ' <<<"$reported"))")
    [ "$stored_sum" = $((before + joins_ok + 1)) ] ||
        problems+=("file holds $stored_sum views, clients were counted $((before + joins_ok + 1))")

    local figures="fault ${faulted_for}s under load (--flush-max-wait ${MAX_WAIT_S}s), $NOTE$errors failure lines logged (closest ${min_gap}s apart), $retries reopens logged, $joins_ok views counted during it, $data_during events to a staying reader (alpha total $new_total), writing resumed ${recovered_in}s after the fix; after $how the file = server totals = $stored_sum views; joins of posts not read since start answered 503 (retry later): $unavailable"
    if [ ${#problems[@]} = 0 ]; then
        report "$name" PASS "$figures"
    else
        report "$name" FAIL "$figures; $(joined "${problems[@]}")"
    fi
}

# Whether the last write outcome the log shows is a success after failures.
writing_works() {
    grep -E "cannot write totals|writing totals works again" "$1" | tail -1 | grep -q "works again"
}

# The shortest time between two logged write failures with no success between them; "none"
# when no two failures follow each other.
min_failure_gap() {
    local line ts t prev="" min=none
    while IFS= read -r line; do
        line=$(sed 's/\x1b\[[0-9;]*m//g' <<<"$line")
        if [[ $line == *"works again"* ]]; then
            prev=""
            continue
        fi
        ts=${line%% *}
        t=$(date -d "$ts" +%s.%N) || continue
        if [ -n "$prev" ]; then
            min=$(awk -v a="$prev" -v b="$t" -v m="$min" 'BEGIN { g = b - a; if (m == "none" || g < m) printf "%.2f", g; else print m }')
        fi
        prev=$t
    done < <(grep -E "cannot write totals|writing totals works again" "$1")
    printf '%s' "$min"
}

scenario_disk_full() {
    # Fill the tmpfs with a file; delete it to repair.
    AFTER_FIRST_FAILURE="" STOP=kill storage_fault disk-full \
        'dd if=/dev/zero of="$DISK/filler" bs=64k status=none 2>/dev/null; [ "$(df --output=avail "$DISK" | tail -1 | tr -d " ")" = 0 ]' \
        'rm -f "$DISK/filler"' \
        "No space left on device"
}

# Waits until the server holds no handle on its file (after a failed write), then remounts its
# tmpfs read-only. A tmpfs with a file open for writing cannot be remounted read-only, so the
# disk is first made full (shrunk to what it holds), which fails a write and closes the file.
make_read_only() {
    local deadline=$((SECONDS + 10)) started
    started=$(now)
    until mount -o remount,ro "$DISK" 2>/dev/null; do
        [ $SECONDS -lt $deadline ] || { say "$DISK stayed busy"; return 1; }
        sleep 0.05
    done
    NOTE="read-only from $(elapsed "$started")s after the first failed write until the fix, "
}

scenario_read_only() {
    AFTER_FIRST_FAILURE='make_read_only' STOP=term storage_fault read-only \
        'mount -o remount,size=$(df --output=used -k "$DISK" | tail -1 | tr -d " ")k "$DISK"' \
        'mount -o remount,rw,size=64m "$DISK"' \
        "Read-only file system"
}

# ---------------------------------------------------------------------------------------------
# A client that vanishes without FIN or RST.

# Three servers, one reader each in a network namespace; the link is cut (the client's side
# goes down, so nothing it sends arrives, and nothing the server sends is answered); measures
# how long each server takes to drop the reader: with heartbeats every second (data in flight:
# TCP_USER_TIMEOUT), every 15 s (the default), and every hour (keepalive probes alone).
scenario_vanished_client() {
    local problems=() figures=()
    ip netns add "$NS" &&
        ip link add "$VETH_HOST" type veth peer name "$VETH_NS" netns "$NS" &&
        ip addr add "$NET_HOST/30" dev "$VETH_HOST" &&
        ip link set "$VETH_HOST" up &&
        ip -n "$NS" addr add "$NET_NS/30" dev "$VETH_NS" &&
        ip -n "$NS" link set "$VETH_NS" up &&
        ip -n "$NS" link set lo up ||
        { report vanished-client FAIL "cannot set up the network namespace"; return; }

    local beats=(1s 15s 1h) addrs=() pids=() clients=() b i tok
    for b in "${beats[@]}"; do
        LISTEN=0.0.0.0:0 start_server "vanish-$b" "$WORK/vanish-$b.redb" --heartbeat "$b" ||
            { report vanished-client FAIL "server did not start"; return; }
        addrs+=("$SADDR")
        pids+=("$SPID")
        new_token tok vanish
        ip netns exec "$NS" curl -s -N -A "$UA" -H 'Accept: text/event-stream' \
            "http://$NET_HOST:${SADDR##*:}/api/v1/connect/alpha?view=$tok" \
            >"$WORK/vanish-$b.stream" 2>&1 &
        clients+=($!)
    done
    for i in "${!beats[@]}"; do
        SADDR=${addrs[$i]}
        await "the namespaced reader is live on the ${beats[$i]} server" 10 \
            bash -c "curl -s -A '$UA' http://${addrs[$i]}/api/v1/count/alpha | grep -q '\"live\":1'" ||
            { report vanished-client FAIL "the reader in the namespace never became live"; return; }
    done
    # The worst moment for the default server: right after one of its heartbeats arrived, so
    # the next one, the first data nobody acknowledges, leaves a whole interval later.
    local beats_seen
    beats_seen=$(count_lines "$WORK/vanish-15s.stream" '^:')
    await "a heartbeat of the 15 s server" 20 \
        bash -c "[ \$(grep -c '^:' '$WORK/vanish-15s.stream') -gt $beats_seen ]" ||
        problems+=("no heartbeat from the 15 s server")

    ip -n "$NS" link set "$VETH_NS" down
    local cut_at
    cut_at=$(now)
    # The client process goes too; its kernel cannot send its FIN over the dead link.
    for i in "${clients[@]}"; do kill -KILL "$i" 2>/dev/null; done

    local left=("${!beats[@]}") dropped=() deadline=$((SECONDS + 90))
    while [ ${#left[@]} -gt 0 ] && [ $SECONDS -lt $deadline ]; do
        local still=()
        for i in "${left[@]}"; do
            if curl -s -A "$UA" "http://${addrs[$i]}/api/v1/count/alpha" | grep -q '"live":0'; then
                dropped[$i]=$(elapsed2 "$cut_at")
            else
                still+=("$i")
            fi
        done
        left=("${still[@]}")
        sleep 0.1
    done
    for i in "${!beats[@]}"; do
        local t=${dropped[$i]:-}
        if [ -z "$t" ]; then
            figures+=("--heartbeat ${beats[$i]}: still live after 90 s")
            problems+=("--heartbeat ${beats[$i]}: never dropped")
        else
            figures+=("--heartbeat ${beats[$i]}: live fell ${t}s after the cut")
            # The default's worst case is 60 s by design (a 15 s heartbeat interval, then 45 s
            # of TCP_USER_TIMEOUT): allow what polling adds to the measurement there.
            local limit=60
            [ "${beats[$i]}" = 15s ] && limit=60.5
            awk -v t="$t" -v l="$limit" 'BEGIN { exit !(t <= l) }' ||
                problems+=("--heartbeat ${beats[$i]}: ${t}s > $limit s")
        fi
    done
    for i in "${!pids[@]}"; do stop_server "${pids[$i]}" >/dev/null; done
    ip netns del "$NS" 2>/dev/null
    if [ ${#problems[@]} = 0 ]; then
        report vanished-client PASS "$(joined "${figures[@]}")"
    else
        report vanished-client FAIL "$(joined "${figures[@]}"); $(joined "${problems[@]}")"
    fi
}

# ---------------------------------------------------------------------------------------------
# Memory after churn.

# RSS after a warm-up churn (all posts asleep) vs after churns of thousands of readers (all
# asleep again after each): memory must come back to where it started (+10 %). Later rounds
# show whether what remains grows with the readers served (a leak) or levels off.
MEMORY_POSTS=50
MEMORY_JOINS=${MEMORY_JOINS:-3000}
MEMORY_ROUNDS=${MEMORY_ROUNDS:-3}
scenario_memory() {
    local problems=() pid addr
    start_server memory "$WORK/memory.redb" --allow-any-slug --dedupe-window 1s \
        --ip-stream-limit 0 --ip-view-rate 0 --ip-new-post-rate 0 --flush-after 200ms --flush-max-wait 1s ||
        { report memory FAIL "server did not start"; return; }
    pid=$SPID addr=$SADDR

    local rss0 warm rss1 answered t churn_s round n rss=() sizes=()
    rss0=$(rss_kb "$pid")
    warm=$(churn "$addr" 600 8 post- "$MEMORY_POSTS")
    await "all posts asleep after the warm-up" 20 posts_asleep || problems+=("posts still awake after the warm-up")
    rss1=$(rss_kb "$pid")
    answered=$warm
    for ((round = 1; round <= MEMORY_ROUNDS; round++)); do
        t=$(now)
        n=$(churn "$addr" "$MEMORY_JOINS" 8 post- "$MEMORY_POSTS")
        [ $round = 1 ] && churn_s=$(elapsed "$t")
        answered=$((answered + n))
        [ "$n" = "$MEMORY_JOINS" ] || problems+=("round $round: $n of $MEMORY_JOINS joins answered")
        await "all posts asleep after churn $round" 20 posts_asleep ||
            problems+=("posts still awake after churn $round: $(get /api/v1/stats)")
        rss+=("$(rss_kb "$pid")")
        sizes+=("$(($(stat -c %s "$WORK/memory.redb") / 1024))")
    done
    local peak total
    peak=$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status")
    total=$(server_totals | sum_totals)
    [ "$total" = "$answered" ] || problems+=("totals $total != $answered joins answered")
    local limit=$((rss1 * 110 / 100))
    [ "${rss[0]}" -le "$limit" ] || problems+=("RSS after churn ${rss[0]} kB > start ${rss1} kB + 10 %")
    stop_server "$pid" >/dev/null || problems+=("stop failed")
    local figures="VmRSS at start ${rss0} kB, after a warm-up of $warm joins ${rss1} kB; after each churn of $MEMORY_JOINS joins over $MEMORY_POSTS posts (first in ${churn_s}s): $(printf '%s kB, ' "${rss[@]}")peak VmHWM ${peak} kB; file after each: $(printf '%s kB ' "${sizes[@]}")"
    if [ ${#problems[@]} = 0 ]; then
        report memory PASS "$figures"
    else
        report memory FAIL "$figures; $(joined "${problems[@]}")"
    fi
}

# ---------------------------------------------------------------------------------------------

SCENARIOS=("$@")
[ ${#SCENARIOS[@]} -gt 0 ] || SCENARIOS=(disk-full read-only vanished-client memory)
started=$SECONDS
for s in "${SCENARIOS[@]}"; do
    case $s in
        disk-full) scenario_disk_full ;;
        read-only) scenario_read_only ;;
        vanished-client) scenario_vanished_client ;;
        memory) scenario_memory ;;
        *) say "unknown scenario $s"; exit 2 ;;
    esac
done
printf '\n== fault tests (%d s)\n' $((SECONDS - started))
printf '%s\n' "${RESULTS[@]}"
for r in "${RESULTS[@]}"; do
    [[ $r == PASS* ]] || exit 1
done
