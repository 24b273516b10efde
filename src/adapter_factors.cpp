#include "increlora/detail/adapter_factors.hpp"

#include "increlora/detail/tensor_kind.hpp"
#include "increlora/svd_linear.hpp"

#include <torch/types.h>
#include <torch/utils.h>

#include <tuple>
#include <utility>

namespace increlora::detail {
namespace {

thread_local AdapterFactorScope* innermost = nullptr;

bool in_use(const SVDLinearImpl& layer) {
  return layer.has_adapter() && !layer.is_merged() && layer.in_use() > 0;
}

}  // namespace

AdapterFactors make_adapter_factors(const torch::Tensor& P, const torch::Tensor& lambda, const torch::Tensor& Q,
                                    const torch::Tensor& gate, const torch::Tensor& held, c10::ScalarType dtype) {
  AdapterFactors f;
  f.coeff = torch::addcmul(held, lambda, gate);  // c = λ ⊙ gate + held, in the banks' dtype
  // P diag(c) scaled and cast in one kernel (mul_out computes in the banks' dtype and stores in the output's).
  f.Pc = torch::empty(P.sizes(), P.options().dtype(dtype));
  at::mul_out(f.Pc, P, f.coeff.unsqueeze(-2));
  f.Qc = Q.to(dtype);
  return f;
}

AdapterFactorScope::AdapterFactorScope(std::vector<SVDLinearImpl*> layers)
    : layers_(std::move(layers)), previous_(innermost) {
  for (size_t i = 0; i < layers_.size(); ++i) index_.emplace(layers_[i], i);
  innermost = this;
}

AdapterFactorScope::~AdapterFactorScope() { innermost = previous_; }

AdapterFactorScope* AdapterFactorScope::current() { return innermost; }

AdapterFactorScope::Versions AdapterFactorScope::versions_of(const SVDLinearImpl& layer) {
  return {layer.lora_E._version(), layer.lora_B._version(), layer.lora_A._version(), layer.slot_gate_._version(),
          layer.slot_held_._version()};
}

const AdapterFactors* AdapterFactorScope::factors(SVDLinearImpl& layer, c10::ScalarType dtype) {
  const auto it = index_.find(&layer);
  if (it == index_.end() || !in_use(layer)) return nullptr;
  auto found = prepared_.find(dtype);
  if (found == prepared_.end()) {
    prepare(dtype);
    found = prepared_.find(dtype);
  }
  const auto& p = found->second[it->second];
  if (!p.factors.coeff.defined() || !layer.slot_coefficients_current() || p.versions != versions_of(layer)) {
    return nullptr;
  }
  return &p.factors;
}

void AdapterFactorScope::prepare(c10::ScalarType dtype) {
  torch::NoGradGuard no_grad;
  auto& out = prepared_[dtype];
  out.assign(layers_.size(), {});
  // Layers whose banks have one shape (out, capacity, in), device and dtype.
  using Key = std::tuple<int64_t, int64_t, int64_t, TensorKind>;
  std::map<Key, std::vector<size_t>> groups;
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto& layer = *layers_[i];
    if (!in_use(layer)) continue;
    if (!layer.slot_coefficients_current()) layer.refresh_slot_coefficients();
    const auto& P = layer.lora_B;
    groups[{P.size(0), P.size(1), layer.lora_A.size(1), kind_of(P)}].push_back(i);
  }
  for (const auto& [key, members] : groups) {
    if (members.size() < kMinGroup) continue;
    std::vector<torch::Tensor> lambdas, gates, helds, Ps, Qs;
    for (const auto i : members) {
      const auto& layer = *layers_[i];
      lambdas.push_back(layer.lora_E);
      gates.push_back(layer.slot_gate_);
      helds.push_back(layer.slot_held_);
      Ps.push_back(layer.lora_B);
      Qs.push_back(layer.lora_A);
    }
    const auto stacked = make_adapter_factors(torch::stack(Ps), torch::stack(lambdas), torch::stack(Qs),
                                              torch::stack(gates), torch::stack(helds), dtype);
    for (size_t k = 0; k < members.size(); ++k) {
      const auto row = static_cast<int64_t>(k);
      out[members[k]] = {{stacked.coeff[row], stacked.Pc[row], stacked.Qc[row]}, versions_of(*layers_[members[k]])};
    }
  }
}

}  // namespace increlora::detail
