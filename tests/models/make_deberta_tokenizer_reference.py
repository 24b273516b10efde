#!/usr/bin/env python3
"""Reference outputs for the C++ DebertaV2Tokenizer (tests/models/test_deberta_tokenizer.cpp).

Trains a small SentencePiece unigram model laid out like DeBERTa-v3's spm.model ([PAD]=0 [CLS]=1 [SEP]=2 [UNK]=3,
nmt_nfkc normaliser; [MASK] added after the last piece, as DeBERTa-v3's added_tokens.json does) on the shared GLUE
and SQuAD text, writes it as two tokenizer directories (DeBERTa-v3's settings, and do_lower_case + split_by_punct),
and writes reference.json with what Hugging Face gives on GLUE dev sentences and pairs, SQuAD questions and
contexts, and hard strings.

Which Hugging Face tokenizer is the reference (transformers 5 has no sentencepiece-based DebertaV2Tokenizer any
more; its DebertaV2Tokenizer is tokenizers-backed and, loaded from an spm.model, builds its own NFC normaliser
instead of the model's nmt_nfkc, so it gives other ids on e.g. full-width letters and ligatures):
  * ids without special tokens: transformers 4's sentencepiece-based DebertaV2Tokenizer (SPMTokenizer), restated
    below on the sentencepiece package: special tokens in the text kept whole, each chunk lowercased
    (do_lower_case), split at punctuation (split_by_punct), then SentencePiece's own encode; unknown pieces are
    [UNK]. The models the original DeBERTa checkpoints were trained with tokenised this way.
  * [CLS]/[SEP] layout, token_type_ids, "longest_first" truncation and offsets: the fast tokenizer that
    transformers' DebertaV2Converter (convert_slow_tokenizer) builds from the same spm.model, i.e. the
    tokenizers library, what transformers' DebertaV2TokenizerFast and run_glue/run_qa use. These are written only
    for texts on which its ids equal the sentencepiece-based ones (almost all; the rest are counted in
    reference.json's "comparison").

Needs sentencepiece, transformers and protobuf (the converter reads the model's proto).
Usage: make_deberta_tokenizer_reference.py --data_dir <shared>/data --out <dir>
"""

import argparse
import csv
import io
import json
import os
import shutil
import sys
import unicodedata

try:
    import sentencepiece as spm
    import google.protobuf  # noqa: F401  (DebertaV2Converter parses the model with it)
    from transformers.convert_slow_tokenizer import DebertaV2Converter
except ImportError as e:
    sys.exit(f"make_deberta_tokenizer_reference.py: {e}; install sentencepiece, protobuf and transformers into "
             "the venv (scripts/setup.sh)")

SPECIALS = {"pad_token": "[PAD]", "cls_token": "[CLS]", "sep_token": "[SEP]", "unk_token": "[UNK]",
            "mask_token": "[MASK]"}


def read_tsv(path):
    with open(path, encoding="utf-8-sig", newline="") as f:
        return list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def training_text(data):
    lines = []
    lines += [r[0] for r in read_tsv(f"{data}/glue/SST-2/train.tsv")[1:]]
    lines += [r[3] for r in read_tsv(f"{data}/glue/CoLA/train.tsv")]
    for r in read_tsv(f"{data}/glue/MRPC/train.tsv")[1:]:
        lines += [r[3], r[4]]
    squad = json.load(open(f"{data}/qa/squad_v2_sample.json", encoding="utf-8"))
    for article in squad["data"]:
        for p in article["paragraphs"]:
            lines.append(p["context"])
            lines += [q["question"] for q in p["qas"]]
    return lines


def train_model(lines):
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_writer=model, model_type="unigram", vocab_size=1200,
        pad_id=0, bos_id=1, eos_id=2, unk_id=3, pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
        unk_piece="[UNK]", normalization_rule_name="nmt_nfkc", character_coverage=0.9995, num_threads=1,
        input_sentence_size=0, shuffle_input_sentence=False, seed_sentencepiece_size=200000, minloglevel=2)
    return model.getvalue()


def write_tokenizer_dir(path, model_bytes, piece_count, do_lower_case, split_by_punct):
    """A directory as transformers 4 saved DeBERTa-v3's tokenizer: spm.model, tokenizer_config.json (with
    added_tokens_decoder), special_tokens_map.json and added_tokens.json."""
    os.makedirs(path, exist_ok=True)
    with open(f"{path}/spm.model", "wb") as f:
        f.write(model_bytes)
    ids = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3, "[MASK]": piece_count}
    decoder = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                        "special": True} for t, i in ids.items()}
    config = {"tokenizer_class": "DebertaV2Tokenizer", "do_lower_case": do_lower_case,
              "split_by_punct": split_by_punct, "bos_token": "[CLS]", "eos_token": "[SEP]", **SPECIALS,
              "added_tokens_decoder": decoder, "vocab_type": "spm"}
    json.dump(config, open(f"{path}/tokenizer_config.json", "w"), indent=2)
    json.dump({"bos_token": "[CLS]", "eos_token": "[SEP]", **SPECIALS},
              open(f"{path}/special_tokens_map.json", "w"), indent=2)
    json.dump({"[MASK]": piece_count}, open(f"{path}/added_tokens.json", "w"))


# ---- transformers 4's sentencepiece-based DebertaV2Tokenizer, restated ----

def is_punctuation(ch):
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def split_on_punc(text):
    words, new_word = [], True
    for ch in text:
        if is_punctuation(ch):
            words.append(ch)
            new_word = True
        else:
            if new_word:
                words.append("")
            new_word = False
            words[-1] += ch
    return words


class SlowDeberta:
    def __init__(self, model_file, do_lower_case, split_by_punct, added):
        self.sp = spm.SentencePieceProcessor(model_file=model_file)
        self.do_lower_case, self.split_by_punct = do_lower_case, split_by_punct
        self.added = added  # token -> id, kept whole in the text
        self.unk = self.sp.piece_to_id("[UNK]")

    def _chunk(self, text):
        if self.do_lower_case:
            text = text.lower()
        words = split_on_punc(text) if self.split_by_punct else [text]
        ids = []
        for w in words:
            for piece in self.sp.encode(w, out_type=str):
                pid = self.sp.piece_to_id(piece)
                ids.append(self.unk if self.sp.is_unknown(pid) or self.sp.id_to_piece(pid) != piece else pid)
        return ids

    def ids(self, text):
        out, pos = [], 0
        tokens = sorted(self.added, key=len, reverse=True)
        while True:
            hits = [(text.find(t, pos), -len(t), t) for t in tokens if text.find(t, pos) >= 0]
            if not hits:
                return out + self._chunk(text[pos:])
            at, _, tok = min(hits)
            out += self._chunk(text[pos:at]) + [self.added[tok]]
            pos = at + len(tok)


class Shim:
    """What DebertaV2Converter reads from the slow tokenizer it converts."""

    def __init__(self, model_file, do_lower_case, split_by_punct):
        self.vocab_file, self.do_lower_case, self.split_by_punct = model_file, do_lower_case, split_by_punct
        self.add_prefix_space, self.legacy = True, True
        self._sp = spm.SentencePieceProcessor(model_file=model_file)

    def convert_tokens_to_ids(self, token):
        return self._sp.piece_to_id(token)


def byte_offsets(text, char_offsets):
    starts = [0]
    for ch in text:
        starts.append(starts[-1] + len(ch.encode("utf-8")))
    return [[starts[b], starts[e]] for b, e in char_offsets]


HARD = [
    "", " ", "   ", "Hello world", "  lots   of    spaces  ", "tabs\tand\nnew\r\nlines\n", "a\u00a0b c\u3000d",
    "Café naïve résumé façade", "Crème brûlée à la carte", "e\u0301te\u0301 (combining accents)",
    "東京は日本の首都です", "北京 and 上海", "한국어 텍스트", "I ❤️ 🍕 😀👍🏽!", "☃ ☄ ⚛ ♞", "ＡＢＣ １２３ full width",
    "ﬁne ﬂowers ﬀ", "x [SEP] y [MASK] z", "[CLS][PAD][UNK] glued", "[sep] and [Mask] are not special",
    "zero\u200bwidth", "\ufeffstarts with a BOM", "ctrl\x01char\x7f", "Ellipsis… dash — quote “curly”",
    "don't can't won't", "$5.00 & 100% #hash @at ^caret `tick` ~tilde", "İstanbul ΣΟΦΙΑ Straße ǅ",
    "UPPER lower MiXeD", "numbers 1234567890 3.14159", "a-b_c/d\\e|f", "((nested)) [[brackets]] {{braces}}",
    "end with space ", "...", "?!", "¿Qué? ¡Sí!", "naïve CAFÉ", "x" * 300,
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data_dir", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    data = args.data_dir
    os.makedirs(args.out, exist_ok=True)

    model_bytes = train_model(training_text(data))
    pieces = spm.SentencePieceProcessor(model_proto=model_bytes).get_piece_size()

    mrpc = [(r[3], r[4]) for r in read_tsv(f"{data}/glue/MRPC/dev.tsv")[1:]]
    sst2 = [r[0] for r in read_tsv(f"{data}/glue/SST-2/dev.tsv")[1:]]
    cola = [r[3] for r in read_tsv(f"{data}/glue/CoLA/dev.tsv")]
    qnli = [(r[1], r[2]) for r in read_tsv(f"{data}/glue/QNLI/dev.tsv")[1:]][:300]
    squad = json.load(open(f"{data}/qa/squad_v2_sample.json", encoding="utf-8"))
    contexts = [p["context"] for a in squad["data"] for p in a["paragraphs"]]
    questions = [(q["question"], p["context"]) for a in squad["data"] for p in a["paragraphs"] for q in p["qas"]]
    squad_pairs = questions[::12][:60]

    variants = {"default": (False, False), "lower_punct": (True, True)}
    reference = {"piece_count": pieces, "variants": {}, "comparison": {}}
    for name, (lower, punct) in variants.items():
        tok_dir = f"{args.out}/tokenizer_{name}"
        shutil.rmtree(tok_dir, ignore_errors=True)
        write_tokenizer_dir(tok_dir, model_bytes, pieces, lower, punct)
        model_file = f"{tok_dir}/spm.model"
        added = {"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "[UNK]": 3, "[MASK]": pieces}
        slow = SlowDeberta(model_file, lower, punct, added)
        fast = DebertaV2Converter(Shim(model_file, lower, punct)).converted()
        compared = {"texts": 0, "fast_converter_differs": [], "transformers5_differs": []}
        try:
            from transformers import DebertaV2Tokenizer
            t5 = DebertaV2Tokenizer.from_pretrained(tok_dir)
        except Exception as e:  # only for the comparison
            t5, compared["transformers5_error"] = None, repr(e)

        def fast_ids(text):
            fast.no_truncation()
            return fast.encode(text, add_special_tokens=False).ids

        def check(text):
            want = slow.ids(text)
            compared["texts"] += 1
            same = fast_ids(text) == want
            if not same:
                compared["fast_converter_differs"].append(text[:80])
            if t5 is not None and t5(text, add_special_tokens=False)["input_ids"] != want:
                compared["transformers5_differs"].append(text[:80])
            return want, same

        texts = []
        for text in HARD + sst2 + cola + [q for q, _ in questions[:100]]:
            ids, _ = check(text)
            texts.append({"text": text, "ids": ids})
        singles, pairs = [], []
        for text in sst2[:300] + cola[:300] + HARD:
            ids, same = check(text)
            if not same:
                continue
            for max_length in (8, 16, 64):
                fast.enable_truncation(max_length, strategy="longest_first")
                e = fast.encode(text)
                singles.append({"a": text, "max_length": max_length, "input_ids": e.ids, "token_type_ids": e.type_ids})
        for a, b in mrpc + qnli + squad_pairs + [(HARD[i], HARD[-1 - i]) for i in range(len(HARD))]:
            (_, same_a), (_, same_b) = check(a), check(b)
            if not (same_a and same_b):
                continue
            for max_length in (0, 16, 23, 24, 64, 128, 384):
                if max_length:
                    fast.enable_truncation(max_length, strategy="longest_first")
                else:
                    fast.no_truncation()
                e = fast.encode(a, b)
                pairs.append({"a": a, "b": b, "max_length": max_length, "input_ids": e.ids,
                              "token_type_ids": e.type_ids})
        offsets = []
        fast.no_truncation()
        for text in contexts + [q for q, _ in questions] + [s for pair in qnli for s in pair][:200] + HARD:
            _, same = check(text)
            if not same:
                continue
            e = fast.encode(text, add_special_tokens=False)
            # Where normalisation changes characters (NFKC composes or expands them, drops control and format
            # characters, joins "\r\n"), the C++ tokenizer's spans follow SentencePiece's alignment, which can
            # differ from the fast tokenizer's by those characters: the test asserts overlap there, not equality.
            changes = unicodedata.normalize("NFKC", text) != text or "\r" in text or any(
                unicodedata.category(ch) in ("Cc", "Cf") and ch not in "\t\n" for ch in text)
            offsets.append({"text": text, "ids": e.ids, "offsets": byte_offsets(text, e.offsets),
                            "normalisation_changes": changes})
        reference["variants"][name] = {"dir": tok_dir, "do_lower_case": lower, "split_by_punct": punct,
                                       "texts": texts, "singles": singles, "pairs": pairs, "offsets": offsets}
        compared["fast_converter_differs_count"] = len(compared["fast_converter_differs"])
        compared["transformers5_differs_count"] = len(compared["transformers5_differs"])
        reference["comparison"][name] = compared
        print(f"{name}: {len(texts)} texts, {len(singles)} singles, {len(pairs)} pairs, {len(offsets)} offset texts; "
              f"the converted fast tokenizer differs on {compared['fast_converter_differs_count']} of "
              f"{compared['texts']} checks, transformers 5's DebertaV2Tokenizer on "
              f"{compared['transformers5_differs_count']}")
    with open(f"{args.out}/reference.json", "w", encoding="utf-8") as f:
        json.dump(reference, f, ensure_ascii=False)


if __name__ == "__main__":
    main()
