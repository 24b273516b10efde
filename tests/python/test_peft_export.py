"""The Python half of the PEFT export check, run by ctest.

Runs the C++ program tests/peft_export_fixture.cpp (which trains a small MLP with IncreLoRA and exports it),
builds the same MLP in PyTorch, loads the C++ base weights with safetensors, wraps it with
peft.PeftModel.from_pretrained(model, export_dir) and checks that it computes what the C++ model computed.
Also checks that the merged export loads into the plain MLP and computes the same.

usage: test_peft_export.py --fixture PATH_TO_peft_export_fixture --workdir FOLDER
"""
import argparse
import os
import shutil
import subprocess
import sys

import peft
import torch
from safetensors.torch import load_file
from torch import nn


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(32, 32)


class Mlp(nn.Module):
    """The C++ fixture's model, with the same module names."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 32)
        self.block = Block()
        self.out = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.tanh(self.fc1(x))
        x = torch.tanh(self.fc2(x))
        x = torch.tanh(self.block.fc1(x))
        return self.out(x)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--fixture", required=True)
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()

    shutil.rmtree(args.workdir, ignore_errors=True)
    os.makedirs(args.workdir)
    subprocess.run([args.fixture, args.workdir], check=True)

    ranks = {}
    with open(os.path.join(args.workdir, "ranks.txt")) as f:
        for line in f:
            name, rank = line.split()
            ranks[name] = int(rank)
    print(f"peft {peft.__version__}, torch {torch.__version__}; C++ rank pattern: {ranks}")
    assert len(set(ranks.values())) > 1, f"the layers should end at different ranks: {ranks}"

    io = load_file(os.path.join(args.workdir, "io.safetensors"))
    x, y_cpp = io["x"], io["y"]

    base = Mlp()
    base.load_state_dict(load_file(os.path.join(args.workdir, "base.safetensors")), strict=True)
    base.eval()
    with torch.no_grad():
        y_base = base(x)

    model = peft.PeftModel.from_pretrained(base, os.path.join(args.workdir, "peft"))
    model.eval()
    for name, rank in ranks.items():
        layer = model.base_model.model.get_submodule(name)
        assert layer.r["default"] == rank, f"{name}: PEFT built rank {layer.r['default']}, C++ has {rank}"
        assert layer.scaling["default"] == 1.0, f"{name}: PEFT scaling {layer.scaling['default']}, expected 1"
    with torch.no_grad():
        y_peft = model(x)

    adapter_effect = (y_cpp - y_base).abs().max().item()
    diff = (y_peft - y_cpp).abs().max().item()
    print(f"adapter changes the output by up to {adapter_effect:.3e}; PEFT vs C++ max |diff| = {diff:.3e}")
    assert adapter_effect > 1e-2, "the adapter barely changes the output: the comparison would prove nothing"
    torch.testing.assert_close(y_peft, y_cpp, atol=1e-5, rtol=0)

    merged = Mlp()
    merged.load_state_dict(load_file(os.path.join(args.workdir, "merged.safetensors")), strict=True)
    merged.eval()
    with torch.no_grad():
        y_merged = merged(x)
    print(f"merged export vs C++ max |diff| = {(y_merged - y_cpp).abs().max().item():.3e}")
    torch.testing.assert_close(y_merged, y_cpp, atol=1e-5, rtol=0)
    print("PEFT export check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
