#!/usr/bin/env python3
"""Reference outputs of Hugging Face transformers for the C++ encoder and tokenizer tests.

Run by ctest (fixture "bert_reference") with the venv's python before the C++ cases that read its output:

    make_reference.py --model_dir ~/.cache/increlora/models/all-MiniLM-L6-v2 --data_dir ../shared/data \
                      --out <build>/tests/models/reference

writes into --out:
  tokens.json            BertTokenizer's ids for the shared GLUE sentences and for hand-picked hard strings,
                         single sentences and pairs, with and without truncation
  minilm_bert.safetensors  inputs and BertModel's last_hidden_state / pooler_output (fp32, eval mode)
  offsets.json           the fast BertTokenizer's offset mapping (as UTF-8 byte ranges) of shared sentences, SQuAD
                         questions and contexts and the hard strings
  qa/                    a BertForQuestionAnswering checkpoint (MiniLM + a seeded random qa_outputs) and
                         logits.safetensors with its start and end logits
  classifier/            a BertForSequenceClassification checkpoint (MiniLM + a seeded random head):
                         config.json, model.safetensors, vocab.txt, and logits.safetensors with its logits
  roberta/               a small random RobertaModel checkpoint and its outputs (roberta position ids)
"""
import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file
from transformers import (BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertModel,
                          BertTokenizer, BertTokenizerFast, RobertaConfig, RobertaModel)

HARD_STRINGS = [
    "Hello, World!",
    "Héllo wörld — naïve café; Ångström, Æsir, straße, İstanbul",
    "東京は日本の首都です。 中文字符 and ＡＢＣ ｆｕｌｌｗｉｄｔｈ",
    "한국어 텍스트",
    "emoji 🙂👍🏽 and symbols $5.00 ^_^ ~tilde~ `code` @user #tag 50%",
    "tabs\tand\nnewlines\r\nand  double  spaces\u00a0nbsp\u2003em-space\u2028line-sep",
    "control\u0001chars\u200bzero\ufeffwidth\u00adsoft-hyphen",
    "unaffable unbelievably antidisestablishmentarianism",
    "x" * 120,
    "special tokens [CLS] [SEP] [MASK] kept whole, [unk] lowercase not",
    "",
    "   ",
    "Ça va? «Oui», dit-il… ‘quotes’ “double” ¿qué? ¡sí!",
    "Ελληνικά Кириллица עברית العربية हिन्दी ไทย",
    "ﬁ ligature ½ fraction ² superscript Ⅻ roman",
    "don't can't won't it's",
    "'quoted' \"double quoted\" (parens) [brackets] {braces}",
]


def read_tsv(path, columns, header):
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        for i, row in enumerate(reader):
            if header and i == 0:
                continue
            if len(row) <= max(columns):
                continue
            rows.append([row[c] for c in columns])
    return rows


def tokens_reference(tok, data_dir):
    glue = data_dir / "glue"
    singles = [r[0] for r in read_tsv(glue / "SST-2" / "dev.tsv", [0], True)]
    singles += [r[0] for r in read_tsv(glue / "CoLA" / "dev.tsv", [3], False)]
    singles += [r[0] for r in read_tsv(glue / "SST-2" / "train.tsv", [0], True)[:3000]]
    singles += HARD_STRINGS
    pairs = [tuple(r) for r in read_tsv(glue / "MRPC" / "dev.tsv", [3, 4], True)]
    pairs += [tuple(r) for r in read_tsv(glue / "MRPC" / "train.tsv", [3, 4], True)]
    pairs += [tuple(r) for r in read_tsv(glue / "QNLI" / "dev.tsv", [1, 2], True)[:1500]]
    # BertTokenizer(a, "") treats the empty second text as no pair at all (a Python truthiness check), which
    # batched encoding does not: leave empty texts out of the pairs.
    pairs += [(a, b) for a, b in zip(HARD_STRINGS, reversed(HARD_STRINGS)) if a and b]
    out = {"single": [], "pairs": []}
    for text in singles:
        out["single"].append({"text": text, "ids": tok(text, add_special_tokens=True)["input_ids"],
                              "ids_16": tok(text, truncation=True, max_length=16)["input_ids"]})
    for a, b in pairs:
        full = tok(a, b)
        short = tok(a, b, truncation="longest_first", max_length=23)
        odd = tok(a, b, truncation="longest_first", max_length=24)  # an odd room (21) splits unevenly
        out["pairs"].append({"a": a, "b": b, "ids": full["input_ids"], "types": full["token_type_ids"],
                             "ids_23": short["input_ids"], "types_23": short["token_type_ids"],
                             "ids_24": odd["input_ids"], "types_24": odd["token_type_ids"]})
    return out


def offsets_reference(fast, data_dir):
    """Token ids and byte ranges [begin, end) of each token in the UTF-8 text, without special tokens."""
    glue = data_dir / "glue"
    texts = [r[0] for r in read_tsv(glue / "SST-2" / "dev.tsv", [0], True)[:300]] + HARD_STRINGS
    squad = json.loads((data_dir / "qa" / "squad_v2_sample.json").read_text(encoding="utf-8"))
    for article in squad["data"]:
        for para in article["paragraphs"]:
            texts.append(para["context"])
            texts += [qa["question"] for qa in para["qas"][:3]]
    out = []
    for text in texts:
        enc = fast(text, add_special_tokens=False, return_offsets_mapping=True)
        to_byte = lambda c: len(text[:c].encode("utf-8"))
        out.append({"text": text, "ids": enc["input_ids"],
                    "offsets": [[to_byte(b), to_byte(e)] for b, e in enc["offset_mapping"]]})
    return out


def batch(tok, texts, pairs):
    enc = tok(texts, pairs, padding=True, truncation=True, max_length=64, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model_dir", type=Path, required=True)
    p.add_argument("--data_dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    for f in ("config.json", "model.safetensors", "vocab.txt"):
        if not (args.model_dir / f).is_file():
            sys.exit(f"make_reference: {args.model_dir / f} is missing; run scripts/setup.sh (it prepares the "
                     "all-MiniLM-L6-v2 checkpoint)")
    args.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)

    tok = BertTokenizer.from_pretrained(str(args.model_dir))
    (args.out / "tokens.json").write_text(json.dumps(tokens_reference(tok, args.data_dir), ensure_ascii=False))
    fast = BertTokenizerFast.from_pretrained(str(args.model_dir))
    (args.out / "offsets.json").write_text(json.dumps(offsets_reference(fast, args.data_dir), ensure_ascii=False))

    texts = ["A gripping, funny and deeply moving film.", "it 's a charming and often affecting journey .",
             "No.", "The cat sat on the mat while the dog slept by the fire, dreaming of long walks."]
    seconds = ["It was terrible.", "a flat , unconvincing story .", "Yes, certainly not.", "Short."]
    ids, mask, types = batch(tok, texts, seconds)

    model = BertModel.from_pretrained(str(args.model_dir)).eval()
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    save_file({"input_ids": ids.contiguous(), "attention_mask": mask.contiguous(), "token_type_ids": types.contiguous(),
               "last_hidden_state": out.last_hidden_state.contiguous(), "pooler_output": out.pooler_output.contiguous()},
              str(args.out / "minilm_bert.safetensors"))

    # A sequence classifier whose head is random but seeded, saved as a full checkpoint (names "bert.*",
    # "classifier.*"): the C++ SequenceClassifier must load it and give the same logits.
    cls_dir = args.out / "classifier"
    cls_dir.mkdir(exist_ok=True)
    torch.manual_seed(1)
    clf = BertForSequenceClassification.from_pretrained(str(args.model_dir), num_labels=3).eval()
    clf.save_pretrained(str(cls_dir), safe_serialization=True)
    shutil.copyfile(args.model_dir / "vocab.txt", cls_dir / "vocab.txt")
    with torch.no_grad():
        logits = clf(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
    save_file({"logits": logits.contiguous()}, str(cls_dir / "logits.safetensors"))

    # Extractive QA: MiniLM with a seeded random qa_outputs, saved whole; the C++ QuestionAnswering must give
    # the same start and end logits.
    qa_dir = args.out / "qa"
    qa_dir.mkdir(exist_ok=True)
    torch.manual_seed(3)
    qa = BertForQuestionAnswering.from_pretrained(str(args.model_dir)).eval()
    qa.save_pretrained(str(qa_dir), safe_serialization=True)
    with torch.no_grad():
        qa_out = qa(input_ids=ids, attention_mask=mask, token_type_ids=types)
    save_file({"start_logits": qa_out.start_logits.contiguous(), "end_logits": qa_out.end_logits.contiguous()},
              str(qa_dir / "logits.safetensors"))

    # A small random RoBERTa: its position ids count real tokens from pad_token_id + 1.
    rob_dir = args.out / "roberta"
    rob_dir.mkdir(exist_ok=True)
    torch.manual_seed(2)
    rcfg = RobertaConfig(vocab_size=120, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=96, max_position_embeddings=40, type_vocab_size=1, pad_token_id=1)
    rob = RobertaModel(rcfg).eval()
    rob.save_pretrained(str(rob_dir), safe_serialization=True)
    rids = torch.randint(3, 120, (3, 11))
    rids[0, 0] = rids[1, 0] = rids[2, 0] = 0
    rmask = torch.ones_like(rids)
    rids[1, 7:] = 1
    rmask[1, 7:] = 0
    rids[2, 4:] = 1
    rmask[2, 4:] = 0
    with torch.no_grad():
        rout = rob(input_ids=rids, attention_mask=rmask)
    save_file({"input_ids": rids.contiguous(), "attention_mask": rmask.contiguous(),
               "last_hidden_state": rout.last_hidden_state.contiguous(),
               "pooler_output": rout.pooler_output.contiguous()}, str(rob_dir / "outputs.safetensors"))
    print(f"make_reference: wrote {args.out}")


if __name__ == "__main__":
    main()
