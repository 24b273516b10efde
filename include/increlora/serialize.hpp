#pragma once
/// \file
/// Adapters that last: saving and restoring an IncreLoRA adapter (safetensors + JSON, never a pickle), and
/// exporting it as merged weights or as a plain LoRA adapter in PEFT's format.

#include <torch/nn/module.h>

#include <cstdint>
#include <map>
#include <string>

namespace increlora {

/// The version of the adapter_config.json layout `save_adapter` writes; `load_adapter` reads this version
/// and older ones and refuses newer ones.
inline constexpr int64_t kAdapterFormatVersion = 1;

/// Saves the adapter of `model` into the folder `dir` (created if needed):
///   * `adapter.safetensors`: every tensor of `lora_state_dict(model, bias)` by qualified name (the banks
///     lora_A, lora_E, lora_B and the rank buffers of each adapted layer, plus the biases `bias` selects);
///   * `adapter_config.json`: the format version, `bias`, the rank pattern {module: rank} and per layer its
///     shape, initial rank r, capacity, rank, reserve, lora_alpha, scaling and lora_dropout.
/// Each file is written atomically, so an interrupted save leaves the previous files whole.
///
/// Example:
/// \code
///   increlora::save_adapter(*model, "out/adapter");
///   // later, on a fresh model built with the same options:
///   increlora::load_adapter(*fresh, "out/adapter");
/// \endcode
void save_adapter(const torch::nn::Module& model, const std::string& dir, const std::string& bias = "none");

/// Restores an adapter saved by `save_adapter` into `model`, whose frozen base weights are already in place
/// and whose `SVDLinear` layers were built with the same shapes, initial rank, capacity and lora_alpha (as
/// before training: the saved ranks are restored here). Afterwards the model computes exactly what the saved
/// one did. Everything is checked before anything is copied: a model that does not fit fails naming the first
/// layer that differs and the shapes; missing, truncated or corrupted files fail naming the file. Returns the
/// restored rank pattern {module: rank}.
std::map<std::string, int64_t> load_adapter(torch::nn::Module& model, const std::string& dir);

/// Writes the plain model's weights with every adapter folded in (W + ΔW) as one safetensors file at `path`:
/// every parameter and buffer of `model` by qualified name, except the adapter tensors (lora_*). The model
/// is not modified (merged or not, the written weights are W + ΔW). Load them into the same architecture
/// built with plain layers (r = 0, or `torch::nn::Linear` with matching names) to serve without the adapter.
/// The advance-learning reserve is part of ΔW while it contributes to the output (before the budget is met).
void merge_and_export(const torch::nn::Module& model, const std::string& path,
                      const std::map<std::string, std::string>& metadata = {});

/// Exports the adapter as a standard LoRA adapter in PEFT's format into the folder `dir`:
///   * `adapter_model.safetensors` with, per adapted layer m of rank r,
///     `base_model.model.<prefix><m>.lora_A.weight` = (λ[:r] s)[:, None] * Q[:r]   [r × in]
///     `base_model.model.<prefix><m>.lora_B.weight` = P[:, :r]                     [out × r]
///     (active triplets only: the advance-learning reserve is dropped, which changes nothing once the rank
///     budget is met);
///   * `adapter_config.json` with peft_type "LORA", r = the largest rank, target_modules = the layers, and
///     rank_pattern = alpha_pattern = {m: r_m}, so that PEFT's scaling lora_alpha / r is 1 for every layer.
/// `base_model_prefix` is prepended (with a dot) to every module name, for a C++ model that is a part of
/// the Python one (e.g. "bert" for the encoder of a BertForSequenceClassification).
/// Then `peft.PeftModel.from_pretrained(python_model, dir)` computes what the C++ model computes.
void export_peft(const torch::nn::Module& model, const std::string& dir, const std::string& base_model_prefix = "");

}  // namespace increlora
