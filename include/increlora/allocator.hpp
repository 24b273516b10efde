#pragma once
/// \file
/// `RankAllocator`: scores every adapted layer with the paper's smoothed importance and grows the rank of the
/// most important ones, round after round, until the rank budget is met.

#include "increlora/log.hpp"
#include "increlora/modules.hpp"

#include <torch/arg.h>
#include <torch/nn/module.h>
#include <torch/optim/optimizer.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace increlora {

/// Options of `RankAllocator`, named as the original's keyword arguments and command-line flags.
///
/// Example (the seed README's quickstart):
/// \code
///   increlora::RankAllocator allocator(*model, increlora::RankAllocatorOptions()
///       .lora_r(1).target_rank(2).init_warmup(1000).incre_interval(1000).top_h(2)
///       .beta1(0.85).beta2(0.85).total_step(20000));
/// \endcode
struct RankAllocatorOptions {
  /// The initial rank of every incremental matrix; every adapted layer must have been built with r = lora_r.
  TORCH_ARG(int64_t, lora_r) = 1;
  /// The average rank per layer at the end: the budget is target_rank × number of adapted layers...
  TORCH_ARG(int64_t, target_rank) = 2;
  /// ...unless this total rank is given (> 0).
  TORCH_ARG(int64_t, target_total_rank) = 0;
  /// Steps before the first allocation: allocations happen at steps t > init_warmup with
  /// t % incre_interval == 0, as in the original.
  TORCH_ARG(int64_t, init_warmup) = 0;
  /// Steps between two allocations.
  TORCH_ARG(int64_t, incre_interval) = 100;
  /// Number of layers that grow at each allocation.
  TORCH_ARG(int64_t, top_h) = 1;
  /// Triplets each chosen layer gains (and the size of the advance-learning reserve). 0 picks
  /// max(1, average target rank / 2), the rule behind the original's table {2: 1, 4: 2, 6: 3, 8: 4}.
  TORCH_ARG(int64_t, incre_rank_num) = 0;
  /// EMA coefficient of the sensitivity Ī ← β1 Ī + (1 − β1) S.
  TORCH_ARG(double, beta1) = 0.85;
  /// EMA coefficient of the uncertainty Ū ← β2 Ū + (1 − β2) |S − Ī|.
  TORCH_ARG(double, beta2) = 0.85;
  /// Total optimizer steps of the training run; when > 0 the allocator checks that the schedule ends
  /// before it (0: the length is unknown, and only the plan's own feasibility is checked).
  TORCH_ARG(int64_t, total_step) = 0;
  /// Advance learning: each layer keeps `incre_rank_num` reserve triplets whose P and Q train while λ is
  /// held, so that a chosen layer's new triplets start from what they learned. On by default, as the
  /// original's `run_glue.py` has it.
  TORCH_ARG(bool, advance_learn) = true;
  /// Steps scored before each allocation. 0 derives it from the betas so that the EMA weight left out is
  /// below 1 % (29 steps for β = 0.85).
  TORCH_ARG(int64_t, score_window) = 0;
  /// Score every step from the first until the budget is met, as the original does (slower, for checks).
  TORCH_ARG(bool, exact_scoring) = false;
  /// Ablation: at each allocation choose the top_h layers uniformly at random (same schedule, same budget,
  /// nothing scored), to measure what the importance score contributes. The draw of round k depends only on
  /// `random_seed` and k, so a resumed run draws the same.
  TORCH_ARG(bool, random_allocation) = false;
  /// Seed of `random_allocation`'s draws.
  TORCH_ARG(uint64_t, random_seed) = 0;
  /// Backward passes per optimizer step (micro-batches of gradient accumulation). With more than one, a scored
  /// step sums ∂L/∂ΔW over its backward passes in an [out × in] float32 buffer per layer and takes the score
  /// once from the sum, so that it equals one big batch's (summing per-pass scores would not: |Σ g| ≠ Σ |g|).
  /// The buffers exist only while scoring.
  TORCH_ARG(int64_t, gradient_accumulation_steps) = 1;
  /// Start from the layers' current ranks (e.g. an adapter imported with `import_peft`) instead of requiring
  /// every adapted layer at lora_r: the budget then grows from their sum.
  TORCH_ARG(bool, start_from_current_ranks) = false;
  /// Called with the per-layer score vector (float32, one entry per adapted layer, on the model's device)
  /// before the EMA update. Under several processes, all-reduce it here (see distributed.hpp) so that every
  /// process makes the same allocation.
  TORCH_ARG(std::function<void(torch::Tensor&)>, reduce_scores) = nullptr;
  /// Receives one line per allocation round; silent when empty.
  TORCH_ARG(LogSink, log) = nullptr;
};

/// The rank budget of a plan over `layers` adapted layers: target_total_rank, or target_rank × layers.
int64_t rank_budget(const RankAllocatorOptions& options, int64_t layers);
/// The triplets a chosen layer gains per allocation: incre_rank_num, or when it is 0 max(1, average target
/// rank / 2) (the rule behind the original's table {2: 1, 4: 2, 6: 3, 8: 4}).
int64_t resolved_incre_rank_num(const RankAllocatorOptions& options, int64_t layers);
/// A bank capacity for each of `layers` adapted layers that fits `options`' plan: room for a layer chosen far
/// more often than the average (4 × the average target rank, at least 16 slots: the banks are small), plus the
/// advance-learning reserve. Build the layers with `SVDLinearOptions::capacity(recommended_capacity(...))`.
int64_t recommended_capacity(const RankAllocatorOptions& options, int64_t layers);

/// What happened to one layer at one allocation, returned as data (format it as you like).
struct AllocationEvent {
  int64_t step = 0;        ///< the global step of the allocation
  int64_t round = 0;       ///< 1 for the first allocation round
  std::string module;      ///< qualified name of the layer
  int64_t old_rank = 0;
  int64_t new_rank = 0;    ///< equal to old_rank when the layer was skipped
  double score = 0.0;      ///< the layer's smoothed importance Ī · Ū at the allocation
  bool at_capacity = false;  ///< the layer was among the top but full, so it was skipped
  /// The round did not run: the scores of this step were not finite (a NaN or inf in the loss or the
  /// gradients), so no layer grows on it; `module` is empty and the round runs at the next step instead.
  bool skipped_non_finite = false;
  /// On the first event of a round (or the skipped one): scored steps since the previous round whose scores
  /// were not finite and were left out of the EMAs.
  int64_t non_finite_steps = 0;
  /// On the skipped event: the layers whose scores at this step were not finite. On the first event of a
  /// round: the layers with a non-finite score on any scored step since the previous round (registration
  /// order). Read at the allocation, so that scoring steps cost no extra host synchronisation.
  std::vector<std::string> non_finite_modules;
};

/// The allocator's state as plain data: what a checkpoint must keep so that training resumes exactly.
struct RankAllocatorState {
  int64_t round = 0;
  int64_t total_rank = 0;
  bool budget_met = false;
  /// The step whose score the next `update_and_increase` call will read (-1: none armed).
  int64_t armed_step = -1;
  /// The last step whose score entered the EMAs (-1: none yet).
  int64_t last_update_step = -1;
  /// The last step `update_and_increase` saw (-1: none yet); the next must be later.
  int64_t last_step = -1;
  /// A round skipped for non-finite scores that runs at the next step.
  bool pending_round = false;
  /// Scored steps with non-finite scores since the last round.
  int64_t non_finite_steps = 0;
  /// Per layer (bool, CPU): a score that was not finite since the last round; undefined reads as none.
  torch::Tensor non_finite_layers;
  torch::Tensor sensitivity;   ///< Ī per layer, float32, CPU
  torch::Tensor uncertainty;   ///< Ū per layer, float32, CPU
};

/// Grows the rank of `SVDLinear` layers during training (IncreLoRA's budget scheduler). Call
/// `update_and_increase` after `backward()` and before `optimizer.step()` at every optimizer step.
///
/// Scoring costs one extra matrix product per adapted layer in the backward, so it runs only in a window
/// before each allocation (see `score_window`) and stops once the budget is met; the per-layer scores stay on
/// the device and are read by the host only at allocations. The steps between two windows are accounted for
/// when the next window opens, as if the score had stayed at the window's first value: without that, Ī would
/// start each window stale and Ū would measure the jump instead of the score's noise. Ties between equal
/// scores go to the layer registered first, so the same scores always give the same allocation.
///
/// Non-finite scores (a NaN or inf in the input, the loss or the gradients) never grow a layer: such a scored
/// step is left out of the EMAs (they stay finite), and an allocation step whose own scores are not finite
/// skips its round to the next step, reporting it as an event (`skipped_non_finite`, with the layers at fault)
/// and through the log sink; the next round's first event and log line report the scored steps left out
/// (`non_finite_steps`, `non_finite_modules`). Training goes on: the next finite steps score normally.
///
/// Steps must increase: call `update_and_increase` once per optimizer step (with gradient accumulation, once
/// after the step's last backward pass, not per micro-batch), with `global_step` larger than at the previous
/// call (gaps are allowed). A step seen already, or one before it, is refused naming both, since a repeated
/// call would read the same scores twice and could allocate twice at one step. The last step seen is part of
/// `state()`: after `load_state`, continue after the restored step.
///
/// The plan is checked at construction: it is refused when top_h exceeds the adapted layers, when the layers'
/// capacities cannot hold the budget over the planned rounds even at best, when the last planned round does not
/// come before `total_step` (when > 0), or when the schedule's arithmetic overflows 64 bits; each message says
/// which option to change and to what.
class RankAllocator {
 public:
  RankAllocator(torch::nn::Module& model, RankAllocatorOptions options);
  ~RankAllocator();
  RankAllocator(const RankAllocator&) = delete;
  RankAllocator& operator=(const RankAllocator&) = delete;

  /// Reads the scores of step `global_step` (when it was scored), updates the EMAs, allocates when the step is
  /// an allocation step, and prepares the scoring of step `global_step + 1`. `optimizer` must hold the
  /// adapter banks (checked on first use); a `FusedAdamW` is also told to keep per-slot optimizer state for
  /// them (`FusedAdamW::track_adapter_slots`), so that triplets that start training get fresh AdamW state as in
  /// the original. Returns this step's allocation events (empty on most steps).
  std::vector<AllocationEvent> update_and_increase(torch::nn::Module& model, int64_t global_step,
                                                   torch::optim::Optimizer& optimizer);
  /// The same with an optimizer that is only checked (a `FusedAdamW` passed as const is not told to track).
  std::vector<AllocationEvent> update_and_increase(torch::nn::Module& model, int64_t global_step,
                                                   const torch::optim::Optimizer& optimizer);
  /// The same without the optimizer check.
  std::vector<AllocationEvent> update_and_increase(torch::nn::Module& model, int64_t global_step);

  /// The backward passes of the step being scored ran on a loss multiplied by `scale` (fp16 loss scaling):
  /// its scores are divided by it when the next `update_and_increase` reads them. Set it before that call, at
  /// every step whose scale changed; it stays in force until changed.
  void set_gradient_scale(double scale);

  /// Qualified layer name → current rank.
  std::map<std::string, int64_t> rank_pattern() const;
  int64_t total_rank() const { return total_rank_; }
  /// The rank budget: target_total_rank, or target_rank × number of adapted layers.
  int64_t budget() const { return budget_; }
  bool budget_met() const { return budget_met_; }
  /// Allocation rounds done so far, and the number the budget needs when no layer is full.
  int64_t round() const { return round_; }
  int64_t planned_rounds() const { return planned_rounds_; }
  /// The step of the k-th allocation (k = 1, 2, ...).
  int64_t allocation_step(int64_t k) const;
  bool is_allocation_step(int64_t global_step) const;
  /// Whether the backward of step `global_step` computes importance scores.
  bool is_scoring_step(int64_t global_step) const;
  int64_t score_window() const { return window_; }
  int64_t incre_rank_num() const { return incre_rank_num_; }
  const RankAllocatorOptions& options() const { return options_; }
  /// The adapted layers in the order the score vectors use.
  const std::vector<NamedSVDLinear>& modules() const { return modules_; }
  /// Current Ī · Ū per layer (float32, CPU).
  torch::Tensor scores() const;

  RankAllocatorState state() const;
  /// Restores a state saved by `state()` on an allocator built with the same options over the same model
  /// (whose adapter was restored too), and re-arms scoring for the next step.
  void load_state(const RankAllocatorState& state);

 private:
  std::vector<AllocationEvent> allocate(int64_t global_step, bool scored_now);
  void arm(int64_t global_step);
  void disarm();
  void check_optimizer(const torch::optim::Optimizer& optimizer);
  std::vector<int64_t> allocation_order(const float* scores) const;
  void log(const std::string& line) const;
  void update_emas(torch::Tensor score, int64_t global_step);
  torch::Tensor read_scores();
  void check_plan() const;
  void check_total_step() const;
  std::vector<std::string> layer_names(const torch::Tensor& mask) const;

  RankAllocatorOptions options_;
  const torch::nn::Module* model_;
  std::vector<NamedSVDLinear> modules_;
  int64_t incre_rank_num_ = 1;
  int64_t budget_ = 0;
  int64_t initial_total_ = 0;
  int64_t total_rank_ = 0;
  int64_t planned_rounds_ = 0;
  int64_t window_ = 0;
  int64_t round_ = 0;
  bool budget_met_ = false;
  int64_t armed_step_ = -1;
  int64_t last_update_step_ = -1;
  torch::Tensor accum_;        // [layers] float32 on the model's device: Σ S of the armed step
  std::vector<torch::Tensor> gradient_sums_;  // per layer [out × in] Σ ∂L/∂ΔW (gradient accumulation only)
  double gradient_scale_ = 1.0;
  torch::Tensor sensitivity_;  // Ī
  torch::Tensor uncertainty_;  // Ū
  // On the device, so that checking scores costs no host synchronisation; read at allocations only.
  torch::Tensor finite_;             // 0-dim bool: the last EMA update's scores were all finite
  torch::Tensor step_non_finite_;    // [layers] bool: which of the last update's scores were not finite
  torch::Tensor non_finite_;         // 0-dim int64: non-finite scored steps since the last round
  torch::Tensor non_finite_layers_;  // [layers] bool: layers with a non-finite score since the last round
  int64_t last_step_ = -1;
  bool pending_round_ = false;
  const torch::optim::Optimizer* checked_optimizer_ = nullptr;
};

}  // namespace increlora
