// compute_orth_regu: the original trainer's concatenated-slot penalty, its gradient, and the mean over layers.
#include "support.hpp"

#include <nlohmann/json.hpp>

#include <fstream>

using increlora::SVDLinear;
using increlora::SVDLinearOptions;

TEST_CASE("compute_orth_regu equals the original's penalty on the reference layer", "[regularization][reference]") {
  const auto path = increlora::test::shared_dir() + "/reference/svd_layer_vectors.json";
  std::ifstream in(path);
  INFO("reference vectors: " << path);
  REQUIRE(in.good());
  const auto ref = nlohmann::json::parse(in);
  auto device = GENERATE(from_range(increlora::test::devices()));
  CAPTURE(device);

  torch::nn::Sequential model;
  SVDLinear layer(SVDLinearOptions(6, 5).r(1).lora_alpha(16).capacity(3));
  layer->to(torch::kDouble);
  layer->set_reserve(1);
  {
    torch::NoGradGuard no_grad;
    const auto Q = ref["Q_lora_A"].get<std::vector<std::vector<double>>>();
    const auto P = ref["P_lora_B"].get<std::vector<std::vector<double>>>();
    for (int64_t s = 0; s < 2; ++s) {
      for (int64_t i = 0; i < 6; ++i) layer->lora_A[s][i].fill_(Q[s][i]);
      for (int64_t o = 0; o < 5; ++o) layer->lora_B[o][s].fill_(P[o][s]);
    }
  }
  model->push_back(layer);
  model->to(torch::Device(device));
  const double expected = ref["orthogonal_penalty_one_module"];
  CHECK(increlora::compute_orth_regu(*model, 1.0).item<double>() == Approx(expected).epsilon(1e-12));
  CHECK(increlora::compute_orth_regu(*model, 0.1).item<double>() == Approx(0.1 * expected).epsilon(1e-12));
}

TEST_CASE("compute_orth_regu is the mean over layers and its gradient is autograd's", "[regularization]") {
  torch::manual_seed(9);
  increlora::test::TinyNet net(7, 3, SVDLinearOptions(1, 1).r(2).capacity(5));
  net->to(torch::kDouble);
  net->fc[1]->grow(2, 0, 0);
  // The reference: the penalty of the slices of the slots in use, per layer, through autograd on leaf copies.
  torch::Tensor expected = torch::zeros({}, torch::kDouble);
  std::vector<std::pair<torch::Tensor, torch::Tensor>> leaves;  // (Q slice, P slice) per layer
  for (auto& layer : net->fc) {
    const int64_t n = layer->in_use();
    auto Q = layer->lora_A.detach().narrow(0, 0, n).clone().requires_grad_(true);
    auto P = layer->lora_B.detach().narrow(1, 0, n).clone().requires_grad_(true);
    const auto eye = torch::eye(n, torch::kDouble);
    expected = expected + (Q.mm(Q.t()) - eye).pow(2).sum().sqrt() + (P.t().mm(P) - eye).pow(2).sum().sqrt();
    leaves.emplace_back(Q, P);
  }
  expected = expected * (0.3 / (2.0 * 3.0));
  expected.backward();
  auto penalty = increlora::compute_orth_regu(*net, 0.3);
  CHECK(penalty.item<double>() == Approx(expected.item<double>()).epsilon(1e-12));
  penalty.backward();
  for (size_t i = 0; i < leaves.size(); ++i) {
    const int64_t n = net->fc[i]->in_use();
    CHECK_ALLCLOSE(net->fc[i]->lora_A.grad().narrow(0, 0, n), leaves[i].first.grad(), 1e-12, 1e-12);
    CHECK_ALLCLOSE(net->fc[i]->lora_B.grad().narrow(1, 0, n), leaves[i].second.grad(), 1e-12, 1e-12);
  }
  // Slots not in use get no gradient; slots in use do.
  CHECK(net->fc[0]->lora_A.grad().narrow(0, 2, 3).abs().max().item<double>() == 0.0);
  CHECK(net->fc[1]->lora_A.grad().narrow(0, 0, 4).abs().max().item<double>() > 0.0);

  torch::nn::Sequential plain(torch::nn::Linear(3, 3));
  CHECK_THROWS_WITH(increlora::compute_orth_regu(*plain), HasSubstring("no SVDLinear layer with an adapter"));
}
