# Sourced by the program scripts (glue.sh, qa.sh, summarize.sh): where things are, and how a program gets built.
#   source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"; PROGRAM=glue; ensure_setup NEEDED_FILE...; build_program glue
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${INCRELORA_CACHE:-$HOME/.cache/increlora}"
BUILD="${INCRELORA_BUILD_DIR:-$ROOT/build}"
SHARED_DATA="${INCRELORA_SHARED_DIR:-$ROOT/../shared}/data"

log() { echo "[${PROGRAM:-increlora}.sh] $*" >&2; }

# Runs scripts/setup.sh (LibTorch, the venv, the MiniLM checkpoint) unless its outputs and every file named
# (relative to $CACHE) are there.
ensure_setup() {
  local missing=0 f
  [ -f "$CACHE/torch_prefix" ] || missing=1
  for f in "$@"; do [ -e "$CACHE/$f" ] || missing=1; done
  if [ "$missing" -eq 1 ]; then
    log "running scripts/setup.sh (LibTorch, the Python tools and the all-MiniLM-L6-v2 checkpoint)"
    "$ROOT/scripts/setup.sh" >/dev/null
  fi
}

# Configures $BUILD if it has never been, then builds the target named.
build_program() {
  if [ ! -f "$BUILD/CMakeCache.txt" ]; then
    local generator=()
    command -v ninja >/dev/null && generator=(-G Ninja)
    log "configuring $BUILD"
    cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" -DCMAKE_PREFIX_PATH="$(cat "$CACHE/torch_prefix")" >&2
  fi
  cmake --build "$BUILD" --target "$1" -j "${INCRELORA_JOBS:-2}" >&2
}

# Whether any of the arguments after "--" is one of the flags before it (as --flag or --flag=value).
has_flag() {
  local flags=() arg f
  while [ "$#" -gt 0 ] && [ "$1" != "--" ]; do flags+=("$1"); shift; done
  shift || true
  for arg in "$@"; do
    for f in "${flags[@]}"; do
      case "$arg" in "$f"|"$f"=*) return 0 ;; esac
    done
  done
  return 1
}
