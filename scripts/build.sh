#!/usr/bin/env bash
# Configures and builds increlora (library, tests, examples) against the LibTorch that setup.sh prepared.
#   scripts/build.sh [build-dir]      (default: build)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="${1:-$root/build}"
prefix="$("$root/scripts/setup.sh")"
jobs="${INCRELORA_JOBS:-$(nproc)}"
cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
  -DINCRELORA_PYTHON="${INCRELORA_CACHE:-$HOME/.cache/increlora}/venv/bin/python" >&2
cmake --build "$build" -j "$jobs" >&2
echo "$build"
