# Sourced by the demo build scripts: parses [--release] [--scratch-path DIR] [--help] and sets `root` (the
# package) and `bindir` (where libFerry.so is), building libFerry.so with `swift build` when it is missing.
# FERRY_LIB_DIR=DIR uses DIR/libFerry.so as is (no swift build). The caller sets `here` and `script`.
root=$(cd "$here/../.." && pwd)
swift_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --release) swift_args+=(-c release); shift ;;
    --scratch-path) swift_args+=(--scratch-path "${2:?--scratch-path needs a directory}"); shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$script"; exit 0 ;;
    *) echo "build.sh: unknown option $1 (see --help)" >&2; exit 64 ;;
  esac
done
if [ -n "${FERRY_LIB_DIR:-}" ]; then
  bindir=$(cd "$FERRY_LIB_DIR" && pwd)
else
  bindir=$(cd "$root" && swift build ${swift_args[@]+"${swift_args[@]}"} --show-bin-path)
  if [ ! -f "$bindir/libFerry.so" ]; then
    echo "build.sh: $bindir/libFerry.so is missing: running swift build ${swift_args[*]:-}" >&2
    (cd "$root" && swift build ${swift_args[@]+"${swift_args[@]}"}) >&2
  fi
fi
[ -f "$bindir/libFerry.so" ] || { echo "build.sh: no libFerry.so in $bindir" >&2; exit 1; }
