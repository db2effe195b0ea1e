#!/usr/bin/env bash
# Two hosts on one machine: a lab of three network namespaces (a server, host A, host B) with a business
# network and a separate migration network, a shared mount both hosts use (one local directory, or a GlusterFS
# volume served from the server namespace and mounted separately in each host), and optionally a token-bucket
# (tc tbf) on the migration link. Runs a real `ferry run` in A, `ferry receive` in B, migrates across the
# migration network, verifies in B, and compares the measured times with the document's arithmetic
# (bytes × 8 ÷ rate). Everything is torn down on exit, failure or Ctrl-C. Run as root.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: demo/two-hosts.sh [options]            (as root; needs ip and tc from iproute2)

Builds, on this machine:
  ferry-srv-PID   the server       10.77.1.1 (to A), 10.77.2.1 (to B)     business network
  ferry-a-PID     host A (source)  10.77.1.2 (business), 10.77.3.1 (migration)
  ferry-b-PID     host B (dest.)   10.77.2.2 (business), 10.77.3.2 (migration)
  a shared mount: with --shared local (the default) one directory (mktemp -d) that both hosts use; with
  --shared glusterfs a GlusterFS volume served by glusterd in ferry-srv-PID at 10.77.1.1 and mounted over FUSE
  separately in A (LAB/mnt-a) and in B (LAB/mnt-b, routed to 10.77.1.1 through 10.77.2.1), each host's
  --shared-dir its own mount (demo/gluster-lab.sh; volume and client options as the README says),
  and with --migration-rate a tc token bucket (tbf) on A's migration veth.
Then runs `ferry receive` in B, `ferry run` in A, `ferry migrate --to 10.77.3.2:PORT --bind 10.77.3.1`
from A, `ferry verify` in B, and prints the report beside bytes × 8 ÷ rate.

Options:
  --shared local|glusterfs  the shared mount (default local; glusterfs needs glusterfs-server, glusterfs-client, fuse3)
  --migration-rate RATE   tc rate of the A->B migration link: 1gbit, 100mbit, 500kbit ... (default: none, unshaped)
  --region-size SIZE      region size (default 256MiB)
  --workload NAME         hotset or download (default hotset)
  --dirty-rate N|0|max    workload steps per second (default 0: idle)
  --fill none|zero|random|text  what the region holds at the start (default random)
  --writes page|few       hotset: a step rewrites a whole page, or a few bytes of it (default page)
  --compress CODEC        passed to ferry migrate: auto, none, zstd or lz4 (default auto)
  --delta-cache SIZE      passed to ferry migrate: pages kept for deltas, 0 for none (default 64MiB)
  --max-bandwidth RATE    passed to ferry migrate (Ferry's own cap, e.g. 50mbit)
  --downtime-target DUR   passed to ferry migrate: a cap on the pause (default: none, the shortest the link allows)
  --mode MODE             passed to ferry migrate: pre-copy, post-copy or hybrid (default pre-copy)
  --verify strict|audit   passed to ferry migrate (default strict)
  --on-stall POLICY       passed to ferry migrate: force, abort, throttle or post-copy (default force)
  --tcp-baseline          also time a plain TCP transfer of the same number of bytes over the migration link
                          (python3 sender in A, `ferry bench tcp-sink` in B), to measure the link itself
  --report FILE           write the migration's JSON report (with a "lab" object added) to FILE
  --port N                port ferry receive listens on in B (default 7000)
  --mtu N                 MTU of the migration veths (default 1500, as a plain Ethernet NIC)
  --keep-logs DIR         copy the processes' logs to DIR before tearing down
  --timeout DUR           passed to ferry receive and ferry migrate: how long a silent peer is waited for (default 30s)
  --cut-link-after SECS   a silent partition: SECS after the migration starts, take B's end of the migration veth
                          down (no FIN, no RST: both sides only see silence until their --timeout)
  --link-down-for SECS    with --cut-link-after: bring the link back up after SECS (a post-copy migration then
                          reconnects and completes)
  --help                  this text

Environment: FERRY=path/to/ferry (default: .build/release/ferry, built if missing).
Exit status: 0 when the migration completed and verified (in the report and by `ferry verify` in B),
1 when it did not, 64 on bad usage, 69 when not root, ip/tc are missing, or --shared glusterfs without GlusterFS.
EOF
}

rate=""; size="256MiB"; workload="hotset"; dirty="0"; fill="random"; maxbw=""; target=""; mode="pre-copy"; verify="strict"
writes="page"; compress=""; delta_cache=""
shared_kind="local"; report=""; port=7000; tcp_baseline=0; keep_logs=""; mtu=1500; timeout="30s"; cut_after=""; down_for=""
while [ $# -gt 0 ]; do
  case "$1" in
    --help|-h) usage; exit 0 ;;
    --shared) shared_kind=${2:?--shared needs local or glusterfs}; shift 2 ;;
    --migration-rate) rate=${2:?--migration-rate needs a value}; shift 2 ;;
    --region-size) size=${2:?--region-size needs a value}; shift 2 ;;
    --workload) workload=${2:?--workload needs a value}; shift 2 ;;
    --dirty-rate) dirty=${2:?--dirty-rate needs a value}; shift 2 ;;
    --fill) fill=${2:?--fill needs a value}; shift 2 ;;
    --writes) writes=${2:?--writes needs a value}; shift 2 ;;
    --compress) compress=${2:?--compress needs a value}; shift 2 ;;
    --delta-cache) delta_cache=${2:?--delta-cache needs a value}; shift 2 ;;
    --max-bandwidth) maxbw=${2:?--max-bandwidth needs a value}; shift 2 ;;
    --downtime-target) target=${2:?--downtime-target needs a value}; shift 2 ;;
    --mode) mode=${2:?--mode needs a value}; shift 2 ;;
    --verify) verify=${2:?--verify needs a value}; shift 2 ;;
    --on-stall) on_stall=${2:?--on-stall needs a value}; shift 2 ;;
    --report) report=${2:?--report needs a value}; shift 2 ;;
    --port) port=${2:?--port needs a value}; shift 2 ;;
    --mtu) mtu=${2:?--mtu needs a value}; shift 2 ;;
    --tcp-baseline) tcp_baseline=1; shift ;;
    --keep-logs) keep_logs=${2:?--keep-logs needs a value}; shift 2 ;;
    --timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
    --cut-link-after) cut_after=${2:?--cut-link-after needs a value}; shift 2 ;;
    --link-down-for) down_for=${2:?--link-down-for needs a value}; shift 2 ;;
    *) echo "two-hosts.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
done

[ "$(id -u)" -eq 0 ] || { echo "two-hosts.sh: needs root (network namespaces, veth, tc)" >&2; exit 69; }
for tool in ip tc jq; do
  command -v "$tool" >/dev/null || { echo "two-hosts.sh: needs $tool" >&2; exit 69; }
done
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
case "$shared_kind" in
  local) ;;
  glusterfs)
    . "$root/demo/gluster-lab.sh"
    if ! why=$(gluster_lab_check 2>&1); then echo "two-hosts.sh: --shared glusterfs: $why" >&2; exit 69; fi ;;
  *) echo "two-hosts.sh: --shared $shared_kind: expected local or glusterfs" >&2; exit 64 ;;
esac
if [ "$tcp_baseline" = 1 ] && ! command -v python3 >/dev/null; then
  echo "two-hosts.sh: --tcp-baseline needs python3 (the sender)" >&2; exit 69
fi

# Rate in bits per second, as tc reads it (bare number = bit/s; *bps = bytes per second).
rate_bits() {
  local text=${1,,} number unit
  number=$(sed -E 's/^([0-9.]+).*/\1/' <<<"$text"); unit=${text#"$number"}
  case "$unit" in
    ""|bit) awk -v n="$number" 'BEGIN{printf "%.0f", n}' ;;
    kbit) awk -v n="$number" 'BEGIN{printf "%.0f", n*1e3}' ;;
    mbit) awk -v n="$number" 'BEGIN{printf "%.0f", n*1e6}' ;;
    gbit) awk -v n="$number" 'BEGIN{printf "%.0f", n*1e9}' ;;
    bps) awk -v n="$number" 'BEGIN{printf "%.0f", n*8}' ;;
    kbps) awk -v n="$number" 'BEGIN{printf "%.0f", n*8e3}' ;;
    mbps) awk -v n="$number" 'BEGIN{printf "%.0f", n*8e6}' ;;
    gbps) awk -v n="$number" 'BEGIN{printf "%.0f", n*8e9}' ;;
    *) echo "two-hosts.sh: --migration-rate $1: write it like 1gbit or 100mbit" >&2; exit 64 ;;
  esac
}
rate_bps=0
[ -n "$rate" ] && rate_bps=$(rate_bits "$rate")

ferry=${FERRY:-$root/.build/release/ferry}
if [ ! -x "$ferry" ]; then
  echo "== building ferry (release)"
  (cd "$root" && swift build -c release --product ferry >/dev/null)
fi

ns_srv="ferry-srv-$$"; ns_a="ferry-a-$$"; ns_b="ferry-b-$$"
lab=$(mktemp -d /tmp/ferry-two-hosts.XXXXXX)
shared="$lab/shared"; mkdir -p "$shared"
shared_a=$shared; shared_b=$shared   # each host's --shared-dir: the same directory, or each its own GlusterFS mount
gluster_dir=""; gluster_up_seconds=""
pids=()        # long-lived processes (ferry receive, ferry run, the TCP sink)
clients=()     # short ones that may be mid-flight on an interrupt (ferry migrate, the TCP sender)
status=1

teardown() {
  trap - EXIT INT TERM
  set +e
  for pid in "${clients[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  for sock in "$lab/b.sock" "$lab/a.sock"; do
    [ -S "$sock" ] && timeout 5 "$ferry" stop --control "$sock" >/dev/null 2>&1
  done
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || continue
    for _ in $(seq 1 30); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -TERM "$pid" 2>/dev/null; sleep 0.2; kill -KILL "$pid" 2>/dev/null
  done
  wait 2>/dev/null
  if [ -n "$keep_logs" ]; then
    mkdir -p "$keep_logs" && cp "$lab"/*.log "$keep_logs"/ 2>/dev/null
    [ -n "$gluster_dir" ] && cp -r "$gluster_dir/logs" "$keep_logs/glusterfs" 2>/dev/null
  fi
  if [ -n "$gluster_dir" ]; then
    gluster_lab_down "$gluster_dir"
    echo "== GlusterFS torn down in $(cat "$gluster_dir/down-seconds" 2>/dev/null || echo '?') s (mounts, clients, brick, glusterd, its files outside $lab)"
  fi
  for ns in "$ns_a" "$ns_b" "$ns_srv"; do ip netns del "$ns" 2>/dev/null; done
  # --one-file-system: never into a mount that failed to go away.
  rm -rf --one-file-system "$lab"
}
on_signal() { echo "two-hosts.sh: interrupted ($1), tearing down" >&2; status=$2; exit "$2"; }
trap 'teardown; exit $status' EXIT
trap 'on_signal SIGINT 130' INT
trap 'on_signal SIGTERM 143' TERM

in_ns() { local ns=$1; shift; ip netns exec "$ns" "$@"; }

echo "== lab: namespaces $ns_srv, $ns_a, $ns_b; shared mount: $shared_kind"
for ns in "$ns_srv" "$ns_a" "$ns_b"; do
  ip netns add "$ns"
  in_ns "$ns" ip link set lo up
done
# veth NAME1 NS1 ADDR1 NAME2 NS2 ADDR2: a pair with one end in each namespace (never in the root namespace).
veth() {
  ip link add "$1" netns "$2" type veth peer name "$4" netns "$5"
  in_ns "$2" ip addr add "$3" dev "$1"; in_ns "$2" ip link set "$1" up
  in_ns "$5" ip addr add "$6" dev "$4"; in_ns "$5" ip link set "$4" up
}
veth biz-a "$ns_srv" 10.77.1.1/24 biz "$ns_a" 10.77.1.2/24     # business network, server <-> A
veth biz-b "$ns_srv" 10.77.2.1/24 biz "$ns_b" 10.77.2.2/24     # business network, server <-> B
veth mig "$ns_a" 10.77.3.1/24 mig "$ns_b" 10.77.3.2/24         # migration network, A <-> B
in_ns "$ns_a" ip link set mig mtu "$mtu"; in_ns "$ns_b" ip link set mig mtu "$mtu"

if [ -n "$rate" ]; then
  # burst: at least 4 ms at RATE and 64 KiB (a whole GSO packet passes without being split);
  # limit: 100 ms at RATE, at least 4 MiB (one TCP socket's small-queue budget), so the bucket paces and never drops.
  burst=$(( rate_bps / 8 / 250 )); [ "$burst" -lt 65536 ] && burst=65536
  limit=$(( rate_bps / 8 / 10 )); [ "$limit" -lt 4194304 ] && limit=4194304
  in_ns "$ns_a" tc qdisc add dev mig root tbf rate "$rate" burst "$burst" limit "$limit"
  echo "== migration link A -> B shaped: $(in_ns "$ns_a" tc qdisc show dev mig)"
fi

# Each host reaches the server on its business link and the other host only on the migration link.
in_ns "$ns_a" ip route get 10.77.3.2 | grep -q "dev mig" && in_ns "$ns_a" ip route get 10.77.1.1 | grep -q "dev biz" \
  || { echo "two-hosts.sh: routes in $ns_a are not as built" >&2; exit 1; }

if [ "$shared_kind" = glusterfs ]; then
  # The brick is served at the server's address on A's side; B reaches it through the server's other veth.
  in_ns "$ns_b" ip route add 10.77.1.0/24 via 10.77.2.1 dev biz
  gluster_dir="$lab/gluster"
  echo "== shared mount: GlusterFS, glusterd in $ns_srv, brick $gluster_dir/brick at 10.77.1.1"
  gluster_lab_up "$gluster_dir" "$ns_srv" 10.77.1.1 "$ns_a=$lab/mnt-a" "$ns_b=$lab/mnt-b" \
    || { echo "two-hosts.sh: the GlusterFS volume did not come up (logs: $gluster_dir/logs)" >&2; exit 1; }
  shared_a="$lab/mnt-a"; shared_b="$lab/mnt-b"
  gluster_up_seconds=$(cat "$gluster_dir/up-seconds")
  echo "   volume $(cat "$gluster_dir/volume") up in $gluster_up_seconds s; A mounts it at $shared_a, B at $shared_b"
fi

if [ "$tcp_baseline" = 1 ]; then
  bytes=$(python3 - "$size" <<'PY'
import re, sys
m = re.fullmatch(r"(\d+)\s*([KMGT]i?B?|B)?", sys.argv[1].strip(), re.I)
n = int(m.group(1)); unit = (m.group(2) or "").upper().rstrip("B").rstrip("I")
print(n * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit])
PY
)
  echo "== plain TCP over the migration link: $bytes bytes, A -> B"
  ip netns exec "$ns_b" "$ferry" bench tcp-sink --listen "10.77.3.2:$((port + 1))" --bytes "$bytes" >"$lab/sink.log" 2>&1 &
  sink=$!; clients+=($sink)
  # In the background and waited for, so that Ctrl-C is handled at once, not after the transfer.
  in_ns "$ns_a" python3 - "$bytes" "$((port + 1))" >"$lab/tcp.out" 2>"$lab/tcp.log" <<'PY' &
import os, socket, sys, time
total, port = int(sys.argv[1]), int(sys.argv[2])
data = memoryview(os.urandom(min(total, 64 << 20)))
for _ in range(200):
    try:
        s = socket.create_connection(("10.77.3.2", port), source_address=("10.77.3.1", 0)); break
    except OSError:
        time.sleep(0.05)
start = time.monotonic(); sent = 0
while sent < total:
    chunk = data[: min(4 << 20, total - sent)]
    s.sendall(chunk); sent += len(chunk)
s.recv(1)
print("%.4f" % (time.monotonic() - start))
PY
  clients+=($!)
  wait "${clients[-1]}" || { echo "two-hosts.sh: the plain TCP transfer failed:" >&2; cat "$lab/tcp.log" "$lab/sink.log" >&2; exit 1; }
  wait "$sink" || true
  tcp_seconds=$(cat "$lab/tcp.out")
  echo "   plain TCP: $tcp_seconds s"
fi

# The download fetches its blocks from a server on the business network: A reaches it as 10.77.1.1,
# B as 10.77.2.1 (the socket does not migrate; the workload reconnects from B).
source_a=(); source_b=()
if [ "$workload" = download ]; then
  echo "== server: ferry serve-blocks on 0.0.0.0:9000 (only the lab's business veths in that namespace)"
  ip netns exec "$ns_srv" "$ferry" serve-blocks --listen 0.0.0.0:9000 >"$lab/server.log" 2>&1 &  # exec: $! is the server
  pids+=($!)
  server_started=$(date +%s.%N)
  source_a=(--source 10.77.1.1:9000); source_b=(--source 10.77.2.1:9000)
  sleep 0.3
fi

echo "== B: ferry receive on 10.77.3.2:$port"
ip netns exec "$ns_b" "$ferry" receive --listen "10.77.3.2:$port" --shared-dir "$shared_b" --control "$lab/b.sock" \
  --timeout "$timeout" --once "${source_b[@]}" >"$lab/b.log" 2>&1 &
pids+=($!)
echo "== A: ferry run --workload $workload --region-size $size --fill $fill --dirty-rate $dirty --writes $writes"
ip netns exec "$ns_a" "$ferry" run --workload "$workload" --region-size "$size" --fill "$fill" --dirty-rate "$dirty" --writes "$writes" \
  "${source_a[@]}" --shared-dir "$shared_a" --control "$lab/a.sock" >"$lab/a.log" 2>&1 &
pids+=($!)
for sock in a b; do
  for _ in $(seq 1 600); do [ -S "$lab/$sock.sock" ] && break; sleep 0.05; done
  [ -S "$lab/$sock.sock" ] || { echo "two-hosts.sh: ferry in $sock did not start:" >&2; cat "$lab/$sock.log" >&2; exit 1; }
done

echo "== A: ferry migrate --to 10.77.3.2:$port --bind 10.77.3.1"
json="$lab/report.json"
migrate_args=(migrate --control "$lab/a.sock" --to "10.77.3.2:$port" --bind 10.77.3.1 --mode "$mode"
              --verify "$verify" --timeout "$timeout" --report "$json")
[ -n "$target" ] && migrate_args+=(--downtime-target "$target")
[ -n "$maxbw" ] && migrate_args+=(--max-bandwidth "$maxbw")
[ -n "${on_stall:-}" ] && migrate_args+=(--on-stall "$on_stall")
[ -n "$compress" ] && migrate_args+=(--compress "$compress")
[ -n "$delta_cache" ] && migrate_args+=(--delta-cache "$delta_cache")
migrate_status=0
[ "$workload" = download ] && sleep 3   # let the download's throughput settle before the migration
migrate_started=$(date +%s.%N)
ip netns exec "$ns_a" "$ferry" "${migrate_args[@]}" &
clients+=($!)
if [ -n "$cut_after" ]; then
  sleep "$cut_after"
  echo "== partition: B's end of the migration veth goes down (nothing tells either side)"
  in_ns "$ns_b" ip link set mig down
  if [ -n "$down_for" ]; then
    sleep "$down_for"
    echo "== partition over: B's end of the migration veth is up again after ${down_for}s"
    in_ns "$ns_b" ip link set mig up
  fi
fi
wait "${clients[-1]}" || migrate_status=$?
migrate_ended=$(date +%s.%N)
if [ -n "$cut_after" ] && [ -z "$down_for" ]; then
  # B gave up on the stream (it runs with --once): it must not run the workload.
  for _ in $(seq 1 100); do kill -0 "${pids[-2]}" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "${pids[-2]}" 2>/dev/null; then b_state=running; else b_state=exited; fi
  echo "== B after the partition: ferry receive $b_state"
  jq --arg b "$b_state" '. + {partition: {receiver: $b}}' "$json" >"$json.p" && mv "$json.p" "$json"
fi

if [ "$workload" = download ]; then
  sleep 2
  # serve-blocks prints "t=Ns X MB/s" each second since it started: average before and during the migration.
  awk -v s="$server_started" -v a="$migrate_started" -v b="$migrate_ended" '
    /serve-blocks: t=/ { split($2, t, "="); sub("s", "", t[2]); at = s + t[2]
                         if (at <= a) { before += $3; nb++ } else if (at - 1 <= b) { during += $3; nd++ } else { after += $3; na++ } }
    END { printf "== business network (download from the server): before %.2f MB/s, during the migration %.2f MB/s, after %.2f MB/s\n",
                 nb ? before / nb : 0, nd ? during / nd : 0, na ? after / na : 0 }' "$lab/server.log"
fi

verify_status=0
if [ -s "$json" ] && [ "$(jq -r '.outcome' "$json")" != completed ]; then
  # Not moved: the workload must still run on A with nothing lost.
  echo "== A: ferry verify (the migration did not complete: the workload must still run here)"
  in_ns "$ns_a" "$ferry" verify --control "$lab/a.sock" || verify_status=$?
else
  echo "== B: ferry verify"
  in_ns "$ns_b" "$ferry" verify --control "$lab/b.sock" || verify_status=$?
fi

[ -s "$json" ] || { echo "two-hosts.sh: no report (ferry migrate exited $migrate_status)" >&2; cat "$lab"/*.log >&2; exit 1; }

# The document's arithmetic beside the measurement.
region_bytes=$(in_ns "$ns_b" "$ferry" status --control "$lab/b.sock" --json 2>/dev/null | jq -r '.region_bytes // empty' || true)
[ -n "$region_bytes" ] || region_bytes=$(jq -r '.region_bytes // .rounds[0].bytes' "$json")
jq --argjson rate "$rate_bps" --argjson region "$region_bytes" --arg rate_text "$rate" \
   --arg tcp "${tcp_seconds:-}" --arg maxbw "$maxbw" --argjson mtu "$mtu" \
   --arg ns "$ns_srv $ns_a $ns_b" --arg shared "$shared_kind" --arg gluster_up "$gluster_up_seconds" '
  . as $r
  | ($r.rounds[0] // {seconds: 0, bytes: 0}) as $full
  | ($r.total_seconds - ($r.setup_seconds // 0)) as $stream
  | (if $rate > 0 then $region * 8 / $rate else null end) as $expected
  | $r + {lab: {
      namespaces: $ns, shared: $shared,
      shared_up_seconds: (if $gluster_up != "" then ($gluster_up | tonumber) else null end),
      migration_rate: $rate_text, migration_rate_bps: $rate, max_bandwidth: $maxbw, mtu: $mtu,
      region_bytes: $region, expected_seconds: $expected,
      full_copy_seconds: $full.seconds, full_copy_bytes: $full.bytes,
      full_copy_gbps: (if $full.seconds > 0 then $full.bytes * 8 / $full.seconds / 1e9 else 0 end),
      migration_without_setup_seconds: $stream,
      full_copy_ratio: (if $expected then $full.seconds / $expected else null end),
      migration_ratio: (if $expected then $stream / $expected else null end),
      tcp_seconds: (if $tcp != "" then ($tcp | tonumber) else null end),
      tcp_ratio: (if $tcp != "" and $expected then ($tcp | tonumber) / $expected else null end)}}' \
   "$json" >"$json.lab"
mv "$json.lab" "$json"
[ -n "$report" ] && cp "$json" "$report"

jq -r '.lab as $l | [
  "== the document'"'"'s arithmetic (bytes × 8 ÷ rate) beside the measurement",
  "outcome                      \(.outcome), verified \(.verified)",
  "region                       \($l.region_bytes) bytes",
  "shared mount                 \($l.shared)\(if $l.shared_up_seconds then " (up in \($l.shared_up_seconds) s)" else "" end)",
  "migration link               \(if $l.migration_rate == "" then "unshaped" else "\($l.migration_rate) (tc tbf)" end), MTU \($l.mtu)\(if $l.max_bandwidth != "" then ", ferry --max-bandwidth \($l.max_bandwidth)" else "" end)",
  (if $l.expected_seconds then "expected  bytes×8÷rate        \($l.expected_seconds * 1000 | round / 1000) s" else empty end),
  "measured  full copy (round 0) \($l.full_copy_seconds * 1000 | round / 1000) s, \($l.full_copy_bytes) bytes, \($l.full_copy_gbps * 1000 | round / 1000) Gbit/s\(if $l.full_copy_ratio then ", ratio \($l.full_copy_ratio * 1000 | round / 1000)" else "" end)",
  "measured  migration - setup   \($l.migration_without_setup_seconds * 1000 | round / 1000) s\(if $l.migration_ratio then ", ratio \($l.migration_ratio * 1000 | round / 1000)" else "" end) (setup \((.setup_seconds // 0) * 1000 | round / 1000) s, total \(.total_seconds * 1000 | round / 1000) s)",
  (if $l.tcp_seconds then "measured  plain TCP, same bytes \($l.tcp_seconds) s\(if $l.tcp_ratio then ", ratio \($l.tcp_ratio * 1000 | round / 1000)" else "" end)" else empty end),
  "downtime                     \((.downtime_ms // 0) * 10 | round / 10) ms, rounds \(.rounds | length)",
  "on the wire                  \(.bytes_sent) bytes (compression \(.compression // "none"): \([.rounds[].compressed_saved_bytes // 0] | add) saved; deltas: \([.rounds[].delta_saved_bytes // 0] | add) saved)",
  (if .outcome != "completed" then "not moved                    \(.reason // "")" else empty end)
] | .[]' "$json"

outcome=$(jq -r '.outcome' "$json"); verified=$(jq -r '.verified' "$json")
if [ "$migrate_status" -eq 0 ] && [ "$verify_status" -eq 0 ] && [ "$outcome" = completed ] && [ "$verified" = true ]; then
  echo "== migration completed and verified"
  status=0
else
  echo "two-hosts.sh: migration did not complete and verify (migrate $migrate_status, verify $verify_status, outcome $outcome, verified $verified)" >&2
  status=1
fi
exit $status
