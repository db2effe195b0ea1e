#!/usr/bin/env bash
# Builds demo/c/.build/wordfreq against Ferry's C API (libFerry.so). Works from any directory.
# Usage: demo/c/build.sh [--release] [--scratch-path DIR]
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
${CC:-cc} -std=c11 -O2 -g -Wall -Wextra -Werror \
  -I"$root/Sources/CFerry/include" \
  "$here/wordfreq.c" -o "$out/wordfreq" \
  -L"$bindir" -lFerry -Wl,-rpath,"$bindir" >&2
echo "$out/wordfreq"
