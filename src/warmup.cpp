#include "increlora/warmup.hpp"

#include "increlora/errors.hpp"
#include "increlora/modules.hpp"

#include <algorithm>

namespace increlora {

RestartWarmup::RestartWarmup(torch::nn::Module& model, int64_t warmup_steps) : warmup_steps_(warmup_steps) {
  INCRELORA_CHECK(warmup_steps >= 1, "RestartWarmup: warmup_steps must be >= 1 (got ", warmup_steps, ").");
  for (auto& entry : named_svd_linears(model, /*adapters_only=*/true)) layers_.push_back(entry.second);
  INCRELORA_CHECK(!layers_.empty(), "RestartWarmup: the model has no SVDLinear layer with an adapter.");
}

double RestartWarmup::factor(int64_t start, int64_t global_step) const {
  if (start < 0 || global_step < start) return 1.0;
  return std::min(1.0, static_cast<double>(global_step - start + 1) / static_cast<double>(warmup_steps_));
}

void RestartWarmup::snapshot(const torch::Tensor& bank, int64_t dim, const std::vector<int64_t>& starts,
                             int64_t global_step) {
  std::vector<int64_t> slots;
  std::vector<double> weights;
  for (size_t i = 0; i < starts.size(); ++i) {
    const double w = factor(starts[i], global_step);
    if (w < 1.0) {
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

void RestartWarmup::before_step(int64_t global_step) {
  INCRELORA_CHECK(pending_.empty(), "RestartWarmup::before_step: called twice without after_step in between.");
  torch::NoGradGuard no_grad;
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
}

void RestartWarmup::step(torch::optim::Optimizer& optimizer, int64_t global_step) {
  before_step(global_step);
  optimizer.step();
  after_step();
}

}  // namespace increlora
