#!/usr/bin/env bash
# The side-by-side benchmark in one command: builds bench_step if needed, times increlora's training step
# (scoring, after the budget, and the frozen forward) and the Python peers (peers.py) on each model × dtype,
# merges everything into one JSON file and prints the table with the ratios (see RESULTS.md).
#
#   benchmarks/run.sh [--out FILE] [--models "bert-base minilm"] [--dtypes "fp32 bf16"] [--steps 100]
#                     [--warmup 10] [--peers lora,adalora,...] [--no-cpp] [--no-python] [--device cuda]
#   benchmarks/run.sh --smoke        # the CPU smoke mode of both sides, in seconds (what CI runs)
#
# Environment:
#   INCRELORA_PYTHON       Python with torch, transformers and peft (default: the setup venv
#                          ~/.cache/increlora/venv/bin/python when it exists, else python3)
#   INCRELORA_BENCH_BUILD  build folder (default: build-bench in the repository)
#   INCRELORA_CMAKE_ARGS   extra cmake arguments for the first configure (e.g. -DINCRELORA_FMT_INCLUDE_DIR=...)
#   INCRELORA_TORCH_PREFIX LibTorch's CMake prefix (default: torch.utils.cmake_prefix_path of that Python)
#   INCRELORA_JOBS         build jobs (default: nproc)
#
# --out FILE merges into FILE when it exists, so a run split over several commands (one model each) ends in
# one file. Default: benchmarks/results/<date>.json (smoke: <build>/bench-smoke.json).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${INCRELORA_CACHE:-$HOME/.cache/increlora}"
if [[ -n "${INCRELORA_PYTHON:-}" ]]; then
  py="$INCRELORA_PYTHON"
elif [[ -x "$cache/venv/bin/python" ]]; then
  py="$cache/venv/bin/python"
else
  py=python3
fi
build="${INCRELORA_BENCH_BUILD:-$root/build-bench}"

smoke=0 out="" models="bert-base minilm" dtypes="fp32 bf16" steps=100 warmup=10 peers="" device=cuda
run_cpp=1 run_py=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --out) out="$2"; shift ;;
    --models) models="$2"; shift ;;
    --dtypes) dtypes="$2"; shift ;;
    --steps) steps="$2"; shift ;;
    --warmup) warmup="$2"; shift ;;
    --peers) peers="$2"; shift ;;
    --device) device="$2"; shift ;;
    --no-cpp) run_cpp=0 ;;
    --no-python) run_py=0 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) echo "run.sh: unknown argument $1 (--help lists them)" >&2; exit 2 ;;
  esac
  shift
done
if [[ "$steps" -lt 50 && "$smoke" -eq 0 ]]; then
  echo "run.sh: --steps $steps: the benchmark takes the median of at least 50 steps" >&2
  exit 2
fi

# Build bench_step (only that target) in its own folder.
if [[ "$run_cpp" -eq 1 ]]; then
  if [[ ! -f "$build/CMakeCache.txt" ]]; then
    prefix="${INCRELORA_TORCH_PREFIX:-$("$py" -c 'import torch; print(torch.utils.cmake_prefix_path)')}"
    # Word splitting of INCRELORA_CMAKE_ARGS is intended: it holds several arguments.
    # shellcheck disable=SC2086
    cmake -S "$root" -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" \
      -DINCRELORA_BUILD_TESTS=OFF -DINCRELORA_INSTALL=OFF -DINCRELORA_PYTHON="$py" ${INCRELORA_CMAKE_ARGS:-} >&2
  fi
  cmake --build "$build" --target bench_step -j "${INCRELORA_JOBS:-$(nproc)}" >&2
  bench="$build/benchmarks/bench_step"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
parts=()

if [[ "$smoke" -eq 1 ]]; then
  if [[ -z "$out" ]]; then  # the default smoke file starts afresh; a given --out is merged into
    out="$build/bench-smoke.json"
    rm -f "$out"
  fi
  if [[ "$run_cpp" -eq 1 ]]; then
    for phase in scoring after_budget frozen_forward; do
      "$bench" --model minilm --tiny --device cpu --batch 2 --seq 16 --warmup 1 --steps 3 --threads 1 --phase "$phase" \
        --out "$work/cpp-$phase.json"
      parts+=("$work/cpp-$phase.json")
    done
  fi
  if [[ "$run_py" -eq 1 ]]; then
    "$py" "$root/benchmarks/peers.py" --smoke --out "$work/peers.json"
    parts+=("$work/peers.json")
  fi
else
  out="${out:-$root/benchmarks/results/$(date +%Y-%m-%d).json}"
  for model in $models; do
    for dtype in $dtypes; do
      if [[ "$run_cpp" -eq 1 ]]; then
        # The training phases with CUDA graphs (the default) and without (the _eager rows), then the floor.
        for run in "scoring on" "after_budget on" "scoring off" "after_budget off" "frozen_forward on"; do
          read -r phase graphs <<<"$run"
          f="$work/cpp-$model-$dtype-$phase-$graphs.json"
          "$bench" --model "$model" --dtype "$dtype" --device "$device" --phase "$phase" --graphs "$graphs" \
            --batch 32 --seq 128 --warmup "$warmup" --steps "$steps" --out "$f"
          parts+=("$f")
        done
      fi
      if [[ "$run_py" -eq 1 ]]; then
        f="$work/peers-$model-$dtype.json"
        # A failing peer is recorded in the JSON with its error; the others' numbers are kept.
        "$py" "$root/benchmarks/peers.py" --model "$model" --dtype "$dtype" --device "$device" --batch 32 \
          --seq 128 --warmup "$warmup" --steps "$steps" ${peers:+--peers "$peers"} --out "$f" ||
          echo "run.sh: peers.py $model $dtype reported failures (see the JSON)" >&2
        [[ -f "$f" ]] && parts+=("$f")
      fi
      # Merged after each model × dtype, so that a run cut short keeps what it measured.
      if [[ ${#parts[@]} -gt 0 ]]; then
        "$py" "$root/benchmarks/report.py" merge --out "$out" "${parts[@]}"
        parts=()
      fi
    done
  done
fi

if [[ ${#parts[@]} -gt 0 ]]; then
  "$py" "$root/benchmarks/report.py" merge --out "$out" "${parts[@]}"
fi
"$py" "$root/benchmarks/report.py" table "$out"
echo "run.sh: results in $out"
