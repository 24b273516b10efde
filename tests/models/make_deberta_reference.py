#!/usr/bin/env python3
"""Reference outputs of Hugging Face transformers' DeBERTa-v2/v3 for the C++ encoder tests (test_deberta.cpp).

Run by ctest (fixture "deberta_reference") with the venv's python before the C++ cases that read its output:

    make_deberta_reference.py --out <build>/tests/models/deberta-reference

Small DeBERTa-v2 models with seeded random weights (drawn wider than transformers' init, so that attention is
far from uniform and every term of the disentangled attention moves the outputs by much more than the test's
tolerance). For each configuration NAME, --out/NAME/ holds:
  classifier/          DebertaV2ForSequenceClassification checkpoint (config.json + model.safetensors)
  qa/                  DebertaV2ForQuestionAnswering checkpoint with the same encoder and a random qa_outputs
  pretrained/          (v3 only) DebertaV2ForMaskedLM (non-legacy head: lm_predictions.*) with the same encoder,
                       plus a stray mask_predictions.* tensor as the released v3 checkpoints carry
  outputs.safetensors  input_ids, attention_mask (padded rows), token_type_ids, and in eval mode:
                       last_hidden_state of DebertaV2Model.from_pretrained(classifier/), logits of the classifier,
                       start_logits / end_logits of the QA model
Configurations:
  v3      the DeBERTa-v3 settings: relative_attention, position_buckets 16 (log buckets), pos_att_type p2c|c2p
          (as a string), norm_rel_ebd layer_norm, share_att_key, no absolute positions, no token types
  v2      position_buckets -1 with max_relative_positions 8 (positions clamped), separate pos_key_proj /
          pos_query_proj, absolute positions, 2 token types, embedding_size 24 != hidden_size (embed_proj),
          pos_att_type as a list, gelu_new, a regression head (num_labels 1), tanh pooler activation
  norel   relative_attention false with pos_att_type given (only the scale factor sees it)
"""
import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import (DebertaV2Config, DebertaV2ForMaskedLM, DebertaV2ForQuestionAnswering,
                          DebertaV2ForSequenceClassification, DebertaV2Model)

COMMON = dict(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
              max_position_embeddings=64, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.1,
              layer_norm_eps=1e-7, pad_token_id=0, pooler_dropout=0.1)

CONFIGS = {
    "v3": dict(COMMON, relative_attention=True, position_buckets=16, max_relative_positions=-1,
               pos_att_type="p2c|c2p", norm_rel_ebd="layer_norm", share_att_key=True, position_biased_input=False,
               type_vocab_size=0, hidden_act="gelu", pooler_hidden_act="gelu", num_labels=3),
    "v2": dict(COMMON, relative_attention=True, position_buckets=-1, max_relative_positions=8,
               pos_att_type=["c2p", "p2c"], norm_rel_ebd="none", share_att_key=False, position_biased_input=True,
               type_vocab_size=2, embedding_size=24, hidden_act="gelu_new", pooler_hidden_act="tanh", num_labels=1,
               cls_dropout=0.2),
    "norel": dict(COMMON, relative_attention=False, pos_att_type=["p2c", "c2p"], norm_rel_ebd="layer_norm",
                  position_biased_input=True, type_vocab_size=0, hidden_act="gelu", num_labels=2),
}


def widen(module, generator):
    """Redraws every parameter: weights N(0, 0.3²), biases N(0, 0.1²), LayerNorm scales 1 + N(0, 0.1²)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "LayerNorm.weight" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.3 * noise)


def inputs(config, generator, batch=3, seq=40):
    ids = torch.randint(1, config.vocab_size, (batch, seq), generator=generator)
    lengths = [seq, 25, 7]  # full, half-padded, mostly padding
    mask = torch.zeros(batch, seq, dtype=torch.long)
    types = torch.zeros(batch, seq, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        if config.type_vocab_size > 1:
            types[b, n // 2:n] = 1
    ids = ids * mask + config.pad_token_id * (1 - mask)
    return ids, mask, types


def make(name, settings, out, seed):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    config = DebertaV2Config(**settings)
    folder = out / name
    cls = DebertaV2ForSequenceClassification(config).eval()
    widen(cls, generator)
    cls.save_pretrained(folder / "classifier", safe_serialization=True)

    qa_config = DebertaV2Config(**dict(settings, num_labels=2))
    qa = DebertaV2ForQuestionAnswering(qa_config).eval()
    qa.deberta.load_state_dict(cls.deberta.state_dict())
    widen(qa.qa_outputs, generator)
    qa.save_pretrained(folder / "qa", safe_serialization=True)

    if name == "v3":
        mlm = DebertaV2ForMaskedLM(DebertaV2Config(**dict(settings, legacy=False))).eval()
        mlm.deberta.load_state_dict(cls.deberta.state_dict())
        mlm.save_pretrained(folder / "pretrained", safe_serialization=True)
        # The released v3 checkpoints also carry the replaced-token-detection head: a stray tensor to ignore.
        path = folder / "pretrained" / "model.safetensors"
        tensors = load_file(path)
        tensors["mask_predictions.dense.weight"] = torch.zeros(4, 4)
        save_file(tensors, path, metadata={"format": "pt"})

    ids, mask, types = inputs(config, generator)
    with torch.no_grad():
        base = DebertaV2Model.from_pretrained(folder / "classifier").eval()
        hidden = base(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        cls2 = DebertaV2ForSequenceClassification.from_pretrained(folder / "classifier").eval()
        logits = cls2(input_ids=ids, attention_mask=mask, token_type_ids=types).logits
        qa2 = DebertaV2ForQuestionAnswering.from_pretrained(folder / "qa").eval()
        qa_out = qa2(input_ids=ids, attention_mask=mask, token_type_ids=types)
        # The checkpoints must reproduce the in-memory models (nothing re-initialised on load).
        assert torch.allclose(logits, cls(input_ids=ids, attention_mask=mask, token_type_ids=types).logits)
        assert torch.allclose(qa_out.start_logits,
                              qa(input_ids=ids, attention_mask=mask, token_type_ids=types).start_logits)
    save_file({"input_ids": ids, "attention_mask": mask, "token_type_ids": types,
               "last_hidden_state": hidden.contiguous(), "logits": logits.contiguous(),
               "start_logits": qa_out.start_logits.contiguous(), "end_logits": qa_out.end_logits.contiguous()},
              folder / "outputs.safetensors")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for i, (name, settings) in enumerate(CONFIGS.items()):
        make(name, settings, args.out, seed=1234 + i)


if __name__ == "__main__":
    main()
