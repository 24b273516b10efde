// GraphedStep: a training loop replayed from CUDA graphs makes the same updates and the same allocations as
// the eager loop, re-captures when the rank state or the inputs change, and runs eagerly on the CPU.
#include "support.hpp"

#include <torch/nn/functional/loss.h>

#include <map>
#include <string>
#include <vector>

namespace {

using increlora::test::TinyNet;

struct RunResult {
  std::vector<double> losses;
  std::map<std::string, int64_t> ranks;
  std::vector<torch::Tensor> params;
  increlora::GraphedStepStats stats;
};

// 3 adapted layers growing from rank 1 to 3 each (6 rounds, one every 5 steps from step 10), then trained at
// the budget: the run passes through 7 rank states, scoring in all but the last.
RunResult train(const std::string& device, bool graphed, int64_t steps, bool zero_grad_after_step) {
  torch::manual_seed(5);
  TinyNet net(16, 3, increlora::SVDLinearOptions(16, 16).r(1).lora_alpha(2.0).capacity(4));
  net->to(torch::Device(device));
  increlora::mark_only_lora_as_trainable(*net);
  const auto opts = torch::TensorOptions().device(device);
  const auto x = torch::randn({8, 16}, opts);
  const auto y = torch::randn({8, 16}, opts) * 0.5;
  increlora::FusedAdamW optimizer(net->parameters(), torch::optim::AdamWOptions(2e-2).weight_decay(0.01));
  increlora::RankAllocator allocator(*net, increlora::RankAllocatorOptions().lora_r(1).target_rank(3).init_warmup(5)
                                              .incre_interval(5).top_h(1));
  auto forward_backward = [&](const std::vector<torch::Tensor>& in) {
    auto loss = torch::nn::functional::mse_loss(net(in[0]), in[1]) + increlora::compute_orth_regu(*net, 0.1);
    loss.backward();
    return loss;
  };
  increlora::GraphedStep graphed_step(*net, forward_backward, increlora::GraphedStepOptions().max_graphs(3));
  RunResult r;
  for (int64_t t = 0; t < steps; ++t) {
    torch::Tensor loss;
    if (graphed) {
      loss = graphed_step({x, y});
    } else {
      optimizer.zero_grad();
      loss = forward_backward({x, y});
    }
    r.losses.push_back(loss.item<double>());
    allocator.update_and_increase(*net, t, optimizer);
    optimizer.step();
    if (zero_grad_after_step) optimizer.zero_grad();
  }
  r.ranks = allocator.rank_pattern();
  for (const auto& p : net->parameters()) r.params.push_back(p.detach().cpu().clone());
  r.stats = graphed_step.stats();
  return r;
}

}  // namespace

TEST_CASE("GraphedStep trains, grows and scores exactly as the eager loop", "[graphed_step]") {
  auto device = GENERATE(from_range(increlora::test::devices()));
  const bool zero_grad_after_step = GENERATE(false, true);
  CAPTURE(device, zero_grad_after_step);
  const int64_t steps = 45;
  const auto eager = train(device, /*graphed=*/false, steps, false);
  const auto graphed = train(device, /*graphed=*/true, steps, zero_grad_after_step);

  CHECK(graphed.ranks == eager.ranks);
  int64_t total = 0;
  for (const auto& [name, rank] : graphed.ranks) total += rank;
  CHECK(total == 9);  // the budget was met inside the run
  REQUIRE(graphed.losses.size() == eager.losses.size());
  for (size_t t = 0; t < eager.losses.size(); ++t) {
    INFO("step " << t);
    CHECK(graphed.losses[t] == Approx(eager.losses[t]).epsilon(1e-5).margin(1e-7));
  }
  REQUIRE(graphed.params.size() == eager.params.size());
  for (size_t i = 0; i < eager.params.size(); ++i) CHECK_ALLCLOSE(graphed.params[i], eager.params[i], 1e-4, 1e-6);

  const auto& s = graphed.stats;
  if (device == "cuda" && increlora::GraphedStep::cuda_graphs_compiled()) {
    CHECK(s.eager_steps == 2);  // the warm-up
    CHECK(s.replays == steps - 2);
    // One graph per rank state (7) at least; scoring switches off with the last growth, in the same state change.
    CHECK(s.captures >= 7);
    CHECK(s.captures <= 8);
    CHECK(s.evictions == s.captures - 3);  // max_graphs(3)
  } else {
    CHECK(s.eager_steps == steps);
    CHECK(s.replays == 0);
    CHECK(s.captures == 0);
  }
}

TEST_CASE("GraphedStep re-captures for new input shapes and returns losses that later steps leave alone",
          "[graphed_step]") {
  auto device = GENERATE(from_range(increlora::test::devices()));
  CAPTURE(device);
  torch::manual_seed(3);
  TinyNet net(8, 2, increlora::SVDLinearOptions(8, 8).r(2).lora_alpha(4.0).capacity(4));
  net->to(torch::Device(device));
  increlora::mark_only_lora_as_trainable(*net);
  increlora::GraphedStep step(*net, [&](const std::vector<torch::Tensor>& in) {
    auto loss = net(in[0]).pow(2).mean();
    loss.backward();
    return loss;
  });
  const auto opts = torch::TensorOptions().device(device);
  std::vector<torch::Tensor> batches{torch::randn({4, 8}, opts), torch::randn({4, 8}, opts),
                                     torch::randn({6, 8}, opts), torch::randn({4, 8}, opts)};
  std::vector<torch::Tensor> losses;
  for (int round = 0; round < 2; ++round) {
    for (const auto& b : batches) losses.push_back(step({b}));
  }
  // No optimizer step: the parameters never change, so each loss is the eager value of its batch, and the
  // earlier returned tensors still hold their own values.
  for (size_t i = 0; i < losses.size(); ++i) {
    torch::NoGradGuard no_grad;
    const auto expected = net(batches[i % batches.size()]).pow(2).mean();
    INFO("call " << i);
    CHECK(losses[i].item<double>() == Approx(expected.item<double>()).epsilon(1e-5));
  }
  // The gradient of the last call is the one a fresh eager backward gives (zeroed, not accumulated).
  const auto grad_after_graphs = net->fc[0]->lora_A.grad().clone();
  net->zero_grad();
  net(batches.back()).pow(2).mean().backward();
  CHECK_ALLCLOSE(grad_after_graphs, net->fc[0]->lora_A.grad(), 1e-4, 1e-7);
  if (step.uses_graphs()) {
    CHECK(step.stats().captures == 2);  // one per input shape ([4, 8] and [6, 8])
    // reset() drops the graphs and the held gradients: the next steps warm up eagerly, then capture again.
    step.reset();
    for (int i = 0; i < 3; ++i) (void)step({batches[0]});
    CHECK(step.stats().eager_steps == 4);
    CHECK(step.stats().captures == 3);
  }
}

TEST_CASE("GraphedStep draws fresh dropout masks at each replay", "[graphed_step]") {
  if (!torch::cuda::is_available() || !increlora::GraphedStep::cuda_graphs_compiled()) {
    SUCCEED("no CUDA graphs in this build or machine");
    return;
  }
  torch::manual_seed(11);
  TinyNet net(32, 1, increlora::SVDLinearOptions(32, 32).r(2).lora_alpha(8.0).lora_dropout(0.5));
  net->to(torch::kCUDA);
  {
    torch::NoGradGuard no_grad;
    for (auto& layer : net->fc) layer->lora_E.fill_(1.0);  // make the adapter branch (and its dropout) matter
  }
  increlora::mark_only_lora_as_trainable(*net);
  increlora::GraphedStep step(*net, [&](const std::vector<torch::Tensor>& in) {
    auto loss = net(in[0]).sum();
    loss.backward();
    return loss;
  });
  const auto x = torch::randn({16, 32}, torch::kCUDA);
  std::vector<double> values;
  for (int i = 0; i < 6; ++i) values.push_back(step({x}).item<double>());
  REQUIRE(step.stats().replays == 4);
  CHECK(values[3] != values[4]);
  CHECK(values[4] != values[5]);
}

TEST_CASE("GraphedStepOptions are checked", "[graphed_step]") {
  TinyNet net(4, 1, increlora::SVDLinearOptions(4, 4).r(1));
  auto fn = [](const std::vector<torch::Tensor>&) { return torch::zeros({}); };
  CHECK_THROWS_WITH(increlora::GraphedStep(*net, fn, increlora::GraphedStepOptions().warmup_steps(0)),
                    HasSubstring("warmup_steps must be >= 1"));
  CHECK_THROWS_WITH(increlora::GraphedStep(*net, fn, increlora::GraphedStepOptions().max_graphs(0)),
                    HasSubstring("max_graphs must be >= 1"));
  CHECK_THROWS_WITH(increlora::GraphedStep(*net, nullptr), HasSubstring("step function is empty"));
  increlora::GraphedStep step(*net, fn);
  CHECK_THROWS_WITH(step({torch::Tensor()}), HasSubstring("input 0 is undefined"));
}
