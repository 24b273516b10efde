// Bad inputs the readers meet in the wild: each is refused with a message naming what is wrong, without
// blocking, and a failed load leaves the model and optimizer as they were.
#include "support.hpp"

#include <increlora/checkpoint.hpp>
#include <increlora/safetensors.hpp>
#include <increlora/serialize.hpp>

#include "temp_dir.hpp"

#include <torch/optim/adam.h>

#include <cstring>
#include <fstream>
#include <sstream>
#include <string>

#include <sys/stat.h>
#include <sys/types.h>

using increlora::SVDLinearOptions;
using increlora::test::TempDir;
using increlora::test::TinyNet;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

void replace_once(std::string& text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  REQUIRE(at != std::string::npos);
  text.replace(at, from.size(), to);
}

std::vector<torch::Tensor> snapshot(const torch::nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (const auto& p : m.parameters()) out.push_back(p.detach().clone());
  return out;
}

bool unchanged(const torch::nn::Module& m, const std::vector<torch::Tensor>& before) {
  size_t i = 0;
  for (const auto& p : m.parameters()) {
    if (!torch::equal(p, before[i++])) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("A safetensors header that names a tensor twice is refused", "[bad_inputs][safetensors]") {
  TempDir dir;
  // Two entries "a" over the 8 data bytes: a JSON parser would keep the last one silently.
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  bytes += header + std::string(8, '\0');
  write_text(dir.file("dup.safetensors"), bytes);
  CHECK_THROWS_WITH(increlora::SafetensorsFile(dir.file("dup.safetensors")), HasSubstring("names \"a\" twice"));
}

TEST_CASE("Readers refuse FIFOs instead of blocking on them", "[bad_inputs][io]") {
  TempDir dir;
  REQUIRE(::mkfifo(dir.file("fifo.safetensors").c_str(), 0600) == 0);
  CHECK_THROWS_WITH(increlora::SafetensorsFile(dir.file("fifo.safetensors")), HasSubstring("not a regular file"));
  // An adapter folder whose config is a FIFO.
  ::mkdir(dir.file("adapter").c_str(), 0700);
  REQUIRE(::mkfifo(dir.file("adapter/adapter_config.json").c_str(), 0600) == 0);
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  CHECK_THROWS_WITH(increlora::load_adapter(*net, dir.file("adapter")), HasSubstring("not a regular file"));
}

TEST_CASE("An adapter config with a field of the wrong kind is refused naming the field", "[bad_inputs][serialize]") {
  TempDir dir;
  torch::manual_seed(1);
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  increlora::save_adapter(*net, dir.file("a"));
  const auto config_path = dir.file("a/adapter_config.json");
  const auto good = read_text(config_path);
  TinyNet fresh(4, 2, SVDLinearOptions(1, 1).r(1));
  const auto before = snapshot(*fresh);

  auto text = good;
  replace_once(text, "\"format\": \"increlora-adapter\"", "\"format\": 1");
  write_text(config_path, text);
  CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.file("a")), HasSubstring("is not an increlora adapter config"));

  text = good;
  replace_once(text, "\"in_features\": 4", "\"in_features\": 4.9");
  write_text(config_path, text);
  CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.file("a")), HasSubstring("\"in_features\" must be an integer"));
  CHECK(unchanged(*fresh, before));

  write_text(config_path, good);
  CHECK_NOTHROW(increlora::load_adapter(*fresh, dir.file("a")));
}

TEST_CASE("A checkpoint with optimizer moments or a generator state of the wrong size is refused before any change",
          "[bad_inputs][checkpoint]") {
  const std::string bad = GENERATE(std::string("moment"), std::string("rng"));
  CAPTURE(bad);
  TempDir dir;
  torch::manual_seed(2);
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(1e-2));
  increlora::RankAllocator allocator(*net, increlora::RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(3));
  const auto x = torch::randn({4, 4});
  for (int64_t step = 0; step < 2; ++step) {
    optimizer.zero_grad();
    net->forward(x).pow(2).sum().backward();
    allocator.update_and_increase(*net, step, optimizer);
    optimizer.step();
  }
  increlora::save_checkpoint(dir.file("ckpt"), *net, allocator, optimizer, 1);
  const auto tensors_path = dir.file("ckpt/trainer_state.safetensors");
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  {
    const increlora::SafetensorsFile file(tensors_path);
    for (const auto& name : file.names()) {
      auto t = file.tensor(name);
      if (bad == "moment" && name == "optimizer.fc0.lora_A.exp_avg") t = torch::zeros({3, 3});
      if (bad == "rng" && name == "rng.cpu") t = t.narrow(0, 0, 10).clone();
      tensors.emplace_back(name, t);
    }
  }
  increlora::save_safetensors(tensors_path, tensors, {{"format", "pt"}});

  torch::manual_seed(9);
  TinyNet other(4, 2, SVDLinearOptions(1, 1).r(1));
  torch::optim::Adam other_optimizer(other->parameters(), torch::optim::AdamOptions(1e-2));
  increlora::RankAllocator other_allocator(*other, increlora::RankAllocatorOptions().lora_r(1).target_rank(2)
                                                       .incre_interval(3));
  const auto before = snapshot(*other);
  CHECK_THROWS_WITH(increlora::load_checkpoint(dir.file("ckpt"), *other, other_allocator, other_optimizer),
                    HasSubstring(bad == "moment" ? "has shape [3, 3] but the parameter has" : "random generator state"));
  CHECK(unchanged(*other, before));
  CHECK(other_optimizer.state().empty());
}

TEST_CASE("A checkpoint whose step is not an integer is refused naming the field", "[bad_inputs][checkpoint]") {
  TempDir dir;
  torch::manual_seed(4);
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(1e-2));
  increlora::RankAllocator allocator(*net, increlora::RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(3));
  increlora::save_checkpoint(dir.file("ckpt"), *net, allocator, optimizer, 7);
  auto text = read_text(dir.file("ckpt/trainer_state.json"));
  replace_once(text, "\"step\": 7", "\"step\": 7.5");
  write_text(dir.file("ckpt/trainer_state.json"), text);
  CHECK_THROWS_WITH(increlora::load_checkpoint(dir.file("ckpt"), *net, allocator, optimizer),
                    HasSubstring("\"step\" must be an integer, got 7.5"));
}
