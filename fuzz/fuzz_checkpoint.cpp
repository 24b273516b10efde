// libFuzzer target: load_checkpoint's reading of trainer_state.json. The input is trainer_state.json; beside it
// lie the valid adapter and trainer_state.safetensors of the same save (from the fixture: a small model trained
// into the middle of its allocation phase, with Adam over two parameter groups and a user state), and the
// checkpoint is loaded into a fresh model, allocator and optimizer built as at the start of that run.
// Seed: the real trainer_state.json of that save.
#include "fuzz_support.hpp"

#include <increlora/allocator.hpp>
#include <increlora/checkpoint.hpp>
#include <increlora/modules.hpp>
#include <increlora/regularization.hpp>
#include <increlora/serialize.hpp>
#include <increlora/svd_linear.hpp>

#include <c10/util/Exception.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/linear.h>
#include <torch/optim/adam.h>
#include <torch/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace increlora::fuzz;

constexpr const char* kStateJson = "trainer_state.json";
constexpr const char* kStateTensors = "trainer_state.safetensors";

struct NetImpl : torch::nn::Module {
  NetImpl() {
    for (int i = 0; i < 2; ++i) {
      layers.push_back(register_module(
          "fc" + std::to_string(i),
          increlora::SVDLinear(increlora::SVDLinearOptions(6, 6).r(1).lora_alpha(4.0).capacity(6))));
    }
    head = register_module("head", torch::nn::Linear(6, 2));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& layer : layers) x = torch::tanh(layer(x));
    return head(x);
  }
  std::vector<increlora::SVDLinear> layers;
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Net);

// The model, optimizer and allocator of a fresh process, as at the start of the saved run.
struct Run {
  Run() {
    torch::manual_seed(7);
    net = Net();
    increlora::mark_only_lora_as_trainable(*net);
    for (auto& p : net->head->parameters()) p.set_requires_grad(true);
    std::vector<torch::Tensor> adapter, head;
    for (const auto& p : net->named_parameters()) {
      if (!p.value().requires_grad()) continue;
      (p.key().rfind("head.", 0) == 0 ? head : adapter).push_back(p.value());
    }
    std::vector<torch::optim::OptimizerParamGroup> groups{{adapter}, {head}};
    groups[1].set_options(std::make_unique<torch::optim::AdamOptions>(torch::optim::AdamOptions(5e-3)));
    optimizer = std::make_unique<torch::optim::Adam>(groups, torch::optim::AdamOptions(2e-2));
    allocator = std::make_unique<increlora::RankAllocator>(
        *net, increlora::RankAllocatorOptions().lora_r(1).target_rank(3).init_warmup(2).incre_interval(2).top_h(1)
                  .incre_rank_num(1).advance_learn(true).total_step(20));
  }
  Net net{nullptr};
  std::unique_ptr<torch::optim::Adam> optimizer;
  std::unique_ptr<increlora::RankAllocator> allocator;
};

std::string work;  // the scratch checkpoint folder: the fixture's other files and the input

void build_fixture(const std::string& dir) {
  Run run;
  const auto x = torch::randn({8, 6});
  const auto y = torch::randn({8, 2});
  constexpr int64_t kSteps = 5;  // rounds at steps 2 and 4: mid-way through the allocation
  for (int64_t step = 1; step <= kSteps; ++step) {
    auto loss = torch::nn::functional::mse_loss(run.net->forward(x), y) + increlora::compute_orth_regu(*run.net, 0.1);
    run.optimizer->zero_grad();
    loss.backward();
    run.allocator->update_and_increase(*run.net, step, *run.optimizer);
    run.optimizer->step();
  }
  increlora::save_checkpoint(dir + "/ckpt", *run.net, run.allocator.get(), *run.optimizer, kSteps,
                             R"({"epoch": 1, "order": [3, 1, 2]})");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const auto dir = fixture("fuzz_checkpoint", build_fixture) + "/ckpt";
  seed(kStateJson, read_file(dir + "/" + kStateJson));
  work = scratch_dir() + "/ckpt";
  make_dirs(work);
  for (const char* name : {increlora::kAdapterTensorsFile, increlora::kAdapterConfigFile, kStateTensors}) {
    copy_file(dir + "/" + name, work + "/" + name);
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  write_file(work + "/" + kStateJson, data, size);
  Run run;
  try {
    std::string user;
    const int64_t step = increlora::load_checkpoint(work, *run.net, run.allocator.get(), *run.optimizer,
                                                    /*restore_rng=*/true, &user);
    (void)step;
    if (user.empty() || user.front() != '{') fail("load_checkpoint returned a user state that is no object: " + user);
    // The restored state must be usable: one more step of training.
    auto loss = run.net->forward(torch::ones({2, 6})).sum();
    run.optimizer->zero_grad();
    loss.backward();
    run.optimizer->step();
  } catch (const c10::Error&) {
    // The expected refusal of a trainer state that is not valid or does not fit the run.
  }
  return 0;
}
