#!/usr/bin/env python3
"""GLUE fine-tuning with PEFT LoRA or PEFT AdaLoRA, following apps/glue's training protocol so that the
two can be compared on dev-set quality at the same rank budget.

What is the same as glue.cpp (read it alongside):
  * data: the GLUE TSV files read as glue.cpp reads them (quoting off, CoLA headerless, short rows skipped);
    BertTokenizer of the checkpoint (vocab.txt, lower-casing from tokenizer_config.json), [CLS] a [SEP] (b [SEP]),
    "longest_first" truncation to --max_seq_length; batches padded to their longest input (dynamic padding);
    a fresh shuffle each epoch, the last batch of an epoch may be short.
  * model: BertForSequenceClassification (pooler + dropout + linear classifier, dropout = the config's), loaded
    in fp32 (an fp16 checkpoint is upcast); the classifier freshly initialised N(0, 0.02), zero bias. The
    pooler and the classifier train in full (modules_to_save), as glue.cpp trains its head.
  * adapters on the 36 (for MiniLM) layers glue.cpp adapts: query, key, value, attention.output.dense,
    intermediate.dense and the layer's output.dense (not the pooler), lora_alpha, lora_dropout on the adapter
    input.
  * optimisation: AdamW (betas 0.9/0.999, eps 1e-8), no weight decay on parameters whose name holds "bias" or
    "LayerNorm"; learning rate linear from 0 over --warmup_steps then linear to 0 at --max_steps (the value at
    step s is glue.cpp's lr_at(s)); gradients clipped to --max_grad_norm over all trainable parameters;
    cross-entropy in fp32.
  * evaluation: the whole dev set (or the first --max_eval_samples), argmax, the official metrics (CoLA Matthews
    correlation, SST-2 accuracy, MRPC accuracy/F1/their mean) implemented here in Python, every --eval_steps and
    at the end; metrics.json has glue.cpp's shape (task, main_metric, final, best, evaluations, train_seconds,
    total_steps, total_rank, budget, trainable_parameters).

What differs, by necessity:
  * the random streams (initialisation, dropout, data order) are PyTorch's and Python's, not LibTorch's and
    std::mt19937_64's: seeds give reproducible runs on each side, not the same runs.
  * LoRA: r = --target_rank from the start, no orthogonality regularizer (standard LoRA has none).
  * AdaLoRA: starts at --init_r and prunes to --target_rank on average; its orthogonality regularizer
    (--orth_reg_weight) is added to the loss by PEFT itself (AdaLoraModel.forward adds it when labels are
    passed), and update_and_allocate(step) runs after each optimizer step, before zero_grad, as PEFT documents;
    so its importance scores see the clipped gradients (glue.cpp scores before clipping).

Writes under --root_output_dir: args.json, log.jsonl, metrics.json and rank_pattern.json (module -> rank).

--cls_dropout sets the dropout before the classifier (BERT's classifier_dropout), as glue.cpp's flag does.
For speed only (the quality grid uses none of them): --pad_to_max_length pads every training batch to
--max_seq_length (glue --cuda_graphs does the same), --torch_compile MODE compiles the training forward + loss
(reduce-overhead: CUDA graphs), --bf16 trains and evaluates under bfloat16 autocast (glue --bf16).
--resume_file makes a run resumable across processes without changing its result: on SIGTERM it finishes the
step, writes a checkpoint there (trainable tensors, AdamW state, AdaLoRA's importance EMAs and rank pattern, every
random stream, the data order, the evaluations so far) and exits with status 75; started again with the same
arguments it continues from that step (log.jsonl is cut back to the checkpoint's length); the file is deleted
once metrics.json is written. --checkpoint_seconds also writes it periodically, for a hard kill.
"""
import argparse
import json
import math
import os
import random
import signal
import sys
import time

import torch
import torch.nn.functional as F

from glue_data import TASKS, canonical_task, read_tsv, task_metrics  # noqa: F401 (beside this file)

# The six linear layers per encoder layer that glue.cpp adapts (its --lora_module default), as one regular
# expression that PEFT full-matches against module names. The pooler's dense is not adapted: it trains in full.
TARGET_MODULES = (r".*\.layer\.\d+\.(attention\.self\.(query|key|value)|attention\.output\.dense"
                  r"|intermediate\.dense|output\.dense)")
ADAPTED_PER_LAYER = 6
SUSPENDED = 75  # exit status after saving a resume checkpoint on SIGTERM (run.py reruns the job later)

# ---- data ----------------------------------------------------------------------------------------------------

def load_tokenizer(model_dir):
    from transformers import BertTokenizer
    tok = BertTokenizer.from_pretrained(model_dir)
    # Guard against a tokenizer that silently ignores vocab.txt (BertTokenizer(vocab_file=...) does under
    # transformers 5): [CLS] must get vocab.txt's id, as glue.cpp's tokenizer gives it.
    with open(os.path.join(model_dir, "vocab.txt"), encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]
    if tok.cls_token_id != vocab.index("[CLS]") or tok.pad_token_id != vocab.index("[PAD]"):
        raise RuntimeError(f"{model_dir}: the tokenizer's special ids disagree with vocab.txt")
    return tok


def encode(rows, tok, max_len):
    a = [r[0] for r in rows]
    b = [r[1] for r in rows] if rows[0][1] is not None else None
    enc = tok(a, b, truncation=True, max_length=max_len)  # truncation=True is "longest_first", as apps/glue
    return [(ids, types, r[2]) for ids, types, r in zip(enc["input_ids"], enc["token_type_ids"], rows)]


def collate(data, idx, pad_id, device, pad_to=0):
    """Pads to the longest input of the batch, as glue.cpp's collate, or to pad_to (> 0: one shape for every batch,
    as glue.cpp pads under --cuda_graphs)."""
    n, length = len(idx), pad_to or max(len(data[i][0]) for i in idx)
    ids = torch.full((n, length), pad_id, dtype=torch.long)
    mask = torch.zeros((n, length), dtype=torch.long)
    types = torch.zeros((n, length), dtype=torch.long)
    for r, i in enumerate(idx):
        k = len(data[i][0])
        ids[r, :k] = torch.tensor(data[i][0])
        types[r, :k] = torch.tensor(data[i][1])
        mask[r, :k] = 1
    labels = torch.tensor([data[i][2] for i in idx], dtype=torch.long)
    return ids.to(device), mask.to(device), types.to(device), labels.to(device)


# ---- model ---------------------------------------------------------------------------------------------------

def build_model(args, num_labels, num_layers):
    import peft
    from transformers import BertForSequenceClassification
    extra = {}
    if args.cls_dropout >= 0:  # the dropout before the classifier (BERT's classifier_dropout); else the config's
        extra["classifier_dropout"] = args.cls_dropout
    try:
        model = BertForSequenceClassification.from_pretrained(args.model_dir, num_labels=num_labels,
                                                              dtype=torch.float32, **extra)
    except TypeError:  # transformers < 4.56 names it torch_dtype
        model = BertForSequenceClassification.from_pretrained(args.model_dir, num_labels=num_labels,
                                                              torch_dtype=torch.float32, **extra)
    model = model.float()  # an fp16 checkpoint trains in fp32, as glue.cpp copies it into fp32 parameters
    common = dict(task_type="SEQ_CLS", target_modules=TARGET_MODULES, lora_alpha=args.lora_alpha,
                  lora_dropout=args.lora_dropout, modules_to_save=["classifier", "pooler"])
    if args.method == "lora":
        config = peft.LoraConfig(r=args.target_rank, **common)
    else:
        config = peft.AdaLoraConfig(init_r=args.init_r, target_r=args.target_rank, tinit=args.tinit,
                                    tfinal=args.tfinal, deltaT=args.deltaT, beta1=args.beta1, beta2=args.beta2,
                                    orth_reg_weight=args.orth_reg_weight, total_step=args.max_steps, **common)
    model = peft.get_peft_model(model, config)
    adapted = [n for n, _ in model.named_modules() if n.endswith(".lora_A")]
    expected = ADAPTED_PER_LAYER * num_layers
    if len(adapted) != expected:
        raise RuntimeError(f"adapted {len(adapted)} layers, expected {expected} (6 per encoder layer)")
    return model


def rank_pattern(model):
    """Module -> rank: r for LoRA; for AdaLoRA the number of singular values lora_E the budget kept (non-zero)."""
    ranks = {}
    for name, p in model.base_model.model.named_parameters():  # names as glue.cpp's (bert.encoder...)
        if ".lora_E." in name:
            ranks[name.split(".lora_E.")[0]] = int((p.detach() != 0).sum())
        elif ".lora_A." in name:
            ranks.setdefault(name.split(".lora_A.")[0], p.shape[0])
    return ranks


# ---- resume --------------------------------------------------------------------------------------------------

def resume_key(args):
    """The arguments that define the run: a checkpoint is only used by the same run."""
    skip = {"resume_file", "checkpoint_seconds", "stop_after_step", "threads"}
    return json.dumps({k: v for k, v in sorted(vars(args).items()) if k not in skip})


def save_resume(args, device, model, optimizer, rng, loop):
    state = dict(loop, key=resume_key(args),
                 trainable={n: p.detach().cpu() for n, p in model.named_parameters() if p.requires_grad},
                 optimizer=optimizer.state_dict(), torch_rng=torch.get_rng_state(), py_rng=rng.getstate())
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    if args.method == "adalora":
        alloc = model.base_model.rankallocator
        state["adalora"] = dict(exp_avg_ipt={k: v.cpu() for k, v in alloc.exp_avg_ipt.items()},
                                exp_avg_unc={k: v.cpu() for k, v in alloc.exp_avg_unc.items()},
                                rank_pattern=model.base_model.peft_config[model.base_model.trainable_adapter_name].rank_pattern)
    os.makedirs(os.path.dirname(os.path.abspath(args.resume_file)), exist_ok=True)
    tmp = args.resume_file + ".tmp"
    torch.save(state, tmp)
    os.replace(tmp, args.resume_file)


def load_resume(args, device):
    """The checkpoint in --resume_file if it was written by this very run, else None (a stale one is ignored)."""
    if not args.resume_file or not os.path.isfile(args.resume_file):
        return None
    try:
        state = torch.load(args.resume_file, map_location="cpu", weights_only=True)  # tensors and plain data only
    except Exception as e:  # a torn file: start over
        print(f"peft_glue: ignoring unreadable checkpoint {args.resume_file}: {e}", flush=True)
        return None
    if state.get("key") != resume_key(args):
        print(f"peft_glue: ignoring {args.resume_file}: written by other arguments", flush=True)
        return None
    return state


def restore_training_state(state, model, optimizer, rng, device):
    with torch.no_grad():
        named = dict(model.named_parameters())
        for n, t in state["trainable"].items():
            named[n].copy_(t)
    optimizer.load_state_dict(state["optimizer"])
    if "adalora" in state:
        alloc, ada = model.base_model.rankallocator, state["adalora"]
        alloc.exp_avg_ipt = {k: v.to(device) for k, v in ada["exp_avg_ipt"].items()}
        alloc.exp_avg_unc = {k: v.to(device) for k, v in ada["exp_avg_unc"].items()}
        alloc.ipt = {k: torch.zeros_like(v) for k, v in alloc.exp_avg_ipt.items()}  # recomputed before use
        model.base_model.peft_config[model.base_model.trainable_adapter_name].rank_pattern = ada["rank_pattern"]
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state:
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    rng.setstate(state["py_rng"])


# ---- training ------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description="PEFT LoRA / AdaLoRA GLUE fine-tuning with glue.cpp's protocol")
    ap.add_argument("--method", choices=["lora", "adalora"], required=True)
    ap.add_argument("--task_name", required=True, help="cola, sst2, mrpc (qnli, rte)")
    ap.add_argument("--data_dir", required=True, help="the task's GLUE folder (train.tsv, dev.tsv)")
    ap.add_argument("--model_dir", required=True, help="Hugging Face BERT checkpoint directory")
    ap.add_argument("--root_output_dir", required=True)
    ap.add_argument("--target_rank", type=int, default=2, help="LoRA r; AdaLoRA target_r (average final rank)")
    ap.add_argument("--lora_alpha", type=float, default=16)
    ap.add_argument("--lora_dropout", type=float, default=0.1)
    ap.add_argument("--cls_dropout", type=float, default=-1,
                    help="dropout before the classifier (glue.cpp's --cls_dropout); < 0: the config's (0.1)")
    ap.add_argument("--max_seq_length", type=int, default=128)
    ap.add_argument("--per_device_train_batch_size", type=int, default=32)
    ap.add_argument("--per_device_eval_batch_size", type=int, default=64)
    ap.add_argument("--learning_rate", type=float, default=1e-3)
    ap.add_argument("--max_steps", type=int, required=True)
    ap.add_argument("--warmup_steps", type=int, default=0)
    ap.add_argument("--weight_decay", type=float, default=0.0)
    ap.add_argument("--max_grad_norm", type=float, default=1.0)
    ap.add_argument("--eval_steps", type=int, default=0, help="0: evaluate at the end only")
    ap.add_argument("--logging_steps", type=int, default=100)
    ap.add_argument("--max_eval_samples", type=int, default=0, help="0: the whole dev set")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads; 0: 1 on CUDA, torch's default on CPU")
    ap.add_argument("--resume_file", default="",
                    help="training checkpoint: loaded at start when present and made by the same arguments; "
                         "written on SIGTERM (then exit 75) and every --checkpoint_seconds; deleted at the end")
    ap.add_argument("--checkpoint_seconds", type=float, default=0, help="also checkpoint this often (0: only on SIGTERM)")
    ap.add_argument("--stop_after_step", type=int, default=0, help=argparse.SUPPRESS)  # tests: suspend there
    ap.add_argument("--pad_to_max_length", action="store_true",
                    help="pad every training batch to --max_seq_length (one shape, as glue --cuda_graphs does)")
    ap.add_argument("--torch_compile", choices=["none", "default", "reduce-overhead"], default="none",
                    help="train forward + loss under torch.compile with this mode (reduce-overhead: CUDA graphs; "
                         "pair it with --pad_to_max_length so that one graph is captured); evaluation stays eager")
    ap.add_argument("--bf16", action="store_true",
                    help="train and evaluate under bfloat16 autocast (weights and AdamW state stay fp32), as glue --bf16")
    # AdaLoRA
    ap.add_argument("--init_r", type=int, default=0, help="AdaLoRA initial rank; 0: round(1.5 x target_rank)")
    ap.add_argument("--tinit", type=int, default=-1, help="AdaLoRA warmup steps; -1: 10%% of max_steps")
    ap.add_argument("--tfinal", type=int, default=-1, help="AdaLoRA final steps; -1: 40%% of max_steps")
    ap.add_argument("--deltaT", type=int, default=10)
    ap.add_argument("--beta1", type=float, default=0.85)
    ap.add_argument("--beta2", type=float, default=0.85)
    ap.add_argument("--orth_reg_weight", type=float, default=0.1)
    args = ap.parse_args(argv)
    args.task_name = canonical_task(args.task_name)
    if args.task_name not in TASKS:
        ap.error(f"--task_name: one of {', '.join(TASKS)}")
    if args.init_r <= 0:
        args.init_r = int(math.floor(1.5 * args.target_rank + 0.5))
    if args.tinit < 0:
        args.tinit = round(0.1 * args.max_steps)
    if args.tfinal < 0:
        args.tfinal = round(0.4 * args.max_steps)
    if args.eval_steps <= 0:
        args.eval_steps = args.max_steps
    if args.torch_compile == "reduce-overhead" and not args.pad_to_max_length:
        ap.error("--torch_compile reduce-overhead captures one CUDA graph per batch shape: add --pad_to_max_length")
    return args


def main(argv=None):
    args = parse_args(argv)
    spec = TASKS[args.task_name]
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    # Many jobs share the machine: one CPU thread each on CUDA (the GPU does the work), else as asked.
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    elif device.type == "cuda":
        torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)

    tok = load_tokenizer(args.model_dir)
    train = encode(read_tsv(os.path.join(args.data_dir, "train.tsv"), spec), tok, args.max_seq_length)
    dev_rows = read_tsv(os.path.join(args.data_dir, "dev.tsv"), spec)
    if args.max_eval_samples > 0:
        dev_rows = dev_rows[:args.max_eval_samples]
    dev = encode(dev_rows, tok, args.max_seq_length)

    with open(os.path.join(args.model_dir, "config.json")) as f:
        num_layers = json.load(f)["num_hidden_layers"]
    model = build_model(args, len(spec["labels"]), num_layers).to(device)
    model.train()

    decay, no_decay, trainable = [], [], 0
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        trainable += p.numel()
        (no_decay if ("bias" in name or "LayerNorm" in name) else decay).append(p)
    params = decay + no_decay
    opt_kw = dict(lr=args.learning_rate, betas=(0.9, 0.999), eps=1e-8)
    if device.type == "cuda":
        opt_kw["fused"] = True  # one kernel per step, as glue.cpp's FusedAdamW; fewer launches under sharing
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], **opt_kw)
    total_steps, warmup = args.max_steps, args.warmup_steps

    def lr_at(step):  # glue.cpp's lr_at (and transformers' get_linear_schedule_with_warmup)
        if step < warmup:
            return args.learning_rate * step / max(1, warmup)
        return args.learning_rate * max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    out_dir = args.root_output_dir
    os.makedirs(out_dir, exist_ok=True)
    steps_per_epoch = (len(train) + args.per_device_train_batch_size - 1) // args.per_device_train_batch_size
    budget = args.target_rank * ADAPTED_PER_LAYER * num_layers
    with open(os.path.join(out_dir, "args.json"), "w") as f:
        json.dump({**vars(args), "total_steps": total_steps, "device": str(device), "torch": torch.__version__},
                  f, indent=2)
    # A checkpoint left by an interrupted run of the same job (same arguments) continues it exactly: trainable
    # tensors, AdamW state, AdaLoRA's importance EMAs and rank pattern, every random stream, the data order.
    state = load_resume(args, device)
    log_path = os.path.join(out_dir, "log.jsonl")
    if state is not None:
        with open(log_path, "ab"):
            pass
        os.truncate(log_path, state["log_bytes"])  # drop what was logged after the checkpoint
    log = open(log_path, "a" if state is not None else "w")

    def write_log(entry):
        log.write(json.dumps(entry) + "\n")
        log.flush()

    pad_id = tok.pad_token_id
    pad_to = args.max_seq_length if args.pad_to_max_length else 0

    def autocast():
        # bf16 autocast on the device's type; a no-op context without --bf16.
        return torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16)

    # The training forward (+ loss: PEFT's and the model's, computed inside): compiled on request, eager otherwise.
    # The compiled module shares the parameters; evaluation calls the eager one (no_grad would recompile).
    train_forward = model if args.torch_compile == "none" else torch.compile(model, mode=args.torch_compile)
    mark_step = (torch.compiler.cudagraph_mark_step_begin if args.torch_compile == "reduce-overhead"
                 else (lambda: None))
    print(f"peft_glue: {args.method} task {args.task_name} | {len(train)} train / {len(dev)} eval examples | "
          f"{total_steps} steps ({steps_per_epoch} per epoch) on {device}; {trainable} trainable parameters",
          flush=True)

    evaluations, best = [], None
    if state is not None:
        evaluations, best = state["evaluations"], state["best"]

    def run_eval(step):
        t0 = time.time()
        model.eval()
        preds = []
        with torch.no_grad():
            for s in range(0, len(dev), args.per_device_eval_batch_size):
                idx = list(range(s, min(len(dev), s + args.per_device_eval_batch_size)))
                ids, mask, types, _ = collate(dev, idx, pad_id, device)
                with autocast():
                    logits = model(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
                preds += logits.float().argmax(1).tolist()
        model.train()
        m = task_metrics(args.task_name, preds, [d[2] for d in dev])
        ranks = rank_pattern(model)
        entry = {"event": "eval", "step": step, "epoch": step / steps_per_epoch,
                 **{"eval_" + k: v for k, v in m.items()}, "eval_seconds": time.time() - t0,
                 "total_rank": sum(ranks.values())}
        write_log(entry)
        evaluations.append(entry)
        print(f"eval  step {step:>6}: " + ", ".join(f"{k} {v:.4f}" for k, v in m.items()), flush=True)
        return entry

    start = time.time()
    order, cursor = list(range(len(train))), len(train)
    loss_sum, reg_sum, count = 0.0, 0.0, 0
    first_step, prior_seconds, segments = 0, 0.0, 1
    if state is not None:
        restore_training_state(state, model, optimizer, rng, device)
        order, cursor = state["order"], state["cursor"]
        loss_sum, reg_sum, count = (v.to(device) if torch.is_tensor(v) else v
                                    for v in (state["loss_sum"], state["reg_sum"], state["count"]))
        first_step, prior_seconds, segments = state["step"], state["train_seconds"], state["segments"] + 1
        print(f"peft_glue: resumed from {args.resume_file} at step {first_step} (segment {segments})", flush=True)
        del state

    def elapsed():
        return prior_seconds + time.time() - start

    stop = {"signal": False}
    if args.resume_file:
        signal.signal(signal.SIGTERM, lambda *_: stop.update(signal=True))
    last_checkpoint = time.time()
    main_key = "eval_" + spec["main"]
    for step in range(first_step, total_steps):
        if cursor >= len(order):  # a new epoch; its last batch may be short, as in glue.cpp
            rng.shuffle(order)
            cursor = 0
        idx = order[cursor:cursor + args.per_device_train_batch_size]
        cursor += len(idx)
        ids, mask, types, labels = collate(train, idx, pad_id, device, pad_to)
        lr = lr_at(step)
        for g in optimizer.param_groups:
            g["lr"] = lr

        # Passing labels lets PEFT's AdaLoraModel.forward add its orthogonality regularizer to outputs.loss.
        mark_step()
        with autocast():
            out = train_forward(input_ids=ids, attention_mask=mask, token_type_ids=types, labels=labels)
        total = out.loss.float()
        # LoRA's loss is the cross-entropy itself; AdaLoRA's holds the regularizer too, logged apart.
        ce = F.cross_entropy(out.logits.float(), labels) if args.method == "adalora" else total
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if args.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(params, args.max_grad_norm)
        optimizer.step()
        if args.method == "adalora":
            model.base_model.update_and_allocate(step)  # after the step, before the next zero_grad

        # Kept on the device between logging steps: reading them every step would synchronise with the GPU.
        loss_sum = loss_sum + ce.detach()
        reg_sum = reg_sum + (total.detach() - ce.detach())
        count += 1
        done = step + 1
        if done % args.logging_steps == 0 or done == total_steps:
            entry = {"event": "train", "step": done, "epoch": done / steps_per_epoch,
                     "loss": float(loss_sum) / count, "learning_rate": lr, "elapsed_seconds": elapsed()}
            if args.method == "adalora":
                entry["orth_regu"] = float(reg_sum) / count
            write_log(entry)
            print(f"train step {done:>6}/{total_steps}: loss {entry['loss']:.4f}, lr {lr:.3g}, "
                  f"{entry['elapsed_seconds']:.1f} s", flush=True)
            loss_sum, reg_sum, count = 0.0, 0.0, 0
        if done % args.eval_steps == 0 or done == total_steps:
            e = run_eval(done)
            if best is None or e.get(main_key, -math.inf) > best.get(main_key, -math.inf):
                best = e
        if args.resume_file and done < total_steps and (
                stop["signal"] or done == args.stop_after_step or
                (args.checkpoint_seconds > 0 and time.time() - last_checkpoint > args.checkpoint_seconds)):
            log.flush()
            save_resume(args, device, model, optimizer, rng, dict(
                step=done, order=order, cursor=cursor, loss_sum=loss_sum, reg_sum=reg_sum, count=count,
                evaluations=evaluations, best=best, train_seconds=elapsed(), segments=segments,
                log_bytes=os.path.getsize(log_path)))
            last_checkpoint = time.time()
            if stop["signal"] or done == args.stop_after_step:
                log.close()
                print(f"peft_glue: suspended at step {done}; checkpoint {args.resume_file}", flush=True)
                return SUSPENDED

    ranks = rank_pattern(model)
    with open(os.path.join(out_dir, "rank_pattern.json"), "w") as f:
        json.dump(ranks, f, indent=2)
    metrics = {"task": args.task_name, "main_metric": main_key, "final": evaluations[-1], "best": best,
               "evaluations": evaluations, "train_seconds": elapsed(), "total_steps": total_steps,
               "total_rank": sum(ranks.values()), "budget": budget, "trainable_parameters": trainable,
               "method": args.method, "segments": segments}
    # Written last and atomically: its presence is what marks the job done for run.py.
    tmp = os.path.join(out_dir, "metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(metrics, f, indent=2)
    os.replace(tmp, os.path.join(out_dir, "metrics.json"))
    log.close()
    if args.resume_file and os.path.exists(args.resume_file):
        os.remove(args.resume_file)
    print(f"peft_glue: done in {metrics['train_seconds']:.1f} s; final {main_key} "
          f"{evaluations[-1][main_key]:.4f}; total rank {metrics['total_rank']} (budget {budget})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
