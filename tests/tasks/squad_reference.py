#!/usr/bin/env python3
"""Cross-check of increlora's SQuAD v2 metrics against the official evaluation formula (ctest squad_official_formula).

It runs the hidden Catch case [squad_fixture] of the tasks suite, which reads the shared sample, makes fixed
predictions and no-answer scores (exact, partial, empty, wrong, ... answers), writes them as predictions.json and
null_odds.json, and writes what the C++ computed: the metrics (without no-answer scores and at three thresholds)
and normalize_answer of every text. This script recomputes all of it from the files with its own implementation
of what evaluate-v2.0.py does, and fails on any difference larger than 1e-9 (or any differing string).

The rules implemented here, as the official script behaves:
* text normalisation: str.lower(), drop the characters of string.punctuation, replace each whole word a / an / the
  (a Unicode \\b regex) by a space, then join the str.split() words with single spaces;
* a question has an answer when its "answers" list is not empty; gold texts that normalise to "" are dropped,
  and [""] stands in when none remains;
* exact = normalised equality; F1 over normalised tokens with multiplicity; when either token list is empty,
  F1 is 1 if both are, else 0; a question's score is the maximum over its golds;
* with no-answer scores, a question whose score exceeds the threshold is scored 1 if it has no answer, else 0;
* totals are 100 * mean over all questions, and over the answerable / unanswerable ones when there are any;
* the best threshold: begin with the count of unanswerable questions, go through the questions by increasing
  no-answer score (a stable sort over the score file's order), adding the raw score of an answerable question
  and subtracting 1 for an unanswerable one that got a non-empty prediction string; the threshold is the score of
  the question at which a strictly larger total was last reached (0.0 if never), the score 100 * total / count.
"""
import argparse
import json
import os
import re
import string
import subprocess
import sys
from collections import Counter

PUNCTUATION = frozenset(string.punctuation)
ARTICLE = re.compile(r"\b(?:a|an|the)\b", re.UNICODE)


def normalize(text):
    lowered = text.lower()
    kept = "".join(ch for ch in lowered if ch not in PUNCTUATION)
    no_articles = ARTICLE.sub(" ", kept)
    return " ".join(no_articles.split())


def tokens(text):
    return normalize(text).split() if text else []


def exact(gold, pred):
    return 1 if normalize(gold) == normalize(pred) else 0


def f1(gold, pred):
    g, p = tokens(gold), tokens(pred)
    if not g or not p:
        return 1 if g == p else 0
    overlap = sum((Counter(g) & Counter(p)).values())
    if overlap == 0:
        return 0
    precision, recall = overlap / len(p), overlap / len(g)
    return 2 * precision * recall / (precision + recall)


def questions(data_file):
    with open(data_file, encoding="utf-8") as f:
        data = json.load(f)["data"]
    out = []
    for article in data:
        for paragraph in article["paragraphs"]:
            for qa in paragraph["qas"]:
                out.append((qa["id"], [a["text"] for a in qa["answers"]]))
    return out


def raw_scores(qs, preds):
    ex, fs = {}, {}
    for qid, golds in qs:
        usable = [g for g in golds if normalize(g)] or [""]
        pred = preds[qid]
        ex[qid] = max(exact(g, pred) for g in usable)
        fs[qid] = max(f1(g, pred) for g in usable)
    return ex, fs


def mean_percent(scores, ids):
    return 100.0 * sum(scores[i] for i in ids) / len(ids)


def best_threshold(preds, scores, na, has_answer):
    total = sum(1 for v in has_answer.values() if not v)
    best, thresh = total, 0.0
    for qid in sorted(na, key=lambda k: na[k]):
        if qid not in scores:
            continue
        if has_answer[qid]:
            total += scores[qid]
        elif preds[qid]:
            total -= 1
        if total > best:
            best, thresh = total, na[qid]
    return 100.0 * best / len(scores), thresh


def metrics(qs, preds, na=None, thresh=1.0):
    has_answer = {qid: bool(golds) for qid, golds in qs}
    ex, fs = raw_scores(qs, preds)
    if na is not None:
        ex_t = {q: (float(not has_answer[q]) if na[q] > thresh else s) for q, s in ex.items()}
        fs_t = {q: (float(not has_answer[q]) if na[q] > thresh else s) for q, s in fs.items()}
    else:
        ex_t, fs_t = ex, fs
    ids = [q for q, _ in qs]
    out = {"exact": mean_percent(ex_t, ids), "f1": mean_percent(fs_t, ids), "total": len(ids)}
    answerable = [q for q in ids if has_answer[q]]
    unanswerable = [q for q in ids if not has_answer[q]]
    for prefix, group in (("HasAns", answerable), ("NoAns", unanswerable)):
        if group:
            out[prefix + "_exact"] = mean_percent(ex_t, group)
            out[prefix + "_f1"] = mean_percent(fs_t, group)
            out[prefix + "_total"] = len(group)
    if na is not None:
        out["best_exact"], out["best_exact_thresh"] = best_threshold(preds, ex, na, has_answer)
        out["best_f1"], out["best_f1_thresh"] = best_threshold(preds, fs, na, has_answer)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", required=True, help="the tasks test executable")
    parser.add_argument("--data", required=True, help="the SQuAD v2 JSON file the fixture reads")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    for name in ("predictions.json", "null_odds.json", "cpp_metrics.json", "cpp_normalized.json"):
        if os.path.exists(os.path.join(args.workdir, name)):
            os.remove(os.path.join(args.workdir, name))
    env = dict(os.environ, INCRELORA_SQUAD_FIXTURE_DIR=args.workdir)
    run = subprocess.run([args.fixture, "[squad_fixture]"], env=env)
    if run.returncode != 0:
        print("the fixture failed (exit %d)" % run.returncode)
        return 1

    def load(name):
        with open(os.path.join(args.workdir, name), encoding="utf-8") as f:
            return json.load(f)

    qs = questions(args.data)
    preds, na = load("predictions.json"), load("null_odds.json")
    cpp, cpp_norm = load("cpp_metrics.json"), load("cpp_normalized.json")
    failures = []

    expected = {"no_na_probs": metrics(qs, preds)}
    for t in (1.0, 0.25, -0.5):
        expected["na_prob_thresh=%g" % t] = metrics(qs, preds, na, t)
    for run_name, ref in expected.items():
        got = cpp.get(run_name)
        if got is None:
            failures.append("%s: missing from cpp_metrics.json" % run_name)
            continue
        if set(got) != set(ref):
            failures.append("%s: keys differ: C++ %s, reference %s" % (run_name, sorted(got), sorted(ref)))
        for key, value in ref.items():
            if key in got and abs(got[key] - value) > 1e-9:
                failures.append("%s: %s is %.12f in C++, %.12f by the official formula"
                                % (run_name, key, got[key], value))
        print("%s: %s" % (run_name, json.dumps(ref)))

    wrong = [(s, n, normalize(s)) for s, n in cpp_norm.items() if normalize(s) != n]
    for s, n, ref in wrong[:10]:
        failures.append("normalize_answer(%r) is %r in C++, %r in Python" % (s[:80], n[:80], ref[:80]))
    print("normalize_answer compared on %d texts, %d differ" % (len(cpp_norm), len(wrong)))

    answered = sum(1 for p in preds.values() if p)
    print("%d predictions (%d non-empty), %d no-answer scores (%d distinct)"
          % (len(preds), answered, len(na), len(set(na.values()))))
    if failures:
        print("\n".join(failures))
        return 1
    print("squad_official_formula: the C++ metrics equal the official formula")
    return 0


if __name__ == "__main__":
    sys.exit(main())
