#!/usr/bin/env bash
# Hop a live workload between processes on this machine N times (default 10), verifying after each hop.
# Usage: demo/hops.sh [HOPS] [WORKLOAD] [REGION_SIZE] [DIRTY_RATE]
set -euo pipefail
hops=${1:-10}; workload=${2:-hotset}; size=${3:-256MiB}; rate=${4:-2000}
cd "$(dirname "$0")/.."
swift build -c release --product ferry >/dev/null
ferry=.build/release/ferry
lab=$(mktemp -d /tmp/ferry-hops.XXXXXX); mkdir -p "$lab/shared"
trap 'pkill -P $$ 2>/dev/null || true; rm -rf "$lab"' EXIT
"$ferry" run --workload "$workload" --region-size "$size" --fill random --dirty-rate "$rate" \
  --shared-dir "$lab/shared" --control "$lab/0.sock" >"$lab/0.log" 2>&1 &
until [ -S "$lab/0.sock" ]; do sleep 0.1; done
for hop in $(seq 1 "$hops"); do
  port=$((7600 + hop))
  "$ferry" receive --listen 127.0.0.1:$port --shared-dir "$lab/shared" --control "$lab/$hop.sock" \
    --once >"$lab/$hop.log" 2>&1 &
  until [ -S "$lab/$hop.sock" ]; do sleep 0.1; done
  sleep 0.5
  "$ferry" migrate --control "$lab/$((hop - 1)).sock" --to 127.0.0.1:$port --report "$lab/hop$hop.json" | grep -E "^completed|failed|aborted"
  "$ferry" verify --control "$lab/$hop.sock" | tail -1
done
"$ferry" stop --control "$lab/$hops.sock"
