// RankAllocator: the budget, the schedule, scoring windows, ties, capacity, determinism and bad options.
#include "support.hpp"

#include <torch/optim/adam.h>
#include <torch/optim/sgd.h>

#include <cmath>
#include <limits>
#include <numeric>
#include <set>

using increlora::RankAllocator;
using increlora::RankAllocatorOptions;
using increlora::SVDLinearOptions;
using increlora::test::devices;
using increlora::test::max_abs_diff;
using increlora::test::TinyNet;

namespace {

struct Run {
  std::vector<increlora::AllocationEvent> events;
  std::vector<int64_t> total_after_step;
};

// Trains `net` on a fixed random regression for `steps` steps, calling the allocator as the seed README does.
Run train(TinyNet& net, RankAllocator& allocator, int64_t steps, torch::Device device = torch::kCPU,
          int64_t micro_batches = 1) {
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(1e-2));
  const auto opts = torch::TensorOptions().device(device);
  const int64_t width = net->fc.front()->options().in_features();
  const auto x = torch::randn({64, width}, opts);
  const auto target = torch::tanh(torch::randn({64, width}, opts) * 2);
  Run run;
  for (int64_t step = 0; step < steps; ++step) {
    optimizer.zero_grad();
    for (int64_t mb = 0; mb < micro_batches; ++mb) {
      auto loss = (net->forward(x) - target).pow(2).mean() + increlora::compute_orth_regu(*net, 0.1);
      loss.backward();
    }
    auto events = allocator.update_and_increase(*net, step, optimizer);
    run.events.insert(run.events.end(), events.begin(), events.end());
    optimizer.step();
    run.total_after_step.push_back(allocator.total_rank());
  }
  return run;
}

int64_t pattern_sum(const std::map<std::string, int64_t>& pattern) {
  return std::accumulate(pattern.begin(), pattern.end(), int64_t{0},
                         [](int64_t s, const auto& kv) { return s + kv.second; });
}

}  // namespace

TEST_CASE("The rank budget is met exactly and never exceeded, the last round growing only what is left",
          "[allocator][budget]") {
  auto device = GENERATE(from_range(devices()));
  auto advance = GENERATE(false, true);
  CAPTURE(device, advance);
  torch::manual_seed(11);
  TinyNet net(8, 5, SVDLinearOptions(1, 1).r(1).lora_alpha(4).capacity(8));
  net->to(torch::Device(device));
  // 5 layers from rank 1 to a total of 12: rounds of top_h 2 × incre_rank_num 2 = 4, so 4 + 3 (partial).
  RankAllocator allocator(*net, RankAllocatorOptions()
                                    .lora_r(1).target_total_rank(12).init_warmup(5).incre_interval(5)
                                    .top_h(2).incre_rank_num(2).total_step(40).advance_learn(advance));
  CHECK(allocator.budget() == 12);
  CHECK(allocator.planned_rounds() == 2);
  CHECK(allocator.allocation_step(1) == 10);
  CHECK(allocator.allocation_step(2) == 15);
  const auto run = train(net, allocator, 40, torch::Device(device));

  for (auto total : run.total_after_step) CHECK(total <= 12);
  CHECK(allocator.budget_met());
  CHECK(allocator.total_rank() == 12);
  CHECK(pattern_sum(allocator.rank_pattern()) == 12);
  CHECK(allocator.round() == 2);
  REQUIRE(run.events.size() >= 3);
  int64_t grown_first = 0, grown_last = 0;
  for (const auto& e : run.events) {
    CHECK((e.step == 10 || e.step == 15));
    (e.round == 1 ? grown_first : grown_last) += e.new_rank - e.old_rank;
  }
  CHECK(grown_first == 4);
  CHECK(grown_last == 3);
  // After the budget: no scoring, no reserve in any layer.
  for (const auto& [name, layer] : allocator.modules()) {
    CHECK_FALSE(layer->score_sink().defined());
    CHECK(layer->reserve_rank() == 0);
  }
}

TEST_CASE("Equal scores go to the layers registered first", "[allocator][ties]") {
  TinyNet net(4, 6, SVDLinearOptions(1, 1).r(1));
  RankAllocator allocator(*net, RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(1).top_h(3)
                                    .incre_rank_num(1));
  // No backward ran, so every score is 0: a tie among all six layers.
  const auto events = allocator.update_and_increase(*net, 1);
  REQUIRE(events.size() == 3);
  CHECK(events[0].module == "fc0");
  CHECK(events[1].module == "fc1");
  CHECK(events[2].module == "fc2");
  const auto more = allocator.update_and_increase(*net, 2);
  REQUIRE(more.size() == 3);
  CHECK(more[0].module == "fc0");  // still a tie: the same order, whatever the ranks
  CHECK(allocator.total_rank() == 12);
}

TEST_CASE("The same seed gives the same rank pattern", "[allocator][determinism]") {
  auto run_once = [] {
    torch::manual_seed(1234);
    TinyNet net(12, 6, SVDLinearOptions(1, 1).r(1).lora_alpha(8));
    RankAllocator allocator(*net, RankAllocatorOptions().lora_r(1).target_rank(3).init_warmup(4).incre_interval(4)
                                      .top_h(2).incre_rank_num(1).total_step(60));
    train(net, allocator, 60);
    return allocator.rank_pattern();
  };
  const auto a = run_once();
  const auto b = run_once();
  CHECK(a == b);
  CHECK(pattern_sum(a) == 18);
  // The scores differ between layers, so the pattern is not uniform.
  std::set<int64_t> ranks;
  for (const auto& kv : a) ranks.insert(kv.second);
  CHECK(ranks.size() > 1);
}

TEST_CASE("Scores are computed only in the window before each allocation and never after the budget",
          "[allocator][window]") {
  TinyNet net(6, 3, SVDLinearOptions(1, 1).r(1));
  RankAllocator allocator(*net, RankAllocatorOptions().lora_r(1).target_rank(3).init_warmup(100)
                                    .incre_interval(100).top_h(1).incre_rank_num(1).beta1(0.85).beta2(0.85));
  CHECK(allocator.score_window() == 29);  // 0.85^29 < 1 % <= 0.85^28
  CHECK(allocator.allocation_step(1) == 200);
  CHECK_FALSE(allocator.is_scoring_step(0));
  CHECK_FALSE(allocator.is_scoring_step(171));
  CHECK(allocator.is_scoring_step(172));
  CHECK(allocator.is_scoring_step(200));
  CHECK_FALSE(allocator.is_scoring_step(201));
  CHECK(allocator.is_scoring_step(272));
  CHECK_FALSE(allocator.modules()[0].second->score_sink().defined());  // step 0 is not scored

  // The sinks are attached for exactly the window's steps.
  for (int64_t step = 0; step < 205; ++step) {
    allocator.update_and_increase(*net, step);
    CHECK(allocator.modules()[0].second->score_sink().defined() == allocator.is_scoring_step(step + 1));
  }
}

TEST_CASE("The score sums over micro-batches and feeds the paper's EMAs", "[allocator][score]") {
  torch::manual_seed(21);
  TinyNet net(5, 1, SVDLinearOptions(1, 1).r(1).lora_alpha(2));
  {
    torch::NoGradGuard no_grad;
    net->fc[0]->lora_E.fill_(0.5);
  }
  RankAllocator allocator(*net, RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(10).top_h(1)
                                    .exact_scoring(true).beta1(0.8).beta2(0.7));
  const auto x1 = torch::randn({3, 5}), x2 = torch::randn({3, 5});
  // Each micro-batch's score alone, through a detached sink.
  auto score_of = [&](const torch::Tensor& x) {
    auto sink = torch::zeros({});
    auto saved = net->fc[0]->score_sink();
    net->fc[0]->set_score_sink(sink);
    net->forward(x).sum().backward();
    net->fc[0]->set_score_sink(saved);
    return sink.item<double>();
  };
  const double s1 = score_of(x1), s2 = score_of(x2);
  net->forward(x1).sum().backward();
  net->forward(x2).sum().backward();
  allocator.update_and_increase(*net, 0);
  const double S = s1 + s2;
  const double ipt = 0.2 * S, unc = 0.3 * std::abs(S - ipt);
  CHECK(allocator.scores()[0].item<double>() == Approx(ipt * unc).epsilon(1e-5));
}

TEST_CASE("The score hook sees one float per layer before the EMA update", "[allocator][distributed]") {
  TinyNet net(4, 3, SVDLinearOptions(1, 1).r(1));
  int64_t calls = 0;
  RankAllocator allocator(*net, RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(50)
                                    .exact_scoring(true).reduce_scores([&](torch::Tensor& s) {
                                      CHECK(s.numel() == 3);
                                      CHECK(s.scalar_type() == torch::kFloat);
                                      s.fill_(calls + 1.0);  // what an all-reduce would write
                                      ++calls;
                                    }));
  allocator.update_and_increase(*net, 0);
  allocator.update_and_increase(*net, 1);
  CHECK(calls == 2);
  CHECK(allocator.state().sensitivity[0].item<double>() == Approx(0.85 * 0.15 + 0.15 * 2.0));
}

TEST_CASE("A full layer is skipped and the event says so", "[allocator][capacity]") {
  TinyNet net(4, 3, SVDLinearOptions(1, 1).r(1).capacity(2));
  RankAllocator allocator(*net, RankAllocatorOptions().lora_r(1).target_total_rank(6).incre_interval(1).top_h(1)
                                    .incre_rank_num(1));
  // Ties: fc0 grows first, to its capacity of 2; next round it is skipped and fc1 grows.
  auto first = allocator.update_and_increase(*net, 1);
  REQUIRE(first.size() == 1);
  CHECK(first[0].module == "fc0");
  auto second = allocator.update_and_increase(*net, 2);
  REQUIRE(second.size() == 2);
  CHECK(second[0].module == "fc0");
  CHECK(second[0].at_capacity);
  CHECK(second[0].new_rank == second[0].old_rank);
  CHECK(second[1].module == "fc1");
  CHECK(second[1].new_rank == 2);
}

TEST_CASE("incre_rank_num defaults to half the average target rank", "[allocator][options]") {
  TinyNet net(4, 4, SVDLinearOptions(1, 1).r(1).capacity(16));
  auto with_target = [&](int64_t target) {
    return RankAllocator(*net, RankAllocatorOptions().lora_r(1).target_rank(target)).incre_rank_num();
  };
  CHECK(with_target(2) == 1);
  CHECK(with_target(4) == 2);
  CHECK(with_target(6) == 3);
  CHECK(with_target(8) == 4);
  CHECK(with_target(3) == 1);
  CHECK(with_target(12) == 6);
  CHECK(RankAllocator(*net, RankAllocatorOptions().lora_r(1).target_total_rank(40)).incre_rank_num() == 5);
}

TEST_CASE("The allocator rejects bad options with a message that says what to change", "[allocator][errors]") {
  TinyNet net(4, 4, SVDLinearOptions(1, 1).r(1).capacity(4));
  auto make = [&](RankAllocatorOptions o) { RankAllocator allocator(*net, o); };
  const auto base = RankAllocatorOptions().lora_r(1).target_rank(2);
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).lora_r(0)), HasSubstring("lora_r must be >= 1"));
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).lora_r(2)), HasSubstring("has rank 1 but lora_r is 2"));
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).target_rank(0)), HasSubstring("target_rank must be >= 1"));
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).target_total_rank(3)), HasSubstring("below the initial total rank"));
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).beta1(1.0)), HasSubstring("beta1 must be in (0, 1)"));
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).beta2(0.0)), HasSubstring("beta2 must be in (0, 1)"));
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).top_h(0)), HasSubstring("top_h"));
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).incre_interval(0)), HasSubstring("incre_interval"));
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).target_rank(5)), HasSubstring("raise the layers' capacity"));
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).advance_learn(true).incre_rank_num(4)),
                    HasSubstring("capacity(5)"));
  // 4 layers, 1 → 2: 4 rounds of 1 at steps 200, 300, 400, 500 — not before step 450.
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).init_warmup(100).incre_interval(100).top_h(1).total_step(450)),
                    HasSubstring("does not fit in total_step = 450"));
  CHECK_NOTHROW(make(RankAllocatorOptions(base).init_warmup(100).incre_interval(100).top_h(1).total_step(501)));

  torch::nn::Sequential plain(torch::nn::Linear(3, 3));
  CHECK_THROWS_WITH(RankAllocator(*plain, base), HasSubstring("no SVDLinear layer with an adapter"));
}

TEST_CASE("update_and_increase checks the optimizer and the model", "[allocator][errors]") {
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  TinyNet other(4, 2, SVDLinearOptions(1, 1).r(1));
  RankAllocator allocator(*net, RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(5));
  torch::optim::SGD wrong(other->parameters(), torch::optim::SGDOptions(0.1));
  CHECK_THROWS_WITH(allocator.update_and_increase(*net, 0, wrong),
                    HasSubstring("optimizer does not hold the adapter parameters of layer 'fc0'"));
  torch::optim::SGD right(net->parameters(), torch::optim::SGDOptions(0.1));
  CHECK_NOTHROW(allocator.update_and_increase(*net, 0, right));
  CHECK_THROWS_WITH(allocator.update_and_increase(*other, 1, right), HasSubstring("different model"));
}

TEST_CASE("The allocator's state restores into a fresh allocator: pattern, round, scores and armed sinks",
          "[allocator][state]") {
  auto options = RankAllocatorOptions().lora_r(1).target_rank(3).init_warmup(3).incre_interval(3).top_h(1)
                     .incre_rank_num(1).total_step(100);
  torch::manual_seed(5);
  TinyNet net(6, 3, SVDLinearOptions(1, 1).r(1).lora_alpha(4));
  RankAllocator allocator(*net, options);
  train(net, allocator, 7);
  const auto state = allocator.state();

  // A fresh allocator is built over a fresh model at the initial rank; then the adapter is restored (tensors
  // and rank state), then the allocator's state.
  TinyNet fresh(6, 3, SVDLinearOptions(1, 1).r(1).lora_alpha(4));
  RankAllocator restored(*fresh, options);
  {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < fresh->fc.size(); ++i) {
      auto dst = fresh->fc[i]->named_parameters();
      for (const auto& p : net->fc[i]->named_parameters()) dst[p.key()].copy_(p.value());
      auto dst_buffers = fresh->fc[i]->named_buffers();
      for (const auto& b : net->fc[i]->named_buffers()) dst_buffers[b.key()].copy_(b.value());
      fresh->fc[i]->sync_rank_state();
    }
  }
  restored.load_state(state);
  CHECK(restored.rank_pattern() == allocator.rank_pattern());
  CHECK(restored.round() == allocator.round());
  CHECK(torch::equal(restored.scores(), allocator.scores()));
  CHECK(restored.modules()[0].second->score_sink().defined() == allocator.modules()[0].second->score_sink().defined());
}

TEST_CASE("Windowed scoring gives the scores of the exact every-step EMA", "[allocator][window]") {
  // The score of each step is injected through the reduce hook: S_t = base_i (1 + 5 % · sin(1.7 t + i)).
  const std::vector<double> base{1.0, 2.0, 0.5};
  int64_t step = 0;
  auto inject = [&](torch::Tensor& s) {
    for (int64_t i = 0; i < s.numel(); ++i) {
      s[i].fill_(base[i] * (1.0 + 0.05 * std::sin(1.7 * static_cast<double>(step) + static_cast<double>(i))));
    }
  };
  TinyNet net_exact(4, 3, SVDLinearOptions(1, 1).r(1)), net_window(4, 3, SVDLinearOptions(1, 1).r(1));
  const auto options = RankAllocatorOptions().lora_r(1).target_rank(3).init_warmup(100).incre_interval(100).top_h(1)
                           .reduce_scores(inject);
  RankAllocator exact(*net_exact, RankAllocatorOptions(options).exact_scoring(true));
  RankAllocator windowed(*net_window, options);
  for (step = 0; step < 200; ++step) {  // up to the step before the first allocation (200)
    exact.update_and_increase(*net_exact, step);
    windowed.update_and_increase(*net_window, step);
  }
  const auto a = exact.scores(), b = windowed.scores();
  for (int64_t i = 0; i < 3; ++i) {
    INFO("layer " << i << ": exact " << a[i].item<double>() << ", windowed " << b[i].item<double>());
    CHECK(b[i].item<double>() == Approx(a[i].item<double>()).epsilon(0.10));
  }
}

TEST_CASE("A non-finite score does not poison the EMAs", "[allocator][score]") {
  int64_t calls = 0;
  TinyNet net(4, 3, SVDLinearOptions(1, 1).r(1));
  RankAllocator allocator(*net, RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(50).exact_scoring(true)
                                    .reduce_scores([&](torch::Tensor& s) {
                                      s.fill_(1.0);
                                      if (calls++ == 1) s[2].fill_(std::numeric_limits<float>::infinity());
                                    }));
  for (int64_t step = 0; step < 5; ++step) allocator.update_and_increase(*net, step);
  CHECK(torch::isfinite(allocator.scores()).all().item<bool>());
}

TEST_CASE("Random allocation grows layers drawn by its seed on the same schedule, scoring nothing",
          "[allocator][ablation]") {
  auto choices = [](uint64_t seed) {
    TinyNet net(4, 8, SVDLinearOptions(1, 1).r(1));
    RankAllocator allocator(*net, RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(2).top_h(2)
                                      .incre_rank_num(1).total_step(20).random_allocation(true).random_seed(seed));
    std::vector<std::string> grown;
    for (int64_t step = 0; step < 20; ++step) {
      for (const auto& e : allocator.update_and_increase(*net, step)) {
        CHECK(e.new_rank == e.old_rank + 1);
        grown.push_back(e.module);
      }
      for (const auto& [name, layer] : allocator.modules()) CHECK_FALSE(layer->score_sink().defined());
    }
    CHECK(allocator.budget_met());
    CHECK(allocator.total_rank() == 16);
    return grown;
  };
  const auto a = choices(1);
  CHECK(a.size() == 8);  // 4 rounds of 2
  CHECK(choices(1) == a);
  // Every score is 0 here, so the score's order would always start fc0, fc1: the draws differ from it.
  int differs = 0;
  for (uint64_t seed = 0; seed < 6; ++seed) {
    const auto c = choices(seed);
    differs += !(c[0] == "fc0" && c[1] == "fc1");
  }
  CHECK(differs >= 4);
}

TEST_CASE("The library sizes bank capacity for a plan", "[allocator][options]") {
  const auto o = RankAllocatorOptions().lora_r(1).target_rank(2);
  CHECK(increlora::rank_budget(o, 36) == 72);
  CHECK(increlora::resolved_incre_rank_num(o, 36) == 1);
  CHECK(increlora::recommended_capacity(o, 36) == 16);  // 4 × 2 + 1 reserve, at least 16
  CHECK(increlora::recommended_capacity(RankAllocatorOptions(o).target_rank(8), 36) == 4 * 8 + 4);
  // target_total_rank counts too: 360 over 36 layers is an average of 10, reserve 5.
  CHECK(increlora::recommended_capacity(RankAllocatorOptions(o).target_total_rank(360), 36) == 45);
  CHECK(increlora::recommended_capacity(RankAllocatorOptions(o).target_rank(8).advance_learn(false), 36) == 32);
  // The sizing fits the allocator's own checks.
  TinyNet net(4, 6, SVDLinearOptions(1, 1).r(1).capacity(increlora::recommended_capacity(
                                                  RankAllocatorOptions(o).target_rank(8), 6)));
  CHECK_NOTHROW(RankAllocator(*net, RankAllocatorOptions(o).target_rank(8)));
}

TEST_CASE("Non-finite scores never grow a layer and leave the EMAs finite", "[allocator][non_finite]") {
  torch::manual_seed(21);
  TinyNet net(6, 3, SVDLinearOptions(1, 1).r(1).lora_alpha(4));
  std::vector<std::string> lines;
  RankAllocator allocator(*net, RankAllocatorOptions().lora_r(1).target_rank(2).init_warmup(4).incre_interval(4)
                                    .top_h(1).incre_rank_num(1).exact_scoring(true).total_step(40)
                                    .log([&lines](const std::string& l) { lines.push_back(l); }));
  const auto good = torch::randn({8, 6});
  auto bad = good.clone();
  bad[0][0] = std::numeric_limits<float>::quiet_NaN();
  auto step = [&](int64_t t, const torch::Tensor& x) {
    for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();
    net->forward(x).pow(2).sum().backward();
    return allocator.update_and_increase(*net, t);
  };
  for (int64_t t = 0; t < 6; ++t) CHECK(step(t, t == 5 ? bad : good).empty());  // step 5: a NaN in the window
  CHECK(torch::isfinite(allocator.scores()).all().item<bool>());
  // Step 8 is an allocation step whose own scores are NaN: the round is skipped and runs at step 9.
  CHECK(step(6, good).empty());
  CHECK(step(7, good).empty());
  const auto skipped = step(8, bad);
  REQUIRE(skipped.size() == 1);
  CHECK(skipped[0].skipped_non_finite);
  CHECK(skipped[0].module.empty());
  CHECK(skipped[0].non_finite_steps == 2);  // steps 5 and 8
  CHECK(allocator.total_rank() == 3);
  CHECK(allocator.round() == 0);
  CHECK_THAT(lines.back(), HasSubstring("skipped"));
  const auto ran = step(9, good);
  REQUIRE(ran.size() == 1);
  CHECK_FALSE(ran[0].skipped_non_finite);
  CHECK(ran[0].non_finite_steps == 2);
  CHECK(ran[0].new_rank == 2);
  CHECK(allocator.total_rank() == 4);
  CHECK(torch::isfinite(allocator.scores()).all().item<bool>());
  // The next round comes at step 12 as planned, with no non-finite step to report.
  for (int64_t t = 10; t < 12; ++t) CHECK(step(t, good).empty());
  const auto next = step(12, good);
  REQUIRE(next.size() == 1);
  CHECK(next[0].non_finite_steps == 0);
  CHECK(allocator.state().non_finite_steps == 0);
}

TEST_CASE("update_and_increase refuses a step it has seen or one that goes back", "[allocator][errors]") {
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  RankAllocator allocator(*net, RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(5));
  allocator.update_and_increase(*net, 3);
  CHECK_THROWS_WITH(allocator.update_and_increase(*net, 3), HasSubstring("step 3 does not come after step 3"));
  CHECK_THROWS_WITH(allocator.update_and_increase(*net, 1), HasSubstring("step 1 does not come after step 3"));
  CHECK_NOTHROW(allocator.update_and_increase(*net, 7));  // gaps are allowed
  // The last step seen is part of the state: a restored allocator continues after it.
  RankAllocator restored(*net, RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(5));
  restored.load_state(allocator.state());
  CHECK_THROWS_WITH(restored.update_and_increase(*net, 7), HasSubstring("does not come after step 7"));
}

TEST_CASE("Plans that cannot meet the budget are refused at construction", "[allocator][errors]") {
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1).capacity(4));
  auto make = [&](RankAllocatorOptions o) { RankAllocator allocator(*net, o); };
  const auto base = RankAllocatorOptions().lora_r(1).target_rank(2).incre_rank_num(1);
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).top_h(3)), HasSubstring("only 2 adapted layers"));
  // Total capacity 8 holds a budget of 8, but rounds of 1 layer × 2 reach at most 2 + 2 + 1 = 5 more rank in
  // the 3 planned rounds: the layers fill up (room 3 each) before the budget.
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).target_total_rank(8).incre_rank_num(2).top_h(1)
                             .advance_learn(false)),
                    HasSubstring("fill up before the budget"));
  CHECK_NOTHROW(make(RankAllocatorOptions(base).target_total_rank(8).incre_rank_num(1).top_h(2)));
  CHECK_THROWS_WITH(make(RankAllocatorOptions(base).init_warmup(std::numeric_limits<int64_t>::max() - 2)
                             .incre_interval(1000)),
                    HasSubstring("overflow"));
}

TEST_CASE("compute_orth_regu refuses a weight that is not a finite number >= 0", "[regularization][errors]") {
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  CHECK_THROWS_WITH(increlora::compute_orth_regu(*net, std::nan("")), HasSubstring("regu_weight must be"));
  CHECK_THROWS_WITH(increlora::compute_orth_regu(*net, -0.1), HasSubstring("regu_weight must be"));
  CHECK_NOTHROW(increlora::compute_orth_regu(*net, 0.0));
}

TEST_CASE("Gradient accumulation: micro-batches score as the one big batch they make up", "[allocator][accumulation]") {
  const auto device_name = GENERATE(from_range(devices()));
  const torch::Device device(device_name);
  INFO("device " << device_name);
  torch::manual_seed(3);
  TinyNet net(6, 3, SVDLinearOptions(1, 1).r(1).lora_alpha(2).capacity(4));
  net->to(device);
  {
    torch::NoGradGuard no_grad;
    for (auto& layer : net->fc) layer->lora_E.normal_();
  }
  const auto opts = torch::TensorOptions().device(device);
  const auto x = torch::randn({8, 6}, opts), target = torch::randn({8, 6}, opts);
  const auto options = RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(10).top_h(1).exact_scoring(true);
  // Each run from the same adapter, one allocator each: what they score at step 0 is compared.
  const auto scores_of = [&](int64_t micro_batches, double loss_scale) {
    RankAllocator allocator(*net, RankAllocatorOptions(options).gradient_accumulation_steps(micro_batches));
    for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();
    const int64_t rows = 8 / micro_batches;
    for (int64_t k = 0; k < micro_batches; ++k) {
      const auto xs = x.narrow(0, k * rows, rows), ts = target.narrow(0, k * rows, rows);
      ((net->forward(xs) - ts).pow(2).mean() * (loss_scale / static_cast<double>(micro_batches))).backward();
    }
    if (loss_scale != 1.0) allocator.set_gradient_scale(loss_scale);
    const auto grad = net->fc[1]->lora_B.grad().clone();
    allocator.update_and_increase(*net, 0);
    return std::make_pair(allocator.scores(), grad / loss_scale);
  };
  const auto [big, big_grad] = scores_of(1, 1.0);
  const auto [accumulated, accumulated_grad] = scores_of(4, 1.0);
  CHECK(big.min().item<float>() > 0.0f);
  CHECK_ALLCLOSE(accumulated_grad, big_grad, 1e-5, 1e-7);  // the gradients are the big batch's...
  CHECK_ALLCLOSE(accumulated, big, 1e-4, 1e-12);           // ...and so are the scores
  // Summing per-micro-batch scores instead (|g1| + |g2| ≠ |g1 + g2|) would not give the big batch's.
  RankAllocator per_pass(*net, options);
  for (auto& p : net->parameters()) p.mutable_grad() = torch::Tensor();
  for (int64_t k = 0; k < 4; ++k) {
    ((net->forward(x.narrow(0, 2 * k, 2)) - target.narrow(0, 2 * k, 2)).pow(2).mean() / 4.0).backward();
  }
  per_pass.update_and_increase(*net, 0);
  CHECK(max_abs_diff(per_pass.scores(), big) > 1e-3 * big.abs().max().item<double>());
  // fp16 loss scaling: scores of a loss × 1024 divided back by set_gradient_scale.
  const auto [scaled, scaled_grad] = scores_of(2, 1024.0);
  CHECK_ALLCLOSE(scaled, big, 1e-4, 1e-12);
  CHECK_THROWS_WITH(per_pass.set_gradient_scale(0.0), HasSubstring("positive finite"));
  CHECK_THROWS_WITH(RankAllocator(*net, RankAllocatorOptions(options).gradient_accumulation_steps(0)),
                    HasSubstring("gradient_accumulation_steps must be >= 1"));
}

TEST_CASE("start_from_current_ranks grows from imported ranks to the budget", "[allocator][import]") {
  torch::manual_seed(4);
  TinyNet net(4, 3, SVDLinearOptions(1, 1).r(1).capacity(8));
  net->fc[0]->assign(torch::randn({4, 3}), torch::rand({3}), torch::randn({3, 4}));
  const auto options = RankAllocatorOptions().lora_r(1).target_total_rank(9).incre_interval(2).top_h(2)
                           .incre_rank_num(1).total_step(20);
  CHECK_THROWS_WITH(RankAllocator(*net, options), HasSubstring("start_from_current_ranks(true)"));
  RankAllocator allocator(*net, RankAllocatorOptions(options).start_from_current_ranks(true));
  CHECK(allocator.total_rank() == 5);
  CHECK(allocator.planned_rounds() == 2);
  train(net, allocator, 10);
  CHECK(allocator.total_rank() == 9);
  CHECK(allocator.budget_met());
}
