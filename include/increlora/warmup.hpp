#pragma once
/// \file
/// Restart warmup (the original's `multi_lr`): triplets that start training at step t get their own linear
/// learning-rate warmup from t instead of jumping in at the current rate, with any `torch::optim` optimizer.

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace increlora {

class SVDLinearImpl;

/// Scales the update of the adapter rows that started training less than `warmup_steps` ago by
/// w = (global_step − start + 1) / warmup_steps: it keeps a copy of those rows before `optimizer.step()` and
/// blends p = p_old + w (p_new − p_old) after it. For an additive optimizer (SGD, Adam, AdamW with decay, ...)
/// that is exactly a per-row learning rate of w × lr, on top of whatever schedule the optimizer follows.
///
/// Which rows: the λ of a triplet from its activation; the P and Q of a triplet from when they started
/// training (at activation without advance learning, at the reserve's creation with it). The starts live in
/// the layers' buffers, so they are saved and restored with the adapter.
///
/// Optimizer state: a row that starts training had zero gradients before (unused or held), so Adam's moments
/// for it are zero and need no reset; Adam's bias correction, which counts steps per tensor, then makes its
/// first updates larger than the steady ones, which is what this warmup tames.
///
/// Example:
/// \code
///   increlora::RestartWarmup warmup(*model, /*warmup_steps=*/100);
///   ...
///   allocator.update_and_increase(*model, step, optimizer);
///   warmup.step(optimizer, step);      // or warmup.before_step(step); optimizer.step(); warmup.after_step();
/// \endcode
class RestartWarmup {
 public:
  RestartWarmup(torch::nn::Module& model, int64_t warmup_steps);

  /// The update factor at `global_step` of a row that started at `start` (1 for start < 0 or past warmup).
  double factor(int64_t start, int64_t global_step) const;
  /// Copies the rows in warmup. Call right before `optimizer.step()`.
  void before_step(int64_t global_step);
  /// Blends the copied rows with their updated values. Call right after `optimizer.step()`.
  void after_step();
  /// `before_step`, `optimizer.step()`, `after_step`.
  void step(torch::optim::Optimizer& optimizer, int64_t global_step);
  int64_t warmup_steps() const { return warmup_steps_; }

 private:
  struct Snapshot {
    torch::Tensor bank;     // the parameter the rows belong to
    int64_t dim = 0;        // the dimension that indexes slots
    torch::Tensor index;    // slots in warmup, on the bank's device
    torch::Tensor weight;   // their factors, shaped to broadcast against the rows
    torch::Tensor before;   // the rows before the step
  };
  void snapshot(const torch::Tensor& bank, int64_t dim, const std::vector<int64_t>& starts, int64_t global_step);

  std::vector<std::shared_ptr<SVDLinearImpl>> layers_;
  int64_t warmup_steps_;
  std::vector<Snapshot> pending_;
};

}  // namespace increlora
