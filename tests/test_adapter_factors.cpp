// AdapterFactorScope: the adapter factors of many layers computed together give the layers exactly the outputs,
// gradients and importance scores they compute on their own, and a layer whose tensors changed computes its own.
#include "support.hpp"

#include <increlora/detail/adapter_factors.hpp>

#include <torch/nn/functional/loss.h>

#include <optional>
#include <vector>

namespace {

using increlora::SVDLinearImpl;
using increlora::SVDLinearOptions;
using increlora::detail::AdapterFactorScope;
using increlora::test::TinyNet;

std::vector<SVDLinearImpl*> layers_of(TinyNet& net) {
  std::vector<SVDLinearImpl*> out;
  for (auto& layer : net->fc) out.push_back(layer.get());
  return out;
}

struct Pass {
  torch::Tensor y, x_grad;
  std::vector<torch::Tensor> grads, scores;
};

// One forward and backward of `net` (dropout drawn from `seed`), inside a scope of its layers or not.
Pass forward_backward(TinyNet& net, const torch::Tensor& input, bool scoped, uint64_t seed) {
  for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();
  std::vector<torch::Tensor> sinks;
  for (auto& layer : net->fc) {
    sinks.push_back(torch::zeros({}, layer->lora_E.options().requires_grad(false)));
    layer->set_score_sink(sinks.back());
  }
  const auto x = input.detach().clone().requires_grad_(true);
  torch::manual_seed(seed);
  Pass pass;
  {
    std::optional<AdapterFactorScope> scope;
    if (scoped) scope.emplace(layers_of(net));
    pass.y = net(x);
    (pass.y.to(torch::kFloat).square().sum() + increlora::compute_orth_regu(*net, 0.1)).backward();
  }
  pass.x_grad = x.grad();
  for (const auto& p : net->parameters()) {
    if (p.requires_grad()) pass.grads.push_back(p.grad().clone());
  }
  pass.scores = sinks;
  for (auto& layer : net->fc) layer->set_score_sink({});
  return pass;
}

void check_same(const Pass& a, const Pass& b) {
  CHECK(torch::equal(a.y, b.y));
  CHECK(torch::equal(a.x_grad, b.x_grad));
  REQUIRE(a.grads.size() == b.grads.size());
  for (size_t i = 0; i < a.grads.size(); ++i) {
    INFO("gradient " << i);
    CHECK(torch::equal(a.grads[i], b.grads[i]));
  }
  for (size_t i = 0; i < a.scores.size(); ++i) CHECK(torch::equal(a.scores[i], b.scores[i]));
}

}  // namespace

TEST_CASE("Adapter factors computed for many layers at once change no output, gradient or score", "[factors]") {
  auto device = GENERATE(from_range(increlora::test::devices()));
  const bool bf16 = GENERATE(false, true);
  CAPTURE(device, bf16);
  torch::manual_seed(3);
  TinyNet net(12, 4, SVDLinearOptions(12, 12).r(2).lora_alpha(8).lora_dropout(0.1).capacity(6));
  net->to(torch::Device(device));
  increlora::mark_only_lora_as_trainable(*net);
  {
    torch::NoGradGuard no_grad;
    for (auto& layer : net->fc) layer->lora_E.normal_();  // λ = 0 would hide a wrong coefficient
    net->fc[1]->set_reserve(2);                             // reserve slots: held coefficients, no λ gradient
    net->fc[3]->grow(1, /*step=*/0, /*reserve_after=*/0);
    if (bf16) {
      // The benchmark's bf16 mode: the frozen base in bf16, the banks float32.
      for (auto& layer : net->fc) {
        layer->weight.set_data(layer->weight.to(torch::kBFloat16));
        layer->bias.set_data(layer->bias.to(torch::kBFloat16));
      }
    }
  }
  const auto input = torch::randn({5, 12}, torch::TensorOptions().device(device))
                         .to(bf16 ? torch::kBFloat16 : torch::kFloat);
  const auto own = forward_backward(net, input, /*scoped=*/false, 11);
  const auto scoped = forward_backward(net, input, /*scoped=*/true, 11);
  check_same(own, scoped);
}

TEST_CASE("Inside an AdapterFactorScope a layer whose tensors changed computes its own factors", "[factors]") {
  torch::manual_seed(4);
  TinyNet net(8, 3, SVDLinearOptions(8, 8).r(2).capacity(4));
  {
    torch::NoGradGuard no_grad;
    for (auto& layer : net->fc) layer->lora_E.normal_();
  }
  const auto x = torch::randn({3, 8});
  AdapterFactorScope scope(layers_of(net));
  auto& first = *net->fc[0];
  REQUIRE(scope.factors(first, torch::kFloat) != nullptr);
  const auto before = net(x);
  {
    torch::NoGradGuard no_grad;
    first.lora_E.mul_(2.0);  // as an optimizer step would, inside the scope
  }
  CHECK(scope.factors(first, torch::kFloat) == nullptr);
  CHECK(scope.factors(*net->fc[1], torch::kFloat) != nullptr);
  const auto inside = net(x);
  torch::Tensor outside;
  {
    // An empty inner scope hides the one above: every layer computes its own factors.
    AdapterFactorScope empty({});
    outside = net(x);
  }
  CHECK(torch::equal(inside, outside));
  CHECK(!torch::equal(inside, before));

  first.grow(1, /*step=*/1, /*reserve_after=*/0);  // a rank change: the factors of that layer are stale too
  CHECK(scope.factors(first, torch::kFloat) == nullptr);
}

TEST_CASE("An AdapterFactorScope leaves layers it does not hold, or too few of one shape, to compute their own",
          "[factors]") {
  torch::manual_seed(5);
  TinyNet net(8, 2, SVDLinearOptions(8, 8).r(1).capacity(4));
  TinyNet other(8, 3, SVDLinearOptions(8, 8).r(1).capacity(4));
  AdapterFactorScope scope(layers_of(net));
  CHECK(AdapterFactorScope::current() == &scope);
  CHECK(scope.factors(*net->fc[0], torch::kFloat) == nullptr);    // a group of 2 < kMinGroup
  CHECK(scope.factors(*other->fc[0], torch::kFloat) == nullptr);  // not one of its layers
  {
    AdapterFactorScope inner(layers_of(other));
    CHECK(AdapterFactorScope::current() == &inner);
    CHECK(inner.factors(*other->fc[0], torch::kFloat) != nullptr);
    other->fc[2]->merge();  // a merged layer runs its base product only
    CHECK(inner.factors(*other->fc[2], torch::kFloat) == nullptr);
  }
  CHECK(AdapterFactorScope::current() == &scope);
}
