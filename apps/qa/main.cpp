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
#include <increlora/apps/trainer.hpp>
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
  // the seed's flags
  std::string model_name_or_path;
  std::string dataset_name;
  bool version_2_with_negative = false;
  int64_t max_seq_length = 384;
  int64_t doc_stride = 128;
  int64_t target_rank = 2;
  int64_t target_total_rank = 0;
  int64_t lora_r = 1;
  double reg_orth_coef = 0.1;
  int64_t init_warmup = 1000;
  int64_t incre_interval = 1000;
  int64_t top_h = 1;
  int64_t incre_rank_num = 1;
  double beta1 = 0.85;
  double beta2 = 0.85;
  std::string lora_module = "query,key,value,intermediate,layer.output,attention.output";
  double lora_alpha = 16;
  double lora_dropout = 0.0;
  bool advance_learn = true;  // the original's defaults
  bool multi_lr = true;
  bool apply_lora = true;
  int64_t per_device_train_batch_size = 16;
  int64_t per_device_eval_batch_size = 64;
  int64_t gradient_accumulation_steps = 1;
  double learning_rate = 1e-3;
  double num_train_epochs = 14;
  int64_t max_steps = 0;
  int64_t warmup_steps = 1000;
  double weight_decay = 0;
  double max_grad_norm = 1.0;
  int64_t eval_steps = 1000;
  int64_t logging_steps = 300;
  int64_t save_steps = 0;
  int64_t seed = 42;
  std::string root_output_dir = "output/qa";
  std::string output_dir;
  bool do_train = true;
  bool do_eval = true;
  bool load_best_model_at_end = false;
  bool bf16 = false;
  bool fp16 = false;
  std::string resume_from_checkpoint;
  // run_qa's post-processing and data flags
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
  int64_t lora_capacity = 0;
  std::string device = "auto";
  bool exact_scoring = false;
  bool random_allocation = false;
  bool cuda_graphs = false;
  int64_t stop_after_step = 0;
  std::string adapter_dir;
};

const std::set<std::string> kRunControlFlags = {
    "save_steps", "resume_from_checkpoint", "stop_after_step", "device", "root_output_dir", "output_dir",
    "per_device_eval_batch_size", "logging_steps", "n_best_size", "null_score_diff_threshold"};

Args parse_args(int argc, char** argv, json& args_json) {
  Args a;
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
  f.add("target_rank", &a.target_rank, "average rank per adapted layer at the end of the schedule");
  f.add("target_total_rank", &a.target_total_rank, "total rank budget; 0 uses target_rank x layers");
  f.add("lora_r", &a.lora_r, "initial rank of every adapted layer");
  f.add("reg_orth_coef", &a.reg_orth_coef, "weight of the orthogonality regularizer (0: off)");
  f.add("init_warmup", &a.init_warmup, "steps before the first rank allocation");
  f.add("incre_interval", &a.incre_interval, "steps between two allocations");
  f.add("top_h", &a.top_h, "layers that grow at each allocation");
  f.add("incre_rank_num", &a.incre_rank_num, "rank each chosen layer gains; 0 derives it from the target rank");
  f.add("beta1", &a.beta1, "EMA coefficient of the sensitivity");
  f.add("beta2", &a.beta2, "EMA coefficient of the uncertainty");
  f.add("lora_module", &a.lora_module, "comma-separated layers to adapt: query,key,value,intermediate,layer.output,"
        "attention.output, qualified names, dotted suffixes or re:<regex>");
  f.add("lora_alpha", &a.lora_alpha, "adapter scale numerator (scale = lora_alpha / rank)");
  f.add("lora_dropout", &a.lora_dropout, "dropout on the adapter branch's input");
  f.add("advance_learn", &a.advance_learn, "train reserve triplets ahead of their activation (the original's default)");
  f.add("multi_lr", &a.multi_lr, "give newly activated triplets their own warmup and decay (the original's default)");
  f.add("apply_lora", &a.apply_lora, "adapt the encoder; False trains qa_outputs alone (a control)");
  f.add("per_device_train_batch_size", &a.per_device_train_batch_size, "training windows per micro-batch");
  f.add("per_device_eval_batch_size", &a.per_device_eval_batch_size, "evaluation windows per batch");
  f.add("gradient_accumulation_steps", &a.gradient_accumulation_steps, "micro-batches summed per optimizer step");
  f.add("learning_rate", &a.learning_rate, "peak learning rate of AdamW");
  f.add("num_train_epochs", &a.num_train_epochs, "epochs of training (ignored when max_steps > 0)");
  f.add("max_steps", &a.max_steps, "optimizer steps; > 0 overrides num_train_epochs");
  f.add("warmup_steps", &a.warmup_steps, "linear learning-rate warmup steps (then linear decay to 0)");
  f.add("weight_decay", &a.weight_decay, "AdamW weight decay (not applied to biases and LayerNorm)");
  f.add("max_grad_norm", &a.max_grad_norm, "gradient clipping norm (0: off)");
  f.add("max_train_samples", &a.max_train_samples, "train on the first N questions only (0: all)");
  f.add("max_eval_samples", &a.max_eval_samples, "evaluate on the first N questions only (0: all)");
  f.add("pad_to_max_length", &a.pad_to_max_length, "pad every batch to --max_seq_length (else to its longest window)");
  f.add("bf16", &a.bf16, "train and evaluate under bfloat16 autocast");
  f.add("fp16", &a.fp16, "train and evaluate under float16 autocast with dynamic loss scaling (CUDA)");
  f.add("eval_steps", &a.eval_steps, "evaluate every this many steps (and at the end)");
  f.add("logging_steps", &a.logging_steps, "write a training log line every this many steps");
  f.add("seed", &a.seed, "random seed (initialization, dropout, data order)");
  f.add("root_output_dir", &a.root_output_dir, "folder for every output");
  f.add("output_dir", &a.output_dir, "the same as --root_output_dir (run_qa's name)");
  f.add("do_train", &a.do_train, "train (False: evaluate the model of --adapter_dir, or the pretrained one)");
  f.add("do_eval", &a.do_eval, "evaluate every --eval_steps and at the end");
  f.add("load_best_model_at_end", &a.load_best_model_at_end, "end with the adapter and head of the best evaluation (F1)");
  f.add("adapter_dir", &a.adapter_dir, "with --do_train False: the adapter/ folder a qa run wrote");
  f.add("lora_capacity", &a.lora_capacity, "triplets each adapted layer can hold; 0 sizes it from the target");
  f.add("device", &a.device, "cpu, cuda, cuda:N, or auto (cuda when available)");
  f.add("exact_scoring", &a.exact_scoring, "score importance at every step, as the original does (slower)");
  f.add("random_allocation", &a.random_allocation, "ablation: grow layers chosen at random");
  f.add("cuda_graphs", &a.cuda_graphs, "on CUDA, replay forward + backward from CUDA graphs (batches padded to "
        "--max_seq_length)");
  f.add("save_steps", &a.save_steps, "write a training checkpoint every N steps (0: never)");
  f.add("resume_from_checkpoint", &a.resume_from_checkpoint, "continue the run saved in this checkpoint folder");
  f.add("stop_after_step", &a.stop_after_step, "end after this many steps without outputs (tests of resuming)");
  f.ignore("lora_type", true, "always svd");
  f.ignore("evaluation_strategy", true, "always steps (--eval_steps)");
  f.ignore("save_strategy", true, "checkpoints follow --save_steps");
  f.ignore("tb_writter_loginterval", true, "see log.jsonl");
  f.ignore("report_to", true, "see log.jsonl");
  f.ignore("experiment_name", true, "outputs go to --root_output_dir");
  f.ignore("dataset_config_name", true, "--dataset_name is a local file or folder");
  f.ignore("preprocessing_num_workers", true, "windows are built once, in one thread");
  for (const char* b : {"apply_increlora", "overwrite_output_dir"}) f.ignore(b, false, "always on");
  f.parse(argc, argv);
  if (f.help()) {
    std::fputs(f.usage().c_str(), stdout);
    std::exit(0);
  }
  for (const auto& [name, why] : f.ignored_seen()) fmt::print("qa: --{} has no effect here ({})\n", name, why);
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
  need(!a.dataset_name.empty() || !a.train_file.empty() || !a.validation_file.empty(),
       "--dataset_name (a SQuAD file or folder) or --train_file / --validation_file is required");
  need(a.max_seq_length >= 16, "--max_seq_length must be >= 16");
  need(a.doc_stride >= 0, "--doc_stride must be >= 0");
  need(a.n_best_size >= 1, "--n_best_size must be >= 1");
  need(a.max_answer_length >= 1, "--max_answer_length must be >= 1");
  need(std::isfinite(a.null_score_diff_threshold), "--null_score_diff_threshold must be a finite number");
  need(a.per_device_train_batch_size >= 1, "--per_device_train_batch_size must be >= 1");
  need(a.per_device_eval_batch_size >= 1, "--per_device_eval_batch_size must be >= 1");
  need(a.gradient_accumulation_steps >= 1, "--gradient_accumulation_steps must be >= 1");
  need(a.learning_rate > 0, "--learning_rate must be > 0");
  need(a.num_train_epochs > 0 || a.max_steps > 0, "--num_train_epochs must be > 0 (or give --max_steps)");
  need(a.eval_steps >= 1, "--eval_steps must be >= 1");
  need(a.logging_steps >= 1, "--logging_steps must be >= 1");
  need(a.warmup_steps >= 0, "--warmup_steps must be >= 0");
  need(a.lora_r >= 1, "--lora_r must be >= 1");
  need(a.save_steps >= 0, "--save_steps must be >= 0 (0: no checkpoints)");
  need(a.max_train_samples >= 0 && a.max_eval_samples >= 0, "--max_train_samples / --max_eval_samples must be >= 0");
  need(a.do_train || a.do_eval, "--do_train and --do_eval are both False: nothing to do");
  need(a.adapter_dir.empty() || !a.do_train, "--adapter_dir is for evaluating a saved run (--do_train False)");
  need(a.do_train || a.resume_from_checkpoint.empty(), "--resume_from_checkpoint needs --do_train True");
  apps::precision_from_flags(a.bf16, a.fp16);  // throws when both
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
  if (a.do_train && s.train.empty()) throw std::invalid_argument("no training questions in " + s.train_source);
  if (a.do_eval && s.eval.empty()) {
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
  const auto batch = static_cast<size_t>(a.per_device_eval_batch_size);
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
  const auto device = apps::parse_device(a.device);
  const auto precision = apps::precision_from_flags(a.bf16, a.fp16);
  torch::manual_seed(static_cast<uint64_t>(a.seed));

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
  if (a.do_train) train_features = qa_app::make_features(splits.train, qa_tok, windows, /*training=*/true, "train");
  if (a.do_eval) eval_features = qa_app::make_features(splits.eval, qa_tok, windows, /*training=*/false, "eval");

  const int64_t steps_per_epoch = a.do_train ? apps::steps_per_epoch(static_cast<int64_t>(train_features.size()),
                                                                     a.per_device_train_batch_size,
                                                                     a.gradient_accumulation_steps)
                                             : 1;
  const int64_t total_steps = a.max_steps > 0 ? a.max_steps
                                              : static_cast<int64_t>(std::ceil(a.num_train_epochs *
                                                                               static_cast<double>(steps_per_epoch)));

  // Model.
  models::AdapterPlan plan;
  plan.short_names = apps::split_commas(a.lora_module);
  if (plan.short_names.empty()) throw std::invalid_argument("--lora_module: name at least one layer to adapt");
  plan.r = a.apply_lora ? a.lora_r : 0;
  plan.lora_alpha = a.lora_alpha;
  plan.lora_dropout = a.lora_dropout;
  const auto allocator_options = increlora::RankAllocatorOptions()
                                     .lora_r(a.lora_r)
                                     .target_rank(a.target_rank)
                                     .target_total_rank(a.target_total_rank)
                                     .init_warmup(a.init_warmup)
                                     .incre_interval(a.incre_interval)
                                     .top_h(a.top_h)
                                     .incre_rank_num(a.incre_rank_num)
                                     .beta1(a.beta1)
                                     .beta2(a.beta2)
                                     .total_step(total_steps)
                                     .advance_learn(a.advance_learn)
                                     .exact_scoring(a.exact_scoring)
                                     .random_allocation(a.random_allocation)
                                     .random_seed(static_cast<uint64_t>(a.seed));
  if (a.apply_lora) {
    const auto adapted = models::count_adapted_layers(a.model_dir, models::HeadKind::kQuestionAnswering, plan);
    plan.capacity = a.lora_capacity > 0 ? a.lora_capacity : increlora::recommended_capacity(allocator_options, adapted);
  }
  torch::manual_seed(static_cast<uint64_t>(a.seed));
  auto model = models::make_question_answering(a.model_dir, plan);
  model.module->to(device);
  model.module->train();

  fs::create_directories(a.root_output_dir);
  const fs::path out_dir(a.root_output_dir);
  args_json["total_steps"] = total_steps;
  args_json["device"] = device.str();
  args_json["model_type"] = model.model_type;
  apps::write_json((out_dir / "args.json").string(), args_json);

  apps::TrainerOptions to;
  to.program = "qa";
  to.output_dir = a.root_output_dir;
  to.device = device;
  to.seed = static_cast<uint64_t>(a.seed);
  to.train_batch_size = a.per_device_train_batch_size;
  to.gradient_accumulation_steps = a.gradient_accumulation_steps;
  to.total_steps = total_steps;
  to.steps_per_epoch = steps_per_epoch;
  to.learning_rate = a.learning_rate;
  to.warmup_steps = a.warmup_steps;
  to.weight_decay = a.weight_decay;
  to.max_grad_norm = a.max_grad_norm;
  if (a.apply_lora && a.do_train) to.allocator = allocator_options;
  to.reg_orth_coef = a.reg_orth_coef;
  to.multi_lr = a.multi_lr;
  to.logging_steps = a.logging_steps;
  to.do_eval = a.do_eval;
  to.eval_steps = a.eval_steps;
  to.main_metric = "f1";
  to.load_best_model_at_end = a.load_best_model_at_end;
  to.save_steps = a.save_steps;
  to.resume_from_checkpoint = a.resume_from_checkpoint;
  to.stop_after_step = a.stop_after_step;
  to.precision = precision;
  to.cuda_graphs = a.cuda_graphs;
  to.head_prefixes = model.head_prefixes;
  to.run_args = args_json;
  to.run_control_flags = kRunControlFlags;

  const int64_t pad_id = tokenizer->pad_id();
  const int64_t pad_to = (a.cuda_graphs || a.pad_to_max_length) ? a.max_seq_length : 0;
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
  if (a.do_eval) {
    task.evaluate = [&] {
      last = evaluate(model, splits.eval, eval_features, a, pad_id, device);
      return last->metrics;
    };
  }

  fmt::print("qa: {} | train {} questions → {} windows ({}) | eval {} questions → {} windows ({}) | {} steps ({} "
             "per epoch) on {}, {}\n", model.model_type, splits.train.size(), train_features.size(),
             splits.train_source, splits.eval.size(), eval_features.size(), splits.eval_source, total_steps,
             steps_per_epoch, device.str(), apps::to_string(precision));

  if (!a.do_train) {
    if (!a.adapter_dir.empty()) {
      if (a.apply_lora) increlora::load_adapter(*model.module, a.adapter_dir);
      apps::load_trained_head(*model.module, model.head_prefixes, a.adapter_dir);
    }
    const auto metrics = apps::evaluate_model(*model.module, task, device, precision);
    json entry = {{"event", "eval"}, {"step", 0}, {"adapter_dir", a.adapter_dir}};
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
               "trainable\n", allocator->modules().size(), allocator->budget(), allocator->planned_rounds(), a.top_h,
               allocator->incre_rank_num(), trainer.trainable_parameters(), trainer.total_parameters());
  }
  std::fflush(stdout);
  const auto result = trainer.train(task);
  if (result.stopped_early) return 0;
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

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "qa: {}\n(qa --help lists the flags)\n", e.what());
    return 2;
  } catch (const c10::Error& e) {
    fmt::print(stderr, "qa: {}\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "qa: {}\n", e.what());
    return 1;
  }
}
