#pragma once
/// \file
/// An adapted linear layer's forward (frozen base product and adapter branch) as one autograd node. Internal:
/// used by svd_linear.cpp and the tests.

#include <torch/types.h>

#include <cstdint>

namespace increlora::detail {

struct AdapterFactors;

/// Settings of one call of `adapted_linear` that are not tensors.
struct AdapterCall {
  /// Slots taking part in the forward (active + reserve): the importance score is taken over these.
  int64_t in_use = 0;
  /// Dropout probability on the adapter branch's input (0: none, as in eval mode).
  double dropout = 0.0;
  /// c = λ ⊙ gate + held, P diag(c) and Q in the compute dtype, computed beforehand for many layers at once
  /// (`AdapterFactorScope`); null: the call computes them from its tensors.
  const AdapterFactors* factors = nullptr;
};

/// y = x Wᵀ + b + ((drop(x) Qᵀ) ⊙ c) Pᵀ for x [..., in], W [out × in], b [out] (may be undefined), and the whole
/// banks P [out × capacity], λ [capacity], Q [capacity × in], with the per-slot coefficient
/// c = λ ⊙ gate + held: `gate` [capacity] is the scale s on active slots and 0 elsewhere, `held` [capacity] the
/// reserve's held λ·s on reserve slots and 0 elsewhere. Unused slots (both 0) add nothing and receive exactly
/// zero gradients; reserve slots train P and Q but not λ.
///
/// Why one node over the whole banks: the adapter adds into the base product's output (a GEMM with β = 1) and its
/// input gradient into the base's (the dropout mask applied in the same pass), so neither the output nor the
/// input gradient costs a separate add; the banks' gradients come out at their full size and dtype, so autograd
/// runs no slice-backward (a zero fill and a copy per bank) and no cast-backward. The products are skinny
/// (capacity columns), so the unused slots cost next to nothing. The dense ΔW is never formed.
///
/// x and W must have the same dtype (the compute dtype: the caller casts under autocast); the banks may be
/// float32 under a bf16/f16 base and get float32 gradients. When `score_sink` is defined the backward also adds
/// the importance score of the `in_use` slots to it (see `importance_score`), or ∂L/∂ΔW for a 2-D sink.
torch::Tensor adapted_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                             const torch::Tensor& P, const torch::Tensor& lambda, const torch::Tensor& Q,
                             const torch::Tensor& gate, const torch::Tensor& held, const AdapterCall& call,
                             const torch::Tensor& score_sink);

/// Σ|ΔW ⊙ (dyᵀ x)| / sqrt(numel ΔW) for 2-D dy [tokens × out], x [tokens × in] and a dense ΔW [out × in]
/// given in factors (P [out × n], coeff [n] = λ s, Q [n × in]); blocked over output rows, so that the transient
/// never exceeds ~16M elements. The sum accumulates in float32 (float64 for double inputs); the products run in
/// float32 for f16 inputs (range) and in the input's precision otherwise.
torch::Tensor importance_score(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& P,
                               const torch::Tensor& coeff, const torch::Tensor& Q);
/// `importance_score` before the division by sqrt(numel ΔW): Σ|ΔW ⊙ (dyᵀ x)| (a 0-dim tensor in float32, float64
/// for double inputs), so that a caller can fold the division into its accumulation.
torch::Tensor importance_sum(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& P,
                             const torch::Tensor& coeff, const torch::Tensor& Q);

}  // namespace increlora::detail
