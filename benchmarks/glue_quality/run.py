#!/usr/bin/env python3
"""Runs the GLUE quality grid: increlora (examples/glue.cpp, the `glue` program) against PEFT LoRA and PEFT
AdaLoRA (peft_glue.py, same training protocol) on all-MiniLM-L6-v2, at the same average-rank budgets.

Grid (each option narrows it): method x task x budget x seed x learning rate, by default
    methods increlora, lora, adalora | tasks sst2, cola, mrpc | budgets 2, 8 | seeds 42, 43, 44 | lr 5e-4, 1e-3
= 108 jobs. One job = one fine-tuning run, evaluated once at the end on the whole dev set; it writes
OUT/<method>/<task>/r<budget>/lr<lr>/seed<seed>/metrics.json (glue.cpp's shape). A job whose metrics.json is
already there is skipped, so the grid resumes across commands (a device command is limited to 10 minutes:
--time-limit stops starting jobs, --kill-after ends the run in time to pack the results, and a job whose kind
already took longer than the time left is not started; run again until it says "grid complete").

Shared protocol (both programs): max_seq_length 128, batch 32 (dynamic padding), eval batch 64, AdamW with no
decay on biases/LayerNorm (--weight-decay, default 0 as glue.cpp and the HF Trainer), linear warmup over 6 % of
the steps then linear decay to 0, gradient clipping at 1.0, lora_alpha 16, lora_dropout 0.1, the six module
types of every encoder layer (36 layers for MiniLM), pooler + classifier trained in full. Steps per task are
fixed (STEPS below) rather than epochs, to keep the grid affordable.

Per method, at budget b (average final rank per adapted layer), T steps, L adapted layers:
  increlora  lora_r 1 growing to b: init_warmup = 10 % of T, incre_interval = 5 % of T, so the allocation rounds
             fall at 15 %, 20 %, ... of T; top_h is the fewest layers per round that meets the budget
             ((b - 1) L more rank, incre_rank_num = max(1, b / 2) each) within the rounds up to 60 % of T;
             reg_orth_coef 0.1, beta1 = beta2 = 0.85 (glue.cpp's defaults).
  lora       r = b, fixed.
  adalora    init_r = round(1.5 b) pruned to target_r = b: tinit = 10 % of T, tfinal = 40 % of T (the budget is
             reached at 60 % of T, as increlora's last round), deltaT 10 (less for runs too short to mask
             10 times), orth_reg_weight 0.1, beta1 = beta2 = 0.85, total_step = T.

    python3 benchmarks/glue_quality/run.py --device cuda --jobs 14 --glue-bin build/examples/glue \
        --model-dir .device/minilm-fp16 --data-dir .device/glue --out out/glue_quality
    python3 benchmarks/glue_quality/report.py out/glue_quality

(README.md beside this file: the device workflow, the choices and what was verified.)

--smoke: CPU, CoLA, budget 2, one seed, one lr, 8 steps of batch 8, 32 dev examples, every method; reruns its
jobs, then runs report.py over them; prints "glue_quality smoke: ok" (CTest glue_quality_smoke). Exits 77 (the
test's SKIP_RETURN_CODE) when --python cannot import torch, transformers and peft, or the model or data is
missing.
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.environ.get("INCRELORA_CACHE", os.path.expanduser("~/.cache/increlora"))

METHODS = ["increlora", "lora", "adalora"]
TASK_DIRS = {"sst2": "SST-2", "cola": "CoLA", "mrpc": "MRPC"}
# Fixed step counts (batch 32): about 0.5 epoch of SST-2, 3 of CoLA, 4.4 of MRPC.
STEPS = {"sst2": 800, "cola": 600, "mrpc": 400}
SKIP = 77  # CTest's SKIP_RETURN_CODE for the smoke test


def fmt_lr(lr):
    return f"{lr:g}"


def increlora_schedule(steps, budget, layers):
    """init_warmup, incre_interval, top_h and incre_rank_num for glue.cpp, from the step count (see the docstring).
    Allocations happen at multiples of incre_interval strictly after init_warmup (glue.cpp's RankAllocator)."""
    warmup = round(0.1 * steps)
    interval = max(1, round(0.05 * steps))
    last_allowed = int(0.6 * steps)
    rounds = max(1, last_allowed // interval - warmup // interval)
    per_layer = max(1, budget // 2)  # glue.cpp's default incre_rank_num for this budget
    needed = (budget - 1) * layers
    top_h = min(layers, max(1, math.ceil(needed / (rounds * per_layer))))
    return dict(init_warmup=warmup, incre_interval=interval, top_h=top_h, incre_rank_num=per_layer)


def adalora_schedule(steps):
    tinit, tfinal = round(0.1 * steps), round(0.4 * steps)
    # deltaT 10 (masking every 10 steps of the budgeting phase) for the grid's step counts; short checks (the
    # smoke run's 8 steps) need a shorter one to mask at all, so at least 10 masks fit the budgeting phase.
    return dict(tinit=tinit, tfinal=tfinal, deltaT=max(1, min(10, (steps - tfinal - tinit) // 10)))


class Job:
    def __init__(self, method, task, budget, seed, lr, out):
        self.method, self.task, self.budget, self.seed, self.lr = method, task, budget, seed, lr
        self.dir = os.path.join(out, method, task, f"r{budget}", f"lr{fmt_lr(lr)}", f"seed{seed}")
        self.proc = None
        self.started = 0.0

    def name(self):
        return f"{self.method}/{self.task}/r{self.budget}/lr{fmt_lr(self.lr)}/seed{self.seed}"

    def done(self):
        """Complete when metrics.json parses and holds the final evaluation (glue writes it non-atomically)."""
        try:
            with open(os.path.join(self.dir, "metrics.json")) as f:
                return "final" in json.load(f)
        except (OSError, ValueError):
            return False


def job_command(job, a, layers):
    steps = a.steps_override or STEPS[job.task]
    common = dict(task_name=job.task, data_dir=os.path.join(a.data_dir, TASK_DIRS[job.task]), model_dir=a.model_dir,
                  target_rank=job.budget, lora_alpha=16, lora_dropout=0.1, max_seq_length=a.max_seq_length,
                  per_device_train_batch_size=a.batch_size, per_device_eval_batch_size=64,
                  learning_rate=job.lr, max_steps=steps, warmup_steps=round(0.06 * steps),
                  weight_decay=a.weight_decay, max_grad_norm=1.0, eval_steps=steps,
                  logging_steps=max(1, steps // 10), seed=job.seed, root_output_dir=job.dir, device=a.device)
    if a.max_eval_samples > 0:
        common["max_eval_samples"] = a.max_eval_samples
    if job.method == "increlora":
        flags = dict(common, lora_r=1, reg_orth_coef=0.1, beta1=0.85, beta2=0.85,
                     **increlora_schedule(steps, job.budget, layers))
        cmd = [a.glue_bin]
    else:
        flags = dict(common, method=job.method, threads=a.threads)
        if job.method == "adalora":
            flags.update(init_r=int(math.floor(1.5 * job.budget + 0.5)), orth_reg_weight=0.1, beta1=0.85,
                         beta2=0.85, **adalora_schedule(steps))
        cmd = [a.python, os.path.join(HERE, "peft_glue.py")]
    for k, v in flags.items():
        cmd += [f"--{k}", fmt_lr(v) if isinstance(v, float) else str(v)]
    return cmd


def parse_list(text, kind=str):
    return [kind(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="GLUE quality grid: increlora vs PEFT LoRA / AdaLoRA",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--tasks", default="sst2,cola,mrpc")
    ap.add_argument("--budgets", default="2,8", help="average rank per adapted layer")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--lrs", default="5e-4,1e-3")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (passed to every job)")
    ap.add_argument("--jobs", type=int, default=1, help="concurrent processes")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads per job; 0: 1 on CUDA, cores / jobs on CPU")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "glue_quality"))
    ap.add_argument("--glue-bin", default=os.path.join(ROOT, "build", "examples", "glue"))
    ap.add_argument("--model-dir", default=os.path.join(CACHE, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "glue"),
                    help="folder holding SST-2/, CoLA/, MRPC/ (train.tsv, dev.tsv)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for peft_glue.py")
    ap.add_argument("--time-limit", type=float, default=0, help="seconds after which no new job starts (0: none)")
    ap.add_argument("--kill-after", type=float, default=0,
                    help="seconds after which running jobs are killed (they rerun next time) and run.py ends; "
                         "also keeps jobs from starting that would not end by then (0: none)")
    ap.add_argument("--clock-start", type=float, default=0,
                    help="Unix time the two limits count from (default: run.py's start); pass the device "
                         "command's start, $(date +%%s) taken before building, so the limits hold for the command")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--keep-adapters", action="store_true",
                    help="keep glue's adapter/ folder (2-6 MB a job; deleted by default to keep results small)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run of every method, then report.py (CI)")
    # For quick checks only (the grid's protocol is the default): change the step count of every task, the
    # batch size, the sequence length or the dev subset.
    ap.add_argument("--steps", dest="steps_override", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--max-seq-length", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--max-eval-samples", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.smoke:
        a.device = "cpu"
        a.tasks = "cola"
        a.budgets = "2"
        a.seeds = "42"
        a.lrs = "1e-3"
        a.steps_override = 8
        a.batch_size = 8
        a.max_eval_samples = 32
        a.jobs = max(a.jobs, min(3, os.cpu_count() or 1))
    a.methods, a.tasks = parse_list(a.methods), parse_list(a.tasks)
    a.budgets, a.seeds, a.lrs = parse_list(a.budgets, int), parse_list(a.seeds, int), parse_list(a.lrs, float)
    for m in a.methods:
        if m not in METHODS:
            ap.error(f"--methods: {m} is not one of {', '.join(METHODS)}")
    for t in a.tasks:
        if t not in TASK_DIRS:
            ap.error(f"--tasks: {t} is not one of {', '.join(TASK_DIRS)}")
    if a.threads <= 0:
        a.threads = 1 if a.device.startswith("cuda") else max(1, (os.cpu_count() or 1) // max(1, a.jobs))
    a.model_dir, a.data_dir, a.out = map(os.path.abspath, (a.model_dir, a.data_dir, a.out))
    return a


def preflight(a):
    """What the jobs need; returns a reason to skip (smoke) or fail, or None."""
    if not os.path.isfile(os.path.join(a.model_dir, "model.safetensors")):
        return f"no checkpoint at {a.model_dir} (scripts/setup.sh, or pack_model.py for the fp16 copy)"
    for t in a.tasks:
        if not os.path.isfile(os.path.join(a.data_dir, TASK_DIRS[t], "train.tsv")):
            return f"no {TASK_DIRS[t]}/train.tsv under {a.data_dir} (--data-dir)"
    if "increlora" in a.methods and not os.access(a.glue_bin, os.X_OK):
        return f"no glue program at {a.glue_bin} (--glue-bin; build the target glue)"
    if any(m != "increlora" for m in a.methods):
        probe = subprocess.run([a.python, "-c", "import torch, transformers, peft"], capture_output=True, text=True)
        if probe.returncode != 0:
            return f"{a.python} cannot import torch, transformers and peft: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def main(argv=None):
    a = parse_args(argv)
    problem = preflight(a)
    if problem:
        print(f"run.py: {problem}", file=sys.stderr)
        return SKIP if a.smoke else 2
    with open(os.path.join(a.model_dir, "config.json")) as f:
        layers = 6 * json.load(f)["num_hidden_layers"]  # the six module types of every encoder layer

    # Seed-major, so that a partial grid already holds every cell at one seed; longest tasks first within a
    # wave, so that the short ones fill the gaps at its end.
    jobs = [Job(m, t, b, s, lr, a.out)
            for s in a.seeds for lr in a.lrs
            for t in sorted(a.tasks, key=lambda t: -STEPS[t]) for b in a.budgets for m in a.methods]
    if a.smoke:  # the smoke test must run, not find an earlier run's results
        for j in jobs:
            shutil.rmtree(j.dir, ignore_errors=True)
    pending = [j for j in jobs if not j.done()]
    print(f"run.py: {len(jobs)} jobs, {len(jobs) - len(pending)} already done, {len(pending)} to run, "
          f"{a.jobs} at a time on {a.device} ({a.threads} thread(s) each); results in {a.out}", flush=True)

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    t0 = a.clock_start or time.time()
    took_by_kind = {}  # (method, task, budget) -> longest duration seen in this run, under this run's sharing

    def elapsed():
        return time.time() - t0

    def fits(job):
        """Whether a job may start now: before --time-limit and, once a job of its kind has finished, early
        enough to end before --kill-after (a killed job is lost work)."""
        if a.time_limit and elapsed() > a.time_limit:
            return False
        est = took_by_kind.get((job.method, job.task, job.budget))
        return not (a.kill_after and est and elapsed() + 1.1 * est > a.kill_after)

    running, failed, killed, finished = [], [], [], 0
    while pending or running:
        for job in [j for j in pending if fits(j)]:
            if len(running) >= a.jobs:
                break
            pending.remove(job)
            os.makedirs(job.dir, exist_ok=True)
            cmd = job_command(job, a, layers)
            with open(os.path.join(job.dir, "command.txt"), "w") as f:
                f.write(" ".join(cmd) + "\n")
            with open(os.path.join(job.dir, "stdout.log"), "w") as log:
                job.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            job.started = time.time()
            running.append(job)
        if not running and not any(fits(j) for j in pending):
            break
        if a.kill_after and elapsed() > a.kill_after:
            # End before the device command's limit, so that the command can still pack the results; the
            # killed jobs wrote no metrics.json and run again next time.
            for job in running:
                job.proc.terminate()
            for job in running:
                try:
                    job.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    job.proc.kill()
                    job.proc.wait()
                print(f"[{elapsed():6.0f} s] killed {job.name()} at --kill-after", flush=True)
            killed, running = running, []
            break
        time.sleep(0.2)
        for job in [j for j in running if j.proc.poll() is not None]:
            running.remove(job)
            took = time.time() - job.started
            if job.proc.returncode == 0 and job.done():
                finished += 1
                kind = (job.method, job.task, job.budget)
                took_by_kind[kind] = max(took, took_by_kind.get(kind, 0.0))
                if not a.keep_adapters:
                    shutil.rmtree(os.path.join(job.dir, "adapter"), ignore_errors=True)
                with open(os.path.join(job.dir, "metrics.json")) as f:
                    m = json.load(f)
                print(f"[{elapsed():6.0f} s] done {job.name()} in {took:.0f} s: "
                      f"{m['main_metric']} {m['final'][m['main_metric']]:.4f}", flush=True)
            else:
                failed.append(job)
                with open(os.path.join(job.dir, "stdout.log")) as f:
                    tail = f.read()[-1500:]
                print(f"[{elapsed():6.0f} s] FAILED {job.name()} (exit {job.proc.returncode}) after "
                      f"{took:.0f} s; {job.dir}/stdout.log ends:\n{tail}", flush=True)
    left = len(pending) + len(killed)
    print(f"run.py: {finished} finished, {len(failed)} failed, {len(killed)} killed, {len(pending)} not started "
          f"at {elapsed():.0f} s" + ("; grid complete" if not left and not failed else "; run again to resume"),
          flush=True)
    if failed:
        return 1
    if a.smoke:
        rc = subprocess.call([sys.executable, os.path.join(HERE, "report.py"), a.out, "--require-all"], cwd=ROOT)
        if rc != 0:
            return rc
        for f in ("report.md", "report.svg", "report.json"):
            if not os.path.isfile(os.path.join(a.out, f)):
                print(f"run.py: report.py wrote no {f}", file=sys.stderr)
                return 1
        print(f"glue_quality smoke: ok ({elapsed():.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
