#!/usr/bin/env bash
# Issue 16 on one GPU: glue under torchrun at world size 1 (NCCL) against the single process, eager and with
# --cuda_graphs; two single-process runs are the control for GPU nondeterminism. Run on the GPU machine from the
# repository root with $OUT set and, in $INCRELORA_DEVICE_DIR (default .device), src.tgz (git archive of the
# sources), include/nlohmann, minilm-fp16 (benchmarks/glue_quality/pack_model.py) and glue/MRPC.
D=${INCRELORA_DEVICE_DIR:-$PWD/.device}
mkdir -p /tmp/src && tar xzf $D/src.tgz -C /tmp/src && cd /tmp/src
cmake -S . -B /tmp/bb -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)') -DINCRELORA_BUILD_TESTS=OFF -DINCRELORA_INSTALL=OFF -DINCRELORA_JSON_INCLUDE_DIR=$D/include > $OUT/cmake.log 2>&1
grep -i "nccl" $OUT/cmake.log
cmake --build /tmp/bb --target glue -j18 > $OUT/build.log 2>&1 || { tail -40 $OUT/build.log; exit 1; }
G=/tmp/bb/apps/glue
C="--task_name mrpc --data_dir $D/glue/MRPC --model_dir $D/minilm-fp16 --device cuda --max_steps 300 --per_device_train_batch_size 32 --max_seq_length 128 --eval_steps 100 --logging_steps 10 --lora_r 1 --target_rank 2 --init_warmup 30 --incre_interval 20 --top_h 12 --learning_rate 1e-3 --warmup_steps 20 --seed 3"
for v in "" "--cuda_graphs"; do
  tag=$( [ -z "$v" ] && echo eager || echo graphs )
  (time $G $C $v --root_output_dir /tmp/r/$tag-single-a) > $OUT/$tag-single-a.log 2>&1
  [ -z "$v" ] && (time $G $C $v --root_output_dir /tmp/r/$tag-single-b) > $OUT/$tag-single-b.log 2>&1
  (time python3 -m torch.distributed.run --no-python --nproc_per_node 1 --master_port 29561 $G $C $v --root_output_dir /tmp/r/$tag-torchrun1) > $OUT/$tag-torchrun1.log 2>&1
done
python3 - <<'PY' | tee $OUT/compare.txt
import json, os, torch
from safetensors.torch import load_file
def losses(d):
    out = {}
    for line in open(os.path.join(d, "log.jsonl")):
        j = json.loads(line)
        if j.get("event") == "train": out[j["step"]] = j["loss"]
    return out
for tag in ["eager", "graphs"]:
    base = f"/tmp/r/{tag}-single-a"
    for other in [f"/tmp/r/{tag}-single-b", f"/tmp/r/{tag}-torchrun1"]:
        if not os.path.exists(os.path.join(other, "metrics.json")):
            print(tag, other, "NO metrics.json"); continue
        ma, mb = (json.load(open(os.path.join(d, "metrics.json"))) for d in (base, other))
        la, lb = losses(base), losses(other)
        ta = load_file(os.path.join(base, "adapter/adapter.safetensors")); tb = load_file(os.path.join(other, "adapter/adapter.safetensors"))
        diff = max((ta[k].double() - tb[k].double()).abs().max().item() for k in ta)
        ra, rb = (json.load(open(os.path.join(d, "rank_pattern.json"))) for d in (base, other))
        print(f"{tag}: {os.path.basename(other)} vs single-a: final f1 {ma['final'].get('eval_f1')} vs {mb['final'].get('eval_f1')}, "
              f"losses equal {la == lb} (max diff {max(abs(la[s]-lb[s]) for s in la):.3g}), adapter max diff {diff:.3g}, "
              f"rank pattern equal {ra == rb}, train_seconds {ma['train_seconds']:.2f} vs {mb['train_seconds']:.2f}")
PY
grep -h "real\|Error\|error" $OUT/*-torchrun1.log | head
tail -5 $OUT/eager-torchrun1.log
