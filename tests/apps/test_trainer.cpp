// The shared trainer on a small synthetic task: gradient accumulation equals the big batch (eagerly and
// through GraphedStep), the data order is run_glue's, and the outputs of a run.
#include "support.hpp"

#include <increlora/apps/launch.hpp>
#include <increlora/apps/trainer.hpp>

#include <torch/nn/functional/loss.h>
#include <torch/nn/modules/linear.h>

#include "temp_dir.hpp"
#include "thread_backend.hpp"

#include <filesystem>
#include <fstream>
#include <map>
#include <set>

using increlora::test::TempDir;

namespace {

struct RegressorImpl : torch::nn::Module {
  RegressorImpl() {
    for (int i = 0; i < 3; ++i) {
      fc.push_back(register_module("fc" + std::to_string(i),
                                   increlora::SVDLinear(increlora::SVDLinearOptions(8, 8).r(1).lora_alpha(4).capacity(8))));
    }
    head = register_module("head", torch::nn::Linear(8, 1));
  }
  torch::Tensor forward(torch::Tensor x) {
    for (auto& layer : fc) x = torch::tanh(layer(x));
    return head(x).squeeze(1);
  }
  std::vector<increlora::SVDLinear> fc;
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Regressor);

struct Run {
  std::map<std::string, int64_t> ranks;
  std::vector<torch::Tensor> params;
};

Run train(int64_t batch, int64_t accumulation, const std::string& out, const std::string& device_name) {
  const torch::Device device(device_name);
  torch::manual_seed(7);
  const auto x = torch::randn({40, 8}), y = torch::randn({40});
  Regressor model;
  model->to(device);
  increlora::apps::TrainerOptions o;
  o.program = "test";
  o.output_dir = out;
  o.device = device;
  o.train_batch_size = batch;
  o.gradient_accumulation_steps = accumulation;
  o.total_steps = 16;
  o.learning_rate = 1e-2;
  o.warmup_steps = 2;
  o.logging_steps = 4;
  o.eval_steps = 6;
  o.main_metric = "neg_mse";
  o.head_prefixes = {"head."};
  o.cuda_graphs = device.is_cuda();
  o.allocator = increlora::RankAllocatorOptions().lora_r(1).target_rank(3).init_warmup(2).incre_interval(2).top_h(1);
  increlora::apps::Trainer trainer(*model, o);
  increlora::apps::TrainingTask task;
  task.num_examples = 40;
  task.collate = [&](const std::vector<size_t>& idx) {
    std::vector<int64_t> rows(idx.begin(), idx.end());
    const auto index = torch::tensor(rows);
    return std::vector<torch::Tensor>{x.index_select(0, index).to(device), y.index_select(0, index).to(device)};
  };
  task.loss = [&](const std::vector<torch::Tensor>& in) {
    return torch::nn::functional::mse_loss(model->forward(in[0]), in[1]);
  };
  task.evaluate = [&] {
    return increlora::apps::Metrics{{"neg_mse", -torch::nn::functional::mse_loss(model->forward(x.to(device)),
                                                                                y.to(device)).item<double>()}};
  };
  const auto result = trainer.train(task, /*print=*/false);
  trainer.write_outputs(result, "test", {{"task", "synthetic"}});
  Run run;
  run.ranks = trainer.allocator()->rank_pattern();
  for (const auto& p : model->parameters()) {
    if (p.requires_grad()) run.params.push_back(p.detach().to(torch::kCPU).clone());
  }
  return run;
}

}  // namespace

TEST_CASE("The trainer's gradient accumulation equals the batch it adds up to", "[apps][trainer][accumulation]") {
  const auto device = GENERATE(from_range(increlora::test::devices()));
  INFO("device " << device);
  TempDir dir;
  const auto big = train(8, 1, dir.file("big"), device);
  const auto accumulated = train(2, 4, dir.file("accumulated"), device);
  CHECK(big.ranks == accumulated.ranks);
  REQUIRE(big.params.size() == accumulated.params.size());
  for (size_t i = 0; i < big.params.size(); ++i) CHECK_ALLCLOSE(accumulated.params[i], big.params[i], 1e-4, 1e-5);
  // The outputs of a finished run.
  for (const char* f : {"metrics.json", "log.jsonl", "rank_pattern.json", "rank_heatmap.svg", "training_curves.svg",
                        "adapter/adapter.safetensors", "adapter/head.safetensors"}) {
    INFO(f);
    CHECK(std::filesystem::exists(dir.file(std::string("big/") + f)));
  }
}

TEST_CASE("The sampler shuffles each epoch from one seeded generator and restores its state", "[apps][trainer]") {
  increlora::apps::EpochSampler a(10, 3), b(10, 3);
  std::set<size_t> seen;
  for (int k = 0; k < 3; ++k) {
    for (auto i : a.next(4)) seen.insert(i);
  }
  CHECK(seen.size() == 10);  // batches of 4, 4, 2: the epoch's last batch is short
  CHECK(a.epoch() == 0);
  CHECK(a.next(4).size() == 4);
  CHECK(a.epoch() == 1);
  for (int k = 0; k < 4; ++k) b.next(4);
  b.load_state(a.state());
  CHECK(a.next(4) == b.next(4));
  CHECK(increlora::apps::steps_per_epoch(10, 4, 1) == 3);
  CHECK(increlora::apps::steps_per_epoch(10, 4, 2) == 2);
  increlora::apps::EpochSampler other(9, 3);
  CHECK_THROWS_WITH(other.load_state(a.state()), HasSubstring("covers 10 examples but this run has 9"));
}

TEST_CASE("Data parallel ranks share each global batch as DistributedSampler does and resume at another world size",
          "[apps][trainer][distributed]") {
  using increlora::apps::EpochSampler;
  constexpr int64_t kWorld = 3;
  constexpr size_t kBatch = 2;
  // 13 examples, global batches of 6: 6, 6, and a last one of 1 filled up to 3 with the epoch's first examples.
  EpochSampler one(13, 7);
  std::vector<EpochSampler> ranks;
  for (int64_t r = 0; r < kWorld; ++r) ranks.emplace_back(13, 7, r, kWorld);
  for (int epoch = 0; epoch < 2; ++epoch) {
    std::vector<size_t> permutation;
    std::vector<std::vector<size_t>> global_batches;
    for (int k = 0; k < 3; ++k) {
      std::vector<std::vector<size_t>> shares;
      for (auto& r : ranks) shares.push_back(r.next(kBatch));
      std::vector<size_t> global;  // interleaved back: position j of the global batch is rank j % world's
      for (size_t j = 0; j < kBatch * kWorld; ++j) {
        const auto& share = shares[j % kWorld];
        if (j / kWorld < share.size()) global.push_back(share[j / kWorld]);
      }
      for (const auto& share : shares) CHECK(share.size() == shares.front().size());  // equal steps everywhere
      global_batches.push_back(global);
    }
    // The world of one, asked for the global batch size, gives the same examples (the last one unpadded).
    const auto a = one.next(kBatch * kWorld), b = one.next(kBatch * kWorld), c = one.next(kBatch * kWorld);
    CHECK(global_batches[0] == a);
    CHECK(global_batches[1] == b);
    REQUIRE(c.size() == 1);
    CHECK(global_batches[2] == std::vector<size_t>{c[0], a[0], a[1]});
    for (auto& r : ranks) CHECK(r.epoch() == epoch);
  }
  // The state counts examples of the whole permutation: two ranks resume what three left.
  for (auto& r : ranks) r.next(kBatch);
  EpochSampler two_a(13, 0, 0, 2), two_b(13, 0, 1, 2);
  two_a.load_state(ranks[0].state());
  two_b.load_state(ranks[0].state());
  EpochSampler reference(13, 0);
  reference.load_state(ranks[0].state());
  const auto ra = two_a.next(kBatch), rb = two_b.next(kBatch);
  const auto expected = reference.next(kBatch * 2);
  CHECK(std::vector<size_t>{ra[0], rb[0], ra[1], rb[1]} == expected);
  CHECK(increlora::apps::steps_per_epoch(13, 2, 1, 3) == 3);
  CHECK_THROWS_WITH(EpochSampler(5, 1, 2, 2), HasSubstring("rank 2 of world size 2"));
}

namespace {

// The synthetic regression trained by `world` ranks (threads over ThreadBackend), each with `batch` examples of
// every global batch; world 0: one process without a group. Replicas are built from different seeds, as
// processes that drew their heads and adapters apart would be. Returns each rank's trained tensors and pattern.
std::vector<Run> train_data_parallel(int world, int64_t batch, const std::string& out) {
  torch::manual_seed(7);
  const auto x = torch::randn({40, 8}), y = torch::randn({40});
  const int ranks_n = std::max(world, 1);
  std::vector<Regressor> models;
  for (int r = 0; r < ranks_n; ++r) {
    torch::manual_seed(100 + r);
    models.emplace_back();
  }
  auto ranks = world > 0 ? increlora::test::make_ranks(world) : std::vector<increlora::test::Rank>{};
  std::vector<Run> runs(static_cast<size_t>(ranks_n));
  auto body = [&](int r) {
    auto& model = models[static_cast<size_t>(r)];
    increlora::apps::TrainerOptions o;
    o.program = "test";
    o.output_dir = out;
    o.train_batch_size = batch;
    o.total_steps = 16;
    o.learning_rate = 1e-2;
    o.warmup_steps = 2;
    o.logging_steps = 4;
    o.eval_steps = 8;
    o.main_metric = "neg_mse";
    o.head_prefixes = {"head."};
    o.allocator = increlora::RankAllocatorOptions().lora_r(1).target_rank(3).init_warmup(2).incre_interval(2).top_h(1);
    if (world > 0) o.process_group = ranks[static_cast<size_t>(r)].group;
    increlora::apps::Trainer trainer(*model, o);
    increlora::apps::TrainingTask task;
    task.num_examples = 40;
    task.collate = [&](const std::vector<size_t>& idx) {
      std::vector<int64_t> rows(idx.begin(), idx.end());
      const auto index = torch::tensor(rows);
      return std::vector<torch::Tensor>{x.index_select(0, index), y.index_select(0, index)};
    };
    task.loss = [&](const std::vector<torch::Tensor>& in) {
      return torch::nn::functional::mse_loss(model->forward(in[0]), in[1]);
    };
    task.evaluate = [&] {
      return increlora::apps::Metrics{{"neg_mse", -torch::nn::functional::mse_loss(model->forward(x), y).item<double>()}};
    };
    const auto result = trainer.train(task, /*print=*/false);
    if (trainer.writes_outputs()) trainer.write_outputs(result, "test", {{"task", "synthetic"}});
    auto& run = runs[static_cast<size_t>(r)];
    run.ranks = trainer.allocator()->rank_pattern();
    for (const auto& p : model->parameters()) {
      if (p.requires_grad()) run.params.push_back(p.detach().clone());
    }
  };
  if (world > 0) {
    increlora::test::on_every_rank(world, body);
  } else {
    body(0);
  }
  return runs;
}

}  // namespace

TEST_CASE("Data-parallel trainers keep identical replicas and a world of one trains as one process",
          "[apps][trainer][distributed]") {
  TempDir dir;
  // A group of one runs every collective, yet trains bit for bit as the run without a group.
  const auto alone = train_data_parallel(0, 8, dir.file("alone"));
  const auto one = train_data_parallel(1, 8, dir.file("one"));
  CHECK(one[0].ranks == alone[0].ranks);
  REQUIRE(one[0].params.size() == alone[0].params.size());
  for (size_t i = 0; i < alone[0].params.size(); ++i) CHECK(torch::equal(one[0].params[i], alone[0].params[i]));

  // Three ranks built from different seeds, each training 4 of every 12 examples: the replicas end identical
  // (broadcast at the start and after growth, averaged gradients and scores), and only rank 0 wrote files.
  const auto three = train_data_parallel(3, 4, dir.file("three"));
  for (size_t r = 1; r < three.size(); ++r) {
    INFO("rank " << r);
    CHECK(three[r].ranks == three[0].ranks);
    REQUIRE(three[r].params.size() == three[0].params.size());
    for (size_t i = 0; i < three[0].params.size(); ++i) CHECK(torch::equal(three[r].params[i], three[0].params[i]));
  }
  int64_t total = 0;
  for (const auto& [name, rank] : three[0].ranks) total += rank;
  CHECK(total == 9);
  CHECK(std::filesystem::exists(dir.file("three/metrics.json")));
  CHECK(std::filesystem::exists(dir.file("three/adapter/adapter.safetensors")));
  // One writer: 16 steps give 4 train lines and 2 evaluations, none twice.
  std::ifstream log(dir.file("three/log.jsonl"));
  std::map<std::string, int64_t> events;
  for (std::string line; std::getline(log, line);) {
    if (!line.empty()) ++events[nlohmann::json::parse(line).at("event").get<std::string>()];
  }
  CHECK(events["train"] == 4);
  CHECK(events["eval"] == 2);
}

TEST_CASE("A Launch ends its process group: shutdown after a normal run, abort while an error unwinds",
          "[apps][trainer][distributed]") {
  auto ranks = increlora::test::make_ranks(2);
  {
    increlora::apps::Launch launch;
    launch.group = ranks[0].group;
    increlora::apps::Launch moved(std::move(launch));  // one owner: the moved-from Launch ends nothing
  }
  CHECK(ranks[0].backend->shutdowns == 1);
  CHECK(ranks[0].backend->aborts == 0);
  try {
    increlora::apps::Launch launch;
    launch.group = ranks[1].group;
    throw std::runtime_error("a rank failed");
  } catch (const std::runtime_error&) {
  }
  CHECK(ranks[1].backend->shutdowns == 0);
  CHECK(ranks[1].backend->aborts == 1);
  increlora::apps::Launch single;  // a plain single process has no group: nothing to end
  CHECK_FALSE(single.group);
}
