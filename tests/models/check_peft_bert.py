"""The Python half of the PEFT check on a transformers model, run by ctest.

Runs tests/models/peft_bert_fixture.cpp (all-MiniLM-L6-v2 with IncreLoRA adapters trained a few steps in C++,
exported in PEFT's format), then loads transformers' BertModel from the same checkpoint, wraps it with
peft.PeftModel.from_pretrained(model, export) and checks that it computes what the C++ model computed.

usage: check_peft_bert.py --fixture PATH --model_dir DIR --workdir DIR
"""
import argparse
import json
import os
import subprocess
import sys

import peft
import torch
from safetensors.torch import load_file
from transformers import BertModel


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", required=True)
    ap.add_argument("--model_dir", required=True)
    ap.add_argument("--workdir", required=True)
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    subprocess.run([args.fixture, args.model_dir, args.workdir], check=True)

    export = os.path.join(args.workdir, "peft")
    with open(os.path.join(export, "adapter_config.json")) as f:
        ranks = json.load(f)["rank_pattern"]
    assert len(set(ranks.values())) > 1, f"the ranks should differ between layers: {ranks}"

    base = BertModel.from_pretrained(args.model_dir, add_pooling_layer=False, attn_implementation="eager")
    base.eval()
    probe = load_file(os.path.join(args.workdir, "probe.safetensors"))
    with torch.no_grad():
        plain = base(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).last_hidden_state
        model = peft.PeftModel.from_pretrained(base, export)
        model.eval()
        adapted = model(input_ids=probe["input_ids"], attention_mask=probe["attention_mask"]).last_hidden_state
    expected = probe["last_hidden_state"]
    valid = probe["attention_mask"].bool()  # padded positions are not compared: both sides leave them unspecified
    effect = (expected - plain)[valid].abs().max().item()
    diff = (adapted - expected)[valid].abs().max().item()
    print(f"peft {peft.__version__}: {len(ranks)} adapted layers, ranks {sorted(set(ranks.values()))}; "
          f"the adapter moves the output by up to {effect:.4f}; PEFT vs C++ max |diff| {diff:.2e}")
    assert effect > 1e-2, "the adapter should change the output"
    assert diff < 1e-4, f"PEFT's output differs from the C++ model's by {diff}"
    return 0


if __name__ == "__main__":
    sys.exit(main())
