#pragma once
/// \file
/// The adapter branch of `SVDLinear` as one autograd node. Internal: used by svd_linear.cpp and the tests.

#include <torch/types.h>

namespace increlora::detail {

/// y = ((x Qᵀ) ⊙ (λ s)) Pᵀ for x [..., in], P [out × n], Q [n × in], where λ is `lambda_active` for the
/// first `lambda_active.numel()` slots and the constant `reserve_lambda` for the remaining (reserve) slots,
/// which receive no λ gradient. The dense ΔW is never formed in the forward.
///
/// Backward returns the gradients of x, P, λ (active slots) and Q. When `score_sink` is defined it also
/// adds Σ|ΔW ⊙ G| / sqrt(out·in) to it, with G = ∂L/∂ΔW = Σ_tokens dy ⊗ x, computed in row blocks (so the
/// transient never exceeds ~16M elements) and freed at once; the sum accumulates in float32 (float64 for double
/// inputs), the products run in float32 for f16 inputs (range) and in the input's precision otherwise.
torch::Tensor adapter_forward(const torch::Tensor& x, const torch::Tensor& P, const torch::Tensor& lambda_active,
                              const torch::Tensor& Q, double scale, double reserve_lambda,
                              const torch::Tensor& score_sink);

/// λ over `in_use` slots: `lambda_active` followed by the held `reserve_lambda` for the reserve slots.
torch::Tensor effective_lambda(const torch::Tensor& lambda_active, int64_t in_use, double reserve_lambda);

/// Σ|ΔW ⊙ (dyᵀ x)| / sqrt(numel ΔW) for 2-D dy [tokens × out], x [tokens × in] and a dense ΔW [out × in]
/// given in factors (P [out × n], coeff [n] = λ s, Q [n × in]); blocked over output rows.
torch::Tensor importance_score(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& P,
                               const torch::Tensor& coeff, const torch::Tensor& Q);

}  // namespace increlora::detail
