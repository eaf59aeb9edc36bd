#!/usr/bin/env bash
# RAM and file per remembered view: one server with a short dedupe window under churn
# (`loadgen churn`: open → first event → close, every stream a new reader id on one post),
# sampled every 5 s. Once the window is full, remembered views = views counted within the last
# window, and bytes per remembered view = (VmRSS - VmRSS before the churn) / remembered views;
# the same for the `--db` file's size (what the file keeps of counted ids, with the pages redb
# holds free for reuse: it never shrinks).
#   BIN=target/release  WINDOW=60 (s)  DURATION=150 (s of churn)  WORKERS=64
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
WINDOW=${WINDOW:-60}
DURATION=${DURATION:-150}
WORKERS=${WORKERS:-64}
DIR=$(mktemp -d /tmp/viewcounter-dedupe.XXXXXX)
"$BIN/viewcounter" serve --listen 127.0.0.1:0 --db "$DIR/viewcounter.redb" --allow-any-slug \
    --ip-stream-limit 0 --ip-view-rate 0 --ip-new-post-rate 0 --dedupe-window "${WINDOW}s" \
    >"$DIR/stdout" 2>"$DIR/stderr" &
PID=$!
trap 'kill -TERM $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$DIR"' EXIT
URL=""
for _ in $(seq 300); do
    URL=$(grep -m1 -o 'http://[0-9.]*:[0-9]*' "$DIR/stdout" 2>/dev/null || true)
    [ -n "$URL" ] && break
    sleep 0.1
done
[ -n "$URL" ] || { cat "$DIR/stderr" >&2; exit 1; }
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$PID/status"; }
file_bytes() { stat -c %s "$DIR/viewcounter.redb"; }
total() {
    curl -s "$URL/api/v1/count/churn" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])' 2>/dev/null || echo 0
}
START_RSS=$(rss_kib)
START_FILE=$(file_bytes)
"$BIN/loadgen" churn --url "$URL" --sub-path "/api/v1/connect/churn?view={token}" \
    --workers "$WORKERS" --duration "$DURATION" --pid "$PID" >"$DIR/loadgen.json" &
LOADGEN=$!
: >"$DIR/samples"
T0=$SECONDS
while kill -0 "$LOADGEN" 2>/dev/null; do
    echo "$((SECONDS - T0)) $(rss_kib) $(total) $(file_bytes)" >>"$DIR/samples"
    sleep 5
done
wait "$LOADGEN"
echo "start VmRSS $START_RSS KiB, file $START_FILE B; binary $BIN; window ${WINDOW}s; load: $(uptime)"
python3 - "$DIR/samples" "$WINDOW" "$START_RSS" "$START_FILE" <<'PY'
import sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1])]
window, start, start_file = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
per = []
for t, rss, total, file in rows:
    old = [tot for (u, _, tot, _) in rows if u <= t - window]
    if t >= window + 10 and old:
        remembered = total - old[-1]
        if remembered > 0:
            per.append((t, rss, file, remembered, (rss - start) * 1024 / remembered,
                        (file - start_file) / remembered))
for t, rss, file, remembered, b, f in per:
    print(f"t={t:4d}s VmRSS={rss/1024:7.1f} MiB file={file/2**20:7.1f} MiB "
          f"remembered={remembered:8d} -> RAM {b:5.1f} B/view, file {f:5.1f} B/view")
if per:
    rate = (rows[-1][2] - rows[0][2]) / max(1, rows[-1][0] - rows[0][0])
    for name, i in (("RAM", 4), ("file", 5)):
        bs = sorted(p[i] for p in per)
        print(f"{name}: median {bs[len(bs)//2]:.1f} B per remembered view, max {bs[-1]:.1f}")
    print(f"~{rate:.0f} views/s")
PY
