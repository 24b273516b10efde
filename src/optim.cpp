#include "increlora/optim.hpp"

#include "increlora/detail/tensor_kind.hpp"

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
#include <ATen/ops/pow.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

namespace increlora {

// The tracked banks of one parameter group, device and dtype, with their per-element optimizer numbers in flat
// buffers: the per-step coefficients are then a few single kernels over all of them, and each bank reads its
// part through a view of its own shape (so the foreach kernels take same-shaped lists: ATen's fast path).
struct SlotBucket {
  int64_t numel = 0;                  // elements of all its banks
  size_t banks = 0;                   // how many banks it holds
  torch::Tensor count;                // float32 [N]: Adam updates of each element's slot since it started
  torch::Tensor rate;                 // float32 [N]: learning-rate factor, 0 where the slot does not train
  torch::Tensor step_size, inv_bias2, decay;  // the bank dtype [N]: rate/(1 − β1^c), 1/sqrt(1 − β2^c), 1 − lr·wd·rate
};

struct FusedAdamW::TrackedBank {
  torch::Tensor param;
  int64_t dim = 0;      // the dimension that indexes slots
  bool lambda = false;  // λ trains while the slot is active; P and Q while it is in use (active or reserve)
  std::vector<int64_t> seen_start;  // the layer's start steps as last seen: a change means the slot started
  std::vector<int64_t> count;       // Adam updates of each slot since it started (host copy, for reports)
  std::vector<double> factor;       // learning-rate factor per slot (RestartWarmup)
  std::vector<double> applied;      // the rate each slot holds in `rate`
  std::shared_ptr<SlotBucket> bucket;
  int64_t offset = 0;               // where the bank's elements start in the bucket's buffers
  // Views of the bucket's buffers with the bank's shape.
  torch::Tensor count_view, rate_view, step_size_view, inv_bias2_view, decay_view;

  // The slot view [slot, slot + n) of a tensor shaped like the bank.
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
  std::unordered_map<const void*, size_t> group_of;
  for (size_t g = 0; g < param_groups().size(); ++g) {
    for (const auto& p : param_groups()[g].params()) group_of[p.unsafeGetTensorImpl()] = g;
  }
  // Buckets by (group, device, dtype); their buffers are allocated once every bank is known.
  std::map<std::pair<size_t, detail::TensorKind>, std::shared_ptr<SlotBucket>> buckets;
  std::vector<std::pair<TrackedBank*, std::vector<double>>> initial_counts;
  for (const auto& entry : layers) {
    const auto& name = entry.first;  // a plain reference: lambdas capture no structured binding (C++20)
    const auto& layer = entry.second;
    auto tracked = std::make_shared<TrackedLayer>();
    tracked->layer = layer;
    const auto init = [&](TrackedBank& bank, const torch::Tensor& param, int64_t dim, bool lambda,
                          const std::vector<int64_t>& starts) {
      const auto it = group_of.find(param.unsafeGetTensorImpl());
      INCRELORA_CHECK(it != group_of.end(), "FusedAdamW::track_adapter_slots: the optimizer does not hold the "
                      "adapter banks of layer '", name, "'; build it from model->parameters() after the SVDLinear "
                      "layers exist.");
      INCRELORA_CHECK(param.is_contiguous(), "FusedAdamW: the adapter bank of layer '", name, "' is not contiguous.");
      bank.param = param;
      bank.dim = dim;
      bank.lambda = lambda;
      bank.seen_start = starts;
      bank.factor.assign(starts.size(), 1.0);
      bank.applied.assign(starts.size(), 0.0);  // every slot's rate is set by the first step's sync
      const auto found = state().find(param.unsafeGetTensorImpl());
      const int64_t tensor_steps = found == state().end() ? 0 : static_cast<AdamWState&>(*found->second).step();
      // A slot that started at s < global_step has had one update per step since; one starting now starts fresh.
      bank.count.resize(starts.size());
      std::vector<double> counts;
      for (size_t i = 0; i < starts.size(); ++i) {
        const int64_t s = starts[i];
        bank.count[i] = s < 0 ? tensor_steps : std::max<int64_t>(0, global_step - s);
        counts.push_back(static_cast<double>(bank.count[i]));
        if (s >= global_step && found != state().end()) {
          auto& st = static_cast<AdamWState&>(*found->second);
          torch::NoGradGuard no_grad;
          const auto slot = static_cast<int64_t>(i);
          bank.slots(st.exp_avg(), slot, 1).zero_();
          bank.slots(st.exp_avg_sq(), slot, 1).zero_();
          if (st.max_exp_avg_sq().defined()) bank.slots(st.max_exp_avg_sq(), slot, 1).zero_();
        }
      }
      auto& bucket = buckets[{it->second, detail::kind_of(param)}];
      if (!bucket) bucket = std::make_shared<SlotBucket>();
      bank.bucket = bucket;
      bank.offset = bucket->numel;
      bucket->numel += param.numel();
      ++bucket->banks;
      initial_counts.emplace_back(&bank, std::move(counts));
    };
    init(tracked->E, layer->lora_E, 0, true, layer->lambda_start());
    init(tracked->A, layer->lora_A, 0, false, layer->factor_start());
    init(tracked->B, layer->lora_B, 1, false, layer->factor_start());
    for (auto* bank : {&tracked->E, &tracked->A, &tracked->B}) tracked_banks_[bank->param.unsafeGetTensorImpl()] = bank;
    tracked_.push_back(std::move(tracked));
  }
  torch::NoGradGuard no_grad;
  for (auto& [bank, counts] : initial_counts) {
    auto& b = *bank->bucket;
    if (!b.count.defined()) {
      const auto exact = bank->param.options().dtype(torch::kFloat);  // counts and rates exact in float32
      b.count = torch::zeros({b.numel}, exact);
      b.rate = torch::zeros({b.numel}, exact);
      b.step_size = torch::zeros({b.numel}, bank->param.options());
      b.inv_bias2 = torch::zeros({b.numel}, bank->param.options());
      b.decay = torch::zeros({b.numel}, bank->param.options());
    }
    const auto numel = bank->param.numel();
    const auto shape = bank->param.sizes();
    const auto offset = bank->offset;  // lambdas capture no structured binding (C++20)
    const auto view = [&](const torch::Tensor& flat) { return flat.narrow(0, offset, numel).view(shape); };
    bank->count_view = view(b.count);
    bank->rate_view = view(b.rate);
    bank->step_size_view = view(b.step_size);
    bank->inv_bias2_view = view(b.inv_bias2);
    bank->decay_view = view(b.decay);
    bank->count_view.copy_(per_slot(bank->count_view, bank->dim, counts));
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
  // One bucket (device, dtype) at a time, as the foreach kernels want.
  std::map<SlotBucket*, std::vector<TrackedBank*>> by_bucket;
  for (auto* b : banks) by_bucket[b->bucket.get()].push_back(b);
  const auto [beta1, beta2] = options.betas();
  const double lr = options.lr(), wd = options.weight_decay(), eps = options.eps();
  for (auto& [bucket, members] : by_bucket) {
    std::vector<torch::Tensor> P, G, M, V, VMAX, S1, S2, D;
    for (auto* b : members) {
      auto& s = state_of(*this, b->param, options.amsgrad());
      P.push_back(b->param);
      const auto& g = b->param.grad();
      G.push_back(g.is_contiguous() ? g : g.contiguous());
      M.push_back(s.exp_avg());
      V.push_back(s.exp_avg_sq());
      if (options.amsgrad()) VMAX.push_back(s.max_exp_avg_sq());
      S1.push_back(b->step_size_view);
      S2.push_back(b->inv_bias2_view);
      D.push_back(b->decay_view);
      s.step(s.step() + 1);  // the tensor's own count, as AdamW keeps it (checkpoints, the untracked path)
      for (auto& c : b->count) ++c;
    }
    // Per-element coefficients, a few kernels over the whole bucket. A bank without a gradient this step (not
    // in `members`) takes no update, so its counts are put back.
    bucket->count.add_(1.0);
    if (members.size() != bucket->banks) {
      for (const auto& entry : tracked_banks_) {
        auto* b = entry.second;
        if (b->bucket.get() == bucket && std::find(members.begin(), members.end(), b) == members.end()) {
          b->count_view.sub_(1.0);
        }
      }
    }
    auto bias1 = at::pow(beta1, bucket->count).neg_().add_(1.0);        // 1 − β1^c
    bucket->step_size.copy_(bucket->rate / bias1);                       // rate / (1 − β1^c)
    bucket->inv_bias2.copy_(at::pow(beta2, bucket->count).neg_().add_(1.0).rsqrt_());  // 1 / sqrt(1 − β2^c)
    // The same arithmetic as torch::optim::AdamW, with per-element counts and rates:
    //   p ← p (1 − lr·wd·rate) − lr · rate/(1 − β1^c) · m / (sqrt(v) / sqrt(1 − β2^c) + eps)
    at::_foreach_lerp_(M, G, 1.0 - beta1);
    at::_foreach_mul_(V, beta2);
    at::_foreach_addcmul_(V, G, G, 1.0 - beta2);
    if (options.amsgrad()) at::_foreach_maximum_(VMAX, V);
    auto denom = at::_foreach_sqrt(options.amsgrad() ? VMAX : V);
    at::_foreach_mul_(denom, S2);
    at::_foreach_add_(denom, eps);
    auto update = at::_foreach_mul(M, S1);
    at::_foreach_div_(update, denom);
    if (wd != 0.0) {
      bucket->decay.copy_(bucket->rate * (-lr * wd) + 1.0);
      at::_foreach_mul_(P, D);
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
        bank->slots(bank->count_view, first, n).fill_(0.0);
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
        bank->slots(bank->rate_view, first, n).fill_(value);
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
    std::map<detail::TensorKind, Lists> groups;
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
      auto& lists = groups[detail::kind_of(p)];
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
