#pragma once
/// \file
/// Finding and preparing the `SVDLinear` layers of a model: discovery by qualified name, selection by
/// pattern, `mark_only_lora_as_trainable` and `lora_state_dict` (the seed's names).

#include "increlora/svd_linear.hpp"

#include <torch/nn/module.h>
#include <torch/ordered_dict.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace increlora {

using NamedSVDLinear = std::pair<std::string, std::shared_ptr<SVDLinearImpl>>;

/// The `SVDLinear` layers of `model` in registration order, named as `model.named_modules()` names them
/// ("encoder.layer.0.attention.self.query"). With `adapters_only`, layers built with r = 0 are left out.
std::vector<NamedSVDLinear> named_svd_linears(const torch::nn::Module& model, bool adapters_only = true);

/// Whether a qualified module name matches one pattern. A pattern is the exact name, a dotted suffix of it
/// ("query" matches "encoder.layer.0.attention.self.query" but not "my_query"), or, prefixed with "re:",
/// an ECMAScript regular expression that must match the whole name ("re:.*layer\\.[0-5]\\..*").
bool matches_pattern(const std::string& name, const std::string& pattern);

/// Names of the `SVDLinear` layers of `model` (with or without adapter) that match any of `patterns`, in
/// registration order. Throws when a pattern matches nothing, listing the candidate names.
std::vector<std::string> select_modules(const torch::nn::Module& model, const std::vector<std::string>& patterns);

/// Whether a qualified tensor name is an adapter tensor: its last component starts with "lora_" (the banks
/// lora_A, lora_E, lora_B and the rank buffers lora_ranknum, lora_slot_state, ...). The one rule every function
/// here, the adapter files and the exports use.
bool is_adapter_tensor(const std::string& qualified_name);

/// Freezes every parameter that is not an adapter tensor (`is_adapter_tensor`). `bias`: "none" (biases frozen), "all" (every
/// bias trainable) or "lora_only" (biases of layers with an adapter trainable), as in loralib.
void mark_only_lora_as_trainable(torch::nn::Module& model, const std::string& bias = "none");

/// The adapter's tensors by qualified name: every adapter parameter and buffer (`is_adapter_tensor`), plus the
/// biases `bias` selects ("none", "all", "lora_only"), as in loralib.
torch::OrderedDict<std::string, torch::Tensor> lora_state_dict(const torch::nn::Module& model,
                                                                const std::string& bias = "none");

}  // namespace increlora
