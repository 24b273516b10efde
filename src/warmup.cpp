#include "increlora/warmup.hpp"

#include "increlora/errors.hpp"
#include "increlora/modules.hpp"
#include "increlora/optim.hpp"

#include <algorithm>

namespace increlora {

RestartWarmup::RestartWarmup(torch::nn::Module& model, RestartWarmupOptions options) : options_(options) {
  if (options_.schedule() == RestartSchedule::kScaleCurrent) {
    INCRELORA_CHECK(options_.warmup_steps() >= 1, "RestartWarmup: warmup_steps must be >= 1 for kScaleCurrent (got ",
                    options_.warmup_steps(), ").");
  } else {
    INCRELORA_CHECK(options_.warmup_steps() >= 0, "RestartWarmup: warmup_steps must be >= 0 (got ",
                    options_.warmup_steps(), ").");
    INCRELORA_CHECK(options_.total_steps() > options_.warmup_steps(), "RestartWarmup: total_steps (",
                    options_.total_steps(), ") must exceed warmup_steps (", options_.warmup_steps(),
                    ") for the original's schedule, which decays to 0 at total_steps; pass the run's optimizer "
                    "steps, or RestartSchedule::kScaleCurrent for a schedule of another shape.");
  }
  for (auto& entry : named_svd_linears(model, /*adapters_only=*/true)) layers_.push_back(entry.second);
  INCRELORA_CHECK(!layers_.empty(), "RestartWarmup: the model has no SVDLinear layer with an adapter.");
}

double RestartWarmup::schedule(int64_t t) const {
  // Hugging Face's get_linear_schedule_with_warmup, which the original's global group follows.
  const auto W = options_.warmup_steps(), T = options_.total_steps();
  if (t < W) return static_cast<double>(t) / static_cast<double>(std::max<int64_t>(1, W));
  return std::max(0.0, static_cast<double>(T - t) / static_cast<double>(std::max<int64_t>(1, T - W)));
}

double RestartWarmup::factor(int64_t start, int64_t t) const {
  if (start < 0 || t < start) return 1.0;
  const auto W = options_.warmup_steps();
  if (options_.schedule() == RestartSchedule::kScaleCurrent) {
    return std::min(1.0, static_cast<double>(t - start + 1) / static_cast<double>(W));
  }
  // The original's Multi_LambdaLR: the group added at t0 takes its first update at the rate it was added with
  // (the optimizer's initial, peak rate); at the scheduler step after it, the group gets the lambda
  // get_lr_lambda(W, T - (t0 + 1)) counted from 0, so the update of step t0 + 1 + k runs at peak × lambda(k).
  double own;
  if (t == start) {
    own = 1.0;
  } else {
    const int64_t k = t - start - 1;
    const int64_t T_own = options_.total_steps() - (start + 1);
    own = k < W ? static_cast<double>(k) / static_cast<double>(std::max<int64_t>(1, W))
                : std::max(0.0, static_cast<double>(T_own - k) / static_cast<double>(std::max<int64_t>(1, T_own - W)));
  }
  const double global = schedule(t);
  return global > 0.0 ? own / global : 0.0;
}

void RestartWarmup::snapshot(const torch::Tensor& bank, int64_t dim, const std::vector<int64_t>& starts,
                             int64_t global_step) {
  std::vector<int64_t> slots;
  std::vector<double> weights;
  for (size_t i = 0; i < starts.size(); ++i) {
    const double w = factor(starts[i], global_step);
    if (w != 1.0) {
      slots.push_back(static_cast<int64_t>(i));
      weights.push_back(w);
    }
  }
  if (slots.empty()) return;
  Snapshot s;
  s.bank = bank;
  s.dim = dim;
  s.index = torch::tensor(slots, torch::kLong).to(bank.device());
  auto shape = std::vector<int64_t>(bank.dim(), 1);
  shape[dim] = static_cast<int64_t>(slots.size());
  s.weight = torch::tensor(weights, torch::kDouble).to(bank.device(), bank.scalar_type()).view(shape);
  s.before = bank.detach().index_select(dim, s.index);
  pending_.push_back(std::move(s));
}

void RestartWarmup::before_step(int64_t global_step, torch::optim::Optimizer& optimizer) {
  INCRELORA_CHECK(!armed_, "RestartWarmup::before_step: called twice without after_step in between.");
  armed_ = true;
  torch::NoGradGuard no_grad;
  auto* fused = dynamic_cast<FusedAdamW*>(&optimizer);
  if (fused != nullptr && fused->tracks_adapter_slots()) {
    // Exact per-slot rates, weight decay included: nothing to copy or blend.
    for (const auto& layer : layers_) {
      std::vector<double> lambda_factors, factor_factors;
      for (auto s : layer->lambda_start()) lambda_factors.push_back(factor(s, global_step));
      for (auto s : layer->factor_start()) factor_factors.push_back(factor(s, global_step));
      fused->set_slot_lr_factors(*layer, lambda_factors, factor_factors);
    }
    return;
  }
  for (const auto& layer : layers_) {
    snapshot(layer->lora_E, 0, layer->lambda_start(), global_step);
    snapshot(layer->lora_B, 1, layer->factor_start(), global_step);
    snapshot(layer->lora_A, 0, layer->factor_start(), global_step);
  }
}

void RestartWarmup::after_step() {
  torch::NoGradGuard no_grad;
  for (auto& s : pending_) {
    const auto after = s.bank.detach().index_select(s.dim, s.index);
    s.bank.detach().index_copy_(s.dim, s.index, s.before + s.weight * (after - s.before));
  }
  pending_.clear();
  armed_ = false;
}

void RestartWarmup::step(torch::optim::Optimizer& optimizer, int64_t global_step) {
  before_step(global_step, optimizer);
  optimizer.step();
  after_step();
}

}  // namespace increlora
