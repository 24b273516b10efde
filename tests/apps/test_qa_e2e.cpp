// The qa program end to end on CPU: a few IncreLoRA steps of SQuAD v2 on the shared sample (training on most of
// its paragraphs, evaluating on the rest) with all-MiniLM-L6-v2; the budget met, the official metrics and the
// prediction files written, and the metrics equal to those recomputed from predictions.json.
#include "program_runs.hpp"
#include "support.hpp"

#include <increlora/tasks/squad.hpp>

#include <nlohmann/json.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <sys/wait.h>

namespace {

using increlora::test::read_json;
using increlora::test::read_text;
using increlora::test::run;

std::string sample_path() { return increlora::test::shared_dir() + "/data/qa/squad_v2_sample.json"; }

}  // namespace

TEST_CASE("A few-step SQuAD v2 run trains with IncreLoRA and writes the official metrics and predictions",
          "[bert][qa][e2e]") {
  const auto out = std::filesystem::path(INCRELORA_APPS_OUTPUT_DIR) / "qa-squad-v2";
  for (const char* f : {"metrics.json", "predictions.json", "null_odds.json", "nbest_predictions.json", "log.jsonl",
                        "rank_pattern.json", "args.json"}) {
    std::remove((out / f).c_str());
  }
  std::filesystem::create_directories(out);
  // 36 adapted layers from rank 1 to an average of 2: 3 rounds of top_h 12 at steps 3, 5, 7.
  const std::string command =
      std::string(INCRELORA_QA_EXE) + " --dataset_name " + sample_path() + " --version_2_with_negative" +
      " --model_name_or_path " + INCRELORA_MINILM_DIR + " --root_output_dir " + out.string() +
      " --device cpu --max_steps 10 --per_device_train_batch_size 8 --max_seq_length 160 --doc_stride 48"
      " --validation_split_percentage 10 --eval_steps 10 --logging_steps 5 --lora_r 1 --target_rank 2"
      " --init_warmup 3 --incre_interval 2 --top_h 12 --incre_rank_num 1 --lora_alpha 16 --learning_rate 1e-3"
      " --warmup_steps 2 --seed 9 --n_best_size 10 --max_answer_length 30 --experiment_name e2e";
  INFO(command);
  const auto stdout_path = out.string() + ".stdout";
  REQUIRE(run(command + " > " + stdout_path + " 2>&1") == 0);
  INFO(read_text(stdout_path));

  const auto metrics = read_json(out / "metrics.json");
  CHECK(metrics["task"] == "squad_v2");
  CHECK(metrics["main_metric"] == "eval_f1");
  CHECK(metrics["total_rank"] == metrics["budget"]);
  const auto& final = metrics["final"];
  CHECK(final["step"] == 10);
  const auto total = final["eval_total"].get<double>();
  CHECK(final["eval_HasAns_total"].get<double>() + final["eval_NoAns_total"].get<double>() == total);
  // The tuned threshold can only do better than the fixed one.
  CHECK(final["eval_best_f1"].get<double>() >= final["eval_f1"].get<double>() - 1e-9);
  CHECK(final["eval_best_exact"].get<double>() >= final["eval_exact"].get<double>() - 1e-9);

  // The held-out questions: whole paragraphs of the sample (about 10 % of them), each with a prediction.
  const auto examples = increlora::squad::read_squad(sample_path());
  std::map<std::string, const increlora::squad::SquadExample*> by_id;
  std::map<std::string, std::pair<int, int>> per_context;  // questions held out / in all
  const auto predictions = read_json(out / "predictions.json");
  for (const auto& e : examples) {
    by_id[e.id] = &e;
    auto& c = per_context[e.context];
    c.second += 1;
    c.first += predictions.contains(e.id);
  }
  CHECK(static_cast<double>(predictions.size()) == total);
  size_t held_out_paragraphs = 0;
  for (const auto& [context, counts] : per_context) {
    CHECK((counts.first == 0 || counts.first == counts.second));
    held_out_paragraphs += counts.first > 0;
  }
  CHECK(held_out_paragraphs >= 7);  // 10 % of 83
  CHECK(held_out_paragraphs <= 9);

  // Every answer is a span of its context; null_odds and the n-best lists cover the same questions.
  std::map<std::string, std::string> answers;
  for (const auto& [id, text] : predictions.items()) {
    REQUIRE(by_id.count(id));
    const auto answer = text.get<std::string>();
    if (!answer.empty()) CHECK(by_id[id]->context.find(answer) != std::string::npos);
    answers[id] = answer;
  }
  const auto odds_json = read_json(out / "null_odds.json");
  CHECK(odds_json.size() == predictions.size());
  std::map<std::string, double> odds;
  for (const auto& [id, v] : odds_json.items()) odds[id] = v.get<double>();
  const auto nbest = read_json(out / "nbest_predictions.json");
  CHECK(nbest.size() == predictions.size());
  for (const auto& [id, list] : nbest.items()) {
    CHECK(list.size() >= 1);
    CHECK(list.size() <= 11);  // n_best_size candidates and the null answer
    double sum = 0;
    for (const auto& c : list) sum += c["probability"].get<double>();
    CHECK(sum == Approx(1.0).margin(1e-4));
  }

  // The metrics are the official ones of these files.
  std::vector<increlora::squad::SquadExample> held_out;
  for (const auto& e : examples) {
    if (answers.count(e.id)) held_out.push_back(e);
  }
  const auto again = increlora::squad::evaluate(held_out, answers, odds, /*na_prob_thresh=*/0.0);
  CHECK(again.at("exact") == Approx(final["eval_exact"].get<double>()).margin(1e-9));
  CHECK(again.at("f1") == Approx(final["eval_f1"].get<double>()).margin(1e-9));
  CHECK(again.at("best_f1") == Approx(final["eval_best_f1"].get<double>()).margin(1e-9));

  // Allocations happened and training losses are finite.
  std::ifstream log(out / "log.jsonl");
  std::string line;
  int alloc = 0, train = 0;
  while (std::getline(log, line)) {
    const auto j = nlohmann::json::parse(line);
    alloc += j["event"] == "allocation";
    if (j["event"] == "train") {
      ++train;
      CHECK(std::isfinite(j["loss"].get<double>()));
    }
  }
  CHECK(alloc > 0);
  CHECK(train == 2);
}

TEST_CASE("The qa program names what is wrong with its data flags", "[bert][qa][e2e][errors]") {
  const auto out = std::filesystem::path(INCRELORA_APPS_OUTPUT_DIR);
  std::filesystem::create_directories(out);
  const auto log = (out / "qa-flags.stderr").string();
  const std::string qa = std::string(INCRELORA_QA_EXE) + " --model_name_or_path " + INCRELORA_MINILM_DIR +
                         " --device cpu --root_output_dir " + (out / "qa-flags").string();
  CHECK(run(qa + " --dataset_name squad_v2 2> " + log) == 2);
  CHECK_THAT(read_text(log), HasSubstring("download the SQuAD files and pass their folder"));
  // A v2 file (unanswerable questions) without --version_2_with_negative.
  CHECK(run(qa + " --dataset_name " + sample_path() + " --max_steps 1 2> " + log) == 2);
  CHECK_THAT(read_text(log), HasSubstring("needs --version_2_with_negative"));
  CHECK(run(qa + " 2> " + log) == 2);
  CHECK_THAT(read_text(log), HasSubstring("--dataset_name (a SQuAD file or folder)"));
  CHECK(run(qa + " --dataset_name " + sample_path() + " --version_2_with_negative --max_seq_length 64 --doc_stride "
            "60 --max_steps 1 2> " + log) == 2);
  CHECK_THAT(read_text(log), HasSubstring("lower --doc_stride"));
}

TEST_CASE("glue and qa run on a DeBERTa-v3 checkpoint with its SentencePiece tokenizer", "[deberta][qa][glue][e2e]") {
  // The seed's commands work on microsoft/deberta-v3-base but for the path: here a small random checkpoint of the
  // same shape (tests/apps/make_deberta_checkpoint.py), a few steps each on CPU, the budget met.
  const std::string model = INCRELORA_DEBERTA_TINY_DIR;
  const auto root = std::filesystem::path(INCRELORA_APPS_OUTPUT_DIR) / "deberta";
  std::filesystem::create_directories(root);
  const std::string schedule = " --device cpu --max_steps 10 --per_device_train_batch_size 8 --lora_r 1 --target_rank 2"
                               " --init_warmup 2 --incre_interval 2 --top_h 4 --incre_rank_num 1 --learning_rate 1e-3"
                               " --warmup_steps 2 --eval_steps 10 --logging_steps 5 --seed 3"
                               " --lora_module query,key,value,intermediate,layer.output,attention.output";
  struct Run {
    std::string name, command, metric;
  };
  const auto run_case = GENERATE_COPY(
      Run{"glue-mrpc", std::string(INCRELORA_GLUE_EXE) + " --task_name mrpc --data_dir " +
                           increlora::test::shared_dir() + "/data/glue/MRPC --max_seq_length 64 --max_eval_samples 40",
          "eval_f1"},
      Run{"qa-squad-v2", std::string(INCRELORA_QA_EXE) + " --dataset_name " + sample_path() +
                             " --version_2_with_negative --max_seq_length 128 --doc_stride 32"
                             " --validation_split_percentage 5",
          "eval_f1"});
  INFO(run_case.name);
  const auto out = root / run_case.name;
  std::remove((out / "metrics.json").c_str());
  const auto command = run_case.command + " --model_name_or_path " + model + " --root_output_dir " + out.string() +
                       schedule;
  INFO(command);
  const auto stdout_path = out.string() + ".stdout";
  REQUIRE(run(command + " > " + stdout_path + " 2>&1") == 0);
  INFO(read_text(stdout_path));
  const auto metrics = read_json(out / "metrics.json");
  CHECK(metrics["total_rank"] == metrics["budget"]);
  CHECK(metrics["budget"] == 24);  // 2 layers x 6 modules, from rank 1 to 2 on average
  CHECK(metrics["final"].contains(run_case.metric));
  CHECK(read_json(out / "args.json")["model_type"] == "deberta-v2");
  const auto ranks = read_json(out / "rank_pattern.json");
  CHECK(ranks.size() == 12);
  for (const auto& [name, r] : ranks.items()) CHECK(name.rfind("deberta.encoder.layer.", 0) == 0);
}
