#!/usr/bin/env python3
"""Cross-check of increlora's ROUGE against Google's rouge_score package (ctest rouge_score_reference).

It runs the hidden Catch case [rouge_fixture] of the tasks suite, which builds fixed (target, prediction) pairs from
the shared XSum sample (the first sentence of the document, the summary shuffled, truncated or unchanged, empty and
punctuation-only texts, numbers, texts of several lines, blank lines, an empty target, non-ASCII letters) and writes
cpp_rouge.json: its rouge1 / rouge2 / rougeL / rougeLsum scores of every pair with and without the stemmer, their
means, its tokens of every text, and its porter_stem of every distinct token of the sample plus NLTK's irregular
forms and suffix cases. This script recomputes all of it with rouge_score.rouge_scorer.RougeScorer, rouge_score's
tokenize and nltk's PorterStemmer() (the mode rouge_score uses), and fails on any score that differs by more than
1e-12 or any token or stem that differs. It also prints what rouge_score's BootstrapAggregator reports ("mid", with
numpy seeded here) beside the plain means, to show how far the resampled estimate is from the mean.
"""
import argparse
import json
import os
import subprocess
import sys

import numpy as np
from nltk.stem import porter
from rouge_score import rouge_scorer, scoring, tokenize

TOLERANCE = 1e-12


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fixture", required=True, help="the tasks test executable")
    parser.add_argument("--workdir", required=True)
    args = parser.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    out_file = os.path.join(args.workdir, "cpp_rouge.json")
    if os.path.exists(out_file):
        os.remove(out_file)
    env = dict(os.environ, INCRELORA_ROUGE_FIXTURE_DIR=args.workdir)
    run = subprocess.run([args.fixture, "[rouge_fixture]"], env=env)
    if run.returncode != 0:
        print("the fixture failed (exit %d)" % run.returncode)
        return 1
    with open(out_file, encoding="utf-8") as f:
        cpp = json.load(f)

    failures = []
    types = cpp["rouge_types"]
    pairs = cpp["pairs"]
    for key, use_stemmer in (("plain", False), ("stemmed", True)):
        scorer = rouge_scorer.RougeScorer(types, use_stemmer=use_stemmer)
        aggregator = scoring.BootstrapAggregator()
        reference = []
        worst = 0.0
        for i, (target, prediction) in enumerate(pairs):
            ref = scorer.score(target, prediction)
            reference.append(ref)
            aggregator.add_scores(ref)
            got = cpp[key]["scores"][i]
            if set(got) != set(ref):
                failures.append("%s pair %d: types differ: C++ %s, rouge_score %s" % (key, i, sorted(got), sorted(ref)))
                continue
            for t in types:
                for name, a, b in zip(("precision", "recall", "fmeasure"), got[t], ref[t]):
                    worst = max(worst, abs(a - b))
                    if abs(a - b) > TOLERANCE:
                        failures.append("%s pair %d %s %s: C++ %.17g, rouge_score %.17g (target %r, prediction %r)"
                                        % (key, i, t, name, a, b, target[:60], prediction[:60]))
        np.random.seed(0)
        bootstrap = aggregator.aggregate()
        for t in types:
            mean = [sum(r[t][k] for r in reference) / len(reference) for k in range(3)]
            got = cpp[key]["mean"][t]
            for name, a, b in zip(("precision", "recall", "fmeasure"), got, mean):
                if abs(a - b) > TOLERANCE:
                    failures.append("%s mean %s %s: C++ %.17g, mean of rouge_score %.17g" % (key, t, name, a, b))
            print("%s %-9s mean F %.6f, bootstrap mid F %.6f (numpy seed 0)"
                  % (key, t, mean[2], bootstrap[t].mid.fmeasure))
        print("%s: %d pairs x %d types, largest difference %.3g" % (key, len(pairs), len(types), worst))

    stemmer = porter.PorterStemmer()
    stems = cpp["porter"]
    wrong = [(w, s, stemmer.stem(w)) for w, s in stems.items() if stemmer.stem(w) != s]
    for w, s, ref in wrong[:20]:
        failures.append("porter_stem(%r) is %r in C++, %r in nltk" % (w, s, ref))
    print("porter_stem compared on %d words, %d differ" % (len(stems), len(wrong)))

    wrong_tokens = 0
    for text, (plain, stemmed) in cpp["tokens"].items():
        for use, got in ((None, plain), (stemmer, stemmed)):
            ref = tokenize.tokenize(text, use)
            if got != ref:
                wrong_tokens += 1
                if wrong_tokens <= 10:
                    failures.append("tokenize(%r, stemmer=%s) is %r in C++, %r in rouge_score"
                                    % (text[:60], use is not None, got[:10], ref[:10]))
    print("tokenize compared on %d texts, %d differ" % (len(cpp["tokens"]), wrong_tokens))

    if failures:
        print("\n".join(failures))
        return 1
    print("rouge_score_reference: the C++ ROUGE equals rouge_score")
    return 0


if __name__ == "__main__":
    sys.exit(main())
