// The BART encoder-decoder equals Hugging Face transformers on the same checkpoints and inputs (fp32, atol 1e-4):
// BartModel's encoder and decoder states and BartForConditionalGeneration's logits, for small random checkpoints
// (gelu: scale_embedding, 2 + 2 layers; relu: no scaling, 3 encoder layers and 1 decoder layer with other heads
// and widths), on batches with padded encoder and decoder rows. The incremental decoder gives the full forward's
// logits at every step and after a beam reorder. Adapters attach where the seed's short names say, start as a
// no-op and train alone with a frozen base; tied embeddings load from any of their copies; bad configs and
// checkpoints throw naming what to change.
#include "support.hpp"
#include "temp_dir.hpp"

#include <increlora/models/bart.hpp>

#include <increlora/safetensors.hpp>

#include <torch/nn/functional/loss.h>
#include <torch/optim/adamw.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

namespace bart = increlora::bart;

namespace {

std::string reference_dir() { return INCRELORA_BART_REFERENCE_DIR; }

increlora::SafetensorsFile reference(const std::string& variant) {
  const auto path = reference_dir() + "/" + variant + "/outputs.safetensors";
  INFO("reference file " << path
                         << " (written by the ctest fixture bart_reference: run ctest, or "
                            "tests/models/make_bart_reference.py --out "
                         << reference_dir() << ")");
  REQUIRE(std::filesystem::exists(path));
  return increlora::SafetensorsFile(path);
}

bart::BartConfig config_of(const std::string& variant) {
  return bart::BartConfig::from_json_file(reference_dir() + "/" + variant + "/config.json");
}

const std::vector<std::string> kSeedModules = {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"};

bart::LoraSettings all_seed_modules(int64_t r) {
  bart::LoraSettings lora;
  lora.patterns = bart::lora_patterns_from_short_names(kSeedModules);
  lora.r = r;
  lora.lora_alpha = 16;
  return lora;
}

std::set<std::string> adapted_layers(const torch::nn::Module& model) {
  std::set<std::string> names;
  for (const auto& [name, layer] : increlora::named_svd_linears(model)) names.insert(name);
  return names;
}

// Every name `initialized` reports must be an adapter tensor, except the names in `others`.
void check_only_adapters_fresh(const bart::PretrainedLoad& load, const std::set<std::string>& others = {}) {
  for (const auto& n : load.initialized) {
    INFO("left as initialized: " << n);
    CHECK((n.find("lora_") != std::string::npos || others.count(n) == 1));
  }
}

// Six projections per encoder layer, ten per decoder layer (self- and cross-attention, fc1, fc2).
int64_t adaptable_layers(const bart::BartConfig& c) { return 6 * c.encoder_layers + 10 * c.decoder_layers; }

void copy_file(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  std::ofstream out(to, std::ios::binary);
  out << in.rdbuf();
}

}  // namespace

TEST_CASE("BartModel equals transformers' BartModel on padded batches", "[bart][reference]") {
  const std::string variant = GENERATE("gelu", "relu");
  // r = 0 (plain Linear layers) and r = 1 on all six module kinds: λ = 0, so ΔW = 0 and the output is the same.
  const int64_t r = GENERATE(0, 1);
  INFO("configuration " << variant << ", lora r = " << r);
  const auto ref = reference(variant);
  const auto config = config_of(variant);
  bart::BartModel model(config, all_seed_modules(r));
  const auto load = bart::load_pretrained(*model, reference_dir() + "/" + variant);
  check_only_adapters_fresh(load);
  // The generation checkpoint's final_logits_bias has no place in the bare model.
  CHECK(load.ignored == std::vector<std::string>{"final_logits_bias"});
  if (r > 0) {
    CHECK(static_cast<int64_t>(adapted_layers(*model).size()) == adaptable_layers(config));
    for (const auto& [name, layer] : increlora::named_svd_linears(*model)) {
      INFO(name);
      CHECK(layer->delta_weight().abs().max().item<double>() == 0.0);
    }
  } else {
    CHECK(adapted_layers(*model).empty());
  }
  model->eval();
  torch::NoGradGuard no_grad;
  const auto ids = ref.tensor("input_ids"), mask = ref.tensor("attention_mask");
  const auto decoder_mask = ref.tensor("decoder_attention_mask");
  REQUIRE(mask.sum().item<int64_t>() < mask.numel());  // the batches do hold padding
  REQUIRE(decoder_mask.sum().item<int64_t>() < decoder_mask.numel());
  CHECK_ALLCLOSE(model->encode(ids, mask), ref.tensor("encoder_last_hidden_state"), 0.0, 1e-4);
  CHECK_ALLCLOSE(model(ids, mask, ref.tensor("decoder_input_ids"), decoder_mask), ref.tensor("last_hidden_state"), 0.0,
                 1e-4);
}

TEST_CASE("BartForConditionalGeneration gives transformers' logits with the tied head and final_logits_bias",
          "[bart][reference]") {
  const std::string variant = GENERATE("gelu", "relu");
  const int64_t r = GENERATE(0, 1);
  INFO("configuration " << variant << ", lora r = " << r);
  const auto ref = reference(variant);
  bart::BartForConditionalGeneration model(config_of(variant), all_seed_modules(r));
  const auto load = bart::load_pretrained(*model, reference_dir() + "/" + variant);
  check_only_adapters_fresh(load);
  CHECK(load.ignored.empty());
  CHECK(model->head_prefixes().empty());  // under LoRA nothing else trains in full
  // The tied embedding is one tensor, listed once.
  int64_t embeddings = 0;
  for (const auto& p : model->named_parameters()) {
    CHECK(p.key().find("embed_tokens") == std::string::npos);
    CHECK(p.key().find("lm_head") == std::string::npos);
    embeddings += p.key() == "model.shared.weight";
  }
  CHECK(embeddings == 1);
  CHECK(model->model->encoder->embed_tokens.get() == model->model->shared.get());
  CHECK(model->lm_head_weight().is_same(model->model->shared->weight));
  CHECK(model->final_logits_bias.abs().max().item<double>() > 0.0);  // read from the file
  model->eval();
  torch::NoGradGuard no_grad;
  const auto logits = model(ref.tensor("input_ids"), ref.tensor("attention_mask"), ref.tensor("decoder_input_ids"),
                            ref.tensor("decoder_attention_mask"));
  CHECK(logits.sizes() == torch::IntArrayRef({3, 10, 300}));
  CHECK_ALLCLOSE(logits, ref.tensor("logits"), 0.0, 1e-4);
}

TEST_CASE("shift_tokens_right builds transformers' decoder inputs from labels", "[bart]") {
  const auto ref = reference("gelu");
  CHECK(torch::equal(bart::shift_tokens_right(ref.tensor("labels"), 1, 2), ref.tensor("decoder_input_ids")));
  const auto labels = torch::tensor({5, 6, -100, -100}, torch::kLong).view({1, 4});
  CHECK(torch::equal(bart::shift_tokens_right(labels, 1, 2), torch::tensor({2, 5, 6, 1}, torch::kLong).view({1, 4})));
  CHECK(torch::equal(labels, torch::tensor({5, 6, -100, -100}, torch::kLong).view({1, 4})));  // not modified
  CHECK_THROWS_WITH(bart::shift_tokens_right(torch::zeros({4}, torch::kLong), 1, 2),
                    HasSubstring("labels must be an int64 tensor [batch, length]"));
}

TEST_CASE("BART checkpoints load with or without the model prefix and with the tied embedding stored several times",
          "[bart][reference]") {
  const auto gelu = reference("gelu");
  const auto config = config_of("gelu");
  torch::NoGradGuard no_grad;
  const auto ids = gelu.tensor("input_ids"), mask = gelu.tensor("attention_mask");
  const auto decoder_ids = gelu.tensor("decoder_input_ids"), decoder_mask = gelu.tensor("decoder_attention_mask");

  SECTION("a bare BartModel checkpoint (no prefix, no final_logits_bias)") {
    bart::BartModel base(config);
    const auto load = bart::load_pretrained(*base, reference_dir() + "/gelu_bare");
    CHECK(load.initialized.empty());
    CHECK(load.ignored.empty());
    base->eval();
    CHECK_ALLCLOSE(base(ids, mask, decoder_ids, decoder_mask), gelu.tensor("last_hidden_state"), 0.0, 1e-4);

    // Into the generation model: final_logits_bias is optional and stays zero.
    bart::BartForConditionalGeneration lm(config);
    lm->final_logits_bias.fill_(3.0);
    const auto lm_load = bart::load_pretrained(*lm, reference_dir() + "/gelu_bare");
    CHECK(lm_load.initialized == std::vector<std::string>{"final_logits_bias"});
    CHECK(lm->final_logits_bias.abs().max().item<double>() == 0.0);
    lm->eval();
    const auto expected = torch::linear(gelu.tensor("last_hidden_state"), lm->model->shared->weight);
    CHECK_ALLCLOSE(lm(ids, mask, decoder_ids, decoder_mask), expected, 0.0, 1e-4);
  }

  SECTION("four copies of the embedding and a stray head tensor") {
    const auto relu = reference("relu");
    bart::BartForConditionalGeneration lm(config_of("relu"));
    const auto load = bart::load_pretrained(*lm, reference_dir() + "/relu_copies");
    CHECK(load.initialized.empty());
    CHECK(load.ignored == std::vector<std::string>{"model.classification_head.dense.weight"});
    lm->eval();
    const auto logits = lm(relu.tensor("input_ids"), relu.tensor("attention_mask"), relu.tensor("decoder_input_ids"),
                           relu.tensor("decoder_attention_mask"));
    CHECK_ALLCLOSE(logits, relu.tensor("logits"), 0.0, 1e-4);

    // tie_word_embeddings false: the head and the encoder's and decoder's embed_tokens are tensors of their own,
    // each read under its own name.
    auto untied_config = config_of("relu");
    untied_config.tie_word_embeddings = false;
    bart::BartForConditionalGeneration untied(untied_config);
    std::set<std::string> names;
    for (const auto& p : untied->named_parameters()) names.insert(p.key());
    CHECK(names.count("lm_head.weight") == 1);
    CHECK(names.count("model.encoder.embed_tokens.weight") == 1);
    CHECK(names.count("model.decoder.embed_tokens.weight") == 1);
    CHECK(bart::load_pretrained(*untied, reference_dir() + "/relu_copies").ignored ==
          std::vector<std::string>{"model.classification_head.dense.weight"});
    untied->eval();
    CHECK_FALSE(untied->lm_head_weight().is_same(untied->model->shared->weight));
    CHECK_ALLCLOSE(untied(relu.tensor("input_ids"), relu.tensor("attention_mask"), relu.tensor("decoder_input_ids"),
                          relu.tensor("decoder_attention_mask")),
                   relu.tensor("logits"), 0.0, 1e-4);
  }

  SECTION("the embedding stored only as the decoder's embed_tokens") {
    const increlora::SafetensorsFile file(reference_dir() + "/gelu/model.safetensors");
    std::vector<std::pair<std::string, torch::Tensor>> tensors;
    for (const auto& n : file.names()) {
      if (n == "model.shared.weight") {
        tensors.emplace_back("model.decoder.embed_tokens.weight", file.tensor(n));
      } else {
        tensors.emplace_back(n, file.tensor(n));
      }
    }
    increlora::test::TempDir dir;
    increlora::save_safetensors(dir.file("model.safetensors"), tensors);
    bart::BartForConditionalGeneration lm(config);
    const auto load = bart::load_pretrained(*lm, dir.path());
    CHECK(load.initialized.empty());
    CHECK(load.ignored.empty());
    lm->eval();
    CHECK_ALLCLOSE(lm(ids, mask, decoder_ids, decoder_mask), gelu.tensor("logits"), 0.0, 1e-4);
  }
}

TEST_CASE("The BART incremental decoder gives the full forward's logits at every step and after a reorder",
          "[bart][generation]") {
  const std::string variant = GENERATE("gelu", "relu");
  const std::string device_name = GENERATE(from_range(increlora::test::devices()));
  INFO("configuration " << variant << " on " << device_name);
  const torch::Device device(device_name);
  const auto ref = reference(variant);
  // With adapters of nonzero ΔW (trained-like), the cached path must run them as the full forward does.
  bart::BartForConditionalGeneration model(config_of(variant), all_seed_modules(2));
  bart::load_pretrained(*model, reference_dir() + "/" + variant);
  torch::manual_seed(3);
  for (const auto& [name, layer] : increlora::named_svd_linears(*model)) {
    const auto& o = layer->options();
    layer->assign(torch::randn({o.out_features(), 2}) * 0.3, torch::randn({2}) * 0.05,
                  torch::randn({2, o.in_features()}) * 0.3);
  }
  model->to(device);
  model->eval();
  torch::NoGradGuard no_grad;
  const auto ids = ref.tensor("input_ids"), mask = ref.tensor("attention_mask");
  const auto decoder_ids = ref.tensor("decoder_input_ids");
  const int64_t copies = 2, tgt = decoder_ids.size(1);
  // The teacher-forced forward over every position (no decoder padding: a generated prefix has none), each
  // example's rows repeated `copies` times as the decoder holds them.
  const auto full =
      model(ids.to(device), mask.to(device), decoder_ids.to(device)).to(torch::kCPU).repeat_interleave(copies, 0);
  const auto tokens = decoder_ids.repeat_interleave(copies, 0);

  auto decoder = model->start_decoding(ids, mask, copies);
  REQUIRE(decoder->rows() == 3 * copies);
  const int64_t before_reorder = 4;
  for (int64_t t = 0; t < before_reorder; ++t) {
    INFO("step " << t);
    const auto logits = decoder->step(tokens.select(1, t));
    CHECK(logits.scalar_type() == torch::kFloat);
    CHECK(logits.device().type() == device.type());
    CHECK_ALLCLOSE(logits, full.select(1, t), 0.0, 1e-4);
  }
  // Beam search keeps rows 3 (twice), 0 and 5: the caches and the encoder mask follow.
  const auto index = torch::tensor({3, 3, 0, 5}, torch::kLong);
  decoder->reorder(index);
  REQUIRE(decoder->rows() == 4);
  const auto kept_full = full.index_select(0, index);
  const auto kept_tokens = tokens.index_select(0, index);
  for (int64_t t = before_reorder; t < tgt; ++t) {
    INFO("step " << t << " after the reorder");
    CHECK_ALLCLOSE(decoder->step(kept_tokens.select(1, t)), kept_full.select(1, t), 0.0, 1e-4);
  }
  CHECK_THROWS_WITH(decoder->step(torch::zeros({3}, torch::kLong)), HasSubstring("one integer token per row ([4])"));
  CHECK_THROWS_WITH(decoder->reorder(torch::tensor({4}, torch::kLong)), HasSubstring("rows in [0, 4)"));
}

TEST_CASE("The BART incremental decoder without adapters agrees with transformers' logits on real positions",
          "[bart][generation][reference]") {
  const auto ref = reference("gelu");
  bart::BartForConditionalGeneration model(config_of("gelu"));
  bart::load_pretrained(*model, reference_dir() + "/gelu");
  model->eval();
  const auto decoder_ids = ref.tensor("decoder_input_ids"), decoder_mask = ref.tensor("decoder_attention_mask");
  const auto expected = ref.tensor("logits");
  auto decoder = model->start_decoding(ref.tensor("input_ids"), ref.tensor("attention_mask"));
  for (int64_t t = 0; t < decoder_ids.size(1); ++t) {
    const auto logits = decoder->step(decoder_ids.select(1, t));
    for (int64_t b = 0; b < 3; ++b) {
      if (decoder_mask[b][t].item<int64_t>() == 0) continue;  // transformers masked this prefix's padding
      INFO("row " << b << ", position " << t);
      CHECK_ALLCLOSE(logits[b], expected[b][t], 0.0, 1e-4);
    }
  }
  // Decoding needs eval mode: dropout would make the steps differ from the forward.
  model->train();
  CHECK_THROWS_WITH(decoder->step(decoder_ids.select(1, 0)), HasSubstring("call model->eval()"));
  CHECK_THROWS_WITH(model->start_decoding(ref.tensor("input_ids"), {}), HasSubstring("call model->eval()"));
  model->eval();
  CHECK_THROWS_WITH(model->start_decoding(ref.tensor("input_ids"), {}, 0), HasSubstring("copies must be >= 1"));
}

TEST_CASE("The seed's short module names adapt every matching BART projection and nothing else", "[bart]") {
  const auto config = config_of("relu");  // 3 encoder layers, 1 decoder layer
  bart::BartForConditionalGeneration model(config, all_seed_modules(1));
  std::set<std::string> expected;
  for (int64_t l = 0; l < config.encoder_layers; ++l) {
    const auto p = "model.encoder.layers." + std::to_string(l) + ".";
    for (const std::string m :
         {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.out_proj", "fc1", "fc2"}) {
      expected.insert(p + m);
    }
  }
  for (int64_t l = 0; l < config.decoder_layers; ++l) {
    const auto p = "model.decoder.layers." + std::to_string(l) + ".";
    for (const std::string a : {"self_attn.", "encoder_attn."}) {
      for (const std::string m : {"q_proj", "k_proj", "v_proj", "out_proj"}) expected.insert(p + a + m);
    }
    expected.insert(p + "fc1");
    expected.insert(p + "fc2");
  }
  CHECK(adapted_layers(*model) == expected);
  CHECK(expected.size() == 28);
  for (const auto& p : model->named_parameters()) {
    if (p.key().find("shared") != std::string::npos || p.key().find("layer_norm") != std::string::npos ||
        p.key().find("embed_positions") != std::string::npos) {
      CHECK(p.key().find("lora_") == std::string::npos);
    }
  }
  // r = 0: no adapter tensors at all, though the patterns match all 28 layers.
  bart::BartForConditionalGeneration plain(config, all_seed_modules(0));
  for (const auto& p : plain->named_parameters()) CHECK(p.key().find("lora_") == std::string::npos);
  for (const auto& b : plain->named_buffers()) CHECK(b.key().find("lora_") == std::string::npos);
  CHECK(adapted_layers(*plain).empty());
  CHECK(increlora::select_modules(*plain, all_seed_modules(0).patterns).size() == 28);

  // The groups: "encoder_attn" is the decoder's cross-attention, "self_attn" every self-attention.
  bart::LoraSettings cross;
  cross.patterns = bart::lora_patterns_from_short_names({"encoder_attn"});
  cross.r = 1;
  bart::BartModel cross_only(config, cross);
  CHECK(adapted_layers(*cross_only) ==
        std::set<std::string>{"decoder.layers.0.encoder_attn.q_proj", "decoder.layers.0.encoder_attn.k_proj",
                              "decoder.layers.0.encoder_attn.v_proj", "decoder.layers.0.encoder_attn.out_proj"});
  bart::LoraSettings self;
  self.patterns = bart::lora_patterns_from_short_names({"self_attn"});
  self.r = 1;
  bart::BartModel self_only(config, self);
  CHECK(adapted_layers(*self_only).size() == 4 * 4);
  for (const auto& n : adapted_layers(*self_only)) CHECK(n.find(".self_attn.") != std::string::npos);
  // Qualified names and regular expressions pass through.
  CHECK(bart::lora_patterns_from_short_names({"decoder.layers.0.fc1", "re:.*q_proj"}) ==
        std::vector<std::string>{"decoder.layers.0.fc1", "re:.*q_proj"});
  bart::LoraSettings one;
  one.patterns = bart::lora_patterns_from_short_names({"decoder.layers.0.fc1", "encoder_attn.v_proj"});
  one.r = 1;
  bart::BartModel two(config, one);
  CHECK(adapted_layers(*two) == std::set<std::string>{"decoder.layers.0.fc1", "decoder.layers.0.encoder_attn.v_proj"});
}

TEST_CASE("With the base frozen a BART training step moves the adapters alone and lowers the loss",
          "[bart][training]") {
  const std::string variant = GENERATE("gelu", "relu");
  INFO("configuration " << variant);
  const auto ref = reference(variant);
  const auto config = config_of(variant);
  auto lora = all_seed_modules(2);
  lora.lora_dropout = 0.1;
  torch::manual_seed(5);  // the adapters' fresh P and Q
  bart::BartForConditionalGeneration model(config, lora);
  bart::load_pretrained(*model, reference_dir() + "/" + variant);
  increlora::mark_only_lora_as_trainable(*model);
  const auto shared_before = model->model->shared->weight.clone();
  const auto fc1_before = model->model->decoder->layer_list[0]->fc1->weight.clone();
  model->train();
  const auto labels = ref.tensor("labels");
  auto loss_of = [&] {
    const auto logits = model(ref.tensor("input_ids"), ref.tensor("attention_mask"),
                              bart::shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id),
                              ref.tensor("decoder_attention_mask"));
    namespace F = torch::nn::functional;
    return F::cross_entropy(logits.view({-1, config.vocab_size}), labels.view({-1}),
                            F::CrossEntropyFuncOptions().ignore_index(-100));
  };
  std::vector<torch::Tensor> trainable;
  for (const auto& p : model->parameters()) {
    if (p.requires_grad()) trainable.push_back(p);
  }
  // Training mode (dropout in the model and the adapters): the gradient reaches the adapters alone.
  torch::manual_seed(11);
  loss_of().backward();
  int64_t adapter_tensors = 0;
  bool any_lambda_gradient = false;
  for (const auto& p : model->named_parameters()) {
    INFO(p.key());
    if (increlora::is_adapter_tensor(p.key())) {
      ++adapter_tensors;
      REQUIRE(p.value().grad().defined());
      CHECK(torch::isfinite(p.value().grad()).all().item<bool>());
      // λ = 0 at the start: P and Q get no gradient yet, λ does.
      if (p.key().find("lora_E") != std::string::npos) {
        any_lambda_gradient = any_lambda_gradient || p.value().grad().abs().max().item<double>() > 0.0;
      }
    } else {
      CHECK_FALSE(p.value().requires_grad());
      CHECK_FALSE(p.value().grad().defined());
    }
  }
  CHECK(adapter_tensors == adaptable_layers(config) * 3);
  CHECK(any_lambda_gradient);

  // One optimizer step on the loss without dropout (so that its gradient is the measured loss's) lowers it.
  torch::optim::AdamW optimizer(trainable, torch::optim::AdamWOptions(1e-3).weight_decay(0.0));
  optimizer.zero_grad();
  model->eval();
  const auto loss = loss_of();
  loss.backward();
  optimizer.step();
  torch::NoGradGuard no_grad;
  const double before = loss.item<double>(), after = loss_of().item<double>();
  INFO("loss before " << before << ", after one step " << after);
  CHECK(after < before - 1e-5);
  double largest_delta = 0.0;
  for (const auto& [name, layer] : increlora::named_svd_linears(*model)) {
    largest_delta = std::max(largest_delta, layer->delta_weight().abs().max().item<double>());
  }
  CHECK(largest_delta > 0.0);  // the adapters moved, the base did not:
  CHECK(torch::equal(model->model->shared->weight, shared_before));
  CHECK(torch::equal(model->model->decoder->layer_list[0]->fc1->weight, fc1_before));
}

TEST_CASE("BART config fields parse as transformers reads them", "[bart][config]") {
  const auto gelu = config_of("gelu");
  CHECK(gelu.model_type == "bart");
  CHECK(gelu.vocab_size == 300);
  CHECK(gelu.d_model == 32);
  CHECK(gelu.scale_embedding);
  CHECK(gelu.embed_scale() == Approx(std::sqrt(32.0)));
  CHECK(gelu.activation_function == "gelu");
  CHECK_FALSE(gelu.forced_bos_token_id);  // transformers 5 writes no forced_bos_token_id into config.json
  CHECK(gelu.tie_word_embeddings);
  const auto relu = config_of("relu");
  CHECK(relu.encoder_layers == 3);
  CHECK(relu.decoder_layers == 1);
  CHECK(relu.decoder_attention_heads == 2);
  CHECK(relu.decoder_ffn_dim == 29);
  CHECK(relu.embed_scale() == 1.0);
  CHECK(bart::is_bart_config(reference_dir() + "/gelu/config.json"));
  {
    increlora::test::TempDir dir;
    std::ofstream(dir.file("config.json")) << R"({"model_type": "mbart", "d_model": 32})";
    CHECK_FALSE(bart::is_bart_config(dir.file("config.json")));
  }

  const auto defaults = bart::BartConfig::from_json_string(R"({"model_type": "bart"})");
  CHECK(defaults.d_model == 1024);
  CHECK(defaults.pad_token_id == 1);
  CHECK(defaults.decoder_start_token_id == 2);
  CHECK(defaults.forced_eos_token_id == std::optional<int64_t>(2));
  CHECK_FALSE(
      bart::BartConfig::from_json_string(R"({"model_type": "bart", "forced_eos_token_id": null})").forced_eos_token_id);

  // facebook/bart-large-cnn's config.json (its fields as published, fairseq-era ones included).
  const auto cnn = bart::BartConfig::from_json_string(R"({
    "_num_labels": 3, "activation_dropout": 0.0, "activation_function": "gelu", "add_bias_logits": false,
    "add_final_layer_norm": false, "architectures": ["BartForConditionalGeneration"], "attention_dropout": 0.0,
    "bos_token_id": 0, "classif_dropout": 0.0, "classifier_dropout": 0.0, "d_model": 1024,
    "decoder_attention_heads": 16, "decoder_ffn_dim": 4096, "decoder_layerdrop": 0.0, "decoder_layers": 12, "decoder_start_token_id": 2,
    "dropout": 0.1, "early_stopping": true, "encoder_attention_heads": 16, "encoder_ffn_dim": 4096,
    "encoder_layerdrop": 0.0, "encoder_layers": 12, "eos_token_id": 2, "force_bos_token_to_be_generated": true,
    "forced_bos_token_id": 0, "forced_eos_token_id": 2, "gradient_checkpointing": false,
    "id2label": {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}, "init_std": 0.02, "is_encoder_decoder": true,
    "label2id": {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}, "length_penalty": 2.0, "max_length": 142,
    "max_position_embeddings": 1024, "min_length": 56, "model_type": "bart", "no_repeat_ngram_size": 3,
    "normalize_before": false, "num_beams": 4, "num_hidden_layers": 12, "output_past": true, "pad_token_id": 1,
    "prefix": " ", "scale_embedding": false, "task_specific_params": {"summarization": {"early_stopping": true,
    "length_penalty": 2.0, "max_length": 142, "min_length": 56, "no_repeat_ngram_size": 3, "num_beams": 4}},
    "transformers_version": "4.7.0.dev0", "use_cache": true, "vocab_size": 50264})");
  CHECK(cnn.vocab_size == 50264);
  CHECK(cnn.forced_bos_token_id == std::optional<int64_t>(0));
  CHECK(cnn.encoder_layers == 12);
  // eos_token_id as a list of one id (transformers allows lists).
  CHECK(bart::BartConfig::from_json_string(R"({"model_type": "bart", "eos_token_id": [2]})").eos_token_id == 2);
}

TEST_CASE("BART config and checkpoint errors name the field and what to change", "[bart][errors]") {
  auto parse = [](const std::string& fields) {
    return bart::BartConfig::from_json_string(R"({"model_type": "bart")" + fields + "}", "cfg.json");
  };
  CHECK_THROWS_WITH(bart::BartConfig::from_json_string(R"({"model_type": "mbart"})", "cfg.json"),
                    HasSubstring("cfg.json: model_type \"mbart\" is not BART"));
  CHECK_THROWS_WITH(parse(R"(, "normalize_before": true)"), HasSubstring("cfg.json: normalize_before is true"));
  CHECK_THROWS_WITH(parse(R"(, "add_final_layer_norm": true)"), HasSubstring("add_final_layer_norm is true"));
  CHECK_THROWS_WITH(parse(R"(, "static_position_embeddings": true)"), HasSubstring("sinusoidal"));
  CHECK_THROWS_WITH(parse(R"(, "extra_pos_embeddings": 0)"), HasSubstring("extra_pos_embeddings is 0"));
  CHECK_THROWS_WITH(parse(R"(, "d_model": "big")"), HasSubstring("cfg.json: the field \"d_model\" has the wrong type"));
  CHECK_THROWS_WITH(parse(R"(, "scale_embedding": 1)"),
                    HasSubstring("the field \"scale_embedding\" has the wrong type"));
  CHECK_THROWS_WITH(parse(R"(, "eos_token_id": [2, 3])"),
                    HasSubstring("the field \"eos_token_id\" has the wrong type"));
  CHECK_THROWS_WITH(parse(R"(, "activation_function": "mish")"), HasSubstring("activation_function \"mish\""));
  CHECK_THROWS_WITH(parse(R"(, "d_model": 30, "encoder_attention_heads": 5, "decoder_attention_heads": 4)"),
                    HasSubstring("must be a multiple of decoder_attention_heads"));
  CHECK_THROWS_WITH(parse(R"(, "vocab_size": 10, "pad_token_id": 12)"),
                    HasSubstring("pad_token_id 12 is not a token id"));
  CHECK_THROWS_WITH(parse(R"(, "dropout": 1.5)"), HasSubstring("dropout is 1.5"));
  CHECK_THROWS_WITH(bart::BartConfig::from_json_string("[1]", "cfg.json"), HasSubstring("must hold a JSON object"));
  CHECK_THROWS_WITH(bart::BartConfig::from_json_file("/nonexistent/config.json"),
                    HasSubstring("pass a Hugging Face checkpoint directory"));

  // A checkpoint of another shape: missing layers are listed, and nothing is copied before the check.
  auto deeper = config_of("gelu");
  deeper.decoder_layers = 3;
  bart::BartForConditionalGeneration model(deeper);
  const auto before = model->model->shared->weight.clone();
  CHECK_THROWS_WITH(bart::load_pretrained(*model, reference_dir() + "/gelu"),
                    HasSubstring("lacks encoder/decoder tensors the model needs: model.decoder.layers.2."));
  CHECK(torch::equal(model->model->shared->weight, before));
  auto untied = config_of("gelu");
  untied.tie_word_embeddings = false;
  bart::BartForConditionalGeneration own_head(untied);
  CHECK_THROWS_WITH(bart::load_pretrained(*own_head, reference_dir() + "/gelu"),
                    HasSubstring("has no lm_head.weight: set tie_word_embeddings to true"));
  auto smaller = config_of("gelu");
  smaller.vocab_size = 100;
  bart::BartModel small(smaller);
  CHECK_THROWS_WITH(bart::load_pretrained(*small, reference_dir() + "/gelu"), HasSubstring("'model.shared.weight' of"));
  CHECK_THROWS_WITH(bart::load_pretrained(*small, reference_dir() + "/gelu"),
                    HasSubstring("has shape [300, 32] but the model's 'shared.weight' has shape [100, 32]"));
  CHECK_THROWS_WITH(bart::load_pretrained(*small, "/nonexistent"), HasSubstring("does not exist"));
  {
    increlora::test::TempDir dir;
    std::ofstream(dir.file("pytorch_model.bin")) << "not a pickle";
    CHECK_THROWS_WITH(bart::load_pretrained(*small, dir.path()), HasSubstring("pickles can run code"));
    std::ofstream(dir.file("model.safetensors.index.json")) << "{}";
    CHECK_THROWS_WITH(bart::load_pretrained(*small, dir.path()), HasSubstring("sharded checkpoint"));
  }
  torch::nn::Linear other(2, 2);
  CHECK_THROWS_WITH(bart::load_pretrained(*other, reference_dir() + "/gelu"), HasSubstring("has no shared.weight"));

  // Inputs.
  bart::BartForConditionalGeneration lm(config_of("gelu"));
  lm->eval();
  torch::NoGradGuard no_grad;
  CHECK_THROWS_WITH(lm(torch::zeros({2, 3}, torch::kInt)), HasSubstring("input_ids must be an int64 tensor"));
  CHECK_THROWS_WITH(lm(torch::zeros({2, 3}, torch::kLong), torch::ones({2, 4}, torch::kLong)),
                    HasSubstring("attention_mask [2, 4] must have the shape of its ids [2, 3]"));
  CHECK_THROWS_WITH(lm(torch::zeros({1, 65}, torch::kLong)), HasSubstring("exceeds max_position_embeddings (64)"));
  auto decoder = lm->start_decoding(torch::zeros({1, 3}, torch::kLong), {});
  CHECK_THROWS_WITH(decoder->step(torch::tensor({300}, torch::kLong)), HasSubstring("outside [0, vocab_size = 300)"));
}
