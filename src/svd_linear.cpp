#include "increlora/svd_linear.hpp"

#include "increlora/detail/adapter_factors.hpp"
#include "increlora/detail/adapter_function.hpp"
#include "increlora/errors.hpp"

#include <ATen/autocast_mode.h>
#include <torch/nn/functional/linear.h>
#include <torch/nn/init.h>

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>

namespace increlora {
namespace {

// The original divides by (rank + 1e-5); keeping the epsilon makes our outputs equal the reference's.
constexpr double kRankEpsilon = 1e-5;
// The original holds a reserve's λ at 1e-5 at the initial rank.
constexpr double kReserveLambda = 1e-5;
constexpr double kInitStd = 0.02;

int64_t resolve_capacity(const SVDLinearOptions& o) {
  if (o.r() == 0) return 0;
  return o.capacity() > 0 ? o.capacity() : std::max<int64_t>(16, 4 * o.r());
}

void check_options(const SVDLinearOptions& o) {
  INCRELORA_CHECK(o.in_features() > 0 && o.out_features() > 0, "SVDLinearOptions: in_features (",
                  o.in_features(), ") and out_features (", o.out_features(), ") must both be positive.");
  INCRELORA_CHECK(o.r() >= 0, "SVDLinearOptions: r must be >= 0 (got ", o.r(),
                  "); use r(0) for a plain linear layer or r(1) to start an adapter at rank 1.");
  INCRELORA_CHECK(o.capacity() >= 0, "SVDLinearOptions: capacity must be >= 0 (got ", o.capacity(),
                  "); 0 picks max(16, 4 r).");
  INCRELORA_CHECK(o.r() == 0 || resolve_capacity(o) >= o.r(), "SVDLinearOptions: capacity (", o.capacity(),
                  ") is below the initial rank r (", o.r(), "); raise capacity to at least r.");
  INCRELORA_CHECK(o.lora_dropout() >= 0.0 && o.lora_dropout() < 1.0,
                  "SVDLinearOptions: lora_dropout must be in [0, 1) (got ", o.lora_dropout(), ").");
  INCRELORA_CHECK(std::isfinite(o.lora_alpha()) && o.lora_alpha() > 0.0,
                  "SVDLinearOptions: lora_alpha must be a positive number (got ", o.lora_alpha(), ").");
}

}  // namespace

SVDLinearOptions::SVDLinearOptions(int64_t in_features, int64_t out_features)
    : in_features_(in_features), out_features_(out_features) {}

SVDLinearImpl::SVDLinearImpl(const SVDLinearOptions& options) : options_(options) {
  check_options(options_);
  reset();
}

SVDLinearImpl::SVDLinearImpl(const torch::nn::Linear& linear, const SVDLinearOptions& options)
    : options_(options) {
  INCRELORA_CHECK(!linear.is_empty(), "SVDLinear: the Linear to wrap is empty (a default-constructed holder).");
  const auto& lo = linear->options;
  INCRELORA_CHECK(lo.in_features() == options.in_features() && lo.out_features() == options.out_features(),
                  "SVDLinear: the Linear to wrap is ", lo.in_features(), " -> ", lo.out_features(),
                  " but the options say ", options.in_features(), " -> ", options.out_features(),
                  "; build the options as SVDLinearOptions(", lo.in_features(), ", ", lo.out_features(), ").");
  options_.bias(lo.bias());
  check_options(options_);
  reset();
  // The banks follow the wrapped layer's device and dtype.
  to(linear->weight.device(), linear->weight.scalar_type());
  torch::NoGradGuard no_grad;
  // Share the storage: the wrapped Linear and this module see the same base weights (no copy).
  weight.set_data(linear->weight);
  if (bias.defined()) bias.set_data(linear->bias);
}

void SVDLinearImpl::reset() {
  // Every tensor is created anew here: Cloneable::clone() calls reset() on a copy whose members still point
  // at the original's tensors.
  capacity_ = resolve_capacity(options_);
  active_ = options_.r();
  reserve_ = 0;
  merged_ = false;
  score_sink_ = torch::Tensor();
  slot_gate_ = torch::Tensor();
  slot_held_ = torch::Tensor();
  lambda_start_.clear();
  factor_start_.clear();
  weight = register_parameter("weight", torch::empty({options_.out_features(), options_.in_features()}),
                              /*requires_grad=*/false);
  if (options_.bias()) {
    bias = register_parameter("bias", torch::empty({options_.out_features()}), /*requires_grad=*/false);
  } else {
    bias = register_parameter("bias", {}, /*requires_grad=*/false);
  }
  if (capacity_ > 0) register_adapter();
  reset_parameters();
}

void SVDLinearImpl::register_adapter() {
  const int64_t cap = capacity_;
  lora_A = register_parameter("lora_A", torch::empty({cap, options_.in_features()}));
  lora_E = register_parameter("lora_E", torch::empty({cap}));
  lora_B = register_parameter("lora_B", torch::empty({options_.out_features(), cap}));
  lora_ranknum = register_buffer("lora_ranknum", torch::zeros({1}));
  lora_slot_state = register_buffer("lora_slot_state", torch::zeros({cap}, torch::kLong));
  lora_lambda_start = register_buffer("lora_lambda_start", torch::full({cap}, -1, torch::kLong));
  lora_factor_start = register_buffer("lora_factor_start", torch::full({cap}, -1, torch::kLong));
  lambda_start_.assign(cap, -1);
  factor_start_.assign(cap, -1);
  write_rank_state();
}

void SVDLinearImpl::reset_parameters() {
  torch::NoGradGuard no_grad;
  // As torch::nn::Linear: kaiming-uniform weight, uniform bias in ±1/sqrt(fan_in).
  torch::nn::init::kaiming_uniform_(weight, std::sqrt(5.0));
  if (bias.defined()) {
    const double bound = 1.0 / std::sqrt(static_cast<double>(options_.in_features()));
    torch::nn::init::uniform_(bias, -bound, bound);
  }
  if (has_adapter()) {
    lora_A.normal_(0.0, kInitStd);
    lora_B.normal_(0.0, kInitStd);
    lora_E.zero_();
  }
}

std::shared_ptr<torch::nn::Module> SVDLinearImpl::clone(const std::optional<torch::Device>& device) const {
  auto copy = std::dynamic_pointer_cast<SVDLinearImpl>(torch::nn::Cloneable<SVDLinearImpl>::clone(device));
  if (copy->has_adapter()) copy->sync_rank_state();
  copy->merged_ = merged_;
  return copy;
}

void SVDLinearImpl::to(torch::Device device, torch::Dtype dtype, bool non_blocking) {
  const auto saved = integer_buffers();
  torch::nn::Module::to(device, dtype, non_blocking);
  restore_integer_buffers(saved);
}

void SVDLinearImpl::to(torch::Dtype dtype, bool non_blocking) {
  const auto saved = integer_buffers();
  torch::nn::Module::to(dtype, non_blocking);
  restore_integer_buffers(saved);
}

void SVDLinearImpl::to(torch::Device device, bool non_blocking) { torch::nn::Module::to(device, non_blocking); }

void SVDLinearImpl::load(torch::serialize::InputArchive& archive) {
  torch::nn::Module::load(archive);
  if (has_adapter()) sync_rank_state();
}

std::vector<torch::Tensor> SVDLinearImpl::integer_buffers() const {
  if (!has_adapter()) return {};
  return {lora_slot_state.clone(), lora_lambda_start.clone(), lora_factor_start.clone()};
}

void SVDLinearImpl::restore_integer_buffers(const std::vector<torch::Tensor>& saved) {
  if (saved.empty()) return;
  torch::NoGradGuard no_grad;
  // Module::to converted them with the parameters: put back the int64 values, on the buffers' new device.
  const std::array<torch::Tensor*, 3> buffers{&lora_slot_state, &lora_lambda_start, &lora_factor_start};
  for (size_t i = 0; i < buffers.size(); ++i) buffers[i]->set_data(saved[i].to(buffers[i]->device()));
}

void SVDLinearImpl::pretty_print(std::ostream& stream) const {
  stream << "increlora::SVDLinear(in_features=" << options_.in_features()
         << ", out_features=" << options_.out_features() << ", bias=" << (options_.bias() ? "true" : "false");
  if (has_adapter()) {
    stream << ", rank=" << active_ << ", reserve=" << reserve_ << ", capacity=" << capacity_
           << ", lora_alpha=" << options_.lora_alpha() << ", lora_dropout=" << options_.lora_dropout();
  }
  stream << ")";
}

double SVDLinearImpl::scale() const { return options_.lora_alpha() / (static_cast<double>(active_) + kRankEpsilon); }

double SVDLinearImpl::reserve_lambda() const {
  const double initial = static_cast<double>(std::max<int64_t>(options_.r(), 1));
  return kReserveLambda * (static_cast<double>(active_) + kRankEpsilon) / (initial + kRankEpsilon);
}

void SVDLinearImpl::check_input(const torch::Tensor& input, bool autocast) const {
  INCRELORA_CHECK(input.defined() && input.dim() >= 1, "SVDLinear: expected an input tensor of shape [..., ",
                  options_.in_features(), "], got ", input.defined() ? "a scalar" : "an undefined tensor", ".");
  INCRELORA_CHECK(input.size(-1) == options_.in_features(), "SVDLinear: the input's last dimension is ",
                  input.size(-1), " (shape ", input.sizes(), ") but in_features is ", options_.in_features(),
                  "; pass inputs of shape [..., ", options_.in_features(), "] or build the layer with in_features(",
                  input.size(-1), ").");
  // Under autocast the base product and the adapter branch run in autocast's dtype whatever the input's.
  INCRELORA_CHECK(input.scalar_type() == weight.scalar_type() || (autocast && input.is_floating_point()),
                  "SVDLinear: the input is ", input.scalar_type(), " but the weight is ", weight.scalar_type(),
                  "; convert one of them (module->to(", input.scalar_type(), ") or input.to(", weight.scalar_type(),
                  ")), or run under autocast.");
  INCRELORA_CHECK(input.device() == weight.device(), "SVDLinear: the input is on ", input.device(),
                  " but the weight is on ", weight.device(), "; move one of them.");
}

torch::Tensor SVDLinearImpl::forward(const torch::Tensor& input) {
  const bool autocast = input.defined() && at::autocast::is_autocast_enabled(input.device().type());
  check_input(input, autocast);
  if (!has_adapter() || merged_ || in_use() == 0) return torch::nn::functional::linear(input, weight, bias);
  // Under autocast the base product and the adapter branch run in autocast's dtype, as torch::nn::Linear's under
  // autocast (linear is on its lower-precision list): the input and the base are cast here, and the casts'
  // backward returns the input's gradient in its own dtype.
  const auto dtype = autocast ? at::autocast::get_autocast_dtype(input.device().type()) : input.scalar_type();
  const auto cast = [dtype](const torch::Tensor& t) { return t.defined() && t.scalar_type() != dtype ? t.to(dtype) : t; };
  if (!slot_coefficients_current()) refresh_slot_coefficients();  // the banks were moved or converted
  detail::AdapterCall call;
  call.in_use = in_use();
  call.dropout = is_training() ? options_.lora_dropout() : 0.0;
  if (auto* scope = detail::AdapterFactorScope::current()) call.factors = scope->factors(*this, dtype);
  return detail::adapted_linear(cast(input), cast(weight), cast(bias), lora_B, lora_E, lora_A, slot_gate_,
                                slot_held_, call, score_sink_);
}

bool SVDLinearImpl::slot_coefficients_current() const {
  return slot_gate_.defined() && slot_gate_.device() == lora_E.device() &&
         slot_gate_.scalar_type() == lora_E.scalar_type();
}

void SVDLinearImpl::fill_slot_coefficients(torch::Tensor& gate, torch::Tensor& held) const {
  // Fills on the banks' device (no host copy): safe while a CUDA graph is being captured.
  gate.zero_();
  if (active_ > 0) gate.narrow(0, 0, active_).fill_(scale());
  held.zero_();
  if (reserve_ > 0) held.narrow(0, active_, reserve_).fill_(reserve_lambda() * scale());
}

void SVDLinearImpl::refresh_slot_coefficients() {
  if (!has_adapter()) return;
  torch::NoGradGuard no_grad;
  // In place while the tensors fit: a captured CUDA graph reads them by address, and a rank state written again
  // with the same rank (a load) keeps the graph valid only if the storage stays.
  if (!slot_coefficients_current()) {
    slot_gate_ = torch::empty({capacity_}, lora_E.options().requires_grad(false));
    slot_held_ = torch::empty({capacity_}, lora_E.options().requires_grad(false));
  }
  fill_slot_coefficients(slot_gate_, slot_held_);
}

torch::Tensor SVDLinearImpl::slot_coefficients() const {
  if (slot_coefficients_current()) return torch::addcmul(slot_held_, lora_E, slot_gate_);
  auto gate = torch::empty({capacity_}, lora_E.options().requires_grad(false)), held = torch::empty_like(gate);
  fill_slot_coefficients(gate, held);
  return torch::addcmul(held, lora_E, gate);
}

torch::Tensor SVDLinearImpl::delta_weight() const {
  INCRELORA_CHECK(has_adapter(), "SVDLinear::delta_weight: this layer has no adapter (r = 0).");
  torch::NoGradGuard no_grad;
  const int64_t n = in_use();
  if (n == 0) return torch::zeros_like(weight);
  const auto coeff = slot_coefficients().narrow(0, 0, n);
  const auto dw = torch::mm(lora_B.narrow(1, 0, n) * coeff.unsqueeze(0), lora_A.narrow(0, 0, n));
  return dw.to(weight.scalar_type());
}

void SVDLinearImpl::merge() {
  INCRELORA_CHECK(!merged_, "SVDLinear::merge: already merged; call unmerge() first.");
  if (!has_adapter()) return;
  torch::NoGradGuard no_grad;
  weight.add_(delta_weight());
  merged_ = true;
}

void SVDLinearImpl::unmerge() {
  INCRELORA_CHECK(merged_, "SVDLinear::unmerge: not merged; call merge() first.");
  torch::NoGradGuard no_grad;
  weight.sub_(delta_weight());
  merged_ = false;
}

void SVDLinearImpl::assign(const torch::Tensor& P, const torch::Tensor& lambda, const torch::Tensor& Q) {
  INCRELORA_CHECK(has_adapter(), "SVDLinear::assign: this layer has no adapter (r = 0); build it with r(1) or more.");
  INCRELORA_CHECK(!merged_, "SVDLinear::assign: the layer is merged; call unmerge() first.");
  INCRELORA_CHECK(P.defined() && lambda.defined() && Q.defined() && P.dim() == 2 && lambda.dim() == 1 && Q.dim() == 2,
                  "SVDLinear::assign: expected P [out × r], λ [r] and Q [r × in].");
  const int64_t r = P.size(1);
  INCRELORA_CHECK(P.size(0) == options_.out_features() && Q.size(1) == options_.in_features() && Q.size(0) == r &&
                      lambda.size(0) == r,
                  "SVDLinear::assign: P is ", P.sizes(), ", λ ", lambda.sizes(), " and Q ", Q.sizes(), " but the layer "
                  "needs P [", options_.out_features(), " × r], λ [r] and Q [r × ", options_.in_features(), "].");
  INCRELORA_CHECK(r <= capacity_, "SVDLinear::assign: rank ", r, " does not fit in capacity ", capacity_,
                  "; build the layer with capacity(", r, ") or more.");
  torch::NoGradGuard no_grad;
  std::fill(lambda_start_.begin(), lambda_start_.end(), -1);
  std::fill(factor_start_.begin(), factor_start_.end(), -1);
  active_ = 0;
  reserve_ = 0;
  init_slots(0, capacity_, /*step=*/-1, /*zero_P=*/false);
  if (r > 0) {
    lora_B.narrow(1, 0, r).copy_(P);
    lora_E.narrow(0, 0, r).copy_(lambda);
    lora_A.narrow(0, 0, r).copy_(Q);
  }
  active_ = r;
  write_rank_state();
}

void SVDLinearImpl::write_rank_state() {
  torch::NoGradGuard no_grad;
  lora_ranknum.fill_(static_cast<double>(active_));
  auto state = torch::zeros({capacity_}, torch::kLong);
  state.narrow(0, 0, active_).fill_(static_cast<int64_t>(SlotState::kActive));
  if (reserve_ > 0) state.narrow(0, active_, reserve_).fill_(static_cast<int64_t>(SlotState::kReserve));
  lora_slot_state.copy_(state);
  lora_lambda_start.copy_(torch::tensor(lambda_start_, torch::kLong));
  lora_factor_start.copy_(torch::tensor(factor_start_, torch::kLong));
  refresh_slot_coefficients();
}

void SVDLinearImpl::sync_rank_state() {
  INCRELORA_CHECK(has_adapter(), "SVDLinear::sync_rank_state: this layer has no adapter.");
  INCRELORA_CHECK(lora_slot_state.numel() == capacity_, "SVDLinear: the buffer lora_slot_state has ",
                  lora_slot_state.numel(), " slots but the module's capacity is ", capacity_,
                  "; load a checkpoint saved from a module built with the same capacity.");
  const auto state = lora_slot_state.to(torch::kCPU, torch::kLong).contiguous();
  const auto* s = state.data_ptr<int64_t>();
  int64_t active = 0, reserve = 0;
  // Slots must be laid out as [active][reserve][unused]: anything else is a corrupted state.
  for (int64_t i = 0; i < capacity_; ++i) {
    if (s[i] == static_cast<int64_t>(SlotState::kActive)) {
      INCRELORA_CHECK(reserve == 0 && i == active, "SVDLinear: lora_slot_state is not laid out as active slots, "
                      "then reserve slots, then unused ones (slot ", i, "); the checkpoint is corrupted.");
      ++active;
    } else if (s[i] == static_cast<int64_t>(SlotState::kReserve)) {
      INCRELORA_CHECK(i == active + reserve, "SVDLinear: lora_slot_state has a gap before reserve slot ", i,
                      "; the checkpoint is corrupted.");
      ++reserve;
    } else {
      INCRELORA_CHECK(s[i] == static_cast<int64_t>(SlotState::kUnused),
                      "SVDLinear: lora_slot_state holds an unknown state ", s[i], " at slot ", i, ".");
    }
  }
  active_ = active;
  reserve_ = reserve;
  const auto read = [this](const torch::Tensor& buffer, const char* name) {
    INCRELORA_CHECK(buffer.numel() == capacity_, "SVDLinear: the buffer ", name, " has ", buffer.numel(),
                    " entries but the capacity is ", capacity_, ".");
    const auto cpu = buffer.to(torch::kCPU, torch::kLong).contiguous();
    return std::vector<int64_t>(cpu.data_ptr<int64_t>(), cpu.data_ptr<int64_t>() + capacity_);
  };
  lambda_start_ = read(lora_lambda_start, "lora_lambda_start");
  factor_start_ = read(lora_factor_start, "lora_factor_start");
  refresh_slot_coefficients();
}

void SVDLinearImpl::set_reserve(int64_t count) {
  INCRELORA_CHECK(has_adapter(), "SVDLinear::set_reserve: this layer has no adapter (r = 0).");
  INCRELORA_CHECK(count >= 0 && active_ + count <= capacity_, "SVDLinear::set_reserve: a reserve of ", count,
                  " slots does not fit: rank ", active_, " + reserve must stay within capacity ", capacity_,
                  "; build the layer with a larger capacity.");
  INCRELORA_CHECK(!merged_, "SVDLinear::set_reserve: the layer is merged; call unmerge() first.");
  torch::NoGradGuard no_grad;
  resize_reserve(count, /*step=*/-1);
  write_rank_state();
}

void SVDLinearImpl::init_slots(int64_t first, int64_t n, int64_t step, bool zero_P) {
  lora_A.narrow(0, first, n).normal_(0.0, kInitStd);
  if (zero_P) {
    lora_B.narrow(1, first, n).zero_();
  } else {
    lora_B.narrow(1, first, n).normal_(0.0, kInitStd);
  }
  lora_E.narrow(0, first, n).zero_();
  std::fill_n(factor_start_.begin() + first, n, step);  // their P and Q start training at `step`
}

void SVDLinearImpl::resize_reserve(int64_t count, int64_t step) {
  if (count > reserve_) {
    // Fresh reserve slots: P = 0 (as LoRA's B), so the reserve adds nothing to the output until it has
    // trained; Q is redrawn. Their P and Q start training at `step`.
    init_slots(active_ + reserve_, count - reserve_, step, /*zero_P=*/true);
  } else if (count < reserve_) {
    // Dropped reserve slots stop contributing (λ = 0), as the original does once the budget is met.
    lora_E.narrow(0, active_ + count, reserve_ - count).zero_();
  }
  reserve_ = count;
}

int64_t SVDLinearImpl::grow(int64_t count, int64_t step, int64_t reserve_after) {
  INCRELORA_CHECK(has_adapter(), "SVDLinear::grow: this layer has no adapter (r = 0).");
  INCRELORA_CHECK(!merged_, "SVDLinear::grow: the layer is merged; call unmerge() before training.");
  INCRELORA_CHECK(count >= 1 && active_ + count <= capacity_, "SVDLinear::grow: cannot add ", count,
                  " triplets to rank ", active_, " within capacity ", capacity_, ".");
  INCRELORA_CHECK(reserve_after >= 0, "SVDLinear::grow: reserve_after must be >= 0.");
  torch::NoGradGuard no_grad;
  const int64_t old_rank = active_, new_rank = active_ + count;
  const double held = reserve_lambda();
  // s changes from alpha/(old+eps) to alpha/(new+eps): scale λ of the existing triplets by the inverse ratio
  // so that λ s, hence the output, stays the same.
  const double factor = (static_cast<double>(new_rank) + kRankEpsilon) / (static_cast<double>(old_rank) + kRankEpsilon);
  lora_E.narrow(0, 0, old_rank).mul_(factor);
  const int64_t from_reserve = std::min(count, reserve_);
  if (from_reserve > 0) {
    // A reserve slot contributed held·s_old; it continues with λ = held·factor, the same contribution.
    lora_E.narrow(0, old_rank, from_reserve).fill_(held * factor);
  }
  const int64_t fresh = count - from_reserve;
  if (fresh > 0) {
    // Unused slots start as the original's new triplets: P, Q ~ N(0, 0.02²), λ = 0 (no contribution).
    init_slots(old_rank + from_reserve, fresh, step, /*zero_P=*/false);
  }
  std::fill_n(lambda_start_.begin() + old_rank, count, step);
  const int64_t remaining_reserve = reserve_ - from_reserve;
  active_ = new_rank;
  reserve_ = remaining_reserve;
  resize_reserve(std::min(reserve_after, capacity_ - active_), step);
  write_rank_state();
  return active_;
}

}  // namespace increlora
