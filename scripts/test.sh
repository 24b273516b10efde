#!/usr/bin/env bash
# Sets up what is needed, builds, and runs every test through ctest (Catch2 suites, examples, packaging).
#   scripts/test.sh [ctest arguments...]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build="$("$root/scripts/build.sh")"
cd "$build"
ctest --output-on-failure -j "${INCRELORA_TEST_JOBS:-2}" "$@"
