#!/bin/bash
# A tenant's history read from the disk: how long it takes, and how much of the partition
# the server reads for it.
#   1. `tidelog-bench history` fills topic `hist` (COUNT records of 200 B in
#      tenant-uniform batches of 100, one batch in TENANTS the measured tenant's) and
#      measures, verified, a history extraction with the page cache warm;
#   2. restarts the server, dropping the topic's files from the page cache meanwhile
#      (as a reboot, the page cache budget or memory pressure would);
#   3. times `tidelog extract hist --tenant history-tenant --mode history` cold, with the
#      bytes the server read from the disk meanwhile (/proc/PID/io), then again warm.
#
# usage: bench/scripts/history_cold.sh [TIDELOG_BIN] [COUNT] [TENANTS]
set -euo pipefail
BIN=${1:-target/release/tidelog}
COUNT=${2:-4000000}
TENANTS=${3:-64}
BENCH=${BENCH:-target/release/tidelog-bench}
PORT=${PORT:-7462}
WORK=$(mktemp -d)
trap 'kill -INT $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true; rm -rf "$WORK"' EXIT
export TIDELOG_SERVER=127.0.0.1:$PORT
serve() {
  "$BIN" serve --data-dir "$WORK/data" --listen 127.0.0.1:$PORT >> "$WORK/server.log" 2>&1 &
  SERVER=$!
  sleep 1
}
serve
"$BENCH" --server 127.0.0.1:$PORT --json history --topic hist --count "$COUNT" --record-size 200 \
  --batch 100 --tenants "$TENANTS" 2>/dev/null | python3 -c '
import json, sys
r = json.load(sys.stdin)
whole = r["settings"]["fetch_whole_partition_seconds"]
print("warm (tidelog-bench history): %d records in %.3f s, verified %s; the whole partition read in %.3f s"
      % (r["records"], r["seconds"], r["verified"], whole))'
kill -INT $SERVER; wait $SERVER
python3 "$(dirname "$0")/drop_page_cache.py" "$WORK/data/topics/hist"
serve
read_bytes() { awk '/^read_bytes/ {print $2}' /proc/$SERVER/io; }
history() {
  local before=$(read_bytes) start=$(date +%s.%N)
  local lines=$("$BIN" extract hist --tenant history-tenant --mode history --format json | wc -l)
  local end=$(date +%s.%N) after=$(read_bytes)
  python3 -c "print(f'$1: {$lines - 1} records in {$end - $start:.3f} s, {($after - $before) / 1e6:.0f} MB read from the disk')"
}
history cold
history warm
du -sb "$WORK/data/topics/hist" | awk '{printf "partition: %.0f MB on disk\n", $1 / 1e6}'
