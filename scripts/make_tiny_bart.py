#!/usr/bin/env python3
"""Writes a small random-initialised BART checkpoint directory, laid out as facebook/bart-large's, for runs and
tests of the summarization program where no pretrained BART can be reached:

    make_tiny_bart.py --data_dir ../shared/data --out ~/.cache/increlora/models/tiny-bart [--d_model 64 ...]

The tokenizer is a byte-level BPE (GPT-2's scheme, as BART's) trained with the `tokenizers` package on the
documents and summaries of data_dir/summarization/*.jsonl, with BART's special tokens (<s> 0, <pad> 1, </s> 2,
<unk> 3, <mask> last), saved by transformers' BartTokenizer (vocab.json, merges.txt, tokenizer_config.json, ...).
The model is transformers' BartForConditionalGeneration with a small config and BART's generation settings
(forced BOS/EOS, no_repeat_ngram_size 3, beams), saved as model.safetensors + config.json +
generation_config.json. Deterministic for a given --seed; idempotent (an existing complete --out is kept unless
--force).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

import torch
from tokenizers import ByteLevelBPETokenizer
from transformers import BartConfig, BartForConditionalGeneration, BartTokenizer, GenerationConfig

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def texts(data_dir):
    files = sorted(Path(data_dir, "summarization").glob("*.jsonl"))
    if not files:
        sys.exit(f"make_tiny_bart: no .jsonl file in {Path(data_dir, 'summarization')}")
    out = []
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                out += [row["document"], row["summary"]]
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True, help="the shared data folder (its summarization/*.jsonl)")
    p.add_argument("--out", required=True)
    p.add_argument("--vocab_size", type=int, default=1000)
    p.add_argument("--d_model", type=int, default=64)
    p.add_argument("--layers", type=int, default=2, help="encoder and decoder layers each")
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--ffn", type=int, default=128)
    p.add_argument("--max_position_embeddings", type=int, default=1024)
    p.add_argument("--init_std", type=float, default=0.02, help="std of the random weights (transformers: 0.02)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true")
    a = p.parse_args()
    out = Path(a.out)
    if (out / "model.safetensors").exists() and (out / "merges.txt").exists() and not a.force:
        print(f"[make_tiny_bart] up to date in {out}")
        return
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        (out / stale).unlink(missing_ok=True)  # from_pretrained below would read them instead of vocab/merges

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts(a.data_dir), vocab_size=a.vocab_size, min_frequency=2, special_tokens=SPECIALS[:4])
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        vocab = json.loads(Path(tmp, "vocab.json").read_text(encoding="utf-8"))
        vocab["<mask>"] = len(vocab)  # BART's <mask> is the last id
        # facebook/bart-large's folder holds vocab.json and merges.txt (what the C++ tokenizer reads) beside the
        # tokenizer.json that transformers writes.
        (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
        (out / "merges.txt").write_bytes(Path(tmp, "merges.txt").read_bytes())
    tokenizer = BartTokenizer.from_pretrained(str(out))
    assert tokenizer("a b")["input_ids"][0] == 0 and tokenizer.pad_token_id == 1, "special token ids are not BART's"
    tokenizer.save_pretrained(str(out))

    torch.manual_seed(a.seed)
    config = BartConfig(vocab_size=len(vocab), d_model=a.d_model, encoder_layers=a.layers, decoder_layers=a.layers,
                        encoder_attention_heads=a.heads, decoder_attention_heads=a.heads, encoder_ffn_dim=a.ffn,
                        decoder_ffn_dim=a.ffn, max_position_embeddings=a.max_position_embeddings,
                        pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2,
                        forced_bos_token_id=0, forced_eos_token_id=2, dropout=0.1, attention_dropout=0.0,
                        activation_dropout=0.0, scale_embedding=False, init_std=a.init_std)
    model = BartForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        decoder_start_token_id=2, bos_token_id=0, eos_token_id=2, pad_token_id=1, forced_bos_token_id=0,
        forced_eos_token_id=2, num_beams=4, no_repeat_ngram_size=3, length_penalty=1.0, early_stopping=True,
        max_length=62, min_length=5)
    model.save_pretrained(str(out), safe_serialization=True)
    print(f"[make_tiny_bart] wrote a {sum(p.numel() for p in model.parameters())}-parameter BART (vocab {len(vocab)}) "
          f"to {out}")


if __name__ == "__main__":
    main()
