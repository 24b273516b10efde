#!/usr/bin/env python3
"""The Python peers of bench_step: one training step of a random-weight BERT-family classifier (transformers'
BertForSequenceClassification from a BertConfig of the same shape), timed the same way (a device
synchronisation around each step, median/p10/p90 of the timed steps after warm-up), with peak device memory
(torch.cuda.max_memory_allocated after reset_peak_memory_stats, taken after the warm-up).

Peers (--peers, comma separated):
  lora                     PEFT LoRA r=2 on the six module types increlora adapts, eager
  lora_compiled            the same, forward + loss under torch.compile(mode="reduce-overhead") (CUDA graphs for
                           the forward and the backward AOTAutograd compiles); AdamW eager (foreach)
  lora_compiled_opt        lora_compiled plus optimizer.step under torch.compile (the PyTorch "compiled
                           optimizer" recipe)
  adalora                  PEFT AdaLoRA init_r=3 -> target_r=2, update_and_allocate every step (budgeting phase)
  full                     full fine-tuning, eager
  full_compiled            full fine-tuning, forward + loss under torch.compile(mode="reduce-overhead")
  frozen_forward           forward only, eval mode, under no_grad, eager
  frozen_forward_compiled  the same under torch.compile(mode="reduce-overhead")

Every trained peer uses torch.optim.AdamW(lr, weight_decay=0.01) over the trainable parameters; LoRA and AdaLoRA
train the adapters plus the head (classifier and pooler, modules_to_save), as bench_step trains its adapters and
the same head. bf16 (--dtype bf16, --bf16-mode weights, the default): the model is stored in bf16 and PEFT keeps
the adapter weights float32 (autocast_adapter_dtype), which is what bench_step does; --bf16-mode autocast keeps
float32 weights under torch.autocast instead.

--smoke: CPU, a tiny encoder, a few steps, compiled peers skipped; for CI (ctest bench_peers_smoke).
"""
import argparse
import contextlib
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback

import torch
import torch.nn.functional as F

SHAPES = {
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                      vocab_size=30522),
    # MiniLM-L6-H384: BERT's vocabulary, 6 layers of 384, 12 heads.
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                   vocab_size=30522),
}
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=128)
# The modules bench_step adapts (the seed's query,key,value,attention.output,intermediate,layer.output), as one
# regular expression that PEFT matches against the full module name: exactly six layers per encoder layer.
TARGET_MODULES = (r".*\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
                  r"|intermediate\.dense|output\.dense)")
ALL_PEERS = ["lora", "lora_compiled", "lora_compiled_opt", "adalora", "full", "full_compiled", "frozen_forward",
             "frozen_forward_compiled"]


def percentile(values, q):
    v = sorted(values)
    pos = q * (len(v) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (pos - lo) * (v[hi] - v[lo])


def build_model(args):
    from transformers import BertConfig, BertForSequenceClassification
    shape = dict(TINY if args.tiny else SHAPES[args.model])
    if args.layers > 0:
        shape["num_hidden_layers"] = args.layers
    torch.manual_seed(args.seed)
    config = BertConfig(num_labels=2, **shape)
    model = BertForSequenceClassification(config)
    if args.dtype == "bf16" and args.bf16_mode == "weights":
        model = model.to(torch.bfloat16)
    return model.to(args.device)


def peft_model(args, model, kind):
    import peft
    common = dict(task_type="SEQ_CLS", target_modules=TARGET_MODULES, lora_alpha=args.lora_alpha,
                  lora_dropout=args.lora_dropout, modules_to_save=["classifier", "pooler"])
    if kind == "lora":
        config = peft.LoraConfig(r=args.rank, **common)
    else:
        # The budgeting phase covers every timed step: ranks are masked every deltaT steps and the importance
        # is updated every step, AdaLoRA's most expensive state (as bench_step's scoring phase is increlora's).
        total = args.warmup + args.steps + 10
        config = peft.AdaLoraConfig(init_r=3, target_r=args.rank, tinit=0, tfinal=0, deltaT=10,
                                    total_step=total, orth_reg_weight=args.reg_orth_coef, **common)
    return peft.get_peft_model(model, config)


class Peer:
    """One peer: builds its model and optimizer; `step(i)` runs training step i (or one forward)."""

    def __init__(self, args, name):
        self.args, self.name = args, name
        self.notes = []
        base = name.replace("_compiled_opt", "").replace("_compiled", "")
        self.train = base != "frozen_forward"
        model = build_model(args)
        if base in ("lora", "adalora"):
            model = peft_model(args, model, base)
        elif base == "frozen_forward":
            model.eval()
            for p in model.parameters():
                p.requires_grad_(False)
        if self.train:
            model.train()
        self.model = model
        self.adalora = base == "adalora"
        dev = args.device
        g = torch.Generator(device="cpu").manual_seed(args.seed)
        vocab = model.config.vocab_size
        self.input_ids = torch.randint(vocab, (args.batch, args.seq), generator=g).to(dev)
        self.attention_mask = torch.ones(args.batch, args.seq, dtype=torch.long, device=dev)
        self.labels = torch.randint(2, (args.batch,), generator=g).to(dev)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in self.params)
        self.total_params = sum(p.numel() for p in model.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=args.lr, weight_decay=0.01) if self.train else None

        self.compiled = is_compiled(name)
        self.autocast = args.dtype == "bf16" and args.bf16_mode == "autocast"

        def forward_loss(input_ids, attention_mask, labels):
            if self.adalora:
                # AdaLoRA adds its orthogonality regularizer to the loss only when labels are passed.
                return model(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            return F.cross_entropy(logits.float(), labels)

        def forward(input_ids, attention_mask):
            return model(input_ids=input_ids, attention_mask=attention_mask).logits

        fn = forward_loss if self.train else forward
        if self.compiled:
            fn = torch.compile(fn, mode="reduce-overhead")
            self.notes.append("forward%s under torch.compile(mode='reduce-overhead')" % (" + loss" if self.train else ""))
        self.fn = fn
        self.opt_step = self.optimizer.step if self.train else None
        if name.endswith("_compiled_opt"):
            self.opt_step = torch.compile(self.optimizer.step)
            self.notes.append("optimizer.step under torch.compile (default mode)")
        if self.train:
            self.notes.append("torch.optim.AdamW default implementation (foreach on CUDA)")
        if self.adalora:
            self.notes.append("AdaLoRA budgeting phase: tinit=0, deltaT=10, update_and_allocate after "
                              "optimizer.step, before zero_grad")

    def step(self, i):
        if self.compiled:
            torch.compiler.cudagraph_mark_step_begin()
        ctx = torch.autocast(self.args.device, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        if not self.train:
            with torch.no_grad(), ctx:
                self.fn(self.input_ids, self.attention_mask)
            return
        with ctx:
            loss = self.fn(self.input_ids, self.attention_mask, self.labels)
        loss.backward()
        self.opt_step()
        if self.adalora:
            self.model.base_model.update_and_allocate(i)
        self.optimizer.zero_grad(set_to_none=True)


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_peer(args, name):
    cuda = args.device.startswith("cuda")
    if cuda:
        gc.collect()
        torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated() if cuda else None
    reserved_before = torch.cuda.memory_reserved() if cuda else None
    peer = Peer(args, name)
    # CUDA graph trees record on the third call; give compiled peers at least 10 warm-up steps.
    warmup = max(args.warmup, 10) if peer.compiled else args.warmup
    t_compile = time.perf_counter()
    for i in range(warmup):
        peer.step(i)
    sync(args.device)
    warmup_s = time.perf_counter() - t_compile
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    ms = []
    for i in range(warmup, warmup + args.steps):
        t0 = time.perf_counter()
        peer.step(i)
        sync(args.device)
        ms.append((time.perf_counter() - t0) * 1e3)
    record = {
        "impl": "python",
        "peer": name,
        "model": args.model,
        "tiny": args.tiny,
        "layers": peer.model.config.num_hidden_layers,
        "hidden": peer.model.config.hidden_size,
        "dtype": args.dtype,
        "bf16_mode": ("none" if args.dtype != "bf16" else
                      "weights: model stored in bf16, PEFT adapter weights float32 (autocast_adapter_dtype)"
                      if args.bf16_mode == "weights" else "autocast: float32 weights under torch.autocast(bf16)"),
        "device": args.device,
        "batch": args.batch,
        "seq": args.seq,
        "warmup": warmup,
        "warmup_seconds": warmup_s,
        "steps": args.steps,
        "median_ms": percentile(ms, 0.5),
        "p10_ms": percentile(ms, 0.1),
        "p90_ms": percentile(ms, 0.9),
        "mean_ms": sum(ms) / len(ms),
        "min_ms": min(ms),
        # Under CUDA graphs the replayed steps allocate nothing: their activations live in the graph's private
        # pool, which the reserved peak counts and the allocated peak does not.
        "peak_allocated_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "peak_reserved_bytes": torch.cuda.max_memory_reserved() if cuda else None,
        "allocated_before_bytes": before,
        "reserved_before_bytes": reserved_before,
        "timing": "per step: time.perf_counter around the step and torch.cuda.synchronize",
        "trainable_params": peer.trainable,
        "total_params": peer.total_params,
        "attn_implementation": getattr(peer.model.config, "_attn_implementation", None),
        "lora_dropout": args.lora_dropout if name.startswith(("lora", "adalora")) else None,
        "notes": "; ".join(peer.notes),
    }
    del peer
    if is_compiled(name):
        torch._dynamo.reset()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return record


def is_compiled(name):
    """lora_compiled, lora_compiled_opt, full_compiled, frozen_forward_compiled."""
    return "_compiled" in name


def stub(args, name):
    """The key fields of a record (as report.py groups them), for a peer that was skipped or failed."""
    layers = args.layers if args.layers > 0 else (TINY if args.tiny else SHAPES[args.model])["num_hidden_layers"]
    return {"impl": "python", "peer": name, "model": args.model, "tiny": args.tiny, "layers": layers,
            "dtype": args.dtype, "device": args.device, "batch": args.batch, "seq": args.seq}


def strip_args(argv, names):
    """argv without the flags `names` (and their values, given as "--flag value" or "--flag=value")."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in names:
            skip = True
            continue
        if any(a.startswith(n + "=") for n in names):
            continue
        out.append(a)
    return out


def meta():
    import peft
    import transformers
    m = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "peft": peft.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
    }
    if torch.cuda.is_available():
        m["gpu"] = torch.cuda.get_device_name(0)
    return m


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=sorted(SHAPES), default="bert-base")
    ap.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--bf16-mode", choices=["weights", "autocast"], default="weights")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--rank", type=int, default=2)
    ap.add_argument("--lora-alpha", type=float, default=16.0)
    ap.add_argument("--lora-dropout", type=float, default=0.1)
    ap.add_argument("--reg-orth-coef", type=float, default=0.1)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--layers", type=int, default=0, help="> 0 overrides the layer count")
    ap.add_argument("--tiny", action="store_true", help="a tiny encoder of the same structure")
    ap.add_argument("--peers", default=",".join(ALL_PEERS))
    ap.add_argument("--smoke", action="store_true", help="CPU, tiny encoder, 3 steps, no compiled peers (CI)")
    ap.add_argument("--out", default="")
    ap.add_argument("--isolate", choices=["auto", "yes", "no"], default="auto",
                    help="run each peer in its own process (auto: on CUDA with several peers), so that no peer's "
                         "leftovers (compiled graphs, their memory pools) count in the next one's memory")
    args = ap.parse_args()
    if args.smoke:
        args.device, args.tiny, args.model = "cpu", True, "minilm"
        args.batch, args.seq, args.warmup, args.steps = 2, 16, 1, 3
        torch.set_num_threads(1)  # as bench_step --threads 1: on a loaded CI machine threads wait for each other
    peers = [p for p in args.peers.split(",") if p]
    unknown = [p for p in peers if p not in ALL_PEERS]
    if unknown:
        ap.error("unknown peers %s (known: %s)" % (unknown, ", ".join(ALL_PEERS)))
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device %s: CUDA is not available (use --device cpu or --smoke)" % args.device)

    results, failures = [], 0
    info = meta()

    def write():
        # Rewritten after every peer, so that a run cut short (a device time limit) keeps what it measured.
        if not args.out:
            return
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps({"meta": info, "results": results}, indent=2) + "\n")
        os.replace(tmp, args.out)

    isolate = args.isolate == "yes" or (args.isolate == "auto" and args.device.startswith("cuda") and len(peers) > 1)
    if isolate:
        argv = [a for a in sys.argv[1:]]
        for name in peers:
            with tempfile.TemporaryDirectory() as tmp:
                out = os.path.join(tmp, "peer.json")
                cmd = [sys.executable, os.path.abspath(__file__)] + strip_args(argv, ("--peers", "--out", "--isolate"))
                cmd += ["--peers", name, "--out", out, "--isolate", "no"]
                rc = subprocess.call(cmd)
                if os.path.exists(out):
                    with open(out) as f:
                        results += json.load(f)["results"]
                else:
                    results.append(dict(stub(args, name),
                                        error="the peer's process exited with %d and wrote nothing" % rc))
                failures += rc != 0
                write()
        peers = []
    for name in peers:
        if is_compiled(name) and not args.device.startswith("cuda"):
            # reduce-overhead means CUDA graphs; on CPU it would time compilation, not the peer.
            results.append(dict(stub(args, name), skipped="compiled peers need CUDA"))
            write()
            continue
        try:
            r = run_peer(args, name)
            print("peers %s %s %s %s: median %.3f ms (p10 %.3f, p90 %.3f)%s" % (
                args.model, args.dtype, args.device, name, r["median_ms"], r["p10_ms"], r["p90_ms"],
                "" if r["peak_allocated_bytes"] is None else ", peak %.1f MiB" % (r["peak_allocated_bytes"] / 2**20)),
                flush=True)
        except Exception as e:  # one failing peer (a compile error) must not lose the others' numbers
            failures += 1
            traceback.print_exc()
            r = dict(stub(args, name), error="%s: %s" % (type(e).__name__, str(e)[:2000]))
        results.append(r)
        write()
    write()
    if args.smoke:
        ok = failures == 0 and all("median_ms" in r or "skipped" in r for r in results)
        if args.out:
            with open(args.out) as f:
                ok = ok and len(json.load(f)["results"]) == len(peers)
        print("peers smoke: %s" % ("ok" if ok else "FAILED"))
        return 0 if ok else 1
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
