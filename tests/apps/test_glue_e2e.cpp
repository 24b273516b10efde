// The glue program end to end on CPU: a few IncreLoRA steps on SST-2, CoLA and MRPC with the shared data and
// all-MiniLM-L6-v2, the rank budget met, and the metrics, rank pattern and log written.
#include "program_runs.hpp"
#include "support.hpp"

#include <increlora/report.hpp>
#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include <sys/wait.h>

namespace {

using increlora::test::read_json;
using increlora::test::read_text;
using increlora::test::run;

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
  CHECK_THAT(stderr_text(), HasSubstring("--learning_rate: expected a finite number, got 'fast'"));
  CHECK(run(std::string(INCRELORA_GLUE_EXE) + " --task_name sst2 --advance_learn maybe 2> " + log) == 2);
  CHECK_THAT(stderr_text(), HasSubstring("unexpected argument 'maybe'"));
  CHECK(run(std::string(INCRELORA_GLUE_EXE) + " --task_name sst2 2> " + log) == 2);
  CHECK_THAT(stderr_text(), HasSubstring("--data_dir is required"));
  // Under torchrun: several ranks need CUDA (NCCL), and a malformed variable is named.
  const std::string launch = "RANK=1 WORLD_SIZE=2 LOCAL_RANK=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29531 ";
  CHECK(run(launch + INCRELORA_GLUE_EXE + " --task_name sst2 --data_dir x --device cpu 2> " + log) == 2);
  CHECK_THAT(stderr_text(), HasSubstring("launched as rank 1 of 2 on the CPU; data-parallel runs need one CUDA device"));
  CHECK(run(std::string("RANK=one WORLD_SIZE=2 ") + INCRELORA_GLUE_EXE + " --task_name sst2 --data_dir x 2> " + log) != 0);
  CHECK_THAT(stderr_text(), HasSubstring("RANK=\"one\" is not a whole number"));
}

TEST_CASE("A GLUE run stopped in the middle of the allocation phase resumes from its checkpoint bit for bit",
          "[bert][glue][e2e][checkpoint]") {
  // The same run three ways: straight through; stopped after step 6 with a checkpoint at step 4 (rounds at 4, 6,
  // 8: one done, one just past, one to come); resumed from that checkpoint. Also the head alone (no adapters).
  const auto variant = GENERATE(std::string(""), std::string("--apply_lora False"));
  INFO("variant '" << variant << "'");
  const auto root = std::filesystem::path(INCRELORA_BERT_OUTPUT_DIR) / "resume";
  const std::string tag = variant.empty() ? "increlora" : "head";
  const auto straight = root / (tag + "-straight"), stopped = root / (tag + "-stopped");
  std::filesystem::create_directories(root);
  for (const auto& dir : {straight, stopped}) {
    for (const char* f : {"metrics.json", "log.jsonl", "checkpoint/trainer_state.json"}) std::remove((dir / f).c_str());
  }
  // One CPU thread per run: a CI run once saw the losses after the resume differ in their last bits (shown
  // equal to 6 digits) while another test loaded the 2-core machine. A resumed run repeats the straight run's
  // arithmetic; the likeliest cause is a CPU kernel that splits a reduction over however many threads it gets
  // (MKL picks that per call with MKL_DYNAMIC on) and so rounds differently. With one thread nothing can vary.
  const std::string base = std::string("OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 MKL_DYNAMIC=FALSE ") +
                           INCRELORA_GLUE_EXE + " --task_name mrpc --data_dir " +
                           increlora::test::shared_dir() + "/data/glue/MRPC --model_dir " + INCRELORA_MINILM_DIR +
                           " --device cpu --max_steps 10 --per_device_train_batch_size 8 --max_seq_length 32"
                           " --max_eval_samples 32 --eval_steps 5 --logging_steps 2 --lora_r 1 --target_rank 2"
                           " --init_warmup 2 --incre_interval 2 --top_h 12 --lora_dropout 0.1 --weight_decay 0.01"
                           " --learning_rate 1e-3 --warmup_steps 2 --seed 11 " + variant + " --root_output_dir ";
  REQUIRE(run(base + straight.string() + " > " + straight.string() + ".stdout 2>&1") == 0);
  REQUIRE(run(base + stopped.string() + " --save_steps 4 --stop_after_step 6 > " + stopped.string() +
              ".stdout1 2>&1") == 0);
  CHECK_FALSE(std::filesystem::exists(stopped / "metrics.json"));
  REQUIRE(std::filesystem::exists(stopped / "checkpoint" / "trainer_state.json"));
  REQUIRE(run(base + stopped.string() + " --resume_from_checkpoint " + (stopped / "checkpoint").string() + " > " +
              stopped.string() + ".stdout2 2>&1") == 0);

  const auto a = read_json(straight / "metrics.json"), b = read_json(stopped / "metrics.json");
  CHECK(b["final"]["step"] == 10);
  CHECK(b["evaluations"].size() == 2);
  CHECK(b["final"]["eval_f1"] == a["final"]["eval_f1"]);
  CHECK(b["evaluations"][0]["eval_accuracy"] == a["evaluations"][0]["eval_accuracy"]);
  CHECK(b["total_rank"] == a["total_rank"]);
  // The training losses of the steps after the checkpoint, bit for bit (the log is appended on resume).
  auto losses = [](const std::filesystem::path& log_path) {
    std::map<int64_t, double> by_step;  // a later line for the same step (the resumed run's) wins
    std::ifstream log(log_path);
    std::string line;
    while (std::getline(log, line)) {
      const auto j = nlohmann::json::parse(line);
      if (j["event"] == "train") by_step[j["step"].get<int64_t>()] = j["loss"].get<double>();
    }
    return by_step;
  };
  const auto la = losses(straight / "log.jsonl"), lb = losses(stopped / "log.jsonl");
  REQUIRE(la.size() == 5);
  CHECK(lb == la);
  if (variant.empty()) {
    CHECK(read_json(stopped / "rank_pattern.json") == read_json(straight / "rank_pattern.json"));
  }
  // A checkpoint is refused by a run with other training flags, naming the flag.
  const auto err = (root / (tag + "-mismatch.stderr")).string();
  CHECK(run(base + stopped.string() + " --learning_rate 2e-3 --resume_from_checkpoint " +
            (stopped / "checkpoint").string() + " > /dev/null 2> " + err) == 2);
  std::ifstream in(err);
  const std::string text(std::istreambuf_iterator<char>(in), {});
  CHECK_THAT(text, HasSubstring("--learning_rate"));
}

TEST_CASE("The adapter folder a GLUE run writes reproduces its final dev metric exactly", "[bert][glue][e2e]") {
  const auto variant = GENERATE(std::string(""), std::string("--apply_lora False"));
  INFO("variant '" << variant << "'");
  const auto root = std::filesystem::path(INCRELORA_BERT_OUTPUT_DIR) / "reproduce";
  std::filesystem::create_directories(root);
  const std::string tag = variant.empty() ? "increlora" : "head";
  const auto trained = root / tag, evaluated = root / (tag + "-eval");
  for (const auto& dir : {trained, evaluated}) std::remove((dir / "metrics.json").c_str());
  const std::string common = std::string(INCRELORA_GLUE_EXE) + " --task_name mrpc --data_dir " +
                             increlora::test::shared_dir() + "/data/glue/MRPC --model_name_or_path " +
                             INCRELORA_MINILM_DIR + " --device cpu --max_seq_length 32 --max_eval_samples 40 "
                             "--lora_r 1 --target_rank 2 --lora_dropout 0.1 " + variant;
  REQUIRE(run(common + " --max_steps 10 --per_device_train_batch_size 8 --eval_steps 10 --init_warmup 2"
                       " --incre_interval 2 --top_h 12 --learning_rate 2e-3 --warmup_steps 2 --seed 5"
                       " --lora_type svd --report_to none --root_output_dir " + trained.string() + " > " +
              trained.string() + ".stdout 2>&1") == 0);
  REQUIRE(run(common + " --do_train False --adapter_dir " + (trained / "adapter").string() + " --root_output_dir " +
              evaluated.string() + " > " + evaluated.string() + ".stdout 2>&1") == 0);
  const auto a = read_json(trained / "metrics.json"), b = read_json(evaluated / "metrics.json");
  CHECK(b["final"]["eval_f1"] == a["final"]["eval_f1"]);
  CHECK(b["final"]["eval_accuracy"] == a["final"]["eval_accuracy"]);
  CHECK(b["total_rank"] == a["total_rank"]);
  // Flags kept for the seed's command lines say that they do nothing.
  std::ifstream out(trained.string() + ".stdout");
  const std::string text(std::istreambuf_iterator<char>(out), {});
  CHECK_THAT(text, HasSubstring("glue: --report_to has no effect here"));
}

TEST_CASE("The glue program refuses a model name that is not a local checkpoint directory", "[bert][glue][errors]") {
  const auto log = (std::filesystem::path(INCRELORA_BERT_OUTPUT_DIR) / "model-name.stderr").string();
  CHECK(run(std::string(INCRELORA_GLUE_EXE) + " --task_name mrpc --data_dir x --model_name_or_path "
            "microsoft/deberta-v3-base 2> " + log) == 2);
  std::ifstream in(log);
  const std::string text(std::istreambuf_iterator<char>(in), {});
  CHECK_THAT(text, HasSubstring("not a local directory"));
}

namespace {

// all-MiniLM-L6-v2 without dropout (config.json rewritten, the rest linked): runs that must agree to rounding.
std::filesystem::path dropout_free_model(const std::filesystem::path& root) {
  namespace fs = std::filesystem;
  const auto dir = root / "minilm-no-dropout";
  fs::create_directories(dir);
  for (const auto& entry : fs::directory_iterator(INCRELORA_MINILM_DIR)) {
    const auto name = entry.path().filename();
    if (name == "config.json" || fs::exists(fs::symlink_status(dir / name))) continue;
    fs::create_symlink(fs::absolute(entry.path()), dir / name);
  }
  auto config = read_json(std::filesystem::path(INCRELORA_MINILM_DIR) / "config.json");
  config["hidden_dropout_prob"] = 0.0;
  config["attention_probs_dropout_prob"] = 0.0;
  std::ofstream(dir / "config.json") << config.dump(2);
  return dir;
}

std::map<int64_t, double> train_losses(const std::filesystem::path& log_path) {
  std::map<int64_t, double> by_step;
  std::ifstream log(log_path);
  for (std::string line; std::getline(log, line);) {
    const auto j = nlohmann::json::parse(line);
    if (j["event"] == "train") by_step[j["step"].get<int64_t>()] = j["loss"].get<double>();
  }
  return by_step;
}

}  // namespace

TEST_CASE("Gradient accumulation trains as the batch it adds up to in losses and ranks and dev metric",
          "[bert][glue][e2e][accumulation]") {
  const auto root = std::filesystem::path(INCRELORA_BERT_OUTPUT_DIR) / "accumulation";
  std::filesystem::create_directories(root);
  const auto model = dropout_free_model(root);
  const std::string common = std::string(INCRELORA_GLUE_EXE) + " --task_name mrpc --data_dir " +
                             increlora::test::shared_dir() + "/data/glue/MRPC --model_dir " + model.string() +
                             " --device cpu --max_steps 10 --max_seq_length 32 --max_eval_samples 32 --eval_steps 10"
                             " --logging_steps 1 --lora_r 1 --target_rank 2 --init_warmup 2 --incre_interval 2"
                             " --top_h 12 --lora_dropout 0 --cls_dropout 0 --learning_rate 2e-3 --warmup_steps 2"
                             " --seed 13 --root_output_dir ";
  const auto big = root / "batch8", accumulated = root / "batch2x4";
  REQUIRE(run(common + big.string() + " --per_device_train_batch_size 8 > " + big.string() + ".stdout 2>&1") == 0);
  REQUIRE(run(common + accumulated.string() + " --per_device_train_batch_size 2 --gradient_accumulation_steps 4 > " +
              accumulated.string() + ".stdout 2>&1") == 0);
  const auto la = train_losses(big / "log.jsonl"), lb = train_losses(accumulated / "log.jsonl");
  REQUIRE(la.size() == 10);
  REQUIRE(lb.size() == 10);
  for (const auto& [step, loss] : la) {
    INFO("step " << step);
    CHECK(lb.at(step) == Approx(loss).epsilon(1e-4));
  }
  CHECK(read_json(accumulated / "rank_pattern.json") == read_json(big / "rank_pattern.json"));
  const auto a = read_json(big / "metrics.json"), b = read_json(accumulated / "metrics.json");
  CHECK(b["gradient_accumulation_steps"] == 4);
  CHECK(b["final"]["eval_accuracy"].get<double>() == Approx(a["final"]["eval_accuracy"].get<double>()).margin(1e-9));
}

TEST_CASE("With load_best_model_at_end the run keeps the best evaluation's model, and its adapter folder reproduces it",
          "[bert][glue][e2e]") {
  const auto root = std::filesystem::path(INCRELORA_BERT_OUTPUT_DIR) / "best";
  std::filesystem::create_directories(root);
  const auto trained = root / "run", evaluated = root / "run-eval";
  const std::string common = std::string(INCRELORA_GLUE_EXE) + " --task_name mrpc --data_dir " +
                             increlora::test::shared_dir() + "/data/glue/MRPC --model_dir " + INCRELORA_MINILM_DIR +
                             " --device cpu --max_seq_length 32 --max_eval_samples 40 --lora_r 1 --target_rank 2";
  REQUIRE(run(common + " --max_steps 12 --per_device_train_batch_size 8 --eval_steps 2 --init_warmup 2"
                       " --incre_interval 2 --top_h 12 --learning_rate 5e-3 --warmup_steps 2 --seed 9"
                       " --load_best_model_at_end --root_output_dir " + trained.string() + " > " + trained.string() +
              ".stdout 2>&1") == 0);
  const auto m = read_json(trained / "metrics.json");
  REQUIRE(m["evaluations"].size() == 6);
  double best = -1;
  for (const auto& e : m["evaluations"]) best = std::max(best, e["eval_f1"].get<double>());
  CHECK(m["best"]["eval_f1"].get<double>() == best);
  CHECK(m["final"]["loaded_best_model"] == true);
  CHECK(m["final"]["eval_f1"].get<double>() == best);  // the kept model is the best one, evaluated again
  CHECK(m["final"]["step"] == m["best"]["step"]);
  REQUIRE(run(common + " --do_train False --adapter_dir " + (trained / "adapter").string() + " --root_output_dir " +
              evaluated.string() + " > " + evaluated.string() + ".stdout 2>&1") == 0);
  CHECK(read_json(evaluated / "metrics.json")["final"]["eval_f1"].get<double>() == best);
  // The curves of the run beside the heatmap.
  std::ifstream svg(trained / "training_curves.svg");
  std::string head;
  std::getline(svg, head);
  CHECK(head.rfind("<svg", 0) == 0);
}

TEST_CASE("The glue program trains under bf16 autocast on the CPU", "[bert][glue][e2e][bf16]") {
  const auto out = std::filesystem::path(INCRELORA_BERT_OUTPUT_DIR) / "bf16";
  const std::string command = std::string(INCRELORA_GLUE_EXE) + " --task_name sst2 --data_dir " +
                              increlora::test::shared_dir() + "/data/glue/SST-2 --model_dir " + INCRELORA_MINILM_DIR +
                              " --device cpu --bf16 --max_steps 10 --per_device_train_batch_size 8 --max_seq_length 32"
                              " --max_eval_samples 32 --eval_steps 10 --logging_steps 5 --init_warmup 2"
                              " --incre_interval 2 --top_h 12 --seed 2 --root_output_dir " + out.string();
  REQUIRE(run(command + " > " + out.string() + ".stdout 2>&1") == 0);
  const auto m = read_json(out / "metrics.json");
  CHECK(m["precision"] == "bf16");
  CHECK(m["final"]["eval_accuracy"].get<double>() > 0.0);
  for (const auto& [step, loss] : train_losses(out / "log.jsonl")) CHECK(std::isfinite(loss));
  const auto err = (out.string() + ".both.stderr");
  CHECK(run(command + " --fp16 > /dev/null 2> " + err) == 2);
  std::ifstream in(err);
  CHECK_THAT(std::string(std::istreambuf_iterator<char>(in), {}), HasSubstring("--bf16 and --fp16 exclude each other"));
}
