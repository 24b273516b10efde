// The seed README's quickstart, in C++: a small model whose Linear layers are replaced by SVDLinear, only the
// adapters trainable, trained with the orthogonality regularizer and the RankAllocator, and the learned rank
// pattern printed.
//
//   quickstart [--steps N] [--device cpu|cuda]
#include <increlora/apps/flags.hpp>
#include <increlora/increlora.hpp>

#include <torch/cuda.h>
#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include <fmt/format.h>

#include <cstdlib>
#include <cstring>
#include <string>

namespace {

// ===== Before =====  torch::nn::Linear fc1{nullptr}, fc2{nullptr}, head{nullptr};
// ===== After  =====  increlora::SVDLinear where an adapter may go (r = 0 would keep a plain Linear).
struct BigModelImpl : torch::nn::Module {
  BigModelImpl() {
    const auto adapted = [](int64_t in, int64_t out) {
      return increlora::SVDLinear(increlora::SVDLinearOptions(in, out).r(1).lora_alpha(8));
    };
    fc1 = register_module("fc1", adapted(32, 64));
    fc2 = register_module("fc2", adapted(64, 64));
    fc3 = register_module("fc3", adapted(64, 64));
    head = register_module("head", adapted(64, 8));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = torch::gelu(fc1(x));
    x = torch::gelu(fc2(x));
    x = torch::gelu(fc3(x));
    return head(x);
  }
  increlora::SVDLinear fc1{nullptr}, fc2{nullptr}, fc3{nullptr}, head{nullptr};
};
TORCH_MODULE(BigModel);

}  // namespace

int main(int argc, char** argv) {
  int64_t total_step = 400;
  std::string device_name = "cpu";
  increlora::apps::Flags flags("quickstart");
  flags.add("steps", &total_step, "training steps");
  flags.add("device", &device_name, "cpu or cuda");
  try {
    flags.parse(argc, argv);
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "quickstart: {}\n{}", e.what(), flags.usage());
    return 2;
  }
  if (flags.help()) {
    fmt::print("{}", flags.usage());
    return 0;
  }
  if (device_name == "cuda" && !torch::cuda::is_available()) {
    fmt::print(stderr, "--device cuda: no CUDA device is available\n");
    return 2;
  }
  const torch::Device device(device_name);
  torch::manual_seed(0);

  BigModel model;
  // The frozen "pretrained" weights and a task that shifts them: a teacher with random weights.
  BigModel teacher;
  model->to(device);
  teacher->to(device);
  // This sets requires_grad to false for all parameters without the string "lora_" in their names.
  increlora::mark_only_lora_as_trainable(*model);
  // FusedAdamW is torch::optim::AdamW with fused kernels; given to the allocator, it also gives triplets that start
  // training fresh AdamW state, as the original's new parameter groups have.
  increlora::FusedAdamW optimizer(model->parameters(), torch::optim::AdamWOptions(5e-3).weight_decay(0.0));

  // Initialize the RankAllocator: grow from rank 1 to an average of 4 per layer.
  increlora::RankAllocator allocator(
      *model, increlora::RankAllocatorOptions()
                  .lora_r(1).target_rank(4).init_warmup(total_step / 8).incre_interval(total_step / 16)
                  .top_h(2).beta1(0.85).beta2(0.85).total_step(total_step).advance_learn(true)
                  .log([](const std::string& line) { fmt::print("{}\n", line); }));
  // This loop keeps the learning rate constant, so new triplets warm up relative to it (kScaleCurrent); with the
  // original's linear warmup and decay, leave the schedule at its default, RestartSchedule::kOriginal.
  increlora::RestartWarmup warmup(*model, increlora::RestartWarmupOptions(/*warmup_steps=*/total_step / 20 + 1, total_step)
                                              .schedule(increlora::RestartSchedule::kScaleCurrent));

  for (int64_t global_step = 0; global_step < total_step; ++global_step) {
    const auto x = torch::randn({64, 32}, torch::TensorOptions().device(device));
    torch::Tensor target;
    {
      torch::NoGradGuard no_grad;
      target = teacher(x);
    }
    optimizer.zero_grad();
    auto task_loss = (model(x) - target).pow(2).mean();
    // ===== Before =====  loss.backward(); optimizer.step();
    (task_loss + increlora::compute_orth_regu(*model, /*regu_weight=*/0.1)).backward();
    allocator.update_and_increase(*model, global_step, optimizer);
    warmup.step(optimizer, global_step);
    if (global_step % (total_step / 8) == 0 || global_step + 1 == total_step) {
      fmt::print("step {:>5}  loss {:.5f}  total rank {}\n", global_step, task_loss.item<double>(),
                 allocator.total_rank());
    }
  }

  fmt::print("rank pattern (budget {} {}):\n", allocator.budget(), allocator.budget_met() ? "met" : "NOT met");
  for (const auto& [name, rank] : allocator.rank_pattern()) fmt::print("  {:<6} {}\n", name, rank);
  return allocator.budget_met() ? 0 : 1;
}
