// SVDLinear: the forward, gradients and score against the original implementation and a dense reference,
// growth that changes neither outputs nor tensors, r = 0 as a plain Linear, merging, dtypes, bad input.
#include "support.hpp"

#include <increlora/detail/adapter_function.hpp>

#include <ATen/autocast_mode.h>

#include <nlohmann/json.hpp>
#include <torch/nn/functional/linear.h>
#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>
#include <torch/autograd.h>
#include <torch/serialize.h>

#include <cmath>
#include <cstdio>
#include <fstream>

using increlora::SVDLinear;
using increlora::SVDLinearOptions;
using increlora::test::devices;

namespace {

torch::Tensor from_json(const nlohmann::json& j) {
  // Nested arrays of numbers → a float64 tensor of the same shape.
  std::vector<int64_t> shape;
  const nlohmann::json* level = &j;
  while (level->is_array()) {
    shape.push_back(static_cast<int64_t>(level->size()));
    level = &(*level)[0];
  }
  std::vector<double> flat;
  std::function<void(const nlohmann::json&)> walk = [&](const nlohmann::json& v) {
    if (v.is_array()) {
      for (const auto& e : v) walk(e);
    } else {
      flat.push_back(v.get<double>());
    }
  };
  walk(j);
  return torch::tensor(flat, torch::kDouble).view(shape);
}

nlohmann::json load_reference() {
  const auto path = increlora::test::shared_dir() + "/reference/svd_layer_vectors.json";
  std::ifstream in(path);
  INFO("reference vectors: " << path << " (set INCRELORA_SHARED_DIR to the shared folder)");
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

// Puts `values` into the first slots of a layer's banks (P columns, λ entries, Q rows).
void set_slots(SVDLinear& layer, const torch::Tensor& P, const torch::Tensor& lambda, const torch::Tensor& Q) {
  torch::NoGradGuard no_grad;
  const int64_t n = Q.size(0);
  layer->lora_B.narrow(1, 0, n).copy_(P);
  layer->lora_E.narrow(0, 0, lambda.numel()).copy_(lambda);
  layer->lora_A.narrow(0, 0, n).copy_(Q);
}

// Gives a layer non-trivial adapter values, as after some training.
void randomize_adapter(SVDLinear& layer) {
  torch::NoGradGuard no_grad;
  layer->lora_A.normal_(0.0, 0.5);
  layer->lora_B.normal_(0.0, 0.5);
  layer->lora_E.normal_(0.0, 1.0);
}

}  // namespace

TEST_CASE("SVDLinear reproduces the original implementation's forward, gradients and importance score",
          "[svd_linear][reference]") {
  const auto ref = load_reference();
  const int64_t in = ref["in_features"], out = ref["out_features"];
  const double alpha = ref["lora_alpha"];
  auto device = GENERATE(from_range(devices()));
  CAPTURE(device);

  SVDLinear layer(SVDLinearOptions(in, out).r(1).lora_alpha(alpha).capacity(4));
  layer->to(torch::kDouble);
  layer->set_reserve(1);  // slot 1: the advance-learning reserve of the reference
  {
    torch::NoGradGuard no_grad;
    layer->weight.copy_(from_json(ref["base_weight"]));
    layer->bias.copy_(from_json(ref["base_bias"]));
  }
  const auto lambda = from_json(ref["lambda_lora_E"]);
  set_slots(layer, from_json(ref["P_lora_B"]), lambda.narrow(0, 0, 1), from_json(ref["Q_lora_A"]));
  REQUIRE(layer->reserve_lambda() == lambda[1].item<double>());
  layer->to(torch::Device(device));

  auto sink = torch::zeros({}, torch::TensorOptions().dtype(torch::kDouble).device(device));
  layer->set_score_sink(sink);
  auto x = from_json(ref["x"]).to(device).requires_grad_(true);
  auto y = layer(x);
  CHECK_ALLCLOSE(y, from_json(ref["y"]), 1e-10, 1e-10);
  (y * from_json(ref["upstream_grad"]).to(device)).sum().backward();

  CHECK(sink.item<double>() == Approx(ref["importance_score"].get<double>()).epsilon(1e-10));
  // The original keeps one tensor per slot: Q's gradient as [slot][1 × in], P's as [slot][out × 1].
  CHECK_ALLCLOSE(layer->lora_A.grad().narrow(0, 0, 2), from_json(ref["grad_Q_lora_A"]).view({2, in}), 1e-10, 1e-10);
  CHECK_ALLCLOSE(layer->lora_B.grad().narrow(1, 0, 2), from_json(ref["grad_P_lora_B"]).view({2, out}).t(), 1e-10,
                 1e-10);
  CHECK_ALLCLOSE(layer->lora_E.grad().narrow(0, 0, 1), from_json(ref["grad_lambda_lora_E"][0]).view({1}), 1e-10, 1e-10);
  REQUIRE(ref["grad_lambda_lora_E"][1].is_null());
  CHECK(layer->lora_E.grad()[1].item<double>() == 0.0);  // the reserve's λ is held: no gradient
  CHECK(layer->lora_E.grad().narrow(0, 2, 2).abs().max().item<double>() == 0.0);  // unused slots
  CHECK_ALLCLOSE(x.grad(), from_json(ref["grad_x"]), 1e-10, 1e-10);
}

TEST_CASE("The factored backward equals dense autograd through ΔW, for the gradients and the score",
          "[svd_linear][gradients]") {
  auto device = GENERATE(from_range(devices()));
  auto reserve = GENERATE(0, 2);
  CAPTURE(device, reserve);
  torch::manual_seed(7);
  const int64_t in = 37, out = 23;
  SVDLinear layer(SVDLinearOptions(in, out).r(3).lora_alpha(8).capacity(8));
  layer->to(torch::Device(device), torch::kDouble);
  layer->set_reserve(reserve);
  randomize_adapter(layer);
  const int64_t n = layer->in_use();
  const auto opts = torch::TensorOptions().dtype(torch::kDouble).device(device);
  auto x = torch::randn({4, 9, in}, opts).requires_grad_(true);
  auto upstream = torch::randn({4, 9, out}, opts);

  auto sink = torch::zeros({}, opts);
  layer->set_score_sink(sink);
  (layer(x) * upstream).sum().backward();

  // Dense reference: ΔW built from leaf copies of the banks, with the reserve's λ a constant.
  auto P = layer->lora_B.detach().narrow(1, 0, n).clone().requires_grad_(true);
  auto Q = layer->lora_A.detach().narrow(0, 0, n).clone().requires_grad_(true);
  auto lam = layer->lora_E.detach().narrow(0, 0, layer->rank()).clone().requires_grad_(true);
  auto lam_eff = torch::cat({lam, torch::full({reserve}, layer->reserve_lambda(), opts)});
  auto dw = torch::mm(P * (lam_eff * layer->scale()).unsqueeze(0), Q);
  dw.retain_grad();
  auto xr = x.detach().clone().requires_grad_(true);
  auto yr = torch::nn::functional::linear(xr, layer->weight, layer->bias) + torch::matmul(xr, dw.t());
  (yr * upstream).sum().backward();

  CHECK_ALLCLOSE(layer->lora_B.grad().narrow(1, 0, n), P.grad(), 1e-10, 1e-11);
  CHECK_ALLCLOSE(layer->lora_A.grad().narrow(0, 0, n), Q.grad(), 1e-10, 1e-11);
  CHECK_ALLCLOSE(layer->lora_E.grad().narrow(0, 0, layer->rank()), lam.grad(), 1e-10, 1e-11);
  CHECK_ALLCLOSE(x.grad(), xr.grad(), 1e-10, 1e-11);
  const double dense_score =
      ((dw.detach() * dw.grad()).abs().sum() / std::sqrt(static_cast<double>(in * out))).item<double>();
  CHECK(sink.item<double>() == Approx(dense_score).epsilon(1e-10));
}

TEST_CASE("Under dropout the fused layer equals dense autograd through the same mask, unused slots get no "
          "gradient", "[svd_linear][gradients][dropout]") {
  auto device = GENERATE(from_range(devices()));
  auto reserve = GENERATE(0, 1);
  CAPTURE(device, reserve);
  torch::manual_seed(11);
  const int64_t in = 19, out = 13;
  const double p = 0.3;
  SVDLinear layer(SVDLinearOptions(in, out).r(2).lora_alpha(4).lora_dropout(p).capacity(6));
  layer->to(torch::Device(device), torch::kDouble);
  layer->set_reserve(reserve);
  randomize_adapter(layer);
  layer->train();
  const int64_t n = layer->in_use();
  const auto opts = torch::TensorOptions().dtype(torch::kDouble).device(device);
  auto x = torch::randn({3, 5, in}, opts).requires_grad_(true);
  auto upstream = torch::randn({3, 5, out}, opts);
  torch::manual_seed(12);
  (layer(x) * upstream).sum().backward();

  // The same mask: the layer's first random draw is native_dropout of its input.
  torch::manual_seed(12);
  auto xr = x.detach().clone().requires_grad_(true);
  const auto mask = std::get<1>(at::native_dropout(xr.detach().reshape({-1, in}), p, true)).view(xr.sizes());
  auto P = layer->lora_B.detach().narrow(1, 0, n).clone().requires_grad_(true);
  auto Q = layer->lora_A.detach().narrow(0, 0, n).clone().requires_grad_(true);
  auto lam = layer->lora_E.detach().narrow(0, 0, layer->rank()).clone().requires_grad_(true);
  auto lam_eff = torch::cat({lam, torch::full({reserve}, layer->reserve_lambda(), opts)});
  auto dw = torch::mm(P * (lam_eff * layer->scale()).unsqueeze(0), Q);
  auto yr = torch::nn::functional::linear(xr, layer->weight, layer->bias) +
            torch::matmul(xr * mask.to(torch::kDouble) / (1.0 - p), dw.t());
  (yr * upstream).sum().backward();

  CHECK_ALLCLOSE(x.grad(), xr.grad(), 1e-10, 1e-11);
  CHECK_ALLCLOSE(layer->lora_B.grad().narrow(1, 0, n), P.grad(), 1e-10, 1e-11);
  CHECK_ALLCLOSE(layer->lora_A.grad().narrow(0, 0, n), Q.grad(), 1e-10, 1e-11);
  CHECK_ALLCLOSE(layer->lora_E.grad().narrow(0, 0, layer->rank()), lam.grad(), 1e-10, 1e-11);
  // Slots not in use: exactly zero gradients (the optimizer must not see noise there); the reserve's λ is held.
  const int64_t unused = layer->capacity() - n;
  CHECK(layer->lora_B.grad().narrow(1, n, unused).abs().max().item<double>() == 0.0);
  CHECK(layer->lora_A.grad().narrow(0, n, unused).abs().max().item<double>() == 0.0);
  CHECK(layer->lora_E.grad().narrow(0, layer->rank(), layer->capacity() - layer->rank()).abs().max().item<double>() ==
        0.0);
  // In eval mode there is no dropout: the layer is deterministic and equals the mask-free dense product.
  layer->eval();
  torch::NoGradGuard no_grad;
  const auto dense = torch::nn::functional::linear(x, layer->weight, layer->bias) + torch::matmul(x, dw.t());
  CHECK_ALLCLOSE(layer(x), dense, 1e-10, 1e-11);
}

TEST_CASE("A trainable base weight and bias get autograd's gradients through the fused layer",
          "[svd_linear][gradients]") {
  auto device = GENERATE(from_range(devices()));
  CAPTURE(device);
  torch::manual_seed(13);
  SVDLinear layer(SVDLinearOptions(11, 7).r(2).lora_alpha(2).capacity(4));
  layer->to(torch::Device(device), torch::kDouble);
  randomize_adapter(layer);
  layer->weight.set_requires_grad(true);
  layer->bias.set_requires_grad(true);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble).device(device);
  const auto x = torch::randn({6, 11}, opts);  // an input that needs no gradient: the base's dx is skipped
  const auto upstream = torch::randn({6, 7}, opts);
  (layer(x) * upstream).sum().backward();
  auto W = layer->weight.detach().clone().requires_grad_(true);
  auto b = layer->bias.detach().clone().requires_grad_(true);
  (torch::nn::functional::linear(x, W, b) * upstream).sum().backward();
  CHECK_ALLCLOSE(layer->weight.grad(), W.grad(), 1e-12, 1e-12);
  CHECK_ALLCLOSE(layer->bias.grad(), b.grad(), 1e-12, 1e-12);
}

TEST_CASE("The score is computed in blocks when ∂L/∂ΔW is large, with the same value", "[svd_linear][score]") {
  torch::manual_seed(3);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  const int64_t tokens = 16, out = 4100, in = 4100;  // 16.8M elements: more than one block
  auto dy = torch::randn({tokens, out}, opts), x = torch::randn({tokens, in}, opts);
  auto P = torch::randn({out, 2}, opts), Q = torch::randn({2, in}, opts), coeff = torch::randn({2}, opts);
  const auto score = increlora::detail::importance_score(dy, x, P, coeff, Q).item<double>();
  const auto dense = torch::mm(P * coeff.unsqueeze(0), Q);
  const auto expected =
      ((dense * torch::mm(dy.t(), x)).abs().sum() / std::sqrt(static_cast<double>(out * in))).item<double>();
  CHECK(score == Approx(expected).epsilon(1e-10));
}

TEST_CASE("The score of bfloat16 and float16 inputs stays within 1 % of the float64 score", "[svd_linear][score]") {
  auto device = GENERATE(from_range(devices()));
  auto dtype = GENERATE(torch::kBFloat16, torch::kHalf);
  CAPTURE(device, dtype);
  torch::manual_seed(4);
  const auto opts = torch::TensorOptions().dtype(torch::kDouble);
  // A BERT-like layer over 2048 tokens: bf16 keeps its products in bf16 (float32 accumulation), f16 in float32.
  const int64_t tokens = 2048, out = 384, in = 384, n = 3;
  auto dy = torch::randn({tokens, out}, opts) * 1e-3, x = torch::randn({tokens, in}, opts);
  auto P = torch::randn({out, n}, opts) * 0.02, Q = torch::randn({n, in}, opts) * 0.02;
  auto coeff = torch::randn({n}, opts);
  const auto expected = increlora::detail::importance_score(dy, x, P, coeff, Q).item<double>();
  const auto low = [&](const torch::Tensor& t) { return t.to(torch::Device(device), dtype); };
  const auto score = increlora::detail::importance_score(low(dy), low(x), P.to(torch::Device(device), torch::kFloat),
                                                         coeff.to(torch::Device(device), torch::kFloat),
                                                         Q.to(torch::Device(device), torch::kFloat));
  CHECK(score.scalar_type() == torch::kFloat);
  CHECK(score.item<double>() == Approx(expected).epsilon(0.01));
}

TEST_CASE("SVDLinear with r = 0 is exactly a torch::nn::Linear", "[svd_linear][linear]") {
  auto device = GENERATE(from_range(devices()));
  CAPTURE(device);
  torch::manual_seed(1);
  torch::nn::Linear linear(torch::nn::LinearOptions(12, 7));
  SVDLinear plain(SVDLinearOptions(12, 7));
  CHECK_FALSE(plain->has_adapter());
  const auto params = plain->named_parameters();
  REQUIRE(params.size() == 2);
  CHECK(params.contains("weight"));
  CHECK(params.contains("bias"));
  CHECK(plain->named_buffers().size() == 0);
  {
    torch::NoGradGuard no_grad;
    plain->weight.copy_(linear->weight);
    plain->bias.copy_(linear->bias);
  }
  linear->to(torch::Device(device));
  plain->to(torch::Device(device));
  auto x = torch::randn({5, 3, 12}, torch::TensorOptions().device(device));
  CHECK(torch::equal(plain(x), linear(x)));
}

TEST_CASE("SVDLinear built from a Linear shares its weights and starts with the same output",
          "[svd_linear][linear]") {
  torch::manual_seed(2);
  torch::nn::Linear linear(torch::nn::LinearOptions(10, 6));
  SVDLinear wrapped(linear, SVDLinearOptions(10, 6).r(2).lora_alpha(4));
  CHECK(wrapped->weight.data_ptr() == linear->weight.data_ptr());
  CHECK(wrapped->bias.data_ptr() == linear->bias.data_ptr());
  CHECK_FALSE(wrapped->weight.requires_grad());
  CHECK(wrapped->rank() == 2);
  auto x = torch::randn({8, 10});
  CHECK(torch::equal(wrapped(x), linear(x)));  // λ = 0: ΔW = 0 at start
  CHECK_THROWS_WITH(SVDLinear(linear, SVDLinearOptions(11, 6).r(1)),
                    HasSubstring("SVDLinearOptions(10, 6)"));
}

TEST_CASE("Growth leaves the output unchanged and the parameter tensors the same objects", "[svd_linear][growth]") {
  auto device = GENERATE(from_range(devices()));
  auto advance = GENERATE(false, true);
  CAPTURE(device, advance);
  torch::manual_seed(4);
  SVDLinear layer(SVDLinearOptions(16, 24).r(1).lora_alpha(16).capacity(8));
  layer->to(torch::Device(device));
  layer->set_reserve(advance ? 2 : 0);
  randomize_adapter(layer);  // as after training: λ, P, Q all non-trivial (the reserve's λ stays held)
  std::vector<const void*> before;
  for (const auto& p : layer->parameters()) before.push_back(p.unsafeGetTensorImpl());
  const auto storage_A = layer->lora_A.data_ptr();

  auto x = torch::randn({6, 16}, torch::TensorOptions().device(device));
  const auto y0 = layer(x).detach();
  layer->grow(1, /*step=*/10, /*reserve_after=*/advance ? 2 : 0);
  CHECK(layer->rank() == 2);
  CHECK_ALLCLOSE(layer(x), y0, 1e-5, 1e-6);
  layer->grow(3, /*step=*/20, /*reserve_after=*/advance ? 2 : 0);
  CHECK(layer->rank() == 5);
  CHECK(layer->reserve_rank() == (advance ? 2 : 0));
  CHECK_ALLCLOSE(layer(x), y0, 1e-5, 1e-6);
  CHECK(layer->lora_ranknum.item<double>() == 5.0);

  std::vector<const void*> after;
  for (const auto& p : layer->parameters()) after.push_back(p.unsafeGetTensorImpl());
  CHECK(before == after);
  CHECK(layer->lora_A.data_ptr() == storage_A);
  CHECK(layer->lambda_start()[1] == 10);
  CHECK(layer->lambda_start()[4] == 20);
  CHECK(layer->lambda_start()[0] == -1);
}

TEST_CASE("A reserve triplet trains P and Q while its λ stays held", "[svd_linear][reserve]") {
  torch::manual_seed(5);
  SVDLinear layer(SVDLinearOptions(8, 8).r(1).lora_alpha(2).capacity(4));
  layer->set_reserve(1);
  CHECK(layer->in_use() == 2);
  torch::optim::Adam optimizer(layer->parameters(), torch::optim::AdamOptions(1e-2));
  const auto lambda_reserve = layer->lora_E[1].item<double>();
  const auto P_reserve = layer->lora_B.detach().select(1, 1).clone();
  for (int step = 0; step < 5; ++step) {
    optimizer.zero_grad();
    layer(torch::randn({4, 8})).pow(2).sum().backward();
    CHECK(layer->lora_E.grad()[1].item<double>() == 0.0);
    optimizer.step();
  }
  CHECK(layer->lora_E[1].item<double>() == lambda_reserve);
  CHECK(increlora::test::max_abs_diff(layer->lora_B.detach().select(1, 1), P_reserve) > 0.0);
  // The forward uses the held value, whatever the stored λ of a reserve slot says.
  auto x = torch::randn({3, 8});
  const auto y = layer(x).detach();
  {
    torch::NoGradGuard no_grad;
    layer->lora_E[1].fill_(123.0);
  }
  CHECK(torch::equal(layer(x), y));
}

TEST_CASE("merge() folds ΔW into the weight and unmerge() restores it", "[svd_linear][merge]") {
  auto device = GENERATE(from_range(devices()));
  CAPTURE(device);
  torch::manual_seed(6);
  SVDLinear layer(SVDLinearOptions(20, 12).r(2).lora_alpha(16).capacity(6));
  layer->to(torch::Device(device));
  layer->set_reserve(1);
  randomize_adapter(layer);
  auto x = torch::randn({7, 20}, torch::TensorOptions().device(device));
  const auto weight = layer->weight.detach().clone();
  const auto y = layer(x).detach();
  layer->merge();
  CHECK(layer->is_merged());
  CHECK_ALLCLOSE(layer(x), y, 1e-5, 1e-5);
  CHECK_ALLCLOSE(layer->weight, weight + layer->delta_weight(), 1e-6, 1e-6);
  CHECK_THROWS_WITH(layer->grow(1, 0, 0), HasSubstring("unmerge"));
  layer->unmerge();
  CHECK_ALLCLOSE(layer->weight, weight, 0.0, 1e-6);
  CHECK_ALLCLOSE(layer(x), y, 1e-5, 1e-5);
}

TEST_CASE("SVDLinear trains in float32, bfloat16 and float16", "[svd_linear][dtype]") {
  auto device = GENERATE(from_range(devices()));
  auto dtype = GENERATE(torch::kFloat, torch::kBFloat16, torch::kHalf);
  CAPTURE(device, dtype);
  torch::manual_seed(8);
  SVDLinear reference(SVDLinearOptions(32, 16).r(2).lora_alpha(4));
  randomize_adapter(reference);
  auto layer = std::dynamic_pointer_cast<increlora::SVDLinearImpl>(reference->clone());
  layer->to(torch::Device(device), dtype);
  auto x = torch::randn({5, 32});
  auto sink = torch::zeros({}, torch::TensorOptions().device(device));
  layer->set_score_sink(sink);
  auto y = layer->forward(x.to(torch::Device(device), dtype));
  CHECK(y.scalar_type() == dtype);
  y.to(torch::kFloat).sum().backward();
  CHECK(layer->lora_A.grad().scalar_type() == dtype);
  CHECK(torch::isfinite(layer->lora_B.grad()).all().item<bool>());
  const auto y_ref = reference(x);
  const double tol = dtype == torch::kFloat ? 1e-5 : 5e-2;
  CHECK_ALLCLOSE(y.to(torch::kFloat), y_ref, tol, tol);
  CHECK(sink.item<float>() > 0.0f);
}

TEST_CASE("Adapter banks kept in float32 train under a bfloat16 base", "[svd_linear][dtype]") {
  SVDLinear layer(SVDLinearOptions(16, 8).r(1));
  {
    torch::NoGradGuard no_grad;
    layer->weight.set_data(layer->weight.to(torch::kBFloat16));
    layer->bias.set_data(layer->bias.to(torch::kBFloat16));
  }
  auto y = layer(torch::randn({3, 16}).to(torch::kBFloat16));
  CHECK(y.scalar_type() == torch::kBFloat16);
  y.to(torch::kFloat).sum().backward();
  CHECK(layer->lora_E.grad().scalar_type() == torch::kFloat);
}

TEST_CASE("SVDLinear rejects bad options and inputs with a message that says what to change",
          "[svd_linear][errors]") {
  CHECK_THROWS_WITH(SVDLinear(SVDLinearOptions(4, 4).r(-1)), HasSubstring("r must be >= 0"));
  CHECK_THROWS_WITH(SVDLinear(SVDLinearOptions(0, 4)), HasSubstring("in_features"));
  CHECK_THROWS_WITH(SVDLinear(SVDLinearOptions(4, 4).r(5).capacity(3)), HasSubstring("capacity"));
  CHECK_THROWS_WITH(SVDLinear(SVDLinearOptions(4, 4).r(1).lora_dropout(1.0)), HasSubstring("lora_dropout"));
  CHECK_THROWS_WITH(SVDLinear(SVDLinearOptions(4, 4).r(1).lora_alpha(0)), HasSubstring("lora_alpha"));
  SVDLinear layer(SVDLinearOptions(6, 3).r(1).capacity(2));
  CHECK_THROWS_WITH(layer(torch::randn({2, 7})), HasSubstring("in_features is 6"));
  CHECK_THROWS_WITH(layer(torch::randn({2, 6}, torch::kDouble)), HasSubstring("module->to("));
  CHECK_THROWS_WITH(layer->grow(2, 0, 0), HasSubstring("capacity 2"));
  CHECK_THROWS_WITH(layer->set_reserve(2), HasSubstring("larger capacity"));
  CHECK_THROWS_WITH(layer->unmerge(), HasSubstring("not merged"));
}

TEST_CASE("clone() copies the rank state with the tensors", "[svd_linear]") {
  SVDLinear layer(SVDLinearOptions(5, 5).r(1).capacity(6));
  layer->set_reserve(1);
  layer->grow(2, 3, 1);
  auto copy = std::dynamic_pointer_cast<increlora::SVDLinearImpl>(layer->clone());
  CHECK(copy->rank() == 3);
  CHECK(copy->reserve_rank() == 1);
  CHECK(copy->lambda_start() == layer->lambda_start());
  CHECK(copy->lora_A.data_ptr() != layer->lora_A.data_ptr());
  auto x = torch::randn({2, 5});
  CHECK(torch::equal(copy->forward(x), layer(x)));
}

TEST_CASE("Converting the module to another dtype keeps the rank buffers int64 and exact", "[svd_linear][dtype]") {
  SVDLinear layer(SVDLinearOptions(4, 4).r(1).capacity(4));
  layer->grow(2, /*step=*/12345, /*reserve_after=*/0);  // 12345 is not representable in bf16
  layer->to(torch::kBFloat16);
  CHECK(layer->weight.scalar_type() == torch::kBFloat16);
  CHECK(layer->lora_A.scalar_type() == torch::kBFloat16);
  CHECK(layer->lora_slot_state.scalar_type() == torch::kLong);
  CHECK(layer->lora_lambda_start.scalar_type() == torch::kLong);
  CHECK(layer->lora_lambda_start[1].item<int64_t>() == 12345);
  torch::nn::Sequential outer(layer);
  outer->to(torch::kCPU, torch::kHalf);  // through a parent module too
  CHECK(layer->lora_factor_start.scalar_type() == torch::kLong);
  CHECK(layer->lora_factor_start[2].item<int64_t>() == 12345);
}

TEST_CASE("torch::load restores the rank state, and a dtype change after it keeps it", "[svd_linear][load]") {
  torch::manual_seed(12);
  SVDLinear saved(SVDLinearOptions(6, 5).r(1).capacity(6));
  saved->grow(2, /*step=*/7, /*reserve_after=*/0);
  randomize_adapter(saved);
  const std::string path = "increlora_test_torch_load.pt";
  torch::save(saved, path);
  SVDLinear loaded(SVDLinearOptions(6, 5).r(1).capacity(6));
  torch::load(loaded, path);
  std::remove(path.c_str());
  CHECK(loaded->rank() == 3);
  CHECK(loaded->lambda_start()[2] == 7);
  auto x = torch::randn({2, 6});
  CHECK(torch::equal(loaded(x), saved(x)));
  loaded->to(torch::kDouble);
  CHECK(loaded->rank() == 3);
  CHECK(loaded->lora_lambda_start[2].item<int64_t>() == 7);
}

TEST_CASE("Double backward through the adapter is refused, not silently wrong", "[svd_linear][gradients]") {
  SVDLinear layer(SVDLinearOptions(4, 3).r(1));
  auto x = torch::randn({2, 4}, torch::requires_grad());
  auto y = layer(x).sum();
  CHECK_THROWS_WITH(torch::autograd::grad({y}, {x}, {}, /*retain_graph=*/true, /*create_graph=*/true),
                    HasSubstring("double backward"));
}

TEST_CASE("SVDLinear wrapping a Linear takes the Linear's dtype for its banks", "[svd_linear][linear]") {
  torch::nn::Linear linear(torch::nn::LinearOptions(4, 3));
  linear->to(torch::kDouble);
  SVDLinear wrapped(linear, SVDLinearOptions(4, 3).r(1));
  CHECK(wrapped->lora_A.scalar_type() == torch::kDouble);
  CHECK(wrapped->lora_slot_state.scalar_type() == torch::kLong);
  CHECK(wrapped->weight.data_ptr() == linear->weight.data_ptr());
  CHECK_NOTHROW(wrapped(torch::randn({2, 4}, torch::kDouble)));
}

TEST_CASE("assign() sets the incremental matrix to the given triplets", "[svd_linear][assign]") {
  torch::manual_seed(8);
  SVDLinear layer(SVDLinearOptions(6, 5).r(1).lora_alpha(4).capacity(5));
  layer->set_reserve(2);
  const auto P = torch::randn({5, 3}, torch::kDouble), lambda = torch::rand({3}, torch::kDouble);
  const auto Q = torch::randn({3, 6}, torch::kDouble);
  layer->assign(P, lambda, Q);
  CHECK(layer->rank() == 3);
  CHECK(layer->reserve_rank() == 0);
  CHECK(layer->lambda_start() == std::vector<int64_t>(5, -1));
  const auto expected = torch::mm(P * lambda.unsqueeze(0), Q) * (4.0 / (3 + 1e-5));
  CHECK_ALLCLOSE(layer->delta_weight().to(torch::kDouble), expected, 1e-5, 1e-6);
  CHECK(layer->lora_E.narrow(0, 3, 2).abs().sum().item<double>() == 0.0);  // the rest unused, λ = 0
  CHECK_THROWS_WITH(layer->assign(torch::randn({5, 6}), torch::rand({6}), torch::randn({6, 6})),
                    HasSubstring("does not fit in capacity 5"));
  CHECK_THROWS_WITH(layer->assign(torch::randn({4, 2}), torch::rand({2}), torch::randn({2, 6})),
                    HasSubstring("needs P [5 × r]"));
}

TEST_CASE("Under autocast, a float32 layer computes in the autocast dtype with float32 gradients",
          "[svd_linear][autocast]") {
  const auto device_name = GENERATE(from_range(devices()));
  const torch::Device device(device_name);
  const auto dtype = GENERATE(torch::kBFloat16, torch::kHalf);
  if (device.is_cpu() && dtype == torch::kHalf) return;  // CPU autocast is bf16
  INFO("device " << device_name << ", dtype " << dtype);
  torch::manual_seed(9);
  SVDLinear layer(SVDLinearOptions(64, 48).r(2).lora_alpha(8));
  layer->to(device);
  {
    torch::NoGradGuard no_grad;
    layer->lora_E.normal_();
  }
  const auto x = torch::randn({16, 64}, torch::TensorOptions().device(device));
  auto reference = layer(x);
  reference.pow(2).sum().backward();
  const auto ref_grad_A = layer->lora_A.grad().clone(), ref_grad_E = layer->lora_E.grad().clone();
  layer->zero_grad();

  const auto type = device.type();
  const bool was_enabled = at::autocast::is_autocast_enabled(type);
  const auto was_dtype = at::autocast::get_autocast_dtype(type);
  at::autocast::set_autocast_enabled(type, true);
  at::autocast::set_autocast_dtype(type, dtype);
  auto y = layer(x);
  at::autocast::set_autocast_enabled(type, was_enabled);
  at::autocast::set_autocast_dtype(type, was_dtype);
  at::autocast::clear_cache();
  CHECK(y.scalar_type() == dtype);
  y.to(torch::kFloat).pow(2).sum().backward();
  CHECK(layer->lora_A.grad().scalar_type() == torch::kFloat);
  CHECK_ALLCLOSE(y.to(torch::kFloat), reference.detach(), 2e-2, 5e-2);
  const double scale_A = ref_grad_A.abs().max().item<double>(), scale_E = ref_grad_E.abs().max().item<double>();
  CHECK(increlora::test::max_abs_diff(layer->lora_A.grad(), ref_grad_A) < 3e-2 * scale_A);
  CHECK(increlora::test::max_abs_diff(layer->lora_E.grad(), ref_grad_E) < 3e-2 * scale_E);
  // Outside autocast a dtype mismatch is still refused.
  CHECK_THROWS_WITH(layer(x.to(dtype)), HasSubstring("or run under autocast"));
}
