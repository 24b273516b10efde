#!/usr/bin/env bash
# The summarize program's device check and speed on the GPU machine (benchmarks/RESULTS.md, issue 13): builds
# apps/summarize against the machine's LibTorch, makes random BARTs with scripts/make_tiny_bart.py (a tiny one and a
# bart-base-shaped one), runs the tiny one on CUDA and on the CPU and the base one in fp32, bf16 and bf16 with CUDA
# graphs; writes the logs and outputs under $OUT. Run from the repository root with the carried folder $D
# (default .device) holding include/nlohmann (header-only json), sentencepiece/{include,lib} and
# data/summarization/xsum_sample.jsonl, since nothing can be downloaded there.
set -uo pipefail
D=${INCRELORA_DEVICE_DIR:-$PWD/.device}
OUT=${OUT:-/tmp/summarize-gpu}
mkdir -p "$OUT"
P=$(python3 -c 'import torch;print(torch.utils.cmake_prefix_path)')
cmake -S . -B /tmp/bs -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH=$P -DINCRELORA_BUILD_TESTS=OFF \
  -DINCRELORA_INSTALL=OFF -DINCRELORA_JSON_INCLUDE_DIR=$D/include -DSentencePiece_ROOT=$D/sentencepiece > $OUT/cmake.log 2>&1 || { tail -30 $OUT/cmake.log; exit 1; }
cmake --build /tmp/bs -j16 --target summarize > $OUT/build.log 2>&1 || { grep -E "error" $OUT/build.log | head -20; exit 1; }
export LD_LIBRARY_PATH=$D/sentencepiece/lib:${LD_LIBRARY_PATH:-}
python3 scripts/make_tiny_bart.py --data_dir $D/data --out /tmp/tiny --init_std 0.3 > /dev/null 2>&1
python3 scripts/make_tiny_bart.py --data_dir $D/data --out /tmp/base --d_model 768 --layers 6 --heads 12 --ffn 3072 \
  --vocab_size 8000 > /dev/null 2>&1
S=/tmp/bs/apps/summarize
common="--dataset_name $D/data/summarization/xsum_sample.jsonl --validation_split_percentage 20 --seed 9 \
 --apply_lora --target_rank 2 --lora_r 1 --lora_alpha 32 --reg_orth_coef 0.1 --lora_module q_proj,k_proj,v_proj,out_proj,fc1,fc2 \
 --beta1 0.85 --beta2 0.85 --per_device_train_batch_size 8 --per_device_eval_batch_size 10 --num_warmup_steps 5 \
 --max_target_length 48 --val_max_target_length 32 --num_beams 4 --pad_to_max_length --logging_steps 10"
for dev in ${TINY_DEVICES:-cuda cpu}; do
  $S --model_name_or_path /tmp/tiny $common --device $dev --max_source_length 192 --schedule_strategy epoch --incre_epoch 6 \
     --init_warmup 5 --top_h 4 --learning_rate 1e-2 --num_train_epochs 12 --output_dir $OUT/tiny-$dev > $OUT/tiny-$dev.log 2>&1
  echo "tiny $dev rc=$?"; tail -2 $OUT/tiny-$dev.log
done
# bart-base shape: 6+6 layers, d_model 768 (random weights): the speed of a step and of beam search on the H200.
for prec in "" "--bf16" "--bf16 --cuda_graphs"; do
  $S --model_name_or_path /tmp/base $common --device cuda --max_source_length 512 --init_warmup 10 --incre_interval 10 \
     --top_h 12 --learning_rate 5e-4 --max_steps 100 --eval_steps 100 $prec --output_dir "$OUT/base${prec// /}" > "$OUT/base${prec// /}.log" 2>&1
  echo "base $prec rc=$?"; grep -E "train step|eval  step|done in|error|summarize:" "$OUT/base${prec// /}.log" | tail -6; python3 -c "import json,sys; m=json.load(open(sys.argv[1])); print({k: m.get(k) for k in ('train_seconds','total_steps','budget','total_rank')})" "$OUT/base${prec// /}/metrics.json"
done
nvidia-smi --query-gpu=name,memory.used --format=csv
