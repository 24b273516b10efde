#include "increlora/optim.hpp"

#include "increlora/errors.hpp"
#include "increlora/modules.hpp"
#include "increlora/svd_linear.hpp"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_foreach_addcmul.h>
#include <ATen/ops/_foreach_div.h>
#include <ATen/ops/_foreach_lerp.h>
#include <ATen/ops/_foreach_maximum.h>
#include <ATen/ops/_foreach_mul.h>
#include <ATen/ops/_foreach_sqrt.h>
#include <ATen/ops/_fused_adamw.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <functional>
#include <map>
#include <tuple>
#include <unordered_set>
#include <vector>

namespace increlora {

// One adapter bank whose slots keep their own AdamW state. The per-element tensors have the bank's shape and
// dtype, so that every foreach kernel takes same-shaped, same-dtype lists (ATen's fast path).
struct FusedAdamW::TrackedBank {
  torch::Tensor param;
  int64_t dim = 0;      // the dimension that indexes slots
  bool lambda = false;  // λ trains while the slot is active; P and Q while it is in use (active or reserve)
  std::vector<int64_t> seen_start;  // the layer's start steps as last seen: a change means the slot started
  std::vector<int64_t> count;       // Adam updates of each slot since it started
  std::vector<double> factor;       // learning-rate factor per slot (RestartWarmup)
  std::vector<double> applied;      // the rate each slot holds in `rate`
  torch::Tensor beta1_pow, beta2_pow;  // β1^count, β2^count per element
  torch::Tensor rate;                  // factor per element, 0 where the slot does not train

  // The slot view [slot, slot + n) of a per-element tensor.
  torch::Tensor slots(const torch::Tensor& t, int64_t slot, int64_t n) const { return t.narrow(dim, slot, n); }
};

struct FusedAdamW::TrackedLayer {
  std::shared_ptr<SVDLinearImpl> layer;
  TrackedBank E, A, B;
};

namespace {

using AdamWState = torch::optim::AdamWParamState;

// Runs of equal values: calls f(first, n, value) once per maximal run of slots whose `wanted` differ from
// `have` and share one value, so a change costs one kernel per run, not per slot.
template <typename T, typename F>
void for_changed_runs(const std::vector<T>& have, const std::vector<T>& wanted, F f) {
  const auto n = static_cast<int64_t>(wanted.size());
  for (int64_t i = 0; i < n;) {
    if (have[i] == wanted[i]) {
      ++i;
      continue;
    }
    int64_t j = i + 1;
    while (j < n && have[j] != wanted[j] && wanted[j] == wanted[i]) ++j;
    f(i, j - i, wanted[i]);
    i = j;
  }
}

// A per-element tensor of `bank`'s shape and dtype whose slot i (along `dim`) holds values[i].
torch::Tensor per_slot(const torch::Tensor& bank, int64_t dim, const std::vector<double>& values) {
  auto v = torch::tensor(values, torch::kDouble);
  std::vector<int64_t> shape(bank.dim(), 1);
  shape[dim] = static_cast<int64_t>(values.size());
  return v.view(shape).expand(bank.sizes()).to(bank.device(), bank.scalar_type()).contiguous();
}

// β^count as the device computes it, one multiplication per step in the bank's dtype (opmath: float for the
// half types), so that a run resumed from a checkpoint holds the same bits as one that never stopped.
double stepped_power(double beta, int64_t count, c10::ScalarType dtype) {
  switch (dtype) {
    case c10::ScalarType::Double: {
      double p = 1.0;
      for (int64_t i = 0; i < count; ++i) p = p * beta;
      return p;
    }
    case c10::ScalarType::BFloat16: {
      c10::BFloat16 p(1.0f);
      for (int64_t i = 0; i < count; ++i) p = c10::BFloat16(static_cast<float>(p) * static_cast<float>(beta));
      return static_cast<float>(p);
    }
    case c10::ScalarType::Half: {
      c10::Half p(1.0f);
      for (int64_t i = 0; i < count; ++i) p = c10::Half(static_cast<float>(p) * static_cast<float>(beta));
      return static_cast<float>(p);
    }
    default: {
      float p = 1.0f;
      for (int64_t i = 0; i < count; ++i) p = p * static_cast<float>(beta);
      return p;
    }
  }
}

AdamWState& state_of(torch::optim::AdamW& optimizer, const torch::Tensor& p, bool amsgrad) {
  auto& slot = optimizer.state()[p.unsafeGetTensorImpl()];
  if (!slot) {
    auto fresh = std::make_unique<AdamWState>();
    fresh->step(0);
    fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
    fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
    if (amsgrad) fresh->max_exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
    slot = std::move(fresh);
  }
  return static_cast<AdamWState&>(*slot);
}

}  // namespace

FusedAdamW::~FusedAdamW() = default;

void FusedAdamW::untrack_adapter_slots() {
  tracked_.clear();
  tracked_banks_.clear();
}

void FusedAdamW::track_adapter_slots(const torch::nn::Module& model, int64_t global_step) {
  const auto layers = named_svd_linears(model, /*adapters_only=*/true);
  if (layers.size() == tracked_.size()) {
    bool same = true;
    for (size_t i = 0; i < layers.size() && same; ++i) same = layers[i].second == tracked_[i]->layer;
    if (same) return;
  }
  INCRELORA_CHECK(global_step >= 0, "FusedAdamW::track_adapter_slots: global_step must be >= 0 (got ", global_step,
                  ").");
  untrack_adapter_slots();
  std::unordered_map<const void*, const torch::optim::AdamWOptions*> group_of;
  for (const auto& group : param_groups()) {
    for (const auto& p : group.params()) {
      group_of[p.unsafeGetTensorImpl()] = &static_cast<const torch::optim::AdamWOptions&>(group.options());
    }
  }
  for (const auto& [name, layer] : layers) {
    auto tracked = std::make_shared<TrackedLayer>();
    tracked->layer = layer;
    const auto init = [&](TrackedBank& bank, const torch::Tensor& param, int64_t dim, bool lambda,
                          const std::vector<int64_t>& starts) {
      const auto it = group_of.find(param.unsafeGetTensorImpl());
      INCRELORA_CHECK(it != group_of.end(), "FusedAdamW::track_adapter_slots: the optimizer does not hold the "
                      "adapter banks of layer '", name, "'; build it from model->parameters() after the SVDLinear "
                      "layers exist.");
      INCRELORA_CHECK(param.is_contiguous(), "FusedAdamW: the adapter bank of layer '", name, "' is not contiguous.");
      const auto [beta1, beta2] = it->second->betas();
      bank.param = param;
      bank.dim = dim;
      bank.lambda = lambda;
      bank.seen_start = starts;
      const auto found = state().find(param.unsafeGetTensorImpl());
      const int64_t tensor_steps = found == state().end() ? 0 : static_cast<AdamWState&>(*found->second).step();
      // A slot that started at s < global_step has had one update per step since; one starting now starts fresh.
      bank.count.resize(starts.size());
      std::vector<double> p1, p2;
      std::vector<int64_t> fresh;
      std::map<int64_t, std::pair<double, double>> powers;  // by count: slots mostly share a few counts
      for (size_t i = 0; i < starts.size(); ++i) {
        const int64_t s = starts[i];
        bank.count[i] = s < 0 ? tensor_steps : std::max<int64_t>(0, global_step - s);
        if (s >= global_step) fresh.push_back(static_cast<int64_t>(i));
        auto found_power = powers.find(bank.count[i]);
        if (found_power == powers.end()) {
          found_power = powers.emplace(bank.count[i],
                                       std::make_pair(stepped_power(beta1, bank.count[i], param.scalar_type()),
                                                      stepped_power(beta2, bank.count[i], param.scalar_type())))
                            .first;
        }
        p1.push_back(found_power->second.first);
        p2.push_back(found_power->second.second);
      }
      torch::NoGradGuard no_grad;
      bank.beta1_pow = per_slot(param, dim, p1);
      bank.beta2_pow = per_slot(param, dim, p2);
      bank.factor.assign(starts.size(), 1.0);
      bank.applied.assign(starts.size(), 0.0);
      bank.rate = torch::zeros_like(param, torch::MemoryFormat::Contiguous);  // set by the first step's sync
      if (found != state().end()) {
        auto& s = static_cast<AdamWState&>(*found->second);
        for (auto i : fresh) {
          bank.slots(s.exp_avg(), i, 1).zero_();
          bank.slots(s.exp_avg_sq(), i, 1).zero_();
          if (s.max_exp_avg_sq().defined()) bank.slots(s.max_exp_avg_sq(), i, 1).zero_();
        }
      }
    };
    init(tracked->E, layer->lora_E, 0, true, layer->lambda_start());
    init(tracked->A, layer->lora_A, 0, false, layer->factor_start());
    init(tracked->B, layer->lora_B, 1, false, layer->factor_start());
    for (auto* bank : {&tracked->E, &tracked->A, &tracked->B}) tracked_banks_[bank->param.unsafeGetTensorImpl()] = bank;
    tracked_.push_back(std::move(tracked));
  }
}

FusedAdamW::TrackedLayer& FusedAdamW::tracked_layer(const SVDLinearImpl& layer, const char* caller) {
  for (auto& t : tracked_) {
    if (t->layer.get() == &layer) return *t;
  }
  INCRELORA_CHECK(false, caller, ": the layer is not tracked; call track_adapter_slots(model, step) first (the "
                  "allocator's update_and_increase(model, step, optimizer) does).");
  return *tracked_.front();  // unreachable
}

const FusedAdamW::TrackedLayer& FusedAdamW::tracked_layer(const SVDLinearImpl& layer, const char* caller) const {
  return const_cast<FusedAdamW*>(this)->tracked_layer(layer, caller);
}

void FusedAdamW::set_slot_lr_factors(const SVDLinearImpl& layer, const std::vector<double>& lambda_factors,
                                     const std::vector<double>& factor_factors) {
  auto& t = tracked_layer(layer, "FusedAdamW::set_slot_lr_factors");
  const auto capacity = static_cast<size_t>(layer.capacity());
  INCRELORA_CHECK(lambda_factors.size() == capacity && factor_factors.size() == capacity,
                  "FusedAdamW::set_slot_lr_factors: expected ", capacity, " factors per bank (the layer's capacity), "
                  "got ", lambda_factors.size(), " and ", factor_factors.size(), ".");
  for (const auto* v : {&lambda_factors, &factor_factors}) {
    for (double f : *v) {
      INCRELORA_CHECK(std::isfinite(f) && f >= 0.0, "FusedAdamW::set_slot_lr_factors: a factor is ", f,
                      "; factors must be finite and >= 0.");
    }
  }
  t.E.factor = lambda_factors;
  t.A.factor = factor_factors;
  t.B.factor = factor_factors;
}

int64_t FusedAdamW::slot_step(const SVDLinearImpl& layer, bool lambda_bank, int64_t slot) const {
  const auto& t = tracked_layer(layer, "FusedAdamW::slot_step");
  INCRELORA_CHECK(slot >= 0 && slot < layer.capacity(), "FusedAdamW::slot_step: slot ", slot, " is outside [0, ",
                  layer.capacity(), ").");
  return (lambda_bank ? t.E : t.A).count[static_cast<size_t>(slot)];
}

void FusedAdamW::step_tracked(std::vector<TrackedBank*>& banks, const torch::optim::AdamWOptions& options) {
  // One (device, dtype) at a time, as the foreach kernels want.
  std::map<std::tuple<int, int, int>, std::vector<TrackedBank*>> by_kind;
  for (auto* b : banks) {
    const auto& p = b->param;
    by_kind[{static_cast<int>(p.device().type()), p.device().index(), static_cast<int>(p.scalar_type())}].push_back(b);
  }
  const auto [beta1, beta2] = options.betas();
  const double lr = options.lr(), wd = options.weight_decay(), eps = options.eps();
  for (auto& entry : by_kind) {
    std::vector<torch::Tensor> P, G, M, V, VMAX, B1, B2, R;
    for (auto* b : entry.second) {
      auto& s = state_of(*this, b->param, options.amsgrad());
      P.push_back(b->param);
      const auto& g = b->param.grad();
      G.push_back(g.is_contiguous() ? g : g.contiguous());
      M.push_back(s.exp_avg());
      V.push_back(s.exp_avg_sq());
      if (options.amsgrad()) VMAX.push_back(s.max_exp_avg_sq());
      B1.push_back(b->beta1_pow);
      B2.push_back(b->beta2_pow);
      R.push_back(b->rate);
      s.step(s.step() + 1);  // the tensor's own count, as AdamW keeps it (checkpoints, the untracked path)
      for (auto& c : b->count) ++c;
    }
    // The same arithmetic as torch::optim::AdamW, with per-element step counts (as β^count) and rates:
    //   p ← p (1 − lr·wd·rate) − lr·rate/(1 − β1^c) · m / (sqrt(v)/sqrt(1 − β2^c) + eps)
    at::_foreach_mul_(B1, beta1);
    at::_foreach_mul_(B2, beta2);
    at::_foreach_lerp_(M, G, 1.0 - beta1);
    at::_foreach_mul_(V, beta2);
    at::_foreach_addcmul_(V, G, G, 1.0 - beta2);
    if (options.amsgrad()) at::_foreach_maximum_(VMAX, V);
    auto bias1 = at::_foreach_mul(B1, -1.0);
    at::_foreach_add_(bias1, 1.0);
    auto bias2_sqrt = at::_foreach_mul(B2, -1.0);
    at::_foreach_add_(bias2_sqrt, 1.0);
    at::_foreach_sqrt_(bias2_sqrt);
    auto denom = at::_foreach_sqrt(options.amsgrad() ? VMAX : V);
    at::_foreach_div_(denom, bias2_sqrt);
    at::_foreach_add_(denom, eps);
    auto update = at::_foreach_div(R, bias1);
    at::_foreach_mul_(update, M);
    at::_foreach_div_(update, denom);
    if (wd != 0.0) {
      auto decay = at::_foreach_mul(R, -lr * wd);
      at::_foreach_add_(decay, 1.0);
      at::_foreach_mul_(P, decay);
    }
    at::_foreach_add_(P, update, -lr);
  }
}

torch::Tensor FusedAdamW::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  // Tracked adapter banks: notice the slots that started since the last step (fresh state) and the slots whose
  // rate changed (activation, reserve changes, restart-warmup factors); both cost kernels only where they change.
  for (auto& t : tracked_) {
    const auto& layer = *t->layer;
    for (auto* bank : {&t->E, &t->A, &t->B}) {
      const auto& starts = bank->lambda ? layer.lambda_start() : layer.factor_start();
      const auto found = state().find(bank->param.unsafeGetTensorImpl());
      AdamWState* s = found == state().end() ? nullptr : &static_cast<AdamWState&>(*found->second);
      for_changed_runs(bank->seen_start, starts, [&](int64_t first, int64_t n, int64_t) {
        bank->slots(bank->beta1_pow, first, n).fill_(1.0);
        bank->slots(bank->beta2_pow, first, n).fill_(1.0);
        std::fill_n(bank->count.begin() + first, n, 0);
        if (s != nullptr) {
          bank->slots(s->exp_avg(), first, n).zero_();
          bank->slots(s->exp_avg_sq(), first, n).zero_();
          if (s->max_exp_avg_sq().defined()) bank->slots(s->max_exp_avg_sq(), first, n).zero_();
        }
      });
      bank->seen_start = starts;
      const int64_t training = bank->lambda ? layer.rank() : layer.in_use();
      std::vector<double> wanted(bank->factor.size(), 0.0);
      for (int64_t i = 0; i < training; ++i) wanted[i] = bank->factor[i];
      for_changed_runs(bank->applied, wanted, [&](int64_t first, int64_t n, double value) {
        bank->slots(bank->rate, first, n).fill_(value);
      });
      bank->applied = std::move(wanted);
    }
  }
  for (auto& group : param_groups()) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    // The fused kernel takes tensors of one device and dtype at a time.
    struct Lists {
      std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps;
    };
    std::map<std::tuple<int, int, int>, Lists> groups;
    std::vector<TrackedBank*> tracked;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      INCRELORA_CHECK(!p.grad().is_sparse(), "FusedAdamW: sparse gradients are not supported; use a dense "
                      "embedding or torch::optim::AdamW.");
      // The fused kernel walks parameter, gradient and moments in memory order: they must share one dense layout.
      INCRELORA_CHECK(p.is_contiguous(), "FusedAdamW: a parameter of shape ", p.sizes(), " is not contiguous; make "
                      "it contiguous before building the optimizer, or use torch::optim::AdamW for it.");
      if (const auto it = tracked_banks_.find(p.unsafeGetTensorImpl()); it != tracked_banks_.end()) {
        tracked.push_back(it->second);
        continue;
      }
      auto grad = p.grad().is_contiguous() ? p.grad() : p.grad().contiguous();
      auto& s = state_of(*this, p, options.amsgrad());
      auto& device_step = steps_[p.unsafeGetTensorImpl()];
      if (!device_step.tensor.defined() || device_step.host != s.step() ||
          device_step.tensor.device() != p.device()) {
        device_step.tensor = torch::full({}, static_cast<double>(s.step()),
                                         torch::TensorOptions().dtype(torch::kFloat).device(p.device()));
        device_step.host = s.step();
      }
      auto& lists = groups[{static_cast<int>(p.device().type()), p.device().index(), static_cast<int>(p.scalar_type())}];
      lists.params.push_back(p);
      lists.grads.push_back(grad);
      lists.exp_avgs.push_back(s.exp_avg());
      lists.exp_avg_sqs.push_back(s.exp_avg_sq());
      if (options.amsgrad()) lists.max_exp_avg_sqs.push_back(s.max_exp_avg_sq());
      lists.steps.push_back(device_step.tensor);
      s.step(s.step() + 1);
      device_step.host = s.step();
    }
    const auto [beta1, beta2] = options.betas();
    for (auto& entry : groups) {
      auto& l = entry.second;
      // The kernel reads the step count; it does not advance it (torch.optim does this add before it too).
      at::_foreach_add_(l.steps, 1);
      at::_fused_adamw_(l.params, l.grads, l.exp_avgs, l.exp_avg_sqs, l.max_exp_avg_sqs, l.steps, options.lr(),
                        beta1, beta2, options.weight_decay(), options.eps(), options.amsgrad(),
                        /*maximize=*/false);
    }
    if (!tracked.empty()) step_tracked(tracked, options);
  }
  return loss;
}

}  // namespace increlora
