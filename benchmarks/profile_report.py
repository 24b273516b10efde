#!/usr/bin/env python3
"""The device time of one training step by category, from bench_step --profile files (issue 14).

    python3 benchmarks/profile_report.py PROFILE.json [PROFILE2.json ...] [--top N]

bench_step --profile writes, per CUDA kernel name, the part of the step that launched it (forward_backward,
allocator, optimizer: the device is synchronised between them while profiling) and its device microseconds per
step. Here each kernel is put into a category by its name:

  gemm         matrix products (cuBLAS / cuBLASLt / CUTLASS kernels): the frozen base weights' products and the
               adapter branch's skinny ones alike (the kernel names do not tell them apart)
  attention    softmax and fused attention kernels
  norm         LayerNorm forward and backward
  dropout      dropout masks and their application
  reduction    sums and norms (bias gradients, the score's reductions, gradient clipping)
  optimizer    every kernel launched by the optimizer step
  allocator    every kernel launched by update_and_increase
  copy/cast    copies, dtype conversions, fills
  elementwise  the rest of the pointwise kernels (GELU, adds, scales, masks)

Standard library only.
"""
import argparse
import json
import re
import sys

CATEGORIES = ["gemm", "attention", "norm", "dropout", "reduction", "elementwise", "copy/cast", "optimizer",
              "allocator", "other"]

_RULES = [
    ("gemm", re.compile(r"gemm|nvjet|cutlass|xmma|sm\d+_.*(s|h|bf16)\w*_tn|splitKreduce|cublas|gemv|dot_kernel",
                        re.I)),
    ("attention", re.compile(r"softmax|fmha|flash|attention|efficient_attention", re.I)),
    ("norm", re.compile(r"layer_norm|LayerNorm|rms_norm|GammaBeta", re.I)),
    ("dropout", re.compile(r"dropout|fused_dropout|bernoulli|philox|masked_scale", re.I)),
    ("reduction", re.compile(r"reduce_kernel|Reduce|norm_kernel|sum_kernel|cub::|radix|topk|sort", re.I)),
    ("copy/cast", re.compile(r"copy|cast|fill|Memset|Memcpy|index_put|index_select|cat_|CatArray|gather|scatter",
                             re.I)),
]


def category(part, kernel):
    if part in ("optimizer", "allocator"):
        return part
    for name, pattern in _RULES:
        if pattern.search(kernel):
            return name
    if re.search(r"elementwise|vectorized|unrolled|pointwise|Functor|kernel", kernel, re.I):
        return "elementwise"
    return "other"


def kernels(profile):
    # Kineto mirrors the step's user scopes onto the GPU timeline as annotations ("step.*"): spans, not kernels
    # (bench_step leaves them out since; older files have them).
    return [r for r in profile["kernels"] if not r["kernel"].startswith("step.")]


def summarise(profile):
    by = {c: [0.0, 0.0] for c in CATEGORIES}
    for row in kernels(profile):
        c = category(row["part"], row["kernel"])
        by[c][0] += row["us_per_step"]
        by[c][1] += row["launches_per_step"]
    return by


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("profiles", nargs="+")
    ap.add_argument("--top", type=int, default=0, help="also list the N kernels with the most device time")
    a = ap.parse_args()
    profiles = []
    for path in a.profiles:
        with open(path) as f:
            profiles.append(json.load(f))
    labels = [f"{p['model']} {p['dtype']} {p['phase']}{'' if p.get('graphs', True) else ' eager'}" for p in profiles]
    sums = [summarise(p) for p in profiles]
    sep = " | "
    print("| category" + sep + sep.join(f"{l}: ms (launches)" for l in labels) + " |")
    print("|---" * (len(labels) + 1) + "|")
    for c in CATEGORIES:
        if all(s[c][0] == 0 for s in sums):
            continue
        cells = [f"{s[c][0] / 1e3:.3f} ({s[c][1]:.0f})" for s in sums]
        print(f"| {c}" + sep + sep.join(cells) + " |")
    totals = [f"**{sum(v[0] for v in s.values()) / 1e3:.3f}** ({sum(v[1] for v in s.values()):.0f})"
              for s in sums]
    print("| device time per step" + sep + sep.join(totals) + " |")
    if a.top:
        for label, p in zip(labels, profiles):
            print(f"\n{label}: the {a.top} kernels with the most device time per step")
            rows = sorted(kernels(p), key=lambda r: -r["us_per_step"])[: a.top]
            for r in rows:
                print(f"  {r['us_per_step'] / 1e3:8.3f} ms  {r['launches_per_step']:6.0f}x  {r['part']:16s} "
                      f"{category(r['part'], r['kernel']):11s} {r['kernel'][:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
