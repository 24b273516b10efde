// Training checkpoints: resuming in the middle of the allocation phase continues bit for bit.
#include "support.hpp"

#include <increlora/checkpoint.hpp>
#include <increlora/safetensors.hpp>
#include <increlora/serialize.hpp>

#include "temp_dir.hpp"

#include <torch/nn/functional/loss.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <memory>

using increlora::SVDLinear;
using increlora::SVDLinearOptions;
using increlora::test::TempDir;

namespace {

// Three adapted layers and a plain trained head, as a classifier on an encoder would have.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    for (int i = 0; i < 3; ++i) {
      layers.push_back(register_module("fc" + std::to_string(i),
                                       SVDLinear(SVDLinearOptions(8, 8).r(1).lora_alpha(4.0).capacity(6))));
    }
    head = register_module("head", torch::nn::Linear(8, 2));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& layer : layers) x = torch::tanh(layer(x));
    return head(x);
  }
  std::vector<SVDLinear> layers;
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Net);

std::unique_ptr<torch::optim::Optimizer> make_optimizer(const std::string& kind, Net& net) {
  // The adapter in one group, the head in another with its own learning rate.
  std::vector<torch::Tensor> adapter, head;
  for (const auto& p : net->named_parameters()) {
    if (!p.value().requires_grad()) continue;
    (p.key().rfind("head.", 0) == 0 ? head : adapter).push_back(p.value());
  }
  if (kind == "SGD") {
    std::vector<torch::optim::OptimizerParamGroup> groups{{adapter}, {head}};
    groups[1].set_options(std::make_unique<torch::optim::SGDOptions>(torch::optim::SGDOptions(0.05).momentum(0.8)));
    return std::make_unique<torch::optim::SGD>(groups, torch::optim::SGDOptions(0.1).momentum(0.9).nesterov(true));
  }
  if (kind == "AdamW" || kind == "FusedAdamW") {
    std::vector<torch::optim::OptimizerParamGroup> groups{{adapter}, {head}};
    groups[1].set_options(std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(5e-3)));
    const auto options = torch::optim::AdamWOptions(2e-2).weight_decay(0.01);
    // FusedAdamW tracks the adapter's slots (per-slot AdamW state), which must resume exactly too.
    if (kind == "FusedAdamW") return std::make_unique<increlora::FusedAdamW>(groups, options);
    return std::make_unique<torch::optim::AdamW>(groups, options);
  }
  std::vector<torch::optim::OptimizerParamGroup> groups{{adapter}, {head}};
  groups[1].set_options(std::make_unique<torch::optim::AdamOptions>(torch::optim::AdamOptions(5e-3)));
  return std::make_unique<torch::optim::Adam>(groups, torch::optim::AdamOptions(2e-2).amsgrad(kind == "Adam+amsgrad"));
}

increlora::RankAllocatorOptions allocator_options() {
  // Budget 3 × 3 = 9 from 3: six rounds at steps 3, 6, ..., 18; advance learning draws fresh reserves from
  // the generator at every round, so the generator's state is part of what must resume.
  return increlora::RankAllocatorOptions().lora_r(1).target_rank(3).init_warmup(2).incre_interval(3).top_h(1)
      .incre_rank_num(1).advance_learn(true).total_step(40);
}

// One training run: the model, optimizer, allocator and warmup of a fresh process.
struct Run {
  explicit Run(const std::string& kind) {
    torch::manual_seed(7);  // the same base weights in every run (as a pretrained checkpoint would give)
    net = Net();
    increlora::mark_only_lora_as_trainable(*net);
    for (auto& p : net->head->parameters()) p.set_requires_grad(true);
    optimizer = make_optimizer(kind, net);
    allocator = std::make_unique<increlora::RankAllocator>(*net, allocator_options());
    warmup = std::make_unique<increlora::RestartWarmup>(*net, increlora::RestartWarmupOptions(4, 40));
  }
  // Steps [first, last]; returns the losses.
  std::vector<float> train(int64_t first, int64_t last, const torch::Tensor& x, const torch::Tensor& y) {
    std::vector<float> losses;
    for (int64_t step = first; step <= last; ++step) {
      const auto batch = x.narrow(0, (step % 4) * 8, 8);
      const auto target = y.narrow(0, (step % 4) * 8, 8);
      auto loss = torch::nn::functional::mse_loss(net->forward(batch), target) +
                  increlora::compute_orth_regu(*net, 0.1);
      optimizer->zero_grad();
      loss.backward();
      allocator->update_and_increase(*net, step, *optimizer);
      warmup->step(*optimizer, step);
      losses.push_back(loss.item<float>());
    }
    return losses;
  }
  Net net{nullptr};
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::unique_ptr<increlora::RankAllocator> allocator;
  std::unique_ptr<increlora::RestartWarmup> warmup;
};

}  // namespace

TEST_CASE("Resuming from a checkpoint in the middle of the allocation phase continues bit for bit",
          "[checkpoint]") {
  const std::string kind = GENERATE("Adam", "Adam+amsgrad", "AdamW", "FusedAdamW", "SGD");
  CAPTURE(kind);
  TempDir dir;
  torch::manual_seed(3);
  const auto x = torch::randn({32, 8});
  const auto y = torch::randn({32, 2});
  constexpr int64_t kStop = 10, kEnd = 24;

  Run whole(kind);
  auto losses = whole.train(1, kStop, x, y);
  increlora::save_checkpoint(dir.file("ckpt"), *whole.net, *whole.allocator, *whole.optimizer, kStop);
  REQUIRE(whole.allocator->round() == 3);  // mid-way: 3 of 6 rounds done
  REQUIRE_FALSE(whole.allocator->budget_met());
  const auto tail = whole.train(kStop + 1, kEnd, x, y);
  REQUIRE(whole.allocator->budget_met());

  Run resumed(kind);
  const int64_t step = increlora::load_checkpoint(dir.file("ckpt"), *resumed.net, *resumed.allocator,
                                                  *resumed.optimizer);
  CHECK(step == kStop);
  CHECK(resumed.allocator->round() == 3);
  const auto resumed_tail = resumed.train(step + 1, kEnd, x, y);

  CHECK(resumed_tail == tail);
  CHECK(resumed.allocator->rank_pattern() == whole.allocator->rank_pattern());
  CHECK(torch::equal(resumed.allocator->scores(), whole.allocator->scores()));
  const auto expected = increlora::lora_state_dict(*whole.net);
  const auto actual = increlora::lora_state_dict(*resumed.net);
  REQUIRE(actual.size() == expected.size());
  for (const auto& item : expected) {
    CAPTURE(item.key());
    CHECK(torch::equal(actual[item.key()], item.value()));
  }
  CHECK(torch::equal(resumed.net->head->weight, whole.net->head->weight));
  CHECK(torch::equal(resumed.net->head->bias, whole.net->head->bias));
  CHECK(resumed.optimizer->param_groups()[1].options().get_lr() == whole.optimizer->param_groups()[1].options().get_lr());
}

TEST_CASE("A checkpoint stores the optimizer state by parameter name and replaces an earlier one whole",
          "[checkpoint]") {
  TempDir dir;
  torch::manual_seed(3);
  const auto x = torch::randn({32, 8});
  const auto y = torch::randn({32, 2});
  Run run("Adam");
  run.train(1, 4, x, y);
  increlora::save_checkpoint(dir.file("ckpt"), *run.net, *run.allocator, *run.optimizer, 4);
  run.train(5, 5, x, y);
  increlora::save_checkpoint(dir.file("ckpt/"), *run.net, *run.allocator, *run.optimizer, 5);
  CHECK(dir.entries() == std::vector<std::string>{"ckpt"});
  CHECK(dir.entries("ckpt") == std::vector<std::string>{"adapter.safetensors", "adapter_config.json",
                                                         "trainer_state.json", "trainer_state.safetensors"});
  const increlora::SafetensorsFile file(dir.file("ckpt/trainer_state.safetensors"));
  CHECK(file.contains("optimizer.fc0.lora_A.exp_avg"));
  CHECK(file.contains("optimizer.head.weight.exp_avg_sq"));
  CHECK(file.contains("model.head.weight"));
  CHECK(file.contains("allocator.sensitivity"));
  CHECK(file.contains("rng.cpu"));
  const auto& state = run.optimizer->state().at(run.net->layers[1]->lora_B.unsafeGetTensorImpl());
  CHECK(torch::equal(file.tensor("optimizer.fc1.lora_B.exp_avg"),
                     static_cast<const torch::optim::AdamParamState&>(*state).exp_avg()));
  CHECK_THAT(increlora::test::read_bytes(dir.file("ckpt/trainer_state.json")), HasSubstring("\"step\": 5"));
}

TEST_CASE("Loading a checkpoint into another optimizer or model fails before changing anything",
          "[checkpoint]") {
  TempDir dir;
  torch::manual_seed(3);
  const auto x = torch::randn({32, 8});
  const auto y = torch::randn({32, 2});
  Run run("Adam");
  run.train(1, 7, x, y);
  increlora::save_checkpoint(dir.file("ckpt"), *run.net, *run.allocator, *run.optimizer, 7);

  SECTION("another optimizer type") {
    Run other("SGD");
    const auto before = increlora::lora_state_dict(*other.net)["fc0.lora_A"].clone();
    CHECK_THROWS_WITH(increlora::load_checkpoint(dir.file("ckpt"), *other.net, *other.allocator, *other.optimizer),
                      HasSubstring("holds the state of a Adam optimizer but the optimizer given is SGD"));
    CHECK(torch::equal(other.net->layers[0]->lora_A, before));
    CHECK(other.net->layers[0]->rank() == 1);
  }
  SECTION("other parameter groups") {
    Run other("Adam");
    torch::optim::Adam single(other.net->parameters(), torch::optim::AdamOptions(1e-3));
    CHECK_THROWS_WITH(increlora::load_checkpoint(dir.file("ckpt"), *other.net, *other.allocator, single),
                      HasSubstring("the checkpoint's optimizer has 2 parameter groups but the optimizer given has 1"));
  }
  SECTION("a missing or damaged state") {
    Run other("Adam");
    CHECK_THROWS_WITH(increlora::load_checkpoint(dir.file("nothing"), *other.net, *other.allocator, *other.optimizer),
                      HasSubstring("has no trainer_state.json; pass a folder written by save_checkpoint"));
    increlora::test::write_bytes(dir.file("ckpt/trainer_state.json"), "{\"format\": \"increlora-checkpoint\"}");
    CHECK_THROWS_WITH(increlora::load_checkpoint(dir.file("ckpt"), *other.net, *other.allocator, *other.optimizer),
                      HasSubstring("lacks a field or has one of the wrong type"));
    CHECK(other.net->layers[0]->rank() == 1);
  }
}
