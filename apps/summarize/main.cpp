// Abstractive summarization (XSum, CNN/DailyMail, any file of document/summary pairs) with IncreLoRA on a BART
// checkpoint read from a Hugging Face directory (config.json, model.safetensors, vocab.json, merges.txt), with
// the flags of the seed's run_summarization_no_trainer.py (its XSum script):
//
//   summarize --model_name_or_path facebook-bart-large/ --dataset_name xsum/ --apply_lora --apply_increlora
//     --lora_type svd --target_rank 2 --lora_r 1 --lora_alpha 32 --lora_dropout 0. --reg_orth_coef 0.1
//     --schedule_strategy epoch --incre_epoch 15 --init_warmup 3000 --incre_interval 3000 --top_h 13
//     --beta1 0.85 --beta2 0.85 --lora_module q_proj,k_proj,v_proj,out_proj,fc1,fc2
//     --per_device_train_batch_size 8 --learning_rate 5e-4 --num_train_epochs 35 --num_warmup_steps 3000
//     --max_source_length 768 --max_target_length 64 --max_length 768 --pad_to_max_length --num_beams 8
//     --per_device_eval_batch_size 8 --seed 9 --with_tracking --output_dir out/xsum
//
// --dataset_name is a local file (JSON lines, JSON, CSV) or a folder holding train / validation files. The loss
// is the decoder's cross-entropy under teacher forcing (--label_smoothing adds label smoothing; the seed uses
// none); each evaluation reports the dev loss and ROUGE-1/2/L/Lsum (rouge_score's tokenisation and stemming) of
// beam-search summaries. Writes under --output_dir (/--experiment_name): args.json, log.jsonl, metrics.json,
// generated_predictions.txt and predictions.jsonl of the last evaluation, rank_pattern.{json,csv},
// rank_heatmap.svg, training_curves.svg and adapter/. The loop is apps::Trainer.
#include "summarize_data.hpp"

#include <increlora/apps/flags.hpp>
#include <increlora/apps/output.hpp>
#include <increlora/apps/progress.hpp>
#include <increlora/apps/launch.hpp>
#include <increlora/apps/trainer.hpp>
#include <increlora/apps/training_flags.hpp>
#include <increlora/increlora.hpp>
#include <increlora/models/bart.hpp>
#include <increlora/models/bart_tokenizer.hpp>
#include <increlora/models/generation.hpp>
#include <increlora/tasks/rouge.hpp>
#include <increlora/tasks/summarization.hpp>

#include <torch/nn/functional/loss.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

namespace fs = std::filesystem;
namespace apps = increlora::apps;
namespace bart = increlora::bart;
namespace models = increlora::models;
namespace rouge = increlora::rouge;
namespace summarization = increlora::summarization;
namespace app = increlora::apps::summarize_app;
using nlohmann::json;

struct Args {
  apps::TrainingFlags t;
  // the seed's flags of run_summarization_no_trainer.py
  std::string model_name_or_path;
  std::string dataset_name;
  std::string train_file, validation_file;
  std::string text_column, summary_column;
  std::string source_prefix;
  int64_t max_source_length = 1024;
  int64_t max_target_length = 128;
  int64_t val_max_target_length = 0;
  int64_t num_beams = 0;
  bool pad_to_max_length = false;
  std::string output_dir = "output/summarize";
  std::string experiment_name;
  std::string lr_scheduler_type = "linear";
  std::string schedule_strategy = "step";
  int64_t incre_epoch = 0;
  std::string lora_type = "svd";
  // ours
  std::string model_dir;
  double label_smoothing = 0.0;
  int64_t train_every_nth = 1;
  int64_t max_train_samples = 0;
  int64_t max_eval_samples = 0;
  double validation_split_percentage = 10;
  std::string metric_for_best_model = "rougeL";
  bool predict_with_generate = true;
  int64_t generation_min_length = -1;
  double length_penalty = std::nan("");
  int64_t no_repeat_ngram_size = -1;
};

const std::set<std::string> kRunControlFlags = {
    "save_steps", "resume_from_checkpoint", "stop_after_step", "device", "output_dir", "experiment_name",
    "per_device_eval_batch_size", "logging_steps", "checkpointing_steps"};

Args parse_args(int argc, char** argv, json& args_json) {
  Args a;
  auto& t = a.t;
  // run_summarization_no_trainer.py's defaults.
  t.lora_module = "q_proj,v_proj";
  t.lora_r = 8;
  t.target_rank = 8;
  t.lora_alpha = 32;
  t.reg_orth_coef = 0.0;
  t.init_warmup = 5000;
  t.incre_interval = 10;
  t.top_h = 10;
  t.per_device_train_batch_size = 8;
  t.per_device_eval_batch_size = 8;
  t.learning_rate = 5e-5;
  t.num_train_epochs = 3;
  t.warmup_steps = 0;
  t.eval_steps = 0;  // 0: once per epoch, as the seed evaluates
  t.logging_steps = 500;
  t.apply_lora = false;
  a.model_dir = apps::default_model_dir();
  apps::Flags f("summarize", "--model_name_or_path BART_DIR --dataset_name FILE_OR_DIR [flags]");
  f.add("model_name_or_path", &a.model_name_or_path, "a local Hugging Face BART checkpoint directory (config.json, "
        "model.safetensors, vocab.json, merges.txt; a hub id must be downloaded first)");
  f.add("dataset_name", &a.dataset_name, "a local file of document/summary pairs (JSON lines, JSON or CSV), or a "
        "folder holding train and validation files (train.jsonl / validation.jsonl / ..., or one file that is "
        "split, --validation_split_percentage); a hub name (xsum, cnn_dailymail, ...) must be downloaded first");
  f.add("train_file", &a.train_file, "the training file (instead of --dataset_name)");
  f.add("validation_file", &a.validation_file, "the evaluation file (instead of --dataset_name)");
  f.add("validation_split_percentage", &a.validation_split_percentage, "with a single file: the per cent of its "
        "examples (spread evenly) held out for evaluation");
  f.add("text_column", &a.text_column, "the column holding the documents (default: the dataset's, as the seed's "
        "table names them, e.g. xsum: document; else the first column)");
  f.add("summary_column", &a.summary_column, "the column holding the summaries (default: the dataset's, e.g. xsum: "
        "summary; else the second column)");
  f.add("source_prefix", &a.source_prefix, "text put before every document (T5 wants \"summarize: \")");
  f.add("max_source_length", &a.max_source_length, "document tokens kept (the rest is cut)");
  f.add("max_target_length", &a.max_target_length, "summary tokens kept for training");
  f.add("val_max_target_length", &a.val_max_target_length, "the longest generated summary and the evaluation "
        "labels' length; 0 uses --max_target_length");
  f.add("num_beams", &a.num_beams, "beams of the evaluation's beam search; 0 uses the checkpoint's generation "
        "config (1: greedy)");
  f.add("generation_min_length", &a.generation_min_length, "shortest generated summary; < 0 uses the checkpoint's");
  f.add("length_penalty", &a.length_penalty, "beam search length penalty; unset uses the checkpoint's");
  f.add("no_repeat_ngram_size", &a.no_repeat_ngram_size, "no n-gram of this size twice in a summary; < 0 uses the "
        "checkpoint's");
  f.add("predict_with_generate", &a.predict_with_generate, "generate summaries and score ROUGE at each evaluation "
        "(False: the dev loss only)");
  f.add("pad_to_max_length", &a.pad_to_max_length, "pad every batch to --max_source_length / --max_target_length "
        "(else to its longest)");
  f.add("label_smoothing", &a.label_smoothing, "label smoothing of the cross-entropy (the seed's loss has none: 0)");
  f.add("train_every_nth", &a.train_every_nth, "train on every n-th example only (the seed's script hard-codes 5 "
        "for XSum: 40,809 of 204,045)");
  f.add("max_train_samples", &a.max_train_samples, "train on the first N examples only (0: all)");
  f.add("max_eval_samples", &a.max_eval_samples, "evaluate on the first N examples only (0: all)");
  f.add("metric_for_best_model", &a.metric_for_best_model, "the metric that picks the best evaluation: rouge1, "
        "rouge2, rougeL, rougeLsum (higher is better) or loss");
  f.add("output_dir", &a.output_dir, "folder for every output (with --experiment_name: a folder of that name in it)");
  f.add("experiment_name", &a.experiment_name, "a sub-folder of --output_dir for this run (the seed also prefixes "
        "a time stamp; here the path is reproducible)");
  f.add("lr_scheduler_type", &a.lr_scheduler_type, "linear (warmup, then linear decay to 0): the only one here");
  f.add("schedule_strategy", &a.schedule_strategy, "step: allocate every --incre_interval steps after "
        "--init_warmup; epoch: choose the interval so that the budget is met by the end of epoch --incre_epoch");
  f.add("incre_epoch", &a.incre_epoch, "with --schedule_strategy epoch: the epoch by whose end the budget is met");
  f.add("lora_type", &a.lora_type, "svd (IncreLoRA's SVD-form triplets): the only one here");
  f.add("model_dir", &a.model_dir, "the checkpoint directory when --model_name_or_path is not given");
  t.add_to(f, "every weight (full fine-tuning, the seed's default without --apply_lora)",
           "q_proj,k_proj,v_proj,out_proj,fc1,fc2 (every layer's, encoder and decoder, self- and cross-attention)");
  // The seed's names for three of the shared flags.
  f.add("num_warmup_steps", &t.warmup_steps, "the same as --warmup_steps (the seed's name)");
  f.add("max_train_steps", &t.max_steps, "the same as --max_steps (the seed's name)");
  f.add("checkpointing_steps", &t.save_steps, "the same as --save_steps (the seed's name; \"epoch\" is not taken)");
  f.ignore("apply_increlora", false, "IncreLoRA is on with --apply_lora");
  f.ignore("with_tracking", false, "log.jsonl is always written");
  f.ignore("report_to", true, "see log.jsonl");
  f.ignore("tb_writter_loginterval", true, "see --logging_steps and log.jsonl");
  f.ignore("max_length", true, "the seed's script never reads it: --max_source_length and --val_max_target_length "
           "set the lengths");
  f.ignore("dataset_config_name", true, "--dataset_name is a local file or folder");
  f.ignore("preprocessing_num_workers", true, "examples are tokenized once, in one thread");
  f.ignore("ignore_pad_token_for_loss", true, "padding is always left out of the loss");
  f.ignore("cls_dropout", true, "BART has no classifier here");
  f.ignore("reg_loss_wgt", true, "the seed's script never reads it");
  f.ignore("use_slow_tokenizer", false, "there is one BPE tokenizer");
  apps::parse_command_line(f, argc, argv);
  a.model_dir = apps::resolve_model_dir(a.model_name_or_path, a.model_dir, f.given("model_dir"));
  if (!a.experiment_name.empty()) a.output_dir = (fs::path(a.output_dir) / a.experiment_name).string();
  const auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument(msg);
  };
  {
    auto shared = t;  // --eval_steps 0 (once per epoch) is this program's; the shared checks want a count
    if (shared.eval_steps == 0) shared.eval_steps = 1;
    shared.validate();
  }
  need(t.do_train || t.do_eval, "--do_train and --do_eval are both False: nothing to do");
  need(!a.dataset_name.empty() || !a.train_file.empty() || !a.validation_file.empty(),
       "--dataset_name (a local file or folder) or --train_file / --validation_file is required");
  need(a.max_source_length >= 4, "--max_source_length must be >= 4");
  need(a.max_target_length >= 2, "--max_target_length must be >= 2");
  need(a.val_max_target_length == 0 || a.val_max_target_length >= 2, "--val_max_target_length must be >= 2 (0: "
       "--max_target_length)");
  need(a.num_beams >= 0, "--num_beams must be >= 1 (0: the checkpoint's)");
  need(a.label_smoothing >= 0 && a.label_smoothing < 1, "--label_smoothing must be in [0, 1)");
  need(a.train_every_nth >= 1, "--train_every_nth must be >= 1");
  need(a.max_train_samples >= 0 && a.max_eval_samples >= 0, "--max_train_samples / --max_eval_samples must be >= 0");
  need(a.validation_split_percentage > 0 && a.validation_split_percentage < 100,
       "--validation_split_percentage must be in (0, 100)");
  need(a.lr_scheduler_type == "linear", "--lr_scheduler_type " + a.lr_scheduler_type + " is not implemented: "
       "linear is (warmup, then linear decay to 0)");
  need(a.lora_type == "svd", "--lora_type " + a.lora_type + " is not implemented: svd is (IncreLoRA's triplets)");
  need(a.schedule_strategy == "step" || a.schedule_strategy == "epoch", "--schedule_strategy must be step or epoch");
  need(a.schedule_strategy != "epoch" || a.incre_epoch >= 1, "--schedule_strategy epoch needs --incre_epoch N >= 1");
  const std::set<std::string> metrics = {"rouge1", "rouge2", "rougeL", "rougeLsum", "loss"};
  need(metrics.count(a.metric_for_best_model) == 1, "--metric_for_best_model must be rouge1, rouge2, rougeL, "
       "rougeLsum or loss");
  need(a.predict_with_generate || a.metric_for_best_model == "loss", "--predict_with_generate False leaves only the "
       "dev loss: use --metric_for_best_model loss");
  need(!t.cuda_graphs || a.pad_to_max_length, "--cuda_graphs captures one shape: add --pad_to_max_length");
  args_json = f.to_json();
  return a;
}

/// The training and evaluation pairs the flags name.
struct Splits {
  std::vector<summarization::Example> train, eval;
  std::string train_source, eval_source;
};

const std::vector<std::string> kDataExtensions = {".jsonl", ".json", ".csv"};

// The file of a split in `folder`: the first of NAME.jsonl / NAME.json / NAME.csv for the names given (Hugging
// Face's split file names), or "" when there is none.
std::string split_in_folder(const std::string& folder, const std::vector<std::string>& names) {
  for (const auto& name : names) {
    for (const auto& ext : kDataExtensions) {
      const auto path = fs::path(folder) / (name + ext);
      if (fs::is_regular_file(path)) return path.string();
    }
  }
  return "";
}

// The one data file of `folder` (it is then split); throws when it has none or several.
std::string single_file_in(const std::string& folder) {
  std::vector<std::string> files;
  for (const auto& entry : fs::directory_iterator(folder)) {
    const auto ext = entry.path().extension().string();
    if (entry.is_regular_file() && std::find(kDataExtensions.begin(), kDataExtensions.end(), ext) != kDataExtensions.end()) {
      files.push_back(entry.path().string());
    }
  }
  if (files.size() == 1) return files.front();
  throw std::invalid_argument("--dataset_name " + folder + (files.empty() ? " holds no .jsonl, .json or .csv file"
                              : " holds several data files but none named train / validation (.jsonl, .json, .csv): "
                                "name them with --train_file and --validation_file"));
}

Splits load_splits(const Args& a) {
  summarization::ReadOptions read;
  read.text_column = a.text_column;
  read.summary_column = a.summary_column;
  read.dataset_name = a.dataset_name;
  std::string train = a.train_file, eval = a.validation_file;
  if (!a.dataset_name.empty()) {
    if (!fs::exists(a.dataset_name)) {
      throw std::invalid_argument("--dataset_name " + a.dataset_name + " is not a local file or folder (the hub "
                                  "cannot be reached from here: download the dataset and pass its folder, e.g. "
                                  "train.jsonl and validation.jsonl with document/summary fields)");
    }
    if (fs::is_directory(a.dataset_name)) {
      if (train.empty()) train = split_in_folder(a.dataset_name, {"train"});
      if (eval.empty()) eval = split_in_folder(a.dataset_name, {"validation", "valid", "val", "dev", "test"});
      if (train.empty() && eval.empty()) train = single_file_in(a.dataset_name);
    } else {
      if (train.empty()) train = a.dataset_name;
      if (eval.empty()) eval = a.dataset_name;
    }
  }
  Splits s;
  if (!train.empty() && (eval.empty() || eval == train)) {
    auto parts = summarization::split(summarization::read_examples(train, read), a.validation_split_percentage,
                                      static_cast<uint64_t>(a.t.seed));
    s.train = std::move(parts.train), s.eval = std::move(parts.validation);
    s.train_source = s.eval_source = fmt::format("{} ({}% held out)", train, a.validation_split_percentage);
  } else {
    if (!train.empty()) s.train = summarization::read_examples(train, read), s.train_source = train;
    if (!eval.empty()) s.eval = summarization::read_examples(eval, read), s.eval_source = eval;
  }
  if (a.train_every_nth > 1) {
    std::vector<summarization::Example> kept;
    for (size_t i = 0; i < s.train.size(); i += static_cast<size_t>(a.train_every_nth)) kept.push_back(s.train[i]);
    s.train = std::move(kept);
  }
  if (a.max_train_samples > 0 && static_cast<int64_t>(s.train.size()) > a.max_train_samples) {
    s.train.resize(static_cast<size_t>(a.max_train_samples));
  }
  if (a.max_eval_samples > 0 && static_cast<int64_t>(s.eval.size()) > a.max_eval_samples) {
    s.eval.resize(static_cast<size_t>(a.max_eval_samples));
  }
  if (a.t.do_train && s.train.empty()) throw std::invalid_argument("no training examples in " + s.train_source);
  if (a.t.do_eval && s.eval.empty()) {
    throw std::invalid_argument("no evaluation examples" + (s.eval_source.empty() ? std::string(": give "
                                "--validation_file") : " in " + s.eval_source));
  }
  return s;
}

/// The dev loss of a batch's tensors {input_ids, attention_mask, decoder_input_ids, labels}: the mean token
/// cross-entropy over the labels that are not padding, as BartForConditionalGeneration's loss.
torch::Tensor seq2seq_loss(bart::BartForConditionalGeneration& model, const std::vector<torch::Tensor>& in,
                           double label_smoothing) {
  const auto logits = model->forward(in[0], in[1], in[2]);
  const auto vocab = logits.size(-1);
  return torch::nn::functional::cross_entropy(
      logits.reshape({-1, vocab}).to(torch::kFloat), in[3].reshape({-1}),
      torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100).label_smoothing(label_smoothing));
}

/// One evaluation's summaries, kept for the output files.
struct Evaluation {
  std::vector<std::string> predictions, references;
  apps::Metrics metrics;
};

Evaluation evaluate(bart::BartForConditionalGeneration& model, const bart::BartTokenizer& tokenizer,
                    const std::vector<app::Feature>& features, const app::Seq2SeqTokenizer& tok, const Args& a,
                    const models::GenerationConfig& generation, const torch::Device& device) {
  const size_t n = features.size();
  const auto batch = static_cast<size_t>(a.t.per_device_eval_batch_size);
  Evaluation out;
  double loss_sum = 0;
  int64_t loss_tokens = 0, generated_tokens = 0;
  apps::Progress progress("eval", static_cast<int64_t>((n + batch - 1) / batch), "batch");
  for (size_t start = 0; start < n; start += batch) {
    std::vector<size_t> idx;
    for (size_t i = start; i < std::min(n, start + batch); ++i) idx.push_back(i);
    const auto in = app::collate(features, idx, tok, device, a.pad_to_max_length ? a.max_source_length : 0);
    // The loss over the batch's label tokens, summed, so that the mean is over every dev token alike.
    const auto tokens = in[3].ne(-100).sum().item<int64_t>();
    loss_sum += seq2seq_loss(model, in, a.label_smoothing).item<double>() * static_cast<double>(tokens);
    loss_tokens += tokens;
    for (size_t i : idx) out.references.push_back(tokenizer.decode(features[i].labels, /*skip_special_tokens=*/true));
    if (!a.predict_with_generate) continue;
    const auto rows = static_cast<int64_t>(idx.size());
    auto decoder = model->start_decoding(in[0], in[1], generation.num_beams);
    const auto sequences = models::generate(*decoder, rows, generation);
    for (int64_t r = 0; r < rows; ++r) {
      const auto row = sequences[r];
      std::vector<int64_t> ids(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel());
      for (auto id : ids) generated_tokens += id != generation.pad_token_id ? 1 : 0;
      out.predictions.push_back(tokenizer.decode(ids, /*skip_special_tokens=*/true));
    }
    progress.update(static_cast<int64_t>(start / batch + 1));
  }
  progress.finish();
  out.metrics["loss"] = loss_tokens > 0 ? loss_sum / static_cast<double>(loss_tokens) : 0.0;
  if (a.predict_with_generate) {
    // The seed's postprocess_text: strip, then one sentence per line (rougeLsum reads the lines).
    std::vector<std::string> preds, refs;
    for (size_t i = 0; i < out.predictions.size(); ++i) {
      preds.push_back(rouge::sentences_per_line(out.predictions[i]));
      refs.push_back(rouge::sentences_per_line(out.references[i]));
    }
    const auto scores = rouge::corpus_score(refs, preds, {"rouge1", "rouge2", "rougeL", "rougeLsum"},
                                            /*use_stemmer=*/true);
    for (const auto& [k, v] : scores) out.metrics[k] = 100.0 * v.fmeasure;
    out.metrics["gen_len"] = n > 0 ? static_cast<double>(generated_tokens) / static_cast<double>(n) : 0.0;
  }
  return out;
}

void write_prediction_files(const Evaluation& eval, const std::vector<summarization::Example>& examples,
                            const fs::path& dir) {
  std::string lines, jsonl;
  for (size_t i = 0; i < eval.predictions.size(); ++i) {
    // generated_predictions.txt: one summary per line, as Hugging Face's run_summarization writes it.
    std::string one_line = eval.predictions[i];
    for (auto& c : one_line) c = c == '\n' ? ' ' : c;
    lines += one_line + "\n";
    jsonl += json({{"id", examples[i].id}, {"prediction", eval.predictions[i]}, {"reference", eval.references[i]}})
                 .dump() + "\n";
  }
  apps::write_text_file((dir / "generated_predictions.txt").string(), lines);
  apps::write_text_file((dir / "predictions.jsonl").string(), jsonl);
}

int run(int argc, char** argv) {
  json args_json;
  Args a = parse_args(argc, argv, args_json);
  auto device = apps::parse_device(a.t.device);
  // Under torchrun: this rank's GPU and the process group (rank 0 alone writes files).
  const auto launch = apps::join_launch("summarize", device);
  const bool writer = launch.writes_outputs();
  torch::manual_seed(static_cast<uint64_t>(a.t.seed));

  // Data.
  const auto splits = load_splits(a);
  const auto tokenizer = bart::BartTokenizer::from_directory(a.model_dir);
  const auto config = bart::BartConfig::from_json_file((fs::path(a.model_dir) / "config.json").string());
  app::Seq2SeqTokenizer tok;
  tok.encode = [&](const std::string& text, int64_t max_length) { return tokenizer.encode(text, max_length); };
  tok.pad_id = tokenizer.pad_id();
  tok.decoder_start_id = config.decoder_start_token_id;
  const auto val_target = a.val_max_target_length > 0 ? a.val_max_target_length : a.max_target_length;
  std::vector<app::Feature> train_features, eval_features;
  const auto texts = [](const std::vector<summarization::Example>& examples, bool document) {
    std::vector<std::string> out;
    for (const auto& e : examples) out.push_back(document ? e.document : e.summary);
    return out;
  };
  if (a.t.do_train) {
    train_features = app::make_features(texts(splits.train, true), texts(splits.train, false), tok,
                                        a.max_source_length, a.max_target_length, a.source_prefix);
  }
  if (a.t.do_eval) {
    eval_features = app::make_features(texts(splits.eval, true), texts(splits.eval, false), tok, a.max_source_length,
                                       val_target, a.source_prefix);
  }

  const int64_t steps_per_epoch = a.t.do_train ? apps::steps_per_epoch(static_cast<int64_t>(train_features.size()),
                                                                       a.t.per_device_train_batch_size,
                                                                       a.t.gradient_accumulation_steps,
                                                                       launch.world_size())
                                               : 1;
  const int64_t total_steps = a.t.total_steps(steps_per_epoch);
  if (a.t.eval_steps == 0) a.t.eval_steps = steps_per_epoch;  // the seed evaluates once per epoch

  // Model: the seed's module names become patterns over BART's qualified names.
  bart::LoraSettings lora;
  lora.patterns = bart::lora_patterns_from_short_names(apps::split_commas(a.t.lora_module));
  if (lora.patterns.empty()) throw std::invalid_argument("--lora_module: name at least one layer to adapt");
  lora.r = a.t.apply_lora ? a.t.lora_r : 0;
  lora.lora_alpha = a.t.lora_alpha;
  lora.lora_dropout = a.t.lora_dropout;
  if (a.t.apply_lora) {
    // A probe without adapter banks counts the layers the patterns select (select_modules throws naming the
    // candidates when a pattern matches nothing): what the capacity sizing needs before the model is built.
    auto probe_settings = lora;
    probe_settings.r = 0;
    const auto adapted = static_cast<int64_t>(
        increlora::select_modules(*bart::BartForConditionalGeneration(config, probe_settings), lora.patterns).size());
    auto allocator_options = a.t.allocator_options(total_steps);
    if (a.schedule_strategy == "epoch" && a.t.do_train) {
      const int64_t per_round = a.t.top_h * increlora::resolved_incre_rank_num(allocator_options, adapted);
      const int64_t grow = increlora::rank_budget(allocator_options, adapted) - a.t.lora_r * adapted;
      const int64_t rounds = grow > 0 ? (grow + per_round - 1) / std::max<int64_t>(per_round, 1) : 0;
      a.t.incre_interval = apps::interval_for_epoch(a.t.init_warmup, rounds, a.incre_epoch, steps_per_epoch);
      allocator_options.incre_interval(a.t.incre_interval);
      fmt::print("summarize: --schedule_strategy epoch: {} rounds from step {} every {} steps, the budget met by "
                 "epoch {} (--incre_interval replaced)\n", rounds, a.t.init_warmup, a.t.incre_interval, a.incre_epoch);
    }
    lora.capacity = a.t.lora_capacity > 0 ? a.t.lora_capacity
                                          : increlora::recommended_capacity(allocator_options, adapted);
  }
  if (!a.t.do_train && !a.t.adapter_dir.empty() && a.t.apply_lora) {
    // Evaluating a saved adapter: the layers, initial rank, scale and capacity it was built with, whatever
    // --lora_module and schedule flags this command has (load_adapter then restores the grown ranks).
    const auto saved = apps::read_json((fs::path(a.t.adapter_dir) / "adapter_config.json").string());
    if (saved.contains("modules") && !saved.at("modules").empty()) {
      lora.patterns.clear();
      lora.capacity = 0;
      for (const auto& [name, layer] : saved.at("modules").items()) {
        lora.patterns.push_back(name);
        lora.r = layer.at("r").get<int64_t>();
        lora.lora_alpha = layer.at("lora_alpha").get<double>();
        lora.capacity = std::max(lora.capacity, layer.at("capacity").get<int64_t>());
      }
    }
  }
  torch::manual_seed(static_cast<uint64_t>(a.t.seed));
  bart::BartForConditionalGeneration model(config, lora);
  const auto load = bart::load_pretrained(*model, a.model_dir);
  model->to(device);
  model->train();

  auto generation = models::GenerationConfig::from_model_dir(a.model_dir);
  generation.max_length = val_target;  // the seed's gen_kwargs
  generation.max_new_tokens.reset();
  if (a.num_beams > 0) generation.num_beams = a.num_beams;
  if (a.generation_min_length >= 0) generation.min_length = a.generation_min_length;
  if (!std::isnan(a.length_penalty)) generation.length_penalty = a.length_penalty;
  if (a.no_repeat_ngram_size >= 0) generation.no_repeat_ngram_size = a.no_repeat_ngram_size;
  generation.min_length = std::min(generation.min_length, generation.max_length);

  fs::create_directories(a.output_dir);
  const fs::path out_dir(a.output_dir);
  args_json["total_steps"] = total_steps;
  args_json["device"] = device.str();
  args_json["model_type"] = config.model_type;
  args_json["incre_interval"] = a.t.incre_interval;
  args_json["generation"] = {{"max_length", generation.max_length}, {"min_length", generation.min_length},
                             {"num_beams", generation.num_beams}, {"length_penalty", generation.length_penalty},
                             {"no_repeat_ngram_size", generation.no_repeat_ngram_size}};
  if (writer) apps::write_json((out_dir / "args.json").string(), args_json);

  auto to = a.t.trainer_options("summarize", a.output_dir, device, total_steps, steps_per_epoch);
  to.main_metric = a.metric_for_best_model;
  to.greater_is_better = a.metric_for_best_model != "loss";
  // --apply_lora False is the seed's full fine-tuning: every tensor trains (the prefix "" holds them all).
  to.head_prefixes = a.t.apply_lora ? model->head_prefixes() : std::vector<std::string>{""};
  to.run_args = args_json;
  to.run_control_flags = kRunControlFlags;
  to.process_group = launch.group;

  const int64_t source_pad = (a.t.cuda_graphs || a.pad_to_max_length) ? a.max_source_length : 0;
  const int64_t target_pad = (a.t.cuda_graphs || a.pad_to_max_length) ? a.max_target_length : 0;
  std::optional<Evaluation> last;
  apps::TrainingTask task;
  task.num_examples = static_cast<int64_t>(train_features.size());
  task.collate = [&](const std::vector<size_t>& idx) {
    return app::collate(train_features, idx, tok, device, source_pad, target_pad);
  };
  task.loss = [&](const std::vector<torch::Tensor>& in) { return seq2seq_loss(model, in, a.label_smoothing); };
  if (a.t.do_eval) {
    task.evaluate = [&] {
      last = evaluate(model, tokenizer, eval_features, tok, a, generation, device);
      return last->metrics;
    };
  }

  fmt::print("summarize: {} ({} + {} layers, d_model {}) | train {} ({}) | eval {} ({}) | {} steps ({} per epoch) "
             "on {}, {}\n", config.model_type, config.encoder_layers, config.decoder_layers, config.d_model,
             splits.train.size(), splits.train_source, splits.eval.size(), splits.eval_source, total_steps,
             steps_per_epoch, device.str(), apps::to_string(to.precision));
  for (const auto& name : load.initialized) {
    if (name.find("lora_") == std::string::npos) fmt::print("summarize: {} was not in the checkpoint\n", name);
  }

  if (!a.t.do_train) {
    if (!a.t.adapter_dir.empty()) {
      if (a.t.apply_lora) increlora::load_adapter(*model, a.t.adapter_dir);
      apps::load_trained_head(*model, to.head_prefixes, a.t.adapter_dir);
    }
    const auto metrics = apps::evaluate_model(*model, task, device, to.precision);
    json entry = {{"event", "eval"}, {"step", 0}, {"adapter_dir", a.t.adapter_dir}};
    for (const auto& [k, v] : metrics) entry["eval_" + k] = std::isfinite(v) ? json(v) : json(nullptr);
    apps::JsonLog((out_dir / "log.jsonl").string(), false).write(entry);
    apps::write_json((out_dir / "metrics.json").string(),
                     {{"task", "summarization"}, {"main_metric", "eval_" + to.main_metric}, {"final", entry},
                      {"best", entry}, {"evaluations", json::array({entry})}, {"total_steps", 0}});
    if (last) write_prediction_files(*last, splits.eval, out_dir);
    fmt::print("summarize: eval (no training): loss {:.4f}{}; wrote {}\n", metrics.at("loss"),
               a.predict_with_generate ? fmt::format(", rouge1 {:.2f}, rouge2 {:.2f}, rougeL {:.2f}",
                                                     metrics.at("rouge1"), metrics.at("rouge2"), metrics.at("rougeL"))
                                       : std::string(),
               out_dir.string());
    return 0;
  }

  apps::Trainer trainer(*model, to);
  if (const auto* allocator = trainer.allocator()) {
    fmt::print("summarize: {} adapted layers, budget {} total rank in {} rounds of top_h {} x {}; {} of {} "
               "parameters trainable\n", allocator->modules().size(), allocator->budget(), allocator->planned_rounds(),
               a.t.top_h, allocator->incre_rank_num(), trainer.trainable_parameters(), trainer.total_parameters());
  }
  std::fflush(stdout);
  const auto result = trainer.train(task);
  if (result.stopped_early || !writer) return 0;
  trainer.write_outputs(result, "summarization", {{"task", "summarization"}});
  if (last) write_prediction_files(*last, splits.eval, out_dir);
  if (result.best.is_null()) {
    fmt::print("summarize: done in {:.1f} s; wrote {}\n", result.train_seconds, out_dir.string());
  } else {
    fmt::print("summarize: done in {:.1f} s; best eval_{} {:.4f} at step {}; wrote {}\n", result.train_seconds,
               to.main_metric, result.best.value("eval_" + to.main_metric, json(0.0)).get<double>(),
               result.best["step"].get<int64_t>(), out_dir.string());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return increlora::apps::run_program("summarize", run, argc, argv); }
