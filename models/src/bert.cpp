#include <increlora/models/bert.hpp>

#include <increlora/errors.hpp>
#include <increlora/modules.hpp>
#include <increlora/serialize.hpp>

#include "activations.hpp"
#include "config_json.hpp"

#include <ATen/ops/scaled_dot_product_attention.h>
#include <torch/nn/init.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>
#include <fstream>
#include <sstream>

namespace increlora::bert {
namespace {

SVDLinear make_linear(int64_t in, int64_t out, const LoraSettings& lora, const std::string& name) {
  bool adapt = false;
  if (lora.r > 0) {
    for (const auto& p : lora.patterns) adapt = adapt || matches_pattern(name, p);
  }
  SVDLinearOptions o(in, out);
  if (adapt) o.r(lora.r).lora_alpha(lora.lora_alpha).lora_dropout(lora.lora_dropout).capacity(lora.capacity);
  return SVDLinear(o);
}

std::string join(const std::vector<std::string>& v, size_t limit = 12) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < limit; ++i) s += (i ? ", " : "") + v[i];
  if (v.size() > limit) s += ", ... (" + std::to_string(v.size()) + " in all)";
  return s;
}

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}

// [batch, seq] 1/0 → bool [batch, 1, 1, seq] broadcast over heads and queries, as SDPA takes it.
torch::Tensor key_mask(const torch::Tensor& attention_mask) {
  return attention_mask.to(torch::kBool).unsqueeze(1).unsqueeze(2);
}

}  // namespace

// ---- config ------------------------------------------------------------------------------------------------

BertConfig BertConfig::from_json_string(const std::string& text, const std::string& origin) {
  const models::detail::ConfigJson j(text, origin);
  BertConfig c;
  j.get("model_type", c.model_type);
  j.get("vocab_size", c.vocab_size);
  j.get("hidden_size", c.hidden_size);
  j.get("num_hidden_layers", c.num_hidden_layers);
  j.get("num_attention_heads", c.num_attention_heads);
  j.get("intermediate_size", c.intermediate_size);
  j.get("hidden_act", c.hidden_act);
  j.get("hidden_dropout_prob", c.hidden_dropout_prob);
  j.get("attention_probs_dropout_prob", c.attention_probs_dropout_prob);
  j.get("max_position_embeddings", c.max_position_embeddings);
  j.get("type_vocab_size", c.type_vocab_size);
  j.get("layer_norm_eps", c.layer_norm_eps);
  j.get("initializer_range", c.initializer_range);
  j.get("pad_token_id", c.pad_token_id);
  if (j.present("classifier_dropout") && j.at("classifier_dropout").is_number()) {
    c.classifier_dropout = j.at("classifier_dropout").get<double>();
  }
  std::string position = "absolute";
  j.get("position_embedding_type", position);
  INCRELORA_CHECK(position == "absolute", origin, ": position_embedding_type \"", position,
                  "\" is not implemented; only \"absolute\" position embeddings are.");
  bool is_decoder = false;
  j.get("is_decoder", is_decoder);
  INCRELORA_CHECK(!is_decoder, origin, ": is_decoder is true; this encoder implements bidirectional attention only.");
  const std::vector<std::string> types = {"bert", "roberta", "xlm-roberta"};
  INCRELORA_CHECK(std::find(types.begin(), types.end(), c.model_type) != types.end(), origin, ": model_type \"",
                  c.model_type, "\" is not a BERT-family encoder this code implements (bert, roberta, xlm-roberta).");
  INCRELORA_CHECK(models::detail::is_activation(c.hidden_act), origin, ": hidden_act \"", c.hidden_act,
                  "\" is not implemented; use ", models::detail::activation_choices(), ".");
  INCRELORA_CHECK(c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads == 0, origin,
                  ": hidden_size (", c.hidden_size, ") must be a multiple of num_attention_heads (",
                  c.num_attention_heads, ").");
  return c;
}

BertConfig BertConfig::from_json_file(const std::string& path) {
  return from_json_string(models::detail::read_config_text(path), path);
}

std::vector<std::string> lora_patterns_from_short_names(const std::vector<std::string>& names) {
  std::vector<std::string> patterns;
  for (const auto& n : names) {
    if (n == "query" || n == "key" || n == "value") {
      patterns.push_back("attention.self." + n);
    } else if (n == "attention.output") {
      patterns.push_back("attention.output.dense");
    } else if (n == "intermediate") {
      patterns.push_back("intermediate.dense");
    } else if (n == "layer.output") {
      // The layer's own output.dense, not attention.output.dense (which also ends in "output.dense").
      patterns.push_back("re:(.*\\.)?layer\\.[0-9]+\\.output\\.dense");
    } else {
      patterns.push_back(n);
    }
  }
  return patterns;
}

// ---- modules -----------------------------------------------------------------------------------------------

BertEmbeddingsImpl::BertEmbeddingsImpl(const BertConfig& c) : config(c) {
  auto pad = torch::nn::EmbeddingOptions(c.vocab_size, c.hidden_size).padding_idx(c.pad_token_id);
  word_embeddings = register_module("word_embeddings", torch::nn::Embedding(pad));
  auto pos = torch::nn::EmbeddingOptions(c.max_position_embeddings, c.hidden_size);
  if (c.is_roberta()) pos.padding_idx(c.pad_token_id);
  position_embeddings = register_module("position_embeddings", torch::nn::Embedding(pos));
  token_type_embeddings = register_module("token_type_embeddings",
                                          torch::nn::Embedding(c.type_vocab_size, c.hidden_size));
  LayerNorm = register_module(
      "LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)));
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor BertEmbeddingsImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& token_type_ids) {
  const int64_t seq = input_ids.size(1);
  torch::Tensor positions;
  if (config.is_roberta()) {
    // RoBERTa numbers real tokens from pad_token_id + 1 and gives padding the padding position.
    const auto real = input_ids.ne(config.pad_token_id).to(torch::kLong);
    positions = real.cumsum(1) * real + config.pad_token_id;
  } else {
    positions = torch::arange(seq, input_ids.options().dtype(torch::kLong)).unsqueeze(0);
  }
  // The largest position is known on the host (BERT: seq − 1; RoBERTa: at most pad_token_id + seq), so the
  // check reads nothing back from the device: a training step stays free of host synchronisation and can be
  // captured as a CUDA graph.
  const int64_t last_position = config.is_roberta() ? config.pad_token_id + seq : seq - 1;
  INCRELORA_CHECK(last_position < config.max_position_embeddings, "BertModel: sequences of ", seq,
                  " tokens exceed max_position_embeddings (", config.max_position_embeddings,
                  "); truncate the inputs (--max_seq_length).");
  auto x = word_embeddings(input_ids) + position_embeddings(positions) + token_type_embeddings(token_type_ids);
  return dropout(LayerNorm(x));
}

BertSelfAttentionImpl::BertSelfAttentionImpl(const BertConfig& c, const LoraSettings& lora, const std::string& prefix)
    : heads(c.num_attention_heads),
      head_dim(c.hidden_size / c.num_attention_heads),
      attention_dropout(c.attention_probs_dropout_prob) {
  query = register_module("query", make_linear(c.hidden_size, c.hidden_size, lora, prefix + "query"));
  key = register_module("key", make_linear(c.hidden_size, c.hidden_size, lora, prefix + "key"));
  value = register_module("value", make_linear(c.hidden_size, c.hidden_size, lora, prefix + "value"));
}

torch::Tensor BertSelfAttentionImpl::forward(const torch::Tensor& hidden, const torch::Tensor& mask) {
  const int64_t batch = hidden.size(0), seq = hidden.size(1);
  auto split = [&](const torch::Tensor& t) { return t.view({batch, seq, heads, head_dim}).transpose(1, 2); };
  const auto q = split(query(hidden)), k = split(key(hidden)), v = split(value(hidden));
  auto context = at::scaled_dot_product_attention(q, k, v, mask, is_training() ? attention_dropout : 0.0);
  return context.transpose(1, 2).reshape({batch, seq, heads * head_dim});
}

BertResidualOutputImpl::BertResidualOutputImpl(const BertConfig& c, int64_t in_features, const LoraSettings& lora,
                                               const std::string& prefix) {
  dense = register_module("dense", make_linear(in_features, c.hidden_size, lora, prefix + "dense"));
  LayerNorm = register_module(
      "LayerNorm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps)));
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor BertResidualOutputImpl::forward(const torch::Tensor& hidden, const torch::Tensor& residual) {
  return LayerNorm(dropout(dense(hidden)) + residual);
}

BertAttentionImpl::BertAttentionImpl(const BertConfig& c, const LoraSettings& lora, const std::string& prefix) {
  self = register_module("self", BertSelfAttention(c, lora, prefix + "self."));
  output = register_module("output", BertResidualOutput(c, c.hidden_size, lora, prefix + "output."));
}

torch::Tensor BertAttentionImpl::forward(const torch::Tensor& hidden, const torch::Tensor& mask) {
  return output(self(hidden, mask), hidden);
}

BertIntermediateImpl::BertIntermediateImpl(const BertConfig& c, const LoraSettings& lora, const std::string& prefix)
    : activation(c.hidden_act) {
  dense = register_module("dense", make_linear(c.hidden_size, c.intermediate_size, lora, prefix + "dense"));
}

torch::Tensor BertIntermediateImpl::forward(const torch::Tensor& hidden) {
  return models::detail::activate(activation, dense(hidden));
}

BertLayerImpl::BertLayerImpl(const BertConfig& c, const LoraSettings& lora, const std::string& prefix) {
  attention = register_module("attention", BertAttention(c, lora, prefix + "attention."));
  intermediate = register_module("intermediate", BertIntermediate(c, lora, prefix + "intermediate."));
  output = register_module("output", BertResidualOutput(c, c.intermediate_size, lora, prefix + "output."));
}

torch::Tensor BertLayerImpl::forward(const torch::Tensor& hidden, const torch::Tensor& mask) {
  const auto attended = attention(hidden, mask);
  return output(intermediate(attended), attended);
}

BertEncoderImpl::BertEncoderImpl(const BertConfig& c, const LoraSettings& lora, const std::string& prefix) {
  layer = register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    layers.push_back(BertLayer(c, lora, prefix + "layer." + std::to_string(i) + "."));
    layer->push_back(layers.back());
  }
}

torch::Tensor BertEncoderImpl::forward(torch::Tensor hidden, const torch::Tensor& mask) {
  for (auto& l : layers) hidden = l(hidden, mask);
  return hidden;
}

BertPoolerImpl::BertPoolerImpl(const BertConfig& c, const LoraSettings& lora, const std::string& prefix) {
  dense = register_module("dense", make_linear(c.hidden_size, c.hidden_size, lora, prefix + "dense"));
}

torch::Tensor BertPoolerImpl::forward(const torch::Tensor& hidden) { return torch::tanh(dense(hidden.select(1, 0))); }

BertModelImpl::BertModelImpl(const BertConfig& c, const LoraSettings& lora, bool add_pooling_layer,
                             const std::string& prefix)
    : config(c) {
  embeddings = register_module("embeddings", BertEmbeddings(c));
  encoder = register_module("encoder", BertEncoder(c, lora, prefix + "encoder."));
  if (add_pooling_layer) pooler = register_module("pooler", BertPooler(c, lora, prefix + "pooler."));
}

BertOutputs BertModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                   const torch::Tensor& token_type_ids) {
  INCRELORA_CHECK(input_ids.dim() == 2 && input_ids.scalar_type() == torch::kLong,
                  "BertModel: input_ids must be an int64 tensor [batch, seq], got ", input_ids.scalar_type(), " ",
                  input_ids.sizes(), ".");
  const auto types = token_type_ids.defined() ? token_type_ids : torch::zeros_like(input_ids);
  const auto mask = attention_mask.defined() ? attention_mask : torch::ones_like(input_ids);
  INCRELORA_CHECK(mask.sizes() == input_ids.sizes() && types.sizes() == input_ids.sizes(),
                  "BertModel: attention_mask ", mask.sizes(), " and token_type_ids ", types.sizes(),
                  " must have input_ids' shape ", input_ids.sizes(), ".");
  BertOutputs out;
  out.last_hidden_state = encoder(embeddings(input_ids, types), key_mask(mask));
  if (!pooler.is_empty()) out.pooler_output = pooler(out.last_hidden_state);
  return out;
}

SequenceClassifierImpl::SequenceClassifierImpl(const BertConfig& c, int64_t labels, const LoraSettings& lora,
                                               std::optional<double> cls_dropout)
    : config(c), num_labels(labels), base_name(c.is_roberta() ? "roberta" : "bert") {
  INCRELORA_CHECK(labels >= 1, "SequenceClassifier: num_labels must be >= 1 (1 = regression), got ", labels, ".");
  base = register_module(base_name, BertModel(c, lora, /*add_pooling_layer=*/!c.is_roberta(), base_name + "."));
  const double p = cls_dropout.value_or(c.classifier_dropout.value_or(c.hidden_dropout_prob));
  dropout = register_module("dropout", torch::nn::Dropout(p));
  auto init = [&](torch::nn::Linear& l) {
    // As Hugging Face's _init_weights: N(0, initializer_range²) weights, zero bias.
    torch::NoGradGuard no_grad;
    l->weight.normal_(0.0, c.initializer_range);
    l->bias.zero_();
  };
  if (c.is_roberta()) {
    auto head = std::make_shared<torch::nn::Module>();
    head_dense = head->register_module("dense", torch::nn::Linear(c.hidden_size, c.hidden_size));
    head_out = head->register_module("out_proj", torch::nn::Linear(c.hidden_size, labels));
    register_module("classifier", head);
    init(head_dense);
    init(head_out);
  } else {
    classifier = register_module("classifier", torch::nn::Linear(c.hidden_size, labels));
    init(classifier);
  }
}

torch::Tensor SequenceClassifierImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                              const torch::Tensor& token_type_ids) {
  const auto out = base(input_ids, attention_mask, token_type_ids);
  if (config.is_roberta()) {
    auto x = dropout(out.last_hidden_state.select(1, 0));
    x = dropout(torch::tanh(head_dense(x)));
    return head_out(x);
  }
  return classifier(dropout(out.pooler_output));
}

std::vector<std::string> SequenceClassifierImpl::head_prefixes() const {
  if (config.is_roberta()) return {"classifier."};
  return {"classifier.", base_name + ".pooler."};
}

QuestionAnsweringImpl::QuestionAnsweringImpl(const BertConfig& c, const LoraSettings& lora)
    : config(c), base_name(c.is_roberta() ? "roberta" : "bert") {
  base = register_module(base_name, BertModel(c, lora, /*add_pooling_layer=*/false, base_name + "."));
  qa_outputs = register_module("qa_outputs", torch::nn::Linear(c.hidden_size, 2));
  torch::NoGradGuard no_grad;  // as Hugging Face's _init_weights
  qa_outputs->weight.normal_(0.0, c.initializer_range);
  qa_outputs->bias.zero_();
}

std::pair<torch::Tensor, torch::Tensor> QuestionAnsweringImpl::forward(const torch::Tensor& input_ids,
                                                                       const torch::Tensor& attention_mask,
                                                                       const torch::Tensor& token_type_ids) {
  const auto logits = qa_outputs(base(input_ids, attention_mask, token_type_ids).last_hidden_state);
  return {logits.select(2, 0), logits.select(2, 1)};
}

// ---- checkpoint loading ------------------------------------------------------------------------------------

PretrainedLoad load_pretrained(torch::nn::Module& model, const std::string& dir) {
  const std::string st = dir + "/model.safetensors";
  const std::string index = dir + "/model.safetensors.index.json";
  std::vector<std::string> shards;
  if (std::ifstream(st).good()) {
    shards = {st};
  } else if (std::ifstream(index).good()) {
    // A sharded checkpoint: the index's weight_map names the shard of every tensor.
    nlohmann::json j;
    try {
      std::ifstream in(index);
      in >> j;
    } catch (const nlohmann::json::exception& e) {
      INCRELORA_CHECK(false, "load_pretrained: '", index, "' is not valid JSON (", e.what(), ").");
    }
    INCRELORA_CHECK(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), "load_pretrained: '",
                    index, "' has no \"weight_map\" object; is it a Hugging Face safetensors index?");
    std::set<std::string> files;
    for (const auto& [name, file] : j["weight_map"].items()) {
      INCRELORA_CHECK(file.is_string() && file.get<std::string>().find('/') == std::string::npos &&
                          file.get<std::string>().find("..") == std::string::npos,
                      "load_pretrained: '", index, "' maps '", name, "' to ", file.dump(), ", not a file of the folder.");
      files.insert(file.get<std::string>());
    }
    for (const auto& f : files) shards.push_back(dir + "/" + f);
  } else {
    INCRELORA_CHECK(!std::ifstream(dir + "/pytorch_model.bin").good(), "load_pretrained: '", dir,
                    "' holds pytorch_model.bin but no model.safetensors; pickles can run code, so convert it once "
                    "(python: safetensors.torch.save_file(torch.load(p, weights_only=True), '", st, "')).");
    INCRELORA_CHECK(false, "load_pretrained: '", st, "' does not exist; pass a Hugging Face checkpoint directory.");
  }
  // The model's encoder prefix: "" for a bare BertModel, "bert." / "roberta." inside a classifier.
  std::string prefix;
  for (const auto& item : model.named_parameters()) {
    const auto& n = item.key();
    const auto at = n.find("embeddings.word_embeddings.weight");
    if (at != std::string::npos) prefix = n.substr(0, at);
  }
  PretrainedLoad result;
  auto name_map = [&](const std::string& raw) -> std::string {
    std::string n = raw;
    if (starts_with(n, "cls.") || starts_with(n, "lm_head.") || ends_with(n, "position_ids") ||
        ends_with(n, "embeddings.token_type_ids")) {
      result.ignored.push_back(raw);
      return "";
    }
    // Old TensorFlow-converted checkpoints name LayerNorm's tensors gamma and beta.
    if (ends_with(n, "LayerNorm.gamma")) n = n.substr(0, n.size() - 5) + "weight";
    if (ends_with(n, "LayerNorm.beta")) n = n.substr(0, n.size() - 4) + "bias";
    for (const std::string p : {"bert.", "roberta."}) {
      if (starts_with(n, p)) return prefix + n.substr(p.size());
    }
    if (starts_with(n, "embeddings.") || starts_with(n, "encoder.") || starts_with(n, "pooler.")) return prefix + n;
    return n;  // e.g. a fine-tuned checkpoint's "classifier.weight"
  };
  // A tensor is missing when no shard has it. (Each shard is checked before it is copied; a bad later shard
  // leaves the earlier ones loaded, and the load throws.)
  std::map<std::string, size_t> missing_count;
  for (const auto& shard : shards) {
    const SafetensorsFile file(shard);
    const auto report = load_state_into(model, file, name_map, /*strict=*/false);
    for (const auto& n : report.missing) ++missing_count[n];
    for (const auto& n : report.unexpected) result.ignored.push_back(n);
  }
  std::vector<std::string> missing_encoder;
  for (const auto& [n, count] : missing_count) {
    if (count < shards.size()) continue;
    const bool head = starts_with(n, "classifier.") || starts_with(n, "qa_outputs.") || starts_with(n, prefix + "pooler.");
    if (increlora::is_adapter_tensor(n) || head) {
      result.initialized.push_back(n);
    } else {
      missing_encoder.push_back(n);
    }
  }
  INCRELORA_CHECK(missing_encoder.empty(), "load_pretrained: '", shards.size() == 1 ? shards.front() : index,
                  "' lacks encoder tensors the model needs: ", join(missing_encoder), ". Is config.json the "
                  "checkpoint's own?");
  return result;
}

void save_merged_pretrained(const torch::nn::Module& model, const std::string& base_dir, const std::string& dir,
                            const std::string& config_updates) {
  namespace fs = std::filesystem;
  nlohmann::json patch;
  try {
    patch = nlohmann::json::parse(config_updates);
  } catch (const nlohmann::json::exception& e) {
    INCRELORA_CHECK(false, "save_merged_pretrained: config_updates is not JSON (", e.what(), ").");
  }
  INCRELORA_CHECK(patch.is_object(), "save_merged_pretrained: config_updates must be a JSON object.");
  nlohmann::json config;
  {
    std::ifstream in(base_dir + "/config.json");
    INCRELORA_CHECK(in.good(), "save_merged_pretrained: '", base_dir, "' has no config.json; pass the checkpoint "
                    "directory the model was loaded from.");
    try {
      in >> config;
    } catch (const nlohmann::json::exception& e) {
      INCRELORA_CHECK(false, "save_merged_pretrained: ", base_dir, "/config.json is not JSON (", e.what(), ").");
    }
  }
  config.update(patch);
  fs::create_directories(dir);
  increlora::merge_and_export(model, dir + "/model.safetensors");
  const auto write = [&](const std::string& name, const std::string& text) {
    const auto path = dir + "/" + name, tmp = path + ".tmp";
    {
      std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
      out << text;
      INCRELORA_CHECK(out.good(), "save_merged_pretrained: cannot write ", tmp, ".");
    }
    std::error_code ec;
    fs::rename(tmp, path, ec);
    INCRELORA_CHECK(!ec, "save_merged_pretrained: cannot write ", path, " (", ec.message(), ").");
  };
  write("config.json", config.dump(2) + "\n");
  for (const char* name : {"vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.json",
                           "vocab.json", "merges.txt", "spm.model", "added_tokens.json"}) {
    std::ifstream in(base_dir + "/" + name, std::ios::binary);
    if (!in) continue;
    std::ostringstream text;
    text << in.rdbuf();
    write(name, text.str());
  }
}

}  // namespace increlora::bert
