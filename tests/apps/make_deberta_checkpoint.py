#!/usr/bin/env python3
"""A small random DeBERTa-v3-shaped checkpoint directory for the programs' end-to-end tests (no pretrained DeBERTa
is reachable here): transformers' DebertaV2Model with the v3 settings (relative attention with log position
buckets, shared attention key, no absolute positions, no token types), its vocabulary the SentencePiece model
that the fixture deberta_tokenizer_reference trained on the shared text, saved as model.safetensors beside that
tokenizer's files, so that `glue` and `qa` read it as they would read microsoft/deberta-v3-base.

    make_deberta_checkpoint.py --tokenizer_dir <build>/tests/models/deberta-tokenizer-reference/tokenizer_default \
                               --out <build>/tests/apps/deberta-v3-tiny
"""
import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from transformers import DebertaV2Config, DebertaV2Model


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokenizer_dir", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    if not (args.tokenizer_dir / "spm.model").is_file():
        sys.exit(f"make_deberta_checkpoint: {args.tokenizer_dir}/spm.model is missing (the ctest fixture "
                 "deberta_tokenizer_reference writes it)")
    args.out.mkdir(parents=True, exist_ok=True)
    for name in ("spm.model", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"):
        if (args.tokenizer_dir / name).is_file():
            shutil.copyfile(args.tokenizer_dir / name, args.out / name)
    added = json.loads((args.tokenizer_dir / "added_tokens.json").read_text())
    vocab = max(added.values()) + 1  # the SentencePiece pieces and [MASK] after them
    torch.manual_seed(0)
    config = DebertaV2Config(vocab_size=vocab, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, max_position_embeddings=512, type_vocab_size=0,
                             relative_attention=True, position_buckets=64, max_relative_positions=-1,
                             norm_rel_ebd="layer_norm", share_att_key=True, pos_att_type=["p2c", "c2p"],
                             position_biased_input=False, pad_token_id=0, layer_norm_eps=1e-7,
                             hidden_act="gelu", pooler_hidden_size=64, pooler_dropout=0, pooler_hidden_act="gelu")
    DebertaV2Model(config).save_pretrained(str(args.out), safe_serialization=True)
    print(f"make_deberta_checkpoint: wrote {args.out} (vocab {vocab})")


if __name__ == "__main__":
    main()
