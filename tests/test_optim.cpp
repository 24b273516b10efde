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

namespace {

using increlora::SVDLinear;
using increlora::SVDLinearOptions;

// A layer whose adapter trains with FusedAdamW for `before` steps at rank 1; then slot 1 is activated at step
// `before` and trains on. Each step's gradients of slot 1 are also fed to fresh torch::optim::AdamW parameters
// (λ₁, Q row 1, P column 1) that start from slot 1's values at its activation: the original's new param group.
struct ActivatedSlot {
  ActivatedSlot(const std::string& device, double weight_decay, bool advance, int64_t before) {
    torch::manual_seed(5);
    const auto opts = torch::TensorOptions().device(device);
    layer = SVDLinear(SVDLinearOptions(6, 4).r(1).lora_alpha(2).capacity(6));
    layer->to(torch::Device(device));
    net = torch::nn::Sequential(layer);
    x = torch::randn({16, 6}, opts);
    options = torch::optim::AdamWOptions(1e-2).weight_decay(weight_decay).betas({0.9, 0.999});
    optimizer = std::make_unique<increlora::FusedAdamW>(std::vector<torch::Tensor>{layer->lora_A, layer->lora_E,
                                                                                    layer->lora_B}, options);
    optimizer->track_adapter_slots(*net, 0);
    if (advance) {
      layer->set_reserve(1);  // slot 1 a reserve from step 0 (start -1: with everything else)
      torch::NoGradGuard no_grad;
      layer->lora_E[1].fill_(0.7);  // not what the forward uses for a reserve, but it must not move either
    }
    for (int64_t step = 0; step < before; ++step) train_step();
    {
      torch::NoGradGuard no_grad;
      held_lambda = layer->lora_E[1].item<double>();
      unused_before = {layer->lora_A.narrow(0, 2, 4).clone(), layer->lora_E.narrow(0, 2, 4).clone(),
                       layer->lora_B.narrow(1, 2, 4).clone()};
    }
    layer->grow(1, /*step=*/before, /*reserve_after=*/0);  // slot 1 starts training at step `before`
    torch::NoGradGuard no_grad;
    fresh_E = layer->lora_E.narrow(0, 1, 1).detach().clone().requires_grad_(true);
    fresh_A = layer->lora_A.narrow(0, 1, 1).detach().clone().requires_grad_(true);
    fresh_B = layer->lora_B.narrow(1, 1, 1).detach().clone().requires_grad_(true);
    reference = std::make_unique<torch::optim::AdamW>(std::vector<torch::Tensor>{fresh_A, fresh_E, fresh_B}, options);
  }
  void train_step() {
    optimizer->zero_grad();
    (layer(x) - 0.3).pow(2).sum().backward();
    optimizer->step();
  }
  // One step of both; the reference gets slot 1's gradients.
  void both_step() {
    optimizer->zero_grad();
    (layer(x) - 0.3).pow(2).sum().backward();
    fresh_E.mutable_grad() = layer->lora_E.grad().narrow(0, 1, 1).clone();
    fresh_A.mutable_grad() = layer->lora_A.grad().narrow(0, 1, 1).clone();
    fresh_B.mutable_grad() = layer->lora_B.grad().narrow(1, 1, 1).clone();
    optimizer->step();
    reference->step();
  }
  SVDLinear layer{nullptr};
  torch::nn::Sequential net{nullptr};
  torch::Tensor x, fresh_E, fresh_A, fresh_B;
  torch::optim::AdamWOptions options{1e-2};
  std::unique_ptr<increlora::FusedAdamW> optimizer;
  std::unique_ptr<torch::optim::AdamW> reference;
  double held_lambda = 0.0;
  std::vector<torch::Tensor> unused_before;
};

}  // namespace

TEST_CASE("A triplet that starts training late takes the updates of a fresh AdamW parameter", "[optim][slots]") {
  auto device = GENERATE(from_range(increlora::test::devices()));
  auto weight_decay = GENERATE(0.0, 0.1);
  CAPTURE(device, weight_decay);
  ActivatedSlot run(device, weight_decay, /*advance=*/false, /*before=*/30);
  for (int k = 1; k <= 5; ++k) {
    run.both_step();
    CAPTURE(k);
    CHECK_ALLCLOSE(run.layer->lora_E.narrow(0, 1, 1), run.fresh_E, 1e-5, 1e-6);
    CHECK_ALLCLOSE(run.layer->lora_A.narrow(0, 1, 1), run.fresh_A, 1e-5, 1e-6);
    CHECK_ALLCLOSE(run.layer->lora_B.narrow(1, 1, 1), run.fresh_B, 1e-5, 1e-6);
    CHECK(run.optimizer->slot_step(*run.layer, /*lambda_bank=*/true, 1) == k);
    CHECK(run.optimizer->slot_step(*run.layer, /*lambda_bank=*/false, 1) == k);
  }
  // Slot 0 trained from the start: its count is the tensor's.
  CHECK(run.optimizer->slot_step(*run.layer, true, 0) == 35);
  // Slots that never trained did not move, weight decay or not.
  CHECK(torch::equal(run.layer->lora_A.narrow(0, 2, 4), run.unused_before[0]));
  CHECK(torch::equal(run.layer->lora_E.narrow(0, 2, 4), run.unused_before[1]));
  CHECK(torch::equal(run.layer->lora_B.narrow(1, 2, 4), run.unused_before[2]));
}

TEST_CASE("Under advance learning a reserve's P and Q keep their state and its held λ never moves",
          "[optim][slots]") {
  auto weight_decay = GENERATE(0.0, 0.1);
  CAPTURE(weight_decay);
  ActivatedSlot run("cpu", weight_decay, /*advance=*/true, /*before=*/30);
  // While it was a reserve, slot 1's λ was held: not trained, not decayed.
  CHECK(run.held_lambda == static_cast<double>(0.7f));
  CHECK(run.optimizer->slot_step(*run.layer, /*lambda_bank=*/false, 1) == 30);  // P, Q trained from step 0
  for (int k = 1; k <= 5; ++k) {
    run.both_step();
    CAPTURE(k);
    // λ starts fresh at its activation, exactly as a new parameter.
    CHECK_ALLCLOSE(run.layer->lora_E.narrow(0, 1, 1), run.fresh_E, 1e-5, 1e-6);
    CHECK(run.optimizer->slot_step(*run.layer, /*lambda_bank=*/true, 1) == k);
  }
  CHECK(run.optimizer->slot_step(*run.layer, /*lambda_bank=*/false, 1) == 35);
}

TEST_CASE("Without per-slot state a late triplet's first update is several times a fresh parameter's",
          "[optim][slots]") {
  // What the per-slot state fixes: plain AdamW counts steps per tensor, so slot 1's bias correction is spent.
  torch::manual_seed(5);
  SVDLinear layer(SVDLinearOptions(6, 4).r(1).lora_alpha(2).capacity(6));
  const auto x = torch::randn({16, 6});
  torch::optim::AdamW plain(std::vector<torch::Tensor>{layer->lora_A, layer->lora_E, layer->lora_B},
                            torch::optim::AdamWOptions(1e-2));
  auto step = [&] {
    plain.zero_grad();
    (layer(x) - 0.3).pow(2).sum().backward();
    plain.step();
  };
  for (int i = 0; i < 3000; ++i) step();  // past ~1/(1 − β2) steps: the tensor's bias correction is about spent
  layer->grow(1, 3000, 0);
  const double before = layer->lora_E[1].item<double>();
  step();
  const double first = std::abs(layer->lora_E[1].item<double>() - before);
  // A fresh AdamW parameter's first update is lr (|m̂ / sqrt(v̂)| = 1).
  CHECK(first > 2.5e-2);
  CHECK(first < 4e-2);
}

TEST_CASE("The allocator tells FusedAdamW to track the adapter slots", "[optim][slots][allocator]") {
  torch::manual_seed(2);
  increlora::test::TinyNet net(8, 2, SVDLinearOptions(8, 8).r(1).capacity(6));
  increlora::FusedAdamW optimizer(net->parameters(), torch::optim::AdamWOptions(1e-2));
  increlora::RankAllocator allocator(*net, increlora::RankAllocatorOptions().lora_r(1).target_rank(2)
                                               .init_warmup(2).incre_interval(2).top_h(1).total_step(20));
  const auto x = torch::randn({4, 8});
  CHECK_FALSE(optimizer.tracks_adapter_slots());
  for (int64_t step = 0; step < 8; ++step) {
    optimizer.zero_grad();
    net->forward(x).pow(2).sum().backward();
    allocator.update_and_increase(*net, step, optimizer);
    optimizer.step();
  }
  CHECK(optimizer.tracks_adapter_slots());
  CHECK(allocator.budget_met());
  // Growth at steps 4 and 6: each activated λ counts the updates since its activation, slot 0 all 8.
  int64_t activated = 0;
  for (const auto& layer : net->fc) {
    CHECK(optimizer.slot_step(*layer.ptr(), /*lambda_bank=*/true, 0) == 8);
    for (int64_t slot = 1; slot < layer->rank(); ++slot) {
      const int64_t start = layer->lambda_start()[static_cast<size_t>(slot)];
      CHECK((start == 4 || start == 6));
      CHECK(optimizer.slot_step(*layer.ptr(), /*lambda_bank=*/true, slot) == 8 - start);
      ++activated;
    }
  }
  CHECK(activated == 2);
  CHECK_THROWS_WITH(optimizer.set_slot_lr_factors(*net->fc[0].ptr(), {1.0}, {1.0}), HasSubstring("factors per bank"));
}
