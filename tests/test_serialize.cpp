// Adapter save/load: exact restoration, mismatched models, damaged files.
#include "support.hpp"

#include <increlora/safetensors.hpp>
#include <increlora/serialize.hpp>

#include "temp_dir.hpp"

#include <torch/nn/modules/container/modulelist.h>

#include <fstream>
#include <map>

#include <sys/stat.h>
#include <unistd.h>

using increlora::SVDLinear;
using increlora::SVDLinearOptions;
using increlora::test::read_bytes;
using increlora::test::TempDir;
using increlora::test::write_bytes;

namespace {

// An MLP "fc0", "fc1", ... of SVDLinear layers with the given widths; `alpha`, `capacity` and `r` for all.
struct MlpImpl : torch::nn::Module {
  MlpImpl(const std::vector<int64_t>& widths, double alpha = 4.0, int64_t capacity = 8, int64_t r = 1) {
    for (size_t i = 0; i + 1 < widths.size(); ++i) {
      layers.push_back(register_module("fc" + std::to_string(i),
                                       SVDLinear(SVDLinearOptions(widths[i], widths[i + 1])
                                                     .r(r).lora_alpha(alpha).capacity(capacity))));
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    for (size_t i = 0; i < layers.size(); ++i) {
      x = layers[i](x);
      if (i + 1 < layers.size()) x = torch::tanh(x);
    }
    return x;
  }
  std::vector<SVDLinear> layers;
};
TORCH_MODULE(Mlp);

const std::vector<int64_t> kWidths{6, 5, 4, 3};

// A "trained" adapter: layers grown to different ranks, one with an advance-learning reserve, every adapter
// value random (λ included), so that any lost tensor or rank shows in the output.
Mlp trained_model() {
  torch::manual_seed(1);
  Mlp model(kWidths);
  model->layers[0]->grow(2, /*step=*/10, /*reserve_after=*/1);
  model->layers[2]->grow(1, /*step=*/20, /*reserve_after=*/0);
  torch::NoGradGuard no_grad;
  for (auto& layer : model->layers) {
    layer->lora_A.normal_();
    layer->lora_B.normal_();
    layer->lora_E.normal_();
  }
  return model;
}

// The same architecture with other random adapter values but the trained model's base weights, as a fresh
// model loaded from the same pretrained checkpoint would be.
Mlp fresh_model_like(const Mlp& trained, const std::vector<int64_t>& widths = kWidths, double alpha = 4.0,
                     int64_t capacity = 8, int64_t r = 1) {
  torch::manual_seed(2);
  Mlp fresh(widths, alpha, capacity, r);
  torch::NoGradGuard no_grad;
  for (size_t i = 0; i < fresh->layers.size() && i < trained->layers.size(); ++i) {
    if (fresh->layers[i]->weight.sizes() != trained->layers[i]->weight.sizes()) continue;
    fresh->layers[i]->weight.copy_(trained->layers[i]->weight);
    fresh->layers[i]->bias.copy_(trained->layers[i]->bias);
  }
  return fresh;
}

std::map<std::string, torch::Tensor> snapshot(const torch::nn::Module& model) {
  std::map<std::string, torch::Tensor> out;
  for (const auto& p : model.named_parameters()) out[p.key()] = p.value().detach().clone();
  for (const auto& b : model.named_buffers()) out[b.key()] = b.value().clone();
  return out;
}

bool unchanged(const torch::nn::Module& model, const std::map<std::string, torch::Tensor>& before) {
  for (const auto& [name, t] : snapshot(model)) {
    if (!torch::equal(t, before.at(name))) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("A saved adapter restores into a fresh model that then computes exactly the same outputs",
          "[serialize]") {
  TempDir dir;
  auto trained = trained_model();
  trained->eval();
  const auto x = torch::randn({7, 6});
  const auto expected = trained->forward(x);
  increlora::save_adapter(*trained, dir.file("adapter"));
  CHECK(dir.entries("adapter") == std::vector<std::string>{"adapter.safetensors", "adapter_config.json"});

  auto fresh = fresh_model_like(trained);
  fresh->eval();
  CHECK_FALSE(torch::equal(fresh->forward(x), expected));
  const auto pattern = increlora::load_adapter(*fresh, dir.file("adapter"));
  CHECK(pattern == std::map<std::string, int64_t>{{"fc0", 3}, {"fc1", 1}, {"fc2", 2}});
  CHECK(torch::equal(fresh->forward(x), expected));
  for (size_t i = 0; i < fresh->layers.size(); ++i) {
    CHECK(fresh->layers[i]->rank() == trained->layers[i]->rank());
    CHECK(fresh->layers[i]->reserve_rank() == trained->layers[i]->reserve_rank());
    CHECK(fresh->layers[i]->lambda_start() == trained->layers[i]->lambda_start());
    CHECK(fresh->layers[i]->factor_start() == trained->layers[i]->factor_start());
  }
  CHECK(fresh->layers[0]->reserve_rank() == 1);

  // The tensors are the lora_state_dict, by qualified name.
  const increlora::SafetensorsFile file(dir.file("adapter/adapter.safetensors"));
  std::vector<std::string> expected_names;
  for (const auto& item : increlora::lora_state_dict(*trained)) expected_names.push_back(item.key());
  CHECK(file.names() == expected_names);
  const auto config = read_bytes(dir.file("adapter/adapter_config.json"));
  CHECK_THAT(config, HasSubstring("\"rank_pattern\": {\n    \"fc0\": 3,\n    \"fc1\": 1,\n    \"fc2\": 2\n  }"));
  CHECK_THAT(config, HasSubstring("\"format_version\": 1"));
  CHECK_THAT(config, HasSubstring("\"lora_dropout\": 0.0"));
  CHECK_THAT(config, HasSubstring("\"capacity\": 8"));
}

TEST_CASE("An adapter saved with biases restores them too", "[serialize]") {
  TempDir dir;
  auto trained = trained_model();
  increlora::save_adapter(*trained, dir.path(), "lora_only");
  auto fresh = fresh_model_like(trained);
  {
    torch::NoGradGuard no_grad;
    for (auto& layer : fresh->layers) layer->bias.zero_();
  }
  increlora::load_adapter(*fresh, dir.path());
  const auto x = torch::randn({3, 6});
  CHECK(torch::equal(fresh->forward(x), trained->forward(x)));
}

TEST_CASE("Loading into a model that does not fit fails naming the first layer that differs and its shapes",
          "[serialize]") {
  TempDir dir;
  auto trained = trained_model();
  increlora::save_adapter(*trained, dir.path());

  SECTION("other widths") {
    auto other = fresh_model_like(trained, {6, 5, 7, 3});
    const auto before = snapshot(*other);
    CHECK_THROWS_WITH(increlora::load_adapter(*other, dir.path()),
                      HasSubstring("layer 'fc1' does not fit the saved adapter: lora_A is [8, 5] and lora_B [4, 8] in "
                                   "the adapter but [8, 5] and [7, 8] in the model; build it as "
                                   "SVDLinearOptions(5, 4).capacity(8)"));
    CHECK(unchanged(*other, before));
  }
  SECTION("another capacity") {
    auto other = fresh_model_like(trained, kWidths, 4.0, /*capacity=*/6);
    CHECK_THROWS_WITH(increlora::load_adapter(*other, dir.path()),
                      HasSubstring("layer 'fc0' does not fit the saved adapter: lora_A is [8, 6] and lora_B [5, 8] in "
                                   "the adapter but [6, 6] and [5, 6] in the model"));
  }
  SECTION("another lora_alpha or initial rank") {
    auto other = fresh_model_like(trained, kWidths, /*alpha=*/8.0);
    CHECK_THROWS_WITH(increlora::load_adapter(*other, dir.path()),
                      HasSubstring("layer 'fc0' was saved with lora_alpha 4 but the model's has lora_alpha 8"));
    auto r2 = fresh_model_like(trained, kWidths, 4.0, 8, /*r=*/2);
    CHECK_THROWS_WITH(increlora::load_adapter(*r2, dir.path()),
                      HasSubstring("layer 'fc0' was saved from a layer built with r(1) but the model's is built with r(2)"));
  }
  SECTION("fewer or more layers") {
    auto shorter = fresh_model_like(trained, {6, 5, 4});
    CHECK_THROWS_WITH(increlora::load_adapter(*shorter, dir.path()),
                      HasSubstring("has a layer 'fc2' that the model lacks"));
    auto longer = fresh_model_like(trained, {6, 5, 4, 3, 2});
    CHECK_THROWS_WITH(increlora::load_adapter(*longer, dir.path()),
                      HasSubstring("the model's layer 'fc3' has an adapter but the adapter in '" + dir.path() +
                                   "' has none for it (it has: fc0, fc1, fc2)"));
  }
}

TEST_CASE("Missing, truncated or corrupted adapter files fail cleanly and leave the model untouched",
          "[serialize]") {
  TempDir dir;
  auto trained = trained_model();
  increlora::save_adapter(*trained, dir.path());
  const auto tensors_path = dir.file("adapter.safetensors");
  const auto config_path = dir.file("adapter_config.json");
  const auto tensors = read_bytes(tensors_path);
  const auto config = read_bytes(config_path);
  auto fresh = fresh_model_like(trained);
  const auto before = snapshot(*fresh);

  SECTION("no folder") {
    CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.file("nothing")),
                      HasSubstring("has no adapter_config.json; pass a folder written by save_adapter"));
  }
  SECTION("no tensors") {
    ::unlink(tensors_path.c_str());
    CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.path()),
                      HasSubstring("adapter.safetensors': could not open it (No such file or directory)"));
  }
  SECTION("truncated tensors") {
    write_bytes(tensors_path, tensors.substr(0, tensors.size() - 10));
    CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.path()), HasSubstring("the file is truncated"));
  }
  SECTION("truncated config") {
    write_bytes(config_path, config.substr(0, config.size() / 2));
    CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.path()),
                      HasSubstring("adapter_config.json' is not valid JSON"));
  }
  SECTION("a config of another kind") {
    write_bytes(config_path, R"({"peft_type": "LORA", "r": 8})");
    CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.path()),
                      HasSubstring("is not an increlora adapter config"));
  }
  SECTION("a config from a newer increlora") {
    auto newer = config;
    newer.replace(newer.find("\"format_version\": 1"), 19, "\"format_version\": 9");
    write_bytes(config_path, newer);
    CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.path()),
                      HasSubstring("has format_version 9 but this increlora reads versions 1 to 1"));
  }
  SECTION("a config whose ranks disagree with the tensors") {
    auto other = config;
    other.replace(other.find("\"rank\": 3"), 9, "\"rank\": 2");
    write_bytes(config_path, other);
    CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.path()),
                      HasSubstring("layer 'fc0' has rank 3 and reserve 1 in '" + tensors_path +
                                   "' but its config says rank 2 and reserve 1"));
  }
  SECTION("a corrupted slot state") {
    std::vector<std::pair<std::string, torch::Tensor>> items;
    for (const auto& item : increlora::lora_state_dict(*trained)) {
      auto t = item.value().detach().clone();
      if (item.key() == "fc1.lora_slot_state") t[3] = 1;  // an active slot after an unused one
      items.emplace_back(item.key(), t);
    }
    increlora::save_safetensors(tensors_path, items);
    CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.path()),
                      HasSubstring("tensor 'fc1.lora_slot_state' holds slot state 1 at slot 3"));
  }
  SECTION("a tensor missing from the file") {
    std::vector<std::pair<std::string, torch::Tensor>> items;
    for (const auto& item : increlora::lora_state_dict(*trained)) {
      if (item.key() != "fc2.lora_E") items.emplace_back(item.key(), item.value());
    }
    increlora::save_safetensors(tensors_path, items);
    CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.path()),
                      HasSubstring("has no tensor 'fc2.lora_E' although its config lists the layer"));
  }
  CHECK(unchanged(*fresh, before));
}

TEST_CASE("Saving an adapter validates its input and replaces the files of an earlier save", "[serialize]") {
  TempDir dir;
  auto model = trained_model();
  CHECK_THROWS_WITH(increlora::save_adapter(*model, dir.path(), "some"), HasSubstring("bias must be"));
  Mlp plain(kWidths, 4.0, 8, /*r=*/0);
  CHECK_THROWS_WITH(increlora::save_adapter(*plain, dir.path()), HasSubstring("nothing to save"));
  write_bytes(dir.file("file"), "x");
  CHECK_THROWS_WITH(increlora::save_adapter(*model, dir.file("file")), HasSubstring("is not a folder"));

  increlora::save_adapter(*model, dir.file("a"));
  model->layers[1]->grow(2, 30, 0);
  increlora::save_adapter(*model, dir.file("a"));
  CHECK(dir.entries("a") == std::vector<std::string>{"adapter.safetensors", "adapter_config.json"});
  auto fresh = fresh_model_like(model);
  CHECK(increlora::load_adapter(*fresh, dir.file("a")).at("fc1") == 3);
}
