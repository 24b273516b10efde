#include "increlora/allocator.hpp"

#include "increlora/errors.hpp"
#include "increlora/optim.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <limits>
#include <cmath>
#include <numeric>
#include <random>
#include <unordered_set>

namespace increlora {
namespace {

// Scoring window: the EMA weight of the steps before the window is max(β1, β2)^window; keep it below 1 %.
constexpr double kNeglectedWeight = 0.01;

void check_options(const RankAllocatorOptions& o) {
  INCRELORA_CHECK(o.lora_r() >= 1, "RankAllocatorOptions: lora_r must be >= 1 (got ", o.lora_r(),
                  "): it is the rank every adapted layer starts with; the paper uses lora_r(1).");
  INCRELORA_CHECK(o.beta1() > 0.0 && o.beta1() < 1.0, "RankAllocatorOptions: beta1 must be in (0, 1) (got ",
                  o.beta1(), "); the paper uses beta1(0.85).");
  INCRELORA_CHECK(o.beta2() > 0.0 && o.beta2() < 1.0, "RankAllocatorOptions: beta2 must be in (0, 1) (got ",
                  o.beta2(), "); the paper uses beta2(0.85).");
  INCRELORA_CHECK(o.incre_interval() >= 1, "RankAllocatorOptions: incre_interval must be >= 1 (got ",
                  o.incre_interval(), ").");
  INCRELORA_CHECK(o.top_h() >= 1, "RankAllocatorOptions: top_h must be >= 1 (got ", o.top_h(), ").");
  INCRELORA_CHECK(o.init_warmup() >= 0, "RankAllocatorOptions: init_warmup must be >= 0 (got ", o.init_warmup(), ").");
  INCRELORA_CHECK(o.incre_rank_num() >= 0, "RankAllocatorOptions: incre_rank_num must be >= 1, or 0 to derive it "
                  "from the target rank (got ", o.incre_rank_num(), ").");
  INCRELORA_CHECK(o.total_step() >= 0, "RankAllocatorOptions: total_step must be >= 0 (0: unknown), got ",
                  o.total_step(), ".");
  INCRELORA_CHECK(o.score_window() >= 0, "RankAllocatorOptions: score_window must be >= 0 (0: derived from the "
                  "betas), got ", o.score_window(), ".");
  INCRELORA_CHECK(o.target_total_rank() >= 0, "RankAllocatorOptions: target_total_rank must be >= 0 (0: use "
                  "target_rank × layers), got ", o.target_total_rank(), ".");
  INCRELORA_CHECK(o.gradient_accumulation_steps() >= 1, "RankAllocatorOptions: gradient_accumulation_steps must "
                  "be >= 1 (got ", o.gradient_accumulation_steps(), ").");
  INCRELORA_CHECK(o.target_total_rank() > 0 || o.target_rank() >= 1, "RankAllocatorOptions: target_rank must be "
                  ">= 1 (got ", o.target_rank(), ").");
}

// The most total rank `rounds` allocation rounds can reach from `total` when every round grows the top_h layers
// with the most room (`room` per layer) by up to `per_layer` each: the best any scores could do.
int64_t best_reachable_total(std::vector<int64_t> room, int64_t rounds, int64_t top_h, int64_t per_layer,
                             int64_t total, int64_t budget) {
  std::vector<int64_t> order(room.size());
  for (int64_t k = 0; k < rounds && total < budget; ++k) {
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&room](int64_t a, int64_t b) { return room[a] > room[b]; });
    int64_t grown = 0;
    for (int64_t i = 0; i < std::min<int64_t>(top_h, static_cast<int64_t>(order.size())); ++i) {
      const int64_t grow = std::min({per_layer, room[order[i]], budget - total});
      room[order[i]] -= grow;
      total += grow;
      grown += grow;
    }
    if (grown == 0) break;  // every layer is full: later rounds cannot add anything either
  }
  return total;
}

}  // namespace

int64_t rank_budget(const RankAllocatorOptions& options, int64_t layers) {
  if (options.target_total_rank() > 0) return options.target_total_rank();
  int64_t budget = 0;
  INCRELORA_CHECK(!__builtin_mul_overflow(options.target_rank(), layers, &budget), "RankAllocatorOptions: "
                  "target_rank × layers (", options.target_rank(), " × ", layers, ") overflows a 64-bit rank; lower "
                  "target_rank or give the budget as target_total_rank.");
  return budget;
}

int64_t resolved_incre_rank_num(const RankAllocatorOptions& options, int64_t layers) {
  if (options.incre_rank_num() > 0) return options.incre_rank_num();
  const int64_t average_target = std::max<int64_t>(1, rank_budget(options, layers) / std::max<int64_t>(1, layers));
  return std::max<int64_t>(1, average_target / 2);
}

int64_t recommended_capacity(const RankAllocatorOptions& options, int64_t layers) {
  INCRELORA_CHECK(layers >= 1, "recommended_capacity: layers must be >= 1 (got ", layers, ").");
  const int64_t budget = rank_budget(options, layers);
  // ceil(budget / layers) and 4 × it + reserve, without the wrap of budget + layers - 1 or of the product.
  const int64_t average_target = std::max<int64_t>(options.lora_r(), budget / layers + (budget % layers != 0));
  const int64_t reserve = options.advance_learn() ? resolved_incre_rank_num(options, layers) : 0;
  int64_t capacity = 0;
  INCRELORA_CHECK(!__builtin_mul_overflow(average_target, int64_t{4}, &capacity) &&
                      !__builtin_add_overflow(capacity, reserve, &capacity),
                  "recommended_capacity: 4 × the average target rank (", average_target, ") plus the reserve (",
                  reserve, ") overflows a 64-bit capacity; lower target_rank or target_total_rank.");
  return std::max<int64_t>(16, capacity);
}

RankAllocator::RankAllocator(torch::nn::Module& model, RankAllocatorOptions options)
    : options_(std::move(options)), model_(&model) {
  check_options(options_);
  modules_ = named_svd_linears(model, /*adapters_only=*/true);
  INCRELORA_CHECK(!modules_.empty(), "RankAllocator: the model has no SVDLinear layer with an adapter; build the "
                  "layers to adapt with SVDLinearOptions(...).r(", options_.lora_r(), ").");
  const auto layers = static_cast<int64_t>(modules_.size());
  for (const auto& [name, m] : modules_) {
    INCRELORA_CHECK(!m->is_merged(), "RankAllocator: layer '", name, "' is merged; call unmerge() before training.");
    INCRELORA_CHECK(options_.start_from_current_ranks() || m->rank() == options_.lora_r(), "RankAllocator: layer '",
                    name, "' has rank ", m->rank(), " but lora_r is ", options_.lora_r(), "; build every adapted "
                    "layer with r(", options_.lora_r(), ") and construct the allocator before training (restore a "
                    "run with load_state; start from imported ranks with start_from_current_ranks(true)).");
    initial_total_ += m->rank();
  }
  total_rank_ = initial_total_;
  budget_ = rank_budget(options_, layers);
  INCRELORA_CHECK(budget_ >= initial_total_, "RankAllocator: the target total rank (", budget_,
                  ") is below the initial total rank (", initial_total_, " over ", layers, " layers); raise "
                  "target_rank/target_total_rank", options_.start_from_current_ranks() ? "." : " or lower lora_r.");
  incre_rank_num_ = resolved_incre_rank_num(options_, layers);

  int64_t total_capacity = 0;
  const int64_t reserve = options_.advance_learn() ? incre_rank_num_ : 0;
  for (const auto& [name, m] : modules_) {
    // Compared as room, so that a huge incre_rank_num cannot wrap rank + reserve (nor the advised capacity).
    int64_t needed = 0;
    const bool needed_fits = !__builtin_add_overflow(m->rank(), reserve, &needed);
    INCRELORA_CHECK(m->capacity() - m->rank() >= reserve, "RankAllocator: layer '", name, "' has capacity ",
                    m->capacity(), ", too small for rank ", m->rank(), " plus an advance-learning reserve of ",
                    reserve, " (incre_rank_num); build it with capacity(",
                    needed_fits ? std::to_string(needed) : std::string("rank + reserve"), ") or more, or lower "
                    "incre_rank_num.");
    total_capacity += m->capacity();
  }
  INCRELORA_CHECK(total_capacity >= budget_, "RankAllocator: the layers can hold ", total_capacity,
                  " triplets in all but the budget is ", budget_, "; raise the layers' capacity or lower the target.");

  INCRELORA_CHECK(options_.top_h() <= layers || budget_ == initial_total_, "RankAllocator: top_h is ",
                  options_.top_h(), " but the model has only ", layers, " adapted layers, so at most ", layers,
                  " can grow per round and the schedule would miss the budget; use top_h(", layers, ") or less.");
  int64_t per_round = 0;
  INCRELORA_CHECK(!__builtin_mul_overflow(options_.top_h(), incre_rank_num_, &per_round), "RankAllocator: top_h × "
                  "incre_rank_num (", options_.top_h(), " × ", incre_rank_num_, ") overflows a 64-bit rank; lower "
                  "incre_rank_num.");
  const int64_t need = budget_ - initial_total_;
  planned_rounds_ = need / per_round + (need % per_round != 0);  // ceil without the overflow of need + per_round
  if (planned_rounds_ > 0) {
    // allocation_step(planned_rounds) in int64 arithmetic, checked: an init_warmup near INT64_MAX would wrap.
    const int64_t interval = options_.incre_interval();
    int64_t first = 0, span = 0, last = 0;
    const bool overflow = __builtin_mul_overflow(options_.init_warmup() / interval + 1, interval, &first) ||
                          __builtin_mul_overflow(planned_rounds_ - 1, interval, &span) ||
                          __builtin_add_overflow(first, span, &last);
    INCRELORA_CHECK(!overflow, "RankAllocator: the schedule's steps overflow a 64-bit step count (init_warmup ",
                    options_.init_warmup(), ", incre_interval ", interval, ", ", planned_rounds_,
                    " rounds); lower init_warmup or incre_interval so that the last round's step fits in int64.");
    check_plan();
    if (options_.total_step() > 0) check_total_step();
  }
  window_ = options_.score_window() > 0
                ? options_.score_window()
                : static_cast<int64_t>(std::ceil(std::log(kNeglectedWeight) /
                                                 std::log(std::max(options_.beta1(), options_.beta2()))));

  const auto device = modules_.front().second->lora_A.device();
  const auto opts = torch::TensorOptions().dtype(torch::kFloat).device(device);
  accum_ = torch::zeros({layers}, opts);
  sensitivity_ = torch::zeros({layers}, opts);
  uncertainty_ = torch::zeros({layers}, opts);
  finite_ = torch::ones({}, opts.dtype(torch::kBool));
  step_non_finite_ = torch::zeros({layers}, opts.dtype(torch::kBool));
  non_finite_ = torch::zeros({}, opts.dtype(torch::kLong));
  non_finite_layers_ = torch::zeros({layers}, opts.dtype(torch::kBool));

  if (budget_ == initial_total_) {
    budget_met_ = true;
  } else {
    for (auto& entry : modules_) entry.second->set_reserve(reserve);
    if (is_scoring_step(0)) arm(0);
  }
}

RankAllocator::~RankAllocator() { disarm(); }

void RankAllocator::check_plan() const {
  // A plan that falls short even when every round picks the layers with the most room cannot meet the budget,
  // whatever the scores: the layers fill up first.
  std::vector<int64_t> room;
  int64_t widest = 0, largest_rank = 0;
  for (const auto& entry : modules_) {
    room.push_back(entry.second->capacity() - entry.second->rank());
    widest = std::max(widest, entry.second->capacity());
    largest_rank = std::max(largest_rank, entry.second->rank());
  }
  const auto reach = [&](const std::vector<int64_t>& r) {
    return best_reachable_total(r, planned_rounds_, options_.top_h(), incre_rank_num_, initial_total_, budget_);
  };
  const int64_t total = reach(room);
  if (total == budget_) return;
  // The smallest capacity that, given to every layer smaller than it, makes the plan feasible: a layer never
  // needs more than planned_rounds × incre_rank_num above its rank, so the search is bounded.
  int64_t lo = widest, hi = largest_rank;
  if (__builtin_mul_overflow(planned_rounds_, incre_rank_num_, &hi) || __builtin_add_overflow(hi, largest_rank, &hi)) {
    hi = std::numeric_limits<int64_t>::max();
  }
  hi = std::max(hi, lo);
  while (lo < hi) {
    const int64_t mid = lo + (hi - lo) / 2;
    std::vector<int64_t> widened;
    for (const auto& entry : modules_) {
      widened.push_back(std::max(mid, entry.second->capacity()) - entry.second->rank());
    }
    if (reach(widened) == budget_) {
      hi = mid;
    } else {
      lo = mid + 1;
    }
  }
  INCRELORA_CHECK(false, "RankAllocator: the layers fill up before the budget is met: with their capacities, ",
                  planned_rounds_, " rounds of top_h × incre_rank_num = ", options_.top_h(), " × ", incre_rank_num_,
                  " reach at most ", total, " of the ", budget_, " total rank; raise the layers' capacity to at least ",
                  lo, " (recommended_capacity(options, layers) sizes it for a plan), or lower the target.");
}

void RankAllocator::check_total_step() const {
  const int64_t last = allocation_step(planned_rounds_);
  if (last < options_.total_step()) return;
  // What would fit: the allocation steps before total_step, and the top_h that fills the budget in them.
  const int64_t interval = options_.incre_interval(), first = allocation_step(1);
  const int64_t available = first < options_.total_step() ? (options_.total_step() - 1 - first) / interval + 1 : 0;
  std::string top_h_advice;
  if (available > 0) {
    const int64_t need = budget_ - initial_total_, per_round = need / available + (need % available != 0);
    const int64_t top_h = per_round / incre_rank_num_ + (per_round % incre_rank_num_ != 0);
    if (top_h <= static_cast<int64_t>(modules_.size())) top_h_advice = fmt::format(", raise top_h to at least {}", top_h);
  } else {
    top_h_advice = fmt::format(" (no allocation step comes before it: the first is at step {})", first);
  }
  INCRELORA_CHECK(false, "RankAllocator: the schedule does not fit in total_step = ", options_.total_step(),
                  ": growing from ", initial_total_, " to ", budget_, " total rank takes ", planned_rounds_,
                  " rounds of top_h × incre_rank_num = ", options_.top_h(), " × ", incre_rank_num_,
                  ", the last at step ", last, " (init_warmup ", options_.init_warmup(), ", incre_interval ",
                  options_.incre_interval(), "). Raise total_step to at least ", last + 1, top_h_advice,
                  ", or raise incre_rank_num, or lower init_warmup or incre_interval.");
}

std::vector<std::string> RankAllocator::layer_names(const torch::Tensor& mask) const {
  const auto flags = mask.to(torch::kCPU, torch::kBool).contiguous();
  const auto* f = flags.data_ptr<bool>();
  std::vector<std::string> names;
  for (size_t i = 0; i < modules_.size(); ++i) {
    if (f[i]) names.push_back(modules_[i].first);
  }
  return names;
}

int64_t RankAllocator::allocation_step(int64_t k) const {
  const int64_t interval = options_.incre_interval();
  const int64_t first = (options_.init_warmup() / interval + 1) * interval;  // first multiple > init_warmup
  return first + (k - 1) * interval;
}

bool RankAllocator::is_allocation_step(int64_t global_step) const {
  return !budget_met_ && global_step > options_.init_warmup() && global_step % options_.incre_interval() == 0;
}

bool RankAllocator::is_scoring_step(int64_t global_step) const {
  if (budget_met_ || options_.random_allocation()) return false;
  if (options_.exact_scoring()) return true;
  const int64_t interval = options_.incre_interval();
  // No allocation step fits in int64 after this one: nothing to score for (and the rounding below would wrap).
  if (global_step > std::numeric_limits<int64_t>::max() - interval) return false;
  const int64_t next_allocation =
      global_step <= options_.init_warmup() ? allocation_step(1) : (global_step + interval - 1) / interval * interval;
  return next_allocation - global_step < window_;
}

void RankAllocator::arm(int64_t global_step) {
  const auto device = modules_.front().second->lora_A.device();
  if (accum_.device() != device) {  // the model moved after the allocator was built
    accum_ = accum_.to(device);
    sensitivity_ = sensitivity_.to(device);
    uncertainty_ = uncertainty_.to(device);
    finite_ = finite_.to(device);
    step_non_finite_ = step_non_finite_.to(device);
    non_finite_ = non_finite_.to(device);
    non_finite_layers_ = non_finite_layers_.to(device);
    armed_step_ = -1;
  }
  if (armed_step_ < 0) {
    const bool sum_gradients = options_.gradient_accumulation_steps() > 1;
    if (sum_gradients) gradient_sums_.resize(modules_.size());
    for (size_t i = 0; i < modules_.size(); ++i) {
      auto& m = modules_[i].second;
      if (sum_gradients) {
        // ∂L/∂ΔW summed over the step's backward passes; read (and zeroed) by update_and_increase.
        const auto dtype = m->lora_A.scalar_type() == torch::kDouble ? torch::kDouble : torch::kFloat;
        gradient_sums_[i] = torch::zeros({m->options().out_features(), m->options().in_features()},
                                         m->lora_A.options().dtype(dtype));
        m->set_score_sink(gradient_sums_[i]);
      } else {
        m->set_score_sink(accum_.select(0, static_cast<int64_t>(i)));
      }
    }
  }
  armed_step_ = global_step;
}

void RankAllocator::set_gradient_scale(double scale) {
  INCRELORA_CHECK(std::isfinite(scale) && scale > 0.0, "RankAllocator::set_gradient_scale: the scale must be a "
                  "positive finite number (got ", scale, ").");
  gradient_scale_ = scale;
}

torch::Tensor RankAllocator::read_scores() {
  torch::NoGradGuard no_grad;
  if (!gradient_sums_.empty()) {
    // The score of the summed gradient, Σ|ΔW ⊙ G| / sqrt(numel), with ΔW as the forward passes used it (the
    // optimizer has not stepped yet).
    for (size_t i = 0; i < modules_.size(); ++i) {
      auto& G = gradient_sums_[i];
      const auto dw = modules_[i].second->delta_weight().to(G.scalar_type());
      const auto score = at::linalg_vector_norm(dw * G, 1, std::nullopt, false, torch::kFloat) /
                         std::sqrt(static_cast<double>(G.numel()));
      accum_.select(0, static_cast<int64_t>(i)).copy_(score);
      G.zero_();
    }
  }
  auto score = accum_.clone();
  accum_.zero_();
  if (gradient_scale_ != 1.0) score.div_(gradient_scale_);
  return score;
}

void RankAllocator::disarm() {
  if (armed_step_ < 0) return;
  for (auto& entry : modules_) entry.second->set_score_sink(torch::Tensor());
  gradient_sums_.clear();
  armed_step_ = -1;
}

void RankAllocator::check_optimizer(const torch::optim::Optimizer& optimizer) {
  if (checked_optimizer_ == &optimizer) return;
  std::unordered_set<const c10::TensorImpl*> held;
  for (const auto& group : optimizer.param_groups()) {
    for (const auto& p : group.params()) held.insert(p.unsafeGetTensorImpl());
  }
  for (const auto& [name, m] : modules_) {
    for (const auto* bank : {&m->lora_A, &m->lora_E, &m->lora_B}) {
      INCRELORA_CHECK(held.count(bank->unsafeGetTensorImpl()) == 1, "RankAllocator::update_and_increase: the "
                      "optimizer does not hold the adapter parameters of layer '", name, "'; build it from "
                      "model->parameters() after the SVDLinear layers exist (their tensors never change after).");
    }
  }
  checked_optimizer_ = &optimizer;
}

std::vector<AllocationEvent> RankAllocator::update_and_increase(torch::nn::Module& model, int64_t global_step,
                                                                const torch::optim::Optimizer& optimizer) {
  check_optimizer(optimizer);
  return update_and_increase(model, global_step);
}

std::vector<AllocationEvent> RankAllocator::update_and_increase(torch::nn::Module& model, int64_t global_step,
                                                                torch::optim::Optimizer& optimizer) {
  check_optimizer(optimizer);
  // Before growing: slots that start at this step are then seen starting by the optimizer's next step().
  // (Once: walking the model's modules every step would cost the host time; load_checkpoint untracks.)
  if (auto* fused = dynamic_cast<FusedAdamW*>(&optimizer); fused != nullptr && !fused->tracks_adapter_slots()) {
    fused->track_adapter_slots(model, global_step);
  }
  return update_and_increase(model, global_step);
}

std::vector<AllocationEvent> RankAllocator::update_and_increase(torch::nn::Module& model, int64_t global_step) {
  INCRELORA_CHECK(&model == model_, "RankAllocator::update_and_increase: called with a different model than the "
                  "allocator was built over; pass the same model.");
  INCRELORA_CHECK(global_step >= 0, "RankAllocator::update_and_increase: global_step must be >= 0 (got ",
                  global_step, ").");
  INCRELORA_CHECK(global_step > last_step_, "RankAllocator::update_and_increase: step ", global_step,
                  " does not come after step ", last_step_, ", which it has seen already; call it once per optimizer "
                  "step with increasing steps (after a restore, continue after the restored step).");
  last_step_ = global_step;
  if (budget_met_) return {};
  bool scored_now = false;
  if (armed_step_ >= 0) {
    scored_now = true;
    // The scores of the backward passes since the last call (from their summed gradients when they are
    // micro-batches of one step).
    torch::NoGradGuard no_grad;
    auto score = read_scores();
    if (options_.reduce_scores()) options_.reduce_scores()(score);
    update_emas(std::move(score), global_step);
  }
  std::vector<AllocationEvent> events;
  if (is_allocation_step(global_step) || pending_round_) events = allocate(global_step, scored_now);
  if (global_step < std::numeric_limits<int64_t>::max() && is_scoring_step(global_step + 1)) {
    arm(global_step + 1);
  } else {
    disarm();
  }
  return events;
}

void RankAllocator::update_emas(torch::Tensor score, int64_t global_step) {
  // On the device, without reading anything back: a step whose scores are not all finite leaves the EMAs as
  // they were (computed on zeros, then not taken) and is counted.
  step_non_finite_ = torch::isfinite(score).logical_not_();
  finite_ = step_non_finite_.any().logical_not();
  non_finite_.add_(finite_.logical_not().to(torch::kLong));
  non_finite_layers_.logical_or_(step_non_finite_);
  score = torch::where(finite_, score, torch::zeros_like(score));
  const auto old_sensitivity = sensitivity_.clone(), old_uncertainty = uncertainty_.clone();
  const double b1 = options_.beta1(), b2 = options_.beta2();
  const int64_t gap = global_step - last_update_step_ - 1;  // steps since the last update that were not scored
  if (gap > 0) {
    // Apply the EMA over the gap as if the score had been constant at this step's value S (what the exact,
    // every-step EMA would have done then): Ī ← β1^g Ī + (1 − β1^g) S, and Ū gathers
    // (1 − β2) Σ_{k=1..g} β2^(g−k) β1^k |S − Ī_before|.
    const double g = static_cast<double>(gap);
    const double b1g = std::pow(b1, g), b2g = std::pow(b2, g);
    double weight;  // Σ_{k=1..g} β2^(g−k) β1^k
    if (std::abs(b1 - b2) < 1e-12) {
      weight = g * b1g;
    } else {
      const double r = b1 / b2;
      weight = b2g * r * (1.0 - std::pow(r, g)) / (1.0 - r);
    }
    const auto jump = (score - sensitivity_).abs_();
    uncertainty_.mul_(b2g).add_(jump, (1.0 - b2) * weight);
    sensitivity_.mul_(b1g).add_(score, 1.0 - b1g);
  }
  sensitivity_.mul_(b1).add_(score, 1.0 - b1);
  uncertainty_.mul_(b2).add_((score - sensitivity_).abs_(), 1.0 - b2);
  sensitivity_ = torch::where(finite_, sensitivity_, old_sensitivity);
  uncertainty_ = torch::where(finite_, uncertainty_, old_uncertainty);
  last_update_step_ = global_step;
}

std::vector<AllocationEvent> RankAllocator::allocate(int64_t global_step, bool scored_now) {
  const auto score = scores();  // the one host synchronisation, at allocations only
  const auto* s = score.data_ptr<float>();
  const int64_t non_finite = non_finite_.item<int64_t>();
  if (scored_now && !finite_.item<bool>()) {
    // No layer grows on a step whose gradients were not finite: the round runs at the next step.
    pending_round_ = true;
    AllocationEvent skipped;
    skipped.step = global_step;
    skipped.round = round_ + 1;
    skipped.skipped_non_finite = true;
    skipped.non_finite_steps = non_finite;
    skipped.non_finite_modules = layer_names(step_non_finite_);
    log(fmt::format("increlora: step {} round {}: skipped, the scores of this step are not finite in {} ({} such "
                    "scored step(s) since the last round); the round runs at the next step", global_step, round_ + 1,
                    fmt::join(skipped.non_finite_modules, ", "), non_finite));
    return {skipped};
  }
  const auto non_finite_modules = non_finite > 0 ? layer_names(non_finite_layers_) : std::vector<std::string>();
  pending_round_ = false;
  non_finite_.zero_();
  non_finite_layers_.zero_();
  ++round_;
  const auto order = allocation_order(s);

  std::vector<AllocationEvent> events;
  int64_t remaining = budget_ - total_rank_;
  int64_t chosen = 0;
  const int64_t reserve_after = options_.advance_learn() ? incre_rank_num_ : 0;
  for (int64_t idx : order) {
    if (chosen == options_.top_h() || remaining == 0) break;
    auto& [name, m] = modules_[idx];
    AllocationEvent event;
    event.step = global_step;
    event.round = round_;
    event.module = name;
    event.old_rank = event.new_rank = m->rank();
    event.score = static_cast<double>(s[idx]);
    const int64_t room = m->capacity() - m->rank();
    if (room == 0) {
      event.at_capacity = true;
      events.push_back(event);
      continue;
    }
    const int64_t grow = std::min({incre_rank_num_, remaining, room});
    event.new_rank = m->grow(grow, global_step, reserve_after);
    remaining -= grow;
    total_rank_ += grow;
    ++chosen;
    events.push_back(event);
  }
  if (!events.empty()) {
    events.front().non_finite_steps = non_finite;
    events.front().non_finite_modules = non_finite_modules;
  }
  if (total_rank_ == budget_) {
    budget_met_ = true;
    for (auto& entry : modules_) entry.second->set_reserve(0);
    disarm();
  }
  if (options_.log()) {
    std::string grown;
    for (const auto& e : events) {
      grown += e.at_capacity ? fmt::format(" {} (full at {})", e.module, e.old_rank)
                             : fmt::format(" {} {}->{}", e.module, e.old_rank, e.new_rank);
    }
    log(fmt::format("increlora: step {} round {}: total rank {}/{}{}:{}{}", global_step, round_, total_rank_, budget_,
                    budget_met_ ? " (budget met)" : "", grown,
                    non_finite > 0 ? fmt::format(" ({} scored step(s) with non-finite scores left out, in {})",
                                                 non_finite, fmt::join(non_finite_modules, ", "))
                                   : std::string()));
  }
  return events;
}

std::vector<int64_t> RankAllocator::allocation_order(const float* s) const {
  std::vector<int64_t> order(modules_.size());
  std::iota(order.begin(), order.end(), 0);
  if (options_.random_allocation()) {
    // A draw of its own per round: the same seed and round always give the same order, a resumed run too.
    std::seed_seq seq{static_cast<uint32_t>(options_.random_seed()), static_cast<uint32_t>(options_.random_seed() >> 32),
                      static_cast<uint32_t>(round_)};
    std::mt19937_64 rng(seq);
    std::shuffle(order.begin(), order.end(), rng);
    return order;
  }
  // Highest score first; equal scores keep registration order, so the decision is deterministic. A NaN (which
  // the EMAs should never hold) would break the ordering's strictness: it sorts last.
  const auto key = [s](int64_t i) { return std::isnan(s[i]) ? -std::numeric_limits<float>::infinity() : s[i]; };
  std::stable_sort(order.begin(), order.end(), [&key](int64_t a, int64_t b) { return key(a) > key(b); });
  return order;
}

std::map<std::string, int64_t> RankAllocator::rank_pattern() const {
  std::map<std::string, int64_t> pattern;
  for (const auto& [name, m] : modules_) pattern[name] = m->rank();
  return pattern;
}

torch::Tensor RankAllocator::scores() const {
  return (sensitivity_ * uncertainty_).to(torch::kCPU).contiguous();
}

RankAllocatorState RankAllocator::state() const {
  RankAllocatorState state;
  state.round = round_;
  state.total_rank = total_rank_;
  state.budget_met = budget_met_;
  state.armed_step = armed_step_;
  state.last_update_step = last_update_step_;
  state.last_step = last_step_;
  state.pending_round = pending_round_;
  state.non_finite_steps = non_finite_.item<int64_t>();
  state.non_finite_layers = non_finite_layers_.to(torch::kCPU).clone();
  state.sensitivity = sensitivity_.to(torch::kCPU).clone();
  state.uncertainty = uncertainty_.to(torch::kCPU).clone();
  return state;
}

void RankAllocator::load_state(const RankAllocatorState& state) {
  const auto layers = static_cast<int64_t>(modules_.size());
  INCRELORA_CHECK(state.sensitivity.defined() && state.sensitivity.numel() == layers &&
                      state.uncertainty.defined() && state.uncertainty.numel() == layers,
                  "RankAllocator::load_state: the state has scores for ",
                  state.sensitivity.defined() ? state.sensitivity.numel() : 0, " layers but the model has ", layers,
                  " adapted layers; restore it on the model it was saved from.");
  int64_t total = 0;
  for (const auto& entry : modules_) total += entry.second->rank();
  INCRELORA_CHECK(total == state.total_rank, "RankAllocator::load_state: the model's layers have total rank ",
                  total, " but the state says ", state.total_rank, "; restore the adapter before the allocator.");
  INCRELORA_CHECK(!state.non_finite_layers.defined() || state.non_finite_layers.numel() == layers,
                  "RankAllocator::load_state: non_finite_layers has ", state.non_finite_layers.numel(), " entries but "
                  "the model has ", layers, " adapted layers; restore it on the model it was saved from.");
  disarm();
  round_ = state.round;
  total_rank_ = state.total_rank;
  budget_met_ = state.budget_met;
  last_update_step_ = state.last_update_step;
  const auto device = modules_.front().second->lora_A.device();
  sensitivity_ = state.sensitivity.to(device, torch::kFloat).clone();
  uncertainty_ = state.uncertainty.to(device, torch::kFloat).clone();
  accum_ = torch::zeros({layers}, sensitivity_.options());
  last_step_ = state.last_step;
  pending_round_ = state.pending_round;
  finite_ = torch::ones({}, sensitivity_.options().dtype(torch::kBool));
  non_finite_ = torch::full({}, state.non_finite_steps, sensitivity_.options().dtype(torch::kLong));
  step_non_finite_ = torch::zeros({layers}, sensitivity_.options().dtype(torch::kBool));
  non_finite_layers_ = torch::zeros({layers}, sensitivity_.options().dtype(torch::kBool));
  if (state.non_finite_layers.defined()) {
    non_finite_layers_.copy_(state.non_finite_layers.reshape({layers}).to(torch::kBool));
  }
  if (!budget_met_ && state.armed_step >= 0) arm(state.armed_step);
}

void RankAllocator::log(const std::string& line) const {
  if (options_.log()) options_.log()(line);
}

}  // namespace increlora
