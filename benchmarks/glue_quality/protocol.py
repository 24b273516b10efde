#!/usr/bin/env python3
"""The GLUE quality protocols, shared by run.py (what to run next) and report.py (what the results say).
Standard library only.

Two protocols:
  paper  (default) the comparison at the paper's length: epochs per task, per-task settings from the original
         IncreLoRA GLUE scripts, several evaluations per run, a shared lr grid chosen on seeds 1-3 ("select",
         extended by a factor 2 past an edge pick), 5 fresh seeds at the pick ("final"), IncreLoRA ablations at
         its pick on seeds 1-3 ("ablations"), the head alone as a control.
  short  the issue-5 grid of benchmarks/results/glue-quality-2026-11-29: fixed step counts, one evaluation,
         lr {5e-4, 1e-3}, seeds 42-44.

Results live in OUT/<method>/<task>/r<budget>/lr<lr>/seed<seed>/ (head: r0); a job is done when its
metrics.json holds "final". The phase of a paper-protocol run follows from its method and seed, so the state of
the grid is a function of the files on disk.
"""
import json
import math
import os

TASK_DIRS = {"sst2": "SST-2", "cola": "CoLA", "mrpc": "MRPC"}
MAIN_METRIC = {"sst2": "eval_accuracy", "cola": "eval_matthews_correlation", "mrpc": "eval_f1"}

# ---- short protocol (issue 5; kept so that the committed 2026-11-29 grid reproduces) ----------------------------
SHORT_METHODS = ["increlora", "lora", "adalora"]
SHORT_STEPS = {"sst2": 800, "cola": 600, "mrpc": 400}
SHORT_SEEDS = [42, 43, 44]
SHORT_LRS = [5e-4, 1e-3]

# ---- paper protocol -----------------------------------------------------------------------------------------
PAPER_METHODS = ["increlora", "lora", "adalora", "head"]
PAPER_LRS = [2.5e-4, 5e-4, 1e-3, 2e-3, 4e-3]
SELECT_SEEDS = [1, 2, 3]
FINAL_SEEDS = [4, 5, 6, 7, 8]
ABLATION_SEEDS = [1, 2, 3]
MAX_EXTENSIONS = 2  # per direction: at most 2 halvings below and 2 doublings above the grid
EPOCHS = {"cola": 25, "mrpc": 30, "sst2": 3}  # SST-2: 3 epochs (67k examples), not the original's 24
BATCH = 32
MAX_SEQ_LENGTH = 128
WARMUP_STEPS = 100
INCRE_INTERVAL = 100       # IncreLoRA allocates about every 100 steps ...
INCRE_INIT_WARMUP = 100    # ... from step init_warmup on (the original CoLA/MRPC scripts: 100 and 100)
INCRE_BUDGET_AT = 0.375    # ... and meets its budget at about 37.5 % of the steps
ADALORA_TINIT = 0.10       # AdaLoRA: budgeting from 10 % of the steps ...
ADALORA_BUDGET_AT = 0.50   # ... to 50 % (PEFT's tfinal = T - that step)
ADALORA_DELTA_T = 10

# Per task, from the original's NLU/scripts/rank={2,8}/run_<task>.sh (FeiyuZhang98/IncreLoRA; DeBERTa-v3-base);
# a value given per budget is {budget: value} and the nearest budget's applies. lora_dropout 0.0 for CoLA: its
# scripts set none and the original run_glue.py defaults it to 0.
PAPER_TASK = {
    "cola": dict(lora_alpha=32, lora_dropout=0.0, cls_dropout=0.10, weight_decay=0.0),
    "mrpc": dict(lora_alpha=32, lora_dropout=0.3, cls_dropout=0.0, weight_decay=0.01),
    "sst2": dict(lora_alpha=16, lora_dropout={2: 0.1, 8: 0.3}, cls_dropout=0.0, weight_decay=0.01),
}

# IncreLoRA ablations at its picked lr: name -> glue flags replacing the main run's.
ABLATIONS = {
    "no-advance-learn": lambda b: {"advance_learn": "False"},
    "no-multi-lr": lambda b: {"multi_lr": "False"},
    "exact-scoring": lambda b: {"exact_scoring": "True"},
    "fixed-rank": lambda b: {"lora_r": b, "target_rank": b},
    "random-alloc": lambda b: {"random_allocation": "True"},
}
ABLATION_PREFIX = "increlora-"  # an ablation's method folder: increlora-<name>


def fmt_lr(lr):
    return f"{lr:g}"


def task_setting(task, key, budget):
    v = PAPER_TASK[task][key]
    if isinstance(v, dict):
        return v[min(v, key=lambda b: (abs(b - budget), b))]
    return v


def steps_per_epoch(n_train, batch=BATCH):
    return (n_train + batch - 1) // batch


def paper_steps(task, n_train, batch=BATCH):
    return EPOCHS[task] * steps_per_epoch(n_train, batch)


def eval_every(total_steps, per_epoch):
    """Every epoch, or every ~10 % of the steps when that is more often (SST-2's 3 epochs: 10 evaluations)."""
    return max(1, min(per_epoch, math.ceil(total_steps / 10)))


def log_every(total_steps):
    return max(1, round(total_steps / 100))  # ~100 training lines in log.jsonl


def allocation_step(k, init_warmup, interval):
    """Step of IncreLoRA's k-th allocation (glue's RankAllocator: multiples of interval after init_warmup)."""
    return (init_warmup // interval + 1) * interval + (k - 1) * interval


def increlora_paper_schedule(steps, budget, layers):
    """init_warmup 100, allocations every ~100 steps, top_h the fewest layers per round that meets the budget
    ((budget - 1) x layers more rank, incre_rank_num = max(1, budget / 2)) by INCRE_BUDGET_AT of the steps; the
    interval is then stretched (never shortened) so that the last round lands there. Short runs (the smoke
    test's) scale init_warmup and the interval down to fit."""
    per_layer = max(1, budget // 2)
    needed = (budget - 1) * layers
    target = INCRE_BUDGET_AT * steps
    warm, interval = INCRE_INIT_WARMUP, INCRE_INTERVAL
    if allocation_step(1, warm, interval) > target:  # tiny runs
        warm, interval = max(1, round(0.1 * steps)), max(1, round(0.05 * steps))
    if needed == 0:
        return dict(init_warmup=warm, incre_interval=interval, top_h=1, incre_rank_num=per_layer, rounds=0,
                    budget_step=0)
    avail = max(1, (int(target) - allocation_step(1, warm, interval)) // interval + 1)
    top_h = min(layers, max(1, math.ceil(needed / (avail * per_layer))))
    rounds = math.ceil(needed / (top_h * per_layer))
    # Stretch the interval so that the last round falls at about the target step.
    while allocation_step(rounds, warm, interval + 1) <= target:
        interval += 1
    return dict(init_warmup=warm, incre_interval=interval, top_h=top_h, incre_rank_num=per_layer, rounds=rounds,
                budget_step=allocation_step(rounds, warm, interval))


def adalora_paper_schedule(steps):
    tinit = round(ADALORA_TINIT * steps)
    reached = round(ADALORA_BUDGET_AT * steps)
    delta = max(1, min(ADALORA_DELTA_T, (reached - tinit) // 10))
    return dict(tinit=tinit, tfinal=steps - reached, deltaT=delta)


# ---- results on disk ----------------------------------------------------------------------------------------

def job_dir(out, method, task, budget, lr, seed):
    return os.path.join(out, method, task, f"r{budget}", f"lr{fmt_lr(lr)}", f"seed{seed}")


def read_metrics(path):
    """metrics.json of a finished job (it holds "final"), else None."""
    try:
        with open(os.path.join(path, "metrics.json")) as f:
            m = json.load(f)
    except (OSError, ValueError):
        return None
    return m if isinstance(m, dict) and "final" in m else None


def main_value(metrics, key, which="final"):
    """The main metric of the final evaluation, or the best over the run's evaluations (every evaluation, as
    both programs record them; the same computation for every method). None when missing or NaN (null)."""
    if which == "final":
        v = (metrics.get("final") or {}).get(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)
    vals = [e.get(key) for e in metrics.get("evaluations") or [] if e.get(key) is not None]
    vals = [float(v) for v in vals if not math.isnan(float(v))]
    return max(vals) if vals else None


def select_state(out, method, task, budget, lrs, seeds, max_ext=MAX_EXTENSIONS, metric_cache=None):
    """The lr selection of one (method, task, budget) cell from the select runs on disk.
    Returns dict(grid=[lr...], pick=lr or None, settled=bool, means={lr: mean or None}, edge=str or None).
    grid starts as lrs; while every seed of every lr in it is done and the best mean final metric is at an edge
    of the grid, the grid grows by a factor 2 past that edge (at most max_ext times each way). settled: the pick
    is inside the grid or at an edge that may not grow any more. A tie goes to the smaller lr; a run whose metric
    is NaN counts as the worst."""
    key = MAIN_METRIC[task]
    grid = sorted({float(fmt_lr(x)) for x in lrs})
    down = up = 0
    means = {}
    while True:
        complete = True
        for lr in grid:
            if lr in means:
                continue
            vals = []
            for s in seeds:
                d = job_dir(out, method, task, budget, lr, s)
                m = metric_cache.get(d) if metric_cache is not None and d in metric_cache else read_metrics(d)
                if metric_cache is not None:
                    metric_cache[d] = m
                if m is None:
                    complete = False
                    break
                vals.append(main_value(m, key))
            else:
                means[lr] = None if any(v is None for v in vals) else sum(vals) / len(vals)
        if not complete or not grid:
            return dict(grid=grid, pick=None, settled=False, means=means, edge=None)
        pick = None
        for lr in grid:  # ascending: strict > keeps the smaller lr on a tie
            v = means[lr] if means[lr] is not None else -math.inf
            if pick is None or v > (means[pick] if means[pick] is not None else -math.inf):
                pick = lr
        if len(grid) > 1 or max_ext > 0:
            if pick == grid[0] and down < max_ext:
                grid = [float(fmt_lr(pick / 2))] + grid
                down += 1
                continue
            if pick == grid[-1] and up < max_ext:
                grid = grid + [float(fmt_lr(pick * 2))]
                up += 1
                continue
        edge = "low" if pick == grid[0] and len(grid) > 1 else "high" if pick == grid[-1] and len(grid) > 1 else None
        return dict(grid=grid, pick=pick, settled=True, means=means, edge=edge)


# ---- statistics (no scipy needed) ------------------------------------------------------------------------

def mean_std(xs):
    """Mean and sample standard deviation (0 for one value); (None, None) for none."""
    if not xs:
        return None, None
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def _betacf(a, b, x):
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def betainc(a, b, x):
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    front = math.exp(ln)
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_sf2(t, df):
    """Two-sided tail probability P(|T| >= |t|) of Student's t with df (real, > 0) degrees of freedom."""
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def welch(xs, ys):
    """Welch's unequal-variance t-test: dict(t, df, p) with the two-sided p, or None with fewer than 2 values in
    either sample. Equal constant samples give p = 1; different constant samples p = 0."""
    if len(xs) < 2 or len(ys) < 2:
        return None
    mx, sx = mean_std(xs)
    my, sy = mean_std(ys)
    vx, vy = sx * sx / len(xs), sy * sy / len(ys)
    if vx + vy == 0.0:
        return dict(t=0.0 if mx == my else math.copysign(math.inf, mx - my), df=None, p=1.0 if mx == my else 0.0)
    t = (mx - my) / math.sqrt(vx + vy)
    df = (vx + vy) ** 2 / ((vx * vx / (len(xs) - 1) if vx else 0.0) + (vy * vy / (len(ys) - 1) if vy else 0.0))
    return dict(t=t, df=df, p=student_t_sf2(t, df))
