#!/usr/bin/env bash
# Issue 14 benchmark: cluster mode against one node, in one run.
#
#   bench/cluster.sh                          # 15,000 streams (a few minutes)
#   STREAMS=3000 DURATION=5 bench/cluster.sh  # quick run
#   just bench-cluster                        # the same, through the justfile
#
# 1. cluster: one redis-server and 3 nodes on it (`serve --redis`), STREAMS streams on one
#    post held by CLIENTS loadgen processes (each process has its own open-files cap), spread
#    over the nodes; ROUNDS times a join on node 1, timed until every reader on every node
#    saw it; then churn (open → first event → close) through the nodes, with the Redis
#    commands it cost per counted view (INFO deltas, the background rate of an idle window
#    of the same length taken off);
# 2. single: the same against one node without Redis, the same client processes.
# 3. idle (issue 22): for each of IDLE_POSTS, a fresh Redis and NODES nodes, one reader on each
#    of that many posts (held by the CLIENTS processes, spread over the nodes), then
#    IDLE_WINDOW seconds with nothing happening: Redis bytes in/out and commands per second
#    (INFO stats deltas), each node's CPU; then one node without Redis holding as many streams
#    as each cluster node did, over the same window (its CPU is what a node's is compared to).
#    45,000 posts is 45,000 streams over 3 nodes: 15,000 per node and per loadgen process.
# Then it writes its section of BENCHMARKS.md (below the keep-marker; bench/run.sh keeps it).
#
# Parameters (environment): STREAMS=15000 ROUNDS=5 CLIENTS=3 NODES=3 DURATION=10
# (churn seconds) CHURN_WORKERS=64 SOURCES=16 IDLE_POSTS="3000 15000 45000" IDLE_WINDOW=10
# OUT=BENCHMARKS.md; IDLE_ONLY=1 runs only 3 and prints its lines without writing OUT;
# SERVER_BIN=path/to/viewcounter runs another build's server (a before/after); BIN_DIR=dir
# takes loadgen (and viewcounter, unless SERVER_BIN) from dir and builds nothing.
set -euo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD

. bench/command.sh
COMMAND=$(bench_command bench/cluster.sh bench-cluster STREAMS ROUNDS CLIENTS NODES DURATION \
    CHURN_WORKERS SOURCES IDLE_POSTS IDLE_WINDOW OUT)

STREAMS=${STREAMS:-15000}
ROUNDS=${ROUNDS:-5}
CLIENTS=${CLIENTS:-3}
NODES=${NODES:-3}
DURATION=${DURATION:-10}
CHURN_WORKERS=${CHURN_WORKERS:-64}
SOURCES=${SOURCES:-16}
IDLE_POSTS=${IDLE_POSTS:-3000 15000 45000}
IDLE_WINDOW=${IDLE_WINDOW:-10}
IDLE_ONLY=${IDLE_ONLY:-}
OUT=${OUT:-BENCHMARKS.md}
PARAMS="STREAMS=$STREAMS ROUNDS=$ROUNDS CLIENTS=$CLIENTS NODES=$NODES DURATION=$DURATION CHURN_WORKERS=$CHURN_WORKERS SOURCES=$SOURCES IDLE_POSTS=\"$IDLE_POSTS\" IDLE_WINDOW=$IDLE_WINDOW"

log() { printf '\n==> [%ss] %s\n' "$SECONDS" "$*" >&2; }

if ! command -v redis-server >/dev/null; then
    log "installing redis-server"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends redis-server >/dev/null
fi

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
if [ -n "${BIN_DIR:-}" ]; then
    # Binaries built before (a before/after pair measured in one sitting): nothing is built.
    BIN=$BIN_DIR
else
    BIN=$CARGO_TARGET_DIR/release
    log "building release binaries in $CARGO_TARGET_DIR"
    cargo build --release -p viewcounter -p viewcounter-bench
fi
LOADGEN=$BIN/loadgen
SERVER_BIN=${SERVER_BIN:-$BIN/viewcounter}

ulimit -n "$(ulimit -Hn)"
WORK=$(mktemp -d /tmp/viewcounter-bench-cluster.XXXXXX)
mkdir -p "$CARGO_TARGET_DIR/bench"
RESULTS=$CARGO_TARGET_DIR/bench/cluster-results.jsonl
: >"$RESULTS"
PIDS=()

stop_all() {
    local p i
    # Nodes are started in a command substitution (a subshell): their pids are in files.
    for p in "$WORK"/*/pid; do [ -f "$p" ] && PIDS+=("$(cat "$p")") && rm -f "$p"; done
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do
        for ((i = 0; i < 100; i++)); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    PIDS=()
}
cleanup() { stop_all; rm -rf "$WORK"; }
trap cleanup EXIT
trap 'exit 130' INT TERM

# Starts a node; prints its URL. Extra flags follow the common ones.
start_node() { # name extra-flags...
    local name=$1 dir url i
    shift
    dir=$WORK/$name
    mkdir -p "$dir"
    "$SERVER_BIN" serve --listen 127.0.0.1:0 --db "$dir/viewcounter.redb" \
        --allow-any-slug --ip-stream-limit 0 --ip-view-rate 0 --ip-new-post-rate 0 "$@" \
        >"$dir/stdout" 2>"$dir/stderr" &
    echo $! >"$dir/pid"
    for ((i = 0; i < 300; i++)); do
        url=$(grep -m1 -o 'http://[0-9.]*:[0-9]*' "$dir/stdout" 2>/dev/null || true)
        if [ -n "$url" ]; then echo "$url"; return 0; fi
        sleep 0.1
    done
    echo "node $name did not start:" >&2
    cat "$dir/stdout" "$dir/stderr" >&2
    exit 1
}

run_cluster_loadgen() { # label nodes extra-args...
    local label=$1 nodes=$2
    shift 2
    timeout --signal=INT 1800 "$LOADGEN" cluster --label "$label" --nodes "$nodes" \
        --streams "$STREAMS" --clients "$CLIENTS" --rounds "$ROUNDS" --sources "$SOURCES" \
        --churn-workers "$CHURN_WORKERS" --churn-duration "$DURATION" "$@" |
        tee -a "$RESULTS" >/dev/null || echo "loadgen cluster ($label) exited with $?" >&2
}

# Starts a fresh redis-server (its own directory) and NODES nodes on it; sets REDIS_PORT and
# URLS (comma-separated).
start_cluster() { # name extra-node-flags...
    local n url name=$1
    shift
    REDIS_PORT=$("$LOADGEN" free-port)
    rm -rf "$WORK/redis"
    mkdir -p "$WORK/redis"
    # As a production Redis would run: an append-only file, fsync once a second.
    redis-server --bind 127.0.0.1 --port "$REDIS_PORT" --dir "$WORK/redis" --save "" \
        --appendonly yes --appendfsync everysec --logfile redis.log &
    PIDS+=($!)
    for ((i = 0; i < 100; i++)); do
        [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && break
        sleep 0.1
    done
    log "redis-server on 127.0.0.1:$REDIS_PORT; starting $NODES nodes ($name)"
    URLS=""
    for ((n = 1; n <= NODES; n++)); do
        url=$(start_node "$name-node$n" --redis "redis://127.0.0.1:$REDIS_PORT/0" \
            --node-id "node$n" "$@")
        URLS+="${URLS:+,}$url"
    done
    log "cluster: $URLS"
}

if [ -z "$IDLE_ONLY" ]; then
    # --- 1. the cluster ----------------------------------------------------------------------
    start_cluster cluster
    run_cluster_loadgen cluster "$URLS" --redis "127.0.0.1:$REDIS_PORT"
    for ((n = 1; n <= NODES; n++)); do tail -c 1000000 "$WORK/cluster-node$n/stderr" >"$CARGO_TARGET_DIR/bench/cluster-node$n.log" || true; done
    stop_all

    # --- 2. one node, no Redis ---------------------------------------------------------------
    url=$(start_node single)
    log "single node: $url"
    run_cluster_loadgen single "$url"
    stop_all
fi

# --- 3. idle cost, per number of posts read --------------------------------------------------
for posts in $IDLE_POSTS; do
    # Every post is a new one: --max-slugs (10,000 by default) must not refuse them.
    start_cluster "idle$posts" --max-slugs $((posts * 2))
    pids=$(cat "$WORK"/idle"$posts"-node*/pid | paste -sd, -)
    timeout --signal=INT 1800 "$LOADGEN" cluster --label "cluster-idle" --nodes "$URLS" \
        --streams "$posts" --clients "$CLIENTS" --sources "$SOURCES" --idle "$IDLE_WINDOW" \
        --sub-path '/api/v1/connect/c{client}-{i}?view={token}' --pids "$pids" \
        --redis "127.0.0.1:$REDIS_PORT" |
        tee -a "$RESULTS" || echo "loadgen cluster --idle ($posts posts) exited with $?" >&2
    stop_all
    per_node=$((posts / NODES))
    url=$(start_node "single-idle$posts" --max-slugs $((posts * 2)))
    timeout --signal=INT 1800 "$LOADGEN" cluster --label "single-idle" --nodes "$url" \
        --streams "$per_node" --clients "$CLIENTS" --sources "$SOURCES" --idle "$IDLE_WINDOW" \
        --sub-path '/api/v1/connect/c{client}-{i}?view={token}' \
        --pids "$(cat "$WORK/single-idle$posts/pid")" |
        tee -a "$RESULTS" || echo "loadgen single --idle ($per_node posts) exited with $?" >&2
    stop_all
done
if [ -n "$IDLE_ONLY" ]; then
    log "done (IDLE_ONLY: $OUT not written; raw results: $RESULTS)"
    exit 0
fi

log "writing $OUT (raw results: $RESULTS)"
case $OUT in /*) OUT_PATH=$OUT ;; *) OUT_PATH=$ROOT/$OUT ;; esac
"$LOADGEN" cluster-report --results "$RESULTS" --out "$OUT_PATH" --command "$COMMAND" \
    --params "$PARAMS" \
    --note "Nodes: serve --allow-any-slug --ip-stream-limit 0 --ip-view-rate 0 --ip-new-post-rate 0 (other flags at their defaults: heartbeat 15 s, --redis-timeout 250ms), each in its own process on this machine; the cluster's with --redis and --node-id, the single node without Redis. redis-server $(redis-server --version | grep -o 'v=[0-9.]*' | cut -c3-) with appendonly yes, appendfsync everysec." \
    --note "$CLIENTS loadgen processes hold the streams, client i on node (i mod $NODES) + 1, from $SOURCES 127.0.0.x source addresses each; the change is a join on node 1 (kept open); a reader has seen it at its first event with a total at least the join's. Delays are taken against one CLOCK_REALTIME shared by the processes." \
    --note "Churn: $CHURN_WORKERS workers in all, over $CLIENTS processes, each on its node, loop open → first event → close (RST) for $DURATION s; views/s is the sum. Redis commands are total_commands_processed and commandstats deltas over the churn, less the rate measured over an idle window of the same length just before (heartbeats, presence). Commands run by a Lua script count there too (SET, HINCRBY, PUBLISH inside the one EVALSHA of a view); round trips per view are the commands per view times the share clients sent (not [lua]) in 1 s of MONITOR halfway through the churn, so a pipelined MULTI/EXEC counts each of its commands: an upper bound."
log "done: $OUT"
