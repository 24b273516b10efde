// The summarize program end to end on CPU, on the shared XSum sample with a small random-initialised BART (the
// ctest fixture tiny_bart: scripts/make_tiny_bart.py): a short IncreLoRA run lowers the dev loss below the
// untrained model's, meets the rank budget, and writes ROUGE that equals what rouge::corpus_score gives on the
// predictions it wrote; bad flags are refused with a message naming the flag.
#include "program_runs.hpp"
#include "support.hpp"
#include "temp_dir.hpp"

#include <increlora/apps/training_flags.hpp>
#include <increlora/tasks/rouge.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <sys/wait.h>

namespace {

using increlora::test::read_json;
using increlora::test::read_text;
using increlora::test::run;

namespace fs = std::filesystem;

std::string tiny_bart() {
  const std::string dir = INCRELORA_TINY_BART_DIR;
  INFO("the tiny BART checkpoint " << dir << " (ctest fixture tiny_bart: scripts/make_tiny_bart.py)");
  REQUIRE(fs::exists(fs::path(dir) / "model.safetensors"));
  return dir;
}

std::string common_flags(const fs::path& out) {
  return std::string(INCRELORA_SUMMARIZE_EXE) + " --model_name_or_path " + tiny_bart() + " --dataset_name " +
         increlora::test::shared_dir() + "/data/summarization/xsum_sample.jsonl --validation_split_percentage 20" +
         " --output_dir " + out.string() + " --device cpu --max_source_length 192 --max_target_length 48" +
         " --val_max_target_length 32 --num_beams 2 --per_device_eval_batch_size 5 --seed 9";
}

}  // namespace

TEST_CASE("A short IncreLoRA summarization run lowers the dev loss and writes ROUGE and predictions",
          "[bart][summarize][e2e]") {
  const auto root = fs::path(INCRELORA_APPS_OUTPUT_DIR) / "summarize-xsum";
  increlora::test::remove_tree(root.string());
  fs::create_directories(root);

  // The untrained model: the dev loss to beat.
  const auto before = root / "before";
  const auto before_cmd = common_flags(before) + " --do_train False --apply_lora";
  INFO(before_cmd);
  REQUIRE(run(before_cmd + " > " + before.string() + ".stdout 2>&1") == 0);
  const double loss_before = read_json(before / "metrics.json")["final"]["eval_loss"].get<double>();

  // 40 training pairs, batch 8: 5 steps per epoch; 12 epochs. 32 adapted layers (q, k, v, out, fc1, fc2 of two
  // encoder layers; q, k, v, out of self- and cross-attention and fc1, fc2 of two decoder layers) grow from rank
  // 1 to an average of 2 with --schedule_strategy epoch: the budget is met by the end of epoch 6.
  const auto trained = root / "trained";
  const auto train_cmd =
      common_flags(trained) +
      " --apply_lora --apply_increlora --lora_type svd --target_rank 2 --lora_r 1 --lora_alpha 32 --lora_dropout 0."
      " --reg_orth_coef 0.1 --schedule_strategy epoch --incre_epoch 6 --init_warmup 5 --incre_interval 3000"
      " --top_h 4 --beta1 0.85 --beta2 0.85 --lora_module q_proj,k_proj,v_proj,out_proj,fc1,fc2"
      " --per_device_train_batch_size 8 --learning_rate 1e-2 --num_train_epochs 12 --num_warmup_steps 5"
      " --pad_to_max_length --with_tracking --max_length 768 --logging_steps 10";
  INFO(train_cmd);
  const auto stdout_path = trained.string() + ".stdout";
  REQUIRE(run(train_cmd + " > " + stdout_path + " 2>&1") == 0);
  INFO(read_text(stdout_path));

  const auto metrics = read_json(trained / "metrics.json");
  CHECK(metrics["task"] == "summarization");
  CHECK(metrics["main_metric"] == "eval_rougeL");
  CHECK(metrics["total_rank"] == metrics["budget"]);
  CHECK(metrics["budget"] == 64);
  const auto& final = metrics["final"];
  CHECK(final["step"] == 60);
  // Evaluated once per epoch, as the seed does.
  CHECK(metrics["evaluations"].size() == 12);
  const double loss_after = final["eval_loss"].get<double>();
  INFO("dev loss " << loss_before << " -> " << loss_after);
  CHECK(loss_after < loss_before - 0.5);

  // The interval --schedule_strategy epoch chose: 32 ranks to add at top_h 4 × 1 are 8 rounds after step 5, the
  // last by step 30 (the end of epoch 6).
  const auto args = read_json(trained / "args.json");
  CHECK(args["incre_interval"].get<int64_t>() == increlora::apps::interval_for_epoch(5, 8, 6, 5));

  // The predictions of the last evaluation: one per held-out pair, and the ROUGE in metrics.json is theirs.
  std::vector<std::string> predictions, references;
  std::ifstream in(trained / "predictions.jsonl");
  for (std::string line; std::getline(in, line);) {
    const auto row = nlohmann::json::parse(line);
    predictions.push_back(increlora::rouge::sentences_per_line(row["prediction"].get<std::string>()));
    references.push_back(increlora::rouge::sentences_per_line(row["reference"].get<std::string>()));
  }
  REQUIRE(predictions.size() == 10);
  const auto lines = read_text((trained / "generated_predictions.txt").string());
  CHECK(std::count(lines.begin(), lines.end(), '\n') == 10);
  const auto scores = increlora::rouge::corpus_score(references, predictions, {"rouge1", "rouge2", "rougeL",
                                                     "rougeLsum"}, /*use_stemmer=*/true);
  for (const char* type : {"rouge1", "rouge2", "rougeL", "rougeLsum"}) {
    INFO(type);
    CHECK(final["eval_" + std::string(type)].get<double>() == Approx(100.0 * scores.at(type).fmeasure).margin(1e-9));
  }
  CHECK(final["eval_gen_len"].get<double>() > 1.0);
  for (const char* f : {"rank_pattern.json", "log.jsonl", "adapter/adapter_config.json"}) {
    INFO(f);
    CHECK(fs::exists(trained / f));
  }

  // The saved adapter evaluates to the same dev loss (its layers and ranks read from the adapter folder).
  const auto reloaded = root / "reloaded";
  const auto eval_cmd =
      common_flags(reloaded) + " --do_train False --apply_lora --adapter_dir " + (trained / "adapter").string();
  INFO(eval_cmd);
  REQUIRE(run(eval_cmd + " > " + reloaded.string() + ".stdout 2>&1") == 0);
  CHECK(read_json(reloaded / "metrics.json")["final"]["eval_loss"].get<double>() ==
        Approx(loss_after).epsilon(1e-5));
}

TEST_CASE("summarize refuses flags it cannot honour, naming them", "[bart][summarize]") {
  const auto out = fs::path(INCRELORA_APPS_OUTPUT_DIR) / "summarize-bad-flags";
  struct Case {
    std::string flags, message;
  };
  const std::vector<Case> cases = {
      {"--lora_type frd", "--lora_type frd is not implemented"},
      {"--schedule_strategy epoch", "--incre_epoch"},
      {"--schedule_strategy sometimes", "--schedule_strategy must be step or epoch"},
      {"--lr_scheduler_type cosine", "--lr_scheduler_type cosine is not implemented"},
      {"--cuda_graphs", "--pad_to_max_length"},
      {"--label_smoothing 1.5", "--label_smoothing"},
      {"--metric_for_best_model bleu", "--metric_for_best_model"},
  };
  for (const auto& c : cases) {
    const auto log = out.string() + ".stderr";
    const auto command = common_flags(out) + " " + c.flags + " > " + log + " 2>&1";
    INFO(command);
    CHECK(run(command) == 2);
    const auto text = read_text(log);
    INFO(text);
    CHECK(text.find(c.message) != std::string::npos);
  }
}

TEST_CASE("interval_for_epoch puts the last allocation round at the end of the epoch or before",
          "[summarize][schedule]") {
  using increlora::apps::interval_for_epoch;
  for (int64_t warmup : {0, 5, 99, 3000}) {
    for (int64_t rounds : {1, 3, 15}) {
      for (int64_t epoch : {1, 6, 15}) {
        const int64_t per_epoch = 5101;
        const int64_t end = epoch * per_epoch;
        // Round k falls at (warmup / I + 1) I + (k - 1) I (the allocator's rule: t > init_warmup, t % I == 0).
        const auto last = [&](int64_t interval) { return (warmup / interval + rounds) * interval; };
        if (last(1) > end) {
          CHECK_THROWS_WITH(interval_for_epoch(warmup, rounds, epoch, per_epoch),
                            HasSubstring("--schedule_strategy epoch"));
          continue;
        }
        const auto interval = interval_for_epoch(warmup, rounds, epoch, per_epoch);
        INFO("warmup " << warmup << ", rounds " << rounds << ", epoch " << epoch << ": interval " << interval);
        CHECK(last(interval) <= end);
        CHECK(last(interval + 1) > end);  // the largest that fits (the rounds as spread out as they can be)
        CHECK((warmup / interval + 1) * interval > warmup);
      }
    }
  }
  CHECK_THROWS_WITH(interval_for_epoch(0, 3, 0, 10), HasSubstring("--incre_epoch"));
}
