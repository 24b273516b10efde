#!/usr/bin/env python3
"""End-to-end training throughput of the GLUE program against PEFT LoRA (issue 14's end-to-end row).

One epoch of a task per configuration, each in its own process, with the paper protocol's flags (run.py's
paper_command: per-task lora_alpha, dropouts, weight decay; average rank 2; IncreLoRA's schedule scaled to the
epoch, so that allocation rounds fall inside it), one evaluation of the whole dev set at the end. Timed: the
process from start to exit (start-up, tokenisation, data loading, training, allocation, evaluation; what a user
waits for) and the program's own train_seconds (from its first step to the end, evaluation included).
samples/s = training examples of the epoch / seconds.

configurations (--configs):
  increlora              glue, eager, batches padded to their longest input (the grid's setting)
  increlora_graphs       glue --cuda_graphs True (forward + backward replayed; batches padded to 128)
  increlora_graphs_bf16  the same under --bf16 True (bfloat16 autocast)
  lora                   peft_glue.py --method lora, eager, dynamic padding
  lora_compiled          peft_glue.py --torch_compile reduce-overhead --pad_to_max_length (CUDA graphs through
                         torch.compile, one shape; its compile time counts, as it does for a user)
  lora_compiled_bf16     the same under --bf16 (bfloat16 autocast)
The CUDA-graph configurations need --device cuda and are skipped on a CPU.

Results go to OUT/throughput.json (merged: a configuration already measured for a task is skipped unless
--force, so one measurement can span several device commands) and a markdown table on stdout; every run's files
stay under OUT/<task>/<config>/.

  python3 benchmarks/glue_quality/throughput.py --device cuda --glue-bin /tmp/bb/apps/glue \\
      --model-dir .device/minilm-fp16 --data-dir .device/glue --tasks mrpc,sst2 --out $OUT/throughput
  python3 benchmarks/glue_quality/throughput.py --smoke --glue-bin build/apps/glue --out /tmp/tp   # CPU, CTest

--smoke: CPU, MRPC, 4 steps of batch 8, 32 dev examples, the eager configurations; prints
"glue_throughput smoke: ok" (CTest glue_throughput_smoke), exits 77 (skipped) without peft, the model or the data.
"""
import argparse
import json
import os
import platform
import subprocess
import sys
import time

import protocol as P
import run

SKIP = run.SKIP
BUDGET = 2
LR = 1e-3  # throughput does not depend on it; the grid's picks for MRPC lie at 5e-4 .. 4e-3
SEED = 1

# name -> (method, flags added to the protocol's command; None: a switch without value)
CONFIGS = {
    "increlora": ("increlora", {}),
    "increlora_graphs": ("increlora", {"cuda_graphs": "True"}),
    "increlora_graphs_bf16": ("increlora", {"cuda_graphs": "True", "bf16": "True"}),
    "lora": ("lora", {}),
    "lora_compiled": ("lora", {"pad_to_max_length": None, "torch_compile": "reduce-overhead"}),
    "lora_compiled_bf16": ("lora", {"pad_to_max_length": None, "torch_compile": "reduce-overhead", "bf16": None}),
}
CUDA_ONLY = {"increlora_graphs", "increlora_graphs_bf16", "lora_compiled", "lora_compiled_bf16"}
PEER = {"increlora": "lora", "increlora_graphs": "lora_compiled", "increlora_graphs_bf16": "lora_compiled_bf16"}


def drop_flag(argv, name):
    """argv without --name and its value (if it has one)."""
    flag, out = "--" + name, list(argv)
    if flag in out:
        i = out.index(flag)
        has_value = i + 1 < len(out) and not out[i + 1].startswith("--")
        del out[i:i + (2 if has_value else 1)]
    return out


def set_flag(argv, name, value):
    """argv with --name set to value (value None: a bare switch)."""
    return drop_flag(argv, name) + (["--" + name] if value is None else ["--" + name, str(value)])


def command(cfg, task, a, steps, info, out_dir):
    """The protocol's command for one epoch of task under configuration cfg (run.py builds it)."""
    method, extra = CONFIGS[cfg]
    ra = run.parse_args(["--device", a.device, "--glue-bin", a.glue_bin, "--model-dir", a.model_dir,
                         "--data-dir", a.data_dir, "--out", out_dir, "--tasks", task, "--python", a.python,
                         "--glue-save-steps", "0", "--steps", str(steps), "--batch-size", str(a.batch_size),
                         "--max-eval-samples", str(a.max_eval_samples), "--checkpoint-seconds", "0"])
    job = run.Job(ra, method, task, BUDGET, SEED, LR, "select")
    argv = run.paper_command(job, ra, info)
    argv = set_flag(argv, "root_output_dir", out_dir)
    argv = set_flag(argv, "eval_steps", steps)  # one evaluation, at the end
    argv = set_flag(argv, "logging_steps", max(1, steps // 10))
    argv = drop_flag(drop_flag(argv, "resume_file"), "checkpoint_seconds")  # one uninterrupted run
    for k, v in extra.items():
        argv = set_flag(argv, k, v)
    return argv


def measure(cfg, task, a, steps, n_examples, info):
    out_dir = os.path.join(a.out, task, cfg)
    os.makedirs(out_dir, exist_ok=True)
    argv = command(cfg, task, a, steps, info, out_dir)
    with open(os.path.join(out_dir, "command.txt"), "w") as f:
        f.write(" ".join(argv) + "\n")
    t0 = time.perf_counter()
    with open(os.path.join(out_dir, "stdout.log"), "w") as log:
        rc = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, cwd=run.ROOT).returncode
    wall = time.perf_counter() - t0
    if rc != 0:
        with open(os.path.join(out_dir, "stdout.log"), errors="replace") as f:
            tail = f.read()[-2000:]
        raise RuntimeError(f"{task}/{cfg} exited {rc}; {out_dir}/stdout.log ends:\n{tail}")
    with open(os.path.join(out_dir, "metrics.json")) as f:
        m = json.load(f)
    main = m["main_metric"]
    return {"task": task, "config": cfg, "steps": steps, "examples": n_examples, "wall_seconds": wall,
            "train_seconds": m["train_seconds"], "samples_per_second_wall": n_examples / wall,
            "samples_per_second_train": n_examples / m["train_seconds"], "final": m["final"].get(main),
            "main_metric": main, "total_rank": m.get("total_rank"), "device": a.device}


def table(results):
    lines = ["| task | configuration | steps | wall s | samples/s (wall) | train s | samples/s (train) | final | "
             "÷ peer (samples/s, wall) |", "|---|---|---|---|---|---|---|---|---|"]
    for task in sorted({r["task"] for r in results.values()}):
        rows = {r["config"]: r for r in results.values() if r["task"] == task}
        for cfg in CONFIGS:
            r = rows.get(cfg)
            if not r:
                continue
            peer = rows.get(PEER.get(cfg, ""))
            ratio = (f"{r['samples_per_second_wall'] / peer['samples_per_second_wall']:.2f} × {PEER[cfg]}"
                     if peer else "")
            final = "" if r["final"] is None else f"{100 * r['final']:.2f}"
            lines.append(f"| {task} | {cfg} | {r['steps']} | {r['wall_seconds']:.1f} | "
                         f"{r['samples_per_second_wall']:.0f} | {r['train_seconds']:.1f} | "
                         f"{r['samples_per_second_train']:.0f} | {final} | {ratio} |")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="mrpc,sst2")
    ap.add_argument("--configs", default=",".join(CONFIGS))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--glue-bin", default=os.path.join(run.ROOT, "build", "apps", "glue"))
    ap.add_argument("--model-dir", default=os.path.join(run.CACHE, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(run.ROOT), "shared", "data", "glue"))
    ap.add_argument("--python", default=sys.executable, help="interpreter for peft_glue.py")
    ap.add_argument("--out", default=os.path.join(run.ROOT, "out", "glue_throughput"))
    ap.add_argument("--force", action="store_true", help="measure configurations already in OUT/throughput.json")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run of the eager configurations (CI)")
    ap.add_argument("--steps", type=int, default=0, help=argparse.SUPPRESS)  # override one epoch (smoke)
    ap.add_argument("--batch-size", type=int, default=P.BATCH, help=argparse.SUPPRESS)
    ap.add_argument("--max-eval-samples", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.smoke:
        a.device, a.tasks, a.steps, a.batch_size, a.max_eval_samples = "cpu", "mrpc", 4, 8, 32
        a.configs = "increlora,lora"
    a.tasks, a.configs = run.parse_list(a.tasks), run.parse_list(a.configs)
    for c in a.configs:
        if c not in CONFIGS:
            ap.error(f"--configs: {c} is not one of {', '.join(CONFIGS)}")
    for t in a.tasks:
        if t not in P.TASK_DIRS:
            ap.error(f"--tasks: {t} is not one of {', '.join(P.TASK_DIRS)}")
    a.glue_bin, a.model_dir, a.data_dir, a.out = map(os.path.abspath, (a.glue_bin, a.model_dir, a.data_dir, a.out))
    return a


def main(argv=None):
    a = parse_args(argv)
    probe = argparse.Namespace(model_dir=a.model_dir, data_dir=a.data_dir, tasks=a.tasks, glue_bin=a.glue_bin,
                               python=a.python, dry_run=False,
                               methods=sorted({CONFIGS[c][0] for c in a.configs}))
    missing = run.preflight(probe, [])
    if missing:
        print(f"glue_throughput: {missing}", flush=True)
        return SKIP if a.smoke else 2
    info = run.task_info(probe)
    os.makedirs(a.out, exist_ok=True)
    path = os.path.join(a.out, "throughput.json")
    saved = run.load_json(path, {"results": {}})
    results = saved["results"]
    saved["host"] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for task in a.tasks:
        n = info["n_train"][task]
        steps = a.steps or P.steps_per_epoch(n, a.batch_size)
        examples = min(n, steps * a.batch_size)
        for cfg in a.configs:
            key = f"{task}/{cfg}"
            if cfg in CUDA_ONLY and not a.device.startswith("cuda"):
                print(f"glue_throughput: {key} skipped (CUDA graphs need --device cuda)", flush=True)
                continue
            if key in results and not a.force:
                print(f"glue_throughput: {key} already measured (--force to measure again)", flush=True)
                continue
            r = measure(cfg, task, a, steps, examples, info)
            results[key] = r
            run.write_json(path, saved)  # after every run: a command cut short keeps what it measured
            print(f"glue_throughput: {key}: {r['wall_seconds']:.1f} s wall, {r['samples_per_second_wall']:.0f} "
                  f"samples/s ({r['train_seconds']:.1f} s in training: {r['samples_per_second_train']:.0f})",
                  flush=True)
    print(table(results))
    if a.smoke:
        want = {f"mrpc/{c}" for c in a.configs}
        bad = [k for k in want if k not in results or not results[k]["samples_per_second_wall"] > 0]
        if bad:
            print(f"glue_throughput smoke: FAILED ({', '.join(bad)})")
            return 1
        print("glue_throughput smoke: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
