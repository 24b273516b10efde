// GLUE fine-tuning with IncreLoRA on an encoder read from a Hugging Face checkpoint directory (BERT family:
// config.json, model.safetensors or its shards, vocab.txt; DeBERTa-v2/v3: config.json, model.safetensors,
// spm.model), with the seed's run_glue flags:
//
//   glue --task_name sst2 --data_dir ../shared/data/glue/SST-2 --target_rank 2 --lora_r 1
//        --reg_orth_coef 0.1 --init_warmup 100 --incre_interval 100 --top_h 6 --beta1 0.85 --beta2 0.85
//        --lora_module query,key,value,intermediate,layer.output,attention.output --lora_alpha 16
//        --lora_dropout 0.1 --max_seq_length 128 --per_device_train_batch_size 32 --learning_rate 1e-3
//        --num_train_epochs 1 --warmup_steps 100 --eval_steps 500 --logging_steps 50 --seed 42
//        --root_output_dir out/sst2
//
// Writes under --root_output_dir: args.json (the settings), log.jsonl (one JSON object per training log,
// allocation and evaluation), metrics.json (final and best evaluation), rank_pattern.{json,csv},
// rank_heatmap.svg, training_curves.svg, adapter/ (the adapter and the trained head: `glue --do_train False
// --adapter_dir DIR/adapter` evaluates it) and, as asked: checkpoint/ (--save_steps), predictions/
// (--do_predict, the GLUE submission files), a PEFT adapter (--export_peft) and a merged Hugging Face checkpoint
// (--export_merged). `glue --help` lists every flag. The training loop is increlora::apps::Trainer.
#include "glue_data.hpp"

#include <increlora/apps/flags.hpp>
#include <increlora/apps/output.hpp>
#include <increlora/apps/launch.hpp>
#include <increlora/apps/trainer.hpp>
#include <increlora/apps/training_flags.hpp>
#include <increlora/increlora.hpp>
#include <increlora/models/bert.hpp>
#include <increlora/models/encoder.hpp>
#include <increlora/tasks/glue.hpp>

#include <torch/nn/functional/loss.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

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
namespace bert = increlora::bert;
namespace models = increlora::models;
namespace glue = increlora::glue;
using nlohmann::json;
using increlora::apps::glue_app::Dataset;

struct Args {
  apps::TrainingFlags t;  // the flags every program shares (IncreLoRA, AdamW, cadence, precision, checkpoints)
  // run_glue's task flags
  std::string task_name;
  double cls_dropout = -1;
  int64_t max_seq_length = 128;
  std::string root_output_dir = "output/glue";
  std::string model_name_or_path;
  bool do_predict = false;
  // ours
  std::string data_dir;
  std::string model_dir;
  std::string test_file;
  int64_t max_eval_samples = 0;
  std::string init_from_peft;
  std::string export_peft;
  bool export_peft_uniform_rank = false;
  std::string export_merged;
};

// Flags that do not change what a run computes: a resumed run may set them differently.
const std::set<std::string> kRunControlFlags = {
    "save_steps", "resume_from_checkpoint", "stop_after_step", "device", "root_output_dir",
    "per_device_eval_batch_size", "do_predict", "test_file", "export_peft", "export_peft_uniform_rank",
    "export_merged", "logging_steps"};

Args parse_args(int argc, char** argv, json& args_json) {
  Args a;
  // run_glue's defaults (the original's GLUE scripts set the schedule per task).
  a.t.lora_module = "query,key,value,intermediate,layer.output,attention.output";
  a.model_dir = apps::default_model_dir();
  apps::Flags f("glue", "--task_name TASK --data_dir DIR [flags]");
  f.add("task_name", &a.task_name, "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (required)");
  f.add("data_dir", &a.data_dir, "the task's GLUE folder, holding train.tsv and dev.tsv (required)");
  f.add("model_dir", &a.model_dir, "Hugging Face checkpoint directory: config.json, model.safetensors, vocab.txt "
        "(BERT family) or spm.model (DeBERTa-v2/v3)");
  f.add("model_name_or_path", &a.model_name_or_path, "a local Hugging Face checkpoint directory (the seed's name "
        "for --model_dir; a hub id must be downloaded first)");
  f.add("cls_dropout", &a.cls_dropout, "dropout before the classifier; < 0 uses the config's");
  f.add("max_seq_length", &a.max_seq_length, "tokens per input after truncation");
  f.add("max_eval_samples", &a.max_eval_samples, "evaluate on the first N examples only (0: all)");
  f.add("root_output_dir", &a.root_output_dir, "folder for every output (args.json, log.jsonl, metrics.json, ...)");
  f.add("do_predict", &a.do_predict, "write the test set's predictions as GLUE submission files to "
        "ROOT_OUTPUT_DIR/predictions, and their logits beside them (reads --test_file, default the task's test file "
        "in --data_dir)");
  f.add("test_file", &a.test_file, "with --do_predict: the test TSV (MNLI: the matched one; the mismatched one "
        "is found beside it)");
  f.add("init_from_peft", &a.init_from_peft, "start the adapter (and head, when saved) from a PEFT LoRA or AdaLoRA "
        "adapter folder (increlora::import_peft) and grow it from its ranks; with --do_train False, evaluate it");
  f.add("export_peft", &a.export_peft, "after training, write a PEFT adapter folder (task SEQ_CLS, the head as "
        "modules_to_save) that peft.AutoPeftModelForSequenceClassification loads");
  f.add("export_peft_uniform_rank", &a.export_peft_uniform_rank, "with --export_peft: every layer at the largest "
        "rank (zero-padded) with lora_alpha = r, for serving engines that need one rank");
  f.add("export_merged", &a.export_merged, "after training, write a plain Hugging Face checkpoint (adapter merged) "
        "that transformers' AutoModelForSequenceClassification loads");
  a.t.add_to(f, "the pooler and classifier alone", "query,key,value,intermediate,layer.output,attention.output");
  apps::ignore_seed_trainer_flags(f);
  apps::parse_command_line(f, argc, argv);
  a.model_dir = apps::resolve_model_dir(a.model_name_or_path, a.model_dir, f.given("model_dir"));
  const auto need = [](bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument(msg);
  };
  need(!a.task_name.empty(), "--task_name is required (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli)");
  need(!a.data_dir.empty(), "--data_dir is required: the task's GLUE folder (e.g. ../shared/data/glue/SST-2)");
  need(a.max_seq_length >= 8, "--max_seq_length must be >= 8");
  a.t.validate();
  need(a.t.do_train || a.t.do_eval || a.do_predict,
       "--do_train, --do_eval and --do_predict are all False: nothing to do");
  need(a.t.do_train || (a.export_peft.empty() && a.export_merged.empty()),
       "--export_peft and --export_merged go with --do_train True");
  need(a.t.adapter_dir.empty() || a.init_from_peft.empty(), "--adapter_dir and --init_from_peft both name the "
       "adapter to start from; give one of them");
  need(a.t.apply_lora || (a.export_peft.empty() && a.init_from_peft.empty()),
       "--export_peft and --init_from_peft need adapters (--apply_lora True)");
  need(a.init_from_peft.empty() || a.t.resume_from_checkpoint.empty(), "--init_from_peft starts a run; a resumed run "
       "already has its adapter (drop --init_from_peft)");
  need(a.export_peft.empty() || fs::absolute(a.export_peft) != fs::absolute(a.root_output_dir),
       "--export_peft must name a folder of its own, not --root_output_dir");
  args_json = f.to_json();
  return a;
}

// The test files of --do_predict: --test_file (MNLI: the mismatched one beside it), or the task's in --data_dir.
std::vector<std::string> test_paths(const Args& a, const glue::TaskSpec& spec) {
  std::vector<std::string> paths;
  for (size_t i = 0; i < spec.test_files.size(); ++i) {
    if (a.test_file.empty()) {
      paths.push_back((fs::path(a.data_dir) / spec.test_files[i]).string());
    } else if (i == 0) {
      paths.push_back(a.test_file);
    } else {
      paths.push_back((fs::path(a.test_file).parent_path() / spec.test_files[i]).string());
    }
  }
  return paths;
}

int run(int argc, char** argv) {
  json args_json;
  const Args a = parse_args(argc, argv, args_json);
  const auto spec = glue::task_spec(a.task_name);
  auto device = apps::parse_device(a.t.device);
  // Under torchrun: this rank's GPU and the process group (rank 0 alone writes files and prints).
  const auto launch = apps::join_launch("glue", device);
  const bool writer = launch.writes_outputs();
  const auto precision = apps::precision_from_flags(a.t.bf16, a.t.fp16);
  torch::manual_seed(static_cast<uint64_t>(a.t.seed));

  // Data.
  const auto tokenizer_ptr = models::load_tokenizer(a.model_dir);
  const auto& tokenizer = *tokenizer_ptr;
  const fs::path data_dir(a.data_dir);
  Dataset train;
  if (a.t.do_train) {
    train = apps::glue_app::encode(glue::read_tsv((data_dir / "train.tsv").string(), spec), tokenizer,
                                   a.max_seq_length, "train");
  }
  std::vector<std::pair<std::string, Dataset>> evals;
  if (a.t.do_eval) {
    for (const auto& file : spec.eval_files) {
      auto examples = glue::read_tsv((data_dir / file).string(), spec);
      if (a.max_eval_samples > 0 && static_cast<int64_t>(examples.size()) > a.max_eval_samples) {
        examples.resize(static_cast<size_t>(a.max_eval_samples));
      }
      // MNLI's mismatched set reports its metrics with a "_mm" suffix, as run_glue does.
      evals.emplace_back(file.find("mismatched") != std::string::npos ? "_mm" : "",
                         apps::glue_app::encode(examples, tokenizer, a.max_seq_length, file));
    }
  }
  const auto tests = a.do_predict ? test_paths(a, spec) : std::vector<std::string>{};
  std::vector<Dataset> test_sets;
  for (const auto& path : tests) {
    test_sets.push_back(apps::glue_app::encode(glue::read_test_tsv(path, spec), tokenizer, a.max_seq_length,
                                               fs::path(path).filename().string()));
  }

  // Schedule: optimizer steps (micro-batches × accumulation).
  const int64_t steps_per_epoch = a.t.do_train ? apps::steps_per_epoch(static_cast<int64_t>(train.inputs.size()),
                                                                       a.t.per_device_train_batch_size,
                                                                       a.t.gradient_accumulation_steps,
                                                                       launch.world_size())
                                               : 1;
  const int64_t total_steps = a.t.total_steps(steps_per_epoch);

  // Model: the seed's short module names become patterns over the encoder's qualified names.
  models::AdapterPlan lora;
  lora.short_names = apps::split_commas(a.t.lora_module);
  if (lora.short_names.empty()) throw std::invalid_argument("--lora_module: name at least one layer to adapt");
  lora.r = a.t.apply_lora ? a.t.lora_r : 0;  // --apply_lora False: no adapter tensors at all
  lora.lora_alpha = a.t.lora_alpha;
  lora.lora_dropout = a.t.lora_dropout;
  auto allocator_options = a.t.allocator_options(total_steps);
  allocator_options.start_from_current_ranks(!a.init_from_peft.empty());
  const auto cls_dropout = a.cls_dropout >= 0 ? std::optional<double>(a.cls_dropout) : std::nullopt;
  if (a.t.apply_lora) {
    // The library's sizing for this plan over the layers the patterns select (counted on a probe model without
    // banks; it throws naming the candidates when a pattern matches nothing).
    const auto adapted = models::count_adapted_layers(a.model_dir, models::HeadKind::kSequenceClassification, lora,
                                                      spec.num_labels());
    lora.capacity = a.t.lora_capacity > 0 ? a.t.lora_capacity : increlora::recommended_capacity(allocator_options, adapted);
  }
  torch::manual_seed(static_cast<uint64_t>(a.t.seed));
  auto model = models::make_sequence_classifier(a.model_dir, spec.num_labels(), lora, cls_dropout);
  const auto& load_initialized = model.initialized;
  if (!a.init_from_peft.empty()) {
    const auto imported = increlora::import_peft(*model.module, a.init_from_peft);
    int64_t total = 0;
    for (const auto& [name, r] : imported.ranks) total += r;
    fmt::print("glue: started from the PEFT {} adapter {}: {} layers, total rank {}, {} tensors in full\n",
               imported.peft_type, a.init_from_peft, imported.ranks.size(), total, imported.full_tensors.size());
  }
  model.module->to(device);
  model.module->train();

  fs::create_directories(a.root_output_dir);
  const fs::path out_dir(a.root_output_dir);
  args_json["total_steps"] = total_steps;
  args_json["device"] = device.str();
  args_json["model_type"] = model.model_type;
  // Not among the settings a resumed run must share: it may run at another world size.
  json written_args = args_json;
  written_args["world_size"] = launch.world_size();
  if (writer) apps::write_json((out_dir / "args.json").string(), written_args);

  auto to = a.t.trainer_options("glue", a.root_output_dir, device, total_steps, steps_per_epoch);
  if (to.allocator) to.allocator = allocator_options;
  to.main_metric = spec.main_metric;
  to.head_prefixes = model.head_prefixes;
  to.run_args = args_json;
  to.run_control_flags = kRunControlFlags;
  to.process_group = launch.group;

  const int64_t pad_id = tokenizer.pad_id();
  apps::TrainingTask task;
  task.num_examples = static_cast<int64_t>(train.inputs.size());
  task.collate = [&](const std::vector<size_t>& idx) {
    return apps::glue_app::collate(train, idx, pad_id, device, a.t.cuda_graphs ? a.max_seq_length : 0);
  };
  task.loss = [&](const std::vector<torch::Tensor>& in) {
    const auto logits = model.forward(in[0], in[1], in[2]).to(torch::kFloat);
    return spec.is_regression() ? torch::nn::functional::mse_loss(logits.select(1, 0), in[4])
                                : torch::nn::functional::cross_entropy(logits, in[3]);
  };
  if (a.t.do_eval) {
    task.evaluate = [&] {
      glue::Metrics all;
      for (const auto& [suffix, data] : evals) {
        const auto p = apps::glue_app::predict(model, data, spec, a.t.per_device_eval_batch_size, pad_id, device,
                                               "eval" + suffix);
        for (const auto& [k, v] : apps::glue_app::score(spec, p, data)) all[k + suffix] = v;
      }
      return all;
    };
  }

  // --do_predict: the test sets' predictions as GLUE submission files, written whole or not at all.
  const auto write_predictions = [&] {
    torch::NoGradGuard no_grad;
    model.module->eval();
    apps::AutocastGuard autocast(device, precision);
    fs::create_directories(out_dir / "predictions");
    for (size_t i = 0; i < test_sets.size(); ++i) {
      const auto p = apps::glue_app::predict(model, test_sets[i], spec, a.t.per_device_eval_batch_size, pad_id, device,
                                             "predict");
      const auto path = (out_dir / "predictions" / spec.submission_files[i]).string();
      apps::write_text_file(path, glue::submission_tsv(spec, p.class_ids, p.scores));
      // The logits beside it (not part of a submission): for ensembles, calibration and checks.
      apps::write_text_file(path.substr(0, path.size() - 4) + ".logits.tsv", apps::glue_app::logits_tsv(spec, p.logits));
      fmt::print("glue: wrote {} predictions to {}\n", test_sets[i].inputs.size(), path);
    }
  };

  if (!a.t.do_train) {
    // Evaluate (and predict with) the saved run of --adapter_dir, or the pretrained encoder with a fresh head.
    if (!a.t.adapter_dir.empty()) {
      if (a.t.apply_lora) increlora::load_adapter(*model.module, a.t.adapter_dir);
      apps::load_trained_head(*model.module, model.head_prefixes, a.t.adapter_dir);
    }
    apps::TrainResult result;
    if (a.t.do_eval) {
      const auto metrics = apps::evaluate_model(*model.module, task, device, precision);
      json entry = {{"event", "eval"}, {"step", 0}, {"adapter_dir", a.t.adapter_dir}};
      for (const auto& [k, v] : metrics) entry["eval_" + k] = std::isfinite(v) ? json(v) : json(nullptr);
      int64_t rank = 0;
      for (const auto& [name, layer] : increlora::named_svd_linears(*model.module)) rank += layer->rank();
      entry["total_rank"] = rank;
      apps::JsonLog((out_dir / "log.jsonl").string(), false).write(entry);
      result.final = result.best = entry;
      result.evaluations = json::array({entry});
      std::string text;
      for (const auto& [k, v] : metrics) text += fmt::format("{}{} {:.4f}", text.empty() ? "" : ", ", k, v);
      fmt::print("eval  (no training{}): {}\n", a.t.adapter_dir.empty() ? "" : ", " + a.t.adapter_dir, text);
      apps::write_json((out_dir / "metrics.json").string(),
                       {{"task", spec.name}, {"main_metric", "eval_" + spec.main_metric}, {"final", entry},
                        {"best", entry}, {"evaluations", result.evaluations}, {"total_steps", 0}, {"total_rank", rank}});
    }
    if (a.do_predict) write_predictions();
    return 0;
  }

  apps::Trainer trainer(*model.module, to);
  const auto* allocator = trainer.allocator();
  if (writer) {  // the other ranks of a launch print nothing
    fmt::print("glue: task {} | {} train / {} eval examples | {} steps ({} per epoch, batch {} x {} accumulated) on "
               "{}, {}\n", spec.name, train.inputs.size(), evals.empty() ? 0 : evals.front().second.inputs.size(),
               total_steps, steps_per_epoch, a.t.per_device_train_batch_size, a.t.gradient_accumulation_steps, device.str(),
               apps::to_string(precision));
    if (allocator) {
      fmt::print("glue: {} adapted layers, budget {} total rank in {} rounds of top_h {} x {} (first at step {}){}{}; "
                 "{} of {} parameters trainable\n",
                 allocator->modules().size(), allocator->budget(), allocator->planned_rounds(), a.t.top_h,
                 allocator->incre_rank_num(), allocator->planned_rounds() > 0 ? allocator->allocation_step(1) : -1,
                 a.t.advance_learn ? ", advance learning" : "", a.t.multi_lr ? ", restart warmup" : "",
                 trainer.trainable_parameters(), trainer.total_parameters());
    } else {
      fmt::print("glue: no adapters (--apply_lora False); {} of {} parameters trainable (the head)\n",
                 trainer.trainable_parameters(), trainer.total_parameters());
    }
    if (!load_initialized.empty()) {
      size_t heads = 0;
      for (const auto& n : load_initialized) heads += !increlora::is_adapter_tensor(n);
      fmt::print("glue: {} head tensors freshly initialized\n", heads);
    }
  }
  std::fflush(stdout);

  const auto result = trainer.train(task);
  if (result.stopped_early || !writer) return 0;
  trainer.write_outputs(result, spec.name, {{"task", spec.name}});

  if (a.do_predict) write_predictions();
  if (!a.export_peft.empty()) {
    // A complete PEFT adapter: the head (pooler and classifier) as modules_to_save, the local checkpoint as the
    // base, so that peft.AutoPeftModelForSequenceClassification.from_pretrained(DIR) rebuilds this model.
    std::vector<std::string> head_modules;
    for (auto prefix : model.head_prefixes) head_modules.push_back(prefix.substr(0, prefix.size() - 1));
    increlora::export_peft(*model.module, a.export_peft, increlora::PeftExportOptions()
                                                      .task_type("SEQ_CLS")
                                                      .base_model_name_or_path(fs::absolute(a.model_dir).string())
                                                      .modules_to_save(head_modules)
                                                      .uniform_rank(a.export_peft_uniform_rank));
    fmt::print("glue: wrote the PEFT adapter to {}\n", a.export_peft);
  }
  if (!a.export_merged.empty()) {
    json labels = json::object(), ids = json::object();
    for (int64_t i = 0; i < spec.num_labels(); ++i) {
      const auto name = spec.is_regression() ? std::string("LABEL_0") : spec.labels[static_cast<size_t>(i)];
      labels[std::to_string(i)] = name;
      ids[name] = i;
    }
    const json patch = {{"architectures", {model.architecture}},
                        {"id2label", labels}, {"label2id", ids},
                        {"problem_type", spec.is_regression() ? "regression" : "single_label_classification"}};
    bert::save_merged_pretrained(*model.module, a.model_dir, a.export_merged, patch.dump());
    fmt::print("glue: wrote the merged checkpoint to {}\n", a.export_merged);
  }
  const auto& best = result.best;
  if (best.is_null()) {
    fmt::print("glue: done in {:.1f} s (no evaluation: --do_eval False); wrote {}\n", result.train_seconds,
               out_dir.string());
  } else {
    fmt::print("glue: done in {:.1f} s; best eval_{} {:.4f} at step {}; wrote {}\n", result.train_seconds,
               spec.main_metric, best.value("eval_" + spec.main_metric, json(0.0)).get<double>(),
               best["step"].get<int64_t>(), out_dir.string());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) { return increlora::apps::run_program("glue", run, argc, argv); }
