// RestartWarmup: triplets that start training get the original's per-group schedule (or a warmup relative to
// the current rate), exactly with a tracking FusedAdamW and through the blend with any other optimizer.
#include "support.hpp"

#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <functional>

using increlora::RestartSchedule;
using increlora::RestartWarmup;
using increlora::RestartWarmupOptions;
using increlora::SVDLinear;
using increlora::SVDLinearOptions;

namespace {

// The original's Multi_LambdaLR over Hugging Face's linear schedule, step by step as the Python code runs it:
// a group added by the allocator starts at the optimizer's default (peak) rate, is noticed at the next
// scheduler step with lambda(W, T - last_epoch), and its own step counter starts at -1.
class MultiLambdaLR {
 public:
  MultiLambdaLR(int64_t W, int64_t T, double peak) : W_(W), T_(T), peak_(peak) {
    lambdas_.push_back(lambda(T));
    base_.push_back(peak);
    group_steps_.push_back(-1);
    lrs_.push_back(peak);
    step();  // LambdaLR's constructor steps once
  }
  void add_param_group() { lrs_.push_back(peak_); }
  void step() {
    ++last_epoch_;
    if (lrs_.size() > lambdas_.size()) {  // check_new_params
      group_steps_.push_back(-1);
      lambdas_.push_back(lambda(T_ - last_epoch_));
      base_.push_back(peak_);
    }
    for (size_t i = 0; i < lrs_.size(); ++i) {
      ++group_steps_[i];
      lrs_[i] = base_[i] * lambdas_[i](group_steps_[i]);
    }
  }
  double lr(size_t group) const { return lrs_[group]; }

 private:
  std::function<double(int64_t)> lambda(int64_t T) const {
    const int64_t W = W_;
    return [W, T](int64_t s) {
      if (s < W) return static_cast<double>(s) / static_cast<double>(std::max<int64_t>(1, W));
      return std::max(0.0, static_cast<double>(T - s) / static_cast<double>(std::max<int64_t>(1, T - W)));
    };
  }
  int64_t W_, T_;
  double peak_;
  int64_t last_epoch_ = -1;
  std::vector<std::function<double(int64_t)>> lambdas_;
  std::vector<double> base_, lrs_;
  std::vector<int64_t> group_steps_;
};

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

RestartWarmupOptions scale_current(int64_t warmup_steps) {
  return RestartWarmupOptions(warmup_steps, 0).schedule(RestartSchedule::kScaleCurrent);
}

}  // namespace

TEST_CASE("The original schedule gives each activation's triplets the rate the original's Multi_LambdaLR gives "
          "its new group", "[warmup]") {
  struct Plan {
    int64_t W, T, t0;
  };
  const auto plan = GENERATE(Plan{10, 100, 40}, Plan{100, 3450, 1300}, Plan{0, 60, 7}, Plan{20, 200, 5});
  CAPTURE(plan.W, plan.T, plan.t0);
  auto layer = grown_layer(false);
  RestartWarmup warmup(*torch::nn::Sequential(layer), RestartWarmupOptions(plan.W, plan.T));
  const double peak = 1e-3;
  MultiLambdaLR scheduler(plan.W, plan.T, peak);
  for (int64_t t = 0; t < plan.T; ++t) {
    if (t == plan.t0) scheduler.add_param_group();  // the allocator, before optimizer.step()
    CAPTURE(t);
    CHECK(warmup.schedule(t) * peak == Approx(scheduler.lr(0)).margin(1e-15));
    if (t >= plan.t0 && scheduler.lr(0) > 0) {
      CHECK(warmup.factor(plan.t0, t) * scheduler.lr(0) == Approx(scheduler.lr(1)).epsilon(1e-12).margin(1e-15));
    }
    if (t < plan.t0) CHECK(warmup.factor(plan.t0, t) == 1.0);
    CHECK(warmup.factor(-1, t) == 1.0);
    scheduler.step();
  }
  // Spot values, W = 10, T = 100, t0 = 40: the first update at the peak, then 0, then k / W of the peak, then a
  // constant (T − W) / (T − t0 − 1 − W) = 90 / 49 times the decaying global rate.
  if (plan.W == 10) {
    CHECK(warmup.factor(40, 40) == Approx(1.0 / (60.0 / 90.0)));
    CHECK(warmup.factor(40, 41) == 0.0);
    CHECK(warmup.factor(40, 46) == Approx(0.5 / (54.0 / 90.0)));
    CHECK(warmup.factor(40, 51) == Approx(90.0 / 49.0));
    CHECK(warmup.factor(40, 80) == Approx(90.0 / 49.0));
    CHECK(warmup.factor(40, 100) == 0.0);
  }
}

TEST_CASE("Restart warmup sets each slot's rate exactly through a tracking FusedAdamW", "[warmup][slots]") {
  auto device = GENERATE(from_range(increlora::test::devices()));
  auto weight_decay = GENERATE(0.0, 0.05);
  CAPTURE(device, weight_decay);
  // Slot 1 starts at step 10 (no advance learning): its λ, Q row and P column are the original's new group.
  auto layer = grown_layer(false);
  layer->to(torch::Device(device));
  torch::nn::Sequential net(layer);
  const auto options = torch::optim::AdamWOptions(1e-2).weight_decay(weight_decay);
  increlora::FusedAdamW optimizer(std::vector<torch::Tensor>{layer->lora_A, layer->lora_E, layer->lora_B}, options);
  optimizer.track_adapter_slots(*net, /*global_step=*/10);
  RestartWarmup warmup(*net, RestartWarmupOptions(4, 40));
  torch::NoGradGuard outer;
  auto E = layer->lora_E.narrow(0, 1, 1).detach().clone().requires_grad_(true);
  auto A = layer->lora_A.narrow(0, 1, 1).detach().clone().requires_grad_(true);
  auto B = layer->lora_B.narrow(1, 1, 1).detach().clone().requires_grad_(true);
  torch::optim::AdamW fresh(std::vector<torch::Tensor>{A, E, B}, options);
  torch::manual_seed(4);
  const auto x = torch::randn({16, 6}, torch::TensorOptions().device(device));
  for (int64_t t = 10; t < 20; ++t) {
    CAPTURE(t);
    optimizer.zero_grad();
    {
      at::AutoGradMode grad(true);
      (layer(x) - 0.2).pow(2).sum().backward();
    }
    E.mutable_grad() = layer->lora_E.grad().narrow(0, 1, 1).clone();
    A.mutable_grad() = layer->lora_A.grad().narrow(0, 1, 1).clone();
    B.mutable_grad() = layer->lora_B.grad().narrow(1, 1, 1).clone();
    // The reference: a fresh AdamW group whose rate is the optimizer's (1e-2 here) times the factor.
    static_cast<torch::optim::AdamWOptions&>(fresh.param_groups()[0].options()).lr(1e-2 * warmup.factor(10, t));
    warmup.step(optimizer, t);
    fresh.step();
    CHECK_ALLCLOSE(layer->lora_E.narrow(0, 1, 1), E, 1e-5, 1e-6);
    CHECK_ALLCLOSE(layer->lora_A.narrow(0, 1, 1), A, 1e-5, 1e-6);
    CHECK_ALLCLOSE(layer->lora_B.narrow(1, 1, 1), B, 1e-5, 1e-6);
  }
}

TEST_CASE("Through the blend, the original schedule scales the update of new triplets with SGD", "[warmup]") {
  auto layer = grown_layer(false);
  RestartWarmup warmup(*torch::nn::Sequential(layer), RestartWarmupOptions(4, 40));
  auto plain = update_of<torch::optim::SGD>(grown_layer(false), torch::optim::SGDOptions(0.1), nullptr, 16);
  auto warmed = update_of<torch::optim::SGD>(layer, torch::optim::SGDOptions(0.1), &warmup, 16);
  // Step 16: k = 5 >= W, so slot 1 runs at (40 − 16) / (40 − 11 − 4) of the peak against (40 − 16) / 36 globally.
  const double f = warmup.factor(10, 16);
  CHECK(f == Approx(36.0 / 25.0));
  CHECK(warmed[3][1].item<double>() == Approx(f * plain[3][1].item<double>()).epsilon(1e-5));
  CHECK(warmed[3][0].item<double>() == Approx(plain[3][0].item<double>()).epsilon(1e-6));
  CHECK_ALLCLOSE(warmed[2][1], plain[2][1] * f, 1e-5, 1e-9);
}

TEST_CASE("The scale-current schedule scales the first updates of new triplets linearly, with SGD", "[warmup]") {
  auto advance = GENERATE(false, true);
  CAPTURE(advance);
  const int64_t warmup_steps = 4;
  // Parameters in registration order: weight, bias, lora_A, lora_E, lora_B.
  auto plain = update_of<torch::optim::SGD>(grown_layer(advance), torch::optim::SGDOptions(0.1), nullptr, 11);
  auto layer = grown_layer(advance);
  RestartWarmup warmup(*torch::nn::Sequential(layer), scale_current(warmup_steps));
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

TEST_CASE("The scale-current schedule ends after warmup_steps and works with AdamW", "[warmup]") {
  const int64_t warmup_steps = 3;
  auto layer = grown_layer(false);
  RestartWarmup warmup(*torch::nn::Sequential(layer), scale_current(warmup_steps));
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
  RestartWarmup late_warmup(*torch::nn::Sequential(late), scale_current(warmup_steps));
  auto warmed_late = update_of<torch::optim::AdamW>(late, opts, &late_warmup, 12);
  auto reference_late = update_of<torch::optim::AdamW>(SVDLinear(plain_late), opts, nullptr, 12);
  for (size_t i = 0; i < warmed_late.size(); ++i) CHECK_ALLCLOSE(warmed_late[i], reference_late[i], 1e-6, 1e-9);
}

TEST_CASE("RestartWarmup refuses options it cannot follow", "[warmup][errors]") {
  auto layer = grown_layer(false);
  torch::nn::Sequential net(layer);
  CHECK_THROWS_WITH(RestartWarmup(*net, scale_current(0)), HasSubstring("warmup_steps must be >= 1"));
  CHECK_THROWS_WITH(RestartWarmup(*net, RestartWarmupOptions(100, 100)), HasSubstring("must exceed warmup_steps"));
  CHECK_THROWS_WITH(RestartWarmup(*net, RestartWarmupOptions(-1, 100)), HasSubstring("warmup_steps must be >= 0"));
}
