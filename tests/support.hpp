#pragma once
// Shared helpers of the test suites: the devices to run on, a tensor comparison that reports the largest
// difference, the reference vectors, and small models.

#include "catch.hpp"

#include <increlora/increlora.hpp>

#include <torch/cuda.h>
#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/linear.h>
#include <torch/types.h>

#include <cstdlib>
#include <string>
#include <vector>

namespace increlora::test {

/// CPU, plus CUDA when a GPU is present: device-parametrised cases GENERATE over these.
inline std::vector<std::string> devices() {
  std::vector<std::string> d{"cpu"};
  if (torch::cuda::is_available()) d.push_back("cuda");
  return d;
}

/// Largest absolute difference, as a double (0 for two empty tensors).
inline double max_abs_diff(const torch::Tensor& a, const torch::Tensor& b) {
  REQUIRE(a.sizes() == b.sizes());
  if (a.numel() == 0) return 0.0;
  return (a.to(torch::kCPU, torch::kDouble) - b.to(torch::kCPU, torch::kDouble)).abs().max().item<double>();
}

/// CHECKs |a − b| <= atol + rtol |b| element-wise, printing the largest difference when it fails.
#define CHECK_ALLCLOSE(a, b, rtol, atol)                                                             \
  do {                                                                                              \
    const auto a_ = (a).detach().to(torch::kCPU, torch::kDouble);                                    \
    const auto b_ = (b).detach().to(torch::kCPU, torch::kDouble);                                    \
    REQUIRE(a_.sizes() == b_.sizes());                                                              \
    const auto excess_ = ((a_ - b_).abs() - ((rtol) * b_.abs() + (atol)));                          \
    const double worst_ = a_.numel() ? excess_.max().item<double>() : -1.0;                         \
    INFO("largest |a - b| = " << increlora::test::max_abs_diff(a_, b_) << " (rtol " << (rtol)       \
                              << ", atol " << (atol) << ")");                                       \
    CHECK(worst_ <= 0.0);                                                                           \
  } while (0)

/// The shared folder (reference vectors, data): $INCRELORA_SHARED_DIR, else the one beside the checkout.
inline std::string shared_dir() {
  if (const char* env = std::getenv("INCRELORA_SHARED_DIR")) return env;
  return INCRELORA_SHARED_DIR;
}

/// Two adapted layers in sequence with a plain one between, for allocator and regularizer tests.
struct TinyNetImpl : torch::nn::Module {
  TinyNetImpl(int64_t width, int64_t layers, SVDLinearOptions base) {
    for (int64_t i = 0; i < layers; ++i) {
      auto o = base;
      o.in_features(width).out_features(width);
      fc.push_back(register_module("fc" + std::to_string(i), SVDLinear(o)));
    }
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& layer : fc) x = torch::tanh(layer(x));
    return x;
  }
  std::vector<SVDLinear> fc;
};
TORCH_MODULE(TinyNet);

}  // namespace increlora::test
