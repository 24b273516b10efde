#!/usr/bin/env python3
"""Aggregates run.py's results: for each method x budget x task, the learning rate with the best mean dev
metric over seeds is selected (the usual "best of a small grid" protocol; the same grid for every method), and
that lr's mean +- sample std over seeds is reported. The metric is the one evaluated at the end of training
(final), not the best of several evaluations. Metrics: SST-2 accuracy, CoLA Matthews correlation, MRPC F1 (the
selection metric) and MRPC accuracy (at the lr F1 selected), all x 100.

    python3 benchmarks/glue_quality/report.py OUT [--prefix OUT/report]

Writes <prefix>.md (the tables, also printed), <prefix>.svg (metric per task, methods side by side, both
budgets, +-1 std error bars; written by hand, no plotting library) and <prefix>.json (every cell, every lr).
Standard library only.

A paper-protocol folder (run.py --protocol paper, the default; OUT/protocol.json says so) is reported by
report_paper.py instead: picked lr, final and best-over-evaluations metric over the final seeds, Welch's t-test
of increlora against each peer, the majority-class baseline, the ablations and the device time.
"""
import argparse
import json
import math
import os
import sys

METHOD_ORDER = ["increlora", "lora", "adalora"]
METHOD_LABEL = {"increlora": "IncreLoRA (increlora, C++)", "lora": "LoRA (PEFT)", "adalora": "AdaLoRA (PEFT)"}
METHOD_COLOR = {"increlora": "#d62728", "lora": "#1f77b4", "adalora": "#2ca02c"}
TASK_ORDER = ["sst2", "cola", "mrpc"]
TASK_LABEL = {"sst2": "SST-2", "cola": "CoLA", "mrpc": "MRPC"}
# (metric key in metrics.json's final evaluation, column title); the first is the selection metric.
TASK_METRICS = {"sst2": [("eval_accuracy", "SST-2 acc")], "cola": [("eval_matthews_correlation", "CoLA MCC")],
                "mrpc": [("eval_f1", "MRPC F1"), ("eval_accuracy", "MRPC acc")]}


def mean_std(xs):
    m = sum(xs) / len(xs)
    s = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return m, s


def load_runs(root):
    """Every metrics.json under root/<method>/<task>/r<budget>/lr<lr>/seed<seed>/; and the unreadable ones."""
    runs, bad = [], []
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith((".", "checkpoint"))]  # --resume-dir, glue checkpoints
        if "metrics.json" not in files:
            continue
        parts = os.path.relpath(dirpath, root).split(os.sep)
        if len(parts) != 5 or not parts[2].startswith("r") or not parts[3].startswith("lr"):
            continue
        method, task, budget, lr, seed = parts
        try:
            with open(os.path.join(dirpath, "metrics.json")) as f:
                m = json.load(f)
            final = m["final"]
        except (OSError, ValueError, KeyError) as e:
            bad.append(f"{dirpath}: {e}")
            continue
        runs.append(dict(method=method, task=task, budget=int(budget[1:]), lr=float(lr[2:]), seed=seed,
                         final=final, train_seconds=m.get("train_seconds"), total_rank=m.get("total_rank"),
                         rank_budget=m.get("budget")))
    return runs, bad


def aggregate(runs):
    cells = {}
    for r in runs:
        cells.setdefault((r["method"], r["budget"], r["task"]), []).append(r)
    out = []
    for (method, budget, task), rs in cells.items():
        metrics = TASK_METRICS.get(task, [("eval_accuracy", task + " acc")])
        key = metrics[0][0]
        by_lr = {}
        for r in rs:
            if r["final"].get(key) is not None:
                by_lr.setdefault(r["lr"], []).append(r)
        if not by_lr:
            continue
        per_lr = {}
        for lr, group in sorted(by_lr.items()):
            vals = {k: [100 * g["final"][k] for g in group if g["final"].get(k) is not None] for k, _ in metrics}
            per_lr[lr] = {"n": len(group), "seeds": sorted(g["seed"] for g in group),
                          **{k: dict(zip(("mean", "std"), mean_std(v)), values=v) for k, v in vals.items() if v},
                          "train_seconds": mean_std([g["train_seconds"] for g in group if g["train_seconds"]]
                                                    or [0.0])[0],
                          "total_rank": sorted({g["total_rank"] for g in group}),
                          "rank_budget": sorted({g["rank_budget"] for g in group})}
        # Best mean of the selection metric; a tie goes to the smaller lr (sorted order, strict >).
        best_lr = None
        for lr, s in per_lr.items():
            if best_lr is None or s[key]["mean"] > per_lr[best_lr][key]["mean"]:
                best_lr = lr
        out.append(dict(method=method, budget=budget, task=task, selection_metric=key, lr=best_lr,
                        **{k: per_lr[best_lr][k] for k, _ in metrics if k in per_lr[best_lr]},
                        n=per_lr[best_lr]["n"], per_lr={f"{lr:g}": v for lr, v in per_lr.items()}))
    return out


def ordered(items, order):
    return sorted(items, key=lambda x: (order.index(x) if x in order else len(order), str(x)))


def markdown(cells):
    idx = {(c["method"], c["budget"], c["task"]): c for c in cells}
    methods = ordered({c["method"] for c in cells}, METHOD_ORDER)
    budgets = sorted({c["budget"] for c in cells})
    tasks = ordered({c["task"] for c in cells}, TASK_ORDER)
    cols = [(t, k, title) for t in tasks for k, title in TASK_METRICS.get(t, [("eval_accuracy", t + " acc")])]
    lines = ["Dev-set metrics x 100 at the end of training, mean ± std over seeds, at the learning rate with the "
             "best mean selection metric (SST-2 acc, CoLA MCC, MRPC F1) per method × budget × task.", "",
             "| method | avg rank | " + " | ".join(title for _, _, title in cols) + " | mean of main metrics |",
             "|---|---|" + "---|" * len(cols) + "---|"]
    for b in budgets:
        for m in methods:
            row, mains = [], []
            for t, k, _ in cols:
                c = idx.get((m, b, t))
                if c and k in c:
                    row.append(f"{c[k]['mean']:.2f} ± {c[k]['std']:.2f}")
                    if k == c["selection_metric"]:
                        mains.append(c[k]["mean"])
                else:
                    row.append("–")
            avg = f"{sum(mains) / len(mains):.2f}" if len(mains) == len(tasks) else "–"
            lines.append(f"| {METHOD_LABEL.get(m, m)} | {b} | " + " | ".join(row) + f" | {avg} |")
    lines += ["", "Every learning rate (mean ± std of the selection metric, seeds, mean training seconds, final "
              "total rank / rank budget); * marks the selected one.", "",
              "| method | avg rank | task | lr | metric | seeds | train s | total rank / budget |",
              "|---|---|---|---|---|---|---|---|"]
    for b in budgets:
        for m in methods:
            for t in tasks:
                c = idx.get((m, b, t))
                if not c:
                    continue
                for lr, s in c["per_lr"].items():
                    k = c["selection_metric"]
                    mark = " *" if float(lr) == c["lr"] else ""
                    ranks = "/".join(str(r) for r in s["total_rank"]) + " / " + "/".join(
                        str(r) for r in s["rank_budget"])
                    lines.append(f"| {m} | {b} | {TASK_LABEL.get(t, t)} | {lr}{mark} | {s[k]['mean']:.2f} ± "
                                 f"{s[k]['std']:.2f} | {s['n']} | {s['train_seconds']:.0f} | {ranks} |")
    return "\n".join(lines) + "\n"


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def nice_step(span):
    raw = span / 5 if span > 0 else 1
    mag = 10 ** math.floor(math.log10(raw))
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def svg(cells):
    """One panel per task (its selection metric), a group of bars per budget, one bar per method."""
    idx = {(c["method"], c["budget"], c["task"]): c for c in cells}
    methods = ordered({c["method"] for c in cells}, METHOD_ORDER)
    budgets = sorted({c["budget"] for c in cells})
    tasks = ordered({c["task"] for c in cells}, TASK_ORDER)
    pw, ph, left, top, bottom, gap = 260, 240, 55, 50, 45, 30
    width = max(760, left + len(tasks) * (pw + gap) + 10)  # room for the title and the legend
    height = top + ph + bottom + 48
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">GLUE dev, all-MiniLM-L6-v2: '
           f'mean ± std over seeds, best lr per cell</text>']
    for ti, t in enumerate(tasks):
        key = TASK_METRICS.get(t, [("eval_accuracy", "")])[0][0]
        title = TASK_METRICS.get(t, [("", TASK_LABEL.get(t, t))])[0][1]
        vals = [(idx[(m, b, t)][key]["mean"], idx[(m, b, t)][key]["std"])
                for m in methods for b in budgets if (m, b, t) in idx and key in idx[(m, b, t)]]
        if not vals:
            continue
        lo = min(v - s for v, s in vals)
        hi = max(v + s for v, s in vals)
        # Bars start at a round value below the data so that differences of a point stay visible; say so.
        step = nice_step(max(hi - lo, 1.0))
        y0 = math.floor((lo - 0.5 * step) / step) * step
        y1 = math.ceil((hi + 0.25 * step) / step) * step
        x0 = left + ti * (pw + gap)

        def ypos(v):
            return top + ph - (v - y0) / (y1 - y0) * ph

        base = 0.0 if y0 <= 0.0 <= y1 else y0  # bars grow from 0 when it is on the axis (MCC can be < 0)

        out.append(f'<text x="{x0 + pw / 2}" y="{top - 12}" text-anchor="middle" font-size="13">{esc(title)}</text>')
        v = y0
        while v <= y1 + 1e-9:
            y = ypos(v)
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{x0 - 4}" y="{y + 4:.1f}" text-anchor="end">{v:g}</text>')
            v += step
        out.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{top + ph}" stroke="black"/>')
        out.append(f'<line x1="{x0}" y1="{top + ph}" x2="{x0 + pw}" y2="{top + ph}" stroke="black"/>')
        group_w = pw / len(budgets)
        bar_w = group_w * 0.8 / max(1, len(methods))
        for bi, b in enumerate(budgets):
            gx = x0 + bi * group_w + group_w * 0.1
            out.append(f'<text x="{x0 + (bi + 0.5) * group_w:.1f}" y="{top + ph + 16}" '
                       f'text-anchor="middle">avg rank {b}</text>')
            for mi, m in enumerate(methods):
                c = idx.get((m, b, t))
                if not c or key not in c:
                    continue
                mean, std = c[key]["mean"], c[key]["std"]
                bx = gx + mi * bar_w
                yb, yt = ypos(base), ypos(mean)
                out.append(f'<rect x="{bx:.1f}" y="{min(yt, yb):.1f}" width="{bar_w * 0.92:.1f}" '
                           f'height="{abs(yb - yt):.1f}" fill="{METHOD_COLOR.get(m, "#777")}">'
                           f'<title>{esc(m)} r{b} {esc(title)}: {mean:.2f} ± {std:.2f} (lr {c["lr"]:g}, '
                           f'n={c["n"]})</title></rect>')
                cx = bx + bar_w * 0.46
                ya, yb2 = ypos(mean - std), ypos(mean + std)
                out.append(f'<line x1="{cx:.1f}" y1="{ya:.1f}" x2="{cx:.1f}" y2="{yb2:.1f}" stroke="black"/>')
                for yy in (ya, yb2):
                    out.append(f'<line x1="{cx - 3:.1f}" y1="{yy:.1f}" x2="{cx + 3:.1f}" y2="{yy:.1f}" '
                               f'stroke="black"/>')
    lx = left
    ly = top + ph + bottom + 12
    for m in methods:
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{METHOD_COLOR.get(m, "#777")}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly}">{esc(METHOD_LABEL.get(m, m))}</text>')
        lx += 16 + 8 * len(METHOD_LABEL.get(m, m)) + 20
    out.append(f'<text x="{left}" y="{ly + 20}" fill="#666">Bars start at 0 when 0 is on the axis, else at the '
               f'axis minimum; error bars: ±1 sample std.</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def is_paper(root):
    """A paper-protocol folder: run.py wrote protocol.json or job.json files saying so."""
    try:
        with open(os.path.join(root, "protocol.json")) as f:
            return json.load(f).get("protocol") == "paper"
    except (OSError, ValueError):
        return False


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("root", help="run.py's --out folder")
    ap.add_argument("--prefix", help="output path without extension (default: ROOT/report)")
    ap.add_argument("--require-all", action="store_true",
                    help="fail when a metrics.json is unreadable or none is found (the smoke test)")
    ap.add_argument("--data-dir", help="GLUE folder for the majority baseline (default: the run's, or "
                                       "../shared/data/glue)")
    a = ap.parse_args(argv)
    if is_paper(a.root):
        import report_paper
        return report_paper.main(a)
    runs, bad = load_runs(a.root)
    for b in bad:
        print(f"report.py: skipped {b}", file=sys.stderr)
    if not runs:
        print(f"report.py: no results under {a.root}", file=sys.stderr)
        return 1
    if bad and a.require_all:
        return 1
    cells = aggregate(runs)
    prefix = a.prefix or os.path.join(a.root, "report")
    md = markdown(cells)
    with open(prefix + ".md", "w") as f:
        f.write(md)
    with open(prefix + ".svg", "w") as f:
        f.write(svg(cells))
    summary = {"selection": "per method x budget x task, the lr with the best mean (over seeds) final dev value "
                            "of the selection metric; mean and sample std over seeds at that lr; values x 100",
               "runs": len(runs), "cells": sorted(cells, key=lambda c: (c["method"], c["budget"], c["task"]))}
    with open(prefix + ".json", "w") as f:
        json.dump(summary, f, indent=2)
    print(md)
    print(f"report.py: {len(runs)} runs in {len(cells)} cells; wrote {prefix}.md, {prefix}.svg, {prefix}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
