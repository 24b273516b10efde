#include "increlora/regularization.hpp"

#include "increlora/errors.hpp"
#include "increlora/modules.hpp"

#include <cmath>
#include <map>
#include <utility>
#include <vector>

namespace increlora {
namespace {

// Σ over the stacked matrices M [L × n × k] of ‖M Mᵀ − I‖_F: one batched product for all of them.
torch::Tensor sum_of_gram_deviations(const std::vector<torch::Tensor>& mats) {
  const auto stacked = torch::stack(mats);  // [L × n × k]
  const int64_t n = stacked.size(1);
  const auto gram = torch::bmm(stacked, stacked.transpose(1, 2)) - torch::eye(n, stacked.options());
  return torch::linalg_vector_norm(gram.flatten(1), 2, {1}).sum();
}

}  // namespace

torch::Tensor compute_orth_regu(const torch::nn::Module& model, double regu_weight) {
  INCRELORA_CHECK(std::isfinite(regu_weight) && regu_weight >= 0.0, "compute_orth_regu: regu_weight must be a finite "
                  "number >= 0 (got ", regu_weight, "); the paper uses 0.1, and 0 turns the regularizer off.");
  const auto layers = named_svd_linears(model, /*adapters_only=*/true);
  INCRELORA_CHECK(!layers.empty(), "compute_orth_regu: the model has no SVDLinear layer with an adapter "
                  "(build the layers to adapt with r >= 1).");
  // Layers whose slices have the same shape are stacked and handled by one batched product: a per-layer loop
  // launches ~15 kernels per layer forward and twice that backward, which dominates a transformer's step.
  // Q Qᵀ is grouped by (slots in use, in_features), Pᵀ P (computed as (Pᵀ)(Pᵀ)ᵀ) by (slots, out_features).
  std::map<std::pair<int64_t, int64_t>, std::vector<torch::Tensor>> rows_q, rows_p;
  for (const auto& entry : layers) {
    const auto& m = entry.second;
    const int64_t n = m->in_use();
    rows_q[{n, m->lora_A.size(1)}].push_back(m->lora_A.narrow(0, 0, n));
    rows_p[{n, m->lora_B.size(0)}].push_back(m->lora_B.narrow(1, 0, n).t());
  }
  torch::Tensor total;
  for (const auto* groups : {&rows_q, &rows_p}) {
    for (const auto& group : *groups) {
      auto term = sum_of_gram_deviations(group.second);
      total = total.defined() ? total + term : term;
    }
  }
  return total * (regu_weight / (2.0 * static_cast<double>(layers.size())));
}

}  // namespace increlora
