#include <increlora/models/deberta.hpp>

#include <increlora/errors.hpp>
#include <increlora/modules.hpp>
#include <increlora/safetensors.hpp>

#include "activations.hpp"
#include "config_json.hpp"


#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <fstream>
#include <set>
#include <sstream>
#include <type_traits>

namespace increlora::deberta {
namespace {

SVDLinear make_linear(int64_t in, int64_t out, const LoraSettings& lora, const std::string& name, bool bias = true) {
  bool adapt = false;
  if (lora.r > 0) {
    for (const auto& p : lora.patterns) adapt = adapt || matches_pattern(name, p);
  }
  SVDLinearOptions o(in, out);
  o.bias(bias);
  if (adapt) o.r(lora.r).lora_alpha(lora.lora_alpha).lora_dropout(lora.lora_dropout).capacity(lora.capacity);
  return SVDLinear(o);
}

torch::nn::LayerNorm layer_norm(const DebertaConfig& c) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps));
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

std::string trim_lower(std::string s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  const auto last = s.find_last_not_of(" \t\r\n");
  s = first == std::string::npos ? std::string() : s.substr(first, last - first + 1);
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return s;
}

// transformers' way of reading "a|b" settings (pos_att_type as a string, norm_rel_ebd): lowercased, split, trimmed.
std::vector<std::string> split_bar(const std::string& text) {
  std::vector<std::string> out;
  std::stringstream in(text);
  std::string part;
  while (std::getline(in, part, '|')) {
    part = trim_lower(part);
    if (!part.empty()) out.push_back(part);
  }
  return out;
}

bool contains(const std::vector<std::string>& v, const std::string& x) {
  return std::find(v.begin(), v.end(), x) != v.end();
}

void init_head(torch::Tensor& weight, torch::Tensor& bias, double std) {
  // As transformers' _init_weights for a Linear: N(0, initializer_range²) weights, zero bias.
  torch::NoGradGuard no_grad;
  weight.normal_(0.0, std);
  if (bias.defined()) bias.zero_();
}

}  // namespace

// ---- config ------------------------------------------------------------------------------------------------

bool DebertaConfig::has_c2p() const { return contains(pos_att_type, "c2p"); }
bool DebertaConfig::has_p2c() const { return contains(pos_att_type, "p2c"); }
bool DebertaConfig::normalizes_rel_embeddings() const { return contains(split_bar(norm_rel_ebd), "layer_norm"); }

DebertaConfig DebertaConfig::from_json_string(const std::string& text, const std::string& origin) {
  const models::detail::ConfigJson j(text, origin);
  DebertaConfig c;
  j.get("model_type", c.model_type);
  INCRELORA_CHECK(c.model_type == "deberta-v2", origin, ": model_type \"", c.model_type,
                  "\" is not DeBERTa-v2/v3; this encoder implements model_type \"deberta-v2\" only",
                  c.model_type == "deberta" ? " (DeBERTa v1 differs in its attention and embeddings)" : "", ".");
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
  j.get("relative_attention", c.relative_attention);
  j.get("max_relative_positions", c.max_relative_positions);
  j.get("position_buckets", c.position_buckets);
  j.get("norm_rel_ebd", c.norm_rel_ebd);
  j.get("share_att_key", c.share_att_key);
  j.get("position_biased_input", c.position_biased_input);
  j.get("pad_token_id", c.pad_token_id);
  j.get("embedding_size", c.embedding_size);
  j.get("pooler_hidden_size", c.pooler_hidden_size);
  j.get("pooler_dropout", c.pooler_dropout);
  j.get("pooler_hidden_act", c.pooler_hidden_act);
  j.get("cls_dropout", c.cls_dropout);
  if (j.present("pos_att_type")) {
    const auto& v = j.at("pos_att_type");
    if (v.is_string()) {
      c.pos_att_type = split_bar(v.get<std::string>());
    } else if (v.is_array()) {
      for (const auto& e : v) {
        if (!e.is_string()) j.wrong_type("pos_att_type", "a list of strings or a string such as \"p2c|c2p\"");
        c.pos_att_type.push_back(e.get<std::string>());
      }
    } else {
      j.wrong_type("pos_att_type", "a list of strings or a string such as \"p2c|c2p\"");
    }
    for (const auto& t : c.pos_att_type) {
      INCRELORA_CHECK(t == "c2p" || t == "p2c", origin, ": pos_att_type has the entry \"", t,
                      "\"; the disentangled attention terms are \"c2p\" and \"p2c\".");
    }
  }
  int64_t conv_kernel_size = 0;
  j.get("conv_kernel_size", conv_kernel_size);
  INCRELORA_CHECK(conv_kernel_size <= 0, origin, ": conv_kernel_size is ", conv_kernel_size,
                  "; the convolution layer of DeBERTa-v2 xlarge/xxlarge is not implemented (DeBERTa-v3 does not use "
                  "it). Use a checkpoint without conv_kernel_size.");
  for (const auto& n : split_bar(c.norm_rel_ebd)) {
    INCRELORA_CHECK(n == "none" || n == "layer_norm", origin, ": norm_rel_ebd has the entry \"", n,
                    "\"; the choices are \"none\" and \"layer_norm\".");
  }
  INCRELORA_CHECK(models::detail::is_activation(c.hidden_act), origin, ": hidden_act \"", c.hidden_act,
                  "\" is not implemented; use ", models::detail::activation_choices(), ".");
  INCRELORA_CHECK(models::detail::is_activation(c.pooler_hidden_act), origin, ": pooler_hidden_act \"",
                  c.pooler_hidden_act, "\" is not implemented; use ", models::detail::activation_choices(), ".");
  INCRELORA_CHECK(c.vocab_size > 0 && c.hidden_size > 0 && c.intermediate_size > 0 && c.num_hidden_layers >= 0 &&
                      c.max_position_embeddings > 0 && c.type_vocab_size >= 0,
                  origin,
                  ": vocab_size, hidden_size, intermediate_size and max_position_embeddings must be > 0 and "
                  "num_hidden_layers, type_vocab_size >= 0.");
  INCRELORA_CHECK(c.num_attention_heads > 0 && c.hidden_size % c.num_attention_heads == 0, origin, ": hidden_size (",
                  c.hidden_size, ") must be a multiple of num_attention_heads (", c.num_attention_heads, ").");
  if (j.present("attention_head_size")) {
    int64_t head_size = 0;
    j.get("attention_head_size", head_size);
    INCRELORA_CHECK(head_size == c.head_dim(), origin, ": attention_head_size ", head_size,
                    " differs from hidden_size / num_attention_heads (", c.head_dim(), "); not implemented.");
  }
  INCRELORA_CHECK(!c.embedding_size || *c.embedding_size > 0, origin, ": embedding_size must be > 0, got ",
                  c.embedding_size.value_or(0), ".");
  INCRELORA_CHECK(c.pad_token_id >= 0 && c.pad_token_id < c.vocab_size, origin, ": pad_token_id ", c.pad_token_id,
                  " is not a token id (vocab_size ", c.vocab_size, ").");
  INCRELORA_CHECK(!c.pooler_hidden_size || *c.pooler_hidden_size == c.hidden_size, origin, ": pooler_hidden_size (",
                  c.pooler_hidden_size.value_or(0), ") must equal hidden_size (", c.hidden_size,
                  "): the pooler reads the encoder's first token and the classifier reads hidden_size features.");
  if (c.relative_attention && c.position_buckets > 0) {
    // The log buckets divide by log((max_relative - 1) / (position_buckets / 2)): it must be positive.
    INCRELORA_CHECK(c.position_buckets >= 2 && c.max_relative() - 1 > c.position_buckets / 2, origin,
                    ": position_buckets (", c.position_buckets,
                    ") must be >= 2 and below 2 (max_relative_positions - 1)"
                    " (max_relative_positions resolves to ",
                    c.max_relative(),
                    "); use position_buckets -1 for no "
                    "buckets.");
  }
  return c;
}

DebertaConfig DebertaConfig::from_json_file(const std::string& path) {
  return from_json_string(models::detail::read_config_text(path), path);
}

bool is_deberta_config(const std::string& config_json_path) {
  return models::detail::config_model_type(config_json_path, "is_deberta_config") == "deberta-v2";
}

std::vector<std::string> lora_patterns_from_short_names(const std::vector<std::string>& names) {
  std::vector<std::string> patterns;
  for (const auto& n : names) {
    if (n == "query" || n == "key" || n == "value") {
      patterns.push_back("attention.self." + n + "_proj");
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

torch::Tensor relative_positions(int64_t seq, int64_t bucket_size, int64_t max_position, torch::Device device) {
  const auto ids = torch::arange(seq, torch::TensorOptions().dtype(torch::kLong).device(device));
  auto rel = ids.unsqueeze(1) - ids.unsqueeze(0);  // query i − key j
  if (bucket_size <= 0 || max_position <= 0) return rel;
  // Log buckets, in float32 as transformers computes them (the ceil decides the bucket, so the precision
  // matters): |d| < mid is kept, larger distances map to
  // sign(d) (mid + ceil(log(|d| / mid) / log((max − 1) / mid) · (mid − 1))).
  const int64_t mid = bucket_size / 2;
  const auto sign = torch::sign(rel);
  const auto abs_pos = torch::where((rel < mid) & (rel > -mid), torch::full_like(rel, mid - 1), rel.abs());
  const auto base = torch::log(torch::scalar_tensor(static_cast<double>(max_position - 1) / mid, torch::kFloat));
  const auto log_pos = torch::ceil(torch::log(abs_pos.to(torch::kFloat) / mid) / base * (mid - 1)) + mid;
  return torch::where(abs_pos <= mid, rel.to(torch::kFloat), log_pos * sign).to(torch::kLong);
}

// ---- modules -----------------------------------------------------------------------------------------------

DebertaV2EmbeddingsImpl::DebertaV2EmbeddingsImpl(const DebertaConfig& c, const LoraSettings& lora,
                                                 const std::string& prefix)
    : config(c) {
  const int64_t width = c.embedding_width();
  word_embeddings = register_module(
      "word_embeddings",
      torch::nn::Embedding(torch::nn::EmbeddingOptions(c.vocab_size, width).padding_idx(c.pad_token_id)));
  if (c.position_biased_input) {
    position_embeddings =
        register_module("position_embeddings", torch::nn::Embedding(c.max_position_embeddings, width));
  }
  if (c.type_vocab_size > 0) {
    token_type_embeddings = register_module("token_type_embeddings", torch::nn::Embedding(c.type_vocab_size, width));
  }
  if (width != c.hidden_size) {
    embed_proj =
        register_module("embed_proj", make_linear(width, c.hidden_size, lora, prefix + "embed_proj", /*bias=*/false));
  }
  LayerNorm = register_module("LayerNorm", layer_norm(c));
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor DebertaV2EmbeddingsImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& token_type_ids,
                                               const torch::Tensor& attention_mask) {
  const int64_t seq = input_ids.size(1);
  auto x = word_embeddings(input_ids);
  if (!position_embeddings.is_empty()) {
    // Only absolute positions bound the length; relative positions are clamped or bucketed.
    INCRELORA_CHECK(seq <= config.max_position_embeddings, "DebertaModel: sequences of ", seq,
                    " tokens exceed max_position_embeddings (", config.max_position_embeddings,
                    "); truncate the inputs (--max_seq_length).");
    x = x + position_embeddings(torch::arange(seq, input_ids.options().dtype(torch::kLong)).unsqueeze(0));
  }
  if (!token_type_embeddings.is_empty()) x = x + token_type_embeddings(token_type_ids);
  if (!embed_proj.is_empty()) x = embed_proj(x);
  x = LayerNorm(x);
  x = x * attention_mask.unsqueeze(2).to(x.scalar_type());
  return dropout(x);
}

DisentangledSelfAttentionImpl::DisentangledSelfAttentionImpl(const DebertaConfig& c, const LoraSettings& lora,
                                                             const std::string& prefix)
    : config(c),
      heads(c.num_attention_heads),
      head_dim(c.head_dim()),
      scale_factor(1 + (c.has_c2p() ? 1 : 0) + (c.has_p2c() ? 1 : 0)) {
  query_proj = register_module("query_proj", make_linear(c.hidden_size, c.hidden_size, lora, prefix + "query_proj"));
  key_proj = register_module("key_proj", make_linear(c.hidden_size, c.hidden_size, lora, prefix + "key_proj"));
  value_proj = register_module("value_proj", make_linear(c.hidden_size, c.hidden_size, lora, prefix + "value_proj"));
  if (c.relative_attention) {
    pos_dropout = register_module("pos_dropout", torch::nn::Dropout(c.hidden_dropout_prob));
    if (!c.share_att_key && c.has_c2p()) {
      pos_key_proj =
          register_module("pos_key_proj", make_linear(c.hidden_size, c.hidden_size, lora, prefix + "pos_key_proj"));
    }
    if (!c.share_att_key && c.has_p2c()) {
      pos_query_proj =
          register_module("pos_query_proj", make_linear(c.hidden_size, c.hidden_size, lora, prefix + "pos_query_proj"));
    }
  }
  dropout = register_module("dropout", torch::nn::Dropout(c.attention_probs_dropout_prob));
}

torch::Tensor DisentangledSelfAttentionImpl::forward(const torch::Tensor& hidden, const torch::Tensor& mask,
                                                     const torch::Tensor& relative_pos,
                                                     const torch::Tensor& rel_embeddings) {
  const int64_t batch = hidden.size(0), seq = hidden.size(1), width = hidden.size(2);
  const bool relative = config.relative_attention;
  const bool c2p = relative && config.has_c2p(), p2c = relative && config.has_p2c();
  const int64_t span = config.attention_span();
  torch::Tensor rel;  // [2 span, hidden]
  if (relative) rel = pos_dropout(rel_embeddings.slice(0, 0, 2 * span));

  // With share_att_key the relative embeddings go through the content query_proj / key_proj as well. Both row
  // sets pass through the layer in one call, so an adapter's backward (and its importance score) sees the
  // layer's whole gradient at once, as the weight's gradient in transformers does.
  auto project = [&](SVDLinear& layer, bool with_rel) -> std::pair<torch::Tensor, torch::Tensor> {
    if (!with_rel) return {layer(hidden), torch::Tensor()};
    const auto out = layer(torch::cat({hidden.reshape({batch * seq, width}), rel}, 0));
    return {out.slice(0, 0, batch * seq).view({batch, seq, -1}), out.slice(0, batch * seq)};
  };
  const bool shared = config.share_att_key;
  auto [query_out, query_rel] = project(query_proj, shared && p2c);
  auto [key_out, key_rel] = project(key_proj, shared && c2p);
  auto split = [&](const torch::Tensor& t) { return t.view({batch, seq, heads, head_dim}).transpose(1, 2); };
  auto split_rel = [&](const torch::Tensor& t) { return t.view({t.size(0), heads, head_dim}).transpose(0, 1); };
  const auto q = split(query_out), k = split(key_out), v = split(value_proj(hidden));  // [batch, heads, seq, d]

  // transformers computes the scale in float32: sqrt(float(head_dim) * scale_factor).
  const double scale = std::sqrt(static_cast<float>(head_dim) * static_cast<float>(scale_factor));
  auto scores = torch::matmul(q, k.transpose(-1, -2) / scale);  // [batch, heads, seq, seq]
  if (c2p) {
    // content → position: query i against the relative embedding of δ(i, j), δ clamped to [0, 2 span).
    const auto pos_key = split_rel(shared ? key_rel : pos_key_proj(rel));  // [heads, 2 span, d]
    const auto att = torch::matmul(q, pos_key.transpose(-1, -2));          // [batch, heads, seq, 2 span]
    const auto index = torch::clamp(relative_pos + span, 0, 2 * span - 1).expand({batch, heads, seq, seq});
    scores = scores + torch::gather(att, -1, index) / scale;
  }
  if (p2c) {
    // position → content: key j against the relative embedding of δ(j, i), transposed into query rows.
    const auto pos_query = split_rel(shared ? query_rel : pos_query_proj(rel));
    const auto att = torch::matmul(k, pos_query.transpose(-1, -2));
    const auto index = torch::clamp(-relative_pos + span, 0, 2 * span - 1).expand({batch, heads, seq, seq});
    scores = scores + torch::gather(att, -1, index).transpose(-1, -2) / scale;
  }
  scores = scores.masked_fill(mask.logical_not(), models::detail::lowest_finite(scores.scalar_type()));
  const auto probs = dropout(torch::softmax(scores, -1));
  return torch::matmul(probs, v).transpose(1, 2).reshape({batch, seq, heads * head_dim});
}

DebertaV2ResidualOutputImpl::DebertaV2ResidualOutputImpl(const DebertaConfig& c, int64_t in_features,
                                                         const LoraSettings& lora, const std::string& prefix) {
  dense = register_module("dense", make_linear(in_features, c.hidden_size, lora, prefix + "dense"));
  LayerNorm = register_module("LayerNorm", layer_norm(c));
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor DebertaV2ResidualOutputImpl::forward(const torch::Tensor& hidden, const torch::Tensor& residual) {
  return LayerNorm(dropout(dense(hidden)) + residual);
}

DebertaV2AttentionImpl::DebertaV2AttentionImpl(const DebertaConfig& c, const LoraSettings& lora,
                                               const std::string& prefix) {
  self = register_module("self", DisentangledSelfAttention(c, lora, prefix + "self."));
  output = register_module("output", DebertaV2ResidualOutput(c, c.hidden_size, lora, prefix + "output."));
}

torch::Tensor DebertaV2AttentionImpl::forward(const torch::Tensor& hidden, const torch::Tensor& mask,
                                              const torch::Tensor& relative_pos, const torch::Tensor& rel_embeddings) {
  return output(self(hidden, mask, relative_pos, rel_embeddings), hidden);
}

DebertaV2IntermediateImpl::DebertaV2IntermediateImpl(const DebertaConfig& c, const LoraSettings& lora,
                                                     const std::string& prefix)
    : activation(c.hidden_act) {
  dense = register_module("dense", make_linear(c.hidden_size, c.intermediate_size, lora, prefix + "dense"));
}

torch::Tensor DebertaV2IntermediateImpl::forward(const torch::Tensor& hidden) {
  return models::detail::activate(activation, dense(hidden));
}

DebertaV2LayerImpl::DebertaV2LayerImpl(const DebertaConfig& c, const LoraSettings& lora, const std::string& prefix) {
  attention = register_module("attention", DebertaV2Attention(c, lora, prefix + "attention."));
  intermediate = register_module("intermediate", DebertaV2Intermediate(c, lora, prefix + "intermediate."));
  output = register_module("output", DebertaV2ResidualOutput(c, c.intermediate_size, lora, prefix + "output."));
}

torch::Tensor DebertaV2LayerImpl::forward(const torch::Tensor& hidden, const torch::Tensor& mask,
                                          const torch::Tensor& relative_pos, const torch::Tensor& rel_embeddings) {
  const auto attended = attention(hidden, mask, relative_pos, rel_embeddings);
  return output(intermediate(attended), attended);
}

DebertaV2EncoderImpl::DebertaV2EncoderImpl(const DebertaConfig& c, const LoraSettings& lora, const std::string& prefix)
    : config(c) {
  layer = register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) {
    layers.push_back(DebertaV2Layer(c, lora, prefix + "layer." + std::to_string(i) + "."));
    layer->push_back(layers.back());
  }
  if (c.relative_attention) {
    rel_embeddings = register_module("rel_embeddings", torch::nn::Embedding(2 * c.attention_span(), c.hidden_size));
  }
  // transformers builds it whenever norm_rel_ebd says so, with relative attention or not.
  if (c.normalizes_rel_embeddings()) LayerNorm = register_module("LayerNorm", layer_norm(c));
}

torch::Tensor DebertaV2EncoderImpl::rel_embedding() {
  if (rel_embeddings.is_empty()) return {};
  auto w = rel_embeddings->weight;
  return LayerNorm.is_empty() ? w : LayerNorm(w);
}

torch::Tensor DebertaV2EncoderImpl::forward(torch::Tensor hidden, const torch::Tensor& attention_mask) {
  // transformers' extended mask: pair (i, j) is kept when mask[i] · mask[j] != 0.
  const auto keys = attention_mask.unsqueeze(1).unsqueeze(2);                  // [batch, 1, 1, seq]
  const auto mask = (keys * keys.squeeze(-2).unsqueeze(-1)).to(torch::kBool);  // [batch, 1, seq, seq]
  torch::Tensor relative_pos, rel;
  if (config.relative_attention) {
    relative_pos = relative_positions(hidden.size(1), config.position_buckets, config.max_relative(), hidden.device());
    rel = rel_embedding();
  }
  for (auto& l : layers) hidden = l(hidden, mask, relative_pos, rel);
  return hidden;
}

DebertaModelImpl::DebertaModelImpl(const DebertaConfig& c, const LoraSettings& lora, const std::string& prefix)
    : config(c) {
  embeddings = register_module("embeddings", DebertaV2Embeddings(c, lora, prefix + "embeddings."));
  encoder = register_module("encoder", DebertaV2Encoder(c, lora, prefix + "encoder."));
}

torch::Tensor DebertaModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                        const torch::Tensor& token_type_ids) {
  INCRELORA_CHECK(input_ids.defined() && input_ids.dim() == 2 && input_ids.scalar_type() == torch::kLong,
                  "DebertaModel: input_ids must be an int64 tensor [batch, seq]", input_ids.defined() ? ", got " : "",
                  input_ids.defined() ? c10::toString(input_ids.scalar_type()) : "", ".");
  const auto types = token_type_ids.defined() ? token_type_ids : torch::zeros_like(input_ids);
  const auto mask = attention_mask.defined() ? attention_mask : torch::ones_like(input_ids);
  INCRELORA_CHECK(mask.sizes() == input_ids.sizes() && types.sizes() == input_ids.sizes(),
                  "DebertaModel: attention_mask ", mask.sizes(), " and token_type_ids ", types.sizes(),
                  " must have input_ids' shape ", input_ids.sizes(), ".");
  return encoder(embeddings(input_ids, types, mask), mask);
}

DebertaContextPoolerImpl::DebertaContextPoolerImpl(const DebertaConfig& c, const LoraSettings& lora,
                                                   const std::string& prefix)
    : activation(c.pooler_hidden_act) {
  const int64_t width = c.pooler_hidden_size.value_or(c.hidden_size);
  dense = register_module("dense", make_linear(width, width, lora, prefix + "dense"));
  dropout = register_module("dropout", torch::nn::Dropout(c.pooler_dropout));
  init_head(dense->weight, dense->bias, c.initializer_range);
}

torch::Tensor DebertaContextPoolerImpl::forward(const torch::Tensor& hidden) {
  return models::detail::activate(activation, dense(dropout(hidden.select(1, 0))));
}

DebertaSequenceClassifierImpl::DebertaSequenceClassifierImpl(const DebertaConfig& c, int64_t labels,
                                                             const LoraSettings& lora,
                                                             std::optional<double> cls_dropout)
    : config(c), num_labels(labels) {
  INCRELORA_CHECK(labels >= 1, "DebertaSequenceClassifier: num_labels must be >= 1 (1 = regression), got ", labels,
                  ".");
  deberta = register_module("deberta", DebertaModel(c, lora, "deberta."));
  pooler = register_module("pooler", DebertaContextPooler(c, lora, "pooler."));
  dropout = register_module("dropout",
                            torch::nn::Dropout(cls_dropout.value_or(c.cls_dropout.value_or(c.hidden_dropout_prob))));
  classifier = register_module("classifier", torch::nn::Linear(c.hidden_size, labels));
  init_head(classifier->weight, classifier->bias, c.initializer_range);
}

torch::Tensor DebertaSequenceClassifierImpl::forward(const torch::Tensor& input_ids,
                                                     const torch::Tensor& attention_mask,
                                                     const torch::Tensor& token_type_ids) {
  return classifier(dropout(pooler(deberta(input_ids, attention_mask, token_type_ids))));
}

DebertaQuestionAnsweringImpl::DebertaQuestionAnsweringImpl(const DebertaConfig& c, const LoraSettings& lora)
    : config(c) {
  deberta = register_module("deberta", DebertaModel(c, lora, "deberta."));
  qa_outputs = register_module("qa_outputs", torch::nn::Linear(c.hidden_size, 2));
  init_head(qa_outputs->weight, qa_outputs->bias, c.initializer_range);
}

std::pair<torch::Tensor, torch::Tensor> DebertaQuestionAnsweringImpl::forward(const torch::Tensor& input_ids,
                                                                              const torch::Tensor& attention_mask,
                                                                              const torch::Tensor& token_type_ids) {
  const auto logits = qa_outputs(deberta(input_ids, attention_mask, token_type_ids));
  return {logits.select(2, 0), logits.select(2, 1)};
}

// ---- checkpoint loading ------------------------------------------------------------------------------------

PretrainedLoad load_pretrained(torch::nn::Module& model, const std::string& dir) {
  const std::string st = dir + "/model.safetensors";
  if (!std::ifstream(st).good()) {
    INCRELORA_CHECK(!std::ifstream(dir + "/model.safetensors.index.json").good(), "deberta::load_pretrained: '", dir,
                    "' holds a sharded checkpoint (model.safetensors.index.json); this loader reads a single "
                    "model.safetensors: save the model again with a larger max_shard_size.");
    INCRELORA_CHECK(!std::ifstream(dir + "/pytorch_model.bin").good(), "deberta::load_pretrained: '", dir,
                    "' holds pytorch_model.bin but no model.safetensors; pickles can run code, so convert it once "
                    "(python: safetensors.torch.save_file(torch.load(p, weights_only=True), '",
                    st, "')).");
    INCRELORA_CHECK(false, "deberta::load_pretrained: '", st,
                    "' does not exist; pass a Hugging Face checkpoint directory.");
  }
  // The model's encoder prefix: "" for a bare DebertaModel, "deberta." inside a task model.
  std::string prefix;
  for (const auto& item : model.named_parameters()) {
    const auto& n = item.key();
    const auto at = n.find("embeddings.word_embeddings.weight");
    if (at != std::string::npos) prefix = n.substr(0, at);
  }
  // Pretraining heads: the masked-LM head (lm_predictions., or cls. in the legacy layout) and the
  // replaced-token-detection head of the released v3 checkpoints (mask_predictions.); position_ids buffers.
  auto pretraining_only = [](const std::string& raw) {
    return starts_with(raw, "lm_predictions.") || starts_with(raw, "mask_predictions.") || starts_with(raw, "cls.") ||
           ends_with(raw, "position_ids");
  };
  auto module_name = [&](const std::string& raw) -> std::string {
    if (pretraining_only(raw)) return "";
    if (starts_with(raw, "deberta.")) return prefix + raw.substr(8);
    if (starts_with(raw, "embeddings.") || starts_with(raw, "encoder.")) return prefix + raw;
    return raw;  // the task heads: pooler., classifier., qa_outputs.
  };
  const SafetensorsFile file(st);
  // Which module tensors the file cannot fill, decided before anything is copied: adapter tensors and the task
  // head may stay fresh, an encoder tensor may not.
  std::set<std::string> provided;
  for (const auto& n : file.names()) provided.insert(module_name(n));
  std::vector<std::string> missing_encoder;
  auto check = [&](const std::string& n) {
    const bool head = starts_with(n, "classifier.") || starts_with(n, "qa_outputs.") || starts_with(n, "pooler.");
    if (!provided.count(n) && !is_adapter_tensor(n) && !head) missing_encoder.push_back(n);
  };
  for (const auto& item : model.named_parameters()) check(item.key());
  for (const auto& item : model.named_buffers()) check(item.key());
  INCRELORA_CHECK(missing_encoder.empty(), "deberta::load_pretrained: '", st,
                  "' lacks encoder tensors the model needs: ", join(missing_encoder),
                  ". Is config.json the checkpoint's own?");

  PretrainedLoad result;
  for (const auto& n : file.names()) {
    if (pretraining_only(n)) result.ignored.push_back(n);
  }
  const auto report = load_state_into(model, file, module_name, /*strict=*/false);
  // Unmatched file tensors: another head, or position_embeddings a relative-only model has no place for
  // (transformers ignores those too).
  for (const auto& n : report.unexpected) result.ignored.push_back(n);
  result.initialized = report.missing;  // adapter tensors and head, as checked above
  return result;
}

}  // namespace increlora::deberta
