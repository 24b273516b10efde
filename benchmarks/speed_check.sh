#!/usr/bin/env bash
# What a speed change of the library needs on the GPU machine, in one device command (issue 14): the core test
# suite with its CUDA cases, bench_step A/B against a baseline tree (ab_step.sh), a per-kernel profile of both
# sides, and the compiled Python peers of the same shape for the ratios. Run from the repository root:
#
#   OUT=<folder> benchmarks/speed_check.sh BASE_SRC [--models "bert-base"] [--peers full_compiled,lora_compiled]
#                                           [--quick] [--no-suite] [--deadline SECONDS] [--variant NAME=SRC ...]
#
#   BASE_SRC  the baseline source tree (mkdir base && git archive <commit> | tar x -C base)
#   --variant one more tree in the same A/B rounds, with its own suite run (tests-NAME.log): a change kept off main
#             (git archive <branch> | tar x -C <dir>). Repeatable.
#   --quick   the suite and the A/B only (no profiles, no peers): about 5 minutes instead of 9 on an H200
#   --no-suite  skip building and running the suites (a second command after one that ran them)
#   --deadline  seconds from the start after which every phase is stopped and the results packed (default 560,
#             for a device command of 600 s)
# Writes to $OUT/speed-check.tgz (packed at the end, also when the command is stopped; the device machine returns only
# a few files): gpu.txt, tests.txt (the suites' summaries; tests.log, tests-NAME.log whole), ab/ (ab_step.sh's
# files, ab.md), profile.md, peers-<model>.json (peers.py), ratios-<model>.md, the build logs. The summaries also
# go to stdout.
# Environment: INCRELORA_FMT_INCLUDE_DIR / INCRELORA_JSON_INCLUDE_DIR (header folders where no package provides
# them, e.g. .device/include), SPEED_CHECK_BUILD (build folders' parent, default /tmp/speed-check).
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
: "${OUT:?set OUT to the folder for the results}"
[[ $# -ge 1 ]] || { sed -n '2,21p' "$0"; exit 2; }
base_src="$1"
shift
models="bert-base" peers="full_compiled,lora_compiled" quick=0 suite=1 deadline=560
variants=()  # NAME=SRC, as ab_step.sh takes them
while [[ $# -gt 0 ]]; do
  case "$1" in
    --variant) variants+=("$2"); shift ;;
    --models) models="$2"; shift ;;
    --peers) peers="$2"; shift ;;
    --quick) quick=1 ;;
    --no-suite) suite=0 ;;
    --deadline) deadline="$2"; shift ;;
    *) echo "speed_check.sh: unknown argument $1" >&2; exit 2 ;;
  esac
  shift
done
final_out="$OUT"
OUT="${SPEED_CHECK_BUILD:-/tmp/speed-check}/out"
rm -rf "$OUT"
mkdir -p "$OUT" "$final_out"
pack() { tar czf "$final_out/speed-check.tgz" -C "$OUT" . 2>/dev/null; }
trap pack EXIT
trap 'exit 143' TERM INT
cd "$root"
t0=$(date +%s)
left() { local l=$(( deadline - ($(date +%s) - t0) )); echo $(( l > 1 ? l : 1 )); }  # seconds until the deadline
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$OUT/gpu.txt"
prefix="$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)')"
headers=()
[[ -n "${INCRELORA_FMT_INCLUDE_DIR:-}" ]] && headers+=(-DINCRELORA_FMT_INCLUDE_DIR="$INCRELORA_FMT_INCLUDE_DIR")
[[ -n "${INCRELORA_JSON_INCLUDE_DIR:-}" ]] && headers+=(-DINCRELORA_JSON_INCLUDE_DIR="$INCRELORA_JSON_INCLUDE_DIR")
args=(-G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$prefix" -DINCRELORA_INSTALL=OFF "${headers[@]}")
b="${SPEED_CHECK_BUILD:-/tmp/speed-check}"
mkdir -p "$b/ab"
cores=$(nproc)
# The builds at once: the suite (without models and programs) of this checkout and of each variant, and bench_step
# of each side of the A/B.
suites=()   # build folders under $b, each with its suite
declare -A suite_src=()
if [[ "$suite" -eq 1 ]]; then suites+=(tests); suite_src[tests]="$root"; fi
sides=(base new)
declare -A side_src=([base]="$base_src" [new]="$root")
for v in "${variants[@]}"; do
  name="${v%%=*}"
  [[ -d "${v#*=}" ]] || { echo "speed_check.sh: --variant $v: no folder ${v#*=}" >&2; exit 2; }
  side_src[$name]="$(cd "${v#*=}" && pwd)"
  sides+=("$name")
  if [[ "$suite" -eq 1 ]]; then suites+=("tests-$name"); suite_src[tests-$name]="${side_src[$name]}"; fi
done
builds=$(( ${#suites[@]} + ${#sides[@]} ))
pids=()
for s in "${suites[@]+"${suites[@]}"}"; do
  (cmake -S "${suite_src[$s]}" -B "$b/$s" "${args[@]}" -DINCRELORA_BUILD_MODELS=OFF -DINCRELORA_BUILD_EXAMPLES=OFF &&
    cmake --build "$b/$s" --target increlora_tests -j $(( cores * 5 / (4 * builds) + 1 ))) > "$OUT/build-$s.log" 2>&1 &
  pids+=($!)
done
for side in "${sides[@]}"; do
  (cmake -S "${side_src[$side]}" -B "$b/ab/$side" "${args[@]}" -DINCRELORA_BUILD_TESTS=OFF &&
    cmake --build "$b/ab/$side" --target bench_step -j $(( cores * 5 / (4 * builds) + 1 ))) \
    > "$OUT/build-$side.log" 2>&1 &
  pids+=($!)
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
if [[ "$failed" -ne 0 ]]; then
  tail -n 25 "$OUT"/build-*.log
  exit 1
fi
echo "speed_check.sh: built in $(( $(date +%s) - t0 )) s"

tests_rc=0
for s in "${suites[@]+"${suites[@]}"}"; do
  timeout "$(left)" "$b/$s/tests/increlora_tests" > "$OUT/$s.log" 2>&1
  rc=$?
  [[ "$rc" -ne 0 ]] && tests_rc=$rc
  { echo "== $s (${suite_src[$s]}): exit $rc"; tail -n 4 "$OUT/$s.log"; } | tee -a "$OUT/tests.txt"
done
if [[ "$suite" -eq 1 ]]; then
  echo "speed_check.sh: the suites exited $tests_rc ($(( $(date +%s) - t0 )) s)"
else
  echo "speed_check.sh: no suite run (--no-suite)" | tee "$OUT/tests.txt"
fi

# ab_step.sh configures again with the same arguments (a no-op) and finds both sides built.
INCRELORA_AB_BUILD="$b/ab" INCRELORA_TORCH_PREFIX="$prefix" INCRELORA_CMAKE_ARGS="${headers[*]}" \
  timeout "$(left)" bash benchmarks/ab_step.sh "$base_src" "$OUT/ab" --models "$models" \
  --phases "after_budget scoring" --rounds 2 $([[ "$quick" -eq 1 ]] || echo --profile) \
  $(for v in "${variants[@]}"; do printf -- '--variant %s ' "$v"; done)
echo "speed_check.sh: A/B done ($(( $(date +%s) - t0 )) s)"
[[ "$quick" -eq 1 ]] && exit "$tests_rc"
python3 benchmarks/profile_report.py "$OUT"/ab/profile-*-after_budget.json --top 0 2>&1 | tee "$OUT/profile.md"

# The new side's last round beside the peers, in one results file: report.py's table gives the ratios.
for model in $models; do
  timeout "$(left)" python3 benchmarks/peers.py --model "$model" --dtype bf16 --device cuda --batch 32 --seq 128 \
    --warmup 10 --steps 60 --peers "$peers" --out "$OUT/peers-$model.json" > "$OUT/peers-$model.log" 2>&1
  python3 benchmarks/report.py merge --out "$OUT/ratios-$model.json" "$OUT/peers-$model.json" \
    "$OUT"/ab/new-"$model"-bf16-*-2.json
  python3 benchmarks/report.py table "$OUT/ratios-$model.json" --markdown | tee "$OUT/ratios-$model.md"
done
echo "speed_check.sh: done in $(( $(date +%s) - t0 )) s"
exit "$tests_rc"
