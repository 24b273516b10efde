#pragma once
/// \file
/// Training checkpoints that resume exactly: the adapter, the allocator's state, the optimizer's state, the
/// random generators and the step, as safetensors + JSON (never a pickle).

#include "increlora/allocator.hpp"

#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>

#include <cstdint>
#include <string>

namespace increlora {

/// The version of trainer_state.json that `save_checkpoint` writes.
inline constexpr int64_t kCheckpointFormatVersion = 1;

/// Saves what training needs to continue exactly as if it had not stopped, into the folder `dir`:
///   * `adapter.safetensors` + `adapter_config.json`: the adapter, as `save_adapter` writes it;
///   * `trainer_state.safetensors`: the allocator's EMAs, the optimizer's per-parameter tensors (keyed by the
///     parameter's qualified name in `model`), every other parameter the optimizer trains (a classifier head,
///     biases), and the default CPU (and CUDA) random generators' states, which growth draws from;
///   * `trainer_state.json`: `step`, the allocator's round and counters, the optimizer's type, parameter
///     groups (by name) with their options (learning rate included) and step counts.
/// Supported optimizers: `torch::optim::Adam`, `AdamW` and `SGD`.
///
/// A save is all-or-nothing, even when the process is killed in the middle: the new folder is written whole
/// (and flushed to disk) beside `dir` as "<dir>.tmp-<pid>-<tag>", then swapped with `dir` in one atomic step
/// (Linux's renameat2 RENAME_EXCHANGE; on a filesystem without it, two renames that park the previous version
/// as "<dir>.old-<pid>-<tag>" for a moment, which `load_checkpoint` puts back if the writer died in between).
/// Every file carries the save's id, so a reader never combines files of two saves. A killed save leaves at
/// most one such stray beside `dir`; the next `save_checkpoint` or `load_checkpoint` of `dir` removes the
/// strays of writers that are gone (never those of a live process).
///
/// Example (save after `optimizer.step()` of step `step`, resume at `step + 1`):
/// \code
///   increlora::save_checkpoint("ckpt", *model, allocator, optimizer, step);
///   // in a new process: build the model (same options, base weights loaded), the optimizer over
///   // model->parameters() and the allocator, all as at the start of training, then
///   const int64_t step = increlora::load_checkpoint("ckpt", *model, allocator, optimizer);
/// \endcode
void save_checkpoint(const std::string& dir, const torch::nn::Module& model, const RankAllocator& allocator,
                     const torch::optim::Optimizer& optimizer, int64_t step);

/// Restores a checkpoint written by `save_checkpoint` and returns its step. `model`, `allocator` and
/// `optimizer` must be built as they were at the start of the saved run: the model's base weights in place and
/// every adapted layer at rank lora_r (the allocator's constructor requires it), the optimizer of the same type
/// over the same parameters in the same groups. The adapter is restored first, then the allocator's state, the
/// optimizer's, and with `restore_rng` the random generators' states (the only global state touched).
/// Everything is checked before the model, the allocator, the optimizer or a generator is modified (the
/// adapter, the allocator's scores and counters, the optimizer's options and moments with their shapes and
/// dtypes, the generators' states, every field of trainer_state.json with its type): mismatches and corrupted
/// files fail naming the file and what differs, and leave all of them as they were.
int64_t load_checkpoint(const std::string& dir, torch::nn::Module& model, RankAllocator& allocator,
                        torch::optim::Optimizer& optimizer, bool restore_rng = true);

/// The same for a trainer: `allocator` may be null (a run without rank allocation: a fixed adapter, or a task
/// head trained alone, whose model then needs no adapter at all), and `user_state`, a JSON object of the
/// caller's own (its data order, its log's running sums), is stored in trainer_state.json under "user", inside
/// the same all-or-nothing folder. Throws when `user_state` is not a JSON object.
void save_checkpoint(const std::string& dir, const torch::nn::Module& model, const RankAllocator* allocator,
                     const torch::optim::Optimizer& optimizer, int64_t step, const std::string& user_state);

/// Restores a checkpoint of the overload above and returns its step; `allocator` must be null exactly when it
/// was at the save. `user_state` (when not null) receives the saved JSON object's text ("{}" when none was
/// saved).
int64_t load_checkpoint(const std::string& dir, torch::nn::Module& model, RankAllocator* allocator,
                        torch::optim::Optimizer& optimizer, bool restore_rng, std::string* user_state);

}  // namespace increlora
