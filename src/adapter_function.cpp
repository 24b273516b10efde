#include "increlora/detail/adapter_function.hpp"

#include "increlora/detail/adapter_factors.hpp"

#include <torch/autograd.h>
#include <torch/version.h>

#include "increlora/errors.hpp"

#include <algorithm>
#include <cmath>
#include <optional>
#include <tuple>

namespace increlora::detail {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Largest G block (rows × in) materialised while scoring: 16M elements, 64 MiB in float32.
constexpr int64_t kScoreBlockElements = int64_t{1} << 24;

// a · b in `out_dtype`: on CUDA one GEMM that writes float32 from bf16/f16 operands (cuBLAS accumulates in float32
// anyway), elsewhere the product in the operands' dtype, then a cast.
torch::Tensor mm_as(const torch::Tensor& a, const torch::Tensor& b, c10::ScalarType out_dtype) {
  if (a.scalar_type() == out_dtype) return torch::mm(a, b);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 8)
  const auto in = a.scalar_type();
  if (a.is_cuda() && out_dtype == torch::kFloat && (in == torch::kBFloat16 || in == torch::kHalf)) {
    return at::mm(a, b, out_dtype);
  }
#endif
  return torch::mm(a, b).to(out_dtype);
}

struct AdaptedLinearFunction : public torch::autograd::Function<AdaptedLinearFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight,
                               const std::optional<torch::Tensor>& bias, const torch::Tensor& P,
                               const torch::Tensor& lambda, const torch::Tensor& Q, const torch::Tensor& gate,
                               const torch::Tensor& held, const AdapterCall& call,
                               const std::optional<torch::Tensor>& score_sink) {
    const auto dtype = x.scalar_type();
    const auto x2 = x.reshape({-1, x.size(-1)});
    auto y = torch::linear(x2, weight, bias.has_value() ? *bias : torch::Tensor());  // [tokens × out]

    torch::Tensor xd = x2, mask;
    if (call.dropout > 0.0) std::tie(xd, mask) = at::native_dropout(x2, call.dropout, /*train=*/true);
    // c = λ ⊙ gate + held, P diag(c) and Q in the compute dtype: computed beforehand for many layers at once, or
    // here (three small kernels).
    const auto factors =
        call.factors != nullptr ? *call.factors : make_adapter_factors(P, lambda, Q, gate, held, dtype);
    const auto& coeff = factors.coeff;
    const auto& Pc = factors.Pc;
    const auto& Qc = factors.Qc;
    const auto h = torch::mm(xd, Qc.t());  // [tokens × capacity]
    y.addmm_(h, Pc.t());                   // the adapter adds into the base output: no separate add

    // x2 only for the base weight's gradient (a frozen base needs none).
    const bool weight_grad = weight.requires_grad();
    ctx->save_for_backward({xd, h, Pc, Qc, coeff, gate, weight, weight_grad ? x2 : torch::Tensor(), mask, P, Q});
    ctx->saved_data["dropout"] = call.dropout;
    ctx->saved_data["in_use"] = call.in_use;
    if (score_sink.has_value() && score_sink->defined()) ctx->saved_data["sink"] = *score_sink;
    auto out_shape = x.sizes().vec();
    out_shape.back() = weight.size(0);
    return y.view(out_shape);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // The saved products (h, λ s) are constants here, so a graph of this backward would give wrong
    // second derivatives for λ: refuse rather than be silently wrong.
    INCRELORA_CHECK(!torch::GradMode::is_enabled(), "SVDLinear's adapter does not support double backward "
                    "(backward with create_graph=true); compute higher derivatives with a plain model.");
    const auto saved = ctx->get_saved_variables();
    const auto& xd = saved[0];
    const auto& h = saved[1];   // drop(x) Qᵀ
    const auto& Pc = saved[2];  // P diag(c)
    const auto& Qc = saved[3];
    const auto& coeff = saved[4];
    const auto& gate = saved[5];
    const auto& weight = saved[6];
    const auto& x2 = saved[7];
    const auto& mask = saved[8];
    const auto& P = saved[9];
    const auto& Q = saved[10];
    const double dropout = ctx->saved_data["dropout"].toDouble();
    const auto dy = grad_outputs[0].reshape({-1, weight.size(0)});

    torch::Tensor dx, dW, db, dP, dlambda, dQ;
    if (ctx->needs_input_grad(3) || ctx->needs_input_grad(4)) {
      // G = dyᵀ h [out × capacity], in the banks' dtype: ∂L/∂P = G diag(c), and ∂L/∂λ_j = gate_j Σ_o P_oj G_oj
      // (= Σ_tokens (dy P) ⊙ h, without a reduction over the tokens), the diagonal of the small product Pᵀ G:
      // two kernels where a product, a reduction and a scaling took three.
      const auto G = mm_as(dy.t(), h, P.scalar_type());
      if (ctx->needs_input_grad(3)) dP = G * coeff;
      if (ctx->needs_input_grad(4)) dlambda = torch::mm(P.t(), G).diagonal() * gate;
    }
    torch::Tensor dh;  // ∂L/∂h = dy P diag(c), [tokens × capacity]
    if (ctx->needs_input_grad(0) || ctx->needs_input_grad(5)) dh = torch::mm(dy, Pc);
    if (ctx->needs_input_grad(5)) dQ = mm_as(dh.t(), xd, Q.scalar_type());
    if (ctx->needs_input_grad(0)) {
      auto shape = grad_outputs[0].sizes().vec();
      shape.back() = weight.size(1);
      dx = torch::mm(dy, weight);
      if (mask.defined()) {
        // The dropout's backward (mask and scale) and the add into the base's input gradient as one pass.
        dx.addcmul_(torch::mm(dh, Qc), mask, 1.0 / (1.0 - dropout));
      } else {
        dx.addmm_(dh, Qc);  // the adapter's input gradient adds into the base's: no separate add
      }
      dx = dx.view(shape);
    }
    if (ctx->needs_input_grad(1)) dW = torch::mm(dy.t(), x2);
    if (ctx->needs_input_grad(2)) db = dy.sum(0);

    if (const auto it = ctx->saved_data.find("sink"); it != ctx->saved_data.end()) {
      torch::NoGradGuard no_grad;
      auto sink = it->second.toTensor();
      if (sink.dim() == 2) {
        // Gradient accumulation: ∂L/∂ΔW = dyᵀ x summed into the sink; the score is taken from the sum.
        sink.addmm_(dy.t().to(sink.scalar_type()), xd.to(sink.scalar_type()));
      } else {
        const int64_t n = ctx->saved_data["in_use"].toInt();
        const auto sum = importance_sum(dy, xd, P.narrow(1, 0, n), coeff.narrow(0, 0, n), Q.narrow(0, 0, n));
        const double norm = 1.0 / std::sqrt(static_cast<double>(P.size(0) * Q.size(1)));
        if (sum.device() == sink.device() && sum.scalar_type() == sink.scalar_type()) {
          sink.add_(sum, norm);  // the normalisation and the accumulation in one kernel
        } else {
          sink.add_((sum * norm).to(sink.device(), sink.scalar_type()));
        }
      }
    }
    return {dx, dW, db, dP, dlambda, dQ, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor importance_sum(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& P,
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
  // diag(λ s) Q: the scaling (in the banks' dtype, float32 or float64) and the cast to `prod` in one kernel.
  auto Qc = torch::empty(Q.sizes(), Q.options().dtype(prod));
  at::mul_out(Qc, Q, coeff.unsqueeze(1));
  const int64_t out = P.size(0), in = Q.size(1);
  const int64_t rows = std::max<int64_t>(1, std::min<int64_t>(out, kScoreBlockElements / std::max<int64_t>(in, 1)));
  torch::Tensor total;
  for (int64_t r0 = 0; r0 < out; r0 += rows) {
    const int64_t n = std::min(rows, out - r0);
    const auto g = torch::mm(dy.narrow(1, r0, n).t().to(prod), xp);  // ∂L/∂ΔW rows [n × in]
    const auto dw = torch::mm(Pp.narrow(0, r0, n), Qc);
    // The L1 norm is Σ|·| in one pass, accumulated in `acc`.
    auto part = at::linalg_vector_norm(dw.mul_(g), 1, std::nullopt, false, acc);
    total = total.defined() ? total + part : part;
  }
  return total;
}

torch::Tensor importance_score(const torch::Tensor& dy, const torch::Tensor& x, const torch::Tensor& P,
                               const torch::Tensor& coeff, const torch::Tensor& Q) {
  return importance_sum(dy, x, P, coeff, Q) / std::sqrt(static_cast<double>(P.size(0) * Q.size(1)));
}

torch::Tensor adapted_linear(const torch::Tensor& x, const torch::Tensor& weight, const torch::Tensor& bias,
                             const torch::Tensor& P, const torch::Tensor& lambda, const torch::Tensor& Q,
                             const torch::Tensor& gate, const torch::Tensor& held, const AdapterCall& call,
                             const torch::Tensor& score_sink) {
  // Optionals, so that an undefined bias or sink is not taken for an autograd input.
  std::optional<torch::Tensor> b, sink;
  if (bias.defined()) b = bias;
  if (score_sink.defined()) sink = score_sink;
  return AdaptedLinearFunction::apply(x, weight, b, P, lambda, Q, gate, held, call, sink);
}

}  // namespace increlora::detail
