#!/usr/bin/env python3
"""Writes small random BART checkpoints and what Hugging Face transformers computes on them, for test_bart.cpp.

Layout under --out:
  NAME/                 BartForConditionalGeneration.save_pretrained(safe_serialization=True): config.json,
                        model.safetensors (names "model.*", final_logits_bias, the tied embedding as transformers
                        stores it)
  NAME/outputs.safetensors
                        input_ids, attention_mask [3, 24] (rows padded to 24, 15, 6 tokens), labels [3, 10] (-100
                        after 10, 7, 3 labels), decoder_input_ids = shift_tokens_right(labels),
                        decoder_attention_mask (1 where decoder_input_ids is not padding),
                        encoder_last_hidden_state, last_hidden_state (BartModel's decoder states), logits — all in
                        eval mode, transformers' default attention
  gelu_bare/            a bare BartModel of the gelu weights (names without "model.", no final_logits_bias)
  relu_copies/          the relu checkpoint with the tied embedding stored four times (model.shared.weight,
                        model.encoder.embed_tokens.weight, model.decoder.embed_tokens.weight, lm_head.weight) and a
                        stray classification_head tensor
Configurations (vocab 300, d_model 32, max_position_embeddings 64):
  gelu   scale_embedding True, activation gelu, 2 + 2 layers, 4 heads, ffn 37
  relu   scale_embedding False, activation relu, 3 encoder layers (4 heads, ffn 37), 1 decoder layer (2 heads,
         ffn 29)
Weights are redrawn wider than transformers' init (N(0, 0.3²) weights, N(0, 0.1²) biases and final_logits_bias,
LayerNorm scales 1 + N(0, 0.1²)), so that a wrong mask, scale or offset shows. Seeded: the output is the same on
every run.
"""
import argparse
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from transformers import BartConfig, BartForConditionalGeneration, BartModel
from transformers.models.bart.modeling_bart import shift_tokens_right

COMMON = dict(vocab_size=300, d_model=32, max_position_embeddings=64, dropout=0.1, attention_dropout=0.1,
              activation_dropout=0.1, pad_token_id=1, bos_token_id=0, eos_token_id=2, decoder_start_token_id=2)

CONFIGS = {
    "gelu": dict(COMMON, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4,
                 encoder_ffn_dim=37, decoder_ffn_dim=37, activation_function="gelu", scale_embedding=True),
    "relu": dict(COMMON, encoder_layers=3, decoder_layers=1, encoder_attention_heads=4, decoder_attention_heads=2,
                 encoder_ffn_dim=37, decoder_ffn_dim=29, activation_function="relu", scale_embedding=False),
}


def widen(module, generator):
    """Redraws every parameter: weights N(0, 0.3²), biases N(0, 0.1²), LayerNorm scales 1 + N(0, 0.1²)."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=generator)
            if "layer_norm.weight" in name or "layernorm_embedding.weight" in name:
                p.copy_(1.0 + 0.1 * noise)
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:
                p.copy_(0.3 * noise)


def inputs(config, generator, batch=3, src=24, tgt=10):
    lengths = [src, 15, 6]  # full, padded, mostly padding
    ids = torch.randint(3, config.vocab_size, (batch, src), generator=generator)
    mask = torch.zeros(batch, src, dtype=torch.long)
    for b, n in enumerate(lengths):
        mask[b, :n] = 1
        ids[b, 0] = config.bos_token_id
        ids[b, n - 1] = config.eos_token_id
    ids = ids * mask + config.pad_token_id * (1 - mask)
    label_lengths = [tgt, 7, 3]
    labels = torch.randint(3, config.vocab_size, (batch, tgt), generator=generator)
    for b, n in enumerate(label_lengths):
        labels[b, n - 1] = config.eos_token_id
        labels[b, n:] = -100
    decoder_ids = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
    decoder_mask = decoder_ids.ne(config.pad_token_id).long()
    return ids, mask, labels, decoder_ids, decoder_mask


def make(name, settings, out, seed):
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    config = BartConfig(**settings)
    model = BartForConditionalGeneration(config).eval()
    widen(model, generator)
    with torch.no_grad():
        model.final_logits_bias.copy_(0.1 * torch.randn(model.final_logits_bias.shape, generator=generator))
    folder = out / name
    model.save_pretrained(folder, safe_serialization=True)

    ids, mask, labels, decoder_ids, decoder_mask = inputs(config, generator)
    with torch.no_grad():
        loaded = BartForConditionalGeneration.from_pretrained(folder).eval()
        out_full = loaded(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                          decoder_attention_mask=decoder_mask)
        # The checkpoint must reproduce the in-memory model (nothing re-initialised on load).
        direct = model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                       decoder_attention_mask=decoder_mask)
        assert torch.allclose(out_full.logits, direct.logits)
        base = loaded.model(input_ids=ids, attention_mask=mask, decoder_input_ids=decoder_ids,
                            decoder_attention_mask=decoder_mask)
    save_file({"input_ids": ids, "attention_mask": mask, "labels": labels, "decoder_input_ids": decoder_ids,
               "decoder_attention_mask": decoder_mask,
               "encoder_last_hidden_state": base.encoder_last_hidden_state.contiguous(),
               "last_hidden_state": base.last_hidden_state.contiguous(), "logits": out_full.logits.contiguous()},
              folder / "outputs.safetensors")

    if name == "gelu":
        bare = BartModel(config).eval()
        bare.load_state_dict(model.model.state_dict())
        bare.save_pretrained(out / "gelu_bare", safe_serialization=True)
        names = set(load_file(out / "gelu_bare" / "model.safetensors"))
        assert not any(n.startswith("model.") for n in names) and "final_logits_bias" not in names, names
    if name == "relu":
        tensors = load_file(folder / "model.safetensors")
        shared = model.model.shared.weight.detach().clone()
        for n in ("model.shared.weight", "model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight",
                  "lm_head.weight"):
            tensors[n] = shared.clone()
        tensors["model.classification_head.dense.weight"] = torch.zeros(4, 4)
        (out / "relu_copies").mkdir(parents=True, exist_ok=True)
        save_file(tensors, out / "relu_copies" / "model.safetensors", metadata={"format": "pt"})
        (out / "relu_copies" / "config.json").write_text((folder / "config.json").read_text())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    for i, (name, settings) in enumerate(CONFIGS.items()):
        make(name, settings, args.out, seed=4321 + i)


if __name__ == "__main__":
    main()
