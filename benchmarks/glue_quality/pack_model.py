#!/usr/bin/env python3
"""Writes an fp16 copy of a Hugging Face BERT checkpoint directory, small enough to carry to the GPU machine.

The GPU machine has no network and receives at most 64 MiB from here; all-MiniLM-L6-v2's model.safetensors is
87 MB in fp32 and 44 MB in fp16. Both sides of the GLUE comparison read the fp16 file into fp32 weights (glue's
load_pretrained copies each tensor into the fp32 parameter; peft_glue.py loads with dtype=float32), so both start
from the same, fp16-rounded, pretrained weights and train in fp32.

    python benchmarks/glue_quality/pack_model.py [--src ~/.cache/increlora/models/all-MiniLM-L6-v2] \
        --dst .device/minilm-fp16

Copies config.json, vocab.txt and the tokenizer files as they are; floating-point tensors become fp16, others
(position_ids) are kept. Needs torch and safetensors.
"""
import argparse
import os
import shutil
import sys

# Everything a BertTokenizer / BertConfig needs from the directory; missing optional files are skipped.
SIDE_FILES = ["config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json"]


def default_src():
    cache = os.environ.get("INCRELORA_CACHE", os.path.expanduser("~/.cache/increlora"))
    return os.path.join(cache, "models", "all-MiniLM-L6-v2")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=default_src(), help="checkpoint directory (default: %(default)s)")
    ap.add_argument("--dst", required=True, help="output directory (created)")
    args = ap.parse_args()

    import torch
    from safetensors.torch import load_file, save_file

    src_st = os.path.join(args.src, "model.safetensors")
    if not os.path.isfile(src_st):
        sys.exit(f"pack_model: {src_st} does not exist (scripts/setup.sh prepares the MiniLM checkpoint)")
    os.makedirs(args.dst, exist_ok=True)
    for name in SIDE_FILES:
        path = os.path.join(args.src, name)
        if os.path.isfile(path):
            shutil.copyfile(path, os.path.join(args.dst, name))
    tensors = load_file(src_st)
    half = {k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    # Any value beyond fp16's range would become inf and poison training on both sides: refuse rather than pack.
    bad = [k for k, v in half.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        sys.exit(f"pack_model: tensors overflow fp16: {', '.join(bad)}")
    dst_st = os.path.join(args.dst, "model.safetensors")
    save_file(half, dst_st, metadata={"format": "pt"})
    worst = max(float((tensors[k].float() - half[k].float()).abs().max()) for k in half if half[k].is_floating_point())
    print(f"pack_model: wrote {dst_st} ({os.path.getsize(dst_st) / 1e6:.1f} MB, {len(half)} tensors, "
          f"max abs rounding error {worst:.2e})")


if __name__ == "__main__":
    main()
