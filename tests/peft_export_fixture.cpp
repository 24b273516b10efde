// The C++ half of the PEFT export check (tests/python/test_peft_export.py runs it): trains a small MLP with
// IncreLoRA until the rank budget is met, so that the layers end at different ranks, then writes into the
// folder given as the only argument:
//   base.safetensors     the frozen base weights, named as the Python MLP names them
//   io.safetensors       inputs "x" and the adapted model's outputs "y" (eval mode)
//   merged.safetensors   merge_and_export of the trained model
//   peft/                export_peft of the trained model
//   ranks.txt            "<module> <rank>" per adapted layer
// The module names match this Python model:
//   fc1 = Linear(16, 32); fc2 = Linear(32, 32); block.fc1 = Linear(32, 32); head = Linear(32, 4)
//   forward: head(tanh(block.fc1(tanh(fc2(tanh(fc1(x)))))))
#include <increlora/allocator.hpp>
#include <increlora/modules.hpp>
#include <increlora/regularization.hpp>
#include <increlora/safetensors.hpp>
#include <increlora/serialize.hpp>
#include <increlora/svd_linear.hpp>

#include <torch/nn/functional/loss.h>
#include <torch/nn/module.h>
#include <torch/optim/adam.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace {

using increlora::SVDLinear;
using increlora::SVDLinearOptions;

SVDLinearOptions adapted(int64_t in, int64_t out) {
  return SVDLinearOptions(in, out).r(1).lora_alpha(8.0).capacity(8);
}

struct BlockImpl : torch::nn::Module {
  BlockImpl() { fc1 = register_module("fc1", SVDLinear(adapted(32, 32))); }
  SVDLinear fc1{nullptr};
};
TORCH_MODULE(Block);

struct MlpImpl : torch::nn::Module {
  MlpImpl() {
    fc1 = register_module("fc1", SVDLinear(adapted(16, 32)));
    fc2 = register_module("fc2", SVDLinear(adapted(32, 32)));
    block = register_module("block", Block());
    head = register_module("head", SVDLinear(SVDLinearOptions(32, 4)));  // r = 0: a plain Linear
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::tanh(fc1(x));
    x = torch::tanh(fc2(x));
    x = torch::tanh(block->fc1(x));
    return head(x);
  }
  SVDLinear fc1{nullptr}, fc2{nullptr}, head{nullptr};
  Block block{nullptr};
};
TORCH_MODULE(Mlp);

}  // namespace

// `import BASE PEFT_DIR IO`: the MLP with the base weights of BASE, its adapters started from the PEFT adapter
// in PEFT_DIR (increlora::import_peft); writes its output on IO's "x" as IO's "y_cpp" (to IO + ".out").
int import_mode(const std::string& base, const std::string& peft_dir, const std::string& io) {
  Mlp model;
  increlora::load_state_into(*model, increlora::SafetensorsFile(base), nullptr, /*strict=*/false);
  const auto report = increlora::import_peft(*model, peft_dir);
  model->eval();
  torch::NoGradGuard no_grad;
  const auto x = increlora::SafetensorsFile(io).tensor("x");
  increlora::save_safetensors(io + ".out", {{"y_cpp", model->forward(x)}});
  std::printf("imported %s:", report.peft_type.c_str());
  for (const auto& [name, rank] : report.ranks) std::printf(" %s=%lld", name.c_str(), static_cast<long long>(rank));
  std::printf("\n");
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 5 && std::string(argv[1]) == "import") {
    try {
      return import_mode(argv[2], argv[3], argv[4]);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "peft_export_fixture import: %s\n", e.what());
      return 1;
    }
  }
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUTPUT_DIR | %s import BASE PEFT_DIR IO\n", argv[0], argv[0]);
    return 2;
  }
  const std::string dir = argv[1];
  try {
    torch::manual_seed(0);
    Mlp model;
    // The frozen base, saved before training (training never changes it).
    std::vector<std::pair<std::string, torch::Tensor>> base;
    for (const auto& p : model->named_parameters()) {
      if (p.key().find("lora_") == std::string::npos) base.emplace_back(p.key(), p.value());
    }
    increlora::save_safetensors(dir + "/base.safetensors", base);

    increlora::mark_only_lora_as_trainable(*model);
    torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(3e-2));
    // Budget 8 from 3 over 3 layers: the ranks cannot all be equal at the end.
    increlora::RankAllocator allocator(*model, increlora::RankAllocatorOptions()
                                                   .lora_r(1).target_total_rank(8).init_warmup(2).incre_interval(2)
                                                   .top_h(1).incre_rank_num(1).advance_learn(true).total_step(40));
    const auto x = torch::randn({64, 16});
    const auto target = torch::randn({64, 4}) * 2;
    for (int64_t step = 1; step <= 30; ++step) {
      auto loss = torch::nn::functional::mse_loss(model->forward(x), target) + increlora::compute_orth_regu(*model);
      optimizer.zero_grad();
      loss.backward();
      allocator.update_and_increase(*model, step, optimizer);
      optimizer.step();
    }
    if (!allocator.budget_met()) {
      std::fprintf(stderr, "peft_export_fixture: the rank budget was not met\n");
      return 1;
    }
    model->eval();
    torch::NoGradGuard no_grad;
    const auto probe = torch::randn({10, 16});
    increlora::save_safetensors(dir + "/io.safetensors", {{"x", probe}, {"y", model->forward(probe)}});
    increlora::merge_and_export(*model, dir + "/merged.safetensors");
    increlora::export_peft(*model, dir + "/peft");
    increlora::export_peft(*model, dir + "/peft-uniform", increlora::PeftExportOptions().uniform_rank(true));
    increlora::export_peft(*model, dir + "/peft-head", increlora::PeftExportOptions().modules_to_save({"head"}));
    std::ofstream ranks(dir + "/ranks.txt");
    for (const auto& [name, rank] : allocator.rank_pattern()) ranks << name << ' ' << rank << '\n';
  } catch (const std::exception& e) {
    std::fprintf(stderr, "peft_export_fixture: %s\n", e.what());
    return 1;
  }
  return 0;
}
