"""The Python half of the PEFT export check, run by ctest.

Runs the C++ program tests/peft_export_fixture.cpp (which trains a small MLP with IncreLoRA and exports it),
builds the same MLP in PyTorch, loads the C++ base weights with safetensors, wraps it with
peft.PeftModel.from_pretrained(model, export_dir) and checks that it computes what the C++ model computed.
Also checks that the merged export loads into the plain MLP and computes the same; that the uniform-rank export
(one r for every layer) and the export with modules_to_save load and compute the same; and the other way, that
adapters made by PEFT (LoRA with rank and alpha patterns, rsLoRA, AdaLoRA) imported by the fixture
(increlora::import_peft) compute in C++ what PEFT computes.

usage: test_peft_export.py --fixture PATH_TO_peft_export_fixture --workdir FOLDER
"""
import argparse
import os
import shutil
import subprocess
import sys

import peft
import torch
from safetensors.torch import load_file, save_file
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
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        x = torch.tanh(self.fc1(x))
        x = torch.tanh(self.fc2(x))
        x = torch.tanh(self.block.fc1(x))
        return self.head(x)


def fresh_base(workdir):
    base = Mlp()
    base.load_state_dict(load_file(os.path.join(workdir, "base.safetensors")), strict=True)
    base.eval()
    return base


def check_close(what, model, x, y_cpp):
    model.eval()
    with torch.no_grad():
        y = model(x)
    print(f"{what} vs C++ max |diff| = {(y - y_cpp).abs().max().item():.3e}")
    torch.testing.assert_close(y, y_cpp, atol=1e-5, rtol=0)


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
    # One rank for every layer, zero-padded: PEFT builds r = max rank everywhere, the output is the same.
    uniform = peft.PeftModel.from_pretrained(fresh_base(args.workdir), os.path.join(args.workdir, "peft-uniform"))
    top = max(ranks.values())
    for name in ranks:
        layer = uniform.base_model.model.get_submodule(name)
        assert layer.r["default"] == top and layer.scaling["default"] == 1.0, (name, layer.r, layer.scaling)
    check_close("uniform-rank export", uniform, x, y_cpp)

    # modules_to_save: PEFT replaces the Python model's "head" (perturbed here) with the saved one. (PEFT
    # matches these names as plain suffixes: a module named "out" would also catch every "lora_dropout".)
    perturbed = fresh_base(args.workdir)
    with torch.no_grad():
        perturbed.head.weight.add_(1.0)
    check_close("export with modules_to_save", peft.PeftModel.from_pretrained(perturbed, os.path.join(args.workdir, "peft-head")), x, y_cpp)

    # The other way: adapters made by PEFT, imported by the C++ fixture.
    torch.manual_seed(1)
    configs = {
        "lora": peft.LoraConfig(r=3, lora_alpha=6, target_modules=["fc1", "fc2", "block.fc1"], init_lora_weights=False,
                                rank_pattern={"fc2": 2}, alpha_pattern={"block.fc1": 12}),
        "rslora": peft.LoraConfig(r=4, lora_alpha=8, use_rslora=True, target_modules=["fc1", "fc2", "block.fc1"],
                                  init_lora_weights=False),
        "adalora": peft.AdaLoraConfig(init_r=4, target_r=2, lora_alpha=8, target_modules=["fc1", "fc2", "block.fc1"],
                                      total_step=100),
    }
    for kind, config in configs.items():
        model = peft.get_peft_model(fresh_base(args.workdir), config)
        if kind == "adalora":
            with torch.no_grad():  # AdaLoRA starts with Λ = 0 and small P, Q: give them values that show
                for name, p in model.named_parameters():
                    if "lora_E" in name or "lora_A" in name or "lora_B" in name:
                        p.normal_(0.0, 0.5)
        model.eval()
        folder = os.path.join(args.workdir, "made-by-peft-" + kind)
        model.save_pretrained(folder)
        with torch.no_grad():
            y_py = model(x)
            effect = (y_py - y_base).abs().max().item()
        assert effect > 1e-2, f"{kind}: the adapter barely changes the output"
        io_path = os.path.join(args.workdir, kind + "-io.safetensors")
        save_file({"x": x.contiguous()}, io_path)
        subprocess.run([args.fixture, "import", os.path.join(args.workdir, "base.safetensors"), folder, io_path],
                       check=True)
        y_imported = load_file(io_path + ".out")["y_cpp"]
        diff = (y_imported - y_py).abs().max().item()
        print(f"import of a PEFT {kind} adapter: C++ vs PEFT max |diff| = {diff:.3e} (adapter effect {effect:.3e})")
        torch.testing.assert_close(y_imported, y_py, atol=1e-5, rtol=0)
    print("PEFT export check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
