#pragma once
/// \file
/// `Trainer`: the training loop every program of the toolkit shares (glue now; qa and summarize next). It owns
/// what the seed's Trainer subclass does around a task's loss: AdamW (`FusedAdamW`, no decay on biases and
/// LayerNorm), the linear warmup/decay schedule, gradient clipping, the `RankAllocator`, the restart warmup
/// (`--multi_lr`), `GraphedStep`, gradient accumulation, bf16/fp16 autocast (fp16 with dynamic loss scaling),
/// the evaluation cadence and the best evaluation, the JSON-lines log, progress, checkpoints that resume bit
/// for bit on CPU, and the outputs of a finished run. A task gives it data as example indices → tensors, a
/// loss, and an evaluation.

#include <increlora/allocator.hpp>
#include <increlora/distributed.hpp>
#include <increlora/optim.hpp>
#include <increlora/warmup.hpp>

#include <nlohmann/json.hpp>

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

namespace increlora::apps {

enum class Precision { kFloat32, kBFloat16, kFloat16 };
/// The precision of `--bf16` / `--fp16` (both: an error).
Precision precision_from_flags(bool bf16, bool fp16);
std::string to_string(Precision precision);

/// Autocast for `precision` on `device` while alive (nothing for float32). The cast cache is off, as CUDA-graph
/// captures need.
class AutocastGuard {
 public:
  AutocastGuard(const torch::Device& device, Precision precision);
  ~AutocastGuard();
  AutocastGuard(const AutocastGuard&) = delete;
  AutocastGuard& operator=(const AutocastGuard&) = delete;

 private:
  bool active_ = false;
  c10::DeviceType type_ = c10::DeviceType::CPU;
  bool was_enabled_ = false, was_cache_enabled_ = true;
  c10::ScalarType was_dtype_ = c10::ScalarType::Float;
};

/// Shuffled passes over `size` examples in batches, as run_glue's sampler: a new permutation per epoch from one
/// seeded generator, the last batch of an epoch possibly short. Its state is plain data, for checkpoints.
///
/// Data parallel (`world_size` > 1): every rank draws the same permutations (one seed) and takes its share of
/// each global batch of batch_size × world_size examples, the examples at positions rank, rank + world_size, ...
/// (what torch's DistributedSampler gives each rank). A short last global batch is filled up to a multiple of
/// world_size with the epoch's first examples, so every rank runs the same number of equal steps. The state's
/// position counts examples of the whole permutation, so a checkpoint resumes at any world size.
class EpochSampler {
 public:
  EpochSampler(size_t size, uint64_t seed, int64_t rank = 0, int64_t world_size = 1);
  /// This rank's share of the next global batch of `batch_size` × world_size example indices (a new epoch
  /// starts when the last one ended).
  std::vector<size_t> next(size_t batch_size);
  int64_t epoch() const { return epoch_; }
  nlohmann::json state() const;
  void load_state(const nlohmann::json& state);

 private:
  std::vector<size_t> order_;  // the epoch's permutation, the same on every rank
  size_t cursor_;              // examples of order_ handed out (to all ranks together)
  int64_t epoch_ = -1;
  std::mt19937_64 rng_;
  size_t rank_ = 0, world_ = 1;
};

/// Optimizer steps per epoch: ceil(ceil(examples / (batch × world_size)) / accumulation), as Hugging Face's
/// Trainer counts them.
int64_t steps_per_epoch(int64_t examples, int64_t batch_size, int64_t gradient_accumulation_steps,
                        int64_t world_size = 1);

using Metrics = std::map<std::string, double>;

struct TrainerOptions {
  /// Names the run's state inside checkpoints and the program in messages ("glue").
  std::string program = "train";
  /// Where log.jsonl, checkpoint/, best/ and the outputs go.
  std::string output_dir;
  torch::Device device = torch::kCPU;
  uint64_t seed = 42;

  int64_t train_batch_size = 32;            ///< examples per micro-batch
  int64_t gradient_accumulation_steps = 1;  ///< micro-batches per optimizer step
  int64_t total_steps = 0;                  ///< optimizer steps
  int64_t steps_per_epoch = 1;              ///< for the epoch column of the log
  double learning_rate = 1e-3;
  int64_t warmup_steps = 0;
  double weight_decay = 0.0;
  double max_grad_norm = 1.0;  ///< 0: no clipping
  double adam_beta1 = 0.9, adam_beta2 = 0.999, adam_epsilon = 1e-8;

  /// IncreLoRA: unset trains without an allocator (a model without adapters: the head alone).
  std::optional<RankAllocatorOptions> allocator;
  double reg_orth_coef = 0.1;
  bool multi_lr = true;  ///< the original's Multi_LambdaLR (RestartWarmup) for triplets that start late

  int64_t logging_steps = 100;
  bool do_eval = true;
  int64_t eval_steps = 1000;
  /// The metric that picks the best evaluation (a key of the task's Metrics), and its direction.
  std::string main_metric;
  bool greater_is_better = true;
  /// At the end, load the best evaluation's adapter and head (saved to output_dir/best when they improve).
  bool load_best_model_at_end = false;
  int64_t save_steps = 0;  ///< checkpoint to output_dir/checkpoint every N steps (0: never)
  std::string resume_from_checkpoint;
  int64_t stop_after_step = 0;  ///< end after this step as a killed run would (tests of resuming)

  Precision precision = Precision::kFloat32;
  bool cuda_graphs = false;
  /// Prefixes of the tensors trained in full beside the adapter (the task head); saved in head.safetensors.
  std::vector<std::string> head_prefixes;
  /// Data parallel: the process group of a torchrun launch (distributed::init_process_group), null for one
  /// process. Every rank then trains its share of each global batch; rank 0 broadcasts the trained tensors at
  /// the start and the adapters after each allocation round, the gradients are averaged over the ranks before
  /// clipping (distributed::GradientReducer, outside any CUDA graph), the allocator's scores are averaged
  /// (distributed::reduce_scores), the logged losses too; rank 0 alone evaluates and writes the log,
  /// checkpoints, best/ and the outputs.
  distributed::ProcessGroupPtr process_group;
  /// The run's settings, kept in checkpoints: a resumed run must have the same ones, except `run_control_flags`.
  nlohmann::json run_args = nlohmann::json::object();
  std::set<std::string> run_control_flags;
};

/// What a task gives the trainer.
struct TrainingTask {
  int64_t num_examples = 0;
  /// The tensors of one micro-batch of these examples, on the trainer's device.
  std::function<std::vector<torch::Tensor>(const std::vector<size_t>& examples)> collate;
  /// The task loss (a scalar) of one micro-batch's tensors: the forward pass, under the trainer's autocast.
  std::function<torch::Tensor(const std::vector<torch::Tensor>& inputs)> loss;
  /// The dev metrics of the model as it is (called in eval mode, without gradients, under autocast).
  std::function<Metrics()> evaluate;
};

struct TrainResult {
  nlohmann::json evaluations = nlohmann::json::array();  ///< every "eval" log entry
  nlohmann::json best;   ///< the best evaluation (null: none)
  nlohmann::json final;  ///< the last evaluation (after --load_best_model_at_end: of the model kept)
  int64_t steps = 0;     ///< optimizer steps run in all (resumed ones included)
  double train_seconds = 0;
  bool stopped_early = false;  ///< stop_after_step ended the run: no outputs are final
};

/// One evaluation of `model` as `Trainer` runs it: eval mode, no gradients, autocast for `precision`; the
/// model's training mode is restored after.
Metrics evaluate_model(torch::nn::Module& model, TrainingTask& task, const torch::Device& device, Precision precision);

/// The file beside an adapter folder's files that holds the tensors trained in full (the head).
inline constexpr const char* kTrainedHeadFile = "head.safetensors";
/// Saves the tensors of `model` under `prefixes` into dir/head.safetensors (dir created).
void save_trained_head(const torch::nn::Module& model, const std::vector<std::string>& prefixes, const std::string& dir);
/// Loads dir/head.safetensors into `model`; throws when it is missing or lacks a tensor under `prefixes`.
void load_trained_head(torch::nn::Module& model, const std::vector<std::string>& prefixes, const std::string& dir);

class Trainer {
 public:
  /// Marks what trains (adapter tensors and the head), builds the optimizer, the allocator and the restart
  /// warmup; the model must be on options.device.
  Trainer(torch::nn::Module& model, TrainerOptions options);
  ~Trainer();
  Trainer(const Trainer&) = delete;
  Trainer& operator=(const Trainer&) = delete;

  /// Trains (from the checkpoint, when resuming) to total_steps, evaluating and saving on the way; writes
  /// log.jsonl. Log lines go to stdout (`print` false: silent).
  TrainResult train(TrainingTask& task, bool print = true);
  /// One evaluation of the model as it is, as train() runs it.
  Metrics evaluate(TrainingTask& task);
  /// The outputs of a finished run in output_dir: adapter/ (adapter and head), rank_pattern.{json,csv},
  /// rank_heatmap.svg, training_curves.svg and metrics.json (`extra` fields added).
  void write_outputs(const TrainResult& result, const std::string& title, const nlohmann::json& extra) const;

  RankAllocator* allocator() const { return allocator_.get(); }
  FusedAdamW& optimizer() { return *optimizer_; }
  int64_t trainable_parameters() const { return trainable_; }
  int64_t total_parameters() const { return total_; }
  const TrainerOptions& options() const { return options_; }
  /// This process's rank and the number of ranks (0 and 1 without a process group).
  int64_t rank() const { return rank_; }
  int64_t world_size() const { return world_size_; }
  /// Whether this process writes the run's files (rank 0).
  bool writes_outputs() const { return rank_ == 0; }

 private:
  struct StepState;
  double lr_at(int64_t step) const;
  void save(int64_t step, const StepState& state);

  torch::nn::Module& model_;
  TrainerOptions options_;
  std::vector<torch::Tensor> trained_;
  std::unique_ptr<FusedAdamW> optimizer_;
  std::unique_ptr<RankAllocator> allocator_;
  std::unique_ptr<RestartWarmup> restart_;
  std::unique_ptr<distributed::GradientReducer> reducer_;
  int64_t trainable_ = 0, total_ = 0;
  int64_t rank_ = 0, world_size_ = 1;
};

}  // namespace increlora::apps
