// RestartWarmup: the update of a triplet that just started is scaled by its warmup factor, with any optimizer.
#include "support.hpp"

#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

using increlora::RestartWarmup;
using increlora::SVDLinear;
using increlora::SVDLinearOptions;

namespace {

// One optimizer step on a fixed loss, with or without the warmup; returns the parameter update (after − before).
template <typename Optimizer, typename OptimizerOptions>
std::vector<torch::Tensor> update_of(SVDLinear layer, OptimizerOptions options, RestartWarmup* warmup, int64_t step,
                                     int64_t steps_before = 0) {
  Optimizer optimizer(layer->parameters(), options);
  torch::manual_seed(99);
  const auto x = torch::randn({16, 6});
  auto run_step = [&](int64_t s, bool with_warmup) {
    optimizer.zero_grad();
    layer(x).pow(2).sum().backward();
    if (with_warmup) {
      warmup->step(optimizer, s);
    } else {
      optimizer.step();
    }
  };
  for (int64_t s = 0; s < steps_before; ++s) run_step(step - steps_before + s, warmup != nullptr);
  std::vector<torch::Tensor> before;
  for (const auto& p : layer->parameters()) before.push_back(p.detach().clone());
  run_step(step, warmup != nullptr);
  std::vector<torch::Tensor> delta;
  size_t i = 0;
  for (const auto& p : layer->parameters()) delta.push_back(p.detach() - before[i++]);
  return delta;
}

SVDLinear grown_layer(bool advance) {
  torch::manual_seed(3);
  SVDLinear layer(SVDLinearOptions(6, 4).r(1).lora_alpha(2).capacity(6));
  {
    torch::NoGradGuard no_grad;
    layer->lora_E.fill_(0.3);
  }
  layer->set_reserve(advance ? 1 : 0);
  {
    torch::NoGradGuard no_grad;
    layer->lora_B.select(1, 1).normal_(0.0, 0.5);  // as a reserve that trained (fresh ones start at P = 0)
  }
  layer->grow(1, /*step=*/10, /*reserve_after=*/advance ? 1 : 0);  // slot 1 activated at step 10
  return layer;
}

}  // namespace

TEST_CASE("Restart warmup scales the first updates of new triplets linearly, with SGD", "[warmup]") {
  auto advance = GENERATE(false, true);
  CAPTURE(advance);
  const int64_t warmup_steps = 4;
  // Parameters in registration order: weight, bias, lora_A, lora_E, lora_B.
  auto plain = update_of<torch::optim::SGD>(grown_layer(advance), torch::optim::SGDOptions(0.1), nullptr, 11);
  auto layer = grown_layer(advance);
  RestartWarmup warmup(*torch::nn::Sequential(layer), warmup_steps);
  auto warmed = update_of<torch::optim::SGD>(layer, torch::optim::SGDOptions(0.1), &warmup, 11);
  // Step 11 is the second step of slot 1's λ: factor 2/4. Slot 0 (from the start) is not scaled.
  CHECK(warmup.factor(10, 11) == 0.5);
  const auto& dE = warmed[3];
  const auto& dE_plain = plain[3];
  CHECK(dE_plain[1].item<double>() != 0.0);
  CHECK(dE[1].item<double>() == Approx(0.5 * dE_plain[1].item<double>()).epsilon(1e-5));
  CHECK(dE[0].item<double>() == Approx(dE_plain[0].item<double>()).epsilon(1e-6));
  // P and Q of slot 1 started training at 10 without advance learning; with it, the new reserve (slot 2) did.
  const int64_t fresh = advance ? 2 : 1;
  CHECK_ALLCLOSE(warmed[2][fresh], plain[2][fresh] * 0.5, 1e-5, 1e-9);
  CHECK_ALLCLOSE(warmed[4].select(1, fresh), plain[4].select(1, fresh) * 0.5, 1e-5, 1e-9);
  CHECK_ALLCLOSE(warmed[2][0], plain[2][0], 1e-6, 1e-9);
}

TEST_CASE("Restart warmup ends after warmup_steps and works with AdamW", "[warmup]") {
  const int64_t warmup_steps = 3;
  auto layer = grown_layer(false);
  RestartWarmup warmup(*torch::nn::Sequential(layer), warmup_steps);
  CHECK(warmup.factor(10, 10) == Approx(1.0 / 3));
  CHECK(warmup.factor(10, 12) == 1.0);
  CHECK(warmup.factor(-1, 5) == 1.0);
  // AdamW's first update of slot 1 at its activation step: one third of the unwarmed one.
  auto opts = torch::optim::AdamWOptions(1e-2).weight_decay(0.01);
  auto plain = update_of<torch::optim::AdamW>(grown_layer(false), opts, nullptr, 10);
  auto warmed = update_of<torch::optim::AdamW>(layer, opts, &warmup, 10);
  CHECK(warmed[3][1].item<double>() == Approx(plain[3][1].item<double>() / 3).epsilon(1e-5));
  // Past the warmup the update is the optimizer's own: from step 12 (the third) on, the factor is 1, so the
  // warmup's step equals a plain optimizer step from the same state.
  auto late = grown_layer(false);
  auto plain_late = std::dynamic_pointer_cast<increlora::SVDLinearImpl>(late->clone());
  RestartWarmup late_warmup(*torch::nn::Sequential(late), warmup_steps);
  auto warmed_late = update_of<torch::optim::AdamW>(late, opts, &late_warmup, 12);
  auto reference_late = update_of<torch::optim::AdamW>(SVDLinear(plain_late), opts, nullptr, 12);
  for (size_t i = 0; i < warmed_late.size(); ++i) CHECK_ALLCLOSE(warmed_late[i], reference_late[i], 1e-6, 1e-9);
  CHECK_THROWS_WITH(RestartWarmup(*torch::nn::Sequential(layer), 0), HasSubstring("warmup_steps must be >= 1"));
}
