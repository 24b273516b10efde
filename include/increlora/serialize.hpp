#pragma once
/// \file
/// Adapters that last: saving and restoring an IncreLoRA adapter (safetensors + JSON, never a pickle), and
/// exporting it as merged weights or as a plain LoRA adapter in PEFT's format.

#include <torch/arg.h>
#include <torch/nn/module.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace increlora {

/// The version of the adapter_config.json layout `save_adapter` writes; `load_adapter` reads this version
/// and older ones and refuses newer ones.
inline constexpr int64_t kAdapterFormatVersion = 1;

/// The files of an adapter folder (`save_adapter`, `load_adapter`, checkpoints) and of a PEFT adapter folder
/// (`export_peft`, `import_peft`): their one home.
inline constexpr const char* kAdapterTensorsFile = "adapter.safetensors";
inline constexpr const char* kAdapterConfigFile = "adapter_config.json";
inline constexpr const char* kPeftTensorsFile = "adapter_model.safetensors";
inline constexpr const char* kPeftConfigFile = "adapter_config.json";

/// Saves the adapter of `model` into the folder `dir` (created if needed):
///   * `adapter.safetensors`: every tensor of `lora_state_dict(model, bias)` by qualified name (the banks
///     lora_A, lora_E, lora_B and the rank buffers of each adapted layer, plus the biases `bias` selects);
///   * `adapter_config.json`: the format version, `bias`, the rank pattern {module: rank} and per layer its
///     shape, initial rank r, capacity, rank, reserve, lora_alpha, scaling and lora_dropout.
/// Other files in `dir` are left alone.
///
/// A save is all-or-nothing, even when the process is killed in the middle: the new version is written whole
/// (and flushed to disk) into a staging folder inside `dir`, "adapter.tmp-<pid>-<tag>", and only then renamed
/// into place; both files carry the save's id, so `load_adapter` always reads the files of one save, the
/// previous complete version or the new complete one (it completes a killed save's last rename itself). A
/// killed save leaves at most that one staging folder, which the next `load_adapter` or `save_adapter` on
/// `dir` removes once its writer is gone (never while the writer lives).
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
/// layer that differs and the shapes; missing, truncated or corrupted files fail naming the file, and a field
/// of adapter_config.json of the wrong type (16.9 for an integer, a string for a number) fails naming the file
/// and the field. A FIFO or device in place of a file is refused without blocking. Returns the restored rank
/// pattern {module: rank}. Reading `dir` also removes what killed saves left there (see `save_adapter`).
std::map<std::string, int64_t> load_adapter(torch::nn::Module& model, const std::string& dir);

namespace detail {
/// Internal (checkpoints): `load_adapter` in two halves, so that `load_checkpoint` checks the adapter together
/// with everything else before it changes anything.
struct PreparedAdapter {
  std::string save_id;                    ///< the save the files come from ("" for files of older versions)
  std::map<std::string, int64_t> ranks;   ///< module -> the rank the adapter restores
  /// Copies the checked adapter into the model (the model passed to `prepare_adapter_load`, which must
  /// outlive this call); returns the restored rank pattern.
  std::function<std::map<std::string, int64_t>()> apply;
};
/// Reads and checks everything `load_adapter` would, without changing the model.
PreparedAdapter prepare_adapter_load(torch::nn::Module& model, const std::string& dir);
/// `save_adapter` with the given save id (a checkpoint's, so that its files can be told to belong together).
void save_adapter(const torch::nn::Module& model, const std::string& dir, const std::string& bias,
                  const std::string& save_id);
}  // namespace detail

/// Writes the plain model's weights with every adapter folded in (W + ΔW) as one safetensors file at `path`:
/// every parameter and buffer of `model` by qualified name, except the adapter tensors (lora_*). The model
/// is not modified (merged or not, the written weights are W + ΔW). Load them into the same architecture
/// built with plain layers (r = 0, or `torch::nn::Linear` with matching names) to serve without the adapter.
/// The advance-learning reserve is part of ΔW while it contributes to the output (before the budget is met).
void merge_and_export(const torch::nn::Module& model, const std::string& path,
                      const std::map<std::string, std::string>& metadata = {});

/// Options of `export_peft`, named after the adapter_config.json fields they fill.
struct PeftExportOptions {
  /// Prepended (with a dot) to every module name, for a C++ model that is a part of the Python one (e.g.
  /// "bert" for the encoder of a BertForSequenceClassification).
  TORCH_ARG(std::string, base_model_prefix) = "";
  /// PEFT's task type ("SEQ_CLS", "QUESTION_ANS", "SEQ_2_SEQ_LM", ...); empty writes null (a bare PeftModel).
  TORCH_ARG(std::string, task_type) = "";
  /// The base checkpoint the adapter belongs to (a local directory or a hub id); empty writes null.
  /// `peft.AutoPeftModel*.from_pretrained(dir)` loads the base model from here.
  TORCH_ARG(std::string, base_model_name_or_path) = "";
  /// Modules trained in full beside the adapter (PEFT's modules_to_save), by their qualified name in `model`
  /// ("classifier", "bert.pooler"): every tensor under them is written in full, and the config lists them by
  /// qualified name (PEFT matches the entries as string suffixes of module names: avoid names that end other
  /// modules' names, such as "out", which also ends "lora_dropout").
  TORCH_ARG(std::vector<std::string>, modules_to_save) = {};
  /// Every layer at the largest rank, the smaller ones zero-padded, with lora_alpha = r and no rank or alpha
  /// pattern: one r and one scaling for all adapters, for serving engines that stack adapters. The output is
  /// the same; the file is larger.
  TORCH_ARG(bool, uniform_rank) = false;
};

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
/// Then `peft.PeftModel.from_pretrained(python_model, dir)` computes what the C++ model computes. See
/// `PeftExportOptions` for the task type, the base model, the modules trained in full and a uniform rank.
void export_peft(const torch::nn::Module& model, const std::string& dir, const PeftExportOptions& options);
void export_peft(const torch::nn::Module& model, const std::string& dir, const std::string& base_model_prefix = "");

/// What `import_peft` did.
struct PeftImport {
  std::string peft_type;                ///< "LORA" or "ADALORA"
  std::map<std::string, int64_t> ranks;  ///< module → rank it starts from
  std::vector<std::string> full_tensors;  ///< tensors copied in full (the modules_to_save), by qualified name
};

/// Starts `model`'s adapters from a PEFT adapter folder (adapter_config.json + adapter_model.safetensors), so
/// that IncreLoRA keeps growing an adapter trained elsewhere:
///   * LoRA: each layer's ΔW = B A · scale (lora_alpha / r, per-layer rank and alpha patterns, rsLoRA's
///     lora_alpha / sqrt(r)) is factored through QR and an r × r SVD into r triplets with orthonormal P and Q
///     (the SVD form IncreLoRA's regularizer expects), λ absorbing the scale, so the output is the adapter's;
///   * AdaLoRA: its P (lora_B), Λ (lora_E) and Q (lora_A) are the banks' slots, λ rescaled from AdaLoRA's
///     lora_alpha / (ranknum + 1e-5) (ranknum = init_r) to the layer's scale.
/// Tensors the adapter saved in full (modules_to_save, biases) are copied into the module of the same name.
/// Names are the file's without "base_model.model." and `base_model_prefix` (plus a dot). Every layer of the
/// model with an adapter must be in the file, with room for its rank; everything is checked before anything is
/// copied, and a mismatch throws naming the layer or tensor. The layers start at the imported ranks with no
/// reserve and every slot counted as trained from the start; build the allocator with
/// `RankAllocatorOptions::start_from_current_ranks(true)` to keep growing them.
PeftImport import_peft(torch::nn::Module& model, const std::string& dir, const std::string& base_model_prefix = "");

}  // namespace increlora
