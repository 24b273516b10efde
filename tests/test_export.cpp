// Export: merged weights that load into the plain model, and the PEFT LoRA layout (the Python side of the
// PEFT check is tests/python/test_peft_export.py).
#include "support.hpp"

#include <increlora/safetensors.hpp>
#include <increlora/serialize.hpp>

#include "temp_dir.hpp"

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
