#!/bin/bash
# CPU time per server thread (and the bench's) while publishing to a long-lived tenant,
# to see where a keyed record's extra cost goes (docs/BENCHMARKS.md, "Tenant index cost
# on append").
#
#   bash bench/peers/thread_cpu.sh plain|keyed [COUNT]
#
# Starts `tidelog serve` on a temporary directory, publishes 2 M records untimed (the
# tenant's 1 M keys then exist), then COUNT (default 4 M) more, and prints the CPU ticks
# (1/100 s) each server thread used during the second run. Both runs read their records
# back to verify them: that part is in the figures, the same for both modes. Compare
# binaries in alternating order: the host drifts within minutes. (For the CPU of the timed
# publish alone, without the read-back, see `cpu_seconds` in `tidelog-bench --json` output.) Uses target/release (cargo build --release first), or $TIDELOG_BIN_DIR.
set -euo pipefail
mode=${1:?plain or keyed}
count=${2:-4000000}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=${TIDELOG_BIN_DIR:-$root/target/release}
case $mode in
  plain) args=(--record-size 215) ;;
  keyed) args=(--record-size 200 --tenant tenant-0042 --keys 1000000) ;;
  *) echo "plain or keyed" >&2; exit 2 ;;
esac
dir=$(mktemp -d)
port=$((20000 + RANDOM % 20000))
"$bin/tidelog" serve --data-dir "$dir" --listen "127.0.0.1:$port" >/dev/null 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -rf "$dir"' EXIT
sleep 0.5
bench=("$bin/tidelog-bench" --server "127.0.0.1:$port" --json publish --batch 100 --in-flight 32 "${args[@]}")
"${bench[@]}" --count 2000000 >/dev/null
ticks() {
  for t in /proc/$pid/task/*; do echo "$(cat "$t/comm") $(awk '{print $14 + $15}' "$t/stat")"; done |
    awk '{a[$1] += $2} END {for (k in a) print k, a[k]}' | sort
}
ticks > "$dir/before"
start=$(date +%s%N)
"${bench[@]}" --count "$count" > "$dir/run.json"
ticks > "$dir/after"
python3 -c "import json; r = json.load(open('$dir/run.json')); print('$mode', int(r['records_per_sec']), 'records/s, verified', r['verified'])"
join "$dir/before" "$dir/after" | awk '$3 > $2 {printf "  %-18s %4d ticks\n", $1, $3 - $2}'
