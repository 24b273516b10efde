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

PROGRAM=qa
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_setup models/all-MiniLM-L6-v2/model.safetensors
build_program qa

args=("$@")
if ! has_flag --dataset_name --train_file --validation_file -- "${args[@]}"; then
  data="$SHARED_DATA/qa"
  if [ -d "$data" ]; then
    args+=(--dataset_name "$data")
  else
    log "no --dataset_name given and $data does not exist: pass a SQuAD file or folder"
  fi
fi

exec "$BUILD/apps/qa" "${args[@]}"
