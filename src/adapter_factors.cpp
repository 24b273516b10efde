#include "increlora/detail/adapter_factors.hpp"

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

AdapterFactorScope::AdapterFactorScope(std::vector<SVDLinearImpl*> layers)
    : layers_(std::move(layers)), previous_(innermost) {
  for (size_t i = 0; i < layers_.size(); ++i) index_.emplace(layers_[i], i);
  innermost = this;
}

AdapterFactorScope::~AdapterFactorScope() { innermost = previous_; }

AdapterFactorScope* AdapterFactorScope::current() { return innermost; }

std::vector<int64_t> AdapterFactorScope::versions_of(const SVDLinearImpl& layer) {
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
  if (!p.factors.coeff.defined() || p.active != layer.rank() || p.reserve != layer.reserve_rank() ||
      !layer.slot_coefficients_current() || p.versions != versions_of(layer)) {
    return nullptr;
  }
  return &p.factors;
}

void AdapterFactorScope::prepare(c10::ScalarType dtype) {
  torch::NoGradGuard no_grad;
  auto& out = prepared_[dtype];
  out.assign(layers_.size(), {});
  // Layers whose banks have one shape, device and dtype: (out, capacity, in, device type, index, banks' dtype).
  using Key = std::tuple<int64_t, int64_t, int64_t, int, int, int>;
  std::map<Key, std::vector<size_t>> groups;
  for (size_t i = 0; i < layers_.size(); ++i) {
    auto& layer = *layers_[i];
    if (!in_use(layer)) continue;
    if (!layer.slot_coefficients_current()) layer.refresh_slot_coefficients();
    const auto& P = layer.lora_B;
    groups[{P.size(0), P.size(1), layer.lora_A.size(1), static_cast<int>(P.device().type()), P.device().index(),
            static_cast<int>(P.scalar_type())}]
        .push_back(i);
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
    // The same operations as a layer's own forward (adapted_linear), element for element, over [K × ...] stacks.
    const auto coeff = torch::addcmul(torch::stack(helds), torch::stack(lambdas), torch::stack(gates));  // [K, cap]
    const auto P = torch::stack(Ps);  // [K, out, cap]
    auto Pc = torch::empty(P.sizes(), P.options().dtype(dtype));
    at::mul_out(Pc, P, coeff.unsqueeze(1));
    auto Qc = torch::stack(Qs);  // [K, cap, in]
    if (Qc.scalar_type() != dtype) Qc = Qc.to(dtype);
    for (size_t k = 0; k < members.size(); ++k) {
      const auto i = members[k];
      const auto& layer = *layers_[i];
      const auto row = static_cast<int64_t>(k);
      out[i] = {{coeff[row], Pc[row], Qc[row]}, versions_of(layer), layer.rank(), layer.reserve_rank()};
    }
  }
}

}  // namespace increlora::detail
