#pragma once
/// \file
/// The DeBERTa-v2/v3 encoder (Hugging Face model_type "deberta-v2": microsoft/deberta-v3-base and its kin) on
/// LibTorch, reading Hugging Face checkpoints (config.json + model.safetensors), with the sequence
/// classification / regression and extractive-QA heads of transformers' DebertaV2For* classes.
///
/// Modules carry Hugging Face's names ("embeddings.word_embeddings", "encoder.layer.0.attention.self.query_proj",
/// "encoder.layer.0.attention.output.dense", "encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense",
/// "encoder.rel_embeddings", "encoder.LayerNorm"), so checkpoint tensors map by name. Every Linear that may carry
/// an adapter is an `increlora::SVDLinear`: r = `LoraSettings::r` when its qualified name matches one of the
/// patterns, r = 0 (exactly a Linear, no adapter tensors) otherwise — as in increlora::bert.
///
/// The attention is DeBERTa's disentangled attention as transformers' modeling_deberta_v2.py computes it: content
/// scores q·kᵀ plus the content→position (c2p) and position→content (p2c) terms over relative positions (log
/// buckets when position_buckets > 0, clamped to the attention span), all divided by sqrt(head_dim · (1 + number
/// of pos_att_type entries)).
///
/// Example:
/// \code
///   auto config = increlora::deberta::DebertaConfig::from_json_file(dir + "/config.json");
///   increlora::bert::LoraSettings lora;
///   lora.patterns = increlora::deberta::lora_patterns_from_short_names({"query", "value"});
///   lora.r = 1;
///   increlora::deberta::DebertaSequenceClassifier model(config, /*num_labels=*/2, lora);
///   increlora::deberta::load_pretrained(*model, dir);
/// \endcode

#include <increlora/models/bert.hpp>
#include <increlora/svd_linear.hpp>

#include <torch/nn/module.h>
#include <torch/nn/modules/container/modulelist.h>
#include <torch/nn/modules/dropout.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/modules/normalization.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace increlora::deberta {

/// Which Linear layers get an adapter: the same settings as the BERT family's.
using bert::LoraSettings;
/// What `load_pretrained` left fresh and what it did not use.
using bert::PretrainedLoad;

/// The fields of a Hugging Face DeBERTa-v2 config.json that the encoder uses. Defaults are transformers'
/// DebertaV2Config defaults, so a field missing from the file means what it means to transformers.
struct DebertaConfig {
  std::string model_type = "deberta-v2";
  int64_t vocab_size = 128100;
  int64_t hidden_size = 1536;
  int64_t num_hidden_layers = 24;
  int64_t num_attention_heads = 24;
  int64_t intermediate_size = 6144;
  std::string hidden_act = "gelu";  ///< "gelu", "gelu_new" / "gelu_pytorch_tanh", "relu"
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 0;  ///< 0: no token type embeddings (DeBERTa-v3)
  double layer_norm_eps = 1e-7;
  double initializer_range = 0.02;
  /// Relative-position (disentangled) attention terms on; off leaves content attention only.
  bool relative_attention = false;
  /// Range of relative positions; < 1 means max_position_embeddings (see `max_relative()`).
  int64_t max_relative_positions = -1;
  /// > 0: relative positions in log buckets, and the attention span is position_buckets (v3: 256).
  int64_t position_buckets = -1;
  /// "|"-separated; "layer_norm" applies encoder.LayerNorm to the relative position embeddings.
  std::string norm_rel_ebd = "none";
  /// Whether the relative embeddings are projected with the content query_proj / key_proj (v3) instead of
  /// their own pos_query_proj / pos_key_proj.
  bool share_att_key = false;
  /// The disentangled terms, each "c2p" or "p2c" (config.json: a list, or the string "p2c|c2p").
  std::vector<std::string> pos_att_type;
  /// Whether absolute position embeddings are added to the word embeddings (v3: false).
  bool position_biased_input = true;
  int64_t pad_token_id = 0;
  /// Width of the word embeddings when it differs from hidden_size (then embeddings.embed_proj maps it);
  /// unset: hidden_size.
  std::optional<int64_t> embedding_size;
  /// Width of the ContextPooler's dense layer; unset: hidden_size (transformers needs it equal to hidden_size).
  std::optional<int64_t> pooler_hidden_size;
  double pooler_dropout = 0.0;
  std::string pooler_hidden_act = "gelu";  ///< hidden_act's choices and "tanh"
  /// Dropout before the classifier; unset uses hidden_dropout_prob (config key "cls_dropout", the one
  /// transformers' DebertaV2ForSequenceClassification reads).
  std::optional<double> cls_dropout;

  /// Parses a config.json; throws naming the file and the field when a field has the wrong type, and for
  /// settings the encoder does not implement (another model_type, conv_kernel_size > 0, unknown pos_att_type
  /// or norm_rel_ebd entries).
  static DebertaConfig from_json_file(const std::string& path);
  static DebertaConfig from_json_string(const std::string& text, const std::string& origin = "config.json");

  int64_t head_dim() const { return hidden_size / num_attention_heads; }
  int64_t embedding_width() const { return embedding_size.value_or(hidden_size); }
  /// max_relative_positions, or max_position_embeddings when that is < 1 (as transformers resolves it).
  int64_t max_relative() const { return max_relative_positions < 1 ? max_position_embeddings : max_relative_positions; }
  /// The attention span k of the relative terms: position_buckets when > 0, else max_relative(); the
  /// relative embeddings have 2k rows.
  int64_t attention_span() const { return position_buckets > 0 ? position_buckets : max_relative(); }
  bool has_c2p() const;
  bool has_p2c() const;
  /// Whether norm_rel_ebd names "layer_norm" (then encoder.LayerNorm exists).
  bool normalizes_rel_embeddings() const;
};

/// Whether the config.json at `config_json_path` has model_type "deberta-v2" (the DeBERTa-v2/v3 family),
/// for programs that dispatch on the family. Throws when the file cannot be read or is not a JSON object.
bool is_deberta_config(const std::string& config_json_path);

/// The seed's short module names (`--lora_module query,key,value,intermediate,layer.output,attention.output`)
/// as patterns over DeBERTa's qualified names: query/key/value → attention.self.{query,key,value}_proj;
/// attention.output → attention.output.dense; intermediate → intermediate.dense; layer.output → each layer's
/// output.dense (not attention.output.dense). Other entries (qualified names, suffixes, "re:...") pass through,
/// e.g. "pos_key_proj" or "pooler.dense".
std::vector<std::string> lora_patterns_from_short_names(const std::vector<std::string>& names);

/// The relative position of query i to key j, i − j, in log buckets when `bucket_size` > 0 (exact within
/// ±bucket_size/2, logarithmically coarser out to `max_position`): [seq, seq] int64 on `device`, as
/// transformers' build_relative_position.
torch::Tensor relative_positions(int64_t seq, int64_t bucket_size, int64_t max_position, torch::Device device);

struct DebertaV2EmbeddingsImpl : torch::nn::Module {
  DebertaV2EmbeddingsImpl(const DebertaConfig& config, const LoraSettings& lora = {}, const std::string& prefix = "");
  /// input_ids, token_type_ids, attention_mask: [batch, seq]. The LayerNorm'd embeddings are multiplied by the
  /// mask (padding rows are zero), then dropout.
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& token_type_ids,
                        const torch::Tensor& attention_mask);

  DebertaConfig config;
  torch::nn::Embedding word_embeddings{nullptr};
  torch::nn::Embedding position_embeddings{nullptr};    // only with position_biased_input
  torch::nn::Embedding token_type_embeddings{nullptr};  // only with type_vocab_size > 0
  SVDLinear embed_proj{nullptr};                        // only with embedding_size != hidden_size (no bias)
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(DebertaV2Embeddings);

/// DeBERTa's disentangled self-attention ("attention.self").
struct DisentangledSelfAttentionImpl : torch::nn::Module {
  DisentangledSelfAttentionImpl(const DebertaConfig& config, const LoraSettings& lora, const std::string& prefix);
  /// hidden [batch, seq, hidden]; mask bool [batch, 1, seq, seq] (true: query i may attend key j);
  /// relative_pos [seq, seq] int64 and rel_embeddings [2 span, hidden] (undefined without relative_attention).
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& mask, const torch::Tensor& relative_pos,
                        const torch::Tensor& rel_embeddings);

  DebertaConfig config;
  int64_t heads, head_dim;
  /// 1 + the number of pos_att_type entries: the scores are divided by sqrt(head_dim · scale_factor).
  int64_t scale_factor;
  SVDLinear query_proj{nullptr}, key_proj{nullptr}, value_proj{nullptr};
  SVDLinear pos_key_proj{nullptr}, pos_query_proj{nullptr};  // only without share_att_key (c2p / p2c)
  torch::nn::Dropout pos_dropout{nullptr}, dropout{nullptr};
};
TORCH_MODULE(DisentangledSelfAttention);

/// A dense layer, dropout, the residual sum and LayerNorm ("attention.output" and a layer's "output").
struct DebertaV2ResidualOutputImpl : torch::nn::Module {
  DebertaV2ResidualOutputImpl(const DebertaConfig& config, int64_t in_features, const LoraSettings& lora,
                              const std::string& prefix);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& residual);

  SVDLinear dense{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(DebertaV2ResidualOutput);

struct DebertaV2AttentionImpl : torch::nn::Module {
  DebertaV2AttentionImpl(const DebertaConfig& config, const LoraSettings& lora, const std::string& prefix);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& mask, const torch::Tensor& relative_pos,
                        const torch::Tensor& rel_embeddings);

  DisentangledSelfAttention self{nullptr};
  DebertaV2ResidualOutput output{nullptr};
};
TORCH_MODULE(DebertaV2Attention);

struct DebertaV2IntermediateImpl : torch::nn::Module {
  DebertaV2IntermediateImpl(const DebertaConfig& config, const LoraSettings& lora, const std::string& prefix);
  torch::Tensor forward(const torch::Tensor& hidden);

  std::string activation;
  SVDLinear dense{nullptr};
};
TORCH_MODULE(DebertaV2Intermediate);

struct DebertaV2LayerImpl : torch::nn::Module {
  DebertaV2LayerImpl(const DebertaConfig& config, const LoraSettings& lora, const std::string& prefix);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& mask, const torch::Tensor& relative_pos,
                        const torch::Tensor& rel_embeddings);

  DebertaV2Attention attention{nullptr};
  DebertaV2Intermediate intermediate{nullptr};
  DebertaV2ResidualOutput output{nullptr};
};
TORCH_MODULE(DebertaV2Layer);

struct DebertaV2EncoderImpl : torch::nn::Module {
  DebertaV2EncoderImpl(const DebertaConfig& config, const LoraSettings& lora, const std::string& prefix);
  /// hidden [batch, seq, hidden] (the embeddings); attention_mask [batch, seq] 1/0. A pair (i, j) takes part
  /// when both tokens are real (transformers' extended mask); a padding query's row sees every key alike.
  torch::Tensor forward(torch::Tensor hidden, const torch::Tensor& attention_mask);
  /// rel_embeddings' weight, through LayerNorm when norm_rel_ebd says so (undefined without relative_attention).
  torch::Tensor rel_embedding();

  DebertaConfig config;
  torch::nn::ModuleList layer{nullptr};
  std::vector<DebertaV2Layer> layers;            // typed views of `layer`'s entries
  torch::nn::Embedding rel_embeddings{nullptr};  // only with relative_attention: [2 span, hidden]
  torch::nn::LayerNorm LayerNorm{nullptr};       // only with norm_rel_ebd "layer_norm"
};
TORCH_MODULE(DebertaV2Encoder);

/// transformers' DebertaV2Model: embeddings and encoder.
struct DebertaModelImpl : torch::nn::Module {
  /// `prefix` is the qualified name this model will be registered under ("" on its own, "deberta." inside
  /// a task model): adapter patterns are matched against the full names.
  DebertaModelImpl(const DebertaConfig& config, const LoraSettings& lora = {}, const std::string& prefix = "");
  /// last_hidden_state [batch, seq, hidden] from input_ids [batch, seq] int64, attention_mask [batch, seq]
  /// (1 = token, 0 = padding; undefined: all tokens), token_type_ids [batch, seq] (undefined: zeros; unused
  /// when type_vocab_size is 0).
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                        const torch::Tensor& token_type_ids = {});

  DebertaConfig config;
  DebertaV2Embeddings embeddings{nullptr};
  DebertaV2Encoder encoder{nullptr};
};
TORCH_MODULE(DebertaModel);

/// transformers' ContextPooler ("pooler"): the first token's hidden state → dropout → dense → activation.
struct DebertaContextPoolerImpl : torch::nn::Module {
  DebertaContextPoolerImpl(const DebertaConfig& config, const LoraSettings& lora, const std::string& prefix);
  torch::Tensor forward(const torch::Tensor& hidden);

  std::string activation;
  SVDLinear dense{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(DebertaContextPooler);

/// DebertaV2ForSequenceClassification: the encoder under "deberta.", the ContextPooler "pooler", dropout
/// (cls_dropout) and "classifier" (hidden → num_labels). num_labels = 1 is regression.
struct DebertaSequenceClassifierImpl : torch::nn::Module {
  /// `cls_dropout` overrides the config's cls_dropout (and that hidden_dropout_prob).
  DebertaSequenceClassifierImpl(const DebertaConfig& config, int64_t num_labels, const LoraSettings& lora = {},
                                std::optional<double> cls_dropout = std::nullopt);
  /// Logits [batch, num_labels].
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                        const torch::Tensor& token_type_ids = {});
  /// The head's parameters (trained in full alongside the adapters), by qualified name prefix: "classifier."
  /// and "pooler.".
  std::vector<std::string> head_prefixes() const { return {"classifier.", "pooler."}; }

  DebertaConfig config;
  int64_t num_labels;
  DebertaModel deberta{nullptr};
  DebertaContextPooler pooler{nullptr};
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Linear classifier{nullptr};
};
TORCH_MODULE(DebertaSequenceClassifier);

/// DebertaV2ForQuestionAnswering: the encoder under "deberta.", then "qa_outputs" (hidden → 2) on every token.
struct DebertaQuestionAnsweringImpl : torch::nn::Module {
  DebertaQuestionAnsweringImpl(const DebertaConfig& config, const LoraSettings& lora = {});
  /// {start_logits, end_logits}, each [batch, seq].
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& input_ids,
                                                  const torch::Tensor& attention_mask = {},
                                                  const torch::Tensor& token_type_ids = {});
  /// The head trained in full beside the adapters: "qa_outputs.".
  std::vector<std::string> head_prefixes() const { return {"qa_outputs."}; }

  DebertaConfig config;
  DebertaModel deberta{nullptr};
  torch::nn::Linear qa_outputs{nullptr};
};
TORCH_MODULE(DebertaQuestionAnswering);

/// Loads `<dir>/model.safetensors` into `model` (a DebertaModel, DebertaSequenceClassifier or
/// DebertaQuestionAnswering): checkpoint names with or without the "deberta." prefix map onto the module's;
/// pretraining heads ("lm_predictions.", "mask_predictions.", "cls.") and position_ids buffers are ignored, as
/// are position_embeddings a model without position_biased_input has no place for. Throws, listing them, when
/// an encoder tensor is missing from the checkpoint; adapter banks and the task head (pooler, classifier,
/// qa_outputs) stay as initialized when the checkpoint lacks them. Everything is checked before anything is
/// copied. Only a single-file checkpoint is read: a sharded one (model.safetensors.index.json) is refused with
/// a message, as is one with only pytorch_model.bin (pickles can run code: convert it to safetensors).
PretrainedLoad load_pretrained(torch::nn::Module& model, const std::string& dir);

}  // namespace increlora::deberta
