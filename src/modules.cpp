#include "increlora/modules.hpp"

#include "increlora/errors.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <regex>

namespace increlora {
namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

void check_bias_mode(const std::string& bias) {
  INCRELORA_CHECK(bias == "none" || bias == "all" || bias == "lora_only", "bias must be \"none\", \"all\" or "
                  "\"lora_only\" (got \"", bias, "\").");
}

// The qualified names of parameters that belong to a layer with an adapter, by that layer's prefix.
bool under_adapted_layer(const std::string& param_name, const std::vector<NamedSVDLinear>& adapted) {
  for (const auto& entry : adapted) {
    const auto prefix = entry.first.empty() ? std::string() : entry.first + ".";
    if (param_name.compare(0, prefix.size(), prefix) == 0 && param_name.find('.', prefix.size()) == std::string::npos) {
      return true;
    }
  }
  return false;
}

bool is_bias(const std::string& name) { return name == "bias" || ends_with(name, ".bias"); }

}  // namespace

std::vector<NamedSVDLinear> named_svd_linears(const torch::nn::Module& model, bool adapters_only) {
  std::vector<NamedSVDLinear> found;
  for (const auto& item : model.named_modules()) {
    auto layer = std::dynamic_pointer_cast<SVDLinearImpl>(item.value());
    if (layer && (!adapters_only || layer->has_adapter())) found.emplace_back(item.key(), std::move(layer));
  }
  return found;
}

bool matches_pattern(const std::string& name, const std::string& pattern) {
  static const std::string kRegexPrefix = "re:";
  if (pattern.compare(0, kRegexPrefix.size(), kRegexPrefix) == 0) {
    try {
      return std::regex_match(name, std::regex(pattern.substr(kRegexPrefix.size()), std::regex::ECMAScript));
    } catch (const std::regex_error& e) {
      INCRELORA_CHECK(false, "the module pattern \"", pattern, "\" is not a valid regular expression (", e.what(),
                      ").");
    }
  }
  return name == pattern || ends_with(name, "." + pattern);
}

std::vector<std::string> select_modules(const torch::nn::Module& model, const std::vector<std::string>& patterns) {
  const auto layers = named_svd_linears(model, /*adapters_only=*/false);
  std::vector<std::string> names;
  for (const auto& entry : layers) names.push_back(entry.first);
  std::vector<std::string> selected;
  for (const auto& pattern : patterns) {
    bool any = false;
    for (const auto& name : names) any = any || matches_pattern(name, pattern);
    INCRELORA_CHECK(any, "the module pattern \"", pattern, "\" matches no SVDLinear layer of the model. Candidates: ",
                    names.empty() ? std::string("(none: the model has no SVDLinear)") : fmt::format("{}", fmt::join(names, ", ")),
                    ". Use an exact name, a dotted suffix of one, or re:<regex>.");
  }
  for (const auto& name : names) {
    for (const auto& pattern : patterns) {
      if (matches_pattern(name, pattern)) {
        selected.push_back(name);
        break;
      }
    }
  }
  return selected;
}

bool is_adapter_tensor(const std::string& name) {
  const auto dot = name.rfind('.');
  return name.compare(dot == std::string::npos ? 0 : dot + 1, 5, "lora_") == 0;
}

void mark_only_lora_as_trainable(torch::nn::Module& model, const std::string& bias) {
  check_bias_mode(bias);
  const auto adapted = named_svd_linears(model, /*adapters_only=*/true);
  for (auto& item : model.named_parameters()) {
    const auto& name = item.key();
    bool trainable = is_adapter_tensor(name);
    if (!trainable && is_bias(name)) {
      trainable = bias == "all" || (bias == "lora_only" && under_adapted_layer(name, adapted));
    }
    item.value().set_requires_grad(trainable);
  }
}

torch::OrderedDict<std::string, torch::Tensor> lora_state_dict(const torch::nn::Module& model,
                                                                const std::string& bias) {
  check_bias_mode(bias);
  const auto adapted = named_svd_linears(model, /*adapters_only=*/true);
  torch::OrderedDict<std::string, torch::Tensor> state;
  for (const auto& item : model.named_parameters()) {
    const auto& name = item.key();
    const bool keep = is_adapter_tensor(name) ||
                      (is_bias(name) && (bias == "all" || (bias == "lora_only" && under_adapted_layer(name, adapted))));
    if (keep) state.insert(name, item.value());
  }
  for (const auto& item : model.named_buffers()) {
    if (is_adapter_tensor(item.key())) state.insert(item.key(), item.value());
  }
  return state;
}

}  // namespace increlora
