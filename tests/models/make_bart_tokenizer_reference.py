#!/usr/bin/env python3
"""Reference ids for the C++ BartTokenizer (tests/models/test_bart_tokenizer.cpp, tag [bart_tokenizer]).

Trains a small byte-level BPE (tokenizers' ByteLevelBPETokenizer, vocabulary ~2000) on the shared XSum sample
(documents and summaries) with BART's special tokens laid out as facebook/bart-large lays them out: <s> 0, <pad> 1,
</s> 2, <unk> 3 and <mask> last; <mask> flagged lstrip as in bart-large's tokenizer.json. Loads it with
transformers' BartTokenizer (in transformers 5 an alias of RobertaTokenizer on the tokenizers backend; the class
used is recorded) and saves it with save_pretrained beside vocab.json and merges.txt, so that the directory has
the files a real facebook/bart-large directory has. Then writes reference.json with the ids of every XSum
document and summary (untruncated, and truncated to 64 and 768 tokens: the seed's --max_target_length and
--max_source_length), of hand-written hard strings and of 400 random strings of the pieces the pre-tokenizer's
rules turn on (fixed seed), and decode() of those ids with and without skip_special_tokens; and decode() of ids
that cut a character. Also writes a copy of the directory with only tokenizer.json (+ tokenizer_config.json),
which the C++ test checks on the same cases, and one with add_prefix_space=True with the ids of the hard strings
and of other random strings.

Usage: make_bart_tokenizer_reference.py --data_dir /work/shared/data --out <dir>
"""
import argparse
import json
import random
import shutil
from pathlib import Path

from tokenizers import ByteLevelBPETokenizer
import transformers
from transformers import AddedToken, BartTokenizer

HARD = [
    "",
    " ",
    "   ",
    "Hello world",
    " Hello world",
    "Hello  world",
    "Hello   world   ",
    "trailing space ",
    "trailing spaces   ",
    "line one\nline two\n",
    "para\n\nnext\n\n\n  indented",
    "tab\tseparated\t\tvalues\t",
    "\r\nwindows\r\nlines",
    "It's the dog's bone; they're here, we've got it, I'm sure they'll come, he'd say.",
    "IT'S LOUD, DON'T SHOUT, I'M HERE, THEY'RE, WE'VE, YOU'LL, HE'D",
    "'s 't 're 've 'm 'll 'd 'S 'T 'x '' ''s",
    "rock'n'roll o'clock ma'am",
    "1234567890 3.14159 1,000,000 2nd 10% $5.99 ½ ² ٣",
    "Wait... what?!?! (yes) [no] {maybe} <tag> -- — – \"quoted\" «guillemets»",
    "!!!??? ... ,,, ;;; ::: @@@ ### $$$ %%% ^^^ &&& *** ((( ))) ___ +++ === ~~~ ``` |||",
    "emoji 😀🎉👍🏽 and flags 🇬🇧 and ZWJ 👨‍👩‍👧",
    "CJK 中文字符 日本語のテキスト 한국어 텍스트",
    "accents: café naïve résumé Ångström Zoë façade São Paulo Łódź",
    "combining: cafe\u0301 n\u0303",
    "Hello <mask> world",
    "Hello<mask>world",
    "Hello  <mask>  world",
    "<mask> at the start and at the end <mask>",
    "a\n<mask>\nb",
    "<s>already framed</s>",
    "pad <pad> and unk <unk> inside",
    "<mask><mask> twice",
    "not a <mask token> and not <MASK>",
    "non-breaking\u00a0space and em\u2003space and ideographic\u3000space",
    "weird controls \x1c\x1d\x1e\x1f and \x85 and \u200b zero width",
    "Greek αβγ Cyrillic абв Arabic العربية Hebrew עברית Devanagari हिन्दी Thai ภาษาไทย",
    "mixed123abc abc123 123abc 12 34",
    "email@example.com https://www.bbc.co.uk/news?id=38295789#top",
    "    leading spaces",
    "\n\nleading newlines",
    "ends with newline\n",
    "\t",
    "https://example.com/" + "abcdefghij0123456789" * 200,  # one long word: BPE over 4000 symbols
    "a" * 2000,  # ties everywhere: the leftmost merge first
    "the" * 700 + " " + "ing" * 500,
]


def random_strings(count=400, seed=0):
    """Short strings drawn from the characters and tokens the pre-tokenizer's rules turn on (fixed seed)."""
    rng = random.Random(seed)
    pieces = [" ", " ", "  ", "\n", "\t", "\r\n", "'", "'", "s", "t", "re", "ve", "m", "ll", "d", "S", "LL", "a", "the",
              "1", "42", "!", ".", ",", "-", "é", "\u0301", "中", "😀", "\u00a0", "\u2003", "\x1c", "\x85",
              "<mask>", "<s>", "</s>", "<pad>", "<", ">", "/"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(1, 16))) for _ in range(count)]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--vocab_size", type=int, default=2000)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    records = [json.loads(l) for l in open(Path(args.data_dir) / "summarization" / "xsum_sample.jsonl")]
    texts = []
    for r in records:
        texts += [r["document"], r["summary"]]

    # Train with <s> <pad> </s> <unk> first (ids 0..3), then put <mask> last as bart-large has it (50264).
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=args.vocab_size, min_frequency=2,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>"], show_progress=False)
    raw = out / "raw"
    raw.mkdir(exist_ok=True)
    bpe.save_model(str(raw))
    vocab = json.loads((raw / "vocab.json").read_text())
    assert [vocab[t] for t in ["<s>", "<pad>", "</s>", "<unk>"]] == [0, 1, 2, 3]
    vocab["<mask>"] = len(vocab)
    tok_dir = out / "tokenizer"
    if tok_dir.exists():
        shutil.rmtree(tok_dir)
    tok_dir.mkdir()
    (tok_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    shutil.copy(raw / "merges.txt", tok_dir / "merges.txt")

    mask = AddedToken("<mask>", lstrip=True, rstrip=False, normalized=False, special=True)
    tok = BartTokenizer(vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"), mask_token=mask)
    tok.save_pretrained(str(tok_dir))
    # What a user gets: loaded back from the directory.
    tok = BartTokenizer.from_pretrained(str(tok_dir))
    assert tok.mask_token_id == len(vocab) - 1 and tok.added_tokens_decoder[tok.mask_token_id].lstrip

    json_only = out / "tokenizer-json-only"
    if json_only.exists():
        shutil.rmtree(json_only)
    json_only.mkdir()
    for name in ["tokenizer.json", "tokenizer_config.json"]:
        shutil.copy(tok_dir / name, json_only / name)

    prefix_dir = out / "tokenizer-prefix-space"
    if prefix_dir.exists():
        shutil.rmtree(prefix_dir)
    prefix_dir.mkdir()
    tok_prefix = BartTokenizer(vocab=str(tok_dir / "vocab.json"), merges=str(tok_dir / "merges.txt"),
                               mask_token=mask, add_prefix_space=True)
    tok_prefix.save_pretrained(str(prefix_dir))
    shutil.copy(tok_dir / "vocab.json", prefix_dir / "vocab.json")
    shutil.copy(tok_dir / "merges.txt", prefix_dir / "merges.txt")
    tok_prefix = BartTokenizer.from_pretrained(str(prefix_dir))

    def case(t, text, kind):
        full = t(text)["input_ids"]
        c = {"kind": kind, "text": text, "ids": full,
             "tokens": t(text, add_special_tokens=False)["input_ids"],
             "decode_skip": t.decode(full, skip_special_tokens=True),
             "decode_keep": t.decode(full, skip_special_tokens=False)}
        for n in (64, 768):
            c[f"ids_{n}"] = t(text, max_length=n, truncation=True)["input_ids"]
            c[f"decode_skip_{n}"] = t.decode(c[f"ids_{n}"], skip_special_tokens=True)
        return c

    cases = [case(tok, r["document"], "document") for r in records]
    cases += [case(tok, r["summary"], "summary") for r in records]
    cases += [case(tok, s, "hard") for s in HARD]
    cases += [case(tok, s, "random") for s in random_strings()]

    # Ids cut inside a character, and a special token between the halves of one.
    e_acute = tok("é", add_special_tokens=False)["input_ids"]
    emoji = tok("😀", add_special_tokens=False)["input_ids"]
    raw_cases = []
    for ids in [e_acute[:1], emoji[:-1], e_acute[:1] + [tok.mask_token_id] + e_acute[1:],
                [tok.bos_token_id] + emoji[:1] + [tok.eos_token_id] + emoji[1:], emoji[1:] + e_acute,
                [tok.pad_token_id, tok.unk_token_id, tok.mask_token_id]]:
        raw_cases.append({"ids": ids, "decode_skip": tok.decode(ids, skip_special_tokens=True),
                          "decode_keep": tok.decode(ids, skip_special_tokens=False)})

    reference = {
        "transformers": transformers.__version__,
        "class": f"{type(tok).__module__}.{type(tok).__qualname__}",
        "class_requested": "transformers.BartTokenizer",
        "vocab_size": len(tok),
        "bos_id": tok.bos_token_id, "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id,
        "unk_id": tok.unk_token_id, "mask_id": tok.mask_token_id,
        "tokenizer_dir": "tokenizer", "json_only_dir": "tokenizer-json-only",
        "prefix_space_dir": "tokenizer-prefix-space",
        "cases": cases,
        "raw_decode": raw_cases,
        "prefix_space_cases": [case(tok_prefix, s, "hard") for s in HARD] +
                          [case(tok_prefix, s, "random") for s in random_strings(seed=1)],
    }
    (out / "reference.json").write_text(json.dumps(reference, ensure_ascii=False, indent=1))
    print(f"wrote {out / 'reference.json'}: {len(cases)} cases with {type(tok).__name__}, vocab {len(tok)}")


if __name__ == "__main__":
    main()
