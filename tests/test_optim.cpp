// FusedAdamW: the same updates as torch::optim::AdamW, with its state where AdamW keeps it.
#include "support.hpp"

#include <torch/optim/adamw.h>

TEST_CASE("FusedAdamW updates parameters exactly as torch::optim::AdamW does", "[optim]") {
  auto device = GENERATE(from_range(increlora::test::devices()));
  auto amsgrad = GENERATE(false, true);
  CAPTURE(device, amsgrad);
  torch::manual_seed(17);
  const auto opts = torch::TensorOptions().device(device);
  std::vector<torch::Tensor> a, b;
  for (auto shape : std::vector<std::vector<int64_t>>{{7, 5}, {5}, {3, 4, 2}}) {
    a.push_back(torch::randn(shape, opts).requires_grad_(true));
    b.push_back(a.back().detach().clone().requires_grad_(true));
  }
  auto options = torch::optim::AdamWOptions(3e-2).weight_decay(0.05).amsgrad(amsgrad).betas({0.8, 0.95});
  torch::optim::AdamW reference(a, options);
  increlora::FusedAdamW fused(b, options);
  for (int step = 0; step < 6; ++step) {
    for (size_t i = 0; i < a.size(); ++i) {
      const auto g = torch::randn_like(a[i]);
      a[i].mutable_grad() = g.clone();
      b[i].mutable_grad() = g.clone();
    }
    reference.step();
    fused.step();
  }
  for (size_t i = 0; i < a.size(); ++i) CHECK_ALLCLOSE(b[i], a[i], 1e-5, 1e-6);
  const auto& s = static_cast<const torch::optim::AdamWParamState&>(*fused.state().at(b[0].unsafeGetTensorImpl()));
  CHECK(s.step() == 6);
  const auto& r = static_cast<const torch::optim::AdamWParamState&>(*reference.state().at(a[0].unsafeGetTensorImpl()));
  CHECK_ALLCLOSE(s.exp_avg_sq(), r.exp_avg_sq(), 1e-5, 1e-8);
}

TEST_CASE("FusedAdamW picks up a step count that was changed in its state", "[optim]") {
  auto p = torch::ones({3}).requires_grad_(true);
  auto q = torch::ones({3}).requires_grad_(true);
  auto options = torch::optim::AdamWOptions(0.1).weight_decay(0.0);
  torch::optim::AdamW reference({q}, options);
  increlora::FusedAdamW fused({p}, options);
  p.mutable_grad() = torch::full({3}, 0.5);
  q.mutable_grad() = torch::full({3}, 0.5);
  fused.step();
  reference.step();
  // As a checkpoint restore does: overwrite the step count of both, then continue.
  static_cast<torch::optim::AdamWParamState&>(*fused.state().at(p.unsafeGetTensorImpl())).step(40);
  static_cast<torch::optim::AdamWParamState&>(*reference.state().at(q.unsafeGetTensorImpl())).step(40);
  fused.step();
  reference.step();
  CHECK_ALLCLOSE(p, q, 1e-6, 1e-7);
}

TEST_CASE("FusedAdamW handles a gradient laid out differently from its parameter", "[optim]") {
  auto p = torch::randn({3, 4}).requires_grad_(true);
  auto q = p.detach().clone().requires_grad_(true);
  auto options = torch::optim::AdamWOptions(0.05).weight_decay(0.01);
  torch::optim::AdamW reference({q}, options);
  increlora::FusedAdamW fused({p}, options);
  for (int step = 0; step < 3; ++step) {
    const auto g = torch::randn({4, 3}).t();  // transposed: not contiguous
    p.mutable_grad() = g;
    q.mutable_grad() = g.clone();
    fused.step();
    reference.step();
  }
  CHECK_ALLCLOSE(p, q, 1e-5, 1e-6);
  auto strided = torch::randn({4, 3}).t().requires_grad_(true);
  increlora::FusedAdamW refuses({strided}, options);
  strided.mutable_grad() = torch::ones_like(strided);
  CHECK_THROWS_WITH(refuses.step(), HasSubstring("not contiguous"));
}
