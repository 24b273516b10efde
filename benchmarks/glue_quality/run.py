#!/usr/bin/env python3
"""Runs the GLUE quality comparison: increlora (apps/glue, the `glue` program) against PEFT LoRA and PEFT
AdaLoRA (peft_glue.py, the same training protocol) on all-MiniLM-L6-v2 (36 adapted layers), at the same
average-rank budgets. Resumable: every invocation derives what is left from the results on disk, runs it, and
says "grid complete" when nothing is left (run it again until then; README.md beside this file: the device
workflow, the choices and where the per-task settings come from).

--protocol paper (default): the comparison at the paper's length, the same for every method.
  tasks MRPC (30 epochs), CoLA (25), SST-2 (3: 67k examples) | budgets 2 then 8 | batch 32, max length 128,
  warmup 100 steps then linear decay to 0, AdamW, clipping 1.0 | per task lora_alpha, lora_dropout, cls_dropout
  and weight_decay of the original IncreLoRA GLUE scripts (protocol.PAPER_TASK) | evaluated every epoch or every
  ~10 % of the steps (whichever is more often), so that both the final and the best-over-evaluations metric exist.
  methods:
    increlora  lora_r 1 -> b; allocations every ~100 steps from step 100 on, top_h the fewest layers per round that
               adds the (b - 1) x 36 rank (incre_rank_num max(1, b/2)) by ~37.5 % of the steps (the interval is
               stretched so that the last round lands there); advance learning and restart warmup on
               (--advance_learn True --multi_lr True); reg_orth_coef 0.1, beta1 = beta2 = 0.85.
    lora       r = b.
    adalora    init_r round(1.5 b) -> target_r b; tinit 10 % of T, budget reached at 50 % (tfinal = T - 0.5 T),
               deltaT 10, orth_reg_weight 0.1, beta1 = beta2 = 0.85.
    head       control: glue --apply_lora False (no adapters: pooler + classifier train), folder r0.
  phases (each a function of what is on disk):
    select     seeds 1, 2, 3 at every lr of the grid (default 2.5e-4 .. 4e-3, factors of 2). The pick of a
               (method, task, budget) is the lr with the best mean FINAL dev metric; a pick at an edge of the grid
               adds the lr a factor 2 beyond it (at most --max-extensions times each way), which runs next.
    final      seeds 4..8 at the pick, once the select runs of that cell are settled.
    ablations  IncreLoRA at its pick, seeds 1..3: no-advance-learn, no-multi-lr, exact-scoring, fixed-rank
               (lora_r = target_rank = b), random-alloc (same schedule, layers chosen at random).
  Order: budget 2 before 8; MRPC, then CoLA, then SST-2 within a budget; select, final, ablations within a task.
  Every job is resumable. PEFT jobs (peft_glue.py --resume_file): stopped at --kill-after they write a checkpoint
  under --resume-dir and continue from it next time. glue jobs get --save_steps (--glue-save-steps, 250): glue
  writes a complete checkpoint to <job dir>/checkpoint every that many steps; at --kill-after they are killed, and
  once a glue process has ended run.py moves its checkpoint to <resume-dir>/<job>/checkpoint (with key.json, the
  flags it belongs to), so that the results folder never holds one; the next invocation passes
  --resume_from_checkpoint <resume-dir>/<job>/checkpoint (only when key.json matches the job's flags). A glue job
  only starts when, by the speed of its kind measured earlier (OUT/timing.json), it reaches its first checkpoint
  (or its end) before --kill-after; what it trained since its last checkpoint is lost when it is killed.

--protocol short: the issue-5 grid kept reproducible (benchmarks/results/glue-quality-2026-11-29): methods
  increlora, lora, adalora | tasks sst2, cola, mrpc | budgets 2, 8 | seeds 42, 43, 44 | lr 5e-4, 1e-3; fixed step
  counts (SST-2 800, CoLA 600, MRPC 400), warmup 6 %, one evaluation at the end, lora_alpha 16, lora_dropout 0.1,
  increlora rounds from 10 % of T every 5 % within 60 %, advance learning and restart warmup off (glue's defaults
  then), AdaLoRA tinit 10 % / tfinal 40 %.

Every job writes OUT/<method>/<task>/r<budget>/lr<lr>/seed<seed>/ (metrics.json in glue.cpp's shape, log.jsonl,
args.json, rank_pattern.json, command.txt, job.json, run.json with the wall time, stdout.log trimmed to its end);
adapters, glue's rank heatmap and glue's checkpoints are deleted (or moved to --resume-dir) so that OUT stays small
enough to commit.

--smoke: CPU, CoLA, budget 2, 8 steps of batch 8, 32 dev examples: the paper protocol in miniature (one lr, select
seed 1, final seed 2, every method, one ablation), then report.py; prints "glue_quality smoke: ok" (CTest
glue_quality_smoke). Exits 77 (the test's SKIP_RETURN_CODE) when --python cannot import torch, transformers and
peft, or the model or data is missing. --dry-run prints the state of every cell and the commands it would run.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import glue_data
import protocol as P

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CACHE = os.environ.get("INCRELORA_CACHE", os.path.expanduser("~/.cache/increlora"))

METHODS = P.PAPER_METHODS
TASK_DIRS = P.TASK_DIRS
STEPS = P.SHORT_STEPS  # the short protocol's step counts
TASK_ORDER = ["mrpc", "cola", "sst2"]  # paper protocol: the short tasks first, so a partial grid is useful
PHASES = ["select", "final", "ablations"]
# Training examples as glue.cpp reads them (used by --dry-run when the data is not at hand).
N_TRAIN = {"sst2": 67349, "cola": 8551, "mrpc": 3668}
SKIP = 77  # CTest's SKIP_RETURN_CODE for the smoke test
SUSPENDED = 75  # peft_glue.py's exit status after writing its resume checkpoint
SHARING = 0.2  # rough slowdown per extra concurrent job, to scale measured speeds (1 + SHARING (n - 1))


fmt_lr = P.fmt_lr


def increlora_schedule(steps, budget, layers):
    """The short protocol's schedule: init_warmup 10 % of T, incre_interval 5 % of T, top_h the fewest layers per
    round that meets the budget within the rounds up to 60 % of T (glue allocates at multiples of incre_interval
    strictly after init_warmup)."""
    import math
    warmup = round(0.1 * steps)
    interval = max(1, round(0.05 * steps))
    last_allowed = int(0.6 * steps)
    rounds = max(1, last_allowed // interval - warmup // interval)
    per_layer = max(1, budget // 2)  # glue.cpp's default incre_rank_num for this budget
    needed = (budget - 1) * layers
    top_h = min(layers, max(1, math.ceil(needed / (rounds * per_layer))))
    return dict(init_warmup=warmup, incre_interval=interval, top_h=top_h, incre_rank_num=per_layer)


def adalora_schedule(steps):
    """The short protocol's AdaLoRA schedule."""
    tinit, tfinal = round(0.1 * steps), round(0.4 * steps)
    return dict(tinit=tinit, tfinal=tfinal, deltaT=max(1, min(10, (steps - tfinal - tinit) // 10)))


class Job:
    def __init__(self, a, method, task, budget, seed, lr, phase="grid", base=None, variant=None):
        self.method, self.task, self.budget, self.seed, self.lr = method, task, budget, seed, lr
        self.phase, self.base, self.variant = phase, base or method, variant
        self.dir = P.job_dir(a.out, method, task, budget, lr, seed)
        self.rel = os.path.relpath(self.dir, a.out)
        self.peft = self.base in ("lora", "adalora")
        paper = a.protocol == "paper"
        self.resumable = paper and self.peft  # peft_glue.py --resume_file (checkpoints at SIGTERM)
        self.resume_file = os.path.join(a.resume_dir, self.rel, "state.pt") if self.resumable else ""
        # glue --save_steps / --resume_from_checkpoint: glue writes <job dir>/checkpoint, run.py keeps the last one
        # of an ended process in <resume-dir>/<job>/checkpoint (the results folder never holds one between jobs).
        self.save_steps = a.glue_save_steps if paper and not self.peft else 0
        self.resume_root = os.path.join(a.resume_dir, self.rel)
        self.glue_ckpt = os.path.join(self.resume_root, "checkpoint") if self.save_steps else ""
        self.proc = None
        self.started = 0.0
        self.resumed = False
        self.log_offset = 0

    def name(self):
        return self.rel.replace(os.sep, "/")

    def kind(self):
        return f"{self.method}/{self.task}"

    def done(self):
        """Complete when metrics.json parses and holds the final evaluation (glue writes it non-atomically)."""
        return P.read_metrics(self.dir) is not None

    def in_progress(self):
        if self.glue_ckpt:
            return settle_checkpoint(self) is not None
        return bool(self.resume_file) and os.path.isfile(self.resume_file)


# ---- glue checkpoints -----------------------------------------------------------------------------------------

# Flags that do not change a glue run's result: a checkpoint stays valid when only these differ (paths differ
# between machines; the save interval only says when checkpoints are written).
KEY_SKIP = {"data_dir", "model_dir", "root_output_dir", "save_steps", "resume_from_checkpoint"}


def run_key(argv):
    """The flags that define a run, from its argv (the program's path left out)."""
    key, i = {}, 1
    while i < len(argv):
        if argv[i].startswith("--"):
            name = argv[i][2:]
            value = argv[i + 1] if i + 1 < len(argv) and not argv[i + 1].startswith("--") else ""
            if name not in KEY_SKIP:
                key[name] = value
            i += 2 if value else 1
        else:
            i += 1
    return key


def rmtree(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.remove(path)


def settle_checkpoint(job):
    """<resume-dir>/<job>/checkpoint when there is one (finishing a move that was cut short), else None."""
    dst = job.glue_ckpt
    if not dst:
        return None
    if not os.path.isdir(dst):
        for spare in (dst + ".new", dst + ".old"):  # both complete: .new is the newer
            if os.path.isdir(spare):
                os.rename(spare, dst)
                break
    for spare in (dst + ".new", dst + ".old"):
        rmtree(spare)
    return dst if os.path.isdir(dst) else None


def adopt_checkpoint(job):
    """Once the job's glue process has ended: move its last complete checkpoint, <job dir>/checkpoint, to
    <resume-dir>/<job>/checkpoint with key.json (the flags of command.txt, the attempt that wrote it), replacing
    the one it resumed from, and delete glue's partial ones (checkpoint*) from the job dir. True if one moved."""
    src = os.path.join(job.dir, "checkpoint")
    moved = False
    if job.glue_ckpt and os.path.isdir(src):
        try:
            with open(os.path.join(job.dir, "command.txt")) as f:
                argv = f.readline().split()
        except OSError:
            argv = []
        os.makedirs(job.resume_root, exist_ok=True)
        dst = job.glue_ckpt
        settle_checkpoint(job)
        write_json(os.path.join(job.resume_root, "key.json"), run_key(argv))
        shutil.move(src, dst + ".new")
        if os.path.isdir(dst):
            os.rename(dst, dst + ".old")
        os.rename(dst + ".new", dst)
        rmtree(dst + ".old")
        moved = True
    try:
        names = os.listdir(job.dir)
    except OSError:
        names = []
    for name in names:
        if name.startswith("checkpoint"):
            rmtree(os.path.join(job.dir, name))
    return moved


def drop_checkpoint(job):
    """Forget a glue job's checkpoints (the job is complete, or its checkpoint is unusable)."""
    if job.glue_ckpt:
        rmtree(job.resume_root)
    for name in (os.listdir(job.dir) if os.path.isdir(job.dir) else []):
        if name.startswith("checkpoint"):
            rmtree(os.path.join(job.dir, name))


def resume_flags(job, argv, dry_run=False):
    """["--resume_from_checkpoint", DIR] when the job has a checkpoint written by the same flags, else [] (one
    written by other flags is deleted, and the job starts over)."""
    ck = settle_checkpoint(job) if not dry_run else (job.glue_ckpt if os.path.isdir(job.glue_ckpt) else None)
    if not ck:
        return []
    if load_json(os.path.join(job.resume_root, "key.json"), None) != run_key(argv):
        print(f"run.py: {job.name()}: its checkpoint was written with other flags; "
              f"{'it would start over' if dry_run else 'starting over'}", flush=True)
        if not dry_run:
            drop_checkpoint(job)
        return []
    return ["--resume_from_checkpoint", ck]


def rewind_log(path):
    """After a resumed glue run: drop the lines that the killed attempt wrote past the checkpoint it resumed
    from (the resumed process writes them again). A line whose step is below the steps kept so far starts a
    resumed attempt: the kept lines from that step on go. No-op for a log that never went back."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError:
        return
    kept, top, rewound = [], None, False
    for line in lines:
        try:
            step = json.loads(line).get("step")
        except ValueError:
            step = None
        if not isinstance(step, int):
            step = None
        elif top is not None and step < top:
            kept = [(s, l) for s, l in kept if s is None or s < step]
            rewound = True
            top = step
        else:
            top = step if top is None else max(top, step)
        kept.append((step, line))
    if rewound:
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.writelines(l for _, l in kept)
        os.replace(tmp, path)


# ---- commands ---------------------------------------------------------------------------------------------------

def to_argv(prog, flags):
    cmd = list(prog)
    for k, v in flags.items():
        cmd += [f"--{k}", fmt_lr(v) if isinstance(v, float) else str(v)]
    return cmd


def short_command(job, a, info):
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
        # advance learning and restart warmup were glue's defaults (off) when the short grid ran: say so.
        flags = dict(common, lora_r=1, reg_orth_coef=0.1, beta1=0.85, beta2=0.85,
                     **increlora_schedule(steps, job.budget, info["layers"]), advance_learn="False", multi_lr="False")
        return to_argv([a.glue_bin], flags)
    flags = dict(common, method=job.method, threads=a.threads)
    if job.method == "adalora":
        flags.update(init_r=int(1.5 * job.budget + 0.5), orth_reg_weight=0.1, beta1=0.85, beta2=0.85,
                     **adalora_schedule(steps))
    return to_argv([a.python, os.path.join(HERE, "peft_glue.py")], flags)


def paper_steps(a, info, task):
    if a.steps_override:
        return a.steps_override, max(1, a.steps_override)
    per_epoch = P.steps_per_epoch(info["n_train"][task], a.batch_size)
    return P.EPOCHS[task] * per_epoch, per_epoch


def paper_command(job, a, info):
    steps, per_epoch = paper_steps(a, info, job.task)
    b = job.budget
    common = dict(task_name=job.task, data_dir=os.path.join(a.data_dir, TASK_DIRS[job.task]), model_dir=a.model_dir,
                  max_seq_length=a.max_seq_length, per_device_train_batch_size=a.batch_size,
                  per_device_eval_batch_size=64, learning_rate=job.lr, max_steps=steps,
                  warmup_steps=min(P.WARMUP_STEPS, max(1, steps // 10)),
                  weight_decay=P.task_setting(job.task, "weight_decay", b),
                  cls_dropout=P.task_setting(job.task, "cls_dropout", b), max_grad_norm=1.0,
                  eval_steps=P.eval_every(steps, per_epoch), logging_steps=P.log_every(steps), seed=job.seed,
                  root_output_dir=job.dir, device=a.device)
    if a.max_eval_samples > 0:
        common["max_eval_samples"] = a.max_eval_samples
    adapter = dict(target_rank=b, lora_alpha=P.task_setting(job.task, "lora_alpha", b),
                   lora_dropout=P.task_setting(job.task, "lora_dropout", b))
    glue = [a.glue_bin]
    extra = {"cuda_graphs": "True"} if a.glue_cuda_graphs else {}
    if job.save_steps:
        extra["save_steps"] = job.save_steps  # glue's checkpoint interval (the resume flag: resume_flags)
    if job.base == "head":
        return to_argv(glue, dict(common, apply_lora="False", **extra))
    if job.base == "increlora":
        sched = P.increlora_paper_schedule(steps, b, info["layers"])
        flags = dict(common, **adapter, lora_r=1, reg_orth_coef=0.1, beta1=0.85, beta2=0.85,
                     init_warmup=sched["init_warmup"], incre_interval=sched["incre_interval"], top_h=sched["top_h"],
                     incre_rank_num=sched["incre_rank_num"], advance_learn="True", multi_lr="True", **extra)
        if job.variant:
            flags.update(P.ABLATIONS[job.variant](b))
        return to_argv(glue, flags)
    flags = dict(common, **adapter, method=job.base, threads=a.threads, resume_file=job.resume_file,
                 checkpoint_seconds=a.checkpoint_seconds)
    if job.base == "adalora":
        flags.update(init_r=int(1.5 * b + 0.5), orth_reg_weight=0.1, beta1=0.85, beta2=0.85,
                     **P.adalora_paper_schedule(steps))
    return to_argv([a.python, os.path.join(HERE, "peft_glue.py")], flags)


def job_command(job, a, info):
    return paper_command(job, a, info) if a.protocol == "paper" else short_command(job, a, info)


# ---- the plan -------------------------------------------------------------------------------------------------

def short_plan(a):
    # Seed-major, so that a partial grid already holds every cell at one seed; longest tasks first within a
    # wave, so that the short ones fill the gaps at its end.
    jobs = [Job(a, m, t, b, s, lr)
            for s in a.seeds for lr in a.lrs
            for t in sorted(a.tasks, key=lambda t: -STEPS[t]) for b in a.budgets for m in a.methods]
    return jobs, []


def paper_cells(a):
    cells = []
    for m in a.methods:
        for t in a.tasks:
            for b in ([0] if m == "head" else a.budgets):
                cells.append((m, t, b))
    return cells


def paper_plan(a, cache=None):
    """Every job the results on disk call for now (done or not), in priority order, and one state line per cell."""
    jobs, lines = [], []
    budget_rank = {b: i for i, b in enumerate(a.budgets)}
    for m, t, b in paper_cells(a):
        st = P.select_state(a.out, m, t, b, a.lrs, a.select_seeds, a.max_extensions, cache)
        if "select" in a.phases:
            jobs += [Job(a, m, t, b, s, lr, "select") for lr in st["grid"] for s in a.select_seeds]
        state = (f"pick {fmt_lr(st['pick'])}" + (f" (at the {st['edge']} edge, not extended further)"
                                                   if st["edge"] else "")) if st["settled"] else "selecting"
        lines.append(f"{m}/{t}/r{b}: grid {', '.join(fmt_lr(x) for x in st['grid'])}; {state}")
        if not st["settled"]:
            continue
        if "final" in a.phases:
            jobs += [Job(a, m, t, b, s, st["pick"], "final") for s in a.final_seeds]
        if m == "increlora" and "ablations" in a.phases:
            for v in a.ablations:
                jobs += [Job(a, P.ABLATION_PREFIX + v, t, b, s, st["pick"], "ablations", base="increlora", variant=v)
                         for s in a.ablation_seeds]
    order = {m: i for i, m in enumerate(METHODS)}

    def key(j):
        b = budget_rank.get(j.budget, 0)  # head (r0) goes with the first budget
        return (b, TASK_ORDER.index(j.task) if j.task in TASK_ORDER else 9, PHASES.index(j.phase), j.seed, j.lr,
                order.get(j.base, 9), j.method)
    jobs.sort(key=key)
    return jobs, lines


def plan(a, cache=None):
    return paper_plan(a, cache) if a.protocol == "paper" else short_plan(a)


# ---- options --------------------------------------------------------------------------------------------------

def parse_list(text, kind=str):
    return [kind(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="GLUE quality comparison: increlora vs PEFT LoRA / AdaLoRA",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--protocol", choices=["paper", "short"], default="paper")
    ap.add_argument("--methods", help="paper: increlora,lora,adalora,head; short: increlora,lora,adalora")
    ap.add_argument("--tasks", default="sst2,cola,mrpc")
    ap.add_argument("--budgets", default="2,8", help="average rank per adapted layer")
    ap.add_argument("--lrs", help="the shared lr grid (paper: 2.5e-4,5e-4,1e-3,2e-3,4e-3; short: 5e-4,1e-3)")
    ap.add_argument("--seeds", help="short protocol: seeds (42,43,44)")
    ap.add_argument("--phases", default=",".join(PHASES), help="paper protocol: which of select,final,ablations run")
    ap.add_argument("--select-seeds", default=",".join(map(str, P.SELECT_SEEDS)))
    ap.add_argument("--final-seeds", default=",".join(map(str, P.FINAL_SEEDS)))
    ap.add_argument("--ablation-seeds", default=",".join(map(str, P.ABLATION_SEEDS)))
    ap.add_argument("--ablations", default=",".join(P.ABLATIONS))
    ap.add_argument("--max-extensions", type=int, default=P.MAX_EXTENSIONS,
                    help="times the lr grid may grow by a factor 2 past each edge")
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu (passed to every job)")
    ap.add_argument("--jobs", type=int, default=1, help="concurrent processes")
    ap.add_argument("--threads", type=int, default=0,
                    help="CPU threads per job; 0: 1 on CUDA, cores / jobs on CPU")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "glue_quality"))
    ap.add_argument("--resume-dir", help="resume checkpoints of stopped jobs, PEFT (state.pt) and glue (checkpoint/) "
                                         "(default OUT/.resume; not results)")
    ap.add_argument("--checkpoint-seconds", type=float, default=120,
                    help="PEFT jobs also checkpoint this often, against a hard kill (0: only when stopped)")
    ap.add_argument("--glue-bin", default=os.path.join(ROOT, "build", "apps", "glue"))
    ap.add_argument("--glue-cuda-graphs", action="store_true",
                    help="paper protocol: glue --cuda_graphs True (off by default: every batch is then padded to "
                         "128 tokens, which only pays when a few jobs share the GPU)")
    ap.add_argument("--glue-save-steps", type=int, default=250,
                    help="paper protocol: glue --save_steps, the checkpoint interval of glue jobs (0: none; such a "
                         "job then only starts when it can end before --kill-after)")
    ap.add_argument("--model-dir", default=os.path.join(CACHE, "models", "all-MiniLM-L6-v2"))
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(ROOT), "shared", "data", "glue"),
                    help="folder holding SST-2/, CoLA/, MRPC/ (train.tsv, dev.tsv)")
    ap.add_argument("--python", default=sys.executable, help="interpreter for peft_glue.py")
    ap.add_argument("--time-limit", type=float, default=0, help="seconds after which no new job starts (0: none)")
    ap.add_argument("--kill-after", type=float, default=0,
                    help="seconds after which running jobs are stopped (PEFT jobs checkpoint, glue jobs are killed "
                         "and resume from their last --save_steps checkpoint) and run.py ends; also keeps glue jobs "
                         "from starting that would not reach a checkpoint by then")
    ap.add_argument("--finish-only", action="store_true",
                    help="start only jobs expected to finish before --kill-after (by the speed of their kind seen "
                         "before; a resumed job counted whole): for a session's last device command, whose jobs "
                         "still running at its end are lost with the machine")
    ap.add_argument("--grace", type=float, default=25, help="seconds a stopped job gets to write its checkpoint")
    ap.add_argument("--clock-start", type=float, default=0,
                    help="Unix time the two limits count from (default: run.py's start); pass the device "
                         "command's start, $(date +%%s) taken before building, so the limits hold for the command")
    ap.add_argument("--weight-decay", type=float, default=0.0, help="short protocol (paper: per task)")
    ap.add_argument("--keep-adapters", action="store_true",
                    help="keep glue's adapter/ folder (2-6 MB a job; deleted by default to keep results small)")
    ap.add_argument("--dry-run", action="store_true", help="print the plan and the commands; run nothing")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run of the paper protocol, then report.py (CI)")
    # For quick checks only: change the step count of every task, the batch size, the sequence length or the
    # dev subset.
    ap.add_argument("--steps", dest="steps_override", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--batch-size", type=int, default=32, help=argparse.SUPPRESS)
    ap.add_argument("--max-seq-length", type=int, default=128, help=argparse.SUPPRESS)
    ap.add_argument("--max-eval-samples", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.smoke:
        a.protocol = "paper"
        a.device = "cpu"
        a.tasks, a.budgets, a.lrs = "cola", "2", "1e-3"
        a.select_seeds, a.final_seeds, a.ablation_seeds, a.ablations = "1", "2", "1", "no-multi-lr"
        a.max_extensions = 0
        a.steps_override, a.batch_size, a.max_eval_samples = 8, 8, 32
        a.glue_save_steps = 4  # glue writes checkpoints (run.py deletes them when the job is complete)
        a.jobs = max(a.jobs, min(3, os.cpu_count() or 1))
    paper = a.protocol == "paper"
    a.methods = parse_list(a.methods or ",".join(P.PAPER_METHODS if paper else P.SHORT_METHODS))
    a.lrs = parse_list(a.lrs or ",".join(map(fmt_lr, P.PAPER_LRS if paper else P.SHORT_LRS)), float)
    if a.seeds and paper:
        ap.error("--seeds is the short protocol's; the paper protocol has --select-seeds/--final-seeds/--ablation-seeds")
    a.seeds = parse_list(a.seeds or ",".join(map(str, P.SHORT_SEEDS)), int)
    a.tasks, a.budgets = parse_list(a.tasks), parse_list(a.budgets, int)
    a.phases, a.ablations = parse_list(a.phases), parse_list(a.ablations)
    a.select_seeds = parse_list(a.select_seeds, int)
    a.final_seeds = parse_list(a.final_seeds, int)
    a.ablation_seeds = parse_list(a.ablation_seeds, int)
    allowed = P.PAPER_METHODS if paper else P.SHORT_METHODS
    for m in a.methods:
        if m not in allowed:
            ap.error(f"--methods: {m} is not one of {', '.join(allowed)}")
    for t in a.tasks:
        if t not in TASK_DIRS:
            ap.error(f"--tasks: {t} is not one of {', '.join(TASK_DIRS)}")
    for p in a.phases:
        if p not in PHASES:
            ap.error(f"--phases: {p} is not one of {', '.join(PHASES)}")
    for v in a.ablations:
        if v not in P.ABLATIONS:
            ap.error(f"--ablations: {v} is not one of {', '.join(P.ABLATIONS)}")
    if paper and set(a.final_seeds) & set(a.select_seeds):
        ap.error("--final-seeds must be fresh: they overlap --select-seeds")
    a.budgets.sort()  # budget 2 before 8
    if a.glue_save_steps < 0:
        ap.error("--glue-save-steps must be >= 0")
    if a.finish_only and not a.kill_after:
        ap.error("--finish-only needs --kill-after (the time the jobs must finish by)")
    if a.threads <= 0:
        a.threads = 1 if a.device.startswith("cuda") else max(1, (os.cpu_count() or 1) // max(1, a.jobs))
    a.model_dir, a.data_dir, a.out = map(os.path.abspath, (a.model_dir, a.data_dir, a.out))
    a.resume_dir = os.path.abspath(a.resume_dir or os.path.join(a.out, ".resume"))
    return a


def preflight(a, jobs):
    """What the jobs need; returns a reason to skip (smoke) or fail, or None."""
    if not os.path.isfile(os.path.join(a.model_dir, "model.safetensors")):
        return f"no checkpoint at {a.model_dir} (scripts/setup.sh, or pack_model.py for the fp16 copy)"
    for t in a.tasks:
        if not os.path.isfile(os.path.join(a.data_dir, TASK_DIRS[t], "train.tsv")):
            return f"no {TASK_DIRS[t]}/train.tsv under {a.data_dir} (--data-dir)"
    if any(m in ("increlora", "head") for m in a.methods) and not os.access(a.glue_bin, os.X_OK):
        return f"no glue program at {a.glue_bin} (--glue-bin; build the target glue)"
    if any(m in ("lora", "adalora") for m in a.methods):
        probe = subprocess.run([a.python, "-c", "import torch, transformers, peft"], capture_output=True, text=True)
        if probe.returncode != 0:
            return f"{a.python} cannot import torch, transformers and peft: {probe.stderr.strip().splitlines()[-1:]}"
    return None


def task_info(a):
    info = {"layers": 36, "n_train": {}}
    try:
        with open(os.path.join(a.model_dir, "config.json")) as f:
            info["layers"] = 6 * json.load(f)["num_hidden_layers"]  # the six module types of every encoder layer
    except OSError:
        if not a.dry_run:
            raise
    for t in a.tasks:
        try:
            info["n_train"][t] = glue_data.train_examples(os.path.join(a.data_dir, TASK_DIRS[t]), t)
        except OSError:
            if not a.dry_run:
                raise
            info["n_train"][t] = N_TRAIN[t]
    return info


# ---- bookkeeping ----------------------------------------------------------------------------------------------

def load_json(path, default):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def write_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


def add_wall(job, seconds, outcome, lost=0.0):
    """run.json: wall seconds over attempts; lost: those of a killed glue job after its last checkpoint."""
    path = os.path.join(job.dir, "run.json")
    r = load_json(path, {"wall_seconds": 0.0, "attempts": 0, "lost_seconds": 0.0})
    r["wall_seconds"] += seconds
    r["attempts"] += 1
    r["lost_seconds"] = r.get("lost_seconds", 0.0) + lost
    if job.resumed:
        r["resumed"] = r.get("resumed", 0) + 1
    r["last"] = outcome
    write_json(path, r)
    return r


def observed_rate(job):
    """(seconds per step, steps) from the training lines this attempt added to the job's log.jsonl (those past
    job.log_offset), or None. Differences within the attempt when it has two lines or more (right whether or not
    a resumed process counts its elapsed time from its own start), else elapsed / step of a fresh attempt."""
    lines = []
    try:
        with open(os.path.join(job.dir, "log.jsonl"), "rb") as f:
            f.seek(job.log_offset)
            for line in f.read().decode(errors="replace").splitlines():
                if '"train"' in line:
                    try:
                        e = json.loads(line)
                    except ValueError:
                        continue
                    if e.get("step") and "elapsed_seconds" in e:
                        lines.append(e)
    except OSError:
        return None
    if len(lines) >= 2 and lines[-1]["step"] > lines[0]["step"]:
        return ((lines[-1]["elapsed_seconds"] - lines[0]["elapsed_seconds"]) / (lines[-1]["step"] - lines[0]["step"]),
                lines[-1]["step"] - lines[0]["step"])
    if lines and not job.log_offset:
        return lines[-1]["elapsed_seconds"] / lines[-1]["step"], lines[-1]["step"]
    return None


def trim_job_dir(job, keep_adapters):
    drop_checkpoint(job)  # complete: its checkpoints, here and in --resume-dir, are of no more use
    if job.save_steps:
        rewind_log(os.path.join(job.dir, "log.jsonl"))
    if not keep_adapters:
        shutil.rmtree(os.path.join(job.dir, "adapter"), ignore_errors=True)
    for f in ("rank_heatmap.svg", "rank_pattern.csv"):  # glue's rank report; rank_pattern.json stays
        try:
            os.remove(os.path.join(job.dir, f))
        except OSError:
            pass
    path = os.path.join(job.dir, "stdout.log")
    try:
        with open(path, errors="replace") as f:
            text = f.read()
        if len(text) > 4000:
            with open(path, "w") as f:
                f.write(f"[run.py: {len(text) - 3000} characters cut]\n" + text[-3000:])
    except OSError:
        pass


# ---- main -----------------------------------------------------------------------------------------------------

def main(argv=None):
    a = parse_args(argv)
    proto_path = os.path.join(a.out, "protocol.json")
    recorded = load_json(proto_path, None)
    if recorded and recorded.get("protocol") != a.protocol:
        print(f"run.py: {a.out} holds {recorded.get('protocol')}-protocol results; use another --out", file=sys.stderr)
        return 2
    if a.smoke:  # the smoke test must run, not find an earlier run's results
        shutil.rmtree(a.out, ignore_errors=True)
    if not a.dry_run:
        problem = preflight(a, None)
        if problem:
            print(f"run.py: {problem}", file=sys.stderr)
            return SKIP if a.smoke else 2
    info = task_info(a)

    jobs, lines = plan(a)
    if a.dry_run:
        for line in lines:
            print("cell " + line)
        pending = [j for j in jobs if not j.done()]
        for j in pending:
            cmd = job_command(j, a, info)
            cmd += resume_flags(j, cmd, dry_run=True) if j.glue_ckpt else []
            print(f"[{j.phase}] {j.name()}: " + " ".join(cmd))
        print(f"run.py --dry-run: {len(jobs)} jobs known now, {len(jobs) - len(pending)} done, {len(pending)} to run")
        return 0

    os.makedirs(a.out, exist_ok=True)
    if a.protocol == "paper":
        write_json(proto_path, dict(protocol="paper", lrs=a.lrs, select_seeds=a.select_seeds,
                                    final_seeds=a.final_seeds, ablation_seeds=a.ablation_seeds,
                                    max_extensions=a.max_extensions, epochs=P.EPOCHS, tasks=P.PAPER_TASK,
                                    steps_override=a.steps_override, data_dir=os.path.relpath(a.data_dir, ROOT)))
    for j in jobs:
        if j.done():  # checkpoints of jobs that have finished since
            if j.resume_file and os.path.exists(j.resume_file):
                os.remove(j.resume_file)
            drop_checkpoint(j)
        elif j.glue_ckpt and os.path.isdir(j.dir):
            adopt_checkpoint(j)  # left in the job folder when an invocation was cut short
    timing_path = os.path.join(a.out, "timing.json")
    timing = load_json(timing_path, {})
    n_done = sum(j.done() for j in jobs)
    print(f"run.py: {a.protocol} protocol; {len(jobs)} jobs known now, {n_done} done, {len(jobs) - n_done} to run, "
          f"{a.jobs} at a time on {a.device} ({a.threads} thread(s) each); results in {a.out}", flush=True)
    for line in lines:
        print("  " + line, flush=True)

    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads),
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    t0 = a.clock_start or time.time()
    wall0 = time.time()

    def elapsed():
        return time.time() - t0

    def steps_of(job):
        if a.protocol == "short":
            return a.steps_override or STEPS[job.task]
        return paper_steps(a, info, job.task)[0]

    def first_save(job):
        """Steps a glue job trains before its first checkpoint of an attempt (at most; its end when sooner or when
        it writes none)."""
        steps = steps_of(job)
        return min(job.save_steps, steps) if job.save_steps else steps

    def estimate(job, n_running, steps):
        """Seconds the job would take for `steps` steps if started now, from the speed of its kind seen before
        (None: unknown)."""
        t = timing.get(job.kind())
        if not t:
            return None
        scale = (1 + SHARING * n_running) / (1 + SHARING * max(0, t["jobs"] - 1))
        return t["startup"] + steps * t["sec_per_step"] * scale

    def fits(job, n_running):
        """Whether a job may start now: before --time-limit and with more than a minute left before --kill-after;
        a glue job also only when it is expected to reach its first checkpoint (or its end) by then, since what it
        trains before is lost when it is killed."""
        if a.time_limit and elapsed() > a.time_limit:
            return False
        if not a.kill_after:
            return True
        left = a.kill_after - elapsed()
        if left <= 60:
            return False
        if a.finish_only:
            est = estimate(job, n_running, steps_of(job))
            return est is None or 1.1 * est < left
        if job.resumable:
            return True
        est = estimate(job, n_running, first_save(job))
        return est is None or 1.1 * est < left

    def note_speed(job, took, n_jobs):
        rate = observed_rate(job)
        if rate:
            m = P.read_metrics(job.dir)
            prev = timing.get(job.kind(), {})
            if m and not job.resumed and m.get("train_seconds") is not None:
                startup = max(0.0, took - m["train_seconds"])
            else:
                startup = prev.get("startup", 10.0)
            timing[job.kind()] = dict(sec_per_step=rate[0], startup=startup, jobs=n_jobs)
            write_json(timing_path, timing)

    def last_save(job):
        """Unix time of the job's last checkpoint of this attempt, or None."""
        path = os.path.join(job.dir, "checkpoint") if job.glue_ckpt else job.resume_file
        try:
            t = os.path.getmtime(path) if path else 0.0
        except OSError:
            return None
        return t if t > job.started else None

    cache = {}
    running, failed, killed, suspended = [], set(), [], []
    finished = 0
    warned = set()
    pending = []

    def replan():
        nonlocal jobs, lines
        jobs, lines = plan(a, cache)
        busy = {j.dir for j in running}
        todo = [j for j in jobs if j.dir not in busy and j.dir not in failed and not j.done()]
        todo.sort(key=lambda j: not j.in_progress())  # resume checkpoints first (stable: priority kept)
        return todo

    pending = replan()
    while True:
        started = False
        for job in list(pending):
            if len(running) >= a.jobs:
                break
            if not fits(job, len(running)):
                if not job.resumable and a.kill_after and job.kind() not in warned and \
                        (not a.time_limit or elapsed() <= a.time_limit):
                    est = estimate(job, 0, first_save(job))
                    if est and 1.1 * est > a.kill_after:
                        what = "to reach its first checkpoint" if job.save_steps else "to finish"
                        print(f"run.py: warning: {job.kind()} takes about {est:.0f} s {what} even alone, more than "
                              f"--kill-after allows" + ("; lower --glue-save-steps" if job.save_steps else ""),
                              flush=True)
                    warned.add(job.kind())
                continue
            pending.remove(job)
            os.makedirs(job.dir, exist_ok=True)
            cmd = job_command(job, a, info)
            with open(os.path.join(job.dir, "command.txt"), "w") as f:
                f.write(" ".join(cmd) + "\n")
            write_json(os.path.join(job.dir, "job.json"),
                       dict(protocol=a.protocol, phase=job.phase, method=job.base, variant=job.variant,
                            task=job.task, budget=job.budget, lr=job.lr, seed=job.seed, steps=steps_of(job)))
            if job.glue_ckpt:
                more = resume_flags(job, cmd)
                job.resumed = bool(more)
                cmd = cmd + more
            else:
                job.resumed = job.in_progress()
            log_path = os.path.join(job.dir, "log.jsonl")
            job.log_offset = os.path.getsize(log_path) if job.resumed and os.path.isfile(log_path) else 0
            with open(os.path.join(job.dir, "stdout.log"), "a" if job.resumed else "w") as log:
                if job.resumed and job.glue_ckpt:
                    log.write(f"[run.py: {' '.join(cmd[-2:])}]\n")
                    log.flush()
                job.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
            job.started, job.share = time.time(), len(running) + 1
            running.append(job)
            started = True
            if job.resumed:
                print(f"[{elapsed():6.0f} s] resuming {job.name()}", flush=True)
        if not running and not started:
            break
        for j in running:  # the most jobs each one has shared the machine with (scales its measured speed)
            j.share = max(j.share, len(running))
        if a.kill_after and elapsed() > a.kill_after:
            # End before the device command's limit, so that the command can still pack the results: PEFT jobs
            # write their checkpoint and exit 75; glue jobs die (SIGTERM) and resume next time from their last
            # --save_steps checkpoint, which run.py moves to --resume-dir; what they trained after it is lost.
            stop = time.time()
            for job in running:
                job.proc.terminate()
            deadline = time.time() + a.grace
            for job in running:
                try:
                    job.proc.wait(timeout=max(1.0, deadline - time.time()))
                except subprocess.TimeoutExpired:
                    job.proc.kill()
                    job.proc.wait()
                took = time.time() - job.started
                if job.proc.returncode == SUSPENDED:
                    suspended.append(job)
                    add_wall(job, took, "suspended")
                    print(f"[{elapsed():6.0f} s] suspended {job.name()} at --kill-after (checkpoint written)",
                          flush=True)
                else:
                    killed.append(job)
                    saved = last_save(job)
                    lost = stop - saved if saved else min(took, stop - job.started)
                    note_speed(job, took, job.share)
                    moved = adopt_checkpoint(job) if job.glue_ckpt else False
                    add_wall(job, took, "killed", lost=lost)
                    have = moved or job.in_progress()
                    print(f"[{elapsed():6.0f} s] killed {job.name()} at --kill-after; {lost:.0f} s of training "
                          f"lost, " + ("resumes from its last checkpoint next time" if have else
                                       "no checkpoint: starts over next time"), flush=True)
            running = []
            break
        time.sleep(0.2)
        changed = False
        for job in [j for j in running if j.proc.poll() is not None]:
            running.remove(job)
            took = time.time() - job.started
            changed = True
            if job.proc.returncode == 0 and job.done():
                finished += 1
                note_speed(job, took, job.share)
                add_wall(job, took, "done")
                trim_job_dir(job, a.keep_adapters)
                m = P.read_metrics(job.dir)
                v = P.main_value(m, m["main_metric"])
                print(f"[{elapsed():6.0f} s] done {job.name()} in {took:.0f} s: {m['main_metric']} "
                      f"{'nan' if v is None else f'{v:.4f}'}", flush=True)
            else:
                failed.add(job.dir)
                if job.glue_ckpt:
                    adopt_checkpoint(job)  # its progress stays resumable
                r = add_wall(job, took, "failed")
                with open(os.path.join(job.dir, "stdout.log"), errors="replace") as f:
                    tail = f.read()[-1500:]
                print(f"[{elapsed():6.0f} s] FAILED {job.name()} (exit {job.proc.returncode}) after "
                      f"{took:.0f} s; {job.dir}/stdout.log ends:\n{tail}", flush=True)
                if job.glue_ckpt and job.resumed:
                    r["resume_failures"] = r.get("resume_failures", 0) + 1
                    if r["resume_failures"] >= 2:  # twice failed from its checkpoint: the next attempt starts over
                        drop_checkpoint(job)
                        r["resume_failures"] = 0
                        print(f"run.py: {job.name()} failed twice resuming; its checkpoint is deleted", flush=True)
                    write_json(os.path.join(job.dir, "run.json"), r)
        if changed:
            cache.clear()
            pending = replan()

    left = [j for j in plan(a)[0] if not j.done()]
    complete = not left and not failed
    with open(os.path.join(a.out, "invocations.jsonl"), "a") as f:
        f.write(json.dumps(dict(start=wall0, wall_seconds=time.time() - wall0, finished=finished,
                                failed=len(failed), killed=len(killed), suspended=len(suspended),
                                left=len(left), jobs=a.jobs, device=a.device)) + "\n")
    print(f"run.py: {finished} finished, {len(failed)} failed, {len(killed)} killed (glue: resumable from their "
          f"last checkpoint), {len(suspended)} suspended (PEFT, resumable), {len(left)} left at {elapsed():.0f} s" +
          ("; grid complete" if complete else "; run again to resume"), flush=True)
    if a.protocol == "paper":
        for line in plan(a)[1]:
            print("  " + line, flush=True)
    if failed:
        return 1
    if a.smoke:
        stray = [os.path.join(d, n) for d, dirs, files in os.walk(a.out) for n in dirs + files
                 if n.startswith("checkpoint")]
        if stray:  # every job is complete: no glue checkpoint may be left in the results
            print(f"run.py: glue checkpoints left after their jobs ended: {stray}", file=sys.stderr)
            return 1
        rc = subprocess.call([sys.executable, os.path.join(HERE, "report.py"), a.out, "--require-all",
                              "--data-dir", a.data_dir], cwd=ROOT)
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
