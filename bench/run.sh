#!/usr/bin/env bash
# Issue 3 benchmark: viewcounter against nginx + nchan, side by side, in one run.
#
#   bench/run.sh                          # full run: 15,000 streams (a few minutes)
#   STREAMS=2000 DURATION=5 bench/run.sh  # quick run (under 2 minutes)
#   just bench                            # the same, through the justfile
#
# Installs nginx-light + libnginx-mod-nchan from Debian if missing, builds the release
# binaries, then for each scenario starts a fresh server of each target in turn,
# runs `loadgen` against it, stops it, and finally writes BENCHMARKS.md at the repo
# root (the text after its keep-marker line is preserved).
#
# Parameters (environment):
#   STREAMS=15000        streams on one post for hold / fanout / idle
#   DURATION=10          seconds of churn and burst
#   ROUNDS=5             fanout rounds
#   IDLE_WINDOW          idle measurement window, s (30 at 15,000 streams, else DURATION)
#   BURST_READERS        readers during the burst (10,000 at 15,000 streams, else 2/3 of STREAMS)
#   BURST_RATE=500       joins (nchan: publishes) per second during the burst
#   BURST_WAIT           longest wait for the burst to settle, s (30, or 5 for short runs)
#   CHURN_WORKERS=64     workers in the open → first event → close loop
#   POSTS                distinct posts read once (100,000 at 15,000 streams, else STREAMS*20/3)
#   POSTS_SETTLE         seconds to wait for memory to return (120, or 20 for short runs)
#   COUNTS_POSTS=100     posts named in each GET /api/v1/counts (1 to 100; viewcounter only)
#   COUNTS_REQUESTS=2000 requests of each kind (counts, and /healthz to compare with)
#   SOURCES=16           127.0.0.x source addresses the client spreads connections over
#   NCHAN_WORKERS=auto   nginx worker_processes (see the note written into BENCHMARKS.md)
#   TARGETS="viewcounter nchan"   which servers to run (one of them alone is fine)
#   SCENARIOS="hot burst churn posts counts"
#   REPEAT=1             runs of every scenario (alternating targets); the report keeps
#                        each target's best run, since interference only lowers figures
#   OUT=BENCHMARKS.md    where to write the report
#   BIN_DIR=dir          take viewcounter and loadgen from dir, build nothing (a before/after)
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

# The exact command, for the report: the parameters given explicitly, then the script.
. bench/command.sh
COMMAND=$(bench_command bench/run.sh bench STREAMS DURATION ROUNDS IDLE_WINDOW BURST_READERS \
    BURST_RATE BURST_WAIT CHURN_WORKERS POSTS POSTS_SETTLE COUNTS_POSTS COUNTS_REQUESTS SOURCES \
    NCHAN_WORKERS TARGETS SCENARIOS REPEAT OUT)

STREAMS=${STREAMS:-15000}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-5}
FULL=$(( STREAMS >= 15000 ? 1 : 0 ))
IDLE_WINDOW=${IDLE_WINDOW:-$(( FULL ? 30 : DURATION ))}
BURST_READERS=${BURST_READERS:-$(( FULL ? 10000 : STREAMS * 2 / 3 ))}
BURST_RATE=${BURST_RATE:-500}
BURST_WAIT=${BURST_WAIT:-$(( DURATION >= 10 ? 30 : 5 ))}
CHURN_WORKERS=${CHURN_WORKERS:-64}
POSTS=${POSTS:-$(( FULL ? 100000 : STREAMS * 20 / 3 ))}
POSTS_SETTLE=${POSTS_SETTLE:-$(( FULL ? 120 : 20 ))}
COUNTS_POSTS=${COUNTS_POSTS:-100}
COUNTS_REQUESTS=${COUNTS_REQUESTS:-2000}
SOURCES=${SOURCES:-16}
NCHAN_WORKERS=${NCHAN_WORKERS:-auto}
TARGETS=${TARGETS:-viewcounter nchan}
SCENARIOS=${SCENARIOS:-hot burst churn posts counts}
REPEAT=${REPEAT:-1}
OUT=${OUT:-BENCHMARKS.md}
# Distinct posts a viewcounter server may hold: the posts scenario's, the counts scenario's.
MAX_SLUGS=$(( (POSTS > COUNTS_POSTS ? POSTS : COUNTS_POSTS) + 1000 ))
PARAMS="REPEAT=$REPEAT STREAMS=$STREAMS DURATION=$DURATION ROUNDS=$ROUNDS IDLE_WINDOW=$IDLE_WINDOW BURST_READERS=$BURST_READERS BURST_RATE=$BURST_RATE BURST_WAIT=$BURST_WAIT CHURN_WORKERS=$CHURN_WORKERS POSTS=$POSTS POSTS_SETTLE=$POSTS_SETTLE COUNTS_POSTS=$COUNTS_POSTS COUNTS_REQUESTS=$COUNTS_REQUESTS SOURCES=$SOURCES NCHAN_WORKERS=$NCHAN_WORKERS"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$CARGO_TARGET_DIR/release
WORK=$(mktemp -d /tmp/viewcounter-bench.XXXXXX)
mkdir -p "$CARGO_TARGET_DIR/bench"
RESULTS=$CARGO_TARGET_DIR/bench/results.jsonl
: > "$RESULTS"

log() { printf '\n==> [%ss] %s\n' "$SECONDS" "$*" >&2; }

want() { case " $TARGETS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# --- what the run needs -------------------------------------------------------------
if want nchan; then
    if ! dpkg -s nginx-light libnginx-mod-nchan >/dev/null 2>&1 \
        || [ ! -e /usr/lib/nginx/modules/ngx_nchan_module.so ]; then
        log "installing nginx-light and libnginx-mod-nchan"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq nginx-light libnginx-mod-nchan >/dev/null
    fi
fi

if [ -n "${BIN_DIR:-}" ]; then
    # Binaries built before (a before/after pair measured in one sitting): nothing is built.
    BIN=$BIN_DIR
else
    log "building release binaries in $CARGO_TARGET_DIR"
    PACKAGES=(-p viewcounter-bench)
    want viewcounter && PACKAGES+=(-p viewcounter)
    cargo build --release "${PACKAGES[@]}"
fi

# Both servers and the client inherit the hard open-files limit (20,000 here).
ulimit -n "$(ulimit -Hn)"

# How busy the machine is before we start (a compile next door skews both targets).
cpu_busy_pct() { # over 2 seconds, all cores
    local a b
    a=($(head -1 /proc/stat))
    sleep 2
    b=($(head -1 /proc/stat))
    local idle=$(( (b[4] + b[5]) - (a[4] + a[5]) )) total=0 i
    for ((i = 1; i < ${#a[@]}; i++)); do total=$(( total + b[i] - a[i] )); done
    echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}
BUSY_AT_START=$(cpu_busy_pct)
if [ "$BUSY_AT_START" -gt 20 ]; then
    log "warning: the machine is already ${BUSY_AT_START}% busy; figures will be lower and noisier"
fi

LOADGEN=("$BIN/loadgen")

# --- servers ------------------------------------------------------------------------
SERVER_PID=""
SERVER_URL=""
SERVER_DIR=""

wait_port() { # port seconds
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

start_viewcounter() { # extra serve flags...
    SERVER_DIR=$(mktemp -d "$WORK/viewcounter.XXXX")
    "$BIN/viewcounter" serve --listen 127.0.0.1:0 --db "$SERVER_DIR/viewcounter.redb" \
        --allow-any-slug --max-slugs "$MAX_SLUGS" \
        --ip-stream-limit 0 --ip-view-rate 0 --ip-new-post-rate 0 "$@" \
        >"$SERVER_DIR/stdout" 2>"$SERVER_DIR/stderr" &
    SERVER_PID=$!
    local i
    for ((i = 0; i < 300; i++)); do
        SERVER_URL=$(grep -m1 -o 'http://[0-9.]*:[0-9]*' "$SERVER_DIR/stdout" 2>/dev/null || true)
        [ -n "$SERVER_URL" ] && break
        if ! kill -0 "$SERVER_PID" 2>/dev/null; then break; fi
        sleep 0.1
    done
    if [ -z "$SERVER_URL" ]; then
        echo "viewcounter did not start:" >&2
        cat "$SERVER_DIR/stdout" "$SERVER_DIR/stderr" >&2
        exit 1
    fi
    SUB_HOT=(--sub-path "/api/v1/connect/hot?view={token}")
    SUB_BURST=(--sub-path "/api/v1/connect/burst?view={token}")
    SUB_CHURN=(--sub-path "/api/v1/connect/churn?view={token}")
    SUB_POSTS=(--sub-path "/api/v1/connect/post-{i}?view={token}")
}

start_nchan() {
    SERVER_DIR=$(mktemp -d "$WORK/nchan.XXXX")
    local port
    port=$("${LOADGEN[@]}" free-port)
    sed -e "s#@DIR@#$SERVER_DIR#g" -e "s#@PORT@#$port#g" -e "s#@WORKERS@#$NCHAN_WORKERS#g" \
        "$ROOT/bench/nchan/nginx.conf.template" >"$SERVER_DIR/nginx.conf"
    nginx -c "$SERVER_DIR/nginx.conf" -p "$SERVER_DIR/" -e "$SERVER_DIR/error.log" \
        >"$SERVER_DIR/stdout" 2>"$SERVER_DIR/stderr" &
    SERVER_PID=$!
    if ! wait_port "$port" 30; then
        echo "nginx did not start:" >&2
        cat "$SERVER_DIR/stderr" "$SERVER_DIR/error.log" >&2 || true
        exit 1
    fi
    SERVER_URL=http://127.0.0.1:$port
    SUB_HOT=(--sub-path /sub/hot --pub-path /pub/hot)
    SUB_BURST=(--sub-path /sub/burst --pub-path /pub/burst)
    SUB_CHURN=(--sub-path /sub/churn --pub-path /pub/churn)
    SUB_POSTS=()
}

stop_server() {
    if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
        kill -TERM "$SERVER_PID" 2>/dev/null || true
        local i
        for ((i = 0; i < 100; i++)); do
            kill -0 "$SERVER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    SERVER_PID=""
}

cleanup() {
    stop_server
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Runs loadgen against the current server; JSON lines go to the results file.
run_loadgen() { # label scenario-args...
    local label=$1
    shift
    timeout --signal=INT 1200 "${LOADGEN[@]}" "$@" --url "$SERVER_URL" --pid "$SERVER_PID" \
        --label "$label" --sources "$SOURCES" | tee -a "$RESULTS" >/dev/null ||
        echo "loadgen $1 against $label exited with $?" >&2
}

# --- scenarios, each on a fresh server, targets one after the other -------------------
run_scenario() { # scenario label
    local scenario=$1 label=$2
    if [ "$label" = viewcounter ] && [ "$scenario" = posts ]; then
        # A post sleeps once it has no reader and no reader id left to dedupe;
        # with the default 30 min window that would be half an hour from now.
        start_viewcounter --dedupe-window 1s
    else
        "start_$label"
    fi
    case $scenario in
    hot) run_loadgen "$label" hot "${SUB_HOT[@]}" --streams "$STREAMS" --rounds "$ROUNDS" \
        --window "$IDLE_WINDOW" ;;
    burst) run_loadgen "$label" burst "${SUB_BURST[@]}" --readers "$BURST_READERS" \
        --rate "$BURST_RATE" --duration "$DURATION" --max-wait "$BURST_WAIT" ;;
    churn) run_loadgen "$label" churn "${SUB_CHURN[@]}" --workers "$CHURN_WORKERS" \
        --duration "$DURATION" ;;
    posts) run_loadgen "$label" posts "${SUB_POSTS[@]}" --posts "$POSTS" \
        --workers "$CHURN_WORKERS" --settle "$POSTS_SETTLE" ;;
    counts) run_loadgen "$label" counts --posts "$COUNTS_POSTS" --requests "$COUNTS_REQUESTS" ;;
    *) echo "unknown scenario $scenario" >&2 ;;
    esac
    stop_server
}

for scenario in $SCENARIOS; do
    for ((rep = 1; rep <= REPEAT; rep++)); do
        for label in $TARGETS; do
            if [ "$label" = nchan ] && { [ "$scenario" = posts ] || [ "$scenario" = counts ]; }; then
                continue # no counterpart
            fi
            log "$scenario: $label (run $rep of $REPEAT)"
            run_scenario "$scenario" "$label"
        done
    done
done

log "writing $OUT (raw results: $RESULTS)"
case $OUT in /*) OUT_PATH=$OUT ;; *) OUT_PATH=$ROOT/$OUT ;; esac
"${LOADGEN[@]}" report --results "$RESULTS" --out "$OUT_PATH" --command "$COMMAND" \
    --params "$PARAMS" \
    --note "nginx runs worker_processes $NCHAN_WORKERS (NCHAN_WORKERS; auto = one per core = $(nproc) here): $(
        if [ "$NCHAN_WORKERS" = auto ]; then
            echo "viewcounter's actix runtime also runs one worker thread per core, so both servers may use both cores. Measured here, 2 workers gave nchan a higher open → first event → close rate than 1 worker and a publish → every subscriber p99 within the spread of 1 worker's (figures under History and notes)."
        else
            echo "set by hand for this run (the default is auto)."
        fi
    )" \
    --note "nchan: nchan_subscriber_first_message 1 (the newest stored message; nchan's 'newest' means 'the next one'), nchan_message_buffer_length 1, nchan_message_timeout 0, nchan_eventsource_ping_interval 15; config: bench/nchan/nginx.conf.template." \
    --note "viewcounter: serve --allow-any-slug --max-slugs $MAX_SLUGS --ip-stream-limit 0 --ip-view-rate 0 --ip-new-post-rate 0, other flags at their defaults (heartbeat 15 s, dedupe window 30 min); for the posts scenario also --dedupe-window 1s, since a post only sleeps once no reader id is left to dedupe." \
    --note "The machine was ${BUSY_AT_START}% busy (all cores, 2 s) just before the first scenario; anything else running on these 2 cores (a compile) lowers both targets' figures, so compare the two columns of one run." \
    --note "Every scenario ran $REPEAT time(s) per target, alternating targets; the tables show each target's best run (lowest RSS, p99, staleness or CPU; highest views/s), since interference from the shared cores only ever lowers figures. All runs: $RESULTS." \
    --note "Each scenario starts a fresh server; hold, fanout and idle share one set of streams (loadgen hot). The posts and counts scenarios have no nchan counterpart (nchan has no many-channels read)."
log "done: $OUT"
