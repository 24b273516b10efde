#!/usr/bin/env bash
# Builds the question-answering program if needed and runs it; every argument goes to the program (`--help`
# lists them).
#
#   ./scripts/qa.sh --version_2_with_negative --max_steps 200 --root_output_dir out/squad [seed flags...]
#
# Defaults filled in when not given: --dataset_name ../shared/data/qa (the SQuAD v2 sample, split by paragraph
# into training and evaluation questions) unless --dataset_name, --train_file or --validation_file is given, and
# the program's own --model_dir default (the all-MiniLM-L6-v2 checkpoint that scripts/setup.sh prepares). The
# build goes to $INCRELORA_BUILD_DIR (default ./build); a missing LibTorch or checkpoint runs scripts/setup.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${INCRELORA_CACHE:-$HOME/.cache/increlora}"
BUILD="${INCRELORA_BUILD_DIR:-$ROOT/build}"
log() { echo "[qa.sh] $*" >&2; }

if [ ! -f "$CACHE/torch_prefix" ] || [ ! -f "$CACHE/models/all-MiniLM-L6-v2/model.safetensors" ]; then
  log "running scripts/setup.sh (LibTorch and the all-MiniLM-L6-v2 checkpoint)"
  "$ROOT/scripts/setup.sh" >/dev/null
fi

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  log "configuring $BUILD"
  cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" -DCMAKE_PREFIX_PATH="$(cat "$CACHE/torch_prefix")" >&2
fi
cmake --build "$BUILD" --target qa -j "${INCRELORA_JOBS:-2}" >&2

args=("$@")
has_data=0
for a in "${args[@]}"; do
  case "$a" in
    --dataset_name|--dataset_name=*|--train_file|--train_file=*|--validation_file|--validation_file=*) has_data=1 ;;
  esac
done
if [ "$has_data" -eq 0 ]; then
  data="${INCRELORA_SHARED_DIR:-$ROOT/../shared}/data/qa"
  if [ -d "$data" ]; then
    args+=(--dataset_name "$data")
  else
    log "no --dataset_name given and $data does not exist: pass a SQuAD file or folder"
  fi
fi

exec "$BUILD/apps/qa" "${args[@]}"
