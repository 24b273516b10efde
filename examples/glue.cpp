// GLUE fine-tuning with IncreLoRA on a BERT-family encoder read from a Hugging Face checkpoint directory
// (config.json, model.safetensors, vocab.txt), with the seed's run_glue flags:
//
//   glue --task_name sst2 --data_dir ../shared/data/glue/SST-2 \
//        --target_rank 2 --lora_r 1 --reg_orth_coef 0.1 --init_warmup 100 --incre_interval 100 --top_h 6 \
//        --beta1 0.85 --beta2 0.85 --lora_module query,key,value,intermediate,layer.output,attention.output \
//        --lora_alpha 16 --lora_dropout 0.1 --max_seq_length 128 --per_device_train_batch_size 32 \
//        --learning_rate 1e-3 --num_train_epochs 1 --warmup_steps 100 --eval_steps 500 --logging_steps 50 \
//        --seed 42 --root_output_dir out/sst2
//
// Writes under --root_output_dir: args.json (the settings), log.jsonl (one JSON object per training log,
// allocation and evaluation), metrics.json (final and best evaluation), rank_pattern.json (module → rank),
// adapter/ (the adapter and the trained head: `glue --do_train False --adapter_dir DIR/adapter` evaluates it) and,
// with --save_steps, checkpoint/ (`--resume_from_checkpoint DIR/checkpoint` continues the run).
// `glue --help` lists every flag.
#include <bert.hpp>
#include <glue.hpp>
#include <tokenizer.hpp>

#include <increlora/increlora.hpp>

#include <torch/cuda.h>
#include <torch/nn/functional/loss.h>
#include <torch/nn/utils/clip_grad.h>
#include <torch/optim/adamw.h>
#include <torch/utils.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using increlora::bert::glue::Example;

// ---- flags -------------------------------------------------------------------------------------------------

/// A small parser for "--name value", "--name=value" and boolean "--name [true|false]" flags.
class Flags {
 public:
  void add(const std::string& name, int64_t* v, const std::string& help) { add_flag(name, Kind::kInt, v, help, std::to_string(*v)); }
  void add(const std::string& name, double* v, const std::string& help) { add_flag(name, Kind::kDouble, v, help, fmt::format("{}", *v)); }
  void add(const std::string& name, std::string* v, const std::string& help) { add_flag(name, Kind::kString, v, help, *v); }
  void add(const std::string& name, bool* v, const std::string& help) { add_flag(name, Kind::kBool, v, help, *v ? "true" : "false"); }
  /// Accepted for compatibility with the seed's command lines, and ignored.
  void ignore(const std::string& name, bool takes_value, const std::string& why) {
    ignored_[name] = {takes_value, why};
  }

  void parse(int argc, char** argv) {
    for (int i = 1; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg == "--help" || arg == "-h") {
        help_ = true;
        continue;
      }
      if (arg.rfind("--", 0) != 0) fail(fmt::format("unexpected argument '{}': flags start with --", arg));
      std::string name = arg.substr(2);
      std::optional<std::string> value;
      if (const auto eq = name.find('='); eq != std::string::npos) value = name.substr(eq + 1), name.resize(eq);
      if (const auto ig = ignored_.find(name); ig != ignored_.end()) {
        seen_ignored_.emplace_back(name, ig->second.second);
        if (ig->second.first && !value && i + 1 < argc) ++i;
        if (!ig->second.first && !value && i + 1 < argc && is_bool_text(argv[i + 1])) ++i;
        continue;
      }
      const auto it = std::find_if(flags_.begin(), flags_.end(), [&](const Flag& f) { return f.name == name; });
      if (it == flags_.end()) {
        std::string known;
        for (const auto& f : flags_) known += (known.empty() ? "--" : ", --") + f.name;
        fail(fmt::format("unknown flag --{}. Known flags: {}", name, known));
      }
      if (it->kind == Kind::kBool) {
        if (!value && i + 1 < argc && is_bool_text(argv[i + 1])) value = argv[++i];
        set(*it, value.value_or("true"));
      } else {
        if (!value) {
          if (i + 1 >= argc) fail(fmt::format("--{} needs a value ({})", name, it->help));
          value = argv[++i];
        }
        set(*it, *value);
      }
      it->given = true;
    }
  }

  bool help() const { return help_; }
  /// The compatibility-only flags the command line gave, with why each has no effect.
  const std::vector<std::pair<std::string, std::string>>& ignored_seen() const { return seen_ignored_; }
  bool given(const std::string& name) const {
    for (const auto& f : flags_) if (f.name == name) return f.given;
    return false;
  }
  std::string usage() const {
    std::string s = "usage: glue --task_name TASK --data_dir DIR [flags]\n\nflags (default in brackets):\n";
    for (const auto& f : flags_) s += fmt::format("  --{:<30} {} [{}]\n", f.name, f.help, f.default_text);
    s += "\naccepted for the seed's command lines and ignored:\n";
    for (const auto& [name, v] : ignored_) s += fmt::format("  --{:<30} {}\n", name, v.second);
    return s;
  }
  json to_json() const {
    json j;
    for (const auto& f : flags_) {
      switch (f.kind) {
        case Kind::kInt: j[f.name] = *static_cast<int64_t*>(f.target); break;
        case Kind::kDouble: j[f.name] = *static_cast<double*>(f.target); break;
        case Kind::kString: j[f.name] = *static_cast<std::string*>(f.target); break;
        case Kind::kBool: j[f.name] = *static_cast<bool*>(f.target); break;
      }
    }
    return j;
  }

 private:
  enum class Kind { kInt, kDouble, kString, kBool };
  struct Flag {
    std::string name;
    Kind kind;
    void* target;
    std::string help, default_text;
    bool given = false;
  };
  [[noreturn]] static void fail(const std::string& message) { throw std::invalid_argument(message); }
  static bool is_bool_text(const std::string& s) {
    return s == "true" || s == "false" || s == "True" || s == "False" || s == "1" || s == "0";
  }
  void add_flag(const std::string& name, Kind kind, void* target, const std::string& help, const std::string& def) {
    flags_.push_back({name, kind, target, help, def});
  }
  static void set(const Flag& f, const std::string& text) {
    try {
      size_t used = 0;
      switch (f.kind) {
        case Kind::kInt: {
          const long long v = std::stoll(text, &used);
          if (used != text.size()) throw std::invalid_argument(text);
          *static_cast<int64_t*>(f.target) = v;
          break;
        }
        case Kind::kDouble: {
          const double v = std::stod(text, &used);
          if (used != text.size() || !std::isfinite(v)) throw std::invalid_argument(text);
          *static_cast<double*>(f.target) = v;
          break;
        }
        case Kind::kString: *static_cast<std::string*>(f.target) = text; break;
        case Kind::kBool:
          if (!is_bool_text(text)) throw std::invalid_argument(text);
          *static_cast<bool*>(f.target) = text == "true" || text == "True" || text == "1";
          break;
      }
    } catch (const std::logic_error&) {
      const char* what = f.kind == Kind::kInt ? "an integer" : f.kind == Kind::kDouble ? "a number" : "true or false";
      fail(fmt::format("--{}: expected {}, got '{}' ({})", f.name, what, text, f.help));
    }
  }
  std::vector<Flag> flags_;
  std::map<std::string, std::pair<bool, std::string>> ignored_;
  std::vector<std::pair<std::string, std::string>> seen_ignored_;
  bool help_ = false;
};

struct Args {
  // the seed's flags
  std::string task_name;
  int64_t target_rank = 2;
  int64_t target_total_rank = 0;
  int64_t lora_r = 1;
  double reg_orth_coef = 0.1;
  int64_t init_warmup = 1000;
  int64_t incre_interval = 1000;
  int64_t top_h = 2;
  int64_t incre_rank_num = 0;
  double beta1 = 0.85;
  double beta2 = 0.85;
  std::string lora_module = "query,key,value,intermediate,layer.output,attention.output";
  double lora_alpha = 16;
  double lora_dropout = 0.0;
  bool advance_learn = true;  // on by default, as in the original's run_glue.py
  bool multi_lr = true;
  double cls_dropout = -1;
  int64_t max_seq_length = 128;
  int64_t per_device_train_batch_size = 32;
  double learning_rate = 1e-3;
  double num_train_epochs = 3;
  int64_t warmup_steps = 0;
  double weight_decay = 0;
  int64_t eval_steps = 1000;
  int64_t logging_steps = 100;
  int64_t seed = 42;
  std::string root_output_dir = "output/glue";
  // ours
  std::string data_dir;
  std::string model_dir;
  int64_t max_steps = 0;
  int64_t per_device_eval_batch_size = 64;
  int64_t max_eval_samples = 0;
  int64_t lora_capacity = 0;
  double max_grad_norm = 1.0;
  std::string device = "auto";
  bool exact_scoring = false;
  bool random_allocation = false;
  bool apply_lora = true;
  bool cuda_graphs = false;
  int64_t save_steps = 0;
  std::string resume_from_checkpoint;
  int64_t stop_after_step = 0;  // tests: end after this step as a killed run would (no metrics.json)
  bool do_train = true;
  bool do_eval = true;
  std::string model_name_or_path;
  std::string adapter_dir;
};

// Beside the adapter files in the output's adapter/ folder: every other tensor the run trained (pooler and
// classifier), so that the folder reproduces the run's model.
constexpr const char* kTrainedHeadFile = "head.safetensors";

// Flags that do not change what a run computes: a resumed run may set them differently.
bool is_run_control_flag(const std::string& name) {
  return name == "save_steps" || name == "resume_from_checkpoint" || name == "stop_after_step" || name == "device" ||
         name == "root_output_dir" || name == "per_device_eval_batch_size";
}

std::string default_model_dir() {
  const char* home = std::getenv("HOME");
  const char* cache = std::getenv("INCRELORA_CACHE");
  const std::string root = cache ? cache : std::string(home ? home : ".") + "/.cache/increlora";
  return root + "/models/all-MiniLM-L6-v2";
}

Args parse_args(int argc, char** argv, json& args_json) {
  Args a;
  a.model_dir = default_model_dir();
  Flags f;
  f.add("task_name", &a.task_name, "GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli (required)");
  f.add("data_dir", &a.data_dir, "the task's GLUE folder, holding train.tsv and dev.tsv (required)");
  f.add("model_dir", &a.model_dir, "Hugging Face checkpoint directory: config.json, model.safetensors, vocab.txt");
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
  f.add("lora_module", &a.lora_module,
        "comma-separated layers to adapt: query,key,value,intermediate,layer.output,attention.output, qualified "
        "names, dotted suffixes or re:<regex>");
  f.add("lora_alpha", &a.lora_alpha, "adapter scale numerator (scale = lora_alpha / rank)");
  f.add("lora_dropout", &a.lora_dropout, "dropout on the adapter branch's input");
  f.add("advance_learn", &a.advance_learn, "train reserve triplets ahead of their activation (the original's default)");
  f.add("multi_lr", &a.multi_lr, "give newly activated triplets their own warmup and decay, as the original's "
        "Multi_LambdaLR (the original's default)");
  f.add("apply_lora", &a.apply_lora, "adapt the encoder; False trains the pooler and classifier alone (a control)");
  f.add("cls_dropout", &a.cls_dropout, "dropout before the classifier; < 0 uses the config's");
  f.add("max_seq_length", &a.max_seq_length, "tokens per input after truncation");
  f.add("per_device_train_batch_size", &a.per_device_train_batch_size, "training batch size");
  f.add("per_device_eval_batch_size", &a.per_device_eval_batch_size, "evaluation batch size");
  f.add("learning_rate", &a.learning_rate, "peak learning rate of AdamW");
  f.add("num_train_epochs", &a.num_train_epochs, "epochs of training (ignored when max_steps > 0)");
  f.add("max_steps", &a.max_steps, "optimizer steps; > 0 overrides num_train_epochs");
  f.add("warmup_steps", &a.warmup_steps, "linear learning-rate warmup steps (then linear decay to 0)");
  f.add("weight_decay", &a.weight_decay, "AdamW weight decay (not applied to biases and LayerNorm)");
  f.add("max_grad_norm", &a.max_grad_norm, "gradient clipping norm (0: off)");
  f.add("eval_steps", &a.eval_steps, "evaluate every this many steps (and at the end)");
  f.add("max_eval_samples", &a.max_eval_samples, "evaluate on the first N examples only (0: all)");
  f.add("logging_steps", &a.logging_steps, "write a training log line every this many steps");
  f.add("seed", &a.seed, "random seed (initialization, dropout, data order)");
  f.add("root_output_dir", &a.root_output_dir, "folder for args.json, log.jsonl, metrics.json, rank_pattern.json");
  f.add("lora_capacity", &a.lora_capacity, "triplets each adapted layer can hold; 0 sizes it from the target");
  f.add("device", &a.device, "cpu, cuda, cuda:N, or auto (cuda when available)");
  f.add("exact_scoring", &a.exact_scoring, "score importance at every step, as the original does (slower)");
  f.add("random_allocation", &a.random_allocation, "ablation: grow top_h layers chosen at random (seeded by --seed) "
        "instead of the most important ones");
  f.add("cuda_graphs", &a.cuda_graphs, "on CUDA, replay forward + backward from CUDA graphs (increlora::GraphedStep; "
        "training batches are then padded to max_seq_length so that one shape is captured)");
  f.add("model_name_or_path", &a.model_name_or_path, "a local Hugging Face checkpoint directory (the seed's name for "
        "--model_dir; a hub id must be downloaded first)");
  f.add("do_train", &a.do_train, "train (False: evaluate the model of --adapter_dir, or the pretrained one)");
  f.add("do_eval", &a.do_eval, "evaluate on the dev set(s) every --eval_steps and at the end");
  f.add("adapter_dir", &a.adapter_dir, "with --do_train False: the adapter/ folder a glue run wrote (adapter and "
        "trained head) to evaluate");
  f.ignore("lora_type", true, "always svd");
  f.ignore("evaluation_strategy", true, "always steps (--eval_steps)");
  f.add("save_steps", &a.save_steps, "write a training checkpoint to ROOT_OUTPUT_DIR/checkpoint every N steps (0: "
        "never); a killed run leaves the last complete one");
  f.add("resume_from_checkpoint", &a.resume_from_checkpoint, "continue the run saved in this checkpoint folder "
        "(the same flags otherwise; exact on CPU)");
  f.add("stop_after_step", &a.stop_after_step, "end after this many steps without writing metrics.json, as a "
        "killed run would (for tests of resuming)");
  f.ignore("save_strategy", true, "checkpoints follow --save_steps");
  f.ignore("tb_writter_loginterval", true, "see log.jsonl");
  f.ignore("report_to", true, "see log.jsonl");
  for (const char* b : {"apply_increlora", "overwrite_output_dir"}) f.ignore(b, false, "always on");
  f.parse(argc, argv);
  if (f.help()) {
    std::fputs(f.usage().c_str(), stdout);
    std::exit(0);
  }
  for (const auto& [name, why] : f.ignored_seen()) fmt::print("glue: --{} has no effect here ({})\n", name, why);
  if (!a.model_name_or_path.empty()) {
    if (!fs::is_directory(a.model_name_or_path)) {
      throw std::invalid_argument("--model_name_or_path " + a.model_name_or_path + ": not a local directory. This "
                                  "program reads a Hugging Face checkpoint directory (config.json, model.safetensors, "
                                  "vocab.txt): download the model (e.g. huggingface-cli download) and pass its folder");
    }
    if (f.given("model_dir") && fs::path(a.model_dir) != fs::path(a.model_name_or_path)) {
      throw std::invalid_argument("--model_name_or_path and --model_dir name different folders; give one of them");
    }
    a.model_dir = a.model_name_or_path;
  }
  auto need = [&](bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument(msg);
  };
  need(!a.task_name.empty(), "--task_name is required (cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte, wnli)");
  need(!a.data_dir.empty(), "--data_dir is required: the task's GLUE folder (e.g. ../shared/data/glue/SST-2)");
  need(a.max_seq_length >= 8, "--max_seq_length must be >= 8");
  need(a.per_device_train_batch_size >= 1, "--per_device_train_batch_size must be >= 1");
  need(a.per_device_eval_batch_size >= 1, "--per_device_eval_batch_size must be >= 1");
  need(a.learning_rate > 0, "--learning_rate must be > 0");
  need(a.num_train_epochs > 0 || a.max_steps > 0, "--num_train_epochs must be > 0 (or give --max_steps)");
  need(a.eval_steps >= 1, "--eval_steps must be >= 1");
  need(a.logging_steps >= 1, "--logging_steps must be >= 1");
  need(a.warmup_steps >= 0, "--warmup_steps must be >= 0");
  need(a.lora_r >= 1, "--lora_r must be >= 1");
  need(a.save_steps >= 0, "--save_steps must be >= 0 (0: no checkpoints)");
  need(a.stop_after_step >= 0, "--stop_after_step must be >= 0");
  need(a.do_train || a.do_eval, "--do_train False --do_eval False leaves nothing to do");
  need(a.adapter_dir.empty() || !a.do_train, "--adapter_dir is for evaluating a saved run (--do_train False); to "
       "continue training use --resume_from_checkpoint");
  need(a.do_train || a.resume_from_checkpoint.empty(), "--resume_from_checkpoint needs --do_train True");
  args_json = f.to_json();
  return a;
}

std::vector<std::string> split_commas(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= s.size()) {
    const auto comma = s.find(',', start);
    auto item = s.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    item.erase(0, item.find_first_not_of(' '));
    item.erase(item.find_last_not_of(' ') + 1);
    if (!item.empty()) out.push_back(item);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

// ---- data --------------------------------------------------------------------------------------------------

struct Dataset {
  std::vector<increlora::bert::Encoding> inputs;
  std::vector<int64_t> labels;
  std::vector<double> scores;
};

Dataset encode(const std::vector<Example>& examples, const increlora::bert::WordPieceTokenizer& tok, int64_t max_len) {
  Dataset d;
  d.inputs.reserve(examples.size());
  for (const auto& e : examples) {
    d.inputs.push_back(tok.encode(e.text_a, e.text_b, max_len));
    d.labels.push_back(e.label);
    d.scores.push_back(e.score);
  }
  return d;
}

struct Batch {
  torch::Tensor input_ids, attention_mask, token_type_ids, labels, scores;
};

// Pads to the longest input of the batch (not to max_seq_length): the attention mask makes the padding inert,
// and short batches run much faster on a CPU. `pad_to` > 0 pads to that length instead (one shape for every
// batch, which a CUDA graph needs).
Batch collate(const Dataset& d, const std::vector<size_t>& idx, int64_t pad_id, const torch::Device& device,
              int64_t pad_to = 0) {
  size_t len = static_cast<size_t>(std::max<int64_t>(pad_to, 0));
  for (auto i : idx) len = std::max(len, d.inputs[i].input_ids.size());
  const auto n = static_cast<int64_t>(idx.size());
  auto ids = torch::full({n, static_cast<int64_t>(len)}, pad_id, torch::kLong);
  auto mask = torch::zeros({n, static_cast<int64_t>(len)}, torch::kLong);
  auto types = torch::zeros({n, static_cast<int64_t>(len)}, torch::kLong);
  auto labels = torch::empty({n}, torch::kLong);
  auto scores = torch::empty({n}, torch::kFloat);
  auto ids_a = ids.accessor<int64_t, 2>(), mask_a = mask.accessor<int64_t, 2>(), types_a = types.accessor<int64_t, 2>();
  for (int64_t r = 0; r < n; ++r) {
    const auto& e = d.inputs[idx[r]];
    for (size_t c = 0; c < e.input_ids.size(); ++c) {
      ids_a[r][c] = e.input_ids[c], mask_a[r][c] = 1, types_a[r][c] = e.token_type_ids[c];
    }
    labels[r] = d.labels[idx[r]];
    scores[r] = static_cast<float>(d.scores[idx[r]]);
  }
  return {ids.to(device), mask.to(device), types.to(device), labels.to(device), scores.to(device)};
}

// ---- evaluation --------------------------------------------------------------------------------------------

increlora::bert::glue::Metrics evaluate(increlora::bert::SequenceClassifier& model, const Dataset& d,
                                       const increlora::bert::glue::TaskSpec& spec, int64_t batch_size,
                                       int64_t pad_id, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  model->eval();
  std::vector<int64_t> pred_ids;
  std::vector<double> pred_scores;
  const size_t n = d.inputs.size();
  for (size_t start = 0; start < n; start += static_cast<size_t>(batch_size)) {
    std::vector<size_t> idx;
    for (size_t i = start; i < std::min(n, start + static_cast<size_t>(batch_size)); ++i) idx.push_back(i);
    const auto b = collate(d, idx, pad_id, device);
    const auto logits = model(b.input_ids, b.attention_mask, b.token_type_ids).to(torch::kCPU, torch::kFloat);
    if (spec.is_regression()) {
      auto s = logits.select(1, 0).contiguous();
      pred_scores.insert(pred_scores.end(), s.data_ptr<float>(), s.data_ptr<float>() + s.numel());
    } else {
      auto p = logits.argmax(1).contiguous();
      pred_ids.insert(pred_ids.end(), p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + p.numel());
    }
  }
  model->train();
  if (spec.is_regression()) return increlora::bert::glue::regression_metrics(spec.name, pred_scores, d.scores);
  return increlora::bert::glue::classification_metrics(spec.name, pred_ids, d.labels);
}

// ---- output ------------------------------------------------------------------------------------------------

class JsonLog {
 public:
  JsonLog(const fs::path& path, bool append) : out_(path, append ? std::ios::app : std::ios::trunc) {
    if (!out_) throw std::runtime_error("cannot write " + path.string() + "; check --root_output_dir");
  }
  void write(const json& j) { out_ << j.dump() << '\n' << std::flush; }

 private:
  std::ofstream out_;
};

void write_json(const fs::path& path, const json& j) {
  std::ofstream out(path);
  out << j.dump(2) << '\n';
  if (!out) throw std::runtime_error("cannot write " + path.string() + "; check --root_output_dir");
}

std::string metrics_text(const increlora::bert::glue::Metrics& m) {
  std::string s;
  for (const auto& [k, v] : m) s += fmt::format("{}{} {:.4f}", s.empty() ? "" : ", ", k, v);
  return s;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The parameters a run trains beside the adapter (the pooler and classifier), by qualified name.
void save_trained_head(increlora::bert::SequenceClassifier& model, const fs::path& dir) {
  std::vector<std::pair<std::string, torch::Tensor>> head;
  for (const auto& p : model->named_parameters()) {
    for (const auto& prefix : model->head_prefixes()) {
      if (p.key().rfind(prefix, 0) == 0) head.emplace_back(p.key(), p.value().detach());
    }
  }
  fs::create_directories(dir);
  increlora::save_safetensors((dir / kTrainedHeadFile).string(), head, {{"format", "pt"}});
}

void load_trained_head(increlora::bert::SequenceClassifier& model, const fs::path& dir) {
  const auto path = dir / kTrainedHeadFile;
  if (!fs::exists(path)) {
    throw std::invalid_argument("--adapter_dir " + dir.string() + " has no " + kTrainedHeadFile +
                                "; pass the adapter/ folder a glue run wrote");
  }
  const increlora::SafetensorsFile file(path.string());
  const auto report = increlora::load_state_into(*model, file, nullptr, /*strict=*/false);
  if (!report.unexpected.empty()) {
    throw std::invalid_argument(fmt::format("{}: holds {}, which this model lacks; evaluate it with the task and "
                                            "model it was trained with", path.string(), report.unexpected.front()));
  }
  for (const auto& name : report.missing) {
    for (const auto& prefix : model->head_prefixes()) {
      if (name.rfind(prefix, 0) == 0) {
        throw std::invalid_argument(path.string() + ": lacks the head tensor " + name);
      }
    }
  }
}

int run(int argc, char** argv) {
  json args_json;
  const Args a = parse_args(argc, argv, args_json);
  const auto spec = increlora::bert::glue::task_spec(a.task_name);
  const bool tty = isatty(fileno(stderr));

  torch::Device device(torch::kCPU);
  if (a.device == "auto") {
    if (torch::cuda::is_available()) device = torch::Device(torch::kCUDA);
  } else {
    try {
      device = torch::Device(a.device);
    } catch (const std::exception&) {
      throw std::invalid_argument("--device: expected cpu, cuda, cuda:N or auto, got '" + a.device + "'");
    }
    if (device.is_cuda() && !torch::cuda::is_available()) {
      throw std::invalid_argument("--device " + a.device + ": no CUDA device is available; use --device cpu");
    }
  }
  torch::manual_seed(static_cast<uint64_t>(a.seed));

  // Data.
  const auto tokenizer = increlora::bert::WordPieceTokenizer::from_directory(a.model_dir);
  const fs::path data_dir(a.data_dir);
  const auto train_examples = increlora::bert::glue::read_tsv((data_dir / "train.tsv").string(), spec);
  const auto train = encode(train_examples, tokenizer, a.max_seq_length);
  std::vector<std::pair<std::string, Dataset>> evals;
  for (const auto& file : spec.eval_files) {
    auto examples = increlora::bert::glue::read_tsv((data_dir / file).string(), spec);
    if (a.max_eval_samples > 0 && static_cast<int64_t>(examples.size()) > a.max_eval_samples) {
      examples.resize(static_cast<size_t>(a.max_eval_samples));
    }
    // MNLI's mismatched set reports its metrics with a "_mm" suffix, as run_glue does.
    evals.emplace_back(file.find("mismatched") != std::string::npos ? "_mm" : "", encode(examples, tokenizer, a.max_seq_length));
  }

  // Model: the seed's short module names become patterns over the encoder's qualified names.
  const auto config = increlora::bert::BertConfig::from_json_file(a.model_dir + "/config.json");
  increlora::bert::LoraSettings lora;
  lora.patterns = increlora::bert::lora_patterns_from_short_names(split_commas(a.lora_module));
  if (lora.patterns.empty()) throw std::invalid_argument("--lora_module: name at least one layer to adapt");
  lora.r = a.apply_lora ? a.lora_r : 0;  // --apply_lora False: no adapter tensors at all
  lora.lora_alpha = a.lora_alpha;
  lora.lora_dropout = a.lora_dropout;
  lora.capacity = a.lora_capacity;
  const auto cls_dropout = a.cls_dropout >= 0 ? std::optional<double>(a.cls_dropout) : std::nullopt;
  const auto build_model = [&] {
    torch::manual_seed(static_cast<uint64_t>(a.seed));  // the same initialization however often it is built
    return increlora::bert::SequenceClassifier(config, spec.num_labels(), lora, cls_dropout);
  };
  auto model = build_model();
  // throws naming the candidates when a pattern matches nothing
  const auto adapted = static_cast<int64_t>(increlora::select_modules(*model, lora.patterns).size());

  const int64_t steps_per_epoch =
      (static_cast<int64_t>(train.inputs.size()) + a.per_device_train_batch_size - 1) / a.per_device_train_batch_size;
  const int64_t total_steps = a.max_steps > 0
                                  ? a.max_steps
                                  : static_cast<int64_t>(std::ceil(a.num_train_epochs * static_cast<double>(steps_per_epoch)));
  // total_step is --max_steps, or num_train_epochs × steps per epoch: say so when the schedule does not fit.
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
  if (a.apply_lora && a.lora_capacity <= 0) {
    // The library's sizing for this plan over the layers the patterns select.
    lora.capacity = increlora::recommended_capacity(allocator_options, adapted);
    model = build_model();
  }
  const auto load = increlora::bert::load_pretrained(*model, a.model_dir);
  increlora::mark_only_lora_as_trainable(*model);
  for (auto& p : model->named_parameters()) {
    for (const auto& prefix : model->head_prefixes()) {
      if (p.key().rfind(prefix, 0) == 0) p.value().set_requires_grad(true);
    }
  }
  model->to(device);
  model->train();

  // Optimizer: AdamW, no decay on biases and LayerNorm weights (as the Hugging Face Trainer).
  std::vector<torch::Tensor> decay, no_decay;
  int64_t trainable = 0, total_params = 0;
  for (const auto& p : model->named_parameters()) {
    total_params += p.value().numel();
    if (!p.value().requires_grad()) continue;
    trainable += p.value().numel();
    const bool nd = p.key().find("bias") != std::string::npos || p.key().find("LayerNorm") != std::string::npos;
    (nd ? no_decay : decay).push_back(p.value());
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(decay, std::make_unique<torch::optim::AdamWOptions>(
                                 torch::optim::AdamWOptions(a.learning_rate).weight_decay(a.weight_decay)));
  groups.emplace_back(no_decay, std::make_unique<torch::optim::AdamWOptions>(
                                    torch::optim::AdamWOptions(a.learning_rate).weight_decay(0.0)));
  increlora::FusedAdamW optimizer(std::move(groups));  // one fused kernel per step, not one per tensor
  auto lr_at = [&](int64_t step) {
    if (step < a.warmup_steps) return a.learning_rate * static_cast<double>(step) / static_cast<double>(std::max<int64_t>(1, a.warmup_steps));
    return a.learning_rate * std::max(0.0, static_cast<double>(total_steps - step) /
                                               static_cast<double>(std::max<int64_t>(1, total_steps - a.warmup_steps)));
  };

  // No allocator (nor restart warmup) without adapters: --apply_lora False trains the head alone.
  std::unique_ptr<increlora::RankAllocator> allocator;
  if (a.apply_lora && a.do_train) {
    try {
      allocator = std::make_unique<increlora::RankAllocator>(*model, allocator_options);
    } catch (const c10::Error& e) {
      throw std::invalid_argument(fmt::format("{}\n(here total_step = {} comes from {}; the allocation flags are "
                                              "--init_warmup, --incre_interval, --top_h, --incre_rank_num)",
                                              e.what_without_backtrace(), total_steps,
                                              a.max_steps > 0 ? "--max_steps" : "--num_train_epochs"));
    }
  }
  const double orth_coef = allocator ? a.reg_orth_coef : 0.0;  // the regularizer needs adapters
  const auto total_rank = [&] { return allocator ? allocator->total_rank() : int64_t{0}; };
  const auto budget = [&] { return allocator ? allocator->budget() : int64_t{0}; };
  std::optional<increlora::RestartWarmup> restart;
  if (a.multi_lr && allocator) {
    // The original's per-group schedule, relative to lr_at's linear warmup and decay (the same W and T).
    if (total_steps <= a.warmup_steps) {
      throw std::invalid_argument(fmt::format("--multi_lr needs more steps ({}) than --warmup_steps ({}); lower "
                                              "--warmup_steps or pass --multi_lr False", total_steps, a.warmup_steps));
    }
    restart.emplace(*model, increlora::RestartWarmupOptions(a.warmup_steps, total_steps));
  }

  fs::create_directories(a.root_output_dir);
  const fs::path out_dir(a.root_output_dir);
  args_json["total_steps"] = total_steps;
  args_json["device"] = device.str();
  write_json(out_dir / "args.json", args_json);
  const bool resuming = !a.resume_from_checkpoint.empty();
  JsonLog log(out_dir / "log.jsonl", /*append=*/resuming);
  if (!a.do_train) {
    // --do_train False: evaluate the saved run of --adapter_dir (or the pretrained encoder with a fresh head).
    if (!a.adapter_dir.empty()) {
      if (a.apply_lora) increlora::load_adapter(*model, a.adapter_dir);
      load_trained_head(model, fs::path(a.adapter_dir));
    }
    json entry = {{"event", "eval"}, {"step", 0}, {"adapter_dir", a.adapter_dir}};
    increlora::bert::glue::Metrics all;
    for (const auto& [suffix, data] : evals) {
      for (const auto& [k, v] : evaluate(model, data, spec, a.per_device_eval_batch_size, tokenizer.pad_id(), device)) {
        all[k + suffix] = v;
      }
    }
    for (const auto& [k, v] : all) entry["eval_" + k] = std::isnan(v) ? json(nullptr) : json(v);
    int64_t rank = 0;
    for (const auto& [name, layer] : increlora::named_svd_linears(*model)) rank += layer->rank();
    entry["total_rank"] = rank;
    log.write(entry);
    write_json(out_dir / "metrics.json", {{"task", spec.name}, {"main_metric", "eval_" + spec.main_metric},
                                          {"final", entry}, {"best", entry}, {"evaluations", json::array({entry})},
                                          {"total_steps", 0}, {"total_rank", rank}});
    fmt::print("eval  (no training{}): {}\n", a.adapter_dir.empty() ? "" : ", " + a.adapter_dir, metrics_text(all));
    return 0;
  }

  fmt::print("glue: task {} | {} train / {} eval examples | {} steps ({} per epoch) on {}\n", spec.name,
             train.inputs.size(), evals.front().second.inputs.size(), total_steps, steps_per_epoch, device.str());
  if (allocator) {
    fmt::print("glue: {} adapted layers, budget {} total rank in {} rounds of top_h {} x {} (first at step {}){}{}; "
               "{} of {} parameters trainable\n",
               allocator->modules().size(), allocator->budget(), allocator->planned_rounds(), a.top_h,
               allocator->incre_rank_num(), allocator->planned_rounds() > 0 ? allocator->allocation_step(1) : -1,
               a.advance_learn ? ", advance learning" : "", restart ? ", restart warmup" : "", trainable, total_params);
  } else {
    fmt::print("glue: no adapters (--apply_lora False); {} of {} parameters trainable (the head)\n", trainable,
               total_params);
  }
  if (!load.initialized.empty()) {
    size_t heads = 0;
    for (const auto& n : load.initialized) heads += n.find("lora_") == std::string::npos;
    fmt::print("glue: {} head tensors freshly initialized\n", heads);
  }
  std::fflush(stdout);

  std::mt19937_64 rng(static_cast<uint64_t>(a.seed));
  std::vector<size_t> order(train.inputs.size());
  std::iota(order.begin(), order.end(), 0);
  size_t cursor = order.size();  // forces a shuffle at the first step
  int64_t epoch = -1;

  json evals_json = json::array();
  json best;
  double best_main = -std::numeric_limits<double>::infinity();
  const std::string main_key = spec.main_metric;
  auto run_eval = [&](int64_t step) {
    json entry = {{"event", "eval"}, {"step", step}, {"epoch", static_cast<double>(step) / steps_per_epoch}};
    increlora::bert::glue::Metrics all;
    const auto t0 = std::chrono::steady_clock::now();
    for (const auto& [suffix, data] : evals) {
      for (const auto& [k, v] : evaluate(model, data, spec, a.per_device_eval_batch_size, tokenizer.pad_id(), device)) {
        all[k + suffix] = v;
      }
    }
    for (const auto& [k, v] : all) entry["eval_" + k] = std::isnan(v) ? json(nullptr) : json(v);
    entry["eval_seconds"] = seconds_since(t0);
    entry["total_rank"] = total_rank();
    log.write(entry);
    evals_json.push_back(entry);
    const double main = all.count(main_key) ? all.at(main_key) : all.begin()->second;
    if (best.is_null() || main > best_main) best = entry, best_main = main;
    if (tty) std::fputs("\r\033[K", stderr);
    fmt::print("eval  step {:>6}: {}\n", step, metrics_text(all));
    std::fflush(stdout);
  };

  // Forward, loss and backward of one training step. With --cuda_graphs on a GPU it is captured once per rank
  // state and replayed (the allocator, clipping and the optimizer stay eager); otherwise it runs as written.
  increlora::GraphedStep forward_backward(
      *model,
      [&](const std::vector<torch::Tensor>& in) {
        const auto logits = model(in[0], in[1], in[2]);
        const auto loss = spec.is_regression()
                              ? torch::nn::functional::mse_loss(logits.select(1, 0).to(torch::kFloat), in[4])
                              : torch::nn::functional::cross_entropy(logits.to(torch::kFloat), in[3]);
        auto reg = orth_coef > 0 ? increlora::compute_orth_regu(*model, orth_coef)
                                       : torch::zeros({}, loss.options());
        (loss + reg).backward();
        return torch::stack({loss.detach(), reg.detach().to(loss.scalar_type())});
      },
      increlora::GraphedStepOptions().enabled(a.cuda_graphs));

  // --resume_from_checkpoint: the model, allocator, optimizer and random generators from the checkpoint, and
  // this loop's own state (data order, evaluations, running log sums) from the checkpoint's user state.
  int64_t first_step = 0;
  double seconds_before = 0.0;
  json user_state;
  if (resuming) {
    std::string user;
    const int64_t saved = increlora::load_checkpoint(a.resume_from_checkpoint, *model, allocator.get(), optimizer,
                                                     /*restore_rng=*/true, &user);
    user_state = json::parse(user);
    if (!user_state.contains("glue")) {
      throw std::invalid_argument("--resume_from_checkpoint " + a.resume_from_checkpoint +
                                  ": not a checkpoint of the glue program (no \"glue\" state)");
    }
    user_state = user_state.at("glue");
    for (const auto& [name, value] : user_state.at("args").items()) {
      if (is_run_control_flag(name)) continue;
      if (!args_json.contains(name) || args_json[name] != value) {
        throw std::invalid_argument(fmt::format("--resume_from_checkpoint: the checkpoint was trained with --{} {} "
                                                "but this run has {}; resume with the same flags", name,
                                                value.dump(), args_json.contains(name) ? args_json[name].dump() : "none"));
      }
    }
    first_step = saved + 1;
    epoch = user_state.at("epoch").get<int64_t>();
    cursor = user_state.at("cursor").get<size_t>();
    order = user_state.at("order").get<std::vector<size_t>>();
    std::istringstream(user_state.at("rng").get<std::string>()) >> rng;
    evals_json = user_state.at("evaluations");
    best = user_state.at("best");
    best_main = best.is_null() ? -std::numeric_limits<double>::infinity() : user_state.at("best_main").get<double>();
    seconds_before = user_state.at("train_seconds").get<double>();
    fmt::print("glue: resumed from {} at step {}\n", a.resume_from_checkpoint, first_step);
  }
  const auto start = std::chrono::steady_clock::now();

  // Sums of the logged losses stay on the device between logging steps: reading them every step would
  // synchronise the host with the GPU each step.
  torch::Tensor loss_sum, reg_sum;
  int64_t loss_count = 0;
  const auto scalar_on_device = [&](double v) {
    return torch::tensor(v, torch::TensorOptions().dtype(torch::kFloat).device(device));
  };
  if (resuming) {
    loss_count = user_state.at("loss_count").get<int64_t>();
    if (!user_state.at("loss_sum").is_null()) loss_sum = scalar_on_device(user_state.at("loss_sum").get<double>());
    if (!user_state.at("reg_sum").is_null()) reg_sum = scalar_on_device(user_state.at("reg_sum").get<double>());
  }
  const auto save = [&](int64_t step) {
    json args = json::object();
    for (const auto& [name, value] : args_json.items()) {
      if (!is_run_control_flag(name)) args[name] = value;
    }
    std::ostringstream rng_text;
    rng_text << rng;
    const json state = {
        {"glue",
         {{"args", args}, {"epoch", epoch}, {"cursor", cursor}, {"order", order}, {"rng", rng_text.str()},
          {"evaluations", evals_json}, {"best", best},
          {"best_main", best.is_null() ? json(nullptr) : json(best_main)},
          {"loss_sum", loss_sum.defined() ? json(loss_sum.item<double>()) : json(nullptr)},
          {"reg_sum", reg_sum.defined() ? json(reg_sum.item<double>()) : json(nullptr)},
          {"loss_count", loss_count}, {"train_seconds", seconds_before + seconds_since(start)}}}};
    increlora::save_checkpoint((out_dir / "checkpoint").string(), *model, allocator.get(), optimizer, step,
                               state.dump());
  };
  for (int64_t step = first_step; step < total_steps; ++step) {
    if (cursor >= order.size()) {  // a new epoch (the last batch of an epoch may be short, as in run_glue)
      std::shuffle(order.begin(), order.end(), rng);
      cursor = 0;
      ++epoch;
    }
    std::vector<size_t> idx(order.begin() + static_cast<std::ptrdiff_t>(cursor),
                            order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), cursor + static_cast<size_t>(a.per_device_train_batch_size))));
    cursor += idx.size();
    const auto b = collate(train, idx, tokenizer.pad_id(), device, a.cuda_graphs ? a.max_seq_length : 0);

    const double lr = lr_at(step);
    for (auto& g : optimizer.param_groups()) static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);

    // [task loss, orthogonality penalty] of this step; the gradients are zeroed by forward_backward.
    const auto losses = forward_backward({b.input_ids, b.attention_mask, b.token_type_ids, b.labels, b.scores});
    const auto loss = losses[0];
    const auto reg = orth_coef > 0 ? losses[1] : torch::Tensor();

    const auto events = allocator ? allocator->update_and_increase(*model, step, optimizer)
                                  : std::vector<increlora::AllocationEvent>{};
    if (a.max_grad_norm > 0) {
      std::vector<torch::Tensor> params = decay;
      params.insert(params.end(), no_decay.begin(), no_decay.end());
      torch::nn::utils::clip_grad_norm_(params, a.max_grad_norm);
    }
    if (restart) {
      restart->step(optimizer, step);
    } else {
      optimizer.step();
    }

    // forward_backward returns a detached tensor of its own: the sums can start from it without a copy.
    loss_sum = loss_sum.defined() ? loss_sum + loss : loss;
    if (reg.defined()) reg_sum = reg_sum.defined() ? reg_sum + reg : reg;
    ++loss_count;

    if (!events.empty()) {
      int64_t grown = 0;
      for (const auto& e : events) {
        log.write({{"event", "allocation"}, {"step", e.step}, {"round", e.round}, {"module", e.module},
                   {"old_rank", e.old_rank}, {"new_rank", e.new_rank}, {"score", e.score},
                   {"at_capacity", e.at_capacity}});
        grown += e.new_rank > e.old_rank;
      }
      if (tty) std::fputs("\r\033[K", stderr);
      fmt::print("alloc step {:>6}: round {} grew {} layers, total rank {} / {}{}\n", step, events.front().round,
                 grown, total_rank(), budget(), allocator->budget_met() ? " (budget met)" : "");
      std::fflush(stdout);
    }

    const int64_t done = step + 1;
    const double elapsed = seconds_since(start);
    if (done % a.logging_steps == 0 || done == total_steps) {
      const double mean_loss = loss_sum.item<double>() / loss_count;
      json entry = {{"event", "train"}, {"step", done}, {"epoch", static_cast<double>(done) / steps_per_epoch},
                    {"loss", mean_loss}, {"learning_rate", lr}, {"total_rank", total_rank()},
                    {"elapsed_seconds", elapsed}};
      if (orth_coef > 0) entry["orth_regu"] = reg_sum.item<double>() / loss_count;
      log.write(entry);
      if (!tty) {
        fmt::print("train step {:>6}/{}: loss {:.4f}, lr {:.3g}, total rank {}, {:.1f} s\n", done, total_steps,
                   mean_loss, lr, total_rank(), elapsed);
        std::fflush(stdout);
      }
      loss_sum = reg_sum = torch::Tensor();
      loss_count = 0;
    }
    if (tty) {
      const double rate = (done - first_step) / std::max(elapsed, 1e-9);
      fmt::print(stderr, "\r\033[K[{:>6}/{}] epoch {} loss {:.4f} lr {:.3g} rank {}/{} | {:.2f} it/s, eta {:.0f} s",
                 done, total_steps, epoch, loss.item<double>(), lr, total_rank(), budget(), rate,
                 (total_steps - done) / rate);
      std::fflush(stderr);
    }
    if (a.do_eval && (done % a.eval_steps == 0 || done == total_steps)) run_eval(done);
    if (a.save_steps > 0 && done % a.save_steps == 0 && done < total_steps) save(step);
    if (a.stop_after_step > 0 && done == a.stop_after_step && done < total_steps) {
      if (tty) std::fputs("\n", stderr);
      fmt::print("glue: stopped after step {} (--stop_after_step); no metrics written\n", done);
      return 0;
    }
  }
  if (tty) std::fputs("\n", stderr);

  json ranks = json::object();
  if (allocator) {
    for (const auto& [name, r] : allocator->rank_pattern()) ranks[name] = r;
  }
  write_json(out_dir / "rank_pattern.json", ranks);
  if (allocator) {
    // The adapter (safetensors + JSON, loadable with increlora::load_adapter) and the rank report: CSV and the
    // SVG heatmap of layers × module types (rank_pattern.json is rewritten with the same content).
    increlora::save_adapter(*model, (out_dir / "adapter").string());
    increlora::write_rank_report(allocator->rank_pattern(), out_dir.string(),
                                 fmt::format("{}: ranks after IncreLoRA (budget {})", spec.name, allocator->budget()));
  }
  // The trained head beside it: with the adapter, the folder reproduces the run's model (glue --do_train False
  // --adapter_dir OUT/adapter evaluates it).
  save_trained_head(model, out_dir / "adapter");
  json metrics = {{"task", spec.name},
                  {"main_metric", "eval_" + main_key},
                  {"final", evals_json.empty() ? json(nullptr) : evals_json.back()},
                  {"best", best},
                  {"evaluations", evals_json},
                  {"train_seconds", seconds_before + seconds_since(start)},
                  {"total_steps", total_steps},
                  {"total_rank", total_rank()},
                  {"budget", budget()},
                  {"trainable_parameters", trainable}};
  write_json(out_dir / "metrics.json", metrics);
  if (best.is_null()) {
    fmt::print("glue: done in {:.1f} s (no evaluation: --do_eval False); wrote {}\n", seconds_since(start),
               out_dir.string());
  } else {
    fmt::print("glue: done in {:.1f} s; best eval_{} {:.4f} at step {}; wrote {}\n", seconds_since(start), main_key,
               best_main, best["step"].get<int64_t>(), out_dir.string());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "glue: {}\n(glue --help lists the flags)\n", e.what());
    return 2;
  } catch (const c10::Error& e) {
    fmt::print(stderr, "glue: {}\n", e.what_without_backtrace());
    return 1;
  } catch (const std::exception& e) {
    fmt::print(stderr, "glue: {}\n", e.what());
    return 1;
  }
}
