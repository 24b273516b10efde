#!/usr/bin/env bash
# Sets up what is needed, builds, and runs the offline demo: IncreLoRA growing ranks where they are needed.
#   scripts/demo.sh [--device cpu|cuda]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$("$root/scripts/build.sh")"
exec "$build/examples/demo" "$@"
