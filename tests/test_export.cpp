// Export: merged weights that load into the plain model, and the PEFT LoRA layout (the Python side of the
// PEFT check is tests/python/test_peft_export.py).
#include "support.hpp"

#include <increlora/safetensors.hpp>
#include <increlora/serialize.hpp>

#include "temp_dir.hpp"

#include <filesystem>
#include <fstream>

using increlora::SVDLinear;
using increlora::SVDLinearOptions;
using increlora::test::read_bytes;
using increlora::test::TempDir;

namespace {

// "fc1", "block.fc1" (a nested name that ends like a top-level one) and a plain "out".
struct BlockImpl : torch::nn::Module {
  explicit BlockImpl(int64_t r) { fc1 = register_module("fc1", SVDLinear(SVDLinearOptions(5, 5).r(r).capacity(6))); }
  SVDLinear fc1{nullptr};
};
TORCH_MODULE(Block);

struct ModelImpl : torch::nn::Module {
  explicit ModelImpl(int64_t r) {
    fc1 = register_module("fc1", SVDLinear(SVDLinearOptions(4, 5).r(r).lora_alpha(3.0).capacity(6)));
    block = register_module("block", Block(r));
    out = register_module("out", SVDLinear(SVDLinearOptions(5, 2)));
  }
  torch::Tensor forward(torch::Tensor x) { return out(torch::tanh(block->fc1(torch::tanh(fc1(x))))); }
  SVDLinear fc1{nullptr}, out{nullptr};
  Block block{nullptr};
};
TORCH_MODULE(Model);

Model adapted_model() {
  torch::manual_seed(5);
  Model model(1);
  model->fc1->grow(2, 1, 0);
  torch::NoGradGuard no_grad;
  for (auto* layer : {model->fc1.get(), model->block->fc1.get()}) {
    layer->lora_A.normal_();
    layer->lora_B.normal_();
    layer->lora_E.normal_();
  }
  return model;
}

}  // namespace

TEST_CASE("Merged weights load into the plain model and compute what the adapted model computes", "[export]") {
  TempDir dir;
  auto model = adapted_model();
  model->eval();
  const auto x = torch::randn({6, 4});
  const auto expected = model->forward(x);
  increlora::merge_and_export(*model, dir.file("merged.safetensors"), {{"source", "test"}});
  CHECK(model->fc1->is_merged() == false);

  const increlora::SafetensorsFile file(dir.file("merged.safetensors"));
  CHECK(file.names() == std::vector<std::string>{"fc1.weight", "fc1.bias", "block.fc1.weight", "block.fc1.bias",
                                                 "out.weight", "out.bias"});
  CHECK(file.metadata().at("source") == "test");
  Model plain(0);
  increlora::load_state_into(*plain, file);
  plain->eval();
  CHECK_ALLCLOSE(plain->forward(x), expected, 1e-5, 1e-6);

  // Exactly what merge() folds in.
  model->fc1->merge();
  CHECK(torch::equal(file.tensor("fc1.weight"), model->fc1->weight));
  increlora::merge_and_export(*model, dir.file("merged_again.safetensors"));
  CHECK(torch::equal(increlora::SafetensorsFile(dir.file("merged_again.safetensors")).tensor("fc1.weight"),
                     model->fc1->weight));
}

TEST_CASE("The PEFT export holds B' = P[:, :r] and A' = (λ s)[:r] Q[:r] per layer and a config with scaling 1",
          "[export]") {
  TempDir dir;
  auto model = adapted_model();
  increlora::export_peft(*model, dir.file("peft"));
  CHECK(dir.entries("peft") == std::vector<std::string>{"adapter_config.json", "adapter_model.safetensors"});
  const increlora::SafetensorsFile file(dir.file("peft/adapter_model.safetensors"));
  CHECK(file.names() == std::vector<std::string>{"base_model.model.fc1.lora_A.weight",
                                                 "base_model.model.fc1.lora_B.weight",
                                                 "base_model.model.block.fc1.lora_A.weight",
                                                 "base_model.model.block.fc1.lora_B.weight"});
  CHECK(file.shape("base_model.model.fc1.lora_A.weight") == std::vector<int64_t>{3, 4});
  CHECK(file.shape("base_model.model.fc1.lora_B.weight") == std::vector<int64_t>{5, 3});
  CHECK(file.shape("base_model.model.block.fc1.lora_A.weight") == std::vector<int64_t>{1, 5});
  for (const auto& [name, layer] : std::vector<std::pair<std::string, SVDLinear>>{{"fc1", model->fc1},
                                                                                  {"block.fc1", model->block->fc1}}) {
    const auto B = file.tensor("base_model.model." + name + ".lora_B.weight");
    const auto A = file.tensor("base_model.model." + name + ".lora_A.weight");
    CHECK_ALLCLOSE(torch::mm(B, A), layer->delta_weight(), 1e-5, 1e-6);
  }
  const auto config = read_bytes(dir.file("peft/adapter_config.json"));
  CHECK_THAT(config, HasSubstring("\"peft_type\": \"LORA\""));
  CHECK_THAT(config, HasSubstring("\"r\": 3,\n  \"lora_alpha\": 3,"));
  CHECK_THAT(config, HasSubstring("\"target_modules\": [\n    \"fc1\",\n    \"block.fc1\"\n  ]"));
  // The nested name first, so PEFT's suffix match cannot give block.fc1 the rank of fc1.
  CHECK_THAT(config, HasSubstring("\"rank_pattern\": {\n    \"block.fc1\": 1,\n    \"fc1\": 3\n  }"));
  CHECK_THAT(config, HasSubstring("\"alpha_pattern\": {\n    \"block.fc1\": 1,\n    \"fc1\": 3\n  }"));

  increlora::export_peft(*model, dir.file("prefixed"), "bert");
  const increlora::SafetensorsFile prefixed(dir.file("prefixed/adapter_model.safetensors"));
  CHECK(prefixed.contains("base_model.model.bert.block.fc1.lora_B.weight"));
}

TEST_CASE("The PEFT export drops the advance-learning reserve", "[export]") {
  TempDir dir;
  auto model = adapted_model();
  model->block->fc1->set_reserve(2);
  increlora::export_peft(*model, dir.path());
  const increlora::SafetensorsFile file(dir.file("adapter_model.safetensors"));
  CHECK(file.shape("base_model.model.block.fc1.lora_A.weight") == std::vector<int64_t>{1, 5});
  Model plain(0);
  CHECK_THROWS_WITH(increlora::export_peft(*plain, dir.path()), HasSubstring("nothing to export"));
}

TEST_CASE("The PEFT export takes a task type, a base model, modules saved in full and a uniform rank", "[export]") {
  TempDir dir;
  auto model = adapted_model();
  increlora::export_peft(*model, dir.file("full"), increlora::PeftExportOptions()
                                                       .task_type("SEQ_CLS")
                                                       .base_model_name_or_path("/models/base")
                                                       .modules_to_save({"out"})
                                                       .uniform_rank(true));
  const increlora::SafetensorsFile file(dir.file("full/adapter_model.safetensors"));
  // Uniform: every layer at the largest rank (3), zero-padded, the same ΔW.
  CHECK(file.shape("base_model.model.block.fc1.lora_A.weight") == std::vector<int64_t>{3, 5});
  const auto A = file.tensor("base_model.model.block.fc1.lora_A.weight");
  const auto B = file.tensor("base_model.model.block.fc1.lora_B.weight");
  CHECK(A.narrow(0, 1, 2).abs().sum().item<double>() == 0.0);
  CHECK_ALLCLOSE(torch::mm(B, A), model->block->fc1->delta_weight(), 1e-5, 1e-6);
  CHECK_ALLCLOSE(file.tensor("base_model.model.out.weight"), model->out->weight, 0, 0);
  CHECK(file.contains("base_model.model.out.bias"));
  const auto config = read_bytes(dir.file("full/adapter_config.json"));
  CHECK_THAT(config, HasSubstring("\"task_type\": \"SEQ_CLS\""));
  CHECK_THAT(config, HasSubstring("\"base_model_name_or_path\": \"/models/base\""));
  CHECK_THAT(config, HasSubstring("\"modules_to_save\": [\n    \"out\"\n  ]"));
  CHECK_THAT(config, HasSubstring("\"rank_pattern\": {}"));
  CHECK_THROWS_WITH(increlora::export_peft(*model, dir.file("bad"), increlora::PeftExportOptions().modules_to_save({"head"})),
                    HasSubstring("no tensor under it"));
}

TEST_CASE("import_peft starts the adapter from a PEFT LoRA export with the same output", "[export][import]") {
  TempDir dir;
  auto model = adapted_model();
  increlora::export_peft(*model, dir.file("peft"), increlora::PeftExportOptions().modules_to_save({"out"}));
  torch::manual_seed(77);
  Model fresh(1);
  {
    // The base weights are the model's (an import goes onto the base the adapter was trained on); the head is not.
    torch::NoGradGuard no_grad;
    fresh->fc1->weight.copy_(model->fc1->weight), fresh->fc1->bias.copy_(model->fc1->bias);
    fresh->block->fc1->weight.copy_(model->block->fc1->weight), fresh->block->fc1->bias.copy_(model->block->fc1->bias);
    fresh->out->weight.normal_();
  }
  const auto report = increlora::import_peft(*fresh, dir.file("peft"));
  CHECK(report.peft_type == "LORA");
  CHECK(report.ranks == std::map<std::string, int64_t>{{"fc1", 3}, {"block.fc1", 1}});
  CHECK(report.full_tensors == std::vector<std::string>{"out.weight", "out.bias"});
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({7, 4});
  CHECK_ALLCLOSE(fresh->forward(x), model->forward(x), 1e-5, 1e-6);
  // P and Q come out orthonormal: the SVD form the orthogonality regularizer expects.
  const auto P = fresh->fc1->lora_B.narrow(1, 0, 3), Q = fresh->fc1->lora_A.narrow(0, 0, 3);
  CHECK_ALLCLOSE(torch::mm(P.t(), P), torch::eye(3), 1e-5, 1e-5);
  CHECK_ALLCLOSE(torch::mm(Q, Q.t()), torch::eye(3), 1e-5, 1e-5);
}

TEST_CASE("import_peft maps an AdaLoRA adapter's P, Λ, Q onto the banks", "[export][import]") {
  TempDir dir;
  torch::manual_seed(12);
  const auto A1 = torch::randn({2, 4}), E1 = torch::randn({2, 1}), B1 = torch::randn({5, 2});
  const auto A2 = torch::randn({3, 5}), E2 = torch::randn({3, 1}), B2 = torch::randn({5, 3});
  std::filesystem::create_directories(dir.file("ada"));
  increlora::save_safetensors(dir.file("ada/adapter_model.safetensors"),
                              {{"base_model.model.fc1.lora_A", A1}, {"base_model.model.fc1.lora_E", E1},
                               {"base_model.model.fc1.lora_B", B1}, {"base_model.model.block.fc1.lora_A", A2},
                               {"base_model.model.block.fc1.lora_E", E2}, {"base_model.model.block.fc1.lora_B", B2}});
  {
    std::ofstream config(dir.file("ada/adapter_config.json"));
    config << R"({"peft_type": "ADALORA", "init_r": 4, "lora_alpha": 8, "target_modules": ["fc1"]})";
  }
  Model model(1);
  const auto report = increlora::import_peft(*model, dir.file("ada"));
  CHECK(report.ranks == std::map<std::string, int64_t>{{"fc1", 2}, {"block.fc1", 3}});
  const double s = 8.0 / (4 + 1e-5);  // AdaLoRA: lora_alpha / (ranknum + 1e-5), ranknum = init_r
  CHECK_ALLCLOSE(model->fc1->delta_weight(), torch::mm(B1, A1 * E1) * s, 1e-5, 1e-6);
  CHECK_ALLCLOSE(model->block->fc1->delta_weight(), torch::mm(B2, A2 * E2) * s, 1e-5, 1e-6);
  // Bad input: a layer the file lacks, a rank beyond capacity, an unknown type.
  Model narrow(1);
  increlora::save_safetensors(dir.file("ada/adapter_model.safetensors"),
                              {{"base_model.model.fc1.lora_A", A1}, {"base_model.model.fc1.lora_E", E1},
                               {"base_model.model.fc1.lora_B", B1}});
  CHECK_THROWS_WITH(increlora::import_peft(*narrow, dir.file("ada")), HasSubstring("no adapter for the model's layer 'block.fc1'"));
  {
    std::ofstream config(dir.file("ada/adapter_config.json"));
    config << R"({"peft_type": "IA3", "lora_alpha": 8})";
  }
  CHECK_THROWS_WITH(increlora::import_peft(*narrow, dir.file("ada")), HasSubstring("only LORA and ADALORA"));
  CHECK_THROWS_WITH(increlora::import_peft(*narrow, dir.file("nothing")), HasSubstring("has no adapter_config.json"));
}
