#!/usr/bin/env bash
# Baseline for Ferry's benchmark bar: time QEMU's own *default* live migration
# of a guest whose RAM (SIZE, default 1 GiB) holds random bytes, over loopback.
#
# Usage: bench/qemu-migration.sh [--size 1GiB] [--json]
#
#   --size N   guest RAM size; suffixes K/M/G, KiB/MiB/GiB (binary), default 1GiB
#   --json     print one JSON object on stdout instead of the human summary
#
# Environment: QEMU_ACCEL=kvm|tcg overrides the accelerator (default: kvm when
# /dev/kvm is usable, else tcg; the guest stays stopped with -S, so the
# accelerator only affects dirty tracking, not guest execution).
#
# How it works:
#   * random files (<= 1 GiB each) are loaded into guest RAM with
#     `-device loader`: all RAM except the first MiB (legacy x86 holes);
#   * a destination QEMU listens with `-incoming defer` + migrate-incoming on
#     tcp:127.0.0.1:0 (kernel picks the port), the source issues `migrate`
#     with QEMU's defaults: no capability or parameter is changed;
#   * wall time runs from sending `migrate` until BOTH sides report
#     "completed" in query-migrate (polled every 2 ms);
#   * afterwards the transferred page counts are checked and a random 1 MiB
#     slice of guest RAM is compared between source and destination, so a
#     run that only moved zero pages is reported as an error.
# Everything started here (both QEMUs, temp dir) is removed on exit or error.
# Temp files live in /dev/shm (tmpfs) if writable, else $TMPDIR or /tmp.
# Exit codes: 0 ok, 1 failure, 2 qemu missing / bad usage.
set -euo pipefail

SIZE_ARG=1GiB
JSON=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --size) SIZE_ARG="${2:?--size needs a value}"; shift 2 ;;
        --size=*) SIZE_ARG="${1#--size=}"; shift ;;
        --json) JSON=1; shift ;;
        -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done

QEMU=qemu-system-x86_64
if ! command -v "$QEMU" >/dev/null 2>&1; then
    echo "$QEMU not found; install it: apt-get install -y qemu-system-x86" >&2
    exit 2
fi
command -v python3 >/dev/null 2>&1 || { echo "python3 is required" >&2; exit 2; }

# Parse SIZE into bytes (binary units).
if [[ ! "$SIZE_ARG" =~ ^([0-9]+)([KkMmGg]?)(i?[Bb])?$ ]]; then
    echo "bad --size: $SIZE_ARG (e.g. 1GiB, 512M)" >&2; exit 2
fi
case "${BASH_REMATCH[2]}" in
    [Kk]) SIZE=$(( BASH_REMATCH[1] << 10 )) ;;
    [Mm]) SIZE=$(( BASH_REMATCH[1] << 20 )) ;;
    [Gg]) SIZE=$(( BASH_REMATCH[1] << 30 )) ;;
    *)    SIZE=${BASH_REMATCH[1]} ;;
esac
MIB=$(( 1 << 20 ))
if (( SIZE % MIB != 0 || SIZE < 4 * MIB )); then
    echo "--size must be a whole number of MiB, at least 4MiB" >&2; exit 2
fi

# Accelerator: KVM if usable, else TCG.
ACCEL="${QEMU_ACCEL:-}"
if [[ -z "$ACCEL" ]]; then
    if [[ -r /dev/kvm && -w /dev/kvm ]]; then ACCEL=kvm; else ACCEL=tcg; fi
fi

T0=$(date +%s.%N)
# Temp files go to tmpfs (/dev/shm) when present, so that writing back the
# random file to disk does not compete with the migration for CPU and I/O.
TMPBASE=/dev/shm
[[ -d $TMPBASE && -w $TMPBASE ]] || TMPBASE="${TMPDIR:-/tmp}"
WORK=$(mktemp -d "$TMPBASE/qemu-migration.XXXXXX")
SRC_PID="" DST_PID="" PY_PID=""
cleanup() {
    local pid
    [[ -n "$PY_PID" ]] && kill "$PY_PID" 2>/dev/null
    for pid in $SRC_PID $DST_PID; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in $SRC_PID $DST_PID; do
        # give QEMU a moment to exit on SIGTERM, then force it
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        kill -9 "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

log() { [[ $JSON == 1 ]] || echo "$*" >&2; }

# Guest RAM layout of the i440fx "pc" machine: below 3.5 GiB all RAM sits at
# 0..SIZE; from 3.5 GiB on, 3 GiB stay low and the rest is mapped at 4 GiB.
LOW=$SIZE HIGH=0
if (( SIZE >= 0xe0000000 )); then LOW=$(( 0xc0000000 )); HIGH=$(( SIZE - LOW )); fi
FILL=$(( SIZE - MIB ))   # random bytes: all RAM except the first MiB

# QEMU's loader reads each file with one read(2), which Linux caps just under
# 2 GiB, so the random data goes in chunks of at most 1 GiB, one loader each.
log "generating $FILL random bytes..."
LOADERS=()
add_chunks() {  # add_chunks GUEST_ADDR LENGTH
    local addr=$1 left=$2 n len
    while (( left > 0 )); do
        len=$(( left < (1 << 30) ? left : (1 << 30) ))
        n=${#LOADERS[@]}
        head -c "$len" /dev/urandom > "$WORK/chunk$n.bin"
        LOADERS+=(-device "loader,file=$WORK/chunk$n.bin,addr=$addr,force-raw=on")
        addr=$(( addr + len )) left=$(( left - len ))
    done
}
add_chunks "$MIB" "$(( LOW - MIB ))"
(( HIGH == 0 )) || add_chunks "$(( 1 << 32 ))" "$HIGH"
T_GEN=$(date +%s.%N)

# Identical machines on both sides; only the source gets the loader(s).
COMMON=(-machine pc -accel "$ACCEL" -m "$(( SIZE / MIB ))M" -smp 1
        -nodefaults -display none -S -no-user-config)
log "starting destination and source QEMU ($ACCEL, $(( SIZE / MIB )) MiB RAM)..."
"$QEMU" "${COMMON[@]}" -name dst -qmp "unix:$WORK/dst.qmp,server=on,wait=off" \
    -incoming defer >"$WORK/dst.log" 2>&1 &
DST_PID=$!
"$QEMU" "${COMMON[@]}" -name src -qmp "unix:$WORK/src.qmp,server=on,wait=off" \
    "${LOADERS[@]}" >"$WORK/src.log" 2>&1 &
SRC_PID=$!

# QMP driver: waits for both monitors, migrates, polls, verifies, reports.
# Run in the background and `wait` for it so that a signal fires the trap at
# once (bash defers traps while a foreground child runs).
python3 - "$WORK" "$SIZE" "$JSON" "$T0" "$ACCEL" "$LOW" "$DST_PID" "$SRC_PID" "$T_GEN" <<'PY' &
import json, os, random, socket, sys, time

work, size, as_json, t0, accel, low = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", float(sys.argv[4]), sys.argv[5], int(sys.argv[6])
dst_pid, src_pid, t_gen = int(sys.argv[7]), int(sys.argv[8]), float(sys.argv[9])
MIB = 1 << 20
# Errors (QEMU died, QMP error): one line, not a traceback.
sys.excepthook = lambda t, e, tb: print(f"error: {t.__name__}: {e}", file=sys.stderr)

def say(*a):
    if not as_json:
        print(*a, file=sys.stderr)

class QMP:
    def __init__(self, path, pid, deadline):
        while True:  # the socket appears once QEMU has parsed its options
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                try:
                    os.kill(pid, 0)  # QEMU still alive?
                except ProcessLookupError:
                    sys.exit(f"QEMU (pid {pid}) exited before its QMP socket came up")
                if time.monotonic() > deadline:
                    sys.exit(f"timed out waiting for QMP socket {path}")
                time.sleep(0.05)
        self.f = self.s.makefile("rwb", buffering=0)
        self.greeting = json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.f.write(json.dumps(msg).encode() + b"\n")
        while True:
            r = json.loads(self.f.readline())
            if "event" in r:
                continue
            if "error" in r:
                raise RuntimeError(f"{name}: {r['error']}")
            return r["return"]

deadline = time.monotonic() + 120
dst = QMP(os.path.join(work, "dst.qmp"), dst_pid, deadline)
src = QMP(os.path.join(work, "src.qmp"), src_pid, deadline)
# QEMU keeps its own copy of loader files: free the tmpfs space now.
for name in os.listdir(work):
    if name.startswith("chunk"):
        os.unlink(os.path.join(work, name))
v = src.greeting["QMP"]["version"]["qemu"]
version = f"{v['major']}.{v['minor']}.{v['micro']}"
params = src.cmd("query-migrate-parameters")
caps = {c["capability"]: c["state"] for c in src.cmd("query-migrate-capabilities")}
on_caps = sorted(k for k, st in caps.items() if st)

# Destination listens on an ephemeral loopback port.
dst.cmd("migrate-incoming", uri="tcp:127.0.0.1:0")
addrs = dst.cmd("query-migrate").get("socket-address", [])
port = next(int(a["port"]) for a in addrs if a.get("type") == "inet")
startup = time.time() - t0
say(f"QEMU {version}; defaults: max-bandwidth={params.get('max-bandwidth')} B/s, "
    f"downtime-limit={params.get('downtime-limit')} ms, multifd-channels={params.get('multifd-channels')}, "
    f"capabilities on: {on_caps or 'none'}")
say(f"startup: {startup:.2f} s (random data {t_gen - t0:.2f} s, QEMUs ready {startup - (t_gen - t0):.2f} s); "
    f"migrating to 127.0.0.1:{port}...")

# The measured part: migrate with defaults, poll until both sides complete.
t_start = time.monotonic()
src.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
src_info = src_done = dst_done = None
while src_done is None or dst_done is None:
    if src_done is None:
        src_info = src.cmd("query-migrate")
        st = src_info.get("status")
        if st == "completed":
            src_done = time.monotonic()
        elif st in ("failed", "cancelled"):
            sys.exit(f"source migration {st}: {src_info.get('error-desc', '')}")
    if dst_done is None:
        dst_st = dst.cmd("query-migrate").get("status")
        if dst_st == "completed":
            dst_done = time.monotonic()
        elif dst_st in ("failed", "cancelled"):
            sys.exit(f"destination migration {dst_st}")
    if time.monotonic() - t_start > 1800:
        sys.exit("migration did not complete within 30 minutes")
    time.sleep(0.002)
wall = max(src_done, dst_done) - t_start

ram = src_info["ram"]
transferred = ram["transferred"]
page = ram.get("page-size", 4096)
# Sanity: the random RAM must have travelled as normal (non-zero) pages.
expected = size - MIB
if ram["normal"] * page < 0.99 * expected:
    sys.exit(f"only {ram['normal']} normal pages ({ram['normal'] * page} B) sent, "
             f"expected ~{expected} B of random data: RAM was not filled")
# ...and a random 1 MiB slice of guest RAM must be identical on both sides
# and look random (not constant).
off = random.randrange(MIB, size - MIB) // MIB * MIB
gpa = off if off < low else (1 << 32) + (off - low)
def dump(q, name):
    path = os.path.join(work, name)
    q.cmd("pmemsave", val=gpa, size=MIB, filename=path)
    with open(path, "rb") as fh:
        return fh.read()
want, got = dump(src, "src-slice.bin"), dump(dst, "dst-slice.bin")
if len(got) != MIB or got != want:
    sys.exit(f"destination RAM at {gpa:#x} differs from the source")
if len(set(got)) < 200:
    sys.exit(f"guest RAM at {gpa:#x} does not look random")

result = {
    "size_bytes": size,
    "wall_seconds": round(wall, 4),
    "total_time_ms": src_info.get("total-time"),
    "downtime_ms": src_info.get("downtime"),
    "setup_time_ms": src_info.get("setup-time"),
    "transferred_bytes": transferred,
    "mbps": round(transferred / wall / 1e6, 1),  # MB/s (10^6 B/s), end to end
    # provenance
    "qemu_version": version,
    "accel": accel,
    "max_bandwidth_bytes_per_s": params.get("max-bandwidth"),
    "downtime_limit_ms": params.get("downtime-limit"),
    "startup_seconds": round(startup, 2),
}
if as_json:
    print(json.dumps(result))
else:
    print(f"size:              {size} B ({size / (1 << 30):.3f} GiB)")
    print(f"wall (migrate -> both completed): {wall:.3f} s "
          f"(source completed after {src_done - t_start:.3f} s)")
    print(f"QEMU total-time:   {result['total_time_ms']} ms")
    print(f"QEMU downtime:     {result['downtime_ms']} ms")
    print(f"QEMU setup-time:   {result['setup_time_ms']} ms")
    print(f"transferred:       {transferred} B (normal pages {ram['normal']}, zero pages {ram['duplicate']})")
    print(f"throughput:        {result['mbps']} MB/s end to end "
          f"(QEMU's ram.mbps, megabits/s: {ram.get('mbps')})")
    print(f"startup:           {startup:.2f} s (random data {t_gen - t0:.2f} s + both QEMUs ready)")
PY
PY_PID=$!
rc=0
wait "$PY_PID" || rc=$?
PY_PID=""
if (( rc != 0 )); then
    echo "migration benchmark failed (rc=$rc); QEMU logs:" >&2
    tail -n 20 "$WORK/src.log" "$WORK/dst.log" >&2 || true
    exit 1
fi
