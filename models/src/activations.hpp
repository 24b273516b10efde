#pragma once
// The activations of transformers' ACT2FN that the model families implement (BERT's hidden_act, DeBERTa's
// hidden_act and pooler_hidden_act, BART's activation_function all index the same table there), and the value
// transformers fills masked attention scores with. Shared by bert.cpp, deberta.cpp and bart.cpp.
#include <ATen/ATen.h>
#include <c10/util/BFloat16.h>
#include <torch/nn/functional/activation.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

namespace increlora::models::detail {

/// The ACT2FN names implemented here, in the order error messages list them.
inline const std::vector<std::string>& activation_names() {
  static const std::vector<std::string> names = {"gelu", "gelu_new", "gelu_pytorch_tanh", "relu",
                                                 "silu", "swish",    "tanh"};
  return names;
}

inline bool is_activation(const std::string& name) {
  const auto& n = activation_names();
  return std::find(n.begin(), n.end(), name) != n.end();
}

/// "gelu, gelu_new, …, swish or tanh": what an error message offers instead of an unknown name.
inline std::string activation_choices() {
  const auto& n = activation_names();
  std::string text;
  for (size_t i = 0; i < n.size(); ++i) text += (i == 0 ? "" : i + 1 == n.size() ? " or " : ", ") + n[i];
  return text;
}

/// ACT2FN[name](x) for a name is_activation accepts: gelu is the exact (erf) form, gelu_new and
/// gelu_pytorch_tanh the tanh approximation, silu and swish the same function.
inline at::Tensor activate(const std::string& name, const at::Tensor& x) {
  namespace F = torch::nn::functional;
  if (name == "gelu") return F::gelu(x);
  if (name == "relu") return at::relu(x);
  if (name == "tanh") return at::tanh(x);
  if (name == "silu" || name == "swish") return at::silu(x);
  return F::gelu(x, F::GELUFuncOptions().approximate("tanh"));  // gelu_new, gelu_pytorch_tanh
}

/// The most negative finite value of `type`: what transformers fills masked scores with (finfo(dtype).min), so a
/// row with every key masked stays finite (uniform) instead of NaN.
inline double lowest_finite(at::ScalarType type) {
  switch (type) {
    case at::kDouble:
      return std::numeric_limits<double>::lowest();
    case at::kHalf:
      return -65504.0;
    case at::kBFloat16:
      return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
    default:
      return static_cast<double>(std::numeric_limits<float>::lowest());
  }
}

}  // namespace increlora::models::detail
