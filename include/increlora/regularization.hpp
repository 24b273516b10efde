#pragma once
/// \file
/// The orthogonality regularizer that keeps P and Q close to singular-vector bases.

#include <torch/nn/module.h>
#include <torch/types.h>

namespace increlora {

/// regu_weight × the mean over the adapted `SVDLinear` layers of (‖QQᵀ − I‖_F + ‖PᵀP − I‖_F) / 2, where P
/// and Q hold the layer's slots in use (active and advance-learning reserve) side by side. Add it to the
/// task loss before `backward()`:
/// \code
///   auto loss = criterion(model->forward(x), y) + increlora::compute_orth_regu(*model, 0.1);
/// \endcode
/// Throws when `regu_weight` is not a finite number >= 0 (NaN, ±inf, negative), or when the model has no
/// `SVDLinear` with an adapter.
torch::Tensor compute_orth_regu(const torch::nn::Module& model, double regu_weight = 0.1);

}  // namespace increlora
