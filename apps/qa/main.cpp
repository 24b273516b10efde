// Extractive question answering (SQuAD v1.1 / v2.0) with IncreLoRA on an encoder read from a Hugging Face
// checkpoint directory, with the flags of the seed's run_qa.py:
//
//   qa --model_name_or_path DIR --dataset_name squad_v2/ --version_2_with_negative --max_seq_length 384
//      --doc_stride 128 --target_rank 2 --lora_r 1 --top_h 1 --incre_rank_num 1 --init_warmup 1000
//      --incre_interval 1000 --lora_alpha 16 --per_device_train_batch_size 16 --learning_rate 1e-3
//      --num_train_epochs 14 --warmup_steps 1000 --advance_learn True --multi_lr True --root_output_dir out/squad
//
// --dataset_name is a local SQuAD file or a folder (train-v2.0.json and dev-v2.0.json, or one file that is
// split by paragraph with --validation_split_percentage). Writes under --root_output_dir: args.json, log.jsonl,
// metrics.json (the official EM / F1 with HasAns / NoAns and the tuned null-answer threshold), predictions.json,
// null_odds.json and nbest_predictions.json of the last evaluation (the official evaluation script reads the
// first two), rank_pattern.{json,csv}, rank_heatmap.svg, training_curves.svg and adapter/ (adapter and
// qa_outputs: `qa --do_train False --adapter_dir DIR/adapter` evaluates it). The loop is apps::Trainer.
#include "qa_data.hpp"

#include <increlora/apps/flags.hpp>
#include <increlora/apps/output.hpp>
#include <increlora/apps/progress.hpp>
#include <increlora/apps/launch.hpp>
#include <increlora/apps/trainer.hpp>
#include <increlora/apps/training_flags.hpp>
#include <increlora/increlora.hpp>
#include <increlora/models/encoder.hpp>
#include <increlora/tasks/squad.hpp>

#include <torch/nn/functional/loss.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace apps = increlora::apps;
namespace models = increlora::models;
namespace squad = increlora::squad;
namespace qa_app = increlora::apps::qa_app;
using nlohmann::json;

struct Args {
  apps::TrainingFlags t;  // the flags every program shares (IncreLoRA, AdamW, cadence, precision, checkpoints)
  // run_qa's data and post-processing flags
  std::string model_name_or_path;
  std::string dataset_name;
  bool version_2_with_negative = false;
  int64_t max_seq_length = 384;
  int64_t doc_stride = 128;
  std::string root_output_dir = "output/qa";
  std::string output_dir;
  std::string train_file;
  std::string validation_file;
  double validation_split_percentage = 20;
  int64_t n_best_size = 20;
  int64_t max_answer_length = 30;
  double null_score_diff_threshold = 0.0;
  int64_t max_train_samples = 0;
  int64_t max_eval_samples = 0;
  bool pad_to_max_length = false;
  // ours
  std::string model_dir;
  int64_t max_query_length = 64;
};

const std::set<std::string> kRunControlFlags = {
    "save_steps", "resume_from_checkpoint", "stop_after_step", "device", "root_output_dir", "output_dir",
    "per_device_eval_batch_size", "logging_steps", "n_best_size", "null_score_diff_threshold"};

Args parse_args(int argc, char** argv, json& args_json) {
  Args a;
  auto& t = a.t;
  // The seed's run_qa defaults (its SQuAD v2 script).
  t.lora_module = "query,key,value,intermediate,layer.output,attention.output";
  t.top_h = 1;
  t.incre_rank_num = 1;
  t.per_device_train_batch_size = 16;
  t.per_device_eval_batch_size = 64;
  t.num_train_epochs = 14;
  t.warmup_steps = 1000;
  t.logging_steps = 300;
  a.model_dir = apps::default_model_dir();
  apps::Flags f("qa", "--dataset_name FILE_OR_DIR [flags]");
  f.add("model_name_or_path", &a.model_name_or_path, "a local Hugging Face checkpoint directory (BERT family or "
        "DeBERTa-v2/v3; a hub id must be downloaded first)");
  f.add("model_dir", &a.model_dir, "the checkpoint directory when --model_name_or_path is not given");
  f.add("dataset_name", &a.dataset_name, "a SQuAD JSON file (or Hugging Face JSON lines), or a folder holding "
        "train-v2.0.json and dev-v2.0.json (or train.json / dev.json / validation.json); a single file, or a folder "
        "with one, is divided by paragraph (--validation_split_percentage)");
  f.add("train_file", &a.train_file, "the training file (instead of --dataset_name)");
  f.add("validation_file", &a.validation_file, "the evaluation file (instead of --dataset_name)");
  f.add("validation_split_percentage", &a.validation_split_percentage, "with a single file: the per cent of its "
        "paragraphs (spread evenly, all their questions) held out for evaluation");
  f.add("version_2_with_negative", &a.version_2_with_negative, "SQuAD v2: questions may have no answer (the null "
        "answer competes with the best span; EM/F1 per HasAns/NoAns and the best threshold are reported)");
  f.add("max_seq_length", &a.max_seq_length, "tokens per window ([CLS] question [SEP] context [SEP])");
  f.add("doc_stride", &a.doc_stride, "context tokens shared by consecutive windows of a long context");
  f.add("max_query_length", &a.max_query_length, "question tokens kept (the rest is cut)");
  f.add("n_best_size", &a.n_best_size, "start and end candidates per window in the span search");
  f.add("max_answer_length", &a.max_answer_length, "longest answer in tokens");
  f.add("null_score_diff_threshold", &a.null_score_diff_threshold, "v2: answer \"\" when the null score exceeds the "
        "best span's by more than this");
  f.add("max_train_samples", &a.max_train_samples, "train on the first N questions only (0: all)");
  f.add("max_eval_samples", &a.max_eval_samples, "evaluate on the first N questions only (0: all)");
  f.add("pad_to_max_length", &a.pad_to_max_length, "pad every batch to --max_seq_length (else to its longest window)");
  f.add("root_output_dir", &a.root_output_dir, "folder for every output");
  f.add("output_dir", &a.output_dir, "the same as --root_output_dir (run_qa's name)");
  t.add_to(f, "qa_outputs alone", "query,key,value,intermediate,layer.output,attention.output");
  apps::ignore_seed_trainer_flags(f);
  f.ignore("dataset_config_name", true, "--dataset_name is a local file or folder");
  f.ignore("preprocessing_num_workers", true, "windows are built once, in one thread");
  apps::parse_command_line(f, argc, argv);
  a.model_dir = apps::resolve_model_dir(a.model_name_or_path, a.model_dir, f.given("model_dir"));
  if (f.given("output_dir")) {
    if (f.given("root_output_dir") && fs::absolute(a.output_dir) != fs::absolute(a.root_output_dir)) {
      throw std::invalid_argument("--output_dir and --root_output_dir name different folders; give one");
    }
    a.root_output_dir = a.output_dir;
  }
  const auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument(msg);
  };
  t.validate();
  need(t.do_train || t.do_eval, "--do_train and --do_eval are both False: nothing to do");
  need(!a.dataset_name.empty() || !a.train_file.empty() || !a.validation_file.empty(),
       "--dataset_name (a SQuAD file or folder) or --train_file / --validation_file is required");
  need(a.max_seq_length >= 16, "--max_seq_length must be >= 16");
  need(a.doc_stride >= 0, "--doc_stride must be >= 0");
  need(a.n_best_size >= 1, "--n_best_size must be >= 1");
  need(a.max_answer_length >= 1, "--max_answer_length must be >= 1");
  need(std::isfinite(a.null_score_diff_threshold), "--null_score_diff_threshold must be a finite number");
  need(a.max_train_samples >= 0 && a.max_eval_samples >= 0, "--max_train_samples / --max_eval_samples must be >= 0");
  args_json = f.to_json();
  return a;
}

// The training and evaluation questions the flags name.
struct Splits {
  std::vector<squad::SquadExample> train, eval;
  std::string train_source, eval_source;
};

// The SQuAD file of `split` in `folder`, or "" when it has none (a folder with one JSON file holds both splits).
std::string split_or_single(const std::string& folder, const std::string& split) {
  try {
    return squad::split_file(folder, split);
  } catch (const std::exception&) {
  }
  std::vector<std::string> json_files;
  for (const auto& entry : fs::directory_iterator(folder)) {
    const auto ext = entry.path().extension().string();
    if (entry.is_regular_file() && (ext == ".json" || ext == ".jsonl")) json_files.push_back(entry.path().string());
  }
  if (json_files.size() == 1) return json_files.front();
  if (json_files.empty()) throw std::invalid_argument("--dataset_name " + folder + " holds no SQuAD .json file");
  return "";
}

Splits load_splits(const Args& a) {
  Splits s;
  std::string train = a.train_file, eval = a.validation_file;
  if (!a.dataset_name.empty()) {
    if (a.dataset_name == "squad" || a.dataset_name == "squad_v2") {
      throw std::invalid_argument("--dataset_name " + a.dataset_name + ": the hub cannot be reached from here; "
                                  "download the SQuAD files and pass their folder (train-v2.0.json, dev-v2.0.json)");
    }
    if (!fs::exists(a.dataset_name)) {
      throw std::invalid_argument("--dataset_name " + a.dataset_name + " does not exist: pass a SQuAD file or a "
                                  "folder holding train-v2.0.json and dev-v2.0.json");
    }
    if (fs::is_directory(a.dataset_name)) {
      if (train.empty()) train = split_or_single(a.dataset_name, "train");
      if (eval.empty()) eval = split_or_single(a.dataset_name, "dev");
      if (train.empty() || eval.empty()) {
        throw std::invalid_argument("--dataset_name " + a.dataset_name + " holds several JSON files but not the "
                                    "split names (train-v2.0.json, dev-v2.0.json, train.json, dev.json, "
                                    "validation.json): name them with --train_file and --validation_file");
      }
    } else {
      if (train.empty()) train = a.dataset_name;
      if (eval.empty()) eval = a.dataset_name;
    }
  }
  squad::ReadOptions eval_read;
  eval_read.check_answer_text = false;  // the official evaluation never looks at answer_start
  if (!train.empty() && (eval.empty() || eval == train)) {
    // One file for both: hold out whole paragraphs.
    auto all = squad::read_squad(train);
    auto [t, e] = qa_app::split_by_paragraph(all, a.validation_split_percentage);
    s.train = std::move(t), s.eval = std::move(e);
    s.train_source = s.eval_source = fmt::format("{} ({}% of its paragraphs held out)", train,
                                                 a.validation_split_percentage);
  } else {
    if (!train.empty()) s.train = squad::read_squad(train), s.train_source = train;
    if (!eval.empty()) s.eval = squad::read_squad(eval, eval_read), s.eval_source = eval;
  }
  if (a.max_train_samples > 0 && static_cast<int64_t>(s.train.size()) > a.max_train_samples) {
    s.train.resize(static_cast<size_t>(a.max_train_samples));
  }
  if (a.max_eval_samples > 0 && static_cast<int64_t>(s.eval.size()) > a.max_eval_samples) {
    s.eval.resize(static_cast<size_t>(a.max_eval_samples));
  }
  if (!a.version_2_with_negative) {
    for (const auto& e : s.train) {
      if (e.is_impossible || e.answer_texts.empty()) {
        throw std::invalid_argument("question '" + e.id + "' of " + s.train_source + " has no answer: a SQuAD v2 "
                                    "file needs --version_2_with_negative");
      }
    }
  }
  if (a.t.do_train && s.train.empty()) throw std::invalid_argument("no training questions in " + s.train_source);
  if (a.t.do_eval && s.eval.empty()) {
    throw std::invalid_argument("no evaluation questions" + (s.eval_source.empty() ? std::string(": give "
                                "--validation_file") : " in " + s.eval_source));
  }
  return s;
}

// The predictions of one evaluation, kept for the output files.
struct Evaluation {
  std::vector<squad::ExamplePrediction> predictions;
  apps::Metrics metrics;
};

Evaluation evaluate(models::QuestionAnsweringModel& model, const std::vector<squad::SquadExample>& examples,
                    const std::vector<qa_app::Feature>& features, const Args& a, int64_t pad_id,
                    const torch::Device& device) {
  const size_t n = features.size();
  const auto batch = static_cast<size_t>(a.t.per_device_eval_batch_size);
  std::vector<squad::FeatureLogits> windows(n);
  apps::Progress progress("eval", static_cast<int64_t>((n + batch - 1) / batch), "batch");
  for (size_t start = 0; start < n; start += batch) {
    std::vector<size_t> idx;
    for (size_t i = start; i < std::min(n, start + batch); ++i) idx.push_back(i);
    const auto b = qa_app::collate(features, idx, pad_id, device, a.pad_to_max_length ? a.max_seq_length : 0);
    auto [starts, ends] = model.forward(b[0], b[1], b[2]);
    starts = starts.to(torch::kCPU, torch::kFloat).contiguous();
    ends = ends.to(torch::kCPU, torch::kFloat).contiguous();
    for (size_t r = 0; r < idx.size(); ++r) {
      const auto& f = features[idx[r]];
      auto& w = windows[idx[r]];
      const auto len = static_cast<int64_t>(f.input_ids.size());
      const float* s = starts[static_cast<int64_t>(r)].data_ptr<float>();
      const float* e = ends[static_cast<int64_t>(r)].data_ptr<float>();
      w.example_index = static_cast<int64_t>(f.example);
      w.start_logits.assign(s, s + len);
      w.end_logits.assign(e, e + len);
      w.offsets.reserve(f.context_offsets.size());
      for (const auto& o : f.context_offsets) {
        w.offsets.push_back(o.first < 0 ? std::nullopt : std::optional<std::pair<int64_t, int64_t>>(o));
      }
    }
    progress.update(static_cast<int64_t>(start / batch + 1));
  }
  progress.finish();
  squad::DecodeOptions options;
  options.n_best_size = a.n_best_size;
  options.max_answer_length = a.max_answer_length;
  // SQuAD v1.1 has no null answer: a threshold no score difference reaches.
  options.null_score_diff_threshold = a.version_2_with_negative ? a.null_score_diff_threshold
                                                                : std::numeric_limits<double>::infinity();
  Evaluation out;
  out.predictions = squad::decode_predictions(examples, windows, options);
  const auto texts = squad::prediction_texts(out.predictions);
  // v2: EM / F1 of the predictions as decoded (the threshold the decoding used), and best_exact / best_f1 at
  // the threshold the official script tunes on these questions from the score differences.
  const auto scores = a.version_2_with_negative
                          ? squad::evaluate(examples, texts, squad::null_odds(out.predictions),
                                            options.null_score_diff_threshold)
                          : squad::evaluate(examples, texts);
  for (const auto& [k, v] : scores) out.metrics[k] = v;
  return out;
}

void write_prediction_files(const Evaluation& eval, const fs::path& dir, bool v2) {
  squad::write_predictions_json((dir / "predictions.json").string(), eval.predictions);
  squad::write_nbest_predictions_json((dir / "nbest_predictions.json").string(), eval.predictions);
  if (v2) squad::write_null_odds_json((dir / "null_odds.json").string(), eval.predictions);
}

int run(int argc, char** argv) {
  json args_json;
  const Args a = parse_args(argc, argv, args_json);
  auto device = apps::parse_device(a.t.device);
  // Under torchrun: this rank's GPU and the process group (rank 0 alone writes files).
  const auto launch = apps::join_launch("qa", device);
  const bool writer = launch.writes_outputs();
  const auto precision = apps::precision_from_flags(a.t.bf16, a.t.fp16);
  torch::manual_seed(static_cast<uint64_t>(a.t.seed));

  // Data: windows of every question.
  const auto splits = load_splits(a);
  const auto tokenizer = models::load_tokenizer(a.model_dir);
  const qa_app::QaTokenizer qa_tok{[&](const std::string& t) { return tokenizer->encode_with_offsets(t); },
                                   tokenizer->cls_id(), tokenizer->sep_id(), tokenizer->pad_id()};
  qa_app::WindowOptions windows;
  windows.max_seq_length = a.max_seq_length;
  windows.doc_stride = a.doc_stride;
  windows.max_query_length = a.max_query_length;
  std::vector<qa_app::Feature> train_features, eval_features;
  if (a.t.do_train) train_features = qa_app::make_features(splits.train, qa_tok, windows, /*training=*/true, "train");
  if (a.t.do_eval) eval_features = qa_app::make_features(splits.eval, qa_tok, windows, /*training=*/false, "eval");

  const int64_t steps_per_epoch = a.t.do_train ? apps::steps_per_epoch(static_cast<int64_t>(train_features.size()),
                                                                       a.t.per_device_train_batch_size,
                                                                       a.t.gradient_accumulation_steps,
                                                                       launch.world_size())
                                               : 1;
  const int64_t total_steps = a.t.total_steps(steps_per_epoch);

  // Model.
  models::AdapterPlan plan;
  plan.short_names = apps::split_commas(a.t.lora_module);
  if (plan.short_names.empty()) throw std::invalid_argument("--lora_module: name at least one layer to adapt");
  plan.r = a.t.apply_lora ? a.t.lora_r : 0;
  plan.lora_alpha = a.t.lora_alpha;
  plan.lora_dropout = a.t.lora_dropout;
  if (a.t.apply_lora) {
    const auto adapted = models::count_adapted_layers(a.model_dir, models::HeadKind::kQuestionAnswering, plan);
    plan.capacity = a.t.lora_capacity > 0 ? a.t.lora_capacity
                                          : increlora::recommended_capacity(a.t.allocator_options(total_steps),
                                                                            adapted);
  }
  torch::manual_seed(static_cast<uint64_t>(a.t.seed));
  auto model = models::make_question_answering(a.model_dir, plan);
  model.module->to(device);
  model.module->train();

  fs::create_directories(a.root_output_dir);
  const fs::path out_dir(a.root_output_dir);
  args_json["total_steps"] = total_steps;
  args_json["device"] = device.str();
  args_json["model_type"] = model.model_type;
  if (writer) apps::write_json((out_dir / "args.json").string(), args_json);

  auto to = a.t.trainer_options("qa", a.root_output_dir, device, total_steps, steps_per_epoch);
  to.main_metric = "f1";
  to.head_prefixes = model.head_prefixes;
  to.run_args = args_json;
  to.run_control_flags = kRunControlFlags;
  to.process_group = launch.group;

  const int64_t pad_id = tokenizer->pad_id();
  const int64_t pad_to = (a.t.cuda_graphs || a.pad_to_max_length) ? a.max_seq_length : 0;
  std::optional<Evaluation> last;
  apps::TrainingTask task;
  task.num_examples = static_cast<int64_t>(train_features.size());
  task.collate = [&](const std::vector<size_t>& idx) {
    return qa_app::collate(train_features, idx, pad_id, device, pad_to);
  };
  task.loss = [&](const std::vector<torch::Tensor>& in) {
    // run_qa's loss: the mean of the start and end cross-entropies over the window's tokens.
    auto [starts, ends] = model.forward(in[0], in[1], in[2]);
    return (torch::nn::functional::cross_entropy(starts.to(torch::kFloat), in[3]) +
            torch::nn::functional::cross_entropy(ends.to(torch::kFloat), in[4])) / 2;
  };
  if (a.t.do_eval) {
    task.evaluate = [&] {
      last = evaluate(model, splits.eval, eval_features, a, pad_id, device);
      return last->metrics;
    };
  }

  fmt::print("qa: {} | train {} questions → {} windows ({}) | eval {} questions → {} windows ({}) | {} steps ({} "
             "per epoch) on {}, {}\n", model.model_type, splits.train.size(), train_features.size(),
             splits.train_source, splits.eval.size(), eval_features.size(), splits.eval_source, total_steps,
             steps_per_epoch, device.str(), apps::to_string(precision));

  if (!a.t.do_train) {
    if (!a.t.adapter_dir.empty()) {
      if (a.t.apply_lora) increlora::load_adapter(*model.module, a.t.adapter_dir);
      apps::load_trained_head(*model.module, model.head_prefixes, a.t.adapter_dir);
    }
    const auto metrics = apps::evaluate_model(*model.module, task, device, precision);
    json entry = {{"event", "eval"}, {"step", 0}, {"adapter_dir", a.t.adapter_dir}};
    for (const auto& [k, v] : metrics) entry["eval_" + k] = std::isfinite(v) ? json(v) : json(nullptr);
    apps::JsonLog((out_dir / "log.jsonl").string(), false).write(entry);
    apps::write_json((out_dir / "metrics.json").string(),
                     {{"task", "squad"}, {"main_metric", "eval_f1"}, {"final", entry}, {"best", entry},
                      {"evaluations", json::array({entry})}, {"total_steps", 0}});
    write_prediction_files(*last, out_dir, a.version_2_with_negative);
    fmt::print("qa: eval (no training): exact {:.2f}, f1 {:.2f}; wrote {}\n", metrics.at("exact"), metrics.at("f1"),
               out_dir.string());
    return 0;
  }

  apps::Trainer trainer(*model.module, to);
  if (const auto* allocator = trainer.allocator()) {
    fmt::print("qa: {} adapted layers, budget {} total rank in {} rounds of top_h {} x {}; {} of {} parameters "
               "trainable\n", allocator->modules().size(), allocator->budget(), allocator->planned_rounds(), a.t.top_h,
               allocator->incre_rank_num(), trainer.trainable_parameters(), trainer.total_parameters());
  }
  std::fflush(stdout);
  const auto result = trainer.train(task);
  if (result.stopped_early || !writer) return 0;
  trainer.write_outputs(result, "squad", {{"task", a.version_2_with_negative ? "squad_v2" : "squad"}});
  // The last evaluation is of the model kept (the trainer evaluates the best one again after loading it).
  if (last) write_prediction_files(*last, out_dir, a.version_2_with_negative);
  if (result.best.is_null()) {
    fmt::print("qa: done in {:.1f} s; wrote {}\n", result.train_seconds, out_dir.string());
  } else {
    fmt::print("qa: done in {:.1f} s; best eval_f1 {:.2f} (exact {:.2f}) at step {}; wrote {}\n",
               result.train_seconds, result.best.value("eval_f1", json(0.0)).get<double>(),
               result.best.value("eval_exact", json(0.0)).get<double>(), result.best["step"].get<int64_t>(),
               out_dir.string());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return increlora::apps::run_program("qa", run, argc, argv); }
