#!/usr/bin/env python3
"""Merges bench_step and peers.py JSON into one results file and prints the side-by-side table.

  report.py merge --out results/2025-01-01.json a.json b.json ...   # records of the inputs replace equal keys
  report.py table results/2025-01-01.json [--markdown]

A record's key is (impl, peer, model, tiny, layers, dtype, device, batch, seq): merging into an existing file
keeps its other records, so a run split over several commands ends in one file. Ratios are increlora's median
step time (or peak memory) divided by the peer's: below 1 means increlora is faster (smaller).
"""
import argparse
import json
import os
import sys

KEY = ("impl", "peer", "model", "tiny", "layers", "dtype", "device", "batch", "seq")
ORDER = ["increlora_scoring", "increlora_after_budget", "increlora_scoring_eager", "increlora_after_budget_eager",
         "increlora_frozen_forward", "lora", "lora_compiled",
         "lora_compiled_opt", "adalora", "full", "full_compiled", "frozen_forward", "frozen_forward_compiled"]
INCRELORA = ["increlora_scoring", "increlora_after_budget"]


def load(path):
    with open(path) as f:
        doc = json.load(f)
    if isinstance(doc, dict) and "results" in doc:
        return doc.get("meta", {}), doc["results"]
    if isinstance(doc, dict):
        return {}, [doc]  # one bench_step record
    return {}, list(doc)


def device_name(d):
    """"cuda:0" and "cuda" are the same device here (one GPU per run)."""
    return "cuda" if isinstance(d, str) and d.startswith("cuda") else d


def key(r):
    return tuple(json.dumps(device_name(r.get(k)) if k == "device" else r.get(k)) for k in KEY)


def merge(out, inputs):
    meta, records = {}, {}
    if os.path.exists(out):
        meta, old = load(out)
        for r in old:
            records[key(r)] = r
    for path in inputs:
        m, rs = load(path)
        meta.update(m)
        for r in rs:
            if r.get("impl") == "increlora-cpp":
                meta.setdefault("libtorch", r.get("torch_version"))
            records[key(r)] = r
    doc = {"meta": meta, "results": list(records.values())}
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=2)
        f.write("\n")
    os.replace(tmp, out)
    return doc


def mib(b):
    return "-" if b is None else "%.0f" % (b / 2**20)


def table(doc, markdown=False):
    groups = {}
    for r in doc["results"]:
        g = (r.get("model"), r.get("tiny", False), r.get("dtype"), device_name(r.get("device")), r.get("batch"),
             r.get("seq"))
        groups.setdefault(g, []).append(r)
    lines = []
    meta = doc.get("meta", {})
    if meta:
        lines.append(", ".join("%s %s" % (k, v) for k, v in meta.items() if k in
                               ("gpu", "torch", "libtorch", "transformers", "peft", "cuda", "python")))
    for g in sorted(groups, key=lambda g: tuple(str(x) for x in g)):
        model, tiny, dtype, device, batch, seq = g
        rs = {r["peer"]: r for r in groups[g]}
        inc = {p: rs[p] for p in INCRELORA if p in rs and "median_ms" in rs[p]}
        head = ["peer", "median ms", "p10", "p90", "peak alloc MiB", "peak reserved MiB"]
        for p in inc:
            short = p.replace("increlora_", "")
            head += ["%s ÷ peer (time)" % short, "%s ÷ peer (mem)" % short]
        rows = []
        for p in sorted(rs, key=lambda p: ORDER.index(p) if p in ORDER else len(ORDER)):
            r = rs[p]
            if "median_ms" not in r:
                rows.append([p, r.get("skipped") or ("error: " + r.get("error", "?"))[:60]] + [""] * (len(head) - 2))
                continue
            row = [p, "%.2f" % r["median_ms"], "%.2f" % r["p10_ms"], "%.2f" % r["p90_ms"],
                   mib(r.get("peak_allocated_bytes")), mib(r.get("peak_reserved_bytes"))]
            for i in inc.values():
                if p in INCRELORA:  # increlora beside itself: no ratio
                    row += ["", ""]
                    continue
                row.append("%.2f" % (i["median_ms"] / r["median_ms"]))
                # A CUDA-graph replay allocates nothing (its activations sit in the graph's private pool), so
                # when either side replays graphs the allocated peak misses them: compare reserved peaks instead.
                graphs = "_compiled" in p or bool(i.get("cuda_graphs")) or bool(r.get("cuda_graphs"))
                which = "peak_reserved_bytes" if graphs else "peak_allocated_bytes"
                pa, pb = i.get(which), r.get(which)
                row.append(("%.2f" % (pa / pb) + ("†" if graphs else "")) if pa and pb else "-")
            rows.append(row)
        title = "%s%s, %s, %s, batch %s x %s" % (model, " (tiny)" if tiny else "", dtype, device, batch, seq)
        breakdowns = ["%s: %s" % (p, ", ".join("%s %.2f ms" % kv for kv in rs[p]["breakdown_ms"].items()))
                      for p in rs if "breakdown_ms" in rs[p]]
        lines.append("")
        if markdown:
            lines.append("### " + title)
            lines.append("")
            lines.append("| " + " | ".join(head) + " |")
            lines.append("|" + "|".join("---" for _ in head) + "|")
            lines += ["| " + " | ".join(row) + " |" for row in rows]
        else:
            lines.append(title)
            widths = [max(len(str(x[i])) for x in [head] + rows) for i in range(len(head))]
            fmt = lambda row: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w)
                                        for i, (c, w) in enumerate(zip(row, widths)))
            lines.append(fmt(head))
            lines += [fmt(row) for row in rows]
        if inc and (any("_compiled" in p for p in rs) or any(r.get("cuda_graphs") for r in rs.values())):
            lines.append(("\n" if markdown else "") + "† peak reserved ÷ peak reserved: under CUDA graphs the "
                         "allocated peak misses the graph's memory pool")
        for b in breakdowns:
            lines.append(("" if not markdown else "\n") + "breakdown (medians, synchronised parts) " + b)
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("merge")
    m.add_argument("--out", required=True)
    m.add_argument("inputs", nargs="+")
    t = sub.add_parser("table")
    t.add_argument("file")
    t.add_argument("--markdown", action="store_true")
    args = ap.parse_args()
    if args.cmd == "merge":
        merge(args.out, args.inputs)
    else:
        print(table(load_doc(args.file), args.markdown))
    return 0


def load_doc(path):
    meta, records = load(path)
    return {"meta": meta, "results": records}


if __name__ == "__main__":
    sys.exit(main())
