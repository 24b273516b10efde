#!/usr/bin/env python3
"""Reference outputs of transformers' `generate` (greedy and beam search) for test_generation.cpp.

A toy encoder-decoder whose next-token logits are a lookup in a fixed random table, indexed by the example
(the encoder input: one id per example) and the last two tokens of the decoder prefix, runs through
transformers' own GenerationMixin.generate under many settings (greedy; num_beams 2 and 4; length_penalty;
early_stopping True / False / "never"; no_repeat_ngram_size; min_length; forced BOS/EOS; max_new_tokens; pad id
0). The C++ test builds the same function from the same table as an IncrementalDecoder and must produce the
same sequences. A tiny random BartForConditionalGeneration (vocab 300, d_model 32, 2 + 2 layers; init_std 0.3, so
the logits are peaked and float rounding differences cannot flip a choice) is saved to <out>/bart/ with its
generate outputs, greedy and num_beams 4, in BART's generation settings; a batch row is padded.

Writes into --out:
  toy_table.safetensors   "table": [examples * vocab * vocab, vocab] float32 logits, row
                          (example * vocab + prev) * vocab + last (toy_row_index)
  toy_cases.json          {"vocab_size", "examples", "cases": [{"name", "config": generation_config.json's
                          fields, "sequences": transformers' output [[...]]}]}
  bart/                   config.json, generation_config.json, model.safetensors (save_pretrained) and
                          bart_cases.json: {"input_ids", "attention_mask", "cases": [{"name", "num_beams",
                          "sequences"}]}
"""
import argparse
import json
import pathlib

import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, GenerationMixin, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutput, Seq2SeqLMOutput

VOCAB = 16
EXAMPLES = 3
BOS, PAD, EOS = 0, 1, 2


def toy_row_index(example, prev, last):
    """The table row of an example whose decoder prefix ends in (prev, last); prev = last for a 1-token prefix."""
    return (example * VOCAB + prev) * VOCAB + last


class ToyConfig(PreTrainedConfig):
    model_type = "increlora_toy_table"

    def __init__(self, vocab_size=VOCAB, **kwargs):
        self.vocab_size = vocab_size
        kwargs.setdefault("is_encoder_decoder", True)
        super().__init__(**kwargs)


class ToyEncoder(torch.nn.Module):
    """Passes the example id through as the "hidden state"."""

    main_input_name = "input_ids"

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        return BaseModelOutput(last_hidden_state=input_ids[:, :, None].to(torch.float32))


class ToyModel(PreTrainedModel, GenerationMixin):
    config_class = ToyConfig
    main_input_name = "input_ids"

    def __init__(self, config, table):
        super().__init__(config)
        self.table = torch.nn.Parameter(table, requires_grad=False)
        self.encoder = ToyEncoder()

    def get_encoder(self, *args, **kwargs):
        return self.encoder

    def _init_weights(self, module):
        pass

    def prepare_inputs_for_generation(self, input_ids, encoder_outputs=None, attention_mask=None, **kwargs):
        # No cache: the whole decoder prefix every step (the function only needs its last two tokens).
        return {"decoder_input_ids": input_ids, "encoder_outputs": encoder_outputs, "attention_mask": attention_mask}

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, encoder_outputs=None, **kwargs):
        if encoder_outputs is None:
            encoder_outputs = self.encoder(input_ids)
        hidden = encoder_outputs[0] if not isinstance(encoder_outputs, BaseModelOutput) else encoder_outputs.last_hidden_state
        example = hidden[:, 0, 0].to(torch.int64)
        last = decoder_input_ids[:, -1]
        prev = decoder_input_ids[:, -2] if decoder_input_ids.shape[1] >= 2 else last
        logits = self.table[toy_row_index(example, prev, last)]
        return Seq2SeqLMOutput(logits=logits[:, None, :])


def toy_cases():
    """(name, generation settings) pairs; every setting not named keeps GenerationConfig's default."""
    base = dict(max_length=12, decoder_start_token_id=EOS, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    cases = [
        ("greedy", dict()),
        ("greedy min_length 7", dict(min_length=7)),
        ("greedy no_repeat_ngram_size 2", dict(no_repeat_ngram_size=2)),
        ("greedy forced bos and eos", dict(forced_bos_token_id=BOS, forced_eos_token_id=EOS)),
        ("greedy max_new_tokens 5", dict(max_new_tokens=5)),
        ("greedy max_length 2", dict(max_length=2)),
        ("beams 2", dict(num_beams=2)),
        ("beams 4 length_penalty 0.6", dict(num_beams=4, length_penalty=0.6)),
        ("beams 4 length_penalty 1.0", dict(num_beams=4, length_penalty=1.0)),
        ("beams 4 length_penalty 2.0", dict(num_beams=4, length_penalty=2.0)),
        ("beams 4 length_penalty 0", dict(num_beams=4, length_penalty=0.0)),
        ("beams 4 length_penalty -1 early never", dict(num_beams=4, length_penalty=-1.0, early_stopping="never")),
        ("beams 4 early True", dict(num_beams=4, early_stopping=True)),
        ("beams 4 early True length_penalty 2.0", dict(num_beams=4, early_stopping=True, length_penalty=2.0)),
        ("beams 4 early never", dict(num_beams=4, early_stopping="never")),
        ("beams 4 early never length_penalty 2.0", dict(num_beams=4, early_stopping="never", length_penalty=2.0)),
        ("beams 4 early False length_penalty 2.0", dict(num_beams=4, early_stopping=False, length_penalty=2.0)),
        ("beams 4 no_repeat_ngram_size 2", dict(num_beams=4, no_repeat_ngram_size=2)),
        ("beams 4 no_repeat_ngram_size 3", dict(num_beams=4, no_repeat_ngram_size=3)),
        ("beams 3 no_repeat_ngram_size 1", dict(num_beams=3, no_repeat_ngram_size=1)),
        ("beams 4 min_length 8", dict(num_beams=4, min_length=8)),
        ("beams 4 forced bos and eos", dict(num_beams=4, forced_bos_token_id=BOS, forced_eos_token_id=EOS)),
        ("beams 4 max_new_tokens 6", dict(num_beams=4, max_new_tokens=6)),
        ("beams 4 pad id 0", dict(num_beams=4, pad_token_id=0)),
        ("beams 5 long", dict(num_beams=5, max_length=24, length_penalty=1.5)),
        ("beams 4 as BART summarization", dict(num_beams=4, max_length=16, min_length=5, length_penalty=2.0,
                                               no_repeat_ngram_size=3, early_stopping=True,
                                               forced_bos_token_id=BOS, forced_eos_token_id=EOS)),
    ]
    out = []
    for name, settings in cases:
        merged = {**base, **settings}
        if "max_new_tokens" in merged:
            del merged["max_length"]  # transformers warns when both are set; max_new_tokens wins
        out.append((name, merged))
    return out


def run_toy(out):
    g = torch.Generator().manual_seed(20260)
    table = torch.randn(EXAMPLES * VOCAB * VOCAB, VOCAB, generator=g) * 2.0
    table[:, EOS] += 1.5  # sequences end at varied lengths
    table[:, PAD] -= 30.0  # the pad id is never a likely token, as in a trained model
    save_file({"table": table.contiguous()}, str(out / "toy_table.safetensors"))
    model = ToyModel(ToyConfig(), table).eval()
    encoder_ids = torch.arange(EXAMPLES)[:, None]
    cases = []
    for name, settings in toy_cases():
        gc = GenerationConfig(do_sample=False, use_cache=False, **settings)
        with torch.no_grad():
            seq = model.generate(input_ids=encoder_ids, attention_mask=torch.ones_like(encoder_ids),
                                 generation_config=gc)
        cases.append({"name": name, "config": settings, "sequences": seq.tolist()})
    with open(out / "toy_cases.json", "w") as f:
        json.dump({"vocab_size": VOCAB, "examples": EXAMPLES, "cases": cases}, f, indent=1)


def run_bart(out):
    from transformers import BartConfig, BartForConditionalGeneration

    torch.manual_seed(0)
    config = BartConfig(vocab_size=300, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
                        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, init_std=0.3,
                        forced_eos_token_id=EOS)
    model = BartForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(
        num_beams=4, max_length=20, min_length=5, length_penalty=2.0, no_repeat_ngram_size=3, early_stopping=True,
        decoder_start_token_id=EOS, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
        forced_bos_token_id=BOS, forced_eos_token_id=EOS)
    bart_dir = out / "bart"
    model.save_pretrained(str(bart_dir))
    g = torch.Generator().manual_seed(7)
    input_ids = torch.randint(3, 300, (3, 9), generator=g)
    attention_mask = torch.ones_like(input_ids)
    input_ids[0, 0], input_ids[1, 0], input_ids[2, 0] = BOS, BOS, BOS
    input_ids[0, -1], input_ids[1, -1] = EOS, EOS
    input_ids[2, 6] = EOS  # a shorter row, padded
    input_ids[2, 7:] = PAD
    attention_mask[2, 7:] = 0
    cases = []
    for name, overrides in [("greedy", dict(num_beams=1)), ("beams 4 with the checkpoint's settings", dict())]:
        with torch.no_grad():
            seq = model.generate(input_ids=input_ids, attention_mask=attention_mask, do_sample=False, **overrides)
        cases.append({"name": name, "num_beams": overrides.get("num_beams", 4), "sequences": seq.tolist()})
    with open(bart_dir / "bart_cases.json", "w") as f:
        json.dump({"input_ids": input_ids.tolist(), "attention_mask": attention_mask.tolist(), "cases": cases}, f,
                  indent=1)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    args = p.parse_args()
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    run_toy(out)
    run_bart(out)


if __name__ == "__main__":
    main()
