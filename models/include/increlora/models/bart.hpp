#pragma once
/// \file
/// The BART encoder-decoder (Hugging Face model_type "bart": facebook/bart-base, facebook/bart-large,
/// facebook/bart-large-cnn and their fine-tunings) on LibTorch, reading Hugging Face checkpoints (config.json +
/// model.safetensors), as transformers' modeling_bart.py computes it: BartModel (encoder and decoder) and
/// BartForConditionalGeneration (the LM head tied to the shared embeddings, plus final_logits_bias), with an
/// incremental decoder (a key/value cache per layer) for greedy and beam search (increlora/models/generation.hpp).
///
/// Modules carry Hugging Face's names ("model.shared", "model.encoder.embed_positions",
/// "model.encoder.layernorm_embedding", "model.encoder.layers.0.self_attn.q_proj", "model.encoder.layers.0.fc1",
/// "model.decoder.layers.0.encoder_attn.k_proj", "model.decoder.layers.0.encoder_attn_layer_norm",
/// "final_logits_bias", ...), so checkpoint tensors map by name. Every q_proj, k_proj, v_proj, out_proj, fc1 and fc2
/// (encoder and decoder, self- and cross-attention) is an `increlora::SVDLinear`: r = `LoraSettings::r` when its
/// qualified name matches one of the patterns, r = 0 (exactly a Linear, no adapter tensors) otherwise — as in
/// increlora::bert and increlora::deberta.
///
/// Tied weights: with tie_word_embeddings (BART's default) the encoder's and the decoder's `embed_tokens` and the
/// LM head are the one Embedding registered as "shared": `named_parameters()` lists that tensor once (as
/// "model.shared.weight"), as PyTorch's `named_parameters()` does for transformers' model, so an optimizer,
/// a checkpoint or a parameter count sees it once. The typed members `embed_tokens` reach the same module.
///
/// Example:
/// \code
///   auto config = increlora::bart::BartConfig::from_json_file(dir + "/config.json");
///   increlora::bart::LoraSettings lora;
///   lora.patterns = increlora::bart::lora_patterns_from_short_names({"q_proj", "v_proj"});
///   lora.r = 1;
///   increlora::bart::BartForConditionalGeneration model(config, lora);
///   increlora::bart::load_pretrained(*model, dir);
///   auto decoder_input_ids = increlora::bart::shift_tokens_right(labels, config.pad_token_id,
///                                                                config.decoder_start_token_id);
///   auto logits = model(input_ids, attention_mask, decoder_input_ids);  // [batch, tgt, vocab]
/// \endcode

#include <increlora/models/bert.hpp>
#include <increlora/models/generation.hpp>
#include <increlora/svd_linear.hpp>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace increlora::bart {

/// Which Linear layers get an adapter: the same settings as the BERT family's.
using bert::LoraSettings;
/// What `load_pretrained` left fresh and what it did not use.
using bert::PretrainedLoad;

/// The fields of a Hugging Face BART config.json that the model uses. Defaults are transformers' BartConfig
/// defaults (facebook/bart-large's shape), so a field missing from the file means what it means to transformers.
struct BartConfig {
  std::string model_type = "bart";
  int64_t vocab_size = 50265;
  int64_t d_model = 1024;  ///< the width of every hidden state
  int64_t encoder_layers = 12;
  int64_t decoder_layers = 12;
  int64_t encoder_attention_heads = 16;
  int64_t decoder_attention_heads = 16;
  int64_t encoder_ffn_dim = 4096;
  int64_t decoder_ffn_dim = 4096;
  /// The feed-forward activation: "gelu", "gelu_new" / "gelu_pytorch_tanh" (tanh approximation), "relu",
  /// "silu" / "swish" or "tanh".
  std::string activation_function = "gelu";
  double dropout = 0.1;             ///< on the embeddings and after every sublayer (training only)
  double attention_dropout = 0.0;   ///< on the attention probabilities (training only)
  double activation_dropout = 0.0;  ///< after the feed-forward activation (training only)
  double encoder_layerdrop = 0.0;   ///< the probability of skipping an encoder layer in training (LayerDrop)
  double decoder_layerdrop = 0.0;   ///< the same for the decoder
  /// The longest encoder input and decoder prefix; the position tables have max_position_embeddings + 2 rows
  /// (BART's learned positions are offset by 2).
  int64_t max_position_embeddings = 1024;
  double init_std = 0.02;
  /// Whether token embeddings are multiplied by sqrt(d_model) (see `embed_scale()`).
  bool scale_embedding = false;
  int64_t pad_token_id = 1;
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 2;
  /// The first token of every decoder input (`shift_tokens_right`) and of generation.
  int64_t decoder_start_token_id = 2;
  std::optional<int64_t> forced_bos_token_id;      ///< generation: the token forced after the start token
  std::optional<int64_t> forced_eos_token_id = 2;  ///< generation: the token forced at the last position
  /// Whether the LM head is the shared embedding matrix (true for every released BART). False gives the LM head,
  /// the encoder's and the decoder's embed_tokens tensors of their own, as transformers 5 unties them.
  bool tie_word_embeddings = true;

  /// Parses a config.json; throws naming the file and the field when a field has the wrong type or an invalid
  /// value, and for settings this model does not implement (another model_type such as "mbart"; pre-LayerNorm
  /// layers: normalize_before / add_final_layer_norm true; static_position_embeddings true;
  /// normalize_embedding false; extra_pos_embeddings other than 2).
  static BartConfig from_json_file(const std::string& path);
  static BartConfig from_json_string(const std::string& text, const std::string& origin = "config.json");

  /// sqrt(d_model) with scale_embedding, else 1.
  double embed_scale() const;
};

/// Whether the config.json at `config_json_path` has model_type "bart", for programs that dispatch on the
/// family. Throws when the file cannot be read or is not a JSON object.
bool is_bart_config(const std::string& config_json_path);

/// The seed's short module names (`--lora_module q_proj,k_proj,v_proj,out_proj,fc1,fc2`) as patterns over BART's
/// qualified names. Each of q_proj, k_proj, v_proj, out_proj, fc1, fc2 matches that module in every layer, encoder
/// and decoder, self- and cross-attention (as a dotted suffix, it passes through unchanged). Two group names are
/// added: "self_attn" → the four projections of every self-attention (encoder and decoder), "encoder_attn" → the
/// four projections of every decoder cross-attention. Other entries (qualified names, suffixes such as
/// "encoder_attn.q_proj" or "decoder.layers.0.fc1", "re:...") pass through.
std::vector<std::string> lora_patterns_from_short_names(const std::vector<std::string>& names);

/// transformers' shift_tokens_right: the decoder inputs of teacher forcing from `labels` [batch, tgt] int64:
/// each row shifted one place right, decoder_start_token_id in front, the last label dropped, and -100 (the
/// ignored label) replaced by pad_token_id.
torch::Tensor shift_tokens_right(const torch::Tensor& labels, int64_t pad_token_id, int64_t decoder_start_token_id);

/// BART's learned position embeddings ("embed_positions"): a [max_position_embeddings + 2, d_model] table read
/// at position + 2 (the offset fairseq left from its padding convention).
struct BartLearnedPositionalEmbeddingImpl : torch::nn::Module {
  BartLearnedPositionalEmbeddingImpl(int64_t max_position_embeddings, int64_t d_model);
  /// The embeddings of positions [past, past + length): [length, d_model], broadcast over the batch.
  torch::Tensor forward(int64_t length, int64_t past = 0);

  static constexpr int64_t kOffset = 2;
  int64_t max_positions;
  torch::Tensor weight;
};
TORCH_MODULE(BartLearnedPositionalEmbedding);

/// BART's multi-head attention ("self_attn", "encoder_attn"): q_proj, k_proj, v_proj, out_proj, scores scaled by
/// head_dim^-0.5, an additive mask, softmax and dropout (training only).
struct BartAttentionImpl : torch::nn::Module {
  BartAttentionImpl(int64_t d_model, int64_t heads, double attention_dropout, const LoraSettings& lora,
                    const std::string& prefix);
  /// Attention of `hidden` [batch, tgt, d_model] over `key_value_states` [batch, src, d_model] (undefined:
  /// `hidden` itself, self-attention). `mask`: additive float [batch or 1, 1, tgt or 1, src], 0 where a key may
  /// be attended, the dtype's lowest value where not; undefined: every key.
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& key_value_states = {},
                        const torch::Tensor& mask = {});
  /// The keys and values of `states` [batch, src, d_model]: k_proj and v_proj split into heads,
  /// each [batch, heads, src, head_dim] (what the incremental decoder caches).
  std::pair<torch::Tensor, torch::Tensor> keys_values(const torch::Tensor& states);
  /// The attention of `hidden`'s queries over given keys and values (as `keys_values` returns them), through
  /// out_proj: [batch, tgt, d_model].
  torch::Tensor attend(const torch::Tensor& hidden, const torch::Tensor& keys, const torch::Tensor& values,
                       const torch::Tensor& mask);

  int64_t heads, head_dim;
  double attention_dropout;
  SVDLinear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(BartAttention);

/// An encoder layer (post-LayerNorm): self-attention, dropout, residual, self_attn_layer_norm; fc1, activation,
/// fc2, dropout, residual, final_layer_norm.
struct BartEncoderLayerImpl : torch::nn::Module {
  BartEncoderLayerImpl(const BartConfig& config, const LoraSettings& lora, const std::string& prefix);
  /// hidden [batch, src, d_model]; mask as BartAttention takes it.
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& mask);

  BartConfig config;
  BartAttention self_attn{nullptr};
  torch::nn::LayerNorm self_attn_layer_norm{nullptr};
  SVDLinear fc1{nullptr}, fc2{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};
};
TORCH_MODULE(BartEncoderLayer);

/// What one decoder layer keeps between incremental decoding steps: its self-attention keys and values of the
/// prefix so far (grown by one position per step; undefined before the first) and its cross-attention keys and
/// values of the encoder states (computed once). Each [rows, heads, length, head_dim].
struct BartLayerCache {
  torch::Tensor self_keys, self_values;
  torch::Tensor cross_keys, cross_values;
};

/// A decoder layer (post-LayerNorm): causal self-attention, residual, self_attn_layer_norm; cross-attention over
/// the encoder states ("encoder_attn"), residual, encoder_attn_layer_norm; fc1, activation, fc2, residual,
/// final_layer_norm.
struct BartDecoderLayerImpl : torch::nn::Module {
  BartDecoderLayerImpl(const BartConfig& config, const LoraSettings& lora, const std::string& prefix);
  /// hidden [batch, tgt, d_model]; self_mask additive [batch, 1, tgt, tgt] (causal and padding);
  /// encoder_hidden [batch, src, d_model]; encoder_mask additive [batch, 1, 1, src].
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& self_mask,
                        const torch::Tensor& encoder_hidden, const torch::Tensor& encoder_mask);
  /// One incremental step: hidden [rows, 1, d_model] is the newest position, which attends to the cached prefix
  /// and itself (no mask: a generated prefix holds no padding) and to the cached cross-attention keys and values
  /// under `encoder_mask` ([rows, 1, 1, src] additive). Appends the new position's keys and values to `cache`.
  torch::Tensor forward_cached(const torch::Tensor& hidden, BartLayerCache& cache, const torch::Tensor& encoder_mask);

  BartConfig config;
  BartAttention self_attn{nullptr};
  torch::nn::LayerNorm self_attn_layer_norm{nullptr};
  BartAttention encoder_attn{nullptr};
  torch::nn::LayerNorm encoder_attn_layer_norm{nullptr};
  SVDLinear fc1{nullptr}, fc2{nullptr};
  torch::nn::LayerNorm final_layer_norm{nullptr};

 private:
  torch::Tensor feed_forward(torch::Tensor hidden);
};
TORCH_MODULE(BartDecoderLayer);

/// transformers' BartEncoder ("encoder"): scaled token embeddings + learned positions, layernorm_embedding,
/// dropout, the layers.
struct BartEncoderImpl : torch::nn::Module {
  /// `embed_tokens`: the shared embedding (tied: not registered here, so its weight is named once, as
  /// "shared.weight"), or undefined to own one (untied: registered as "embed_tokens").
  BartEncoderImpl(const BartConfig& config, torch::nn::Embedding embed_tokens, const LoraSettings& lora,
                  const std::string& prefix);
  /// Encoder states [batch, src, d_model] of input_ids [batch, src] int64 under attention_mask [batch, src]
  /// (1 = token, 0 = padding; undefined: all tokens). Padding keys are masked; padding rows are computed as
  /// transformers computes them (they attend to the real tokens).
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {});

  BartConfig config;
  torch::nn::Embedding embed_tokens{nullptr};
  BartLearnedPositionalEmbedding embed_positions{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<BartEncoderLayer> layer_list;  // typed views of `layers`' entries
  torch::nn::LayerNorm layernorm_embedding{nullptr};
};
TORCH_MODULE(BartEncoder);

/// transformers' BartDecoder ("decoder"): scaled token embeddings + learned positions, layernorm_embedding,
/// dropout, the layers (causal self-attention, cross-attention over the encoder states).
struct BartDecoderImpl : torch::nn::Module {
  /// `embed_tokens` as for BartEncoder.
  BartDecoderImpl(const BartConfig& config, torch::nn::Embedding embed_tokens, const LoraSettings& lora,
                  const std::string& prefix);
  /// Decoder states [batch, tgt, d_model] of decoder_input_ids [batch, tgt] int64 under decoder_attention_mask
  /// [batch, tgt] (1 = token, 0 = padding; undefined: all tokens; combined with the causal mask), over
  /// encoder_hidden [batch, src, d_model] under attention_mask [batch, src] (undefined: all tokens).
  torch::Tensor forward(const torch::Tensor& decoder_input_ids, const torch::Tensor& decoder_attention_mask,
                        const torch::Tensor& encoder_hidden, const torch::Tensor& attention_mask);
  /// The token + position embeddings of `tokens` [rows, new] at positions [past, past + new), through
  /// layernorm_embedding and dropout: what the first layer reads.
  torch::Tensor embed(const torch::Tensor& tokens, int64_t past);

  BartConfig config;
  torch::nn::Embedding embed_tokens{nullptr};
  BartLearnedPositionalEmbedding embed_positions{nullptr};
  torch::nn::ModuleList layers{nullptr};
  std::vector<BartDecoderLayer> layer_list;  // typed views of `layers`' entries
  torch::nn::LayerNorm layernorm_embedding{nullptr};
};
TORCH_MODULE(BartDecoder);

/// transformers' BartModel: "shared" (the token embeddings), "encoder", "decoder".
struct BartModelImpl : torch::nn::Module {
  /// `prefix` is the qualified name this model will be registered under ("" on its own, "model." inside
  /// BartForConditionalGeneration): adapter patterns are matched against the full names.
  BartModelImpl(const BartConfig& config, const LoraSettings& lora = {}, const std::string& prefix = "");
  /// The decoder's last hidden state [batch, tgt, d_model]. input_ids [batch, src] int64; attention_mask
  /// [batch, src] (undefined: all tokens); decoder_input_ids [batch, tgt] int64 (undefined: input_ids shifted
  /// right, as transformers does for denoising); decoder_attention_mask [batch, tgt] (undefined: all tokens).
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                        const torch::Tensor& decoder_input_ids = {}, const torch::Tensor& decoder_attention_mask = {});
  /// The encoder's last hidden state [batch, src, d_model].
  torch::Tensor encode(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {});
  /// The decoder's last hidden state over given encoder states (e.g. from `encode`).
  torch::Tensor decode(const torch::Tensor& decoder_input_ids, const torch::Tensor& decoder_attention_mask,
                       const torch::Tensor& encoder_hidden, const torch::Tensor& attention_mask = {});

  BartConfig config;
  torch::nn::Embedding shared{nullptr};
  BartEncoder encoder{nullptr};
  BartDecoder decoder{nullptr};
};
TORCH_MODULE(BartModel);

/// transformers' BartForConditionalGeneration: BartModel under "model.", logits = lm_head(decoder states) +
/// final_logits_bias (a [1, vocab] buffer). The LM head is `model.shared`'s weight (tie_word_embeddings), or a
/// Linear "lm_head" without bias of its own.
struct BartForConditionalGenerationImpl : torch::nn::Module {
  explicit BartForConditionalGenerationImpl(const BartConfig& config, const LoraSettings& lora = {});
  /// Logits [batch, tgt, vocab]; the arguments as BartModel's forward takes them.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                        const torch::Tensor& decoder_input_ids = {}, const torch::Tensor& decoder_attention_mask = {});
  /// The logits of decoder states [..., d_model]: [..., vocab].
  torch::Tensor lm_logits(const torch::Tensor& decoder_hidden);
  /// The LM head's weight [vocab, d_model]: model.shared's (tied) or lm_head's.
  torch::Tensor lm_head_weight() const;
  /// What is trained in full beside the adapters, by qualified name prefix: nothing. BART under LoRA trains the
  /// adapters alone — the LM head is the frozen shared embedding and final_logits_bias is a buffer.
  std::vector<std::string> head_prefixes() const { return {}; }

  /// Starts incremental decoding (for increlora::models::generate): runs the encoder once on input_ids
  /// [batch, src] under attention_mask [batch, src] (undefined: all tokens), repeats each example's encoder states
  /// and mask `copies` times consecutively (rows b·copies … b·copies + copies − 1 belong to example b, as
  /// transformers expands inputs for beam search), and computes every layer's cross-attention keys and values.
  /// The decoder's step(tokens) appends one token per row and returns the next token's logits [rows, vocab]
  /// float32, reusing each layer's cached self-attention keys and values; reorder(index) index_selects every
  /// cached tensor and the encoder mask. Runs without autograd on the model's device; the model must be in eval
  /// mode (dropout would make steps differ from the full forward) and must not change while the decoder is used.
  /// The decoder keeps the model alive when the model is held by a shared_ptr (a TORCH_MODULE holder), else the
  /// model must outlive it. Throws for a model in training mode, copies < 1, or inputs of the wrong shape or type.
  std::unique_ptr<models::IncrementalDecoder> start_decoding(const torch::Tensor& input_ids,
                                                             const torch::Tensor& attention_mask, int64_t copies = 1);

  BartConfig config;
  BartModel model{nullptr};
  torch::nn::Linear lm_head{nullptr};  // only without tie_word_embeddings
  torch::Tensor final_logits_bias;     // buffer [1, vocab]
};
TORCH_MODULE(BartForConditionalGeneration);

/// Loads `<dir>/model.safetensors` into `model` (a BartModel or BartForConditionalGeneration): checkpoint names
/// with or without the "model." prefix map onto the module's. The tied embedding is read from the first of
/// model.shared.weight, model.encoder.embed_tokens.weight, model.decoder.embed_tokens.weight and lm_head.weight
/// that the file holds (checkpoints store it once or several times; the other copies are not read and not listed
/// as ignored); untied, each embedding reads its own name (embed_tokens falling back to shared). final_logits_bias
/// is optional (zeros when absent, listed in `initialized`). Tensors the model has no place for (a
/// classification_head, encoder.version, ...) are listed in `ignored`. Throws, listing them, when encoder or
/// decoder tensors are missing, and naming the tensor and both shapes when one has another shape; adapter banks
/// stay as initialized. Everything is checked before anything is copied. Only a single-file checkpoint is read: a
/// sharded one (model.safetensors.index.json) is refused with a message, as is one with only pytorch_model.bin
/// (pickles can run code: convert it to safetensors).
PretrainedLoad load_pretrained(torch::nn::Module& model, const std::string& dir);

}  // namespace increlora::bart
