#!/usr/bin/env bash
# Fuzzes the frame decoder (FrameCodec.fuzzOneInput) with libFuzzer and AddressSanitizer.
#
#   demo/fuzz.sh [SECONDS]      default 600
#
# The harness is a package of its own (demo/fuzz), built with its own .build, so the fuzzer flags never
# reach the main package's `swift build` / `swift test`. It starts from the committed seed corpus
# (demo/fuzz-corpus, written by make-corpus.py), keeps what it learns in demo/fuzz/.work/corpus, and
# writes any crashing input to demo/fuzz/.work/crash-*. A crash found there belongs in
# Tests/FerryWireTests as a regression test. Exit status: 0 when no crash was found.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${1:-600}"
case "$seconds" in ''|*[!0-9]*) echo "usage: demo/fuzz.sh [SECONDS]" >&2; exit 64 ;; esac

echo "building the harness (swift build -c release -sanitize=fuzzer,address)..."
swift build --package-path fuzz -c release \
  -Xswiftc -sanitize=fuzzer,address -Xswiftc -parse-as-library -Xcc -fsanitize=address 2>&1 | grep -v '^\[' || true
binary="fuzz/.build/release/FerryWireFuzzer"
[ -x "$binary" ] || { echo "the harness did not build" >&2; exit 1; }

work="fuzz/.work"
mkdir -p "$work/corpus"
log="$work/fuzz.log"
echo "fuzzing for $seconds s (log: demo/$log)..."
status=0
"$binary" "$work/corpus" fuzz-corpus \
  -max_total_time="$seconds" -max_len=4096 -timeout=10 -print_final_stats=1 \
  -artifact_prefix="$work/" >"$log" 2>&1 || status=$?

runs=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | tail -1 || true)
executions=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
crashes=$(find "$work" -maxdepth 1 \( -name 'crash-*' -o -name 'leak-*' -o -name 'timeout-*' -o -name 'oom-*' \) | wc -l)
coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
echo "executions: ${executions:-?} (${runs:-no summary}); ${coverage:-cov: ?}; corpus: $(ls "$work/corpus" | wc -l) inputs"
echo "crash/leak/timeout inputs in demo/$work: $crashes; libFuzzer exit status: $status"
if [ "$status" != 0 ] || [ "$crashes" != 0 ]; then
  grep -m 20 -E 'ERROR|Fatal error|precondition|SUMMARY|Test unit written' "$log" || true
  exit 1
fi
