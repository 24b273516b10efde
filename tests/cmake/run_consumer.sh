#!/usr/bin/env bash
# Builds and runs tests/cmake/consumer against increlora.
#   run_consumer.sh find_package <increlora build dir> <work dir> <prefix path>
#   run_consumer.sh add_subdirectory <increlora source dir> <work dir> <prefix path>
set -euo pipefail
mode="$1" where="$2" work="$3" prefix="$4"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
rm -rf "$work" && mkdir -p "$work"
args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DINCRELORA_CONSUMER_MODE="$mode")
if [ "$mode" = find_package ]; then
  cmake --install "$where" --prefix "$work/install" >/dev/null
  args+=(-DCMAKE_PREFIX_PATH="$work/install;$prefix")
else
  args+=(-DINCRELORA_SOURCE_DIR="$where" -DCMAKE_PREFIX_PATH="$prefix")
fi
cmake -S "$here/consumer" -B "$work/build" "${args[@]}" >/dev/null
cmake --build "$work/build" -j 2 >/dev/null
"$work/build/consumer"
"$work/build/consumer_models"
