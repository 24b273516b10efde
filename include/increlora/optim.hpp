#pragma once
/// \file
/// `FusedAdamW`: `torch::optim::AdamW` with its update done by ATen's fused multi-tensor kernels, and with the
/// optimizer state of IncreLoRA's triplets kept per slot, as the original's fresh parameter groups have it.
///
/// The C++ `torch::optim::AdamW` updates one tensor at a time, about ten kernel launches per parameter; an
/// adapted BERT-base has ~220 trainable tensors, so the optimizer alone launches thousands of kernels per step
/// (one tiny Linear's step took 580 µs on an H200). `FusedAdamW` does the same arithmetic in one
/// `at::_fused_adamw_` call per (device, dtype) group, on CPU and CUDA.

#include <torch/nn/module.h>
#include <torch/optim/adamw.h>

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

namespace increlora {

class SVDLinearImpl;

/// AdamW (decoupled weight decay) with the update of each (device, dtype) group of parameters fused into one
/// ATen kernel. A drop-in for `torch::optim::AdamW`: same options, the same `AdamWParamState` (`step`,
/// `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`) in `state()`, so checkpoints and `dynamic_cast<AdamW&>` work.
/// The kernel keeps each parameter's step count as a float tensor on the parameter's device; it is rebuilt
/// from `AdamWParamState::step()` whenever the two differ (after a state was loaded, say).
///
/// **Adapter slots.** In the original IncreLoRA a triplet that starts training is a new parameter group: zero
/// moments, a bias correction counted from its own first step, and no update (weight decay included) before
/// it starts. With static banks a per-tensor step count would instead give a slot activated at step 400 a first
/// update 3-6 times a fresh parameter's, fading over ~1/(1 − β2) steps, and weight decay would shrink slots
/// that do not train yet. Once `track_adapter_slots` has been called (`RankAllocator::update_and_increase`
/// does it when given this optimizer), the banks of the model's `SVDLinear` layers are updated slot by slot:
///   * each slot keeps its own step count for the bias correction, from when it started training (λ from its
///     activation; P and Q from their activation, or from the reserve's creation under advance learning), and
///     its moments are zeroed when it starts, so its first updates equal a fresh parameter's;
///   * slots that do not train (unused slots, the held λ of a reserve) are left exactly as they are;
///   * each slot's learning rate can carry a factor (`set_slot_lr_factors`, used by `RestartWarmup`).
/// The tracked banks are updated by ATen's multi-tensor (foreach) kernels, about ten of them for all banks
/// together whatever their number, plus a few kernels over one flat buffer of per-element step counts and rates
/// (float32, so counts stay exact); the coefficients taken from it each step are in the bank's dtype (keep the
/// banks in float32 for float32 arithmetic). Other parameters (a task head) keep the fused kernel.
///
/// Example:
/// \code
///   increlora::FusedAdamW optimizer(model->parameters(), torch::optim::AdamWOptions(1e-3).weight_decay(0.01));
///   ...
///   allocator.update_and_increase(*model, step, optimizer);  // tracks the adapter slots on its first call
///   optimizer.step();
/// \endcode
class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  ~FusedAdamW() override;
  torch::Tensor step(LossClosure closure = nullptr) override;

  /// Gives the adapter banks of `model`'s `SVDLinear` layers per-slot optimizer state (see the class notes).
  /// `global_step` is the step whose `step()` comes next: slots that started before it are taken to have had
  /// one update per step since their start (what a run that called the allocator and the optimizer once per
  /// step did, a resumed one included), slots starting at it start fresh. Calling it again for the same layers
  /// changes nothing; for other layers it starts over. Every bank must be held by this optimizer.
  void track_adapter_slots(const torch::nn::Module& model, int64_t global_step);
  /// Forgets the tracked slots: the banks are then updated as plain parameters. `load_checkpoint` calls it,
  /// since a restored state replaces the per-slot counts (the next `track_adapter_slots` derives them again).
  void untrack_adapter_slots();
  /// Whether `track_adapter_slots` is in effect.
  bool tracks_adapter_slots() const { return !tracked_.empty(); }

  /// Per-slot learning-rate factors of one tracked layer for the coming `step()`: `lambda_factors[i]` scales
  /// slot i's λ, `factor_factors[i]` its P and Q (each has `capacity()` entries, >= 0). They stay in effect
  /// until set again; 1 is the optimizer's own rate. Weight decay scales with them, as with a group's rate.
  void set_slot_lr_factors(const SVDLinearImpl& layer, const std::vector<double>& lambda_factors,
                           const std::vector<double>& factor_factors);

  /// The Adam step count of slot `slot` of the tracked layer's λ (`lambda_bank`) or P/Q bank: updates since
  /// the slot started training (for tests and reports; kept on the host).
  int64_t slot_step(const SVDLinearImpl& layer, bool lambda_bank, int64_t slot) const;

 private:
  struct DeviceStep {
    torch::Tensor tensor;  // float32 scalar on the parameter's device, advanced before each kernel call
    int64_t host = 0;      // the value it holds, to notice a state that was replaced
  };
  struct TrackedBank;
  struct TrackedLayer;
  void step_tracked(std::vector<TrackedBank*>& banks, const torch::optim::AdamWOptions& options);
  TrackedLayer& tracked_layer(const SVDLinearImpl& layer, const char* caller);
  const TrackedLayer& tracked_layer(const SVDLinearImpl& layer, const char* caller) const;

  std::unordered_map<const void*, DeviceStep> steps_;
  std::vector<std::shared_ptr<TrackedLayer>> tracked_;  // shared_ptr: TrackedLayer is complete only in optim.cpp
  std::unordered_map<const void*, TrackedBank*> tracked_banks_;  // by the bank's TensorImpl
};

}  // namespace increlora
