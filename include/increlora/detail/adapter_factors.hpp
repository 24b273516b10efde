#pragma once
/// \file
/// Internal: the adapter factors of many `SVDLinear` layers computed together for one training step. Used by
/// svd_linear.cpp, graphed_step.cpp and the tests.

#include <torch/types.h>

#include <array>
#include <cstdint>
#include <map>
#include <unordered_map>
#include <vector>

namespace increlora {
class SVDLinearImpl;
namespace detail {

/// One layer's adapter factors as its forward uses them: the per-slot coefficient c = λ ⊙ gate + held (in the banks'
/// dtype), P diag(c) and Q (both in the compute dtype). They depend on the parameters only, not on the input.
struct AdapterFactors {
  torch::Tensor coeff, Pc, Qc;
};

/// The factors from the banks: P [..., out, capacity], λ, gate, held [..., capacity], Q [..., capacity, in], one
/// layer's or a stack of layers' (leading dimension K), with P diag(c) and Q in `dtype`. The one definition both a
/// layer's own forward and `AdapterFactorScope` use, so that the stacked factors equal a layer's own bit for bit.
AdapterFactors make_adapter_factors(const torch::Tensor& P, const torch::Tensor& lambda, const torch::Tensor& Q,
                                    const torch::Tensor& gate, const torch::Tensor& held, c10::ScalarType dtype);

/// While one is alive on a thread (the innermost, when nested), the forwards of the layers given to it take their
/// adapter factors from it: on the first request for a compute dtype it computes the factors of every layer at
/// once, a few kernels over each group of layers whose banks have one shape (stacked), where each layer's forward
/// would otherwise launch three small kernels of its own (72 adapted layers of a BERT-base: 216 kernels a step, on
/// a GPU a few microseconds each whatever their size, against 8 a group).
///
/// The scope is thread-local state, as LibTorch's grad-mode guards are: a scope on one thread never reaches another
/// thread's forwards, so two threads never share its lazily computed factors.
///
/// The factors hold while the banks, λ and the rank state stay as they were at the first request, as they do during
/// a training step's forward and backward (the optimizer and the allocator run outside it); a layer whose tensors
/// were changed since computes its own again (the version counters of its banks and slot coefficients tell: a rank
/// change rewrites the slot coefficients in place). `GraphedStep` opens one around each step
/// it runs, eagerly or into a CUDA graph (the stacking kernels are then part of the graph and run at each replay).
class AdapterFactorScope {
 public:
  /// The layers whose factors this scope may compute (others compute their own as without a scope).
  explicit AdapterFactorScope(std::vector<SVDLinearImpl*> layers);
  ~AdapterFactorScope();
  AdapterFactorScope(const AdapterFactorScope&) = delete;
  AdapterFactorScope& operator=(const AdapterFactorScope&) = delete;

  /// The innermost scope alive on this thread, or nullptr.
  static AdapterFactorScope* current();

  /// `layer`'s factors in the compute dtype `dtype`, or nullptr when this scope does not compute them (the layer is
  /// not one of its layers, has no adapter in use, sits in a group too small to gain from stacking, or its tensors
  /// changed since they were computed): the layer then computes its own.
  const AdapterFactors* factors(SVDLinearImpl& layer, c10::ScalarType dtype);

  /// Groups of fewer layers than this are left to compute their own factors: stacking a group costs 8 kernels, a
  /// layer's own 3.
  static constexpr size_t kMinGroup = 3;

 private:
  // The version counters of λ, P, Q and the slot gate and held values: what the factors were computed from.
  using Versions = std::array<int64_t, 5>;
  struct Prepared {
    AdapterFactors factors;
    Versions versions{};
  };
  void prepare(c10::ScalarType dtype);
  static Versions versions_of(const SVDLinearImpl& layer);

  std::vector<SVDLinearImpl*> layers_;
  std::unordered_map<const SVDLinearImpl*, size_t> index_;
  std::map<c10::ScalarType, std::vector<Prepared>> prepared_;  // per compute dtype, per layer (undefined: none)
  AdapterFactorScope* previous_ = nullptr;
};

}  // namespace detail
}  // namespace increlora
