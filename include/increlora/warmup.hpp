#pragma once
/// \file
/// Restart warmup (the original's `multi_lr`): triplets that start training at step t0 get a learning-rate
/// schedule of their own instead of jumping in at the current rate, with any `torch::optim` optimizer.

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include <cstdint>
#include <memory>
#include <vector>

namespace increlora {

class SVDLinearImpl;

/// How the rate of a triplet that started at step t0 relates to the optimizer's rate.
enum class RestartSchedule {
  /// The original's `Multi_LambdaLR` (its default): the triplets of each activation form a parameter group
  /// with its own linear schedule — warmup from 0 to the *peak* rate over `warmup_steps`, then linear decay to 0
  /// at `total_steps` — while the optimizer follows the same schedule from step 0. So a late triplet trains
  /// faster than the already-decayed global rate, up to (T − W) / (T − t0 − 1 − W) times it. As in the
  /// original, the group's first update (at t0, before its scheduler knows it) runs at the peak rate, the next
  /// at 0, and the update of step t0 + 1 + k at peak × k / W during its warmup. Assumes the optimizer's own rate
  /// follows that linear warmup and decay (what `glue` and the Hugging Face Trainer do).
  kOriginal,
  /// The current rate scaled by (t − t0 + 1) / W for W steps, then the current rate: for optimizers whose rate
  /// follows another schedule (constant, cosine, ...), where the original's ratio means nothing.
  kScaleCurrent,
};

/// Options of `RestartWarmup`.
struct RestartWarmupOptions {
  RestartWarmupOptions(int64_t warmup_steps, int64_t total_steps)
      : warmup_steps_(warmup_steps), total_steps_(total_steps) {}
  /// W: the warmup of the optimizer's schedule, and of each restarted group (the original uses the same).
  TORCH_ARG(int64_t, warmup_steps);
  /// T: the optimizer steps of the training run (the end of the linear decay); unused by kScaleCurrent.
  TORCH_ARG(int64_t, total_steps);
  TORCH_ARG(RestartSchedule, schedule) = RestartSchedule::kOriginal;
};

/// Gives each adapter row that started training at step t0 > -1 the learning rate of `RestartSchedule`,
/// as a factor on the optimizer's rate at each step (`factor(t0, t)`; rows that trained from the start keep the
/// optimizer's rate).
///
/// How the factor is applied: with a `FusedAdamW` that tracks the adapter slots (see its notes; the
/// allocator sets that up) each slot's rate is set exactly, weight decay included. With any other optimizer the
/// rows in warmup are copied before `optimizer.step()` and blended after it, p = p_old + w (p_new − p_old):
/// for an additive optimizer (SGD, Adam, AdamW with decay, ...) that is exactly a per-row rate of w × lr, also
/// for w > 1. Such optimizers keep one step count per tensor, though, so a row activated late gets moments
/// that start from zero but almost no bias correction: its first Adam updates are 3-6 times a fresh
/// parameter's (fading over ~1/(1 − β2) steps), which this factor does not undo — use `FusedAdamW` to train as
/// the original does.
///
/// Which rows: the λ of a triplet from its activation; the P and Q of a triplet from when they started
/// training (at activation without advance learning, at the reserve's creation with it). The starts live in
/// the layers' buffers, so they are saved and restored with the adapter.
///
/// Example:
/// \code
///   increlora::RestartWarmup warmup(*model, increlora::RestartWarmupOptions(/*warmup_steps=*/100, total_steps));
///   ...
///   allocator.update_and_increase(*model, step, optimizer);
///   warmup.step(optimizer, step);      // or warmup.before_step(step, optimizer); optimizer.step(); warmup.after_step();
/// \endcode
class RestartWarmup {
 public:
  RestartWarmup(torch::nn::Module& model, RestartWarmupOptions options);

  /// The factor on the optimizer's rate, at the update of `global_step`, of a row that started at `start`
  /// (1 for start < 0 or global_step < start; 0 where the optimizer's own rate is 0).
  double factor(int64_t start, int64_t global_step) const;
  /// The learning-rate multiplier of the optimizer's own schedule at `global_step` under kOriginal (linear
  /// warmup over W, linear decay to 0 at T, as Hugging Face's `get_linear_schedule_with_warmup`).
  double schedule(int64_t global_step) const;
  /// Prepares the update of `global_step`: sets the slot factors of a tracking `FusedAdamW`, or copies the rows
  /// in warmup for the blend. Call right before `optimizer.step()`.
  void before_step(int64_t global_step, torch::optim::Optimizer& optimizer);
  /// Blends the copied rows with their updated values (nothing to do for a tracking `FusedAdamW`). Call right
  /// after `optimizer.step()`.
  void after_step();
  /// `before_step`, `optimizer.step()`, `after_step`.
  void step(torch::optim::Optimizer& optimizer, int64_t global_step);
  const RestartWarmupOptions& options() const { return options_; }

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
  RestartWarmupOptions options_;
  std::vector<Snapshot> pending_;
  bool armed_ = false;
};

}  // namespace increlora
