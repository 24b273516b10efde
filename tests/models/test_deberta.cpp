// The DeBERTa-v2/v3 encoder equals Hugging Face transformers on the same checkpoints and inputs (fp32, atol 1e-4):
// DebertaV2Model's hidden states, DebertaV2ForSequenceClassification's logits and DebertaV2ForQuestionAnswering's
// start/end logits, for small random checkpoints in the v3 settings (log buckets, shared attention key, no
// absolute positions), a v2-style one (clamped relative positions, separate position projections, absolute
// positions, token types, embed_proj) and one without relative attention; batches hold padded rows. Adapters
// attach where the seed's short names say, start as a no-op and train alone with a frozen base; bad configs and
// checkpoints throw naming what to change.
#include "support.hpp"
#include "temp_dir.hpp"

#include <increlora/models/deberta.hpp>

#include <increlora/safetensors.hpp>

#include <algorithm>
#include <filesystem>
#include <set>

namespace deberta = increlora::deberta;

namespace {

std::string reference_dir() { return INCRELORA_DEBERTA_REFERENCE_DIR; }

increlora::SafetensorsFile reference(const std::string& name) {
  const auto path = reference_dir() + "/" + name;
  INFO("reference file " << path
                         << " (written by the ctest fixture deberta_reference: run ctest, or "
                            "tests/models/make_deberta_reference.py --out "
                         << reference_dir() << ")");
  REQUIRE(std::filesystem::exists(path));
  return increlora::SafetensorsFile(path);
}

deberta::DebertaConfig config_of(const std::string& variant, const std::string& model = "classifier") {
  return deberta::DebertaConfig::from_json_file(reference_dir() + "/" + variant + "/" + model + "/config.json");
}

deberta::LoraSettings all_seed_modules(int64_t r) {
  deberta::LoraSettings lora;
  lora.patterns = deberta::lora_patterns_from_short_names(
      {"query", "key", "value", "intermediate", "layer.output", "attention.output"});
  lora.r = r;
  lora.lora_alpha = 16;
  return lora;
}

// Every name `initialized` reports must be an adapter tensor, except the names in `heads`.
void check_only_adapters_fresh(const deberta::PretrainedLoad& load, const std::set<std::string>& heads = {}) {
  for (const auto& n : load.initialized) {
    INFO("left as initialized: " << n);
    CHECK((n.find("lora_") != std::string::npos || heads.count(n) == 1));
  }
}

std::set<std::string> adapted_layers(const torch::nn::Module& model) {
  std::set<std::string> names;
  for (const auto& [name, layer] : increlora::named_svd_linears(model)) names.insert(name);
  return names;
}

}  // namespace

TEST_CASE("DebertaModel equals transformers' DebertaV2Model on padded batches", "[deberta][encoder][reference]") {
  const std::string variant = GENERATE("v3", "v2", "norel");
  // r = 0 (plain Linear layers) and r = 1 on the seed's modules: λ = 0, so ΔW = 0 and the output is the same.
  const int64_t r = GENERATE(0, 1);
  INFO("configuration " << variant << ", lora r = " << r);
  const auto ref = reference(variant + "/outputs.safetensors");
  const auto config = config_of(variant);
  deberta::DebertaModel model(config, all_seed_modules(r));
  const auto load = deberta::load_pretrained(*model, reference_dir() + "/" + variant + "/classifier");
  check_only_adapters_fresh(load);
  // The classifier checkpoint's head has no place in the bare encoder.
  CHECK(std::count_if(load.ignored.begin(), load.ignored.end(), [](const std::string& n) {
          return n.rfind("classifier.", 0) == 0 || n.rfind("pooler.", 0) == 0;
        }) == 4);
  if (r > 0) {
    CHECK(adapted_layers(*model).size() == 12);
    for (const auto& [name, layer] : increlora::named_svd_linears(*model)) {
      INFO(name);
      CHECK(layer->delta_weight().abs().max().item<double>() == 0.0);
    }
  }
  model->eval();
  torch::NoGradGuard no_grad;
  const auto mask = ref.tensor("attention_mask");
  REQUIRE(mask.sum().item<int64_t>() < mask.numel());  // the batch does hold padding
  const auto out = model(ref.tensor("input_ids"), mask, ref.tensor("token_type_ids"));
  CHECK_ALLCLOSE(out, ref.tensor("last_hidden_state"), 0.0, 1e-4);
}

TEST_CASE("DebertaSequenceClassifier gives DebertaV2ForSequenceClassification's logits",
          "[deberta][encoder][reference]") {
  const std::string variant = GENERATE("v3", "v2", "norel");
  const int64_t r = GENERATE(0, 1);
  INFO("configuration " << variant << ", lora r = " << r);
  const auto ref = reference(variant + "/outputs.safetensors");
  const auto config = config_of(variant);
  const auto expected = ref.tensor("logits");
  // v3: 3 classes, v2: regression (num_labels 1), norel: 2 classes.
  deberta::DebertaSequenceClassifier model(config, expected.size(1), all_seed_modules(r));
  const auto load = deberta::load_pretrained(*model, reference_dir() + "/" + variant + "/classifier");
  check_only_adapters_fresh(load);  // the head was in the file
  CHECK(model->head_prefixes() == std::vector<std::string>{"classifier.", "pooler."});
  model->eval();
  torch::NoGradGuard no_grad;
  const auto got = model(ref.tensor("input_ids"), ref.tensor("attention_mask"), ref.tensor("token_type_ids"));
  CHECK_ALLCLOSE(got, expected, 0.0, 1e-4);
}

TEST_CASE("DebertaQuestionAnswering gives DebertaV2ForQuestionAnswering's start and end logits",
          "[deberta][encoder][reference]") {
  const std::string variant = GENERATE("v3", "v2", "norel");
  const int64_t r = GENERATE(0, 1);
  INFO("configuration " << variant << ", lora r = " << r);
  const auto ref = reference(variant + "/outputs.safetensors");
  deberta::DebertaQuestionAnswering model(config_of(variant, "qa"), all_seed_modules(r));
  const auto load = deberta::load_pretrained(*model, reference_dir() + "/" + variant + "/qa");
  check_only_adapters_fresh(load);  // qa_outputs was in the file
  CHECK(model->head_prefixes() == std::vector<std::string>{"qa_outputs."});
  model->eval();
  torch::NoGradGuard no_grad;
  const auto [start, end] = model(ref.tensor("input_ids"), ref.tensor("attention_mask"), ref.tensor("token_type_ids"));
  CHECK_ALLCLOSE(start, ref.tensor("start_logits"), 0.0, 1e-4);
  CHECK_ALLCLOSE(end, ref.tensor("end_logits"), 0.0, 1e-4);
}

TEST_CASE(
    "A DeBERTa pretraining checkpoint loads into the task models with their heads fresh and its own "
    "heads ignored",
    "[deberta][encoder][reference]") {
  const auto dir = reference_dir() + "/v3/pretrained";
  const auto ref = reference("v3/outputs.safetensors");
  const auto config = config_of("v3", "pretrained");

  deberta::DebertaSequenceClassifier classifier(config, 2, all_seed_modules(1));
  const auto load = deberta::load_pretrained(*classifier, dir);
  const std::set<std::string> head = {"classifier.bias", "classifier.weight", "pooler.dense.bias",
                                      "pooler.dense.weight"};
  check_only_adapters_fresh(load, head);
  std::set<std::string> fresh_head;
  for (const auto& n : load.initialized) {
    if (n.find("lora_") == std::string::npos) fresh_head.insert(n);
  }
  CHECK(fresh_head == head);
  const std::set<std::string> ignored(load.ignored.begin(), load.ignored.end());
  CHECK(ignored.count("mask_predictions.dense.weight") == 1);
  CHECK(ignored.count("lm_predictions.lm_head.dense.weight") == 1);
  for (const auto& n : ignored) CHECK((n.rfind("lm_predictions.", 0) == 0 || n.rfind("mask_predictions.", 0) == 0));

  deberta::DebertaQuestionAnswering qa(config, deberta::LoraSettings{});
  const auto qa_load = deberta::load_pretrained(*qa, dir);
  CHECK(std::set<std::string>(qa_load.initialized.begin(), qa_load.initialized.end()) ==
        std::set<std::string>{"qa_outputs.bias", "qa_outputs.weight"});

  // The encoder inside the classifier is the checkpoint's: transformers' hidden states.
  classifier->eval();
  torch::NoGradGuard no_grad;
  const auto hidden =
      classifier->deberta(ref.tensor("input_ids"), ref.tensor("attention_mask"), ref.tensor("token_type_ids"));
  CHECK_ALLCLOSE(hidden, ref.tensor("last_hidden_state"), 0.0, 1e-4);
}

TEST_CASE("DeBERTa relative positions fall into transformers' log buckets", "[deberta][encoder]") {
  // position_buckets 16 (mid 8), max_relative_positions 64: |d| <= 8 is kept; beyond, the bucket is
  // sign(d) (8 + ceil(log(|d| / 8) / log(63 / 8) · 7)), worked out by hand here.
  const auto rel = deberta::relative_positions(48, 16, 64, torch::kCPU);
  REQUIRE(rel.sizes() == torch::IntArrayRef({48, 48}));
  CHECK(rel.scalar_type() == torch::kLong);
  auto at = [&](int64_t i, int64_t j) { return rel[i][j].item<int64_t>(); };
  CHECK(at(0, 0) == 0);
  CHECK(at(3, 0) == 3);
  CHECK(at(0, 3) == -3);
  CHECK(at(8, 0) == 8);
  CHECK(at(9, 0) == 9);    // 7 · log(9/8)/log(7.875) = 0.40 → 1
  CHECK(at(16, 0) == 11);  // 7 · log(2)/log(7.875) = 2.35 → 3
  CHECK(at(40, 0) == 14);  // 7 · log(5)/log(7.875) = 5.46 → 6
  CHECK(at(0, 40) == -14);
  CHECK(at(47, 0) == 15);  // 7 · log(5.875)/log(7.875) = 6.01 → 7
  // Without buckets: plain i − j.
  const auto plain = deberta::relative_positions(5, -1, 8, torch::kCPU);
  CHECK(plain[4][1].item<int64_t>() == 3);
  CHECK(plain[1][4].item<int64_t>() == -3);
}

TEST_CASE("The seed's short module names adapt DeBERTa's matching layers and nothing else", "[deberta][encoder]") {
  const auto v3 = config_of("v3");
  deberta::DebertaSequenceClassifier model(v3, 2, all_seed_modules(1));
  std::set<std::string> expected;
  for (const std::string l : {"0", "1"}) {
    const auto p = "deberta.encoder.layer." + l + ".";
    for (const std::string m : {"attention.self.query_proj", "attention.self.key_proj", "attention.self.value_proj",
                                "attention.output.dense", "intermediate.dense", "output.dense"}) {
      expected.insert(p + m);
    }
  }
  CHECK(adapted_layers(*model) == expected);
  for (const auto& p : model->named_parameters()) {
    if (p.key().rfind("pooler.", 0) == 0 || p.key().find("embeddings") != std::string::npos) {
      CHECK(p.key().find("lora_") == std::string::npos);
    }
  }
  // r = 0: no adapter tensors at all, though the patterns match.
  deberta::DebertaSequenceClassifier plain(v3, 2, all_seed_modules(0));
  for (const auto& p : plain->named_parameters()) CHECK(p.key().find("lora_") == std::string::npos);
  for (const auto& b : plain->named_buffers()) CHECK(b.key().find("lora_") == std::string::npos);
  CHECK(adapted_layers(*plain).empty());
  CHECK(increlora::select_modules(*plain, all_seed_modules(0).patterns).size() == 12);

  // "layer.output" is the layer's own output.dense, not attention.output.dense.
  deberta::LoraSettings only_output;
  only_output.patterns = deberta::lora_patterns_from_short_names({"layer.output"});
  only_output.r = 2;
  deberta::DebertaModel just(v3, only_output);
  CHECK(adapted_layers(*just) == std::set<std::string>{"encoder.layer.0.output.dense", "encoder.layer.1.output.dense"});

  // Without share_att_key, "key" / "query" leave the position projections alone; their own names pass through.
  const auto v2 = config_of("v2");
  deberta::LoraSettings pos;
  pos.patterns = deberta::lora_patterns_from_short_names({"key", "pos_key_proj", "embed_proj"});
  pos.r = 1;
  deberta::DebertaModel separate(v2, pos);
  CHECK(adapted_layers(*separate) ==
        std::set<std::string>{"embeddings.embed_proj", "encoder.layer.0.attention.self.key_proj",
                              "encoder.layer.0.attention.self.pos_key_proj", "encoder.layer.1.attention.self.key_proj",
                              "encoder.layer.1.attention.self.pos_key_proj"});
  CHECK(deberta::lora_patterns_from_short_names({"pooler.dense", "re:.*query_proj"}) ==
        std::vector<std::string>{"pooler.dense", "re:.*query_proj"});
}

TEST_CASE("With the base frozen a DeBERTa backward pass gives finite gradients to the adapter tensors only",
          "[deberta][encoder][training]") {
  const std::string variant = GENERATE("v3", "v2");
  INFO("configuration " << variant);
  const auto ref = reference(variant + "/outputs.safetensors");
  const auto expected = ref.tensor("logits");
  auto lora = all_seed_modules(2);
  lora.lora_dropout = 0.1;
  deberta::DebertaSequenceClassifier model(config_of(variant), expected.size(1), lora);
  deberta::load_pretrained(*model, reference_dir() + "/" + variant + "/classifier");
  increlora::mark_only_lora_as_trainable(*model);
  model->train();
  const auto logits = model(ref.tensor("input_ids"), ref.tensor("attention_mask"), ref.tensor("token_type_ids"));
  (logits - expected).pow(2).sum().backward();
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
  CHECK(adapter_tensors == 12 * 3);
  CHECK(any_lambda_gradient);
}

TEST_CASE("A DeBERTa classifier with trained adapters exports merged weights that load back as a plain model",
          "[deberta][encoder][export]") {
  const std::string variant = GENERATE("v3", "v2");
  INFO("configuration " << variant);
  const auto dir = reference_dir() + "/" + variant + "/classifier";
  const auto ref = reference(variant + "/outputs.safetensors");
  const auto config = config_of(variant);
  const int64_t labels = ref.tensor("logits").size(1);
  auto lora = all_seed_modules(2);
  lora.patterns.push_back("pos_key_proj");  // v2 only: the separate position projection
  lora.patterns.push_back("embed_proj");    // v2 only: a Linear without bias
  deberta::DebertaSequenceClassifier adapted(config, labels, lora);
  deberta::load_pretrained(*adapted, dir);
  // Trained adapters: random triplets, so that every adapted layer's ΔW is far from zero.
  torch::manual_seed(7);
  for (const auto& [name, layer] : increlora::named_svd_linears(*adapted)) {
    const auto& o = layer->options();
    layer->assign(torch::randn({o.out_features(), 2}) * 0.3, torch::randn({2}) * 0.05,
                  torch::randn({2, o.in_features()}) * 0.3);
  }
  adapted->eval();
  torch::NoGradGuard no_grad;
  const auto ids = ref.tensor("input_ids"), mask = ref.tensor("attention_mask"), types = ref.tensor("token_type_ids");
  const auto logits = adapted(ids, mask, types);
  REQUIRE(increlora::test::max_abs_diff(logits, ref.tensor("logits")) > 1e-2);  // the adapters do change it

  increlora::test::TempDir out;
  increlora::bert::save_merged_pretrained(*adapted, dir, out.path(),
                                          R"({"architectures": ["DebertaV2ForSequenceClassification"]})");
  deberta::DebertaSequenceClassifier plain(deberta::DebertaConfig::from_json_file(out.file("config.json")), labels);
  const auto load = deberta::load_pretrained(*plain, out.path());
  CHECK(load.initialized.empty());
  CHECK(load.ignored.empty());
  plain->eval();
  INFO("largest logit " << logits.abs().max().item<double>());
  CHECK_ALLCLOSE(plain(ids, mask, types), logits, 0.0, 1e-4);
}

TEST_CASE("DeBERTa config fields parse as transformers reads them", "[deberta][config]") {
  const auto v3 = config_of("v3");
  CHECK(v3.relative_attention);
  CHECK(v3.share_att_key);
  CHECK_FALSE(v3.position_biased_input);
  CHECK(v3.type_vocab_size == 0);
  CHECK(v3.position_buckets == 16);
  CHECK(v3.max_relative() == 64);  // max_relative_positions -1 → max_position_embeddings
  CHECK(v3.attention_span() == 16);
  CHECK(v3.has_c2p());
  CHECK(v3.has_p2c());
  CHECK(v3.normalizes_rel_embeddings());
  CHECK(v3.embedding_width() == 32);
  const auto v2 = config_of("v2");
  CHECK(v2.attention_span() == 8);
  CHECK(v2.embedding_width() == 24);
  CHECK(v2.cls_dropout == std::optional<double>(0.2));
  CHECK_FALSE(v2.normalizes_rel_embeddings());
  const auto norel = config_of("norel");
  CHECK_FALSE(norel.relative_attention);
  CHECK(norel.pos_att_type.size() == 2);

  const auto as_string = deberta::DebertaConfig::from_json_string(
      R"({"model_type": "deberta-v2", "pos_att_type": "P2C | c2p", "norm_rel_ebd": "layer_norm|none"})");
  CHECK(as_string.pos_att_type == std::vector<std::string>{"p2c", "c2p"});
  CHECK(as_string.normalizes_rel_embeddings());
  const auto defaults = deberta::DebertaConfig::from_json_string(R"({"model_type": "deberta-v2"})");
  CHECK(defaults.pos_att_type.empty());
  CHECK_FALSE(defaults.relative_attention);
  CHECK(defaults.layer_norm_eps == 1e-7);

  // microsoft/deberta-v3-base's config.json (its fields as published).
  const auto base = deberta::DebertaConfig::from_json_string(R"({
    "model_type": "deberta-v2", "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02, "intermediate_size": 3072,
    "max_position_embeddings": 512, "relative_attention": true, "position_buckets": 256,
    "norm_rel_ebd": "layer_norm", "share_att_key": true, "pos_att_type": "p2c|c2p", "layer_norm_eps": 1e-7,
    "max_relative_positions": -1, "position_biased_input": false, "num_attention_heads": 12,
    "num_hidden_layers": 12, "type_vocab_size": 0, "vocab_size": 128100})");
  CHECK(base.attention_span() == 256);  // rel_embeddings: 512 rows
  CHECK(base.max_relative() == 512);
  CHECK(base.head_dim() == 64);
  CHECK(base.pos_att_type == std::vector<std::string>{"p2c", "c2p"});

  CHECK(deberta::is_deberta_config(reference_dir() + "/v3/classifier/config.json"));
  CHECK_FALSE(deberta::is_deberta_config(std::string(INCRELORA_MINILM_DIR) + "/config.json"));
}

TEST_CASE("DeBERTa config and checkpoint errors name the field and what to change", "[deberta][errors]") {
  auto parse = [](const std::string& fields) {
    return deberta::DebertaConfig::from_json_string(R"({"model_type": "deberta-v2")" + fields + "}", "cfg.json");
  };
  CHECK_THROWS_WITH(deberta::DebertaConfig::from_json_string(R"({"model_type": "bert"})", "cfg.json"),
                    HasSubstring("cfg.json: model_type \"bert\" is not DeBERTa-v2/v3"));
  CHECK_THROWS_WITH(deberta::DebertaConfig::from_json_string(R"({"model_type": "deberta"})"),
                    HasSubstring("DeBERTa v1"));
  CHECK_THROWS_WITH(parse(R"(, "hidden_size": "big")"),
                    HasSubstring("cfg.json: the field \"hidden_size\" has the wrong type"));
  CHECK_THROWS_WITH(parse(R"(, "relative_attention": 1)"),
                    HasSubstring("the field \"relative_attention\" has the wrong type"));
  CHECK_THROWS_WITH(parse(R"(, "pos_att_type": 5)"), HasSubstring("the field \"pos_att_type\" has the wrong type"));
  CHECK_THROWS_WITH(parse(R"(, "pos_att_type": ["c2p", 1])"), HasSubstring("the field \"pos_att_type\""));
  CHECK_THROWS_WITH(parse(R"(, "pos_att_type": ["p2p"])"), HasSubstring("pos_att_type has the entry \"p2p\""));
  CHECK_THROWS_WITH(parse(R"(, "conv_kernel_size": 3)"), HasSubstring("conv_kernel_size is 3"));
  CHECK_THROWS_WITH(parse(R"(, "norm_rel_ebd": "batch_norm")"),
                    HasSubstring("norm_rel_ebd has the entry \"batch_norm\""));
  CHECK_THROWS_WITH(parse(R"(, "hidden_act": "mish")"), HasSubstring("hidden_act \"mish\""));
  CHECK_THROWS_WITH(parse(R"(, "pooler_hidden_size": 7)"),
                    HasSubstring("pooler_hidden_size (7) must equal hidden_size"));
  CHECK_THROWS_WITH(parse(R"(, "hidden_size": 30, "num_attention_heads": 4)"),
                    HasSubstring("must be a multiple of num_attention_heads"));
  CHECK_THROWS_WITH(parse(R"(, "relative_attention": true, "position_buckets": 256, "max_relative_positions": 100)"),
                    HasSubstring("position_buckets (256)"));
  // relative_attention false with pos_att_type given is a valid config (only the scale factor uses it).
  CHECK_NOTHROW(parse(R"(, "relative_attention": false, "pos_att_type": ["p2c", "c2p"])"));
  CHECK_THROWS_WITH(deberta::DebertaConfig::from_json_file("/nonexistent/config.json"),
                    HasSubstring("pass a Hugging Face checkpoint directory"));

  // A checkpoint without the relative embeddings the config asks for: the missing encoder tensors are listed.
  // The check runs before anything is copied: the model is left as it was.
  deberta::DebertaModel v3(config_of("v3"));
  const auto before = v3->embeddings->word_embeddings->weight.clone();
  CHECK_THROWS_WITH(deberta::load_pretrained(*v3, reference_dir() + "/norel/classifier"),
                    HasSubstring("lacks encoder tensors the model needs: encoder.rel_embeddings.weight"));
  CHECK(torch::equal(v3->embeddings->word_embeddings->weight, before));
  CHECK_THROWS_WITH(deberta::load_pretrained(*v3, "/nonexistent"), HasSubstring("does not exist"));
  // A tensor of another shape fails naming it.
  auto smaller = config_of("v3");
  smaller.vocab_size = 100;
  deberta::DebertaModel small(smaller);
  CHECK_THROWS_WITH(deberta::load_pretrained(*small, reference_dir() + "/v3/classifier"),
                    HasSubstring("embeddings.word_embeddings.weight' has shape [100, 32]"));
  // A v2-style model lacks its own tensors (position embeddings, embed_proj, pos_key_proj, ...) in a v3 checkpoint.
  deberta::DebertaModel v2(config_of("v2"));
  CHECK_THROWS_WITH(deberta::load_pretrained(*v2, reference_dir() + "/v3/classifier"),
                    HasSubstring("encoder.layer.0.attention.self.pos_key_proj.weight"));
  CHECK_THROWS_WITH(v3(torch::zeros({2, 3}, torch::kInt)), HasSubstring("input_ids must be an int64 tensor"));
}
