#include "increlora/regularization.hpp"

#include "increlora/errors.hpp"
#include "increlora/modules.hpp"
#include "increlora/svd_linear.hpp"

#include <cmath>
#include <map>
#include <utility>
#include <vector>

namespace increlora {
namespace {

// Σ over the stacked banks of ‖(G − I) ⊙ u uᵀ‖_F, G the Gram matrix of each layer's slots and u [L × capacity]
// marking each layer's slots in use: one batched product for all of them. `slots_in_rows` says how the banks hold
// their slots: Q [L × capacity × in] as rows (G = Q Qᵀ), P [L × out × capacity] as columns (G = Pᵀ P). Both are
// stacked as they are stored, so the backward hands every bank a contiguous gradient (a transposed one makes
// autograd's accumulation take a strided, non-vectorised add per bank). The mask keeps the whole banks in the
// product instead of slices of the slots in use, so the backward writes each bank's gradient at full size (zero for
// the unused slots) instead of a zero fill and a copy per slice; the loss and the gradients of the slots in use are
// those of the slices.
torch::Tensor sum_of_gram_deviations(const std::vector<torch::Tensor>& banks, const std::vector<torch::Tensor>& states,
                                     bool slots_in_rows) {
  const auto stacked = torch::stack(banks);
  const int64_t n = stacked.size(slots_in_rows ? 1 : 2);
  const auto in_use = torch::stack(states).ne(static_cast<int64_t>(SlotState::kUnused)).to(stacked.scalar_type());
  const auto mask = in_use.unsqueeze(2) * in_use.unsqueeze(1);  // [L × capacity × capacity]
  const auto product = slots_in_rows ? torch::bmm(stacked, stacked.transpose(1, 2))
                                     : torch::bmm(stacked.transpose(1, 2), stacked);
  const auto gram = (product - torch::eye(n, stacked.options())) * mask;
  return torch::linalg_vector_norm(gram.flatten(1), 2, {1}).sum();
}

}  // namespace

torch::Tensor compute_orth_regu(const torch::nn::Module& model, double regu_weight) {
  INCRELORA_CHECK(std::isfinite(regu_weight) && regu_weight >= 0.0, "compute_orth_regu: regu_weight must be a finite "
                  "number >= 0 (got ", regu_weight, "); the paper uses 0.1, and 0 turns the regularizer off.");
  const auto layers = named_svd_linears(model, /*adapters_only=*/true);
  INCRELORA_CHECK(!layers.empty(), "compute_orth_regu: the model has no SVDLinear layer with an adapter "
                  "(build the layers to adapt with r >= 1).");
  // Layers whose banks have the same shape are stacked and handled by one batched product: a per-layer loop
  // launches ~15 kernels per layer forward and twice that backward, which dominates a transformer's step.
  // Q Qᵀ is grouped by (capacity, in_features), Pᵀ P by (capacity, out_features).
  struct Group {
    std::vector<torch::Tensor> banks, states;
  };
  std::map<std::pair<int64_t, int64_t>, Group> q_groups, p_groups;
  for (const auto& entry : layers) {
    const auto& m = entry.second;
    auto& q = q_groups[{m->capacity(), m->lora_A.size(1)}];
    q.banks.push_back(m->lora_A);
    q.states.push_back(m->lora_slot_state);
    auto& p = p_groups[{m->capacity(), m->lora_B.size(0)}];
    p.banks.push_back(m->lora_B);
    p.states.push_back(m->lora_slot_state);
  }
  torch::Tensor total;
  for (const auto* groups : {&q_groups, &p_groups}) {
    for (const auto& group : *groups) {
      auto term = sum_of_gram_deviations(group.second.banks, group.second.states, groups == &q_groups);
      total = total.defined() ? total + term : term;
    }
  }
  return total * (regu_weight / (2.0 * static_cast<double>(layers.size())));
}

}  // namespace increlora
