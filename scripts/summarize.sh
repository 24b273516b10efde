#!/usr/bin/env bash
# Builds the summarization program if needed and runs it; every argument goes to the program (`--help` lists
# them).
#
#   ./scripts/summarize.sh --apply_lora --max_steps 200 --output_dir out/xsum [seed flags...]
#   ./scripts/summarize.sh --model_name_or_path /data/facebook-bart-large --dataset_name /data/xsum [seed flags...]
#
# Defaults filled in when not given: --dataset_name ../shared/data/summarization (the XSum sample, split into
# training and evaluation pairs) unless --dataset_name, --train_file or --validation_file is given; and, unless
# --model_name_or_path or --model_dir is given, a small random-initialised BART with a BPE tokenizer trained on
# that sample (scripts/make_tiny_bart.py, cached in ~/.cache/increlora/models/tiny-bart): no pretrained BART can
# be downloaded here, so its summaries show the pipeline working, not pretrained quality. The build goes to
# $INCRELORA_BUILD_DIR (default ./build); a missing LibTorch runs scripts/setup.sh.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${INCRELORA_CACHE:-$HOME/.cache/increlora}"
BUILD="${INCRELORA_BUILD_DIR:-$ROOT/build}"
SHARED_DATA="${INCRELORA_SHARED_DIR:-$ROOT/../shared}/data"
log() { echo "[summarize.sh] $*" >&2; }

if [ ! -f "$CACHE/torch_prefix" ] || [ ! -x "$CACHE/venv/bin/python" ]; then
  log "running scripts/setup.sh (LibTorch and the Python tools)"
  "$ROOT/scripts/setup.sh" >/dev/null
fi

if [ ! -f "$BUILD/CMakeCache.txt" ]; then
  generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  log "configuring $BUILD"
  cmake -S "$ROOT" -B "$BUILD" "${generator[@]}" -DCMAKE_PREFIX_PATH="$(cat "$CACHE/torch_prefix")" >&2
fi
cmake --build "$BUILD" --target summarize -j "${INCRELORA_JOBS:-2}" >&2

args=("$@")
has_data=0
has_model=0
for a in "${args[@]}"; do
  case "$a" in
    --dataset_name|--dataset_name=*|--train_file|--train_file=*|--validation_file|--validation_file=*) has_data=1 ;;
    --model_name_or_path|--model_name_or_path=*|--model_dir|--model_dir=*) has_model=1 ;;
  esac
done
if [ "$has_data" -eq 0 ]; then
  if [ -d "$SHARED_DATA/summarization" ]; then
    args+=(--dataset_name "$SHARED_DATA/summarization")
  else
    log "no --dataset_name given and $SHARED_DATA/summarization does not exist: pass a file or folder"
  fi
fi
if [ "$has_model" -eq 0 ]; then
  tiny="$CACHE/models/tiny-bart"
  "$CACHE/venv/bin/python" "$ROOT/scripts/make_tiny_bart.py" --data_dir "$SHARED_DATA" --out "$tiny" >&2
  log "no --model_name_or_path given: using the random-initialised BART in $tiny"
  args+=(--model_name_or_path "$tiny")
fi

exec "$BUILD/apps/summarize" "${args[@]}"
