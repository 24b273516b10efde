#pragma once
/// \file
/// Internal: the key that groups tensors for multi-tensor kernels, which take one device and one dtype at a time.

#include <torch/types.h>

#include <tuple>

namespace increlora::detail {

/// (device type, device index, dtype) of a tensor, ordered, for std::map keys.
using TensorKind = std::tuple<int, int, int>;

inline TensorKind kind_of(const torch::Tensor& t) {
  return {static_cast<int>(t.device().type()), t.device().index(), static_cast<int>(t.scalar_type())};
}

}  // namespace increlora::detail
