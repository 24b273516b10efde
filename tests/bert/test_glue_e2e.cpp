// The glue program end to end on CPU: a few IncreLoRA steps on SST-2, CoLA and MRPC with the shared data and
// all-MiniLM-L6-v2, the rank budget met, and the metrics, rank pattern and log written.
#include "support.hpp"

#include <increlora/report.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>

#include <sys/wait.h>

namespace {

nlohmann::json read_json(const std::filesystem::path& path) {
  std::ifstream in(path);
  INFO("reading " << path);
  REQUIRE(in.good());
  nlohmann::json j;
  in >> j;
  return j;
}

int run(const std::string& command) {
  const int status = std::system(command.c_str());
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

}  // namespace

TEST_CASE("A few-step GLUE run trains with IncreLoRA and writes metrics, rank pattern and log", "[bert][glue][e2e]") {
  struct Task {
    std::string name, folder, metric, extra;
  };
  const auto task = GENERATE(Task{"sst2", "SST-2", "eval_accuracy", ""},
                             Task{"cola", "CoLA", "eval_matthews_correlation", "--advance_learn True --multi_lr True"},
                             Task{"mrpc", "MRPC", "eval_f1", "--lora_module query,value,layer.output"});
  INFO("task " << task.name);
  const auto out = std::filesystem::path(INCRELORA_BERT_OUTPUT_DIR) / task.name;
  // Remove what an earlier run wrote (file by file: libtorch.so's exported std::filesystem::remove_all crashes).
  for (const char* f : {"metrics.json", "rank_pattern.json", "log.jsonl", "args.json", "rank_pattern.csv",
                        "rank_heatmap.svg", "adapter/adapter.safetensors", "adapter/adapter_config.json"}) {
    std::remove((out / f).c_str());
  }
  std::filesystem::create_directories(out);
  // 6 layers x 6 modules = 36 adapted layers at rank 1; budget 2 x 36 = 72 → 3 rounds of top_h 12 at steps
  // 4, 6, 8 (MRPC: 3 modules per layer, 18 layers, budget 36 → 2 rounds of 12 with the last round partial).
  const std::string command = std::string(INCRELORA_GLUE_EXE) + " --task_name " + task.name + " --data_dir " +
                              increlora::test::shared_dir() + "/data/glue/" + task.folder + " --model_dir " +
                              INCRELORA_MINILM_DIR + " --root_output_dir " + out.string() +
                              " --device cpu --max_steps 10 --per_device_train_batch_size 8 --max_seq_length 32"
                              " --max_eval_samples 48 --eval_steps 5 --logging_steps 2 --lora_r 1 --target_rank 2"
                              " --init_warmup 2 --incre_interval 2 --top_h 12 --lora_alpha 16 --lora_dropout 0.1"
                              " --reg_orth_coef 0.1 --learning_rate 1e-3 --warmup_steps 2 --seed 7 " + task.extra;
  INFO(command);
  REQUIRE(run(command + " > " + (out.string() + ".stdout") + " 2>&1") == 0);

  const auto metrics = read_json(out / "metrics.json");
  CHECK(metrics["task"] == task.name);
  CHECK(metrics["main_metric"] == task.metric);
  CHECK(metrics["final"]["step"] == 10);
  CHECK(metrics["evaluations"].size() == 2);  // steps 5 and 10
  CHECK(metrics["final"].contains(task.metric));
  CHECK(metrics["total_rank"] == metrics["budget"]);

  const auto ranks = read_json(out / "rank_pattern.json");
  int64_t total = 0;
  for (const auto& [name, r] : ranks.items()) {
    CHECK(name.rfind("bert.encoder.layer.", 0) == 0);
    total += r.get<int64_t>();
  }
  CHECK(total == metrics["budget"].get<int64_t>());

  std::ifstream log(out / "log.jsonl");
  std::string line;
  int train = 0, eval = 0, alloc = 0;
  while (std::getline(log, line)) {
    const auto j = nlohmann::json::parse(line);
    train += j["event"] == "train";
    eval += j["event"] == "eval";
    alloc += j["event"] == "allocation";
    if (j["event"] == "train") CHECK(std::isfinite(j["loss"].get<double>()));
  }
  CHECK(train == 5);
  CHECK(eval == 2);
  CHECK(alloc > 0);
  CHECK(read_json(out / "args.json")["task_name"] == task.name);

  // The adapter and the rank report: the saved adapter carries the same pattern; the heatmap is an SVG.
  const auto saved = increlora::read_rank_pattern((out / "adapter").string());
  CHECK(static_cast<int64_t>(saved.size()) == static_cast<int64_t>(ranks.size()));
  for (const auto& [name, r] : ranks.items()) CHECK(saved.at(name) == r.get<int64_t>());
  std::ifstream svg(out / "rank_heatmap.svg");
  std::string head;
  std::getline(svg, head);
  CHECK(head.rfind("<svg", 0) == 0);
}

TEST_CASE("The glue program rejects unknown flags and bad values naming the flag", "[bert][glue][e2e][errors]") {
  const auto out = std::filesystem::path(INCRELORA_BERT_OUTPUT_DIR);
  std::filesystem::create_directories(out);
  const auto log = (out / "flags.stderr").string();
  auto stderr_text = [&] {
    std::ifstream in(log);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  CHECK(run(std::string(INCRELORA_GLUE_EXE) + " --task_name sst2 --no_such_flag 1 2> " + log) == 2);
  CHECK_THAT(stderr_text(), HasSubstring("unknown flag --no_such_flag. Known flags: --task_name, --data_dir"));
  CHECK(run(std::string(INCRELORA_GLUE_EXE) + " --task_name sst2 --learning_rate fast 2> " + log) == 2);
  CHECK_THAT(stderr_text(), HasSubstring("--learning_rate: expected a number, got 'fast'"));
  CHECK(run(std::string(INCRELORA_GLUE_EXE) + " --task_name sst2 --advance_learn maybe 2> " + log) == 2);
  CHECK_THAT(stderr_text(), HasSubstring("unexpected argument 'maybe'"));
  CHECK(run(std::string(INCRELORA_GLUE_EXE) + " --task_name sst2 2> " + log) == 2);
  CHECK_THAT(stderr_text(), HasSubstring("--data_dir is required"));
}
