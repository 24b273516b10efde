#!/usr/bin/env bash
# A/B timing of increlora's training step: bench_step built from two source trees (a baseline, e.g. a `git archive`
# of the commit before a change, and this checkout), and from any variant trees named with --variant, run
# alternately in one command on one machine, so that a change is measured against a baseline that saw the same GPU,
# clocks and load (timings from separate machine starts differ by a few per cent, about what one change of the
# adapter's kernels moves).
#
#   benchmarks/ab_step.sh BASE_SRC OUT_DIR [--models "bert-base minilm"] [--dtypes bf16]
#                         [--phases "after_budget scoring"] [--rounds 3] [--steps 60] [--warmup 10] [--device cuda]
#                         [--profile] [--bench-args "..."] [--variant NAME=SRC ...]
#
#   BASE_SRC  a source tree of increlora to compare against (the same layout as this checkout), e.g.
#             mkdir base && git archive <commit> | tar x -C base
#   OUT_DIR   receives <side>-*.json (bench_step's result of every run; sides: base, new, then the variants) and
#             ab.md: per model, dtype and phase, the median over the rounds of each side's median step, each side
#             ÷ base, and the peak memory.
#   --rounds  runs per side, alternating base, new, variants, base, new, ... (each run: --warmup steps, then
#             --steps timed)
#   --profile also records one `bench_step --profile` per side and row (profile-<side>-<row>.json), for
#             benchmarks/profile_report.py
#   --bench-args  more bench_step arguments for every run (e.g. "--tiny --threads 1 --batch 2 --seq 16" on a CPU)
#   --variant NAME=SRC  one more side: a third tree measured in the same rounds (e.g. a change kept off main);
#             NAME: letters, digits, '_' (not base, new or profile). Repeatable.
#
# Environment: INCRELORA_TORCH_PREFIX (LibTorch's CMake prefix; default: python3's torch), INCRELORA_CMAKE_ARGS
# (extra cmake arguments, e.g. -DINCRELORA_FMT_INCLUDE_DIR=...), INCRELORA_JOBS (build jobs per tree; the trees
# build at once), INCRELORA_AB_BUILD (build folders' parent, default /tmp/increlora-ab).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ $# -lt 2 || "$1" == -h || "$1" == --help ]]; then
  sed -n '2,29p' "$0"
  [[ $# -lt 2 ]] && exit 2 || exit 0
fi
base_src="$(cd "$1" && pwd)"
out="$2"
shift 2
models="bert-base minilm" dtypes="bf16" phases="after_budget scoring" rounds=3 steps=60 warmup=10 device=cuda
profile=0 bench_args=""
sides=(base new)
declare -A src=([base]="$base_src" [new]="$root")
while [[ $# -gt 0 ]]; do
  case "$1" in
    --models) models="$2"; shift ;;
    --dtypes) dtypes="$2"; shift ;;
    --phases) phases="$2"; shift ;;
    --rounds) rounds="$2"; shift ;;
    --steps) steps="$2"; shift ;;
    --warmup) warmup="$2"; shift ;;
    --device) device="$2"; shift ;;
    --profile) profile=1 ;;
    --bench-args) bench_args="$2"; shift ;;
    --variant)
      name="${2%%=*}" dir="${2#*=}"
      [[ "$2" == *=* && "$name" =~ ^[A-Za-z0-9_]+$ && ! "$name" =~ ^(base|new|profile)$ && -z "${src[$name]:-}" ]] ||
        { echo "ab_step.sh: --variant NAME=SRC with a new NAME of letters, digits and '_' (got '$2')" >&2; exit 2; }
      [[ -d "$dir" ]] || { echo "ab_step.sh: --variant $name: no folder $dir" >&2; exit 2; }
      sides+=("$name")
      src[$name]="$(cd "$dir" && pwd)"
      shift ;;
    *) echo "ab_step.sh: unknown argument $1 (--help lists them)" >&2; exit 2 ;;
  esac
  shift
done
for side in "${sides[@]}"; do
  [[ -f "${src[$side]}/CMakeLists.txt" && -d "${src[$side]}/benchmarks" ]] ||
    { echo "ab_step.sh: ${src[$side]} is not an increlora source tree (no CMakeLists.txt or benchmarks/)" >&2; exit 2; }
done
[[ "$rounds" -ge 1 ]] || { echo "ab_step.sh: --rounds must be >= 1" >&2; exit 2; }
mkdir -p "$out"

builds="${INCRELORA_AB_BUILD:-/tmp/increlora-ab}"
prefix="${INCRELORA_TORCH_PREFIX:-$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')}"
jobs="${INCRELORA_JOBS:-$(( ($(nproc) + 1) / 2 ))}"
build_one() {  # source tree, build folder
  # Word splitting of INCRELORA_CMAKE_ARGS is intended: it holds several arguments.
  # shellcheck disable=SC2086
  cmake -S "$1" -B "$2" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" -DINCRELORA_BUILD_TESTS=OFF \
    -DINCRELORA_INSTALL=OFF ${INCRELORA_CMAKE_ARGS:-} >"$2.log" 2>&1 &&
    cmake --build "$2" --target bench_step -j "$jobs" >>"$2.log" 2>&1 ||
    { echo "ab_step.sh: building $1 failed; the end of $2.log:" >&2; tail -30 "$2.log" >&2; return 1; }
}
mkdir -p "$builds"
t0=$(date +%s)
pids=()
for side in "${sides[@]}"; do
  build_one "${src[$side]}" "$builds/$side" & pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done  # every build ends before a failure is reported
[[ "$failed" -eq 0 ]] || exit 1
echo "ab_step.sh: built ${#sides[@]} trees (${sides[*]}) in $(( $(date +%s) - t0 )) s"

# Word splitting of $bench_args is intended below: it holds several arguments.
# shellcheck disable=SC2086
for model in $models; do
  for dtype in $dtypes; do
    for phase in $phases; do
      row="$model-$dtype-$phase"
      for (( r = 1; r <= rounds; r++ )); do
        for side in "${sides[@]}"; do
          "$builds/$side/benchmarks/bench_step" --model "$model" --dtype "$dtype" --device "$device" --phase "$phase" \
            --batch 32 --seq 128 --warmup "$warmup" --steps "$steps" $bench_args --out "$out/$side-$row-$r.json"
        done
      done
      if [[ "$profile" -eq 1 ]]; then
        for side in "${sides[@]}"; do
          "$builds/$side/benchmarks/bench_step" --model "$model" --dtype "$dtype" --device "$device" --phase "$phase" \
            --batch 32 --seq 128 --warmup "$warmup" --steps 20 $bench_args --profile "$out/profile-$side-$row.json" \
            --out "$out/profile-$side-$row.result.json" >/dev/null
        done
      fi
    done
  done
done

python3 - "$out" "${sides[@]}" <<'EOF' | tee "$out/ab.md"
import glob, json, os, statistics, sys
out, sides = sys.argv[1], sys.argv[2:]
rows = {}
for path in sorted(glob.glob(os.path.join(out, "*-*.json"))):
    name = os.path.basename(path)
    side, rest = name.split("-", 1)
    if side not in sides:
        continue
    row = rest.rsplit("-", 1)[0]
    with open(path) as f:
        result = json.load(f)
    rows.setdefault(row, {}).setdefault(side, []).append(result)
others = sides[1:]
header = ["model, dtype, phase", "base median step (ms)"]
for side in others:
    header += [f"{side} median step (ms)", f"{side} ÷ base"]
header += [f"{side} peak (MiB)" for side in sides] + ["each round's median, " + " / ".join(sides)]
print("| " + " | ".join(header) + " |")
print("|" + "---|" * len(header))
for row, runs_of in rows.items():
    def median(side):
        runs = runs_of.get(side, [])
        return statistics.median(r["median_ms"] for r in runs) if runs else float("nan")
    def peak(side):
        values = [r.get("peak_reserved_bytes") for r in runs_of.get(side, []) if r.get("peak_reserved_bytes")]
        return f"{max(values) / 2**20:.0f}" if values else "n/a"
    b = median("base")
    cells = [row, f"{b:.2f}"]
    for side in others:
        m = median(side)
        cells += [f"{m:.2f}", f"{m / b:.3f}" if b > 0 else "n/a"]
    cells += [peak(side) for side in sides]
    cells.append(" / ".join(", ".join(f"{r['median_ms']:.2f}" for r in runs_of.get(side, [])) for side in sides))
    print("| " + " | ".join(cells) + " |")
EOF
