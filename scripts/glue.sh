#!/usr/bin/env bash
# Builds the GLUE program if needed and runs it; every argument goes to the program (`--help` lists them).
#
#   ./scripts/glue.sh --task_name sst2 --max_steps 2000 --root_output_dir out/sst2 [seed flags...]
#
# Defaults filled in when not given: --data_dir ../shared/data/glue/<task folder> for the tasks there, and the
# program's own --model_dir default (the all-MiniLM-L6-v2 checkpoint that scripts/setup.sh prepares). The build
# goes to $INCRELORA_BUILD_DIR (default ./build); a missing LibTorch or checkpoint runs scripts/setup.sh first.
set -euo pipefail

PROGRAM=glue
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
ensure_setup models/all-MiniLM-L6-v2/model.safetensors
build_program glue

# --data_dir from --task_name when the shared data has that task.
args=("$@")
has_data_dir=0
task=""
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --data_dir|--data_dir=*) has_data_dir=1 ;;
    --task_name) task="${args[$((i + 1))]:-}" ;;
    --task_name=*) task="${args[$i]#--task_name=}" ;;
  esac
done
if [ "$has_data_dir" -eq 0 ] && [ -n "$task" ]; then
  case "$(echo "$task" | tr '[:upper:]' '[:lower:]' | tr -d -)" in
    sst2) folder=SST-2 ;; cola) folder=CoLA ;; mrpc) folder=MRPC ;; qnli) folder=QNLI ;;
    stsb) folder=STS-B ;; qqp) folder=QQP ;; mnli) folder=MNLI ;; rte) folder=RTE ;; wnli) folder=WNLI ;;
    *) folder="" ;;
  esac
  data="$SHARED_DATA/glue/$folder"
  if [ -n "$folder" ] && [ -d "$data" ]; then args+=(--data_dir "$data"); fi
fi

exec "$BUILD/apps/glue" "${args[@]}"
