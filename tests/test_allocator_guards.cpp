// The allocator's plan checks: the advice in their messages works when followed, the 64-bit arithmetic of a
// schedule never wraps, and non-finite scores are reported per layer (and survive a state round trip).
#include "support.hpp"

#include <increlora/checkpoint.hpp>

#include "temp_dir.hpp"

#include <torch/optim/adam.h>

#include <cstdint>
#include <limits>
#include <regex>
#include <string>
#include <vector>

using increlora::RankAllocator;
using increlora::RankAllocatorOptions;
using increlora::SVDLinearOptions;
using increlora::test::TinyNet;

namespace {

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();

// The message of the c10::Error `f` throws ("" when it throws none).
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what();
  }
  return "";
}

// The number after `prefix` in `message` (-1 when absent).
int64_t number_after(const std::string& message, const std::string& prefix) {
  const auto at = message.find(prefix);
  if (at == std::string::npos) return -1;
  return std::stoll(message.substr(at + prefix.size()));
}

// Runs the schedule with equal (zero) scores until `last_step`; returns the total rank reached.
int64_t run_schedule(TinyNet& net, RankAllocator& allocator, int64_t last_step) {
  for (int64_t step = 0; step <= last_step && !allocator.budget_met(); ++step) {
    allocator.update_and_increase(*net, step);
  }
  return allocator.total_rank();
}

}  // namespace

TEST_CASE("A plan whose layers fill up before the budget is refused with a capacity that works",
          "[allocator][guards]") {
  struct Plan {
    int64_t layers, capacity, budget, incre_rank_num, top_h;
    bool advance_learn;
  };
  // Each is feasible by total capacity (layers × capacity >= budget) but not in its planned rounds.
  const auto plan = GENERATE(Plan{2, 4, 8, 2, 1, false}, Plan{3, 4, 12, 2, 1, false}, Plan{4, 3, 12, 3, 1, false},
                             Plan{2, 6, 12, 4, 1, true});
  CAPTURE(plan.layers, plan.capacity, plan.budget, plan.incre_rank_num, plan.top_h, plan.advance_learn);
  const auto options = RankAllocatorOptions().lora_r(1).target_total_rank(plan.budget).incre_interval(1)
                           .top_h(plan.top_h).incre_rank_num(plan.incre_rank_num).advance_learn(plan.advance_learn);
  const auto build = [&](int64_t capacity) {
    TinyNet net(4, plan.layers, SVDLinearOptions(1, 1).r(1).capacity(capacity));
    RankAllocator allocator(*net, options);
  };
  const auto message = error_of([&] { build(plan.capacity); });
  CAPTURE(message);
  REQUIRE_THAT(message, HasSubstring("fill up before the budget"));
  CHECK_THAT(message, HasSubstring("recommended_capacity(options, layers)"));
  const int64_t advised = number_after(message, "raise the layers' capacity to at least ");
  REQUIRE(advised > plan.capacity);
  // Following the advice works, and it is the least capacity that does.
  CHECK_NOTHROW(build(advised));
  CHECK_THAT(error_of([&] { build(advised - 1); }), HasSubstring("fill up before the budget"));
  // So does the library's own sizing.
  CHECK_NOTHROW(build(increlora::recommended_capacity(options, plan.layers)));
}

TEST_CASE("A schedule that does not fit in total_step is refused with a total_step and a top_h that fit",
          "[allocator][guards]") {
  struct Plan {
    int64_t layers, target_rank, init_warmup, interval, total_step;
  };
  const auto plan = GENERATE(Plan{4, 2, 100, 100, 450}, Plan{6, 3, 0, 50, 160}, Plan{8, 2, 10, 10, 45});
  CAPTURE(plan.layers, plan.target_rank, plan.init_warmup, plan.interval, plan.total_step);
  TinyNet net(4, plan.layers, SVDLinearOptions(1, 1).r(1).capacity(16));
  const auto options = RankAllocatorOptions().lora_r(1).target_rank(plan.target_rank).init_warmup(plan.init_warmup)
                           .incre_interval(plan.interval).top_h(1).incre_rank_num(1).total_step(plan.total_step);
  const auto message = error_of([&] { RankAllocator allocator(*net, options); });
  CAPTURE(message);
  REQUIRE_THAT(message, HasSubstring("does not fit in total_step = " + std::to_string(plan.total_step)));
  const int64_t total_step = number_after(message, "Raise total_step to at least ");
  const int64_t top_h = number_after(message, "raise top_h to at least ");
  REQUIRE(total_step > plan.total_step);
  REQUIRE(top_h > 1);
  REQUIRE(top_h <= plan.layers);
  // Either advice fits the schedule in; one top_h less does not (the advice is the least that does).
  {
    RankAllocator allocator(*net, RankAllocatorOptions(options).total_step(total_step));
    CHECK(allocator.allocation_step(allocator.planned_rounds()) < total_step);
  }
  CHECK_THAT(error_of([&] { RankAllocator allocator(*net, RankAllocatorOptions(options).top_h(top_h - 1)); }),
             HasSubstring("does not fit in total_step"));
  // With the advised top_h the budget is met before the run ends.
  RankAllocator allocator(*net, RankAllocatorOptions(options).top_h(top_h));
  CHECK(allocator.allocation_step(allocator.planned_rounds()) < plan.total_step);
  CHECK(run_schedule(net, allocator, plan.total_step - 1) == allocator.budget());
  CHECK(allocator.budget_met());
}

TEST_CASE("A total_step before the first allocation step says where the first one is", "[allocator][guards]") {
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1).capacity(8));
  const auto options = RankAllocatorOptions().lora_r(1).target_rank(2).init_warmup(100).incre_interval(50)
                           .total_step(120);
  CHECK_THROWS_WITH(RankAllocator(*net, options),
                    HasSubstring("no allocation step comes before it: the first is at step 150"));
  CHECK_NOTHROW(RankAllocator(*net, RankAllocatorOptions(options).total_step(201)));
}

TEST_CASE("Schedules and budgets whose arithmetic overflows 64 bits are refused, never wrapped",
          "[allocator][guards]") {
  TinyNet net(4, 3, SVDLinearOptions(1, 1).r(1).capacity(8));
  const auto base = RankAllocatorOptions().lora_r(1).target_rank(2).incre_rank_num(1);
  SECTION("the first allocation step past INT64_MAX") {
    // (init_warmup / incre_interval + 1) × incre_interval wraps.
    CHECK_THROWS_WITH(RankAllocator(*net, RankAllocatorOptions(base).init_warmup(kMax - 5).incre_interval(100)),
                      HasSubstring("overflow a 64-bit step count (init_warmup " + std::to_string(kMax - 5)));
  }
  SECTION("the last round past INT64_MAX") {
    // 3 rounds of a huge interval: the first step fits, the third does not.
    CHECK_THROWS_WITH(RankAllocator(*net, RankAllocatorOptions(base).incre_interval(kMax / 2)),
                      HasSubstring("lower init_warmup or incre_interval"));
    CHECK_NOTHROW(RankAllocator(*net, RankAllocatorOptions(base).incre_interval(kMax / 4)));
  }
  SECTION("target_rank × layers") {
    const auto huge = RankAllocatorOptions(base).target_rank(kMax / 2);
    CHECK_THROWS_WITH(RankAllocator(*net, huge), HasSubstring("target_rank × layers (" + std::to_string(kMax / 2) +
                                                              " × 3) overflows a 64-bit rank"));
    CHECK_THROWS_WITH(increlora::rank_budget(huge, 3), HasSubstring("give the budget as target_total_rank"));
    CHECK_THROWS_WITH(increlora::recommended_capacity(huge, 3), HasSubstring("overflows a 64-bit rank"));
  }
  SECTION("the capacity recommended for a huge budget") {
    CHECK_THROWS_WITH(increlora::recommended_capacity(RankAllocatorOptions(base).target_total_rank(kMax), 2),
                      HasSubstring("overflows a 64-bit capacity; lower target_rank or target_total_rank"));
    // Large but representable: ceil(budget / layers) without the wrap of budget + layers - 1.
    const auto large = RankAllocatorOptions(base).target_total_rank(kMax).advance_learn(false);
    CHECK(increlora::recommended_capacity(large, 8) == 4 * (kMax / 8 + 1));
  }
  SECTION("a huge incre_rank_num") {
    // As a reserve it is compared as room, not added to the rank.
    CHECK_THROWS_WITH(RankAllocator(*net, RankAllocatorOptions(base).incre_rank_num(kMax)),
                      HasSubstring("plus an advance-learning reserve of " + std::to_string(kMax) +
                                   " (incre_rank_num); build it with capacity(rank + reserve) or more"));
    // Times top_h it overflows.
    CHECK_THROWS_WITH(RankAllocator(*net, RankAllocatorOptions(base).incre_rank_num(kMax).advance_learn(false).top_h(2)),
                      HasSubstring("top_h × incre_rank_num (2 × " + std::to_string(kMax) + ") overflows"));
    // Alone it is one round that grows only what the budget leaves.
    RankAllocator allocator(*net, RankAllocatorOptions(base).incre_rank_num(kMax).advance_learn(false).incre_interval(1));
    CHECK(allocator.planned_rounds() == 1);
    const auto events = allocator.update_and_increase(*net, 1);
    REQUIRE(events.size() == 1);
    CHECK(events[0].new_rank == 4);
    CHECK(allocator.total_rank() == allocator.budget());
  }
}

namespace {

// Three adapted layers on inputs of their own, summed: a non-finite value in one layer's input (or in the
// gradient of its output) makes only that layer's score non-finite.
struct Probe {
  Probe() : net(6, 3, SVDLinearOptions(1, 1).r(1).lora_alpha(4)) {}
  // The input of layer `bad` (-1: none) carries a NaN; the gradient of layer `inf_grad`'s output is infinite.
  std::vector<increlora::AllocationEvent> step(RankAllocator& allocator, int64_t t, int64_t bad = -1,
                                               int64_t inf_grad = -1) {
    for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();
    torch::Tensor y;
    for (int64_t i = 0; i < 3; ++i) {
      auto x = good.clone();
      if (i == bad) x[0][0] = std::numeric_limits<float>::quiet_NaN();
      auto out = net->fc[i]->forward(x);
      if (i == inf_grad) {
        out.register_hook([](torch::Tensor g) { return g * std::numeric_limits<float>::infinity(); });
      }
      y = y.defined() ? y + out : out;
    }
    y.sum().backward();
    return allocator.update_and_increase(*net, t);
  }
  TinyNet net;
  torch::Tensor good = torch::randn({8, 6});
};

RankAllocatorOptions probe_options() {
  return RankAllocatorOptions().lora_r(1).target_rank(2).init_warmup(4).incre_interval(4).top_h(1).incre_rank_num(1)
      .exact_scoring(true).total_step(40);
}

}  // namespace

TEST_CASE("Non-finite scores name the layers at fault on the skipped event and on the next round's first",
          "[allocator][guards][non_finite]") {
  torch::manual_seed(22);
  Probe probe;
  std::vector<std::string> lines;
  RankAllocator allocator(*probe.net, RankAllocatorOptions(probe_options())
                                          .log([&lines](const std::string& l) { lines.push_back(l); }));
  for (int64_t t = 0; t < 5; ++t) CHECK(probe.step(allocator, t).empty());
  CHECK(probe.step(allocator, 5, -1, /*inf_grad=*/2).empty());  // fc2's gradient is infinite
  CHECK(allocator.state().non_finite_steps == 1);
  for (int64_t t = 6; t < 8; ++t) CHECK(probe.step(allocator, t).empty());
  // The allocation step 8 has a NaN in fc1's input: skipped, naming fc1 alone (this step's scores).
  const auto skipped = probe.step(allocator, 8, /*bad=*/1);
  REQUIRE(skipped.size() == 1);
  CHECK(skipped[0].skipped_non_finite);
  CHECK(skipped[0].non_finite_modules == std::vector<std::string>{"fc1"});
  CHECK(skipped[0].non_finite_steps == 2);
  CHECK_THAT(lines.back(), HasSubstring("not finite in fc1"));
  // The round runs at step 9; its first event names every layer with a non-finite score since the last round.
  const auto ran = probe.step(allocator, 9);
  REQUIRE(ran.size() == 1);
  CHECK_FALSE(ran[0].skipped_non_finite);
  CHECK(ran[0].non_finite_steps == 2);
  CHECK(ran[0].non_finite_modules == std::vector<std::string>{"fc1", "fc2"});
  CHECK_THAT(lines.back(), HasSubstring("left out, in fc1, fc2"));
  // Counted afresh after the round: the next one reports nothing.
  for (int64_t t = 10; t < 12; ++t) CHECK(probe.step(allocator, t).empty());
  const auto next = probe.step(allocator, 12);
  REQUIRE(next.size() == 1);
  CHECK(next[0].non_finite_steps == 0);
  CHECK(next[0].non_finite_modules.empty());
}

TEST_CASE("The layers with non-finite scores survive state and load_state", "[allocator][guards][non_finite]") {
  torch::manual_seed(23);
  Probe probe;
  RankAllocator allocator(*probe.net, probe_options());
  for (int64_t t = 0; t < 5; ++t) probe.step(allocator, t);
  probe.step(allocator, 5, /*bad=*/0);
  const auto state = allocator.state();
  REQUIRE(state.non_finite_layers.defined());
  CHECK(state.non_finite_layers.scalar_type() == torch::kBool);
  CHECK(torch::equal(state.non_finite_layers, torch::tensor({true, false, false})));
  CHECK(state.non_finite_steps == 1);

  // A state without the field (saved before it existed) reads as none; one for another model is refused.
  auto older = state;
  older.non_finite_layers = torch::Tensor();
  RankAllocator from_older(*probe.net, probe_options());
  from_older.load_state(older);
  CHECK_FALSE(from_older.state().non_finite_layers.any().item<bool>());
  auto wrong = state;
  wrong.non_finite_layers = torch::zeros({2}, torch::kBool);
  RankAllocator other(*probe.net, probe_options());
  CHECK_THROWS_WITH(other.load_state(wrong), HasSubstring("non_finite_layers has 2 entries but the model has 3"));

  // Restored last (it then holds the layers' score sinks), it reports them at its next round as the original
  // would have.
  RankAllocator restored(*probe.net, probe_options());
  restored.load_state(state);
  CHECK(torch::equal(restored.state().non_finite_layers, state.non_finite_layers));
  for (int64_t t = 6; t < 8; ++t) CHECK(probe.step(restored, t).empty());
  const auto ran = probe.step(restored, 8);
  REQUIRE(ran.size() == 1);
  CHECK(ran[0].non_finite_steps == 1);
  CHECK(ran[0].non_finite_modules == std::vector<std::string>{"fc0"});
}

TEST_CASE("A checkpoint keeps the layers with non-finite scores for the next round's report",
          "[allocator][guards][non_finite][checkpoint]") {
  increlora::test::TempDir dir;
  torch::manual_seed(24);
  Probe probe;
  torch::optim::Adam optimizer(probe.net->parameters(), torch::optim::AdamOptions(1e-3));
  RankAllocator allocator(*probe.net, probe_options());
  for (int64_t t = 0; t < 5; ++t) probe.step(allocator, t);
  probe.step(allocator, 5, -1, /*inf_grad=*/1);
  increlora::save_checkpoint(dir.file("ckpt"), *probe.net, allocator, optimizer, 5);

  torch::manual_seed(24);
  Probe resumed;
  torch::optim::Adam resumed_optimizer(resumed.net->parameters(), torch::optim::AdamOptions(1e-3));
  RankAllocator resumed_allocator(*resumed.net, probe_options());
  CHECK(increlora::load_checkpoint(dir.file("ckpt"), *resumed.net, resumed_allocator, resumed_optimizer) == 5);
  CHECK(torch::equal(resumed_allocator.state().non_finite_layers, torch::tensor({false, true, false})));
  for (int64_t t = 6; t < 8; ++t) CHECK(resumed.step(resumed_allocator, t).empty());
  const auto ran = resumed.step(resumed_allocator, 8);
  REQUIRE(ran.size() == 1);
  CHECK(ran[0].non_finite_steps == 1);
  CHECK(ran[0].non_finite_modules == std::vector<std::string>{"fc1"});
}
