#pragma once
/// \file
/// A BERT-family encoder (BERT, RoBERTa, MiniLM) on LibTorch that reads Hugging Face checkpoints
/// (config.json + model.safetensors), with a sequence classification / regression head.
///
/// Modules carry Hugging Face's names ("embeddings.word_embeddings", "encoder.layer.0.attention.self.query",
/// "encoder.layer.0.attention.output.dense", "encoder.layer.0.intermediate.dense",
/// "encoder.layer.0.output.dense", "pooler.dense"), so checkpoint tensors map by name. Every Linear that may
/// carry an adapter is an `increlora::SVDLinear`: r = `LoraSettings::r` when its qualified name matches one
/// of the patterns, r = 0 (exactly a Linear, no adapter tensors) otherwise.

#include <increlora/safetensors.hpp>
#include <increlora/svd_linear.hpp>

#include <torch/nn/cloneable.h>
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

namespace increlora::bert {

/// The fields of a Hugging Face config.json that the encoder uses.
struct BertConfig {
  std::string model_type = "bert";  ///< "bert" (also MiniLM) or "roberta"
  int64_t vocab_size = 30522;
  int64_t hidden_size = 768;
  int64_t num_hidden_layers = 12;
  int64_t num_attention_heads = 12;
  int64_t intermediate_size = 3072;
  std::string hidden_act = "gelu";  ///< "gelu", "gelu_new" / "gelu_pytorch_tanh", "relu"
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
  int64_t max_position_embeddings = 512;
  int64_t type_vocab_size = 2;
  double layer_norm_eps = 1e-12;
  double initializer_range = 0.02;
  int64_t pad_token_id = 0;
  /// Dropout before the classifier; unset uses hidden_dropout_prob (config key "classifier_dropout").
  std::optional<double> classifier_dropout;

  /// Parses a config.json; throws naming the file and the field when a field has the wrong type, and for
  /// settings the encoder does not implement (relative position embeddings, decoders).
  static BertConfig from_json_file(const std::string& path);
  static BertConfig from_json_string(const std::string& text, const std::string& origin = "config.json");
  bool is_roberta() const { return model_type == "roberta" || model_type == "xlm-roberta"; }
};

/// Which Linear layers get an adapter, and the adapter's settings.
struct LoraSettings {
  /// Module patterns as `increlora::matches_pattern` takes them (exact name, dotted suffix, "re:<regex>").
  std::vector<std::string> patterns;
  int64_t r = 0;  ///< initial rank of the matched layers (0: no adapters at all)
  double lora_alpha = 1.0;
  double lora_dropout = 0.0;
  int64_t capacity = 0;  ///< bank capacity of each adapted layer (0: SVDLinear's default)
};

/// The seed's short module names (`--lora_module query,key,value,intermediate,layer.output,attention.output`)
/// as patterns over the encoder's qualified names: query/key/value → attention.self.{query,key,value};
/// attention.output → attention.output.dense; intermediate → intermediate.dense; layer.output → each layer's
/// output.dense (not attention.output.dense). Other entries (qualified names, suffixes, "re:...") pass through.
std::vector<std::string> lora_patterns_from_short_names(const std::vector<std::string>& names);

struct BertEmbeddingsImpl : torch::nn::Module {
  BertEmbeddingsImpl(const BertConfig& config);
  /// input_ids, token_type_ids: [batch, seq] int64. attention_mask [batch, seq] is used by RoBERTa's position
  /// ids (positions count non-padding tokens from pad_token_id + 1).
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& token_type_ids);

  BertConfig config;
  torch::nn::Embedding word_embeddings{nullptr}, position_embeddings{nullptr}, token_type_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(BertEmbeddings);

struct BertSelfAttentionImpl : torch::nn::Module {
  BertSelfAttentionImpl(const BertConfig& config, const LoraSettings& lora, const std::string& prefix);
  /// hidden [batch, seq, hidden]; mask: bool [batch, 1, 1, seq], true where a key may be attended.
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& mask);

  int64_t heads, head_dim;
  double attention_dropout;
  SVDLinear query{nullptr}, key{nullptr}, value{nullptr};
};
TORCH_MODULE(BertSelfAttention);

/// A dense layer followed by dropout, the residual sum and LayerNorm ("attention.output" and "output").
struct BertResidualOutputImpl : torch::nn::Module {
  BertResidualOutputImpl(const BertConfig& config, int64_t in_features, const LoraSettings& lora,
                         const std::string& prefix);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& residual);

  SVDLinear dense{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(BertResidualOutput);

struct BertAttentionImpl : torch::nn::Module {
  BertAttentionImpl(const BertConfig& config, const LoraSettings& lora, const std::string& prefix);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& mask);

  BertSelfAttention self{nullptr};
  BertResidualOutput output{nullptr};
};
TORCH_MODULE(BertAttention);

struct BertIntermediateImpl : torch::nn::Module {
  BertIntermediateImpl(const BertConfig& config, const LoraSettings& lora, const std::string& prefix);
  torch::Tensor forward(const torch::Tensor& hidden);

  std::string activation;
  SVDLinear dense{nullptr};
};
TORCH_MODULE(BertIntermediate);

struct BertLayerImpl : torch::nn::Module {
  BertLayerImpl(const BertConfig& config, const LoraSettings& lora, const std::string& prefix);
  torch::Tensor forward(const torch::Tensor& hidden, const torch::Tensor& mask);

  BertAttention attention{nullptr};
  BertIntermediate intermediate{nullptr};
  BertResidualOutput output{nullptr};
};
TORCH_MODULE(BertLayer);

struct BertEncoderImpl : torch::nn::Module {
  BertEncoderImpl(const BertConfig& config, const LoraSettings& lora, const std::string& prefix);
  torch::Tensor forward(torch::Tensor hidden, const torch::Tensor& mask);

  torch::nn::ModuleList layer{nullptr};
  std::vector<BertLayer> layers;  // typed views of `layer`'s entries
};
TORCH_MODULE(BertEncoder);

struct BertPoolerImpl : torch::nn::Module {
  BertPoolerImpl(const BertConfig& config, const LoraSettings& lora, const std::string& prefix);
  /// tanh(dense(first token)).
  torch::Tensor forward(const torch::Tensor& hidden);

  SVDLinear dense{nullptr};
};
TORCH_MODULE(BertPooler);

struct BertOutputs {
  torch::Tensor last_hidden_state;  ///< [batch, seq, hidden]
  torch::Tensor pooler_output;      ///< [batch, hidden]; undefined without a pooler
};

/// Hugging Face's BertModel / RobertaModel: embeddings, encoder and (optionally) the pooler.
struct BertModelImpl : torch::nn::Module {
  /// `prefix` is the qualified name this model will be registered under ("" on its own, "bert." inside
  /// the classifier): adapter patterns are matched against the full names.
  BertModelImpl(const BertConfig& config, const LoraSettings& lora = {}, bool add_pooling_layer = true,
                const std::string& prefix = "");
  /// input_ids [batch, seq] int64; attention_mask [batch, seq] (1 = token, 0 = padding; undefined: all
  /// tokens); token_type_ids [batch, seq] (undefined: zeros).
  BertOutputs forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                      const torch::Tensor& token_type_ids = {});

  BertConfig config;
  BertEmbeddings embeddings{nullptr};
  BertEncoder encoder{nullptr};
  BertPooler pooler{nullptr};
};
TORCH_MODULE(BertModel);

/// BertForSequenceClassification / RobertaForSequenceClassification: the encoder under "bert." (or
/// "roberta."), then for BERT dropout → "classifier" on the pooler output, for RoBERTa the
/// "classifier.dense" → tanh → "classifier.out_proj" head on the first token. num_labels = 1 is regression.
struct SequenceClassifierImpl : torch::nn::Module {
  SequenceClassifierImpl(const BertConfig& config, int64_t num_labels, const LoraSettings& lora = {},
                         std::optional<double> cls_dropout = std::nullopt);
  /// Logits [batch, num_labels].
  torch::Tensor forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask = {},
                        const torch::Tensor& token_type_ids = {});
  /// The head's parameters (trained in full alongside the adapters), by qualified name prefix: "classifier."
  /// and, for BERT, "bert.pooler.".
  std::vector<std::string> head_prefixes() const;

  BertConfig config;
  int64_t num_labels;
  std::string base_name;  // "bert" or "roberta"
  BertModel base{nullptr};
  torch::nn::Dropout dropout{nullptr};
  torch::nn::Linear classifier{nullptr};                  // BERT head
  torch::nn::Linear head_dense{nullptr}, head_out{nullptr};  // RoBERTa head (classifier.dense / out_proj)
};
TORCH_MODULE(SequenceClassifier);

/// BertForQuestionAnswering / RobertaForQuestionAnswering: the encoder under "bert." (or "roberta."), without
/// the pooler, then "qa_outputs" (hidden → 2) on every token: the start and end logits of extractive QA.
struct QuestionAnsweringImpl : torch::nn::Module {
  QuestionAnsweringImpl(const BertConfig& config, const LoraSettings& lora = {});
  /// {start_logits, end_logits}, each [batch, seq].
  std::pair<torch::Tensor, torch::Tensor> forward(const torch::Tensor& input_ids,
                                                  const torch::Tensor& attention_mask = {},
                                                  const torch::Tensor& token_type_ids = {});
  /// The head trained in full beside the adapters: "qa_outputs.".
  std::vector<std::string> head_prefixes() const { return {"qa_outputs."}; }

  BertConfig config;
  std::string base_name;  // "bert" or "roberta"
  BertModel base{nullptr};
  torch::nn::Linear qa_outputs{nullptr};
};
TORCH_MODULE(QuestionAnswering);

/// What `load_pretrained` did not fill or did not use.
struct PretrainedLoad {
  std::vector<std::string> initialized;  ///< module tensors left at their fresh initialization (head, adapters)
  std::vector<std::string> ignored;      ///< checkpoint tensors not used (pretraining heads, position_ids)
};

/// Loads `<dir>/model.safetensors` (or the shards a `model.safetensors.index.json` lists) into `model` (a BertModel, SequenceClassifier or QuestionAnswering): checkpoint names with or
/// without the "bert."/"roberta." prefix, and old "LayerNorm.gamma/beta" names, map onto the module's;
/// pretraining heads ("cls.", "lm_head.") and position_ids buffers are ignored. Throws, listing them, when an
/// encoder tensor is missing from the checkpoint; adapter banks and the task head stay as initialized. A
/// checkpoint with only pytorch_model.bin is refused (pickles can run code): convert it to safetensors.
PretrainedLoad load_pretrained(torch::nn::Module& model, const std::string& dir);

/// Writes `model` (a BertModel or SequenceClassifier) as a plain Hugging Face checkpoint directory `dir`, every
/// adapter folded into its base weight (W + ΔW, as `increlora::merge_and_export`): model.safetensors under
/// transformers' names without adapter tensors, `base_dir`'s config.json with the JSON object
/// `config_updates` merged into it (num_labels through id2label, architectures, problem_type, ...), and the
/// base's tokenizer files. transformers' `from_pretrained(dir)` then computes what the C++ model computes.
/// Files are written whole or not at all.
void save_merged_pretrained(const torch::nn::Module& model, const std::string& base_dir, const std::string& dir,
                            const std::string& config_updates = "{}");

}  // namespace increlora::bert
