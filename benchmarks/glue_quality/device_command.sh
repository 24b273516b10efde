#!/usr/bin/env bash
# One device command of the paper-protocol grid (README.md beside this file, "The device workflow"): builds glue
# on a fresh machine, continues the grid from the carried results (or from /tmp/gq on a warm machine), and writes
# run.log, report.md, gq-paper.tgz and, when they fit, the resume parts to $OUT. Run from the repository root on
# the GPU machine, carrying .device/include, .device/minilm-fp16, .device/glue, .device/gq-paper.tgz and, when it
# fits, .device/gq-resume:
#   LIMIT=500 KILL=540 bash benchmarks/glue_quality/device_command.sh --tasks mrpc --budgets 2 --jobs 24
# LIMIT: seconds from the command's start after which no job starts; KILL: after which running jobs are stopped
# (both count the build). Every other argument goes to run.py.
set -uo pipefail
t0=$(date +%s)
export PYTHONUNBUFFERED=1
: "${OUT:?run on the device machine, where \$OUT is set}"
G=/tmp/gq
B=/tmp/bb/apps/glue
if [ -z "$("$B" --help 2>/dev/null | grep resume_from_checkpoint)" ]; then
  { cmake -S . -B /tmp/bb -G Ninja -DCMAKE_BUILD_TYPE=Release \
      -DCMAKE_PREFIX_PATH="$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')" \
      -DINCRELORA_BUILD_TESTS=OFF -DINCRELORA_INSTALL=OFF \
      -DINCRELORA_FMT_INCLUDE_DIR="$PWD/.device/include" -DINCRELORA_JSON_INCLUDE_DIR="$PWD/.device/include" &&
    cmake --build /tmp/bb --target glue -j16; } > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
  echo "built glue in $(( $(date +%s) - t0 )) s"
fi
mkdir -p $G
[ -d $G/gq-paper ] || tar xzf .device/gq-paper.tgz -C $G 2>/dev/null || mkdir -p $G/gq-paper
if [ ! -d $G/resume ]; then
  rm -rf $G/in && mkdir -p $G/in
  cat .device/gq-resume/gq-resume.tar.part-* 2>/dev/null | tar xf - -C $G/in 2>/dev/null && mv $G/in/resume $G/
  rm -rf $G/in && mkdir -p $G/resume
fi
# GPU utilisation and the load average every 10 s while the jobs run, summarised at the end of run.log: whether
# more concurrent jobs would help (GPU below 100 %) or the 16 cores are the limit (load above 16).
rm -f $G/util.csv
( while sleep 10; do
    echo "$(nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits 2>/dev/null | head -1),$(cut -d' ' -f1 /proc/loadavg)"
  done > $G/util.csv ) &
sampler=$!
python3 benchmarks/glue_quality/run.py --device cuda --glue-bin $B --model-dir .device/minilm-fp16 \
  --data-dir .device/glue --out $G/gq-paper --resume-dir $G/resume --clock-start "$t0" \
  --time-limit "${LIMIT:-500}" --kill-after "${KILL:-540}" "$@" 2>&1 | tee "$OUT/run.log"
kill $sampler 2>/dev/null
awk -F, '$1 != "" { g += $1; l += $2; n++ } END { if (n) printf "utilisation: GPU %.0f %% on average, load average %.1f (%d samples of 10 s)\n", g / n, l / n, n }' \
  $G/util.csv | tee -a "$OUT/run.log"
python3 benchmarks/glue_quality/report.py $G/gq-paper --data-dir .device/glue > "$OUT/report.md"
tar czf "$OUT/gq-paper.tgz" --exclude='checkpoint*' -C $G gq-paper
tar cf $G/r.tar -C $G resume
n=$(( ($(stat -c%s $G/r.tar) + 15728639) / 15728640 ))
if [ "$n" -le 4 ]; then split -b 15M -d $G/r.tar "$OUT/gq-resume.tar.part-"
else echo "resume: $n parts, not returned (kept in $G/resume while the machine is warm)"; fi
rm -f $G/r.tar
ls -l "$OUT"
