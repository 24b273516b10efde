#include <increlora/apps/training_flags.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace increlora::apps {
namespace {

void need(bool ok, const std::string& message) {
  if (!ok) throw std::invalid_argument(message);
}

}  // namespace

void TrainingFlags::add_to(Flags& f, const std::string& adapted, const std::string& modules) {
  f.add("target_rank", &target_rank, "average rank per adapted layer at the end of the schedule");
  f.add("target_total_rank", &target_total_rank, "total rank budget; 0 uses target_rank x layers");
  f.add("lora_r", &lora_r, "initial rank of every adapted layer");
  f.add("reg_orth_coef", &reg_orth_coef, "weight of the orthogonality regularizer (0: off)");
  f.add("init_warmup", &init_warmup, "steps before the first rank allocation");
  f.add("incre_interval", &incre_interval, "steps between two allocations");
  f.add("top_h", &top_h, "layers that grow at each allocation");
  f.add("incre_rank_num", &incre_rank_num, "rank each chosen layer gains; 0 derives it from the target rank");
  f.add("beta1", &beta1, "EMA coefficient of the sensitivity");
  f.add("beta2", &beta2, "EMA coefficient of the uncertainty");
  f.add("lora_module", &lora_module, "comma-separated layers to adapt: " + modules +
        ", qualified names, dotted suffixes or re:<regex>");
  f.add("lora_alpha", &lora_alpha, "adapter scale numerator (scale = lora_alpha / rank)");
  f.add("lora_dropout", &lora_dropout, "dropout on the adapter branch's input");
  f.add("advance_learn", &advance_learn, "train reserve triplets ahead of their activation (the original's default)");
  f.add("multi_lr", &multi_lr, "give newly activated triplets their own warmup and decay, as the original's "
        "Multi_LambdaLR (the original's default)");
  f.add("apply_lora", &apply_lora, "add adapters; False trains " + adapted + " (a control)");
  f.add("lora_capacity", &lora_capacity, "triplets each adapted layer can hold; 0 sizes it from the target");
  f.add("exact_scoring", &exact_scoring, "score importance at every step, as the original does (slower)");
  f.add("random_allocation", &random_allocation, "ablation: grow top_h layers chosen at random (seeded by --seed) "
        "instead of the most important ones");

  f.add("per_device_train_batch_size", &per_device_train_batch_size, "training micro-batch size");
  f.add("per_device_eval_batch_size", &per_device_eval_batch_size, "evaluation batch size");
  f.add("gradient_accumulation_steps", &gradient_accumulation_steps, "micro-batches summed per optimizer step "
        "(gradients and importance scores: the same as one batch that many times larger)");
  f.add("learning_rate", &learning_rate, "peak learning rate of AdamW");
  f.add("num_train_epochs", &num_train_epochs, "epochs of training (ignored when max_steps > 0)");
  f.add("max_steps", &max_steps, "optimizer steps; > 0 overrides num_train_epochs");
  f.add("warmup_steps", &warmup_steps, "linear learning-rate warmup steps (then linear decay to 0)");
  f.add("weight_decay", &weight_decay, "AdamW weight decay (not applied to biases and LayerNorm)");
  f.add("max_grad_norm", &max_grad_norm, "gradient clipping norm (0: off)");

  f.add("eval_steps", &eval_steps, "evaluate every this many steps (and at the end)");
  f.add("logging_steps", &logging_steps, "write a training log line every this many steps");
  f.add("save_steps", &save_steps, "write a training checkpoint to OUTPUT/checkpoint every N steps (0: never); a "
        "killed run leaves the last complete one");
  f.add("seed", &seed, "random seed (initialization, dropout, data order)");
  f.add("do_train", &do_train, "train (False: evaluate the model of --adapter_dir, or the pretrained one)");
  f.add("do_eval", &do_eval, "evaluate every --eval_steps and at the end");
  f.add("load_best_model_at_end", &load_best_model_at_end, "end with the adapter and head of the best evaluation "
        "(by the task's main metric), not the last");
  f.add("bf16", &bf16, "train and evaluate under bfloat16 autocast (CUDA, or a CPU with bf16 support)");
  f.add("fp16", &fp16, "train and evaluate under float16 autocast with dynamic loss scaling (CUDA)");
  f.add("cuda_graphs", &cuda_graphs, "on CUDA, replay forward + backward from CUDA graphs (increlora::GraphedStep; "
        "training batches are then padded to the maximum length so that one shape is captured)");
  f.add("resume_from_checkpoint", &resume_from_checkpoint, "continue the run saved in this checkpoint folder (the "
        "same flags otherwise; exact on CPU)");
  f.add("device", &device, "cpu, cuda, cuda:N, or auto (cuda when available)");
  f.add("stop_after_step", &stop_after_step, "end after this many steps without writing outputs, as a killed run "
        "would (for tests of resuming)");
  f.add("adapter_dir", &adapter_dir, "with --do_train False: the adapter/ folder a run wrote (adapter and trained "
        "head) to evaluate");
}

void ignore_seed_trainer_flags(Flags& f) {
  f.ignore("lora_type", true, "always svd");
  f.ignore("evaluation_strategy", true, "always steps (--eval_steps)");
  f.ignore("save_strategy", true, "checkpoints follow --save_steps");
  f.ignore("tb_writter_loginterval", true, "see log.jsonl");
  f.ignore("report_to", true, "see log.jsonl");
  f.ignore("experiment_name", true, "outputs go to --root_output_dir");
  for (const char* b : {"apply_increlora", "overwrite_output_dir"}) f.ignore(b, false, "always on");
}

void TrainingFlags::validate() const {
  need(per_device_train_batch_size >= 1, "--per_device_train_batch_size must be >= 1");
  need(per_device_eval_batch_size >= 1, "--per_device_eval_batch_size must be >= 1");
  need(gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be >= 1");
  need(learning_rate > 0 && std::isfinite(learning_rate), "--learning_rate must be a finite number > 0");
  need(num_train_epochs > 0 || max_steps > 0, "--num_train_epochs must be > 0 (or give --max_steps)");
  need(max_steps >= 0, "--max_steps must be >= 0 (0: use --num_train_epochs)");
  need(eval_steps >= 1, "--eval_steps must be >= 1");
  need(logging_steps >= 1, "--logging_steps must be >= 1");
  need(warmup_steps >= 0, "--warmup_steps must be >= 0");
  need(weight_decay >= 0, "--weight_decay must be >= 0");
  need(max_grad_norm >= 0, "--max_grad_norm must be >= 0 (0: no clipping)");
  need(lora_r >= 1, "--lora_r must be >= 1");
  need(lora_capacity >= 0, "--lora_capacity must be >= 0 (0: sized from the target)");
  need(save_steps >= 0, "--save_steps must be >= 0 (0: no checkpoints)");
  need(stop_after_step >= 0, "--stop_after_step must be >= 0");
  need(adapter_dir.empty() || !do_train, "--adapter_dir is for evaluating a saved run (--do_train False); to "
       "continue training use --resume_from_checkpoint");
  need(do_train || resume_from_checkpoint.empty(), "--resume_from_checkpoint needs --do_train True");
  precision_from_flags(bf16, fp16);  // throws when both
}

int64_t TrainingFlags::total_steps(int64_t steps_per_epoch) const {
  if (max_steps > 0) return max_steps;
  return static_cast<int64_t>(std::ceil(num_train_epochs * static_cast<double>(steps_per_epoch)));
}

RankAllocatorOptions TrainingFlags::allocator_options(int64_t total_steps) const {
  return RankAllocatorOptions()
      .lora_r(lora_r)
      .target_rank(target_rank)
      .target_total_rank(target_total_rank)
      .init_warmup(init_warmup)
      .incre_interval(incre_interval)
      .top_h(top_h)
      .incre_rank_num(incre_rank_num)
      .beta1(beta1)
      .beta2(beta2)
      .total_step(total_steps)
      .advance_learn(advance_learn)
      .exact_scoring(exact_scoring)
      .random_allocation(random_allocation)
      .random_seed(static_cast<uint64_t>(seed))
      .gradient_accumulation_steps(gradient_accumulation_steps);
}

TrainerOptions TrainingFlags::trainer_options(const std::string& program, const std::string& output_dir,
                                              const torch::Device& device_, int64_t total_steps,
                                              int64_t steps_per_epoch) const {
  TrainerOptions to;
  to.program = program;
  to.output_dir = output_dir;
  to.device = device_;
  to.seed = static_cast<uint64_t>(seed);
  to.train_batch_size = per_device_train_batch_size;
  to.gradient_accumulation_steps = gradient_accumulation_steps;
  to.total_steps = total_steps;
  to.steps_per_epoch = steps_per_epoch;
  to.learning_rate = learning_rate;
  to.warmup_steps = warmup_steps;
  to.weight_decay = weight_decay;
  to.max_grad_norm = max_grad_norm;
  if (apply_lora && do_train) to.allocator = allocator_options(total_steps);
  to.reg_orth_coef = reg_orth_coef;
  to.multi_lr = multi_lr;
  to.logging_steps = logging_steps;
  to.do_eval = do_eval;
  to.eval_steps = eval_steps;
  to.load_best_model_at_end = load_best_model_at_end;
  to.save_steps = save_steps;
  to.resume_from_checkpoint = resume_from_checkpoint;
  to.stop_after_step = stop_after_step;
  to.precision = precision_from_flags(bf16, fp16);
  to.cuda_graphs = cuda_graphs;
  return to;
}

int64_t interval_for_epoch(int64_t init_warmup, int64_t rounds, int64_t incre_epoch, int64_t steps_per_epoch) {
  need(incre_epoch >= 1, "--incre_epoch must be >= 1 (the epoch by whose end the budget is met)");
  need(init_warmup >= 0, "--init_warmup must be >= 0");
  if (rounds <= 0) return 1;
  const int64_t end = incre_epoch * steps_per_epoch;
  // Round k (1-based) falls at (init_warmup / I + 1) · I + (k − 1) · I >= k · I; the largest I whose last round
  // is <= end, searched from end / rounds down (the last round's step is not monotone in I: it jumps where
  // init_warmup / I does).
  for (int64_t interval = std::max<int64_t>(1, end / rounds); interval >= 1; --interval) {
    const int64_t last = (init_warmup / interval + 1 + rounds - 1) * interval;
    if (last <= end) return interval;
  }
  throw std::invalid_argument("--schedule_strategy epoch: " + std::to_string(rounds) + " allocation rounds after "
                              "--init_warmup " + std::to_string(init_warmup) + " do not fit before the end of epoch " +
                              std::to_string(incre_epoch) + " (" + std::to_string(end) + " steps); lower "
                              "--init_warmup, raise --top_h or --incre_epoch");
}

}  // namespace increlora::apps
