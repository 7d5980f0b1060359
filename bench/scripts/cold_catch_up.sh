#!/bin/bash
# A consumer catching up from the disk while live traffic flows, on one server:
#   1. publish COUNT records of 1 KiB to topic `old` (3 GB by default);
#   2. restart the server, dropping topic `old`'s files from the page cache meanwhile (as
#      a reboot, the page cache budget or memory pressure would; a running server keeps
#      the pages its reads mapped, which no one else can drop);
#   3. run `tidelog-bench e2e` at 10 000 records/s of 200 B on topic `live` for 6 s, and
#      1 s into it `tidelog-bench consume --existing` of topic `old` from the start.
# Prints the e2e latency percentiles (what the live traffic suffered) and the catch-up's
# MB/s. NOCONSUME=1 runs the e2e alone (the baseline).
#
# usage: bench/scripts/cold_catch_up.sh [TIDELOG_BIN] [COUNT]
set -euo pipefail
BIN=${1:-target/release/tidelog}
COUNT=${2:-3000000}
BENCH=${BENCH:-target/release/tidelog-bench}
PORT=${PORT:-7461}
WORK=$(mktemp -d)
trap 'kill -INT $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
"$BIN" serve --data-dir "$WORK/data" --listen 127.0.0.1:$PORT > "$WORK/server.log" 2>&1 &
SERVER=$!
sleep 1
B() { "$BENCH" --server 127.0.0.1:$PORT --json "$@" 2>/dev/null; }
B publish --topic old --count "$COUNT" --record-size 1024 --batch 100 --in-flight 32 > "$WORK/publish.json"
kill -INT $SERVER; wait $SERVER
python3 "$(dirname "$0")/drop_page_cache.py" "$WORK/data/topics/old"
"$BIN" serve --data-dir "$WORK/data" --listen 127.0.0.1:$PORT >> "$WORK/server.log" 2>&1 &
SERVER=$!
sleep 1
[ -n "${FINCORE:-}" ] && fincore "$WORK"/data/topics/old/*/*.log
B e2e --topic live --rate 10000 --duration-secs 6 --count 1000000 --record-size 200 > "$WORK/e2e.json" &
E2E=$!
sleep 1
if [ -z "${NOCONSUME:-}" ]; then
    B consume --existing --topic old > "$WORK/consume.json"
fi
wait $E2E
python3 - "$WORK" <<'PY'
import json, os, sys
w = sys.argv[1]
e = json.load(open(f"{w}/e2e.json")); l = e["latency_us"]
out = (f"e2e p50 {l['p50']} p99 {l['p99']} p999 {l['p999']} max {l['max']} us "
       f"({e['records']} records, verified {e['verified']})")
if os.path.exists(f"{w}/consume.json"):
    c = json.load(open(f"{w}/consume.json"))
    out += (f" | catch-up {c['mb_per_sec']:.0f} MB/s, {c['seconds']:.2f} s, "
            f"{c['records']} records, verified {c['verified']}")
print(out)
PY
