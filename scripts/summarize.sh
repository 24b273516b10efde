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

PROGRAM=summarize
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_setup venv/bin/python
build_program summarize

args=("$@")
if ! has_flag --dataset_name --train_file --validation_file -- "${args[@]}"; then
  if [ -d "$SHARED_DATA/summarization" ]; then
    args+=(--dataset_name "$SHARED_DATA/summarization")
  else
    log "no --dataset_name given and $SHARED_DATA/summarization does not exist: pass a file or folder"
  fi
fi
if ! has_flag --model_name_or_path --model_dir -- "${args[@]}"; then
  tiny="$CACHE/models/tiny-bart"
  "$CACHE/venv/bin/python" "$ROOT/scripts/make_tiny_bart.py" --data_dir "$SHARED_DATA" --out "$tiny" >&2
  log "no --model_name_or_path given: using the random-initialised BART in $tiny"
  args+=(--model_name_or_path "$tiny")
fi

exec "$BUILD/apps/summarize" "${args[@]}"
