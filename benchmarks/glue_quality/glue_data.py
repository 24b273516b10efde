#!/usr/bin/env python3
"""GLUE data and metrics without third-party packages, shared by peft_glue.py (training), run.py (step counts)
and report.py (the majority-class baseline): the TSV files read as apps/glue reads them, and the official
metrics (as Hugging Face's glue metric / sklearn)."""
import math
import os

# As tasks/src/glue.cpp's task_spec: columns of the GLUE TSV files (label < 0 counts from the end).
TASKS = {
    "cola": dict(labels=["0", "1"], header=False, a=3, b=None, label=1, main="matthews_correlation"),
    "sst2": dict(labels=["0", "1"], header=True, a=0, b=None, label=1, main="accuracy"),
    "mrpc": dict(labels=["0", "1"], header=True, a=3, b=4, label=0, main="f1"),
    "qnli": dict(labels=["entailment", "not_entailment"], header=True, a=1, b=2, label=-1, main="accuracy"),
    "rte": dict(labels=["entailment", "not_entailment"], header=True, a=1, b=2, label=-1, main="accuracy"),
}


def canonical_task(name):
    return name.lower().replace("-", "")


def read_tsv(path, spec):
    """(text_a, text_b, label id) rows, as glue.cpp's read_tsv: quoting off, a BOM and \\r stripped, rows too
    short for the task's columns skipped, an unknown label an error."""
    out = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            line = raw.decode("utf-8")
            if line_no == 1 and line.startswith("\ufeff"):
                line = line[1:]
            line = line.rstrip("\n")
            if line.endswith("\r"):
                line = line[:-1]
            if line_no == 1 and spec["header"]:
                continue
            if not line:
                continue
            fields = line.split("\t")
            n = len(fields)
            label_col = n + spec["label"] if spec["label"] < 0 else spec["label"]
            needed = max(spec["a"], spec["b"] if spec["b"] is not None else -1, spec["label"]) + 1
            if n < needed or label_col < 0:
                continue
            label = fields[label_col]
            if label not in spec["labels"]:
                raise ValueError(f"{path}:{line_no}: unknown label {label!r}")
            out.append((fields[spec["a"]], fields[spec["b"]] if spec["b"] is not None else None,
                        spec["labels"].index(label)))
    if not out:
        raise ValueError(f"{path} holds no examples")
    return out



def train_examples(data_dir, task):
    """Number of training examples glue.cpp and peft_glue.py read from DATA_DIR/train.tsv."""
    return len(read_tsv(os.path.join(data_dir, "train.tsv"), TASKS[canonical_task(task)]))


def dev_labels(data_dir, task):
    return [r[2] for r in read_tsv(os.path.join(data_dir, "dev.tsv"), TASKS[canonical_task(task)])]


# ---- metrics (as Hugging Face's glue metric / sklearn) --------------------------------------------------------

def accuracy(p, y):
    return sum(a == b for a, b in zip(p, y)) / len(y)


def f1_binary(p, y):
    tp = sum(a == 1 and b == 1 for a, b in zip(p, y))
    fp = sum(a == 1 and b != 1 for a, b in zip(p, y))
    fn = sum(a != 1 and b == 1 for a, b in zip(p, y))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)  # sklearn's value when nothing is positive: 0


def matthews_corrcoef(p, y):
    # sklearn's multiclass form (the usual formula for two classes); 0 when a marginal is constant.
    s, c = len(y), sum(a == b for a, b in zip(p, y))
    classes = set(p) | set(y)
    t_k = {k: sum(v == k for v in y) for k in classes}
    p_k = {k: sum(v == k for v in p) for k in classes}
    pt = sum(p_k[k] * t_k[k] for k in classes)
    pp = sum(v * v for v in p_k.values())
    tt = sum(v * v for v in t_k.values())
    denom = math.sqrt((s * s - pp) * (s * s - tt))
    return 0.0 if denom == 0 else (c * s - pt) / denom


def task_metrics(task, p, y):
    if task == "cola":
        return {"matthews_correlation": matthews_corrcoef(p, y)}
    m = {"accuracy": accuracy(p, y)}
    if task in ("mrpc", "qqp"):
        m["f1"] = f1_binary(p, y)
        m["combined_score"] = (m["accuracy"] + m["f1"]) / 2
    return m
