// distributed.hpp without a GPU: the torchrun environment, the sharding, and the collectives (score reduction,
// bucketed gradient averaging, parameter broadcast) over an in-process c10d backend whose ranks are threads
// (thread_backend.hpp).
#include "support.hpp"

#include <increlora/distributed.hpp>

#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "thread_backend.hpp"

#include <torch/optim/adamw.h>

#include <algorithm>
#include <numeric>
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace dist = increlora::distributed;
using increlora::RankAllocator;
using increlora::RankAllocatorOptions;
using increlora::SVDLinearOptions;
using increlora::test::make_ranks;
using increlora::test::on_every_rank;
using increlora::test::TinyNet;

namespace {

std::function<std::optional<std::string>(const std::string&)> env_of(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const std::string& name) -> std::optional<std::string> {
    const auto it = vars.find(name);
    if (it == vars.end()) return std::nullopt;
    return it->second;
  };
}

}  // namespace

TEST_CASE("The torchrun environment is read exactly, and bad values name the variable", "[distributed][env]") {
  const auto single = dist::parse_environment(env_of({}));
  CHECK_FALSE(single.launched);
  CHECK(single.rank == 0);
  CHECK(single.world_size == 1);

  const auto env = dist::parse_environment(env_of({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"},
                                                    {"MASTER_ADDR", "10.0.0.7"}, {"MASTER_PORT", "29512"}}));
  CHECK(env.launched);
  CHECK(env.rank == 3);
  CHECK(env.world_size == 4);
  CHECK(env.local_rank == 1);
  CHECK(env.master_addr == "10.0.0.7");
  CHECK(env.master_port == 29512);
  CHECK_FALSE(env.agent_store);
  CHECK(dist::parse_environment(env_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"TORCHELASTIC_USE_AGENT_STORE", "True"}}))
            .agent_store);
  CHECK_FALSE(dist::parse_environment(env_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"TORCHELASTIC_USE_AGENT_STORE",
                                                                                   "False"}})).agent_store);

  // torchrun --nproc_per_node 1 sets all five; a world of one needs no master address.
  const auto one = dist::parse_environment(env_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}}));
  CHECK(one.launched);
  CHECK(one.local_rank == 0);
  CHECK(one.master_addr == "127.0.0.1");
  CHECK(one.master_port == 29500);

  const std::map<std::string, std::string> good{{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"LOCAL_RANK", "1"},
                                                {"MASTER_ADDR", "localhost"}, {"MASTER_PORT", "29500"}};
  auto with = [&](const std::string& name, std::optional<std::string> value) {
    auto vars = good;
    if (value) {
      vars[name] = *value;
    } else {
      vars.erase(name);
    }
    return env_of(vars);
  };
  CHECK_THROWS_WITH(dist::parse_environment(with("RANK", "one")), HasSubstring("RANK=\"one\" is not a whole number"));
  CHECK_THROWS_WITH(dist::parse_environment(with("RANK", " 1")), HasSubstring("RANK=\" 1\""));
  CHECK_THROWS_WITH(dist::parse_environment(with("RANK", "2")), HasSubstring("RANK=2 must be in 0..WORLD_SIZE-1"));
  CHECK_THROWS_WITH(dist::parse_environment(with("RANK", "-1")), HasSubstring("RANK=-1"));
  CHECK_THROWS_WITH(dist::parse_environment(with("WORLD_SIZE", "0")), HasSubstring("WORLD_SIZE=0 must be >= 1"));
  CHECK_THROWS_WITH(dist::parse_environment(with("WORLD_SIZE", std::nullopt)),
                    HasSubstring("RANK is set but WORLD_SIZE is not"));
  CHECK_THROWS_WITH(dist::parse_environment(with("LOCAL_RANK", "2")), HasSubstring("LOCAL_RANK=2"));
  CHECK_THROWS_WITH(dist::parse_environment(with("MASTER_ADDR", std::nullopt)), HasSubstring("needs MASTER_ADDR"));
  CHECK_THROWS_WITH(dist::parse_environment(with("MASTER_PORT", std::nullopt)), HasSubstring("needs MASTER_PORT"));
  CHECK_THROWS_WITH(dist::parse_environment(with("MASTER_PORT", "70000")), HasSubstring("MASTER_PORT=70000"));
  CHECK_THROWS_WITH(dist::parse_environment(with("MASTER_PORT", "29500x")), HasSubstring("MASTER_PORT=\"29500x\""));
  CHECK_THROWS_WITH(dist::parse_environment(with("WORLD_SIZE", "99999999999999999999")),
                    HasSubstring("is not a whole number"));
}

TEST_CASE("Every rank gets an equal share of one agreed permutation", "[distributed][shard]") {
  for (size_t size : {0u, 1u, 7u, 64u, 101u}) {
    for (int64_t world : {1, 2, 3, 8}) {
      INFO("size " << size << ", world " << world);
      const auto perm = dist::epoch_permutation(size, 42, 3);
      // A permutation, the same whenever it is asked for, and another one in the next epoch or with another seed.
      auto sorted = perm;
      std::sort(sorted.begin(), sorted.end());
      std::vector<size_t> iota(size);
      std::iota(iota.begin(), iota.end(), size_t{0});
      CHECK(sorted == iota);
      CHECK(dist::epoch_permutation(size, 42, 3) == perm);
      if (size > 4) {
        CHECK(dist::epoch_permutation(size, 42, 4) != perm);
        CHECK(dist::epoch_permutation(size, 43, 3) != perm);
      }
      if (size == 0) continue;
      // kPad: equal shares that together hold every example, the shortfall filled from the permutation's start.
      std::multiset<size_t> seen;
      for (int64_t r = 0; r < world; ++r) {
        const auto part = dist::shard_indices(size, 42, 3, r, world);
        CHECK(part.size() == (size + world - 1) / world);
        CHECK(part.size() == dist::shard_size(size, world));
        for (size_t k = 0; k < part.size(); ++k) CHECK(part[k] == perm[(r + k * world) % size]);
        seen.insert(part.begin(), part.end());
      }
      CHECK(std::set<size_t>(seen.begin(), seen.end()).size() == size);
      CHECK(seen.size() == dist::shard_size(size, world) * world);
      // kDrop: the first size / world * world examples of the permutation, each exactly once.
      if (size >= static_cast<size_t>(world)) {
        std::vector<size_t> dropped;
        for (int64_t r = 0; r < world; ++r) {
          const auto part = dist::shard_indices(size, 42, 3, r, world, dist::Remainder::kDrop);
          CHECK(part.size() == size / world);
          dropped.insert(dropped.end(), part.begin(), part.end());
        }
        std::sort(dropped.begin(), dropped.end());
        auto head = std::vector<size_t>(perm.begin(), perm.begin() + static_cast<int64_t>(size / world * world));
        std::sort(head.begin(), head.end());
        CHECK(dropped == head);
      }
      // A world of one is the permutation itself.
      CHECK(dist::shard(perm, 0, 1) == perm);
    }
  }
  CHECK_THROWS_WITH(dist::shard({1, 2, 3}, 3, 3), HasSubstring("rank 3 must be in 0..2"));
  CHECK_THROWS_WITH(dist::shard({1, 2}, 0, 3, dist::Remainder::kDrop), HasSubstring("use fewer ranks or Remainder::kPad"));
  CHECK_THROWS_WITH(dist::shard_size(5, 0), HasSubstring("world_size must be >= 1"));
}

TEST_CASE("all_reduce_mean averages and a world of one changes nothing", "[distributed][collectives]") {
  constexpr int kWorld = 3;
  auto ranks = make_ranks(kWorld);
  std::vector<torch::Tensor> values;
  for (int r = 0; r < kWorld; ++r) values.push_back(torch::arange(4, torch::kFloat) * (r + 1));
  on_every_rank(kWorld, [&](int r) { dist::all_reduce_mean(ranks[static_cast<size_t>(r)].group, values[r]); });
  for (const auto& v : values) CHECK(torch::equal(v, torch::arange(4, torch::kFloat) * 2));

  auto alone = make_ranks(1);
  auto x = torch::randn({5});
  const auto before = x.clone();
  dist::all_reduce_mean(alone[0].group, x);
  CHECK(torch::equal(x, before));
}

TEST_CASE("The bucketed gradient average equals a plain sum over the ranks and leaves frozen weights alone",
          "[distributed][gradients]") {
  constexpr int kWorld = 3;
  auto ranks = make_ranks(kWorld);
  // Per rank: trainable tensors of mixed sizes and dtypes, one without a gradient this step, one frozen.
  auto shapes = std::vector<std::vector<int64_t>>{{7, 5}, {300}, {2, 3, 4}, {1}, {64, 33}};
  std::vector<std::vector<torch::Tensor>> params(kWorld);
  std::vector<torch::Tensor> frozen_grads;
  torch::manual_seed(5);
  for (int r = 0; r < kWorld; ++r) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      const auto dtype = i == 2 ? torch::kDouble : torch::kFloat;
      auto p = torch::zeros(shapes[i], dtype).requires_grad_(true);
      if (i != 3) p.mutable_grad() = torch::randn(shapes[i], dtype);  // tensor 3 has no gradient this step
      params[r].push_back(p);
    }
    auto frozen = torch::zeros({4});
    frozen.mutable_grad() = torch::randn({4});  // requires no gradient: never part of the reduction
    frozen_grads.push_back(frozen.grad().clone());
    params[r].push_back(frozen);
  }
  std::vector<torch::Tensor> expected;
  for (size_t i = 0; i < shapes.size(); ++i) {
    if (i == 3) {
      expected.emplace_back();
      continue;
    }
    auto sum = torch::zeros_like(params[0][i].grad());
    for (int r = 0; r < kWorld; ++r) sum.add_(params[r][i].grad());
    expected.push_back(sum / kWorld);
  }
  // 4 KB buckets: the 64×33 float tensor (8.4 KB) gets one of its own, the double tensor another (its dtype).
  std::vector<std::vector<std::vector<size_t>>> buckets(kWorld);
  on_every_rank(kWorld, [&](int r) {
    dist::GradientReducer reducer(ranks[static_cast<size_t>(r)].group, params[r],
                                  dist::GradientReducerOptions().bucket_mb(4.0 / 1024));
    reducer.reduce();
    buckets[r] = reducer.buckets();
  });
  for (int r = 0; r < kWorld; ++r) {
    INFO("rank " << r);
    for (size_t i = 0; i < shapes.size(); ++i) {
      INFO("tensor " << i);
      if (i == 3) {
        CHECK_FALSE(params[r][i].grad().defined());
      } else {
        CHECK(increlora::test::max_abs_diff(params[r][i].grad(), expected[i]) <= 1e-6);
        CHECK(params[r][i].grad().scalar_type() == expected[i].scalar_type());
      }
    }
    CHECK(torch::equal(params[r].back().grad(), frozen_grads[r]));
    CHECK(buckets[r] == std::vector<std::vector<size_t>>{{0, 1}, {2}, {4}});
    CHECK(ranks[r].backend->allreduces == 3);
  }
  CHECK_THROWS_WITH(dist::GradientReducer(ranks[0].group, {}, dist::GradientReducerOptions().bucket_mb(0)),
                    HasSubstring("bucket_mb must be > 0"));
}

TEST_CASE("broadcast_parameters gives every rank rank 0's tensors, views included", "[distributed][collectives]") {
  constexpr int kWorld = 3;
  auto ranks = make_ranks(kWorld);
  std::vector<std::vector<torch::Tensor>> tensors(kWorld);
  for (int r = 0; r < kWorld; ++r) {
    auto base = torch::full({4, 6}, static_cast<float>(r));
    tensors[r] = {torch::full({3}, static_cast<float>(r)), base.t()};  // a transposed view: not contiguous
  }
  on_every_rank(kWorld, [&](int r) { dist::broadcast_parameters(ranks[static_cast<size_t>(r)].group, tensors[r]); });
  for (int r = 0; r < kWorld; ++r) {
    CHECK(torch::equal(tensors[r][0], torch::zeros({3})));
    CHECK(torch::equal(tensors[r][1], torch::zeros({6, 4})));
  }
  CHECK_THROWS_WITH(dist::broadcast_parameters(ranks[0].group, tensors[0], 3), HasSubstring("root 3 is not a rank"));
}

TEST_CASE("Ranks fed different data grow the same layers through reduce_scores, and apart without it",
          "[distributed][allocator]") {
  constexpr int kWorld = 3;
  constexpr int64_t kSteps = 40;
  auto train = [&](bool reduce) {
    auto ranks = make_ranks(kWorld);
    // Identical replicas (one seed, built here since the global generator is not per thread), different data.
    std::vector<TinyNet> nets;
    std::vector<torch::Tensor> xs, ys;
    for (int r = 0; r < kWorld; ++r) {
      torch::manual_seed(77);
      nets.emplace_back(10, 5, SVDLinearOptions(1, 1).r(1).lora_alpha(8));
      torch::manual_seed(1000 + r);
      xs.push_back(torch::randn({16, 10}));
      ys.push_back(torch::tanh(torch::randn({16, 10}) * 2));
    }
    std::vector<std::map<std::string, int64_t>> patterns(kWorld);
    std::vector<increlora::RankAllocatorState> states(kWorld);
    std::vector<std::vector<torch::Tensor>> weights(kWorld);
    std::mutex growth_mutex;
    on_every_rank(kWorld, [&](int r) {
      auto& net = nets[static_cast<size_t>(r)];
      auto group = ranks[static_cast<size_t>(r)].group;
      auto options = RankAllocatorOptions().lora_r(1).target_rank(3).init_warmup(4).incre_interval(4).top_h(2)
                         .incre_rank_num(1).total_step(kSteps);
      // Growth draws the new triplets from the global generator, which processes have one each of and these
      // threads share: after the scores are reduced, each rank in turn draws from the same seed, as processes
      // started with one seed would.
      int64_t step = 0;
      std::unique_lock<std::mutex> drawing(growth_mutex, std::defer_lock);
      if (reduce) {
        options.reduce_scores([&, all_reduce = dist::reduce_scores(group)](torch::Tensor& score) {
          all_reduce(score);
          drawing.lock();
          torch::manual_seed(500 + step);
        });
      }
      drawing.lock();  // the advance-learning reserves are drawn here too
      torch::manual_seed(499);
      RankAllocator allocator(*net, options);
      drawing.unlock();
      torch::optim::AdamW optimizer(net->parameters(), torch::optim::AdamWOptions(1e-2));
      dist::GradientReducer reducer(group, net->parameters());
      for (; step < kSteps; ++step) {
        optimizer.zero_grad();
        auto loss = (net->forward(xs[r]) - ys[r]).pow(2).mean() + increlora::compute_orth_regu(*net, 0.1);
        loss.backward();
        reducer.reduce();  // replicas stay identical either way: only the scores are local
        allocator.update_and_increase(*net, step, optimizer);
        if (drawing.owns_lock()) drawing.unlock();
        optimizer.step();
      }
      patterns[r] = allocator.rank_pattern();
      states[r] = allocator.state();
      for (const auto& p : net->parameters()) weights[r].push_back(p.detach().clone());
    });
    return std::make_tuple(patterns, states, weights);
  };

  const auto [patterns, states, weights] = train(true);
  for (int r = 1; r < kWorld; ++r) {
    INFO("rank " << r);
    CHECK(patterns[r] == patterns[0]);
    CHECK(torch::equal(states[r].sensitivity, states[0].sensitivity));
    CHECK(torch::equal(states[r].uncertainty, states[0].uncertainty));
    REQUIRE(weights[r].size() == weights[0].size());
    for (size_t i = 0; i < weights[0].size(); ++i) CHECK(torch::equal(weights[r][i], weights[0][i]));
  }
  int64_t total = 0;
  for (const auto& kv : patterns[0]) total += kv.second;
  CHECK(total == 15);  // the budget was met
  // The control: without the reduction every rank scores its own data, and the EMAs part ways.
  const auto [local_patterns, local_states, local_weights] = train(false);
  bool apart = false;
  for (int r = 1; r < kWorld; ++r) apart |= !torch::equal(local_states[r].sensitivity, local_states[0].sensitivity);
  CHECK(apart);
}

TEST_CASE("end_process_group shuts a finished group down, aborts one left by an error, and ignores null",
          "[distributed][collectives]") {
  auto ranks = make_ranks(2);
  dist::end_process_group(ranks[0].group);
  dist::end_process_group(ranks[1].group, dist::GroupEnd::abort);
  CHECK(ranks[0].backend->shutdowns == 1);
  CHECK(ranks[0].backend->aborts == 0);
  CHECK(ranks[1].backend->shutdowns == 0);
  CHECK(ranks[1].backend->aborts == 1);
  CHECK_NOTHROW(dist::end_process_group(nullptr));
}

TEST_CASE("Under torchrun's agent store rank 0 connects to it instead of serving the port again",
          "[distributed][env]") {
  // The agent's store: a TCPStore server on a free port, as torchrun's agent holds one at MASTER_PORT.
  c10d::TCPStoreOptions agent_options;
  agent_options.port = 0;
  agent_options.isServer = true;
  agent_options.waitWorkers = false;
  agent_options.timeout = std::chrono::seconds(20);
  c10::intrusive_ptr<c10d::TCPStore> agent;
  try {
    agent = c10::make_intrusive<c10d::TCPStore>("127.0.0.1", agent_options);
  } catch (const std::exception& e) {
    WARN("no TCP server on loopback here, so this case cannot run: " << e.what());
    return;
  }

  auto env = dist::parse_environment(env_of({{"RANK", "0"}, {"WORLD_SIZE", "1"}, {"MASTER_ADDR", "127.0.0.1"},
                                             {"MASTER_PORT", std::to_string(agent->getPort())},
                                             {"TORCHELASTIC_USE_AGENT_STORE", "True"}}));
  auto store = dist::make_store(env, std::chrono::seconds(20));
  store->set("written_by_rank0", std::vector<uint8_t>{7});
  CHECK(agent->get("written_by_rank0") == std::vector<uint8_t>{7});  // one store: the agent's
}
