#include <increlora/apps/curves.hpp>
#include <increlora/apps/output.hpp>
#include <increlora/apps/progress.hpp>
#include <increlora/apps/trainer.hpp>

#include <increlora/checkpoint.hpp>
#include <increlora/graphed_step.hpp>
#include <increlora/modules.hpp>
#include <increlora/regularization.hpp>
#include <increlora/report.hpp>
#include <increlora/safetensors.hpp>
#include <increlora/serialize.hpp>

#include <ATen/autocast_mode.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numeric>
#include <sstream>
#include <stdexcept>

namespace increlora::apps {

namespace fs = std::filesystem;
using nlohmann::json;

// ---- precision -----------------------------------------------------------------------------------------------

Precision precision_from_flags(bool bf16, bool fp16) {
  if (bf16 && fp16) throw std::invalid_argument("--bf16 and --fp16 exclude each other; give one of them");
  return bf16 ? Precision::kBFloat16 : fp16 ? Precision::kFloat16 : Precision::kFloat32;
}

std::string to_string(Precision p) {
  return p == Precision::kBFloat16 ? "bf16" : p == Precision::kFloat16 ? "fp16" : "fp32";
}

AutocastGuard::AutocastGuard(const torch::Device& device, Precision precision) {
  if (precision == Precision::kFloat32) return;
  active_ = true;
  type_ = device.type();
  was_enabled_ = at::autocast::is_autocast_enabled(type_);
  was_dtype_ = at::autocast::get_autocast_dtype(type_);
  was_cache_enabled_ = at::autocast::is_autocast_cache_enabled();
  at::autocast::set_autocast_enabled(type_, true);
  at::autocast::set_autocast_dtype(type_, precision == Precision::kBFloat16 ? torch::kBFloat16 : torch::kHalf);
  // The cache keeps casts of the weights across ops of one region; a CUDA-graph capture cannot keep it.
  at::autocast::set_autocast_cache_enabled(false);
  at::autocast::increment_nesting();
}

AutocastGuard::~AutocastGuard() {
  if (!active_) return;
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(type_, was_enabled_);
  at::autocast::set_autocast_dtype(type_, was_dtype_);
  at::autocast::set_autocast_cache_enabled(was_cache_enabled_);
}

// ---- data order ----------------------------------------------------------------------------------------------

EpochSampler::EpochSampler(size_t size, uint64_t seed, int64_t rank, int64_t world_size)
    : order_(size), cursor_(size), rng_(seed), rank_(static_cast<size_t>(rank)),
      world_(static_cast<size_t>(world_size)) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    throw std::invalid_argument(fmt::format("rank {} of world size {}: the rank must be in 0..world size - 1", rank,
                                            world_size));
  }
  std::iota(order_.begin(), order_.end(), size_t{0});
}

std::vector<size_t> EpochSampler::next(size_t batch_size) {
  if (order_.empty()) throw std::invalid_argument("no training examples");
  if (cursor_ >= order_.size()) {  // a new epoch (the last batch of an epoch may be short, as in run_glue)
    std::shuffle(order_.begin(), order_.end(), rng_);
    cursor_ = 0;
    ++epoch_;
  }
  const size_t end = std::min(order_.size(), cursor_ + batch_size * world_);
  // The global batch, filled up to a multiple of the world size from the epoch's start (wrapping as often as
  // a tiny dataset needs), then this rank's strided share of it.
  const size_t global = (end - cursor_ + world_ - 1) / world_ * world_;
  std::vector<size_t> batch;
  batch.reserve(global / world_);
  for (size_t k = rank_; k < global; k += world_) {
    const size_t at = cursor_ + k;
    batch.push_back(at < end ? order_[at] : order_[(at - end) % order_.size()]);
  }
  cursor_ = end;
  return batch;
}

json EpochSampler::state() const {
  std::ostringstream rng;
  rng << rng_;
  return {{"order", order_}, {"cursor", cursor_}, {"epoch", epoch_}, {"rng", rng.str()}};
}

void EpochSampler::load_state(const json& state) {
  auto order = state.at("order").get<std::vector<size_t>>();
  if (order.size() != order_.size()) {
    throw std::invalid_argument(fmt::format("the checkpoint's data order covers {} examples but this run has {}; "
                                            "resume on the same data", order.size(), order_.size()));
  }
  order_ = std::move(order);
  cursor_ = state.at("cursor").get<size_t>();
  epoch_ = state.at("epoch").get<int64_t>();
  std::istringstream(state.at("rng").get<std::string>()) >> rng_;
}

int64_t steps_per_epoch(int64_t examples, int64_t batch_size, int64_t accumulation, int64_t world_size) {
  const int64_t global = batch_size * std::max<int64_t>(1, world_size);
  const int64_t batches = (examples + global - 1) / global;
  return std::max<int64_t>(1, (batches + accumulation - 1) / accumulation);
}

// ---- the head ------------------------------------------------------------------------------------------------

namespace {

bool under(const std::string& name, const std::vector<std::string>& prefixes) {
  return std::any_of(prefixes.begin(), prefixes.end(), [&](const std::string& p) { return name.rfind(p, 0) == 0; });
}

std::string metrics_text(const Metrics& m) {
  std::string s;
  for (const auto& [k, v] : m) s += fmt::format("{}{} {:.4f}", s.empty() ? "" : ", ", k, v);
  return s;
}

json metrics_json(const Metrics& m) {
  json j = json::object();
  for (const auto& [k, v] : m) j["eval_" + k] = std::isfinite(v) ? json(v) : json(nullptr);
  return j;
}

int64_t model_total_rank(const torch::nn::Module& model) {
  int64_t rank = 0;
  for (const auto& [name, layer] : named_svd_linears(model)) rank += layer->rank();
  return rank;
}

}  // namespace

void save_trained_head(const torch::nn::Module& model, const std::vector<std::string>& prefixes,
                       const std::string& dir) {
  std::vector<std::pair<std::string, torch::Tensor>> head;
  for (const auto& p : model.named_parameters()) {
    if (under(p.key(), prefixes)) head.emplace_back(p.key(), p.value().detach());
  }
  fs::create_directories(dir);
  save_safetensors((fs::path(dir) / kTrainedHeadFile).string(), head, {{"format", "pt"}});
}

void load_trained_head(torch::nn::Module& model, const std::vector<std::string>& prefixes, const std::string& dir) {
  const auto path = (fs::path(dir) / kTrainedHeadFile).string();
  if (!fs::exists(path)) {
    throw std::invalid_argument(dir + " has no " + kTrainedHeadFile + "; pass the adapter/ folder a run wrote");
  }
  const SafetensorsFile file(path);
  const auto report = load_state_into(model, file, nullptr, /*strict=*/false);
  if (!report.unexpected.empty()) {
    throw std::invalid_argument(fmt::format("{}: holds {}, which this model lacks; use the task and model it was "
                                            "trained with", path, report.unexpected.front()));
  }
  for (const auto& name : report.missing) {
    if (under(name, prefixes)) throw std::invalid_argument(path + ": lacks the head tensor " + name);
  }
}

// ---- the trainer ---------------------------------------------------------------------------------------------

/// What the loop carries from step to step, and what a checkpoint keeps of it.
struct Trainer::StepState {
  explicit StepState(EpochSampler s) : sampler(std::move(s)) {}
  EpochSampler sampler;
  json evaluations = json::array();
  json best;
  double best_main = 0;
  torch::Tensor loss_sum, reg_sum;
  int64_t loss_count = 0;
  double seconds_before = 0;
  std::chrono::steady_clock::time_point start = std::chrono::steady_clock::now();
  torch::Tensor loss_scale, growth_tracker;  // fp16 only, on the device
};

Trainer::Trainer(torch::nn::Module& model, TrainerOptions options) : model_(model), options_(std::move(options)) {
  const auto& o = options_;
  if (o.total_steps < 1) throw std::invalid_argument("the run has no optimizer steps; raise the epochs or max_steps");
  if (o.gradient_accumulation_steps < 1) throw std::invalid_argument("--gradient_accumulation_steps must be >= 1");
  if (o.precision == Precision::kFloat16 && !o.device.is_cuda()) {
    throw std::invalid_argument("--fp16 needs a CUDA device (loss scaling); on a CPU use --bf16");
  }
  mark_only_lora_as_trainable(model_);
  for (auto& p : model_.named_parameters()) {
    if (under(p.key(), o.head_prefixes)) p.value().set_requires_grad(true);
  }
  // AdamW without decay on biases and LayerNorm weights, as the Hugging Face Trainer.
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& p : model_.named_parameters()) {
    total_ += p.value().numel();
    if (!p.value().requires_grad()) continue;
    trainable_ += p.value().numel();
    trained_.push_back(p.value());
    const bool nd = p.key().find("bias") != std::string::npos || p.key().find("LayerNorm") != std::string::npos ||
                    p.key().find("layer_norm") != std::string::npos;
    (nd ? no_decay : decay).push_back(p.value());
  }
  if (trained_.empty()) throw std::invalid_argument("nothing to train: the model has no adapter and no head");
  if (o.process_group) {
    rank_ = o.process_group->getRank();
    world_size_ = o.process_group->getSize();
    // Replicas built apart (a randomly initialised head, adapters drawn from each process's generator) start
    // as rank 0's; from then on averaged gradients keep them equal.
    distributed::broadcast_parameters(o.process_group, trained_);
    reducer_ = std::make_unique<distributed::GradientReducer>(o.process_group, trained_);
  }
  const auto adamw = [&](double decay_rate) {
    return std::make_unique<torch::optim::AdamWOptions>(torch::optim::AdamWOptions(o.learning_rate)
                                                            .weight_decay(decay_rate)
                                                            .betas({o.adam_beta1, o.adam_beta2})
                                                            .eps(o.adam_epsilon));
  };
  std::vector<torch::optim::OptimizerParamGroup> groups;
  if (!decay.empty()) groups.emplace_back(decay, adamw(o.weight_decay));
  if (!no_decay.empty()) groups.emplace_back(no_decay, adamw(0.0));
  optimizer_ = std::make_unique<FusedAdamW>(std::move(groups));

  if (o.allocator) {
    auto options = *o.allocator;
    options.total_step(o.total_steps).gradient_accumulation_steps(o.gradient_accumulation_steps);
    if (o.process_group && !options.reduce_scores()) options.reduce_scores(distributed::reduce_scores(o.process_group));
    try {
      allocator_ = std::make_unique<RankAllocator>(model_, options);
    } catch (const c10::Error& e) {
      throw std::invalid_argument(fmt::format("{}\n(total_step = {} optimizer steps: --max_steps, or the epochs "
                                              "times the steps per epoch; the allocation flags are --init_warmup, "
                                              "--incre_interval, --top_h, --incre_rank_num, --target_rank)",
                                              e.what_without_backtrace(), o.total_steps));
    }
    if (o.multi_lr) {
      // The original's per-group schedule, relative to lr_at's linear warmup and decay (the same W and T).
      if (o.total_steps <= o.warmup_steps) {
        throw std::invalid_argument(fmt::format("--multi_lr needs more steps ({}) than --warmup_steps ({}); lower "
                                                "--warmup_steps or pass --multi_lr False", o.total_steps,
                                                o.warmup_steps));
      }
      restart_ = std::make_unique<RestartWarmup>(model_, RestartWarmupOptions(o.warmup_steps, o.total_steps));
    }
  }
}

Trainer::~Trainer() = default;

double Trainer::lr_at(int64_t step) const {
  const auto& o = options_;
  if (step < o.warmup_steps) {
    return o.learning_rate * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, o.warmup_steps));
  }
  return o.learning_rate * std::max(0.0, static_cast<double>(o.total_steps - step) /
                                             static_cast<double>(std::max<int64_t>(1, o.total_steps - o.warmup_steps)));
}

Metrics evaluate_model(torch::nn::Module& model, TrainingTask& task, const torch::Device& device, Precision precision) {
  if (!task.evaluate) return {};
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  Metrics m;
  {
    AutocastGuard autocast(device, precision);
    m = task.evaluate();
  }
  if (was_training) model.train();
  return m;
}

Metrics Trainer::evaluate(TrainingTask& task) {
  return evaluate_model(model_, task, options_.device, options_.precision);
}

void Trainer::save(int64_t step, const StepState& s) {
  if (!writes_outputs()) return;
  json args = json::object();
  for (const auto& [name, value] : options_.run_args.items()) {
    if (!options_.run_control_flags.count(name)) args[name] = value;
  }
  json state = {{"args", args},
                {"sampler", s.sampler.state()},
                {"evaluations", s.evaluations},
                {"best", s.best},
                {"best_main", s.best.is_null() ? json(nullptr) : json(s.best_main)},
                {"loss_sum", s.loss_sum.defined() ? json(s.loss_sum.item<double>()) : json(nullptr)},
                {"reg_sum", s.reg_sum.defined() ? json(s.reg_sum.item<double>()) : json(nullptr)},
                {"loss_count", s.loss_count},
                {"train_seconds", s.seconds_before + seconds_since(s.start)}};
  if (s.loss_scale.defined()) {
    state["loss_scale"] = s.loss_scale.item<double>();
    state["growth_tracker"] = s.growth_tracker.item<int64_t>();
  }
  save_checkpoint((fs::path(options_.output_dir) / "checkpoint").string(), model_, allocator_.get(), *optimizer_,
                  step, json{{options_.program, state}}.dump());
}

TrainResult Trainer::train(TrainingTask& task, bool print) {
  const auto& o = options_;
  const bool writer = writes_outputs();
  if (writer) fs::create_directories(o.output_dir);
  const fs::path out(o.output_dir);
  const bool resuming = !o.resume_from_checkpoint.empty();
  JsonLog log(writer ? (out / "log.jsonl").string() : std::string(), /*append=*/resuming);
  const auto say = [&](const std::string& line) {
    if (print && writer) fmt::print("{}\n", line), std::fflush(stdout);
  };
  const double orth_coef = allocator_ ? o.reg_orth_coef : 0.0;  // the regularizer needs adapters
  const auto total_rank = [&] { return allocator_ ? allocator_->total_rank() : model_total_rank(model_); };
  const auto budget = [&] { return allocator_ ? allocator_->budget() : int64_t{0}; };
  const int64_t accumulation = o.gradient_accumulation_steps;
  const bool fp16 = o.precision == Precision::kFloat16;
  const auto on_device = [&](double v) {
    return torch::tensor(v, torch::TensorOptions().dtype(torch::kFloat).device(o.device));
  };

  StepState s(EpochSampler(static_cast<size_t>(task.num_examples), o.seed, rank_, world_size_));
  s.best_main = o.greater_is_better ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::infinity();
  if (fp16) {
    s.loss_scale = on_device(65536.0);
    s.growth_tracker = torch::zeros({}, torch::TensorOptions().dtype(torch::kInt).device(o.device));
  }

  // Forward, loss and backward of one optimizer step over its micro-batches: captured once per rank state
  // and replayed with --cuda_graphs on a GPU, run as written otherwise. The regularizer's gradient is added
  // once per step (equal to adding penalty / micro-batches to each of them), outside autocast.
  const int64_t micro = accumulation;
  GraphedStep forward_backward(
      model_,
      [&](const std::vector<torch::Tensor>& in) {
        const size_t per = in.size() / static_cast<size_t>(micro);
        torch::Tensor loss_total;
        for (int64_t k = 0; k < micro; ++k) {
          const std::vector<torch::Tensor> part(in.begin() + static_cast<std::ptrdiff_t>(k * per),
                                                in.begin() + static_cast<std::ptrdiff_t>((k + 1) * per));
          torch::Tensor loss;
          {
            AutocastGuard autocast(o.device, o.precision);
            loss = task.loss(part);
          }
          loss = loss.to(torch::kFloat);
          auto scaled = micro > 1 ? loss / static_cast<double>(micro) : loss;
          if (fp16) scaled = scaled * s.loss_scale;
          scaled.backward();
          loss_total = loss_total.defined() ? loss_total + loss.detach() : loss.detach();
        }
        auto reg = orth_coef > 0 ? compute_orth_regu(model_, orth_coef) : torch::zeros({}, loss_total.options());
        if (orth_coef > 0) (fp16 ? reg * s.loss_scale : reg).backward();
        return torch::stack({micro > 1 ? loss_total / static_cast<double>(micro) : loss_total, reg.detach()});
      },
      GraphedStepOptions().enabled(o.cuda_graphs));

  int64_t first_step = 0;
  if (resuming) {
    std::string user;
    const int64_t saved = load_checkpoint(o.resume_from_checkpoint, model_, allocator_.get(), *optimizer_,
                                          /*restore_rng=*/true, &user);
    auto all = json::parse(user);
    if (!all.contains(o.program)) {
      throw std::invalid_argument("--resume_from_checkpoint " + o.resume_from_checkpoint + ": not a checkpoint of "
                                  "the " + o.program + " program (no \"" + o.program + "\" state)");
    }
    const auto& st = all.at(o.program);
    for (const auto& [name, value] : st.at("args").items()) {
      if (o.run_control_flags.count(name)) continue;
      if (!o.run_args.contains(name) || o.run_args.at(name) != value) {
        throw std::invalid_argument(fmt::format("--resume_from_checkpoint: the checkpoint was trained with --{} {} "
                                                "but this run has {}; resume with the same flags", name, value.dump(),
                                                o.run_args.contains(name) ? o.run_args.at(name).dump() : "none"));
      }
    }
    first_step = saved + 1;
    s.sampler.load_state(st.at("sampler"));
    s.evaluations = st.at("evaluations");
    s.best = st.at("best");
    if (!s.best.is_null()) s.best_main = st.at("best_main").get<double>();
    s.seconds_before = st.at("train_seconds").get<double>();
    s.loss_count = st.at("loss_count").get<int64_t>();
    if (!st.at("loss_sum").is_null()) s.loss_sum = on_device(st.at("loss_sum").get<double>());
    if (!st.at("reg_sum").is_null()) s.reg_sum = on_device(st.at("reg_sum").get<double>());
    if (fp16 && st.contains("loss_scale")) {
      s.loss_scale.fill_(st.at("loss_scale").get<double>());
      s.growth_tracker.fill_(st.at("growth_tracker").get<int64_t>());
    }
    say(fmt::format("{}: resumed from {} at step {}", o.program, o.resume_from_checkpoint, first_step));
  }
  s.start = std::chrono::steady_clock::now();

  const std::string main_key = o.main_metric;
  const auto better = [&](double v) { return o.greater_is_better ? v > s.best_main : v < s.best_main; };
  Progress progress(o.program + " train", o.total_steps, "it");
  const auto run_eval = [&](int64_t step) {
    const auto t0 = std::chrono::steady_clock::now();
    progress.clear();
    const auto metrics = evaluate(task);
    json entry = {{"event", "eval"}, {"step", step}, {"epoch", static_cast<double>(step) / o.steps_per_epoch}};
    entry.update(metrics_json(metrics));
    entry["eval_seconds"] = seconds_since(t0);
    entry["total_rank"] = total_rank();
    log.write(entry);
    s.evaluations.push_back(entry);
    const double main = metrics.count(main_key) ? metrics.at(main_key) : metrics.empty() ? 0.0 : metrics.begin()->second;
    if (s.best.is_null() || better(main)) {
      s.best = entry, s.best_main = main;
      if (o.load_best_model_at_end) {
        const auto best_dir = (out / "best").string();
        if (!named_svd_linears(model_).empty()) save_adapter(model_, best_dir);
        save_trained_head(model_, o.head_prefixes, best_dir);
      }
    }
    say(fmt::format("eval  step {:>6}: {}", step, metrics_text(metrics)));
  };

  std::vector<torch::Tensor> grads;
  torch::Tensor found_inf;
  if (fp16) found_inf = torch::zeros({}, torch::TensorOptions().dtype(torch::kFloat).device(o.device));
  TrainResult result;
  for (int64_t step = first_step; step < o.total_steps; ++step) {
    std::vector<torch::Tensor> inputs;
    for (int64_t k = 0; k < accumulation; ++k) {
      auto batch = task.collate(s.sampler.next(static_cast<size_t>(o.train_batch_size)));
      inputs.insert(inputs.end(), batch.begin(), batch.end());
    }
    const double lr = lr_at(step);
    for (auto& g : optimizer_->param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);

    // [task loss, orthogonality penalty] of this step; forward_backward zeroes the gradients first.
    const auto losses = forward_backward(inputs);
    const auto loss = losses[0];
    const auto reg = orth_coef > 0 ? losses[1] : torch::Tensor();
    // Averaged over the ranks before anything reads them (fp16's overflow check included, so that every rank
    // takes the same decision); outside the graph, so a capture holds no collective.
    if (reducer_) reducer_->reduce();

    bool skip_update = false;
    if (fp16) {
      // Unscale the gradients (and the scores of a scored step), and skip the update when any is not finite.
      grads.clear();
      for (const auto& p : trained_) {
        if (p.grad().defined()) grads.push_back(p.grad());
      }
      found_inf.zero_();
      at::_amp_foreach_non_finite_check_and_unscale_(grads, found_inf, s.loss_scale.reciprocal());
      if (allocator_ && allocator_->is_scoring_step(step)) allocator_->set_gradient_scale(s.loss_scale.item<double>());
    }
    const auto events = allocator_ ? allocator_->update_and_increase(model_, step, *optimizer_)
                                   : std::vector<AllocationEvent>{};
    if (!events.empty() && o.process_group) {
      // The new triplets were drawn from each process's generator, whose streams may differ (dropout over
      // batches of other shapes): rank 0's go to all before the optimizer steps.
      std::vector<torch::Tensor> adapters;
      for (const auto& [name, layer] : named_svd_linears(model_)) {
        for (const auto* bank : {&layer->lora_A, &layer->lora_E, &layer->lora_B}) adapters.push_back(*bank);
      }
      distributed::broadcast_parameters(o.process_group, adapters);
    }
    if (o.max_grad_norm > 0) torch::nn::utils::clip_grad_norm_(trained_, o.max_grad_norm);
    if (fp16) {
      skip_update = found_inf.item<float>() > 0;
      at::_amp_update_scale_(s.loss_scale, s.growth_tracker, found_inf, 2.0, 0.5, 2000);
    }
    if (!skip_update) {
      if (restart_) {
        restart_->step(*optimizer_, step);
      } else {
        optimizer_->step();
      }
    }

    // forward_backward returns a detached tensor of its own: the sums can start from it without a copy.
    s.loss_sum = s.loss_sum.defined() ? s.loss_sum + loss : loss;
    if (reg.defined()) s.reg_sum = s.reg_sum.defined() ? s.reg_sum + reg : reg;
    ++s.loss_count;

    if (!events.empty()) {
      int64_t grown = 0;
      for (const auto& e : events) {
        log.write({{"event", "allocation"}, {"step", e.step}, {"round", e.round}, {"module", e.module},
                   {"old_rank", e.old_rank}, {"new_rank", e.new_rank}, {"score", e.score},
                   {"at_capacity", e.at_capacity}, {"skipped_non_finite", e.skipped_non_finite}});
        grown += e.new_rank > e.old_rank;
      }
      progress.clear();
      say(fmt::format("alloc step {:>6}: round {} grew {} layers, total rank {} / {}{}", step, events.front().round,
                      grown, total_rank(), budget(), allocator_->budget_met() ? " (budget met)" : ""));
    }

    const int64_t done = step + 1;
    const double elapsed = seconds_since(s.start);
    if (done % o.logging_steps == 0 || done == o.total_steps) {
      // The mean over the ranks' shares (one small collective at logging steps only).
      if (o.process_group) {
        s.loss_sum = s.loss_sum.clone();  // it may be the captured graph's output buffer
        distributed::all_reduce_mean(o.process_group, s.loss_sum);
      }
      const double mean_loss = s.loss_sum.item<double>() / static_cast<double>(s.loss_count);
      json entry = {{"event", "train"}, {"step", done}, {"epoch", static_cast<double>(done) / o.steps_per_epoch},
                    {"loss", mean_loss}, {"learning_rate", lr}, {"total_rank", total_rank()},
                    {"elapsed_seconds", s.seconds_before + elapsed}};
      if (orth_coef > 0) entry["orth_regu"] = s.reg_sum.item<double>() / static_cast<double>(s.loss_count);
      if (fp16) entry["loss_scale"] = s.loss_scale.item<double>();
      log.write(entry);
      if (!progress.enabled()) {
        say(fmt::format("train step {:>6}/{}: loss {:.4f}, lr {:.3g}, total rank {}, {:.1f} s", done, o.total_steps,
                        mean_loss, lr, total_rank(), s.seconds_before + elapsed));
      }
      s.loss_sum = s.reg_sum = torch::Tensor();
      s.loss_count = 0;
    }
    // The loss is read (a host-device sync) only when the line is redrawn, not at every step.
    if (progress.due()) {
      progress.update(done, fmt::format("epoch {} loss {:.4f} lr {:.3g} rank {}/{}", s.sampler.epoch(),
                                        loss.item<double>(), lr, total_rank(), budget()));
    }
    // Rank 0 evaluates for all (the replicas are equal); the others meet it at the next step's collectives.
    if (writer && o.do_eval && task.evaluate && (done % o.eval_steps == 0 || done == o.total_steps)) run_eval(done);
    if (o.save_steps > 0 && done % o.save_steps == 0 && done < o.total_steps) save(step, s);
    if (o.stop_after_step > 0 && done == o.stop_after_step && done < o.total_steps) {
      progress.finish();
      say(fmt::format("{}: stopped after step {} (--stop_after_step); no outputs written", o.program, done));
      result.stopped_early = true;
      result.steps = done;
      return result;
    }
  }
  progress.finish();
  result.train_seconds = s.seconds_before + seconds_since(s.start);
  result.steps = o.total_steps;
  result.evaluations = s.evaluations;
  result.best = s.best;
  result.final = s.evaluations.empty() ? json(nullptr) : s.evaluations.back();
  if (o.load_best_model_at_end && !s.best.is_null()) {
    // Keep the best evaluation's model: its adapter (ranks included) and head, evaluated again to show it.
    const auto best_dir = (out / "best").string();
    if (!named_svd_linears(model_).empty()) load_adapter(model_, best_dir);
    load_trained_head(model_, o.head_prefixes, best_dir);
    const auto metrics = evaluate(task);
    json entry = {{"event", "eval"}, {"step", s.best.at("step")}, {"loaded_best_model", true}};
    entry.update(metrics_json(metrics));
    entry["total_rank"] = model_total_rank(model_);
    log.write(entry);
    result.final = entry;
    say(fmt::format("eval  best model (step {}): {}", s.best.at("step").get<int64_t>(), metrics_text(metrics)));
  }
  return result;
}

void Trainer::write_outputs(const TrainResult& result, const std::string& title, const json& extra) const {
  const fs::path out(options_.output_dir);
  fs::create_directories(out);
  std::map<std::string, int64_t> pattern;
  for (const auto& [name, layer] : named_svd_linears(model_)) pattern[name] = layer->rank();
  json ranks = json::object();
  for (const auto& [name, r] : pattern) ranks[name] = r;
  write_json((out / "rank_pattern.json").string(), ranks);
  if (!pattern.empty()) {
    // The adapter (safetensors + JSON, loadable with increlora::load_adapter) and the rank report: CSV and the
    // SVG heatmap of layers × module types (rank_pattern.json is rewritten with the same content).
    save_adapter(model_, (out / "adapter").string());
    write_rank_report(pattern, out.string(),
                      allocator_ ? fmt::format("{}: ranks after IncreLoRA (budget {})", title, allocator_->budget())
                                 : title + ": ranks");
  }
  // The trained head beside it: with the adapter, the folder reproduces the run's model.
  save_trained_head(model_, options_.head_prefixes, (out / "adapter").string());

  // Curves from the whole log (a resumed run's log holds the steps before the resume too).
  Curves curves;
  curves.title = title;
  curves.metric_name = "eval_" + options_.main_metric;
  std::ifstream log(out / "log.jsonl");
  for (std::string line; std::getline(log, line);) {
    if (line.empty()) continue;
    const auto e = json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (!e.is_object() || !e.contains("event")) continue;
    const auto step = e.value("step", int64_t{0});
    if (e["event"] == "train" && e.contains("loss") && e["loss"].is_number()) {
      curves.loss.emplace_back(step, e["loss"].get<double>());
    } else if (e["event"] == "eval" && !e.value("loaded_best_model", false) && e.contains(curves.metric_name) &&
               e[curves.metric_name].is_number()) {
      curves.metric.emplace_back(step, e[curves.metric_name].get<double>());
    } else if (e["event"] == "allocation" && (curves.allocation_steps.empty() || curves.allocation_steps.back() != step)) {
      curves.allocation_steps.push_back(step);
    }
  }
  write_text_file((out / "training_curves.svg").string(), curves_svg(curves));

  json metrics = {{"main_metric", "eval_" + options_.main_metric},
                  {"final", result.final},
                  {"best", result.best},
                  {"evaluations", result.evaluations},
                  {"train_seconds", result.train_seconds},
                  {"total_steps", result.steps},
                  {"total_rank", model_total_rank(model_)},
                  {"budget", allocator_ ? allocator_->budget() : 0},
                  {"trainable_parameters", trainable_},
                  {"precision", to_string(options_.precision)},
                  {"gradient_accumulation_steps", options_.gradient_accumulation_steps}};
  metrics.update(extra);
  write_json((out / "metrics.json").string(), metrics);
}

}  // namespace increlora::apps
