#include "increlora/optim.hpp"

#include "increlora/errors.hpp"

#include <ATen/ops/_foreach_add.h>
#include <ATen/ops/_fused_adamw.h>

#include <map>
#include <tuple>
#include <vector>

namespace increlora {

torch::Tensor FusedAdamW::step(LossClosure closure) {
  torch::NoGradGuard no_grad;
  torch::Tensor loss;
  if (closure != nullptr) {
    at::AutoGradMode enable_grad(true);
    loss = closure();
  }
  for (auto& group : param_groups()) {
    const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
    // The fused kernel takes tensors of one device and dtype at a time.
    struct Lists {
      std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps;
    };
    std::map<std::tuple<int, int, int>, Lists> groups;
    for (auto& p : group.params()) {
      if (!p.grad().defined()) continue;
      INCRELORA_CHECK(!p.grad().is_sparse(), "FusedAdamW: sparse gradients are not supported; use a dense "
                      "embedding or torch::optim::AdamW.");
      // The fused kernel walks parameter, gradient and moments in memory order: they must share one dense layout.
      INCRELORA_CHECK(p.is_contiguous(), "FusedAdamW: a parameter of shape ", p.sizes(), " is not contiguous; make "
                      "it contiguous before building the optimizer, or use torch::optim::AdamW for it.");
      auto grad = p.grad().is_contiguous() ? p.grad() : p.grad().contiguous();
      auto& slot = state()[p.unsafeGetTensorImpl()];
      if (!slot) {
        auto fresh = std::make_unique<torch::optim::AdamWParamState>();
        fresh->step(0);
        fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        if (options.amsgrad()) fresh->max_exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        slot = std::move(fresh);
      }
      auto& s = static_cast<torch::optim::AdamWParamState&>(*slot);
      auto& device_step = steps_[p.unsafeGetTensorImpl()];
      if (!device_step.tensor.defined() || device_step.host != s.step() ||
          device_step.tensor.device() != p.device()) {
        device_step.tensor = torch::full({}, static_cast<double>(s.step()),
                                         torch::TensorOptions().dtype(torch::kFloat).device(p.device()));
        device_step.host = s.step();
      }
      auto& lists = groups[{static_cast<int>(p.device().type()), p.device().index(), static_cast<int>(p.scalar_type())}];
      lists.params.push_back(p);
      lists.grads.push_back(grad);
      lists.exp_avgs.push_back(s.exp_avg());
      lists.exp_avg_sqs.push_back(s.exp_avg_sq());
      if (options.amsgrad()) lists.max_exp_avg_sqs.push_back(s.max_exp_avg_sq());
      lists.steps.push_back(device_step.tensor);
      s.step(s.step() + 1);
      device_step.host = s.step();
    }
    const auto [beta1, beta2] = options.betas();
    for (auto& entry : groups) {
      auto& l = entry.second;
      // The kernel reads the step count; it does not advance it (torch.optim does this add before it too).
      at::_foreach_add_(l.steps, 1);
      at::_fused_adamw_(l.params, l.grads, l.exp_avgs, l.exp_avg_sqs, l.max_exp_avg_sqs, l.steps, options.lr(),
                        beta1, beta2, options.weight_decay(), options.eps(), options.amsgrad(),
                        /*maximize=*/false);
    }
  }
  return loss;
}

}  // namespace increlora
