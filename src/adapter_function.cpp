#include "increlora/detail/adapter_function.hpp"

#include <torch/autograd.h>

#include "increlora/errors.hpp"

#include <algorithm>
#include <cmath>
#include <optional>

namespace increlora::detail {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Largest G block (rows × in) materialised while scoring: 16M elements, 64 MiB in float32.
constexpr int64_t kScoreBlockElements = int64_t{1} << 24;

struct AdapterFunction : public torch::autograd::Function<AdapterFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& P,
                               const torch::Tensor& lambda_active, const torch::Tensor& Q, double scale,
                               double reserve_lambda, const std::optional<torch::Tensor>& score_sink) {
    const auto x2 = x.reshape({-1, x.size(-1)});
    const auto coeff = effective_lambda(lambda_active, Q.size(0), reserve_lambda) * scale;
    const auto h = torch::mm(x2, Q.t());  // [tokens × n]
    const auto hc = h * coeff;
    auto y = torch::mm(hc, P.t());  // [tokens × out]
    ctx->save_for_backward({x2, h, hc, P, Q, coeff});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["active"] = lambda_active.numel();
    if (score_sink.has_value() && score_sink->defined()) ctx->saved_data["sink"] = *score_sink;
    auto out_shape = x.sizes().vec();
    out_shape.back() = P.size(0);
    return y.view(out_shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // The saved products (h, λ s) are constants here, so a graph of this backward would give wrong
    // second derivatives for λ: refuse rather than be silently wrong.
    INCRELORA_CHECK(!torch::GradMode::is_enabled(), "SVDLinear's adapter does not support double backward "
                    "(backward with create_graph=true); compute higher derivatives with a plain model.");
    const auto saved = ctx->get_saved_variables();
    const auto& x2 = saved[0];
    const auto& h = saved[1];
    const auto& hc = saved[2];  // h ⊙ λ s, kept from the forward
    const auto& P = saved[3];
    const auto& Q = saved[4];
    const auto& coeff = saved[5];
    const double scale = ctx->saved_data["scale"].toDouble();
    const int64_t active = ctx->saved_data["active"].toInt();
    const auto dy = grad_outputs[0].reshape({-1, P.size(0)});

    const auto dh_scaled = torch::mm(dy, P);  // ∂L/∂(h ⊙ coeff), [tokens × n]
    torch::Tensor dx, dP, dlambda, dQ;
    if (ctx->needs_input_grad(1)) dP = torch::mm(dy.t(), hc);
    if (ctx->needs_input_grad(2)) {
      dlambda = (dh_scaled.narrow(1, 0, active) * h.narrow(1, 0, active)).sum(0) * scale;
    }
    const auto dh = dh_scaled * coeff;
    if (ctx->needs_input_grad(3)) dQ = torch::mm(dh.t(), x2);
    if (ctx->needs_input_grad(0)) {
      auto shape = grad_outputs[0].sizes().vec();
      shape.back() = Q.size(1);
      dx = torch::mm(dh, Q).view(shape);
    }

    if (const auto it = ctx->saved_data.find("sink"); it != ctx->saved_data.end()) {
      torch::NoGradGuard no_grad;
      auto sink = it->second.toTensor();
      if (sink.dim() == 2) {
        // Gradient accumulation: ∂L/∂ΔW = dyᵀ x summed into the sink; the score is taken from the sum.
        sink.addmm_(dy.t().to(sink.scalar_type()), x2.to(sink.scalar_type()));
      } else {
        auto score = importance_score(dy, x2, P, coeff, Q);
        sink.add_(score.to(sink.device(), sink.scalar_type()));
      }
    }
    return {dx, dP, dlambda, dQ, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor effective_lambda(const torch::Tensor& lambda_active, int64_t in_use, double reserve_lambda) {
  const int64_t reserve = in_use - lambda_active.numel();
  if (reserve == 0) return lambda_active;
  return torch::cat({lambda_active, torch::full({reserve}, reserve_lambda, lambda_active.options())});
}

torch::Tensor importance_score(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& P,
                               const torch::Tensor& coeff, const torch::Tensor& Q) {
  // Which precision the two [rows × in] products take:
  //  * bf16 inputs: the products stay in bf16 (the GEMM accumulates in float32; each element of G and ΔW is
  //    then rounded once, a relative 2^-9 that averages out over the sum). bf16 has float32's range, and this
  //    is what keeps scoring near the cost of the step: G in float32 is a full weight-gradient GEMM per layer
  //    in float32, which doubled a BERT-base bf16 step on an H200.
  //  * f16 inputs: float32, since a product over thousands of tokens can overflow f16's range.
  //  * float32 / float64: their own precision (the float64 reference test needs it).
  // The sum Σ|ΔW ⊙ G| always accumulates in float32 at least.
  const auto in_dtype = x.scalar_type();
  const auto acc = in_dtype == torch::kDouble ? torch::kDouble : torch::kFloat;
  const auto prod = in_dtype == torch::kBFloat16 ? torch::kBFloat16 : acc;
  const auto xp = x.to(prod);
  const auto Pp = P.to(prod);
  const auto Qc = (Q.to(acc) * coeff.to(acc).unsqueeze(1)).to(prod);  // diag(λ s) Q
  const int64_t out = P.size(0), in = Q.size(1);
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(out, kScoreBlockElements / std::max<int64_t>(in, 1)));
  torch::Tensor total;
  for (int64_t r0 = 0; r0 < out; r0 += rows) {
    const int64_t n = std::min(rows, out - r0);
    const auto g = torch::mm(dy.narrow(1, r0, n).t().to(prod), xp);  // ∂L/∂ΔW rows [n × in]
    const auto dw = torch::mm(Pp.narrow(0, r0, n), Qc);
    // The L1 norm is Σ|·| in one pass, accumulated in `acc`.
    auto part = at::linalg_vector_norm(dw * g, 1, std::nullopt, false, acc);
    total = total.defined() ? total + part : part;
  }
  return total / std::sqrt(static_cast<double>(out * in));
}

torch::Tensor adapter_forward(const torch::Tensor& x, const torch::Tensor& P, const torch::Tensor& lambda_active,
                              const torch::Tensor& Q, double scale, double reserve_lambda,
                              const torch::Tensor& score_sink) {
  // An optional, so that an undefined sink is not taken for an autograd input.
  std::optional<torch::Tensor> sink;
  if (score_sink.defined()) sink = score_sink;
  return AdapterFunction::apply(x, P, lambda_active, Q, scale, reserve_lambda, sink);
}

}  // namespace increlora::detail
