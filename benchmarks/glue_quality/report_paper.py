#!/usr/bin/env python3
"""report.py for a paper-protocol folder (run.py --protocol paper): per task and budget, for each method
(increlora, lora, adalora, head) the picked lr (best mean final dev metric over the select seeds, as run.py picks
it), mean ± sample std over the final seeds of the final metric and of the best over the run's evaluations,
Welch's t-test p-value (two-sided) of increlora against each peer on both, the majority-class baseline, the
IncreLoRA ablations (seeds 1-3 at its pick) beside increlora's own select runs at that lr, the device time used,
and an SVG plot. Cells with missing runs are marked partial with their n. Standard library only; called by
report.py, which writes <prefix>.md, .svg and .json."""
import json
import math
import os
import sys

import glue_data
import protocol as P

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
METHODS = ["increlora", "lora", "adalora", "head"]
LABEL = {"increlora": "IncreLoRA (increlora, C++)", "lora": "LoRA (PEFT)", "adalora": "AdaLoRA (PEFT)",
         "head": "head only (glue, no adapters)"}
COLOR = {"increlora": "#d62728", "lora": "#1f77b4", "adalora": "#2ca02c", "head": "#7f7f7f"}
TASKS = ["mrpc", "cola", "sst2"]
TASK_LABEL = {"sst2": "SST-2 acc", "cola": "CoLA MCC", "mrpc": "MRPC F1"}


def x100(v):
    return None if v is None else 100 * v


def fmt(ms, n=None, want=None):
    m, s = ms
    if m is None:
        return "–"
    text = f"{m:.2f} ± {s:.2f}"
    if want is not None and n is not None and n < want:
        text += f" (partial, n={n}/{want})"
    return text


def fmt_p(w):
    if w is None:
        return "–"
    p = w["p"]
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def values(root, method, task, budget, lr, seeds, which):
    """main metric x 100 of the done runs among seeds at lr (which: final or best), and how many are done."""
    key = P.MAIN_METRIC[task]
    out, n = [], 0
    for s in seeds:
        m = P.read_metrics(P.job_dir(root, method, task, budget, lr, s))
        if m is None:
            continue
        n += 1
        v = P.main_value(m, key, which)
        if v is not None:
            out.append(100 * v)
    return out, n


def majority(data_dir, task):
    try:
        y = glue_data.dev_labels(os.path.join(data_dir, P.TASK_DIRS[task]), task)
    except OSError:
        return None
    top = max(sorted(set(y)), key=y.count)
    m = glue_data.task_metrics(task, [top] * len(y), y)
    return {"label": top, **{k: 100 * v for k, v in m.items()}}


def collect(root, proto, data_dir):
    lrs = proto.get("lrs", P.PAPER_LRS)
    sel, fin = proto.get("select_seeds", P.SELECT_SEEDS), proto.get("final_seeds", P.FINAL_SEEDS)
    abl_seeds, max_ext = proto.get("ablation_seeds", P.ABLATION_SEEDS), proto.get("max_extensions", P.MAX_EXTENSIONS)
    present = {}  # (method folder) -> {task: {budget}}
    for method in sorted(os.listdir(root)):
        mdir = os.path.join(root, method)
        if not os.path.isdir(mdir) or method.startswith("."):
            continue
        for task in sorted(os.listdir(mdir)):
            if task in P.TASK_DIRS and os.path.isdir(os.path.join(mdir, task)):
                for b in os.listdir(os.path.join(mdir, task)):
                    if b.startswith("r") and b[1:].isdigit():
                        present.setdefault(method, {}).setdefault(task, set()).add(int(b[1:]))
    budgets = sorted({b for m, ts in present.items() if m != "head" for bs in ts.values() for b in bs if b > 0})
    tasks = [t for t in TASKS if any(t in ts for ts in present.values())]
    cells = []
    for t in tasks:
        for b in budgets:
            for m in METHODS:
                bb = 0 if m == "head" else b
                if bb not in present.get(m, {}).get(t, set()):
                    continue
                st = P.select_state(root, m, t, bb, lrs, sel, max_ext)
                c = dict(method=m, task=t, budget=b, folder_budget=bb, grid=st["grid"], pick=st["pick"],
                         settled=st["settled"], edge=st["edge"],
                         select={P.fmt_lr(lr): dict(zip(("n", "mean", "std"), (len(v),) + P.mean_std(v)))
                                 for lr in st["grid"] for v in [values(root, m, t, bb, lr, sel, "final")[0]]})
                if st["settled"]:
                    for which in ("final", "best"):
                        v, n = values(root, m, t, bb, st["pick"], fin, which)
                        c[which] = dict(values=v, n=n, want=len(fin), mean=P.mean_std(v)[0], std=P.mean_std(v)[1])
                    if t == "mrpc":
                        acc = []
                        for s in fin:
                            mm = P.read_metrics(P.job_dir(root, m, t, bb, st["pick"], s))
                            if mm and mm["final"].get("eval_accuracy") is not None:
                                acc.append(100 * mm["final"]["eval_accuracy"])
                        c["mrpc_acc"] = dict(zip(("mean", "std"), P.mean_std(acc)), n=len(acc))
                cells.append(c)
    idx = {(c["method"], c["task"], c["budget"]): c for c in cells}
    for c in cells:
        ref = idx.get(("increlora", c["task"], c["budget"]))
        if c["method"] != "increlora" and ref and "final" in ref and "final" in c:
            c["welch_final"] = P.welch(ref["final"]["values"], c["final"]["values"])
            c["welch_best"] = P.welch(ref["best"]["values"], c["best"]["values"])
    ablations = []
    for t in tasks:
        for b in budgets:
            ref = idx.get(("increlora", t, b))
            if not ref or not ref["settled"]:
                continue
            rows = []
            for name in ["(increlora itself)"] + list(P.ABLATIONS):
                folder = "increlora" if name.startswith("(") else P.ABLATION_PREFIX + name
                seeds = abl_seeds if not name.startswith("(") else abl_seeds
                vf, n = values(root, folder, t, b, ref["pick"], seeds, "final")
                vb, _ = values(root, folder, t, b, ref["pick"], seeds, "best")
                if n == 0 and not name.startswith("("):
                    if not os.path.isdir(os.path.join(root, folder)):
                        continue
                rows.append(dict(name=name, n=n, want=len(seeds), final=P.mean_std(vf), best=P.mean_std(vb),
                                 final_values=vf, best_values=vb))
            ablations.append(dict(task=t, budget=b, lr=ref["pick"], rows=rows))
    base = {t: majority(data_dir, t) for t in tasks}
    return cells, ablations, base, budgets, tasks


def device_time(root):
    train = wall = lost = 0.0
    runs = 0
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith((".", "checkpoint"))]  # --resume-dir, glue checkpoints
        if "metrics.json" in files:
            m = P.read_metrics(dirpath)
            if m:
                runs += 1
                train += m.get("train_seconds") or 0.0
        if "run.json" in files:
            try:
                with open(os.path.join(dirpath, "run.json")) as f:
                    r = json.load(f)
                wall += r.get("wall_seconds", 0.0)
                lost += r.get("lost_seconds", 0.0)
            except (OSError, ValueError):
                pass
    inv, n_inv = 0.0, 0
    try:
        with open(os.path.join(root, "invocations.jsonl")) as f:
            for line in f:
                inv += json.loads(line).get("wall_seconds", 0.0)
                n_inv += 1
    except (OSError, ValueError):
        pass
    return dict(runs=runs, train_seconds=train, job_wall_seconds=wall, lost_seconds=lost,
                invocation_wall_seconds=inv, invocations=n_inv)


def markdown(cells, ablations, base, budgets, tasks, dt, proto):
    idx = {(c["method"], c["task"], c["budget"]): c for c in cells}
    nf = len(proto.get("final_seeds", P.FINAL_SEEDS))
    L = ["# GLUE dev, all-MiniLM-L6-v2, paper protocol", "",
         f"Metrics × 100 (SST-2 accuracy, CoLA Matthews correlation, MRPC F1). lr: picked on seeds "
         f"{proto.get('select_seeds', P.SELECT_SEEDS)} by the best mean final metric; final / best: mean ± sample "
         f"std over the final seeds {proto.get('final_seeds', P.FINAL_SEEDS)} of the metric at the end of training / "
         "of the best over the run's evaluations; p: Welch's t-test (two-sided) of increlora against that row. "
         "head: no adapters (pooler + classifier), the same at every budget.", ""]
    for b in budgets:
        L += [f"## average rank {b}", "",
              "| task | method | lr | final | best of evaluations | p (final) | p (best) |", "|---|---|---|---|---|---|---|"]
        for t in tasks:
            for m in METHODS:
                c = idx.get((m, t, b))
                if not c:
                    continue
                if not c["settled"]:
                    done = sum(v["n"] for v in c["select"].values())
                    L.append(f"| {t} | {m} | selecting ({done} select runs done) | – | – | – | – |")
                    continue
                lr = P.fmt_lr(c["pick"]) + (f" ({c['edge']} edge)" if c["edge"] else "")
                fin, best = c["final"], c["best"]
                L.append(f"| {t} | {m} | {lr} | {fmt((fin['mean'], fin['std']), fin['n'], nf)} | "
                         f"{fmt((best['mean'], best['std']), best['n'], nf)} | {fmt_p(c.get('welch_final'))} | "
                         f"{fmt_p(c.get('welch_best'))} |")
            if base.get(t):
                key = P.MAIN_METRIC[t][5:]
                L.append(f"| {t} | majority class | – | {base[t][key]:.2f} | – | – | – |")
        L.append("")
    mr = [c for c in cells if c["task"] == "mrpc" and "mrpc_acc" in c]
    if mr:
        L += ["MRPC accuracy at the F1-picked lr (final, mean ± std over the final seeds): " +
              "; ".join(f"{c['method']} r{c['budget']} {fmt((c['mrpc_acc']['mean'], c['mrpc_acc']['std']))}"
                        for c in mr) + (f"; majority {base['mrpc']['accuracy']:.2f}" if base.get("mrpc") else ""), ""]
    L += ["## Majority-class baseline (dev labels, no training)", "", "| task | class | metrics |", "|---|---|---|"]
    for t in tasks:
        if base.get(t):
            L.append(f"| {t} | {base[t]['label']} | " + ", ".join(f"{k} {v:.2f}" for k, v in base[t].items()
                                                                 if k != "label") + " |")
        else:
            L.append(f"| {t} | – | dev.tsv not found (--data-dir) |")
    L += ["", "## IncreLoRA ablations (at increlora's picked lr; seeds "
          f"{proto.get('ablation_seeds', P.ABLATION_SEEDS)}; the first row is increlora's own select runs there)", "",
          "| task | rank | lr | variant | final | best of evaluations | Δ final | p (final) |",
          "|---|---|---|---|---|---|---|---|"]
    for ab in ablations:
        ref = ab["rows"][0]
        for r in ab["rows"]:
            d = (f"{r['final'][0] - ref['final'][0]:+.2f}" if r is not ref and r["final"][0] is not None
                 and ref["final"][0] is not None else "")
            w = P.welch(ref["final_values"], r["final_values"]) if r is not ref else None
            L.append(f"| {ab['task']} | {ab['budget']} | {P.fmt_lr(ab['lr'])} | {r['name']} | "
                     f"{fmt(r['final'], r['n'], r['want'])} | {fmt(r['best'], r['n'], r['want'])} | {d} | "
                     f"{fmt_p(w) if w else ''} |")
    L += ["", "## lr selection (final metric, mean ± std over the select seeds, n)", "",
          "| task | rank | method | " + "lr: mean ± std (n) … |", "|---|---|---|---|"]
    for c in cells:
        parts = []
        for lr, v in c["select"].items():
            mark = "*" if c["pick"] is not None and lr == P.fmt_lr(c["pick"]) else ""
            parts.append(f"{lr}{mark}: {fmt((v['mean'], v['std']))} ({v['n']})")
        L.append(f"| {c['task']} | {c['folder_budget']} | {c['method']} | " + "; ".join(parts) + " |")
    L += ["", "## Device time", "",
          f"{dt['runs']} finished runs; training {dt['train_seconds'] / 3600:.2f} h summed over runs; job wall time "
          f"{dt['job_wall_seconds'] / 3600:.2f} h summed (of which {dt['lost_seconds'] / 3600:.2f} h lost: trained "
          f"after a job's last checkpoint when it was killed); run.py invocations {dt['invocations']}, {dt['invocation_wall_seconds'] / 3600:.2f} h "
          "of wall time (jobs run concurrently, so this is the device time).", ""]
    return "\n".join(L) + "\n"


def esc(s):
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def svg(cells, base, budgets, tasks, nf):
    idx = {(c["method"], c["task"], c["budget"]): c for c in cells}
    pw, ph, left, top, gap = 300, 240, 55, 50, 35
    width = max(820, left + len(tasks) * (pw + gap) + 10)
    height = top + ph + 100
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" '
           f'font-size="12">', f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">GLUE dev, all-MiniLM-L6-v2, paper '
           f'protocol: final metric, mean ± std over the final seeds at each method\'s picked lr</text>']
    for ti, t in enumerate(tasks):
        vals = [(idx[k]["final"]["mean"], idx[k]["final"]["std"]) for k in idx
                if k[1] == t and "final" in idx[k] and idx[k]["final"]["mean"] is not None]
        if base.get(t):
            vals.append((base[t][P.MAIN_METRIC[t][5:]], 0.0))
        if not vals:
            continue
        lo, hi = min(v - s for v, s in vals), max(v + s for v, s in vals)
        span = max(hi - lo, 1.0)
        raw = span / 5
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
        y0 = math.floor((lo - 0.5 * step) / step) * step
        y1 = math.ceil((hi + 0.25 * step) / step) * step
        x0 = left + ti * (pw + gap)

        def ypos(v):
            return top + ph - (v - y0) / (y1 - y0) * ph
        out.append(f'<text x="{x0 + pw / 2}" y="{top - 12}" text-anchor="middle" font-size="13">'
                   f'{esc(TASK_LABEL[t])}</text>')
        v = y0
        while v <= y1 + 1e-9:
            out.append(f'<line x1="{x0}" y1="{ypos(v):.1f}" x2="{x0 + pw}" y2="{ypos(v):.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{x0 - 4}" y="{ypos(v) + 4:.1f}" text-anchor="end">{v:g}</text>')
            v += step
        out.append(f'<line x1="{x0}" y1="{top}" x2="{x0}" y2="{top + ph}" stroke="black"/>')
        out.append(f'<line x1="{x0}" y1="{top + ph}" x2="{x0 + pw}" y2="{top + ph}" stroke="black"/>')
        if base.get(t):
            yb = ypos(base[t][P.MAIN_METRIC[t][5:]])
            out.append(f'<line x1="{x0}" y1="{yb:.1f}" x2="{x0 + pw}" y2="{yb:.1f}" stroke="black" '
                       f'stroke-dasharray="4,3"><title>majority class</title></line>')
        gw = pw / max(1, len(budgets))
        bw = gw * 0.8 / len(METHODS)
        axis_base = 0.0 if y0 <= 0.0 <= y1 else y0
        for bi, b in enumerate(budgets):
            out.append(f'<text x="{x0 + (bi + 0.5) * gw:.1f}" y="{top + ph + 16}" text-anchor="middle">avg rank '
                       f'{b}</text>')
            for mi, m in enumerate(METHODS):
                c = idx.get((m, t, b))
                if not c or "final" not in c or c["final"]["mean"] is None:
                    continue
                mean, std, n = c["final"]["mean"], c["final"]["std"], c["final"]["n"]
                bx = x0 + bi * gw + gw * 0.1 + mi * bw
                ya, yt = ypos(axis_base), ypos(mean)
                partial = n < nf
                out.append(f'<rect x="{bx:.1f}" y="{min(ya, yt):.1f}" width="{bw * 0.92:.1f}" '
                           f'height="{abs(ya - yt):.1f}" fill="{COLOR[m]}"' +
                           (' fill-opacity="0.4"' if partial else '') +
                           f'><title>{esc(m)} r{b}: {mean:.2f} ± {std:.2f}, lr {P.fmt_lr(c["pick"])}, n={n}'
                           f'</title></rect>')
                cx = bx + bw * 0.46
                out.append(f'<line x1="{cx:.1f}" y1="{ypos(mean - std):.1f}" x2="{cx:.1f}" '
                           f'y2="{ypos(mean + std):.1f}" stroke="black"/>')
                if partial:
                    out.append(f'<text x="{cx:.1f}" y="{ypos(mean + std) - 3:.1f}" text-anchor="middle" '
                               f'font-size="9">n={n}</text>')
    lx, ly = left, top + ph + 50
    for m in METHODS:
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{COLOR[m]}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly}">{esc(LABEL[m])}</text>')
        lx += 16 + 7 * len(LABEL[m]) + 18
    out.append(f'<text x="{left}" y="{ly + 22}" fill="#666">Dashed: majority class. Pale bars: partial '
               f'(fewer than {nf} final seeds, n shown). Error bars: ±1 sample std.</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(a):
    root = a.root
    with open(os.path.join(root, "protocol.json")) as f:
        proto = json.load(f)
    data_dir = a.data_dir or (os.path.join(ROOT, proto["data_dir"]) if proto.get("data_dir") else None)
    if not data_dir or not os.path.isdir(data_dir):
        data_dir = os.path.join(os.path.dirname(ROOT), "shared", "data", "glue")
    cells, ablations, base, budgets, tasks = collect(root, proto, data_dir)
    if not cells:
        print(f"report.py: no paper-protocol results under {root}", file=sys.stderr)
        return 1
    if a.require_all and not all(c["settled"] and c["final"]["n"] == c["final"]["want"] for c in cells):
        print("report.py: some cells are incomplete (--require-all)", file=sys.stderr)
        return 1
    dt = device_time(root)
    prefix = a.prefix or os.path.join(root, "report")
    nf = len(proto.get("final_seeds", P.FINAL_SEEDS))
    md = markdown(cells, ablations, base, budgets, tasks, dt, proto)
    with open(prefix + ".md", "w") as f:
        f.write(md)
    with open(prefix + ".svg", "w") as f:
        f.write(svg(cells, base, budgets, tasks, nf))
    with open(prefix + ".json", "w") as f:
        json.dump(dict(protocol=proto, cells=cells, ablations=ablations, majority=base, device_time=dt), f,
                  indent=1, default=lambda x: None)
    print(md)
    print(f"report.py: {len(cells)} cells; wrote {prefix}.md, {prefix}.svg, {prefix}.json")
    return 0
