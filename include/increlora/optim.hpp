#pragma once
/// \file
/// `FusedAdamW`: `torch::optim::AdamW` with its update done by ATen's fused multi-tensor kernel.
///
/// The C++ `torch::optim::AdamW` updates one tensor at a time, about ten kernel launches per parameter; an
/// adapted BERT-base has ~220 trainable tensors, so the optimizer alone launches thousands of kernels per step
/// (one tiny Linear's step took 580 µs on an H200). `FusedAdamW` does the same arithmetic in one
/// `at::_fused_adamw_` call per (device, dtype) group, on CPU and CUDA.

#include <torch/optim/adamw.h>

#include <unordered_map>

namespace increlora {

/// AdamW (decoupled weight decay) with the update of each (device, dtype) group of parameters fused into one
/// ATen kernel. A drop-in for `torch::optim::AdamW`: same options, the same `AdamWParamState` (`step`,
/// `exp_avg`, `exp_avg_sq`, `max_exp_avg_sq`) in `state()`, so checkpoints and `dynamic_cast<AdamW&>` work.
/// The kernel keeps each parameter's step count as a float tensor on the parameter's device; it is rebuilt
/// from `AdamWParamState::step()` whenever the two differ (after a state was loaded, say).
///
/// Example:
/// \code
///   increlora::FusedAdamW optimizer(model->parameters(), torch::optim::AdamWOptions(1e-3).weight_decay(0.01));
/// \endcode
class FusedAdamW : public torch::optim::AdamW {
 public:
  using torch::optim::AdamW::AdamW;
  torch::Tensor step(LossClosure closure = nullptr) override;

 private:
  struct DeviceStep {
    torch::Tensor tensor;  // float32 scalar on the parameter's device, advanced before each kernel call
    int64_t host = 0;      // the value it holds, to notice a state that was replaced
  };
  std::unordered_map<const void*, DeviceStep> steps_;
};

}  // namespace increlora
