// How many operators the hot path dispatches: on a GPU an adapted step is a few thousand mostly small kernels, each
// costing a few microseconds whatever it computes (issue 14's profiles), so adding one per layer is a slowdown that
// no CPU timing shows. These cases hold the counts of the step's parts (benchmarks/op_count.hpp counts top-level
// ATen operators that do work, about one kernel each on CUDA) at what they are now: a change that adds operators
// must raise a budget here, and say why.
#include "support.hpp"

#include "../benchmarks/op_count.hpp"

#include <increlora/detail/adapter_factors.hpp>

#include <torch/autograd.h>

#include <functional>
#include <map>
#include <string>

using increlora::SVDLinear;
using increlora::SVDLinearOptions;
using increlora_bench::OpCounter;

namespace {

// Operators `fn` dispatches, by name (the part "other": no step scopes here).
std::map<std::string, int64_t> ops_of(const std::function<void()>& fn) {
  OpCounter counter;
  fn();
  const auto counts = counter.counts();
  const auto it = counts.find("other");
  return it == counts.end() ? std::map<std::string, int64_t>{} : it->second;
}

int64_t total(const std::map<std::string, int64_t>& ops) {
  int64_t n = 0;
  for (const auto& [name, c] : ops) n += c;
  return n;
}

std::string describe(const std::map<std::string, int64_t>& ops) {
  std::string s;
  for (const auto& [name, c] : ops) s += name + " x" + std::to_string(c) + "; ";
  return s;
}

}  // namespace

TEST_CASE("an adapted layer's forward and backward dispatch a fixed handful of operators", "[op_budget]") {
  const double dropout = GENERATE(0.0, 0.1);
  const bool scoring = GENERATE(false, true);
  CAPTURE(dropout, scoring);
  torch::manual_seed(0);
  SVDLinear layer(SVDLinearOptions(16, 24).r(2).lora_alpha(16).lora_dropout(dropout).capacity(8));
  increlora::mark_only_lora_as_trainable(*layer);
  layer->train();
  const auto sink = torch::zeros({});
  if (scoring) layer->set_score_sink(sink);
  const auto x = torch::randn({3, 5, 16}).requires_grad_(true);
  const auto dy = torch::randn({3, 5, 24});

  torch::Tensor y;
  const auto forward = ops_of([&] { y = layer(x); });
  INFO("forward: " << describe(forward));
  // The base product; the mask (dropout only); c = λ ⊙ gate + held; P diag(c); x Qᵀ; its product with P diag(c)
  // added into the output.
  CHECK(total(forward) <= (dropout > 0 ? 6 : 5));

  const auto backward = ops_of([&] { y.backward(dy); });
  INFO("backward: " << describe(backward));
  // G = dyᵀ h; ∂P = G c; ∂λ = diag(Pᵀ G) gate (two); dy P diag(c); ∂Q; the base's input gradient and the adapter's
  // added into it (the mask's scale in the same pass: one more product first). Scoring: diag(λ s) Q, and per block
  // of rows ∂L/∂ΔW, ΔW, their product and its L1 norm, then the add into the sink.
  const int64_t adapter = dropout > 0 ? 9 : 8;
  CHECK(total(backward) <= adapter + (scoring ? 6 : 0));
  CHECK(x.grad().defined());
  CHECK(layer->lora_B.grad().defined());
}

TEST_CASE("with their factors computed together, adapted layers of one shape cost 8 operators and 3-4 each",
          "[op_budget][factors]") {
  const double dropout = GENERATE(0.0, 0.1);
  const int64_t layers = GENERATE(3, 6);
  CAPTURE(dropout, layers);
  torch::manual_seed(0);
  increlora::test::TinyNet net(16, layers, SVDLinearOptions(16, 16).r(2).lora_dropout(dropout).capacity(8));
  increlora::mark_only_lora_as_trainable(*net);
  std::vector<increlora::SVDLinearImpl*> held;
  for (auto& layer : net->fc) held.push_back(layer.get());
  const auto x = torch::randn({4, 16});
  const auto forward = ops_of([&] {
    increlora::detail::AdapterFactorScope scope(held);
    for (auto& layer : net->fc) (void)layer(x);
  });
  INFO("forward: " << describe(forward));
  // The group's factors: λ, gate, held, P and Q stacked, c, P diag(c) (Q needs no cast in float32). Each layer:
  // the base product, the mask (dropout only), x Qᵀ and its product added into the output.
  CHECK(total(forward) <= 7 + layers * (dropout > 0 ? 4 : 3));
}

TEST_CASE("the regularizer's operator count does not grow with the number of layers of one shape", "[op_budget]") {
  const auto count_for = [](int64_t layers) {
    torch::manual_seed(0);
    increlora::test::TinyNet net(8, layers, SVDLinearOptions(8, 8).r(2).capacity(4));
    increlora::mark_only_lora_as_trainable(*net);
    const auto forward = ops_of([&] { (void)increlora::compute_orth_regu(*net, 0.1); });
    auto penalty = increlora::compute_orth_regu(*net, 0.1);
    const auto backward = ops_of([&] { penalty.backward(); });
    INFO(layers << " layers; forward: " << describe(forward) << " backward: " << describe(backward));
    return total(forward) + total(backward);
  };
  const auto two = count_for(2);
  CHECK(two > 0);
  // All layers of one shape are stacked into one batch of Gram matrices: a sixth layer adds no operator.
  CHECK(count_for(6) == two);
}

TEST_CASE("FusedAdamW's step dispatches as many operators for many banks as for a few", "[op_budget]") {
  const auto count_for = [](int64_t layers) {
    torch::manual_seed(0);
    increlora::test::TinyNet net(8, layers, SVDLinearOptions(8, 8).r(2).capacity(4));
    increlora::mark_only_lora_as_trainable(*net);
    std::vector<torch::Tensor> params;
    for (const auto& p : net->parameters()) {
      if (p.requires_grad()) params.push_back(p);
    }
    increlora::FusedAdamW optimizer(params, torch::optim::AdamWOptions(1e-3).weight_decay(0.01));
    optimizer.track_adapter_slots(*net, 0);
    for (int64_t step = 0; step < 3; ++step) {
      optimizer.zero_grad();
      net->forward(torch::randn({4, 8})).sum().backward();
      if (step < 2) {
        optimizer.step();
        continue;
      }
      const auto ops = ops_of([&] { optimizer.step(); });
      INFO(layers << " layers: " << describe(ops));
      return total(ops);
    }
    return int64_t{-1};
  };
  const auto two = count_for(2);
  CHECK(two > 0);
  // Multi-tensor kernels over every bank: the count depends on the groups (dtype, device), not the tensors.
  CHECK(count_for(8) == two);
}
