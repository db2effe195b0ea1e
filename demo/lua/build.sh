#!/usr/bin/env bash
# Builds demo/lua/.build/ferry-lua, a host for the system's Lua 5.4 (pkg-config lua5.4), against Ferry's C API
# (libFerry.so). Works from any directory.
# Usage: demo/lua/build.sh [--release] [--scratch-path DIR]
#   --release            link against `swift build -c release`'s libFerry.so (default: debug)
#   --scratch-path DIR   passed to swift build (default: the package's .build)
# Environment: FERRY_LIB_DIR=DIR uses DIR/libFerry.so as is (no swift build); CC (default cc).
# libFerry.so is built with `swift build` when missing. The last line of output is the binary's absolute path.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
swift_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --release) swift_args+=(-c release); shift ;;
    --scratch-path) swift_args+=(--scratch-path "${2:?--scratch-path needs a directory}"); shift 2 ;;
    -h|--help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
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

out="$here/.build"
mkdir -p "$out"
command -v pkg-config >/dev/null || { echo "build.sh: needs pkg-config" >&2; exit 69; }
lua_flags=$(pkg-config --cflags --libs lua5.4) || { echo "build.sh: needs Lua 5.4's development files (liblua5.4-dev)" >&2; exit 69; }
# shellcheck disable=SC2086
${CC:-cc} -std=c11 -O2 -g -Wall -Wextra -Werror \
  -I"$root/Sources/CFerry/include" \
  "$here/ferry-lua.c" -o "$out/ferry-lua" \
  -L"$bindir" -lFerry -Wl,-rpath,"$bindir" $lua_flags >&2
echo "$out/ferry-lua"
