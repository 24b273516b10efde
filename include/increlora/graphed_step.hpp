#pragma once
/// \file
/// `GraphedStep`: a training step's forward and backward recorded once as a CUDA graph and replayed, so that
/// the thousands of small kernels of an adapted transformer cost one launch instead of one host call each.

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

namespace increlora {

/// Options of `GraphedStep`.
struct GraphedStepOptions {
  /// false runs every step eagerly (the same code path otherwise: handy to compare, or to find an op that
  /// cannot be captured).
  TORCH_ARG(bool, enabled) = true;
  /// Eager steps before the first capture. They initialise what is created lazily on first use (cuBLAS
  /// handles and workspaces, the autograd engine's device threads, the optimizer's state) outside the graph
  /// and show which parameters receive gradients. Later captures (after a rank growth) need none.
  TORCH_ARG(int64_t, warmup_steps) = 2;
  /// Graphs kept at once (least recently used first out). A run needs two per rank state: one for the steps
  /// that score importance and one for the rest; they all share one memory pool.
  TORCH_ARG(int64_t, max_graphs) = 4;
  /// Return the blocks cached by the eager warm-up steps to the driver before the first capture, so that the
  /// graphs' memory pool does not come on top of them (one `emptyCache`, once).
  TORCH_ARG(bool, release_warmup_cache) = true;
};

/// What a `GraphedStep` has done so far.
struct GraphedStepStats {
  int64_t eager_steps = 0;  ///< steps run without a graph (warm-up, CPU, disabled)
  int64_t captures = 0;     ///< graphs recorded
  int64_t replays = 0;      ///< steps run by replaying a graph (a capture is followed by its first replay)
  int64_t evictions = 0;    ///< graphs released to stay within max_graphs
};

/// Runs a training step's forward and backward, on CUDA from CUDA graphs: the first steps run eagerly, then the
/// step is captured once per state of the model and replayed while that state lasts.
///
/// The step function takes the inputs and returns the loss after calling `backward()` on it:
///
/// \code
///   increlora::GraphedStep step(*model, [&](const std::vector<torch::Tensor>& in) {
///     auto loss = torch::nn::functional::cross_entropy(model(in[0], in[1]), in[2]) +
///                 increlora::compute_orth_regu(*model, 0.1);
///     loss.backward();
///     return loss;
///   });
///   for (int64_t t = 0; t < total_steps; ++t) {
///     auto loss = step({ids, mask, labels});          // zeroes the gradients, runs forward + backward
///     allocator.update_and_increase(*model, t, optimizer);
///     optimizer.step();
///   }
/// \endcode
///
/// What it keys a graph on, and so re-captures on change: the inputs' shapes, dtypes and devices; each
/// `SVDLinear`'s rank, reserve, merged state and score sink (a growth, or the allocator switching scoring on or
/// off); the model's training mode; the storage of every parameter and buffer. The allocator and the optimizer
/// stay outside the graph and run eagerly with their exact semantics: `update_and_increase` between the
/// backward and `optimizer.step()`, growth included.
///
/// Rules for the step function, as for any CUDA-graph capture: use only the inputs it is given (they are
/// copied into fixed buffers; tensors created outside it that never change storage, like parameters, are fine);
/// no host synchronisation (`item()`, printing a tensor, a data-dependent shape, a copy to the CPU) and no
/// copy of new host data to the device inside it; no gradient accumulation across calls (each call zeroes the
/// gradients first; the gradient tensors are owned here and re-attached to the parameters after each call, so
/// `optimizer.zero_grad()` is harmless). Dropout and other random ops draw fresh numbers at each replay. A step
/// that breaks a rule fails its capture with an exception that says so, and the object runs eagerly after it.
///
/// On a CPU model, or when LibTorch was built without CUDA, it runs every step eagerly.
class GraphedStep {
 public:
  using StepFunction = std::function<torch::Tensor(const std::vector<torch::Tensor>& inputs)>;

  GraphedStep(torch::nn::Module& model, StepFunction step, GraphedStepOptions options = {});
  ~GraphedStep();
  GraphedStep(const GraphedStep&) = delete;
  GraphedStep& operator=(const GraphedStep&) = delete;

  /// Zeroes the gradients, runs the step on `inputs` (moved to the model's device) and returns the loss: a
  /// tensor of its own, which later steps do not overwrite.
  torch::Tensor operator()(const std::vector<torch::Tensor>& inputs);

  /// Releases every graph, its memory and the gradients held for the graphs (they are detached from the
  /// parameters), and forgets a failed capture; the next steps warm up and capture anew. Call it after
  /// replacing the model's tensors by hand, which the key does not see when the new storage reuses an old
  /// address.
  void reset();

  /// Whether steps run from CUDA graphs: a CUDA model, a LibTorch with CUDA, `enabled`, and no failed capture.
  bool uses_graphs() const;
  const GraphedStepStats& stats() const;
  /// Whether this build of increlora can capture CUDA graphs (it was compiled against a CUDA LibTorch).
  static bool cuda_graphs_compiled();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace increlora
