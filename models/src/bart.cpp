#include <increlora/models/bart.hpp>

#include <increlora/errors.hpp>
#include <increlora/modules.hpp>
#include <increlora/safetensors.hpp>

#include "activations.hpp"
#include "config_json.hpp"

#include <ATen/ops/scaled_dot_product_attention.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <tuple>
#include <type_traits>
#include <utility>

namespace increlora::bart {
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

// BART's LayerNorms all use PyTorch's default eps (1e-5).
torch::nn::LayerNorm layer_norm(const BartConfig& c) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.d_model}));
}

torch::nn::Embedding token_embedding(const BartConfig& c) {
  return torch::nn::Embedding(torch::nn::EmbeddingOptions(c.vocab_size, c.d_model).padding_idx(c.pad_token_id));
}

std::string join(const std::vector<std::string>& v, size_t limit = 12) {
  std::string s;
  for (size_t i = 0; i < v.size() && i < limit; ++i) s += (i ? ", " : "") + v[i];
  if (v.size() > limit) s += ", ... (" + std::to_string(v.size()) + " in all)";
  return s;
}

std::string shape_string(c10::IntArrayRef shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

bool starts_with(const std::string& s, const std::string& p) { return s.compare(0, p.size(), p) == 0; }
bool ends_with(const std::string& s, const std::string& p) {
  return s.size() >= p.size() && s.compare(s.size() - p.size(), p.size(), p) == 0;
}


// Bool `allowed` → additive mask of `type`: 0 where allowed, the lowest value where not.
torch::Tensor additive(const torch::Tensor& allowed, torch::ScalarType type) {
  return torch::zeros(allowed.sizes(), allowed.options().dtype(type))
      .masked_fill(allowed.logical_not(), models::detail::lowest_finite(type));
}

// [batch, src] 1/0 → additive [batch, 1, 1, src]: padding keys masked for every head and query.
torch::Tensor key_padding_mask(const torch::Tensor& attention_mask, torch::ScalarType type) {
  return additive(attention_mask.ne(0).unsqueeze(1).unsqueeze(2), type);
}

void check_ids(const torch::Tensor& ids, const char* where, const char* what) {
  INCRELORA_CHECK(ids.defined() && ids.dim() == 2 && ids.scalar_type() == torch::kLong, where, ": ", what,
                  " must be an int64 tensor [batch, length]",
                  ids.defined()
                      ? ", got " + std::string(c10::toString(ids.scalar_type())) + " " + shape_string(ids.sizes())
                      : std::string(", got an undefined tensor"),
                  ".");
}

torch::Tensor mask_or_ones(const torch::Tensor& mask, const torch::Tensor& ids, const char* where, const char* what) {
  if (!mask.defined()) return torch::ones_like(ids);
  INCRELORA_CHECK(mask.sizes() == ids.sizes(), where, ": ", what, " ", shape_string(mask.sizes()),
                  " must have the shape of its ids ", shape_string(ids.sizes()), ".");
  return mask.to(ids.device());
}

bool layer_dropped(bool training, double layerdrop) {
  if (!training || layerdrop <= 0.0) return false;
  return torch::rand({1}).item<double>() < layerdrop;
}

// Every encoder layer's output in fp16 can overflow; transformers clamps it to the finite range.
torch::Tensor clamp_half(torch::Tensor hidden) {
  if (hidden.scalar_type() == torch::kHalf && !torch::isfinite(hidden).all().item<bool>()) {
    const double limit = 65504.0 - 1000.0;
    hidden = torch::clamp(hidden, -limit, limit);
  }
  return hidden;
}

}  // namespace

// ---- config ------------------------------------------------------------------------------------------------

double BartConfig::embed_scale() const { return scale_embedding ? std::sqrt(static_cast<double>(d_model)) : 1.0; }

BartConfig BartConfig::from_json_string(const std::string& text, const std::string& origin) {
  const models::detail::ConfigJson j(text, origin);
  BartConfig c;
  // Token ids: an integer, or (as transformers allows for eos_token_id) a list holding one integer. Returns
  // whether the key was present and not null.
  auto get_token = [&](const char* key, int64_t& into) {
    if (!j.present(key)) return false;
    const auto& v = j.at(key);
    if (v.is_number_integer()) {
      into = v.get<int64_t>();
    } else if (v.is_array() && v.size() == 1 && v[0].is_number_integer()) {
      into = v[0].get<int64_t>();
    } else {
      j.wrong_type(key, "a token id (an integer, or a list of one integer)");
    }
    return true;
  };
  j.get("model_type", c.model_type);
  INCRELORA_CHECK(c.model_type == "bart", origin, ": model_type \"", c.model_type,
                  "\" is not BART; this model implements model_type \"bart\" only",
                  c.model_type == "mbart" || c.model_type == "pegasus" || c.model_type == "marian"
                      ? " (" + c.model_type + " puts its LayerNorms elsewhere or embeds positions otherwise)"
                      : std::string(),
                  ".");
  j.get("vocab_size", c.vocab_size);
  j.get("d_model", c.d_model);
  j.get("encoder_layers", c.encoder_layers);
  j.get("decoder_layers", c.decoder_layers);
  j.get("encoder_attention_heads", c.encoder_attention_heads);
  j.get("decoder_attention_heads", c.decoder_attention_heads);
  j.get("encoder_ffn_dim", c.encoder_ffn_dim);
  j.get("decoder_ffn_dim", c.decoder_ffn_dim);
  j.get("activation_function", c.activation_function);
  j.get("dropout", c.dropout);
  j.get("attention_dropout", c.attention_dropout);
  j.get("activation_dropout", c.activation_dropout);
  j.get("encoder_layerdrop", c.encoder_layerdrop);
  j.get("decoder_layerdrop", c.decoder_layerdrop);
  j.get("max_position_embeddings", c.max_position_embeddings);
  j.get("init_std", c.init_std);
  j.get("scale_embedding", c.scale_embedding);
  get_token("pad_token_id", c.pad_token_id);
  get_token("bos_token_id", c.bos_token_id);
  get_token("eos_token_id", c.eos_token_id);
  get_token("decoder_start_token_id", c.decoder_start_token_id);
  int64_t token = 0;
  if (get_token("forced_bos_token_id", token)) c.forced_bos_token_id = token;
  // forced_eos_token_id defaults to 2; an explicit null turns it off.
  if (j.contains("forced_eos_token_id")) {
    c.forced_eos_token_id = get_token("forced_eos_token_id", token) ? std::optional<int64_t>(token) : std::nullopt;
  }
  j.get("tie_word_embeddings", c.tie_word_embeddings);

  // Settings of fairseq-era configs and of BART's relatives that this model does not implement (transformers'
  // BartModel ignores them and would compute something the checkpoint was not trained for).
  auto refuse_true = [&](const char* key, const char* why) {
    bool value = false;
    j.get(key, value);
    INCRELORA_CHECK(!value, origin, ": ", key, " is true; ", why,
                    " is not implemented (BART is post-LayerNorm with learned positions). Use a BART checkpoint, or "
                    "set ",
                    key, " to false if the checkpoint was trained without it.");
  };
  refuse_true("normalize_before", "a pre-LayerNorm encoder-decoder (mBART's layout)");
  refuse_true("add_final_layer_norm", "a LayerNorm after the last layer (mBART's layout)");
  refuse_true("static_position_embeddings", "sinusoidal position embeddings");
  bool normalize_embedding = true;
  j.get("normalize_embedding", normalize_embedding);
  INCRELORA_CHECK(normalize_embedding, origin,
                  ": normalize_embedding is false; embeddings without layernorm_embedding are not implemented (BART "
                  "normalizes them). Use a BART checkpoint.");
  int64_t extra_pos_embeddings = 2;
  j.get("extra_pos_embeddings", extra_pos_embeddings);
  INCRELORA_CHECK(extra_pos_embeddings == 2, origin, ": extra_pos_embeddings is ", extra_pos_embeddings,
                  "; BART's learned positions are offset by 2 and other offsets are not implemented.");

  INCRELORA_CHECK(models::detail::is_activation(c.activation_function), origin, ": activation_function \"",
                  c.activation_function, "\" is not implemented; use ", models::detail::activation_choices(), ".");
  INCRELORA_CHECK(c.vocab_size > 0 && c.d_model > 0 && c.encoder_ffn_dim > 0 && c.decoder_ffn_dim > 0 &&
                      c.max_position_embeddings > 0 && c.encoder_layers >= 0 && c.decoder_layers >= 0,
                  origin,
                  ": vocab_size, d_model, encoder_ffn_dim, decoder_ffn_dim and max_position_embeddings must be > 0 "
                  "and encoder_layers, decoder_layers >= 0.");
  INCRELORA_CHECK(c.encoder_attention_heads > 0 && c.d_model % c.encoder_attention_heads == 0, origin, ": d_model (",
                  c.d_model, ") must be a multiple of encoder_attention_heads (", c.encoder_attention_heads, ").");
  INCRELORA_CHECK(c.decoder_attention_heads > 0 && c.d_model % c.decoder_attention_heads == 0, origin, ": d_model (",
                  c.d_model, ") must be a multiple of decoder_attention_heads (", c.decoder_attention_heads, ").");
  for (const auto& [key, p] : {std::pair<const char*, double>{"dropout", c.dropout},
                               {"attention_dropout", c.attention_dropout},
                               {"activation_dropout", c.activation_dropout},
                               {"encoder_layerdrop", c.encoder_layerdrop},
                               {"decoder_layerdrop", c.decoder_layerdrop}}) {
    INCRELORA_CHECK(p >= 0.0 && p <= 1.0, origin, ": ", key, " is ", p, "; a probability must lie in [0, 1].");
  }
  auto check_token = [&](const char* key, int64_t id) {
    INCRELORA_CHECK(id >= 0 && id < c.vocab_size, origin, ": ", key, " ", id, " is not a token id (vocab_size ",
                    c.vocab_size, ").");
  };
  check_token("pad_token_id", c.pad_token_id);
  check_token("decoder_start_token_id", c.decoder_start_token_id);
  check_token("eos_token_id", c.eos_token_id);
  check_token("bos_token_id", c.bos_token_id);
  if (c.forced_bos_token_id) check_token("forced_bos_token_id", *c.forced_bos_token_id);
  if (c.forced_eos_token_id) check_token("forced_eos_token_id", *c.forced_eos_token_id);
  return c;
}

BartConfig BartConfig::from_json_file(const std::string& path) {
  return from_json_string(models::detail::read_config_text(path), path);
}

bool is_bart_config(const std::string& config_json_path) {
  return models::detail::config_model_type(config_json_path, "is_bart_config") == "bart";
}

std::vector<std::string> lora_patterns_from_short_names(const std::vector<std::string>& names) {
  std::vector<std::string> patterns;
  for (const auto& n : names) {
    if (n == "self_attn" || n == "encoder_attn") {
      patterns.push_back("re:(.*\\.)?layers\\.[0-9]+\\." + n + "\\.(q|k|v|out)_proj");
    } else {
      // q_proj, k_proj, v_proj, out_proj, fc1, fc2 are dotted suffixes of every layer's module of that name.
      patterns.push_back(n);
    }
  }
  return patterns;
}

torch::Tensor shift_tokens_right(const torch::Tensor& labels, int64_t pad_token_id, int64_t decoder_start_token_id) {
  check_ids(labels, "shift_tokens_right", "labels");
  auto shifted = torch::empty_like(labels);
  shifted.select(1, 0).fill_(decoder_start_token_id);
  if (labels.size(1) > 1) shifted.slice(1, 1).copy_(labels.slice(1, 0, -1));
  return shifted.masked_fill_(shifted.eq(-100), pad_token_id);
}

// ---- modules -----------------------------------------------------------------------------------------------

BartLearnedPositionalEmbeddingImpl::BartLearnedPositionalEmbeddingImpl(int64_t max_position_embeddings, int64_t d_model)
    : max_positions(max_position_embeddings) {
  weight = register_parameter("weight", torch::randn({max_position_embeddings + kOffset, d_model}));
}

torch::Tensor BartLearnedPositionalEmbeddingImpl::forward(int64_t length, int64_t past) {
  INCRELORA_CHECK(past >= 0 && past + length <= max_positions, "BART: a sequence of ", past + length,
                  " positions exceeds max_position_embeddings (", max_positions,
                  "); truncate the inputs (or the generation's max_length).");
  return weight.slice(0, past + kOffset, past + length + kOffset);
}

BartAttentionImpl::BartAttentionImpl(int64_t d_model, int64_t heads_, double attention_dropout_,
                                     const LoraSettings& lora, const std::string& prefix)
    : heads(heads_), head_dim(d_model / heads_), attention_dropout(attention_dropout_) {
  // Registered in transformers' order (k, v, q, out), so that parameters() lists them as a state_dict would.
  k_proj = register_module("k_proj", make_linear(d_model, d_model, lora, prefix + "k_proj"));
  v_proj = register_module("v_proj", make_linear(d_model, d_model, lora, prefix + "v_proj"));
  q_proj = register_module("q_proj", make_linear(d_model, d_model, lora, prefix + "q_proj"));
  out_proj = register_module("out_proj", make_linear(d_model, d_model, lora, prefix + "out_proj"));
}

std::pair<torch::Tensor, torch::Tensor> BartAttentionImpl::keys_values(const torch::Tensor& states) {
  const int64_t batch = states.size(0), length = states.size(1);
  auto split = [&](const torch::Tensor& t) { return t.view({batch, length, heads, head_dim}).transpose(1, 2); };
  return {split(k_proj(states)), split(v_proj(states))};
}

torch::Tensor BartAttentionImpl::attend(const torch::Tensor& hidden, const torch::Tensor& keys,
                                        const torch::Tensor& values, const torch::Tensor& mask) {
  const int64_t batch = hidden.size(0), length = hidden.size(1);
  const auto q = q_proj(hidden).view({batch, length, heads, head_dim}).transpose(1, 2);
  const double scale = std::pow(static_cast<double>(head_dim), -0.5);
  const auto context = at::scaled_dot_product_attention(
      q, keys, values, mask.defined() ? std::optional<torch::Tensor>(mask) : std::nullopt,
      is_training() ? attention_dropout : 0.0, /*is_causal=*/false, scale);
  return out_proj(context.transpose(1, 2).reshape({batch, length, heads * head_dim}));
}

torch::Tensor BartAttentionImpl::forward(const torch::Tensor& hidden, const torch::Tensor& key_value_states,
                                         const torch::Tensor& mask) {
  const auto [keys, values] = keys_values(key_value_states.defined() ? key_value_states : hidden);
  return attend(hidden, keys, values, mask);
}

BartEncoderLayerImpl::BartEncoderLayerImpl(const BartConfig& c, const LoraSettings& lora, const std::string& prefix)
    : config(c) {
  self_attn = register_module("self_attn", BartAttention(c.d_model, c.encoder_attention_heads, c.attention_dropout,
                                                         lora, prefix + "self_attn."));
  self_attn_layer_norm = register_module("self_attn_layer_norm", layer_norm(c));
  fc1 = register_module("fc1", make_linear(c.d_model, c.encoder_ffn_dim, lora, prefix + "fc1"));
  fc2 = register_module("fc2", make_linear(c.encoder_ffn_dim, c.d_model, lora, prefix + "fc2"));
  final_layer_norm = register_module("final_layer_norm", layer_norm(c));
}

torch::Tensor BartEncoderLayerImpl::forward(const torch::Tensor& hidden, const torch::Tensor& mask) {
  const bool training = is_training();
  auto h =
      self_attn_layer_norm(hidden + torch::dropout(self_attn(hidden, torch::Tensor(), mask), config.dropout, training));
  auto f = torch::dropout(models::detail::activate(config.activation_function, fc1(h)), config.activation_dropout, training);
  f = torch::dropout(fc2(f), config.dropout, training);
  return clamp_half(final_layer_norm(h + f));
}

BartDecoderLayerImpl::BartDecoderLayerImpl(const BartConfig& c, const LoraSettings& lora, const std::string& prefix)
    : config(c) {
  self_attn = register_module("self_attn", BartAttention(c.d_model, c.decoder_attention_heads, c.attention_dropout,
                                                         lora, prefix + "self_attn."));
  self_attn_layer_norm = register_module("self_attn_layer_norm", layer_norm(c));
  encoder_attn = register_module("encoder_attn", BartAttention(c.d_model, c.decoder_attention_heads,
                                                               c.attention_dropout, lora, prefix + "encoder_attn."));
  encoder_attn_layer_norm = register_module("encoder_attn_layer_norm", layer_norm(c));
  fc1 = register_module("fc1", make_linear(c.d_model, c.decoder_ffn_dim, lora, prefix + "fc1"));
  fc2 = register_module("fc2", make_linear(c.decoder_ffn_dim, c.d_model, lora, prefix + "fc2"));
  final_layer_norm = register_module("final_layer_norm", layer_norm(c));
}

torch::Tensor BartDecoderLayerImpl::feed_forward(torch::Tensor h) {
  const bool training = is_training();
  auto f = torch::dropout(models::detail::activate(config.activation_function, fc1(h)), config.activation_dropout, training);
  f = torch::dropout(fc2(f), config.dropout, training);
  return final_layer_norm(h + f);
}

torch::Tensor BartDecoderLayerImpl::forward(const torch::Tensor& hidden, const torch::Tensor& self_mask,
                                            const torch::Tensor& encoder_hidden, const torch::Tensor& encoder_mask) {
  const bool training = is_training();
  auto h = self_attn_layer_norm(
      hidden + torch::dropout(self_attn(hidden, torch::Tensor(), self_mask), config.dropout, training));
  if (encoder_hidden.defined()) {
    const auto crossed = encoder_attn(h, encoder_hidden, encoder_mask);
    h = encoder_attn_layer_norm(h + torch::dropout(crossed, config.dropout, training));
  }
  return feed_forward(h);
}

torch::Tensor BartDecoderLayerImpl::forward_cached(const torch::Tensor& hidden, BartLayerCache& cache,
                                                   const torch::Tensor& encoder_mask) {
  INCRELORA_CHECK(hidden.dim() == 3 && hidden.size(1) == 1,
                  "BartDecoderLayer::forward_cached: one new position per row ([rows, 1, d_model]), got ",
                  shape_string(hidden.sizes()), ".");
  const bool training = is_training();
  auto [keys, values] = self_attn->keys_values(hidden);
  cache.self_keys = cache.self_keys.defined() ? torch::cat({cache.self_keys, keys}, 2) : keys;
  cache.self_values = cache.self_values.defined() ? torch::cat({cache.self_values, values}, 2) : values;
  const auto attended = self_attn->attend(hidden, cache.self_keys, cache.self_values, {});
  auto h = self_attn_layer_norm(hidden + torch::dropout(attended, config.dropout, training));
  const auto crossed = encoder_attn->attend(h, cache.cross_keys, cache.cross_values, encoder_mask);
  h = encoder_attn_layer_norm(h + torch::dropout(crossed, config.dropout, training));
  return feed_forward(h);
}

BartEncoderImpl::BartEncoderImpl(const BartConfig& c, torch::nn::Embedding tokens, const LoraSettings& lora,
                                 const std::string& prefix)
    : config(c) {
  embed_tokens = tokens ? tokens : register_module("embed_tokens", token_embedding(c));
  embed_positions =
      register_module("embed_positions", BartLearnedPositionalEmbedding(c.max_position_embeddings, c.d_model));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.encoder_layers; ++i) {
    layer_list.push_back(BartEncoderLayer(c, lora, prefix + "layers." + std::to_string(i) + "."));
    layers->push_back(layer_list.back());
  }
  layernorm_embedding = register_module("layernorm_embedding", layer_norm(c));
}

torch::Tensor BartEncoderImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  check_ids(input_ids, "BartEncoder", "input_ids");
  const auto mask = mask_or_ones(attention_mask, input_ids, "BartEncoder", "attention_mask");
  auto hidden = embed_tokens(input_ids);
  const double scale = config.embed_scale();
  if (scale != 1.0) hidden = hidden * scale;
  hidden = layernorm_embedding(hidden + embed_positions(input_ids.size(1)));
  hidden = torch::dropout(hidden, config.dropout, is_training());
  const auto additive_mask = key_padding_mask(mask, hidden.scalar_type());
  for (auto& layer : layer_list) {
    if (!layer_dropped(is_training(), config.encoder_layerdrop)) hidden = layer(hidden, additive_mask);
  }
  return hidden;
}

BartDecoderImpl::BartDecoderImpl(const BartConfig& c, torch::nn::Embedding tokens, const LoraSettings& lora,
                                 const std::string& prefix)
    : config(c) {
  embed_tokens = tokens ? tokens : register_module("embed_tokens", token_embedding(c));
  embed_positions =
      register_module("embed_positions", BartLearnedPositionalEmbedding(c.max_position_embeddings, c.d_model));
  layers = register_module("layers", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.decoder_layers; ++i) {
    layer_list.push_back(BartDecoderLayer(c, lora, prefix + "layers." + std::to_string(i) + "."));
    layers->push_back(layer_list.back());
  }
  layernorm_embedding = register_module("layernorm_embedding", layer_norm(c));
}

torch::Tensor BartDecoderImpl::embed(const torch::Tensor& tokens, int64_t past) {
  auto hidden = embed_tokens(tokens);
  const double scale = config.embed_scale();
  if (scale != 1.0) hidden = hidden * scale;
  hidden = layernorm_embedding(hidden + embed_positions(tokens.size(1), past));
  return torch::dropout(hidden, config.dropout, is_training());
}

torch::Tensor BartDecoderImpl::forward(const torch::Tensor& decoder_input_ids,
                                       const torch::Tensor& decoder_attention_mask, const torch::Tensor& encoder_hidden,
                                       const torch::Tensor& attention_mask) {
  check_ids(decoder_input_ids, "BartDecoder", "decoder_input_ids");
  const int64_t length = decoder_input_ids.size(1);
  auto hidden = embed(decoder_input_ids, 0);
  const auto type = hidden.scalar_type();
  // Query i may attend key j when j <= i and j is a token (transformers' causal mask with the padding mask).
  const auto causal = torch::ones({length, length}, decoder_input_ids.options().dtype(torch::kBool)).tril();
  auto allowed = causal.view({1, 1, length, length});
  if (decoder_attention_mask.defined()) {
    const auto mask = mask_or_ones(decoder_attention_mask, decoder_input_ids, "BartDecoder", "decoder_attention_mask");
    allowed = allowed & mask.ne(0).unsqueeze(1).unsqueeze(2);
  }
  const auto self_mask = additive(allowed, type);
  torch::Tensor encoder_mask;
  if (encoder_hidden.defined() && attention_mask.defined()) {
    INCRELORA_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == encoder_hidden.size(0) &&
                        attention_mask.size(1) == encoder_hidden.size(1),
                    "BartDecoder: attention_mask ", shape_string(attention_mask.sizes()),
                    " must be [batch, src] of the encoder states ", shape_string(encoder_hidden.sizes()), ".");
    encoder_mask = key_padding_mask(attention_mask.to(hidden.device()), type);
  }
  for (auto& layer : layer_list) {
    if (!layer_dropped(is_training(), config.decoder_layerdrop)) {
      hidden = layer(hidden, self_mask, encoder_hidden, encoder_mask);
    }
  }
  return hidden;
}

BartModelImpl::BartModelImpl(const BartConfig& c, const LoraSettings& lora, const std::string& prefix) : config(c) {
  shared = register_module("shared", token_embedding(c));
  // Tied (every released BART): the encoder and decoder read `shared` itself. Untied: their own tables, as
  // transformers 5 builds them.
  const auto tokens = c.tie_word_embeddings ? shared : torch::nn::Embedding(nullptr);
  encoder = register_module("encoder", BartEncoder(c, tokens, lora, prefix + "encoder."));
  decoder = register_module("decoder", BartDecoder(c, tokens, lora, prefix + "decoder."));
}

torch::Tensor BartModelImpl::encode(const torch::Tensor& input_ids, const torch::Tensor& attention_mask) {
  return encoder(input_ids, attention_mask);
}

torch::Tensor BartModelImpl::decode(const torch::Tensor& decoder_input_ids, const torch::Tensor& decoder_attention_mask,
                                    const torch::Tensor& encoder_hidden, const torch::Tensor& attention_mask) {
  return decoder(decoder_input_ids, decoder_attention_mask, encoder_hidden, attention_mask);
}

torch::Tensor BartModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                     const torch::Tensor& decoder_input_ids,
                                     const torch::Tensor& decoder_attention_mask) {
  check_ids(input_ids, "BartModel", "input_ids");
  const auto mask = mask_or_ones(attention_mask, input_ids, "BartModel", "attention_mask");
  const auto targets = decoder_input_ids.defined()
                           ? decoder_input_ids
                           : shift_tokens_right(input_ids, config.pad_token_id, config.decoder_start_token_id);
  return decode(targets, decoder_attention_mask, encode(input_ids, mask), mask);
}

BartForConditionalGenerationImpl::BartForConditionalGenerationImpl(const BartConfig& c, const LoraSettings& lora)
    : config(c) {
  model = register_module("model", BartModel(c, lora, "model."));
  final_logits_bias = register_buffer("final_logits_bias", torch::zeros({1, c.vocab_size}));
  if (!c.tie_word_embeddings) {
    lm_head =
        register_module("lm_head", torch::nn::Linear(torch::nn::LinearOptions(c.d_model, c.vocab_size).bias(false)));
  }
}

torch::Tensor BartForConditionalGenerationImpl::lm_head_weight() const {
  return lm_head ? lm_head->weight : model->shared->weight;
}

torch::Tensor BartForConditionalGenerationImpl::lm_logits(const torch::Tensor& decoder_hidden) {
  return torch::linear(decoder_hidden, lm_head_weight()) + final_logits_bias;
}

torch::Tensor BartForConditionalGenerationImpl::forward(const torch::Tensor& input_ids,
                                                        const torch::Tensor& attention_mask,
                                                        const torch::Tensor& decoder_input_ids,
                                                        const torch::Tensor& decoder_attention_mask) {
  return lm_logits(model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask));
}

// ---- incremental decoding ----------------------------------------------------------------------------------

namespace {

class BartIncrementalDecoder final : public models::IncrementalDecoder {
 public:
  BartIncrementalDecoder(std::shared_ptr<BartForConditionalGenerationImpl> model, std::vector<BartLayerCache> caches,
                         torch::Tensor encoder_mask, int64_t rows)
      : model_(std::move(model)), caches_(std::move(caches)), encoder_mask_(std::move(encoder_mask)), rows_(rows) {}

  int64_t rows() const override { return rows_; }

  torch::Tensor step(const torch::Tensor& tokens) override {
    INCRELORA_CHECK(!model_->is_training(),
                    "BART incremental decoding: the model is in training mode; call model->eval() before decoding.");
    INCRELORA_CHECK(tokens.defined() && tokens.dim() == 1 && tokens.size(0) == rows_ &&
                        c10::isIntegralType(tokens.scalar_type(), /*includeBool=*/false),
                    "BART incremental decoding: step takes one integer token per row ([", rows_, "]), got ",
                    tokens.defined() ? shape_string(tokens.sizes()) : std::string("an undefined tensor"), ".");
    torch::NoGradGuard no_grad;
    const auto device = encoder_mask_.device();
    const auto ids = tokens.to(device, torch::kLong).view({rows_, 1});
    const int64_t vocab = model_->config.vocab_size;
    if (rows_ > 0) {
      INCRELORA_CHECK(ids.min().item<int64_t>() >= 0 && ids.max().item<int64_t>() < vocab,
                      "BART incremental decoding: step got a token outside [0, vocab_size = ", vocab, ").");
    }
    auto& decoder = model_->model->decoder;
    auto hidden = decoder->embed(ids, past_);
    for (size_t i = 0; i < caches_.size(); ++i) {
      hidden = decoder->layer_list[i]->forward_cached(hidden, caches_[i], encoder_mask_);
    }
    ++past_;
    return model_->lm_logits(hidden.select(1, 0)).to(torch::kFloat);
  }

  void reorder(const torch::Tensor& index) override {
    INCRELORA_CHECK(index.defined() && index.dim() == 1 && c10::isIntegralType(index.scalar_type(), false),
                    "BART incremental decoding: reorder takes a 1-d integer index of rows.");
    torch::NoGradGuard no_grad;
    const auto idx = index.to(encoder_mask_.device(), torch::kLong);
    if (idx.numel() > 0) {
      INCRELORA_CHECK(idx.min().item<int64_t>() >= 0 && idx.max().item<int64_t>() < rows_,
                      "BART incremental decoding: reorder's index must hold rows in [0, ", rows_, ").");
    }
    auto select = [&](torch::Tensor& t) {
      if (t.defined()) t = t.index_select(0, idx);
    };
    for (auto& cache : caches_) {
      select(cache.self_keys);
      select(cache.self_values);
      select(cache.cross_keys);
      select(cache.cross_values);
    }
    select(encoder_mask_);
    rows_ = idx.size(0);
  }

 private:
  std::shared_ptr<BartForConditionalGenerationImpl> model_;
  std::vector<BartLayerCache> caches_;
  torch::Tensor encoder_mask_;  // additive [rows, 1, 1, src]
  int64_t rows_;
  int64_t past_ = 0;  // the prefix length so far
};

}  // namespace

std::unique_ptr<models::IncrementalDecoder> BartForConditionalGenerationImpl::start_decoding(
    const torch::Tensor& input_ids, const torch::Tensor& attention_mask, int64_t copies) {
  INCRELORA_CHECK(!is_training(),
                  "BartForConditionalGeneration::start_decoding: the model is in training mode; call model->eval() "
                  "before decoding.");
  INCRELORA_CHECK(copies >= 1, "BartForConditionalGeneration::start_decoding: copies must be >= 1 (num_beams), got ",
                  copies, ".");
  check_ids(input_ids, "BartForConditionalGeneration::start_decoding", "input_ids");
  torch::NoGradGuard no_grad;
  const auto device = lm_head_weight().device();
  const auto ids = input_ids.to(device);
  auto mask = mask_or_ones(attention_mask, ids, "BartForConditionalGeneration::start_decoding", "attention_mask");
  auto encoded = model->encode(ids, mask);
  if (copies > 1) {
    encoded = encoded.repeat_interleave(copies, 0);
    mask = mask.repeat_interleave(copies, 0);
  }
  std::vector<BartLayerCache> caches;
  for (auto& layer : model->decoder->layer_list) {
    BartLayerCache cache;
    std::tie(cache.cross_keys, cache.cross_values) = layer->encoder_attn->keys_values(encoded);
    caches.push_back(std::move(cache));
  }
  // Keep the model alive when a holder owns it; a model on the stack must outlive the decoder.
  auto self = std::static_pointer_cast<BartForConditionalGenerationImpl>(weak_from_this().lock());
  if (!self) self = std::shared_ptr<BartForConditionalGenerationImpl>(std::shared_ptr<void>(), this);
  return std::make_unique<BartIncrementalDecoder>(std::move(self), std::move(caches),
                                                  key_padding_mask(mask, encoded.scalar_type()), encoded.size(0));
}

// ---- checkpoint loading ------------------------------------------------------------------------------------

PretrainedLoad load_pretrained(torch::nn::Module& model, const std::string& dir) {
  const std::string st = dir + "/model.safetensors";
  if (!std::ifstream(st).good()) {
    INCRELORA_CHECK(!std::ifstream(dir + "/model.safetensors.index.json").good(), "bart::load_pretrained: '", dir,
                    "' holds a sharded checkpoint (model.safetensors.index.json); this loader reads a single "
                    "model.safetensors: save the model again with a larger max_shard_size.");
    INCRELORA_CHECK(!std::ifstream(dir + "/pytorch_model.bin").good(), "bart::load_pretrained: '", dir,
                    "' holds pytorch_model.bin but no model.safetensors; pickles can run code, so convert it once "
                    "(python: safetensors.torch.save_file(torch.load(p, weights_only=True), '",
                    st, "')).");
    INCRELORA_CHECK(false, "bart::load_pretrained: '", st,
                    "' does not exist; pass a Hugging Face checkpoint directory.");
  }
  std::vector<std::pair<std::string, torch::Tensor>> targets;  // module order
  for (const auto& item : model.named_parameters()) targets.emplace_back(item.key(), item.value());
  for (const auto& item : model.named_buffers()) targets.emplace_back(item.key(), item.value());
  std::set<std::string> module_names;
  for (const auto& t : targets) module_names.insert(t.first);
  // The BartModel's prefix: "" for a bare BartModel, "model." inside BartForConditionalGeneration.
  std::string prefix;
  bool found = false;
  for (const auto& [n, t] : targets) {
    if (n == "shared.weight" || ends_with(n, ".shared.weight")) {
      prefix = n.substr(0, n.size() - std::string("shared.weight").size());
      found = true;
      break;
    }
  }
  INCRELORA_CHECK(found,
                  "bart::load_pretrained: the module has no shared.weight; pass a BartModel or "
                  "BartForConditionalGeneration.");
  const bool own_lm_head = module_names.count("lm_head.weight") > 0;
  const bool tied = module_names.count(prefix + "encoder.embed_tokens.weight") == 0;

  const SafetensorsFile file(st);
  const auto names = file.names();
  const std::set<std::string> in_file(names.begin(), names.end());
  // A BartModel tensor's name in the file: with transformers' "model." prefix (any Bart*For* class) or without
  // (a bare BartModel); "" when absent.
  auto find = [&](const std::string& base) -> std::string {
    if (in_file.count("model." + base)) return "model." + base;
    if (in_file.count(base)) return base;
    return "";
  };
  // The copies of the tied embedding, in the order they are read from.
  std::vector<std::string> embedding_copies;
  for (const std::string base : {"shared.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"}) {
    const auto n = find(base);
    if (!n.empty()) embedding_copies.push_back(n);
  }
  if (!own_lm_head && in_file.count("lm_head.weight")) embedding_copies.push_back("lm_head.weight");

  std::vector<std::pair<std::string, torch::Tensor>> plan;  // file name → module tensor
  std::vector<std::string> missing;
  std::set<std::string> used;
  PretrainedLoad result;
  torch::Tensor zero_bias;
  for (const auto& [n, t] : targets) {
    std::string source;
    if (is_adapter_tensor(n)) {
      result.initialized.push_back(n);
      continue;
    }
    if (n == "final_logits_bias") {
      if (in_file.count("final_logits_bias")) {
        source = "final_logits_bias";
      } else {
        zero_bias = t;  // optional in transformers too (_keys_to_ignore_on_load_missing): zeros
        result.initialized.push_back(n);
        continue;
      }
    } else if (n == "lm_head.weight") {
      if (in_file.count("lm_head.weight")) source = "lm_head.weight";
    } else {
      const std::string base = starts_with(n, prefix) ? n.substr(prefix.size()) : n;
      if (base == "shared.weight") {
        if (tied) {
          if (!embedding_copies.empty()) source = embedding_copies.front();
        } else {
          source = find("shared.weight");
        }
      } else if (!tied && (base == "encoder.embed_tokens.weight" || base == "decoder.embed_tokens.weight")) {
        source = find(base);
        if (source.empty()) source = find("shared.weight");  // a checkpoint that stored the tie once
      } else {
        source = find(base);
      }
    }
    if (source.empty()) {
      missing.push_back(n);
      continue;
    }
    const auto stored = file.shape(source);
    INCRELORA_CHECK(c10::IntArrayRef(stored) == t.sizes(), "bart::load_pretrained: tensor '", source, "' of '", st,
                    "' has shape ", shape_string(stored), " but the model's '", n, "' has shape ",
                    shape_string(t.sizes()), "; build the model with the checkpoint's own config.json.");
    used.insert(source);
    plan.emplace_back(source, t);
  }
  const bool lacks_head = std::find(missing.begin(), missing.end(), "lm_head.weight") != missing.end();
  INCRELORA_CHECK(missing.empty(), "bart::load_pretrained: '", st,
                  "' lacks encoder/decoder tensors the model needs: ", join(missing),
                  lacks_head ? ". The model's tie_word_embeddings is false but the checkpoint has no lm_head.weight: "
                               "set tie_word_embeddings to true"
                             : ". Is config.json the checkpoint's own?");

  const std::set<std::string> tied_copies =
      tied ? std::set<std::string>(embedding_copies.begin(), embedding_copies.end()) : std::set<std::string>();
  for (const auto& n : names) {
    if (!used.count(n) && !tied_copies.count(n)) result.ignored.push_back(n);
  }
  torch::NoGradGuard no_grad;
  for (auto& [source, target] : plan) target.copy_(file.tensor(source));
  if (zero_bias.defined()) zero_bias.zero_();
  return result;
}

}  // namespace increlora::bart
