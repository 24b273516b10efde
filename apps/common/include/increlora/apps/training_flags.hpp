#pragma once
/// \file
/// The flags every fine-tuning program of the toolkit takes from the seed's scripts — IncreLoRA's schedule and
/// adapters, AdamW and its schedule, evaluation and logging cadence, precision, checkpoints, the device — with
/// their checks and what they become: `RankAllocatorOptions` and `TrainerOptions`. A program sets its own
/// defaults (the seed's script for that task) on a `TrainingFlags` before `add_to`, adds its task's flags, and
/// builds the allocator and trainer options from it, so the shared flags have one home.

#include <increlora/allocator.hpp>
#include <increlora/apps/flags.hpp>
#include <increlora/apps/trainer.hpp>

#include <torch/types.h>

#include <cstdint>
#include <string>

namespace increlora::apps {

struct TrainingFlags {
  // IncreLoRA and the adapters (the seed's names).
  int64_t target_rank = 2;
  int64_t target_total_rank = 0;
  int64_t lora_r = 1;
  double reg_orth_coef = 0.1;
  int64_t init_warmup = 1000;
  int64_t incre_interval = 1000;
  int64_t top_h = 2;
  int64_t incre_rank_num = 0;
  double beta1 = 0.85;
  double beta2 = 0.85;
  std::string lora_module;
  double lora_alpha = 16;
  double lora_dropout = 0.0;
  bool advance_learn = true;  // on by default, as in the original's scripts
  bool multi_lr = true;
  bool apply_lora = true;
  // ours, for the adapters
  int64_t lora_capacity = 0;
  bool exact_scoring = false;
  bool random_allocation = false;

  // Optimisation and its schedule.
  int64_t per_device_train_batch_size = 32;
  int64_t per_device_eval_batch_size = 64;
  int64_t gradient_accumulation_steps = 1;
  double learning_rate = 1e-3;
  double num_train_epochs = 3;
  int64_t max_steps = 0;
  int64_t warmup_steps = 0;
  double weight_decay = 0;
  double max_grad_norm = 1.0;

  // Cadence, outputs and run control.
  int64_t eval_steps = 1000;
  int64_t logging_steps = 100;
  int64_t save_steps = 0;
  int64_t seed = 42;
  bool do_train = true;
  bool do_eval = true;
  bool load_best_model_at_end = false;
  bool bf16 = false;
  bool fp16 = false;
  bool cuda_graphs = false;
  std::string resume_from_checkpoint;
  std::string device = "auto";
  int64_t stop_after_step = 0;
  std::string adapter_dir;

  /// Registers every field above on `flags` under its own name with a help text; `adapted` says what
  /// --apply_lora False leaves training (e.g. "the classifier alone") and `modules` lists the short names
  /// --lora_module takes, for the help.
  void add_to(Flags& flags, const std::string& adapted, const std::string& modules);
  /// Throws std::invalid_argument naming the flag and what to change for a value no run can use.
  void validate() const;
  /// Optimizer steps of the run: max_steps, or ceil(num_train_epochs × steps_per_epoch).
  int64_t total_steps(int64_t steps_per_epoch) const;
  /// The allocator of these flags over a run of `total_steps` steps (random_seed from --seed).
  RankAllocatorOptions allocator_options(int64_t total_steps) const;
  /// The trainer settings these flags fix; the program adds its metric, head and run arguments.
  TrainerOptions trainer_options(const std::string& program, const std::string& output_dir,
                                 const torch::Device& device, int64_t total_steps, int64_t steps_per_epoch) const;
};

/// Registers as ignored (accepted, noted, no effect) the Hugging Face Trainer flags of the seed's run_glue.py and
/// run_qa.py command lines that this toolkit has no counterpart for: --lora_type (always svd), the evaluation and
/// save strategies (always by steps), the logging and tracking flags (log.jsonl is the log), --experiment_name
/// (outputs go to --root_output_dir), and the always-on switches --apply_increlora and --overwrite_output_dir.
void ignore_seed_trainer_flags(Flags& flags);

/// The seed's `--schedule_strategy epoch --incre_epoch N` (its XSum script): an allocation interval that puts
/// the last of `rounds` allocation rounds at the end of epoch N or before, the first still after init_warmup
/// (rounds fall at steps t > init_warmup with t % interval == 0). Throws std::invalid_argument when no interval
/// fits (init_warmup too close to epoch N for that many rounds).
int64_t interval_for_epoch(int64_t init_warmup, int64_t rounds, int64_t incre_epoch, int64_t steps_per_epoch);

}  // namespace increlora::apps
