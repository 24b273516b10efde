#include "increlora/regularization.hpp"

#include "increlora/errors.hpp"
#include "increlora/modules.hpp"


namespace increlora {

torch::Tensor compute_orth_regu(const torch::nn::Module& model, double regu_weight) {
  const auto layers = named_svd_linears(model, /*adapters_only=*/true);
  INCRELORA_CHECK(!layers.empty(), "compute_orth_regu: the model has no SVDLinear layer with an adapter "
                  "(build the layers to adapt with r >= 1).");
  torch::Tensor total;
  for (const auto& entry : layers) {
    const auto& m = entry.second;
    const int64_t n = m->in_use();
    const auto Q = m->lora_A.narrow(0, 0, n);
    const auto P = m->lora_B.narrow(1, 0, n);
    const auto eye = torch::eye(n, Q.options().requires_grad(false));
    // torch::norm over all elements is the Frobenius norm.
    auto term = torch::norm(torch::mm(Q, Q.t()) - eye) + torch::norm(torch::mm(P.t(), P) - eye);
    total = total.defined() ? total + term : term;
  }
  return total * (regu_weight / (2.0 * static_cast<double>(layers.size())));
}

}  // namespace increlora
