#!/bin/bash
# Live traffic while topics come and go: `tidelog-bench e2e` at 10 000 records/s of 200 B
# for 6 s, while another client creates and deletes a 32-partition topic every 0.5 s.
# NOADMIN=1 runs the e2e alone.
#
# usage: bench/scripts/topic_churn.sh [TIDELOG_BIN]
set -euo pipefail
BIN=${1:-target/release/tidelog}
B=${BENCH:-target/release/tidelog-bench}
PORT=${PORT:-7471}
W=$(mktemp -d)
$BIN serve --data-dir $W/data --listen 127.0.0.1:$PORT > $W/log 2>&1 & SP=$!
sleep 1
$B --server 127.0.0.1:$PORT --json e2e --topic live --rate 10000 --duration-secs 6 --count 1000000 --record-size 200 2>/dev/null > $W/e2e.json & EP=$!
sleep 0.5
if [ -z "${NOADMIN:-}" ]; then
for i in $(seq 1 10); do TIDELOG_SERVER=127.0.0.1:$PORT $BIN topic create churn --partitions 32 >/dev/null; sleep 0.25; TIDELOG_SERVER=127.0.0.1:$PORT $BIN topic delete churn > /dev/null; sleep 0.25; done
fi
wait $EP
kill -INT $SP; wait $SP
python3 -c 'import json,sys; e=json.load(open(sys.argv[1])); l=e["latency_us"]; print("e2e p50 %d p99 %d p999 %d max %d us verified %s" % (l["p50"], l["p99"], l["p999"], l["max"], e["verified"]))' $W/e2e.json
rm -rf $W
