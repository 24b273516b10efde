// The encoder equals Hugging Face transformers on the same checkpoint and inputs (fp32, atol 1e-4): BertModel
// on all-MiniLM-L6-v2, BertForSequenceClassification's logits, and a small RobertaModel; adapters start as a
// no-op; the seed's short module names select the right layers.
#include "support.hpp"

#include <increlora/models/bert.hpp>

#include <increlora/safetensors.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>

#include <unistd.h>

namespace bert = increlora::bert;

namespace {

std::string reference_dir() { return INCRELORA_BERT_REFERENCE_DIR; }

increlora::SafetensorsFile reference(const std::string& name) {
  const auto path = reference_dir() + "/" + name;
  INFO("reference file " << path << " (written by the ctest fixture bert_reference: run ctest, or "
                                    "tests/models/make_reference.py)");
  REQUIRE(std::filesystem::exists(path));
  return increlora::SafetensorsFile(path);
}

bert::LoraSettings all_seed_modules(int64_t r) {
  bert::LoraSettings lora;
  lora.patterns = bert::lora_patterns_from_short_names(
      {"query", "key", "value", "intermediate", "layer.output", "attention.output"});
  lora.r = r;
  lora.lora_alpha = 16;
  return lora;
}

}  // namespace

TEST_CASE("BertModel equals transformers' BertModel on all-MiniLM-L6-v2", "[bert][encoder][reference]") {
  const auto ref = reference("minilm_bert.safetensors");
  const auto config = bert::BertConfig::from_json_file(std::string(INCRELORA_MINILM_DIR) + "/config.json");
  CHECK(config.hidden_size == 384);
  CHECK(config.num_hidden_layers == 6);
  // r = 0 everywhere (plain Linear layers) and r = 1 on the seed's modules: λ = 0, so ΔW = 0 at the start.
  const int64_t r = GENERATE(0, 1);
  INFO("lora r = " << r);
  bert::BertModel model(config, all_seed_modules(r));
  const auto load = bert::load_pretrained(*model, INCRELORA_MINILM_DIR);
  for (const auto& n : load.initialized) CHECK(n.find("lora_") != std::string::npos);
  CHECK(load.ignored == std::vector<std::string>{"embeddings.position_ids"});
  model->eval();
  torch::NoGradGuard no_grad;
  const auto out = model(ref.tensor("input_ids"), ref.tensor("attention_mask"), ref.tensor("token_type_ids"));
  CHECK_ALLCLOSE(out.last_hidden_state, ref.tensor("last_hidden_state"), 0.0, 1e-4);
  CHECK_ALLCLOSE(out.pooler_output, ref.tensor("pooler_output"), 0.0, 1e-4);
}

TEST_CASE("SequenceClassifier loads a BertForSequenceClassification checkpoint and gives its logits",
          "[bert][encoder][reference]") {
  const auto inputs = reference("minilm_bert.safetensors");
  const auto dir = reference_dir() + "/classifier";
  const auto logits = reference("classifier/logits.safetensors").tensor("logits");
  const auto config = bert::BertConfig::from_json_file(dir + "/config.json");
  bert::SequenceClassifier model(config, 3, all_seed_modules(1));
  const auto load = bert::load_pretrained(*model, dir);
  for (const auto& n : load.initialized) CHECK(n.find("lora_") != std::string::npos);  // the head was in the file
  model->eval();
  torch::NoGradGuard no_grad;
  const auto got = model(inputs.tensor("input_ids"), inputs.tensor("attention_mask"), inputs.tensor("token_type_ids"));
  CHECK_ALLCLOSE(got, logits, 0.0, 1e-4);
}

TEST_CASE("QuestionAnswering loads a BertForQuestionAnswering checkpoint and gives its start and end logits",
          "[bert][encoder][reference]") {
  const auto inputs = reference("minilm_bert.safetensors");
  const auto dir = reference_dir() + "/qa";
  const auto ref = reference("qa/logits.safetensors");
  const auto config = bert::BertConfig::from_json_file(dir + "/config.json");
  bert::QuestionAnswering model(config, all_seed_modules(1));
  const auto load = bert::load_pretrained(*model, dir);
  for (const auto& n : load.initialized) CHECK(n.find("lora_") != std::string::npos);  // qa_outputs was in the file
  model->eval();
  torch::NoGradGuard no_grad;
  const auto [start, end] = model(inputs.tensor("input_ids"), inputs.tensor("attention_mask"),
                                  inputs.tensor("token_type_ids"));
  CHECK_ALLCLOSE(start, ref.tensor("start_logits"), 0.0, 1e-4);
  CHECK_ALLCLOSE(end, ref.tensor("end_logits"), 0.0, 1e-4);
  CHECK(model->head_prefixes() == std::vector<std::string>{"qa_outputs."});

  // From the plain encoder checkpoint, qa_outputs is the one head tensor left fresh.
  bert::QuestionAnswering fresh(config, bert::LoraSettings{});
  const auto fresh_load = bert::load_pretrained(*fresh, INCRELORA_MINILM_DIR);
  CHECK(fresh_load.initialized == std::vector<std::string>{"qa_outputs.bias", "qa_outputs.weight"});
}

TEST_CASE("A RoBERTa checkpoint gives transformers' RobertaModel outputs", "[bert][encoder][reference]") {
  const auto ref = reference("roberta/outputs.safetensors");
  const auto dir = reference_dir() + "/roberta";
  const auto config = bert::BertConfig::from_json_file(dir + "/config.json");
  CHECK(config.is_roberta());
  bert::BertModel model(config);
  bert::load_pretrained(*model, dir);
  model->eval();
  torch::NoGradGuard no_grad;
  const auto out = model(ref.tensor("input_ids"), ref.tensor("attention_mask"));
  CHECK_ALLCLOSE(out.last_hidden_state, ref.tensor("last_hidden_state"), 0.0, 1e-4);
  CHECK_ALLCLOSE(out.pooler_output, ref.tensor("pooler_output"), 0.0, 1e-4);
}

TEST_CASE("The seed's short module names adapt the matching layers and nothing else", "[bert][encoder]") {
  auto config = bert::BertConfig();
  config.hidden_size = 32, config.num_attention_heads = 4, config.intermediate_size = 64, config.num_hidden_layers = 2;
  config.vocab_size = 50, config.max_position_embeddings = 16;
  bert::SequenceClassifier model(config, 2, all_seed_modules(1));
  std::set<std::string> adapted;
  for (const auto& [name, layer] : increlora::named_svd_linears(*model)) adapted.insert(name);
  std::set<std::string> expected;
  for (const std::string l : {"0", "1"}) {
    const auto p = "bert.encoder.layer." + l + ".";
    for (const std::string m : {"attention.self.query", "attention.self.key", "attention.self.value",
                                "attention.output.dense", "intermediate.dense", "output.dense"}) {
      expected.insert(p + m);
    }
  }
  CHECK(adapted == expected);
  // r = 0 layers carry no adapter tensors at all.
  for (const auto& p : model->named_parameters()) {
    if (p.key().rfind("bert.pooler.", 0) == 0) CHECK(p.key().find("lora_") == std::string::npos);
  }
  // "layer.output" is the layer's own output.dense, not attention.output.dense.
  bert::LoraSettings only_output;
  only_output.patterns = bert::lora_patterns_from_short_names({"layer.output"});
  only_output.r = 2;
  bert::BertModel just(config, only_output);
  std::vector<std::string> names;
  for (const auto& [name, layer] : increlora::named_svd_linears(*just)) names.push_back(name);
  CHECK(names == std::vector<std::string>{"encoder.layer.0.output.dense", "encoder.layer.1.output.dense"});
  // Qualified names and regexes pass through.
  CHECK(bert::lora_patterns_from_short_names({"pooler.dense", "re:.*query"}) ==
        std::vector<std::string>{"pooler.dense", "re:.*query"});
}

TEST_CASE("The intermediate activation is ACT2FN's for every name the config takes", "[bert][encoder]") {
  torch::manual_seed(0);
  bert::BertConfig c;
  c.hidden_size = 8, c.intermediate_size = 16;
  const auto x = torch::randn({3, 8});
  const double s2 = std::sqrt(2.0), k = std::sqrt(2.0 / std::acos(-1.0));
  // transformers' definitions, written out: GELUActivation (erf), NewGELUActivation (tanh), SiLU, ReLU, Tanh.
  using Act = std::function<torch::Tensor(const torch::Tensor&)>;
  const Act gelu = [&](const torch::Tensor& h) { return 0.5 * h * (1 + torch::erf(h / s2)); };
  const Act tanh_gelu = [&](const torch::Tensor& h) {
    return 0.5 * h * (1 + torch::tanh(k * (h + 0.044715 * h.pow(3))));
  };
  const Act silu = [](const torch::Tensor& h) { return h * torch::sigmoid(h); };
  const std::vector<std::pair<std::string, Act>> acts = {
      {"gelu", gelu}, {"gelu_new", tanh_gelu}, {"gelu_pytorch_tanh", tanh_gelu},
      {"relu", [](const torch::Tensor& h) { return h.clamp_min(0); }}, {"silu", silu}, {"swish", silu},
      {"tanh", [](const torch::Tensor& h) { return torch::tanh(h); }}};
  for (const auto& [name, f] : acts) {
    c.hidden_act = name;
    bert::BertIntermediate layer(c, bert::LoraSettings{}, "");
    torch::NoGradGuard no_grad;
    const auto got = layer->forward(x);
    const auto want = f(layer->dense(x));
    INFO(name);
    CHECK(torch::allclose(got, want, 1e-5, 1e-6));
  }
}

TEST_CASE("Config and checkpoint errors say what to change", "[bert][encoder][errors]") {
  CHECK_THROWS_WITH(bert::BertConfig::from_json_string(R"({"model_type": "gpt2"})"),
                    HasSubstring("model_type \"gpt2\" is not a BERT-family encoder"));
  CHECK_THROWS_WITH(bert::BertConfig::from_json_string(R"({"hidden_size": "big"})"),
                    HasSubstring("the field \"hidden_size\" has the wrong type"));
  // Strict types: a width written as a float or a boolean is named, not truncated or converted.
  CHECK_THROWS_WITH(bert::BertConfig::from_json_string(R"({"hidden_size": 768.5})"),
                    HasSubstring("\"hidden_size\" has the wrong type (768.5); expected an integer"));
  CHECK_THROWS_WITH(bert::BertConfig::from_json_string(R"({"num_hidden_layers": true})"),
                    HasSubstring("expected an integer"));
  CHECK_THROWS_WITH(bert::BertConfig::from_json_string(R"({"hidden_dropout_prob": "0.1"})"),
                    HasSubstring("expected a number"));
  CHECK_THROWS_WITH(bert::BertConfig::from_json_string("[1, 2]"), HasSubstring("must hold a JSON object"));
  CHECK_THROWS_WITH(bert::BertConfig::from_json_string("{"), HasSubstring("is not valid JSON"));
  CHECK_THROWS_WITH(bert::BertConfig::from_json_string(R"({"position_embedding_type": "relative_key"})"),
                    HasSubstring("only \"absolute\" position embeddings"));
  CHECK_THROWS_WITH(bert::BertConfig::from_json_file("/nonexistent/config.json"),
                    HasSubstring("pass a Hugging Face checkpoint directory"));
  // hidden_act: transformers' ACT2FN names, the same set for every model family (models/src/activations.hpp).
  for (const char* act : {"gelu", "gelu_new", "gelu_pytorch_tanh", "relu", "silu", "swish", "tanh"}) {
    CHECK(bert::BertConfig::from_json_string(std::string(R"({"hidden_act": ")") + act + "\"}").hidden_act == act);
  }
  CHECK_THROWS_WITH(bert::BertConfig::from_json_string(R"({"hidden_act": "mish"})"),
                    HasSubstring("hidden_act \"mish\" is not implemented; use gelu, gelu_new, gelu_pytorch_tanh, "
                                 "relu, silu, swish or tanh."));

  const auto dir = std::filesystem::temp_directory_path() / "increlora_bert_pickle_only";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "pytorch_model.bin") << "not really a pickle";
  bert::BertConfig small;
  small.hidden_size = 8, small.num_attention_heads = 2, small.intermediate_size = 16, small.num_hidden_layers = 1;
  small.vocab_size = 10, small.max_position_embeddings = 8;
  bert::BertModel model(small);
  CHECK_THROWS_WITH(bert::load_pretrained(*model, dir.string()), HasSubstring("pickles can run code"));
  // Not std::filesystem::remove_all: libtorch.so exports its own copy of that symbol, which crashes when
  // our binary's call binds to it.
  std::remove((dir / "pytorch_model.bin").c_str());
  std::remove(dir.c_str());
  // A checkpoint of another shape fails naming the tensor.
  CHECK_THROWS_WITH(bert::load_pretrained(*model, INCRELORA_MINILM_DIR), HasSubstring("has shape"));
}

TEST_CASE("A checkpoint sharded with model.safetensors.index.json loads as the single file does",
          "[bert][encoder][sharded]") {
  namespace fs = std::filesystem;
  const fs::path minilm(INCRELORA_MINILM_DIR);
  const auto dir = fs::temp_directory_path() / ("increlora_sharded_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  // Two shards, every other tensor, and the index that maps each name to its shard (as save_pretrained writes).
  const increlora::SafetensorsFile whole((minilm / "model.safetensors").string());
  std::vector<std::pair<std::string, torch::Tensor>> shards[2];
  std::string map;
  size_t i = 0;
  for (const auto& name : whole.names()) {
    const auto file = i % 2 ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors";
    shards[i % 2].emplace_back(name, whole.tensor(name));
    map += std::string(map.empty() ? "" : ",") + "\"" + name + "\": \"" + file + "\"";
    ++i;
  }
  increlora::save_safetensors((dir / "model-00001-of-00002.safetensors").string(), shards[0]);
  increlora::save_safetensors((dir / "model-00002-of-00002.safetensors").string(), shards[1]);
  std::ofstream(dir / "model.safetensors.index.json") << "{\"metadata\": {}, \"weight_map\": {" << map << "}}";
  fs::copy_file(minilm / "config.json", dir / "config.json", fs::copy_options::overwrite_existing);

  const auto config = bert::BertConfig::from_json_file((minilm / "config.json").string());
  torch::manual_seed(1);
  bert::BertModel single(config, all_seed_modules(1));
  torch::manual_seed(1);
  bert::BertModel sharded(config, all_seed_modules(1));
  bert::load_pretrained(*single, minilm.string());
  const auto load = bert::load_pretrained(*sharded, dir.string());
  for (const auto& n : load.initialized) CHECK(n.find("lora_") != std::string::npos);
  single->eval(), sharded->eval();
  torch::NoGradGuard no_grad;
  const auto ids = torch::randint(1000, 2000, {2, 12});
  CHECK_ALLCLOSE(sharded(ids).last_hidden_state, single(ids).last_hidden_state, 0.0, 0.0);
  // A shard named outside the folder is refused.
  std::ofstream(dir / "model.safetensors.index.json") << "{\"weight_map\": {\"x\": \"../model.safetensors\"}}";
  CHECK_THROWS_WITH(bert::load_pretrained(*sharded, dir.string()), HasSubstring("not a file of the folder"));
  for (const auto& entry : fs::directory_iterator(dir)) fs::remove(entry.path());
  fs::remove(dir);
}
