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
script="${BASH_SOURCE[0]}"
# shellcheck source=../ferry-lib.sh
source "$here/../ferry-lib.sh"

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
