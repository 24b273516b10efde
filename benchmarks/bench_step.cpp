// Times one IncreLoRA training step of a BERT-family encoder (random weights, random tokens and labels) and its
// peak device memory, and writes the numbers as JSON for benchmarks/report.py to put beside the Python peers
// (benchmarks/peers.py). benchmarks/run.sh runs every configuration; RESULTS.md keeps the table.
//
//   bench_step --model bert-base --dtype bf16 --device cuda --phase scoring --steps 100 --out scoring.json
//
// The step is what apps/glue does at every optimizer step, without data loading and logging:
// gradients zeroed, forward (classification head, cross-entropy on random labels) + compute_orth_regu and
// backward (through increlora::GraphedStep), allocator.update_and_increase, AdamW step.
//
// Phases:
//   scoring       every adapter starts at rank 1 and the budget is rank 2 on average; the allocator scores
//                 every step (exact_scoring) and its first allocation lies far beyond the timed steps, so
//                 every timed backward computes the importance score (the most expensive state of a run).
//   after_budget  every adapter is built at rank 2 and the target is 2: the budget is met at construction, no
//                 step scores; this is the state most of a run spends its steps in, at the final rank.
//   frozen_forward  forward only, eval mode, no_grad: the floor the training step is compared with.
#include "op_count.hpp"

#include <increlora/models/bert.hpp>

#include <increlora/apps/flags.hpp>
#include <increlora/increlora.hpp>

#include <ATen/DeviceAccelerator.h>
#include <ATen/record_function.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <torch/cuda.h>
#include <torch/nn/functional/loss.h>
#include <torch/optim/adamw.h>
#include <torch/utils.h>
#include <torch/version.h>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using nlohmann::json;

struct Args {
  std::string model = "bert-base";
  std::string dtype = "fp32";
  std::string device = "cuda";
  std::string phase = "after_budget";
  int64_t batch = 32;
  int64_t seq = 128;
  int64_t warmup = 10;
  int64_t steps = 50;
  int64_t layers = 0;  // > 0 overrides the model's layer count (the CPU smoke test)
  bool tiny = false;   // a tiny encoder of the model's structure (the CPU smoke test)
  bool breakdown = false;  // also time the parts of the step (adds synchronisations; a separate run)
  int64_t rank = 2;    // the final average rank (PEFT LoRA's r)
  double lora_alpha = 16.0;
  double lora_dropout = 0.1;
  std::string optimizer = "fused";  // fused: increlora::FusedAdamW; loop: torch::optim::AdamW
  bool graphs = true;  // forward + backward through increlora::GraphedStep (CUDA graphs on a CUDA device)
  double lr = 1e-4;
  double reg_orth_coef = 0.1;
  int64_t seed = 0;
  int64_t threads = 0;  // > 0: intra-op CPU threads (the smoke test uses 1: on a loaded CI machine more threads
                        // wait for each other in every tiny op)
  std::string out;
  std::string profile;        // write a per-kernel profile of extra steps here (JSON), the trace beside it
  int64_t profile_steps = 5;  // steps recorded by --profile (after the timed ones)
  std::string count_ops;      // write the operators dispatched per step (op_count.hpp) of extra steps here
};

const char* kNotes =
    "\n--breakdown also synchronises between the parts of the step and reports each part's median (zero_grad +\n"
    "forward + loss + backward, allocator, optimizer step); the step times of such a run include those waits.\n"
    "--graphs on (the default) runs forward + loss + backward through increlora::GraphedStep: captured as CUDA\n"
    "graphs on a CUDA device (rows increlora_<phase>; eager on a CPU); off runs them eagerly everywhere (rows\n"
    "increlora_<phase>_eager).\n";

Args parse(int argc, char** argv) {
  Args a;
  std::string graphs = "on";
  increlora::apps::Flags f("bench_step");
  f.add("model", &a.model, "bert-base or minilm (the encoder's shape)");
  f.add("dtype", &a.dtype, "fp32 or bf16 (the frozen weights and the compute; the banks stay float32)");
  f.add("device", &a.device, "cpu or cuda");
  f.add("phase", &a.phase, "scoring, after_budget or frozen_forward");
  f.add("batch", &a.batch, "sequences per step");
  f.add("seq", &a.seq, "tokens per sequence");
  f.add("warmup", &a.warmup, "untimed steps first");
  f.add("steps", &a.steps, "timed steps");
  f.add("layers", &a.layers, "> 0 overrides the model's layer count");
  f.add("tiny", &a.tiny, "a tiny encoder of the model's structure (the CPU smoke test)");
  f.add("breakdown", &a.breakdown, "also time the parts of the step (adds synchronisations)");
  f.add("rank", &a.rank, "the final average rank (PEFT LoRA's r)");
  f.add("lora_alpha", &a.lora_alpha, "adapter scale numerator");
  f.add("lora_dropout", &a.lora_dropout, "dropout on the adapter branch's input");
  f.add("optimizer", &a.optimizer, "fused (increlora::FusedAdamW) or loop (torch::optim::AdamW)");
  f.add("graphs", &graphs, "on or off: forward + backward through increlora::GraphedStep");
  f.add("lr", &a.lr, "learning rate");
  f.add("reg_orth_coef", &a.reg_orth_coef, "weight of the orthogonality regularizer");
  f.add("seed", &a.seed, "random seed");
  f.add("threads", &a.threads, "> 0: intra-op CPU threads");
  f.add("out", &a.out, "write the result JSON here");
  f.add("profile", &a.profile, "after the timed steps, record --profile_steps more under LibTorch's Kineto "
        "profiler: per-kernel device time by part of the step to this JSON, the Chrome trace to <file>.trace.json");
  f.add("profile_steps", &a.profile_steps, "steps recorded by --profile");
  f.add("count_ops", &a.count_ops, "after the timed steps, count the ATen operators that do work (about one "
        "kernel each on a GPU; benchmarks/op_count.hpp) over --profile_steps more steps, per part of the step, "
        "to this JSON; any device (with CUDA graphs replayed nothing is dispatched: use --graphs off)");
  f.parse(argc, argv);
  if (f.help()) {
    std::fputs((f.usage() + kNotes).c_str(), stdout);
    std::exit(0);
  }
  if (graphs != "on" && graphs != "off") throw std::invalid_argument("--graphs: on or off (got '" + graphs + "')");
  a.graphs = graphs == "on";
  if (a.model != "bert-base" && a.model != "minilm") throw std::invalid_argument("--model: bert-base or minilm");
  if (a.dtype != "fp32" && a.dtype != "bf16") throw std::invalid_argument("--dtype: fp32 or bf16");
  if (a.phase != "scoring" && a.phase != "after_budget" && a.phase != "frozen_forward") {
    throw std::invalid_argument("--phase: scoring, after_budget or frozen_forward");
  }
  if (a.steps < 1 || a.warmup < 0 || a.batch < 1 || a.seq < 1) {
    throw std::invalid_argument("--steps, --batch and --seq must be >= 1, --warmup >= 0");
  }
  if (a.rank < 2) throw std::invalid_argument("--rank must be >= 2 (the scoring phase grows 1 -> rank)");
  if (a.profile_steps < 1) throw std::invalid_argument("--profile_steps must be >= 1");
  if (!a.count_ops.empty() && a.graphs && a.device == "cuda") {
    throw std::invalid_argument("--count_ops with --device cuda needs --graphs off (a replayed graph dispatches "
                                "no operators)");
  }
  return a;
}

increlora::bert::BertConfig model_config(const Args& a) {
  increlora::bert::BertConfig c;  // BERT-base defaults: vocab 30522, hidden 768, 12 layers, 12 heads, 3072
  if (a.model == "minilm") {
    // MiniLM-L6-H384 (e.g. all-MiniLM-L6-v2 / MiniLM-L6-H384-uncased): BERT's vocabulary, 6 × 384, 12 heads.
    c.hidden_size = 384;
    c.num_hidden_layers = 6;
    c.intermediate_size = 1536;
  }
  if (a.tiny) {  // same structure, sizes for a CI smoke run in well under a second per step
    c.vocab_size = 128;
    c.hidden_size = 32;
    c.num_hidden_layers = 2;
    c.num_attention_heads = 2;
    c.intermediate_size = 64;
  }
  if (a.layers > 0) c.num_hidden_layers = a.layers;
  return c;
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  const double pos = q * static_cast<double>(v.size() - 1);
  const auto lo = static_cast<size_t>(pos);
  const size_t hi = std::min(lo + 1, v.size() - 1);
  return v[lo] + (pos - static_cast<double>(lo)) * (v[hi] - v[lo]);
}

void sync(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index() < 0 ? -1 : device.index());
}

// Writes `text` to `path` through a temporary file, so that a reader never sees half a file.
void write_file(const std::string& path, const std::string& text) {
  const std::filesystem::path out(path);
  if (out.has_parent_path()) std::filesystem::create_directories(out.parent_path());
  const auto tmp = out.string() + ".tmp";
  {
    std::ofstream f(tmp);
    f << text << "\n";
    if (!f) throw std::runtime_error("cannot write " + tmp);
  }
  std::filesystem::rename(tmp, out);
}

// --profile: `a.profile_steps` steps under the Kineto profiler (CPU ops + CUDA kernels), the device synchronised
// between the parts of the step (as --breakdown does) so that each kernel falls inside the time window of the
// part that launched it (step.forward_backward, step.allocator, step.optimizer: RECORD_USER_SCOPE above). Writes
// per kernel name: the part, device microseconds per step and launches per step; benchmarks/profile_report.py
// sorts them into categories. The Chrome trace goes beside it (chrome://tracing, Perfetto).
template <class Step, class Parts>
void profile_steps(const Args& a, const torch::Device& device, Step step, Parts synchronise_parts) {
  namespace prof = torch::autograd::profiler;
  using torch::profiler::impl::ActivityType;
  const std::set<ActivityType> activities{ActivityType::CPU, ActivityType::CUDA};
  const torch::profiler::impl::ProfilerConfig config(torch::profiler::impl::ProfilerState::KINETO);
  prof::prepareProfiler(config, activities);
  synchronise_parts(true);
  torch::cuda::synchronize(device.index());
  prof::enableProfiler(config, activities, {at::RecordScope::USER_SCOPE, at::RecordScope::FUNCTION});
  for (int64_t s = 0; s < a.profile_steps; ++s) step(s);
  torch::cuda::synchronize(device.index());
  auto result = prof::disableProfiler();
  synchronise_parts(false);

  struct Window { uint64_t start, end; std::string part; };
  std::vector<Window> windows;
  for (const auto& e : result->events()) {
    const auto name = e.name();
    if (e.deviceType() == c10::DeviceType::CPU && name.rfind("step.", 0) == 0) {
      windows.push_back({e.startNs(), e.endNs(), name.substr(5)});
    }
  }
  struct Kernel { std::string part; double us = 0; int64_t launches = 0; };
  std::map<std::string, Kernel> kernels;
  double total_us = 0;
  for (const auto& e : result->events()) {
    // Kineto mirrors each user scope onto the GPU timeline as an annotation: a span, not a kernel.
    if (e.deviceType() != c10::DeviceType::CUDA || e.name().rfind("step.", 0) == 0) continue;
    std::string part = "other";
    for (const auto& w : windows) {
      if (e.startNs() >= w.start && e.startNs() <= w.end) { part = w.part; break; }
    }
    auto& k = kernels[part + "\t" + e.name()];
    k.part = part;
    k.us += static_cast<double>(e.durationNs()) / 1e3;
    k.launches += 1;
    total_us += static_cast<double>(e.durationNs()) / 1e3;
  }
  const auto steps = static_cast<double>(a.profile_steps);
  json rows = json::array();
  for (const auto& [key, k] : kernels) {
    rows.push_back({{"part", k.part}, {"kernel", key.substr(key.find('\t') + 1)}, {"us_per_step", k.us / steps},
                    {"launches_per_step", static_cast<double>(k.launches) / steps}});
  }
  json out = {{"model", a.model}, {"dtype", a.dtype}, {"phase", a.phase}, {"graphs", a.graphs},
              {"batch", a.batch}, {"seq", a.seq}, {"steps", a.profile_steps},
              {"device_us_per_step", total_us / steps}, {"parts_found", windows.size()}, {"kernels", rows}};
  const std::filesystem::path path(a.profile);
  if (path.has_parent_path()) std::filesystem::create_directories(path.parent_path());
  write_file(a.profile, out.dump(1));
  result->save(a.profile + ".trace.json");
}

// --count_ops: `a.profile_steps` steps under an OpCounter; per part of the step and operator, how many a step
// dispatches.
template <class Step>
void count_ops(const Args& a, const torch::Device& device, Step step) {
  json parts = json::object();
  int64_t total = 0;
  {
    increlora_bench::OpCounter counter;
    for (int64_t s = 0; s < a.profile_steps; ++s) step(s);
    sync(device);
    const auto steps = a.profile_steps;
    for (const auto& [part, ops] : counter.counts()) {
      json rows = json::object();
      int64_t n = 0;
      for (const auto& [name, c] : ops) {
        rows[name] = static_cast<double>(c) / static_cast<double>(steps);
        n += c;
      }
      parts[part] = {{"ops_per_step", static_cast<double>(n) / static_cast<double>(steps)}, {"ops", rows}};
      total += n;
    }
  }
  const json out = {{"model", a.model}, {"dtype", a.dtype}, {"device", a.device}, {"phase", a.phase},
                    {"graphs", a.graphs}, {"lora_dropout", a.lora_dropout}, {"reg_orth_coef", a.reg_orth_coef},
                    {"steps", a.profile_steps},
                    {"ops_per_step", static_cast<double>(total) / static_cast<double>(a.profile_steps)},
                    {"parts", parts},
                    {"what", "top-level ATen operators that do work (views, allocations and no-op conversions "
                             "excluded), per step: about one kernel each on a GPU (benchmarks/op_count.hpp)"}};
  write_file(a.count_ops, out.dump(1));
  fmt::print("bench_step {} {} {} {}: {:.0f} operators per step\n", a.model, a.dtype, a.device, a.phase,
             out["ops_per_step"].get<double>());
}

int run(const Args& a) {
  torch::Device device(torch::kCPU);
  if (a.device == "cuda") {
    if (!torch::cuda::is_available()) throw std::invalid_argument("--device cuda: no CUDA device is available");
    device = torch::Device(torch::kCUDA, 0);
  } else if (a.device != "cpu") {
    throw std::invalid_argument("--device: cpu or cuda");
  }
  torch::manual_seed(static_cast<uint64_t>(a.seed));
  if (a.threads > 0) torch::set_num_threads(static_cast<int>(a.threads));
  const auto config = model_config(a);
  const bool train = a.phase != "frozen_forward";
  const bool scoring = a.phase == "scoring";

  // Adapters where the seed's GLUE runs put them (query,key,value,attention.output,intermediate,layer.output);
  // the scoring phase starts at rank 1, after_budget sits at the final rank.
  increlora::bert::LoraSettings lora;
  if (train) {
    lora.patterns = increlora::bert::lora_patterns_from_short_names(
        {"query", "key", "value", "attention.output", "intermediate", "layer.output"});
    lora.r = scoring ? 1 : a.rank;
    lora.lora_alpha = a.lora_alpha;
    lora.lora_dropout = a.lora_dropout;
    // The glue program's default capacity (the library's sizing for this target): the banks, and so AdamW's
    // work, are what a GLUE run has. It depends on the average target rank per layer, not the layer count.
    lora.capacity = increlora::recommended_capacity(increlora::RankAllocatorOptions().target_rank(a.rank), 1);
  }
  increlora::bert::SequenceClassifier model(config, /*num_labels=*/2, lora);
  std::vector<std::string> trainable_names;
  if (train) {
    increlora::mark_only_lora_as_trainable(*model);
    for (auto& p : model->named_parameters()) {
      for (const auto& prefix : model->head_prefixes()) {
        if (p.key().rfind(prefix, 0) == 0) p.value().set_requires_grad(true);
      }
    }
  } else {
    for (auto& p : model->parameters()) p.set_requires_grad(false);
  }
  model->to(device);
  // bf16: the frozen base (and the trained head, as PEFT's modules_to_save copy of a bf16 model) is stored in
  // bf16; the adapter banks stay float32 (SVDLinear casts them to the input's dtype in the forward, and the
  // casts' backward returns float32 gradients), as PEFT's autocast_adapter_dtype keeps LoRA weights float32.
  // Autocast is not used: SVDLinear requires its input in the weight's dtype. Parameters are converted one by
  // one because Module::to(dtype) would convert the adapter banks too.
  const bool bf16 = a.dtype == "bf16";
  if (bf16) {
    torch::NoGradGuard no_grad;
    for (auto& p : model->named_parameters()) {
      if (p.key().find("lora_") == std::string::npos) p.value().set_data(p.value().to(torch::kBFloat16));
    }
  }
  if (train) model->train(); else model->eval();

  std::vector<torch::Tensor> params;
  int64_t trainable = 0, total_params = 0;
  for (const auto& p : model->named_parameters()) {
    total_params += p.value().numel();
    if (!p.value().requires_grad()) continue;
    params.push_back(p.value());
    trainable += p.value().numel();
  }

  std::unique_ptr<increlora::RankAllocator> allocator;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  if (train) {
    // weight_decay 0.01: torch.optim.AdamW's default, which the Python peers use.
    const auto adamw = torch::optim::AdamWOptions(a.lr).weight_decay(0.01);
    if (a.optimizer == "fused") {
      optimizer = std::make_unique<increlora::FusedAdamW>(params, adamw);
    } else if (a.optimizer == "loop") {
      optimizer = std::make_unique<torch::optim::AdamW>(params, adamw);
    } else {
      throw std::invalid_argument("--optimizer must be fused or loop (got " + a.optimizer + ")");
    }
    auto options = increlora::RankAllocatorOptions().lora_r(lora.r).target_rank(a.rank).beta1(0.85).beta2(0.85);
    if (scoring) {
      // The one allocation round lies far past the timed steps; exact_scoring scores every step before it.
      const int64_t far = 1000 * (a.warmup + a.steps + 1);
      // top_h: every adapted layer (one round meets the budget).
      const auto layers = static_cast<int64_t>(increlora::named_svd_linears(*model).size());
      options.exact_scoring(true).init_warmup(far).incre_interval(far).top_h(layers);
    }
    allocator = std::make_unique<increlora::RankAllocator>(*model, options);
    if (!scoring && !allocator->budget_met()) throw std::logic_error("after_budget: the budget should be met");
  }

  const auto long_opts = torch::TensorOptions().dtype(torch::kLong).device(device);
  const auto input_ids = torch::randint(config.vocab_size, {a.batch, a.seq}, long_opts);
  const auto attention_mask = torch::ones({a.batch, a.seq}, long_opts);
  const auto labels = torch::randint(2, {a.batch}, long_opts);

  int64_t scored_steps = 0;
  // --breakdown: wall time of each part, the device synchronised at each boundary.
  std::map<std::string, std::vector<double>> parts;
  bool timing_parts = false;
  auto mark = [&](const char* part, std::chrono::steady_clock::time_point& t) {
    if (!timing_parts) return;
    sync(device);
    const auto now = std::chrono::steady_clock::now();
    parts[part].push_back(std::chrono::duration<double, std::milli>(now - t).count());
    t = now;
  };
  auto forward_backward = [&](const std::vector<torch::Tensor>& in) {
    const auto logits = model(in[0], in[1]);
    auto loss = torch::nn::functional::cross_entropy(logits.to(torch::kFloat), in[2]);
    if (a.reg_orth_coef > 0) loss = loss + increlora::compute_orth_regu(*model, a.reg_orth_coef);
    loss.backward();
    return loss;
  };
  // The step as apps/glue runs it: forward + backward captured once per rank state and replayed (on a
  // CUDA device; eager on the CPU), the allocator and the optimizer eager between them.
  increlora::GraphedStep graphed(*model, forward_backward, increlora::GraphedStepOptions().enabled(a.graphs));
  auto step = [&](int64_t global_step) {
    auto t = std::chrono::steady_clock::now();
    if (!train) {
      torch::NoGradGuard no_grad;
      (void)model(input_ids, attention_mask);
      return;
    }
    if (allocator->is_scoring_step(global_step)) ++scored_steps;
    {
      RECORD_USER_SCOPE("step.forward_backward");
      (void)graphed({input_ids, attention_mask, labels});  // zeroes the gradients first
      mark("forward_backward", t);
    }
    {
      RECORD_USER_SCOPE("step.allocator");
      (void)allocator->update_and_increase(*model, global_step, *optimizer);
      mark("allocator", t);
    }
    {
      RECORD_USER_SCOPE("step.optimizer");
      optimizer->step();
      mark("optimizer", t);
    }
  };

  for (int64_t s = 0; s < a.warmup; ++s) step(s);
  sync(device);
  if (device.is_cuda()) at::accelerator::resetPeakStats(device.index());
  scored_steps = 0;
  timing_parts = a.breakdown && train;
  // Each step is bracketed by a device synchronisation, as the Python peers' steps are: the number is the
  // wall time of one step including the host work that launches it.
  std::vector<double> ms;
  ms.reserve(static_cast<size_t>(a.steps));
  for (int64_t s = 0; s < a.steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    step(a.warmup + s);
    sync(device);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  json peak = nullptr, peak_reserved = nullptr;
  if (device.is_cuda()) {
    const auto stats = at::accelerator::getDeviceStats(device.index());
    constexpr auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    peak = stats.allocated_bytes[all].peak;
    peak_reserved = stats.reserved_bytes[all].peak;
  }
  if (!a.profile.empty()) {
    const auto timed_scored_steps = scored_steps;
    const auto timed_parts = parts;
    if (!device.is_cuda()) throw std::invalid_argument("--profile needs --device cuda (it records CUDA kernels)");
    profile_steps(a, device, [&](int64_t s) { step(a.warmup + a.steps + s); }, [&](bool on) {
      timing_parts = on && train;
    });
    scored_steps = timed_scored_steps;  // the numbers reported are the timed steps'
    parts = timed_parts;
    timing_parts = a.breakdown && train;
  }
  if (!a.count_ops.empty()) {
    const auto timed_scored_steps = scored_steps;
    const bool timed_parts_on = timing_parts;
    timing_parts = false;  // no --breakdown synchronisations inside the counted steps
    count_ops(a, device, [&](int64_t s) { step(a.warmup + a.steps + a.profile_steps + s); });
    scored_steps = timed_scored_steps;
    timing_parts = timed_parts_on;
  }
  if (scoring && scored_steps != a.steps) {
    throw std::logic_error(fmt::format("scoring: only {} of {} timed steps were scored", scored_steps, a.steps));
  }

  double sum = 0;
  for (double v : ms) sum += v;
  json result = {
      {"impl", "increlora-cpp"},
      {"peer", train ? "increlora_" + a.phase + (a.graphs ? "" : "_eager") : "increlora_frozen_forward"},
      {"cuda_graphs", train && graphed.uses_graphs()},
      {"phase", a.phase},
      {"model", a.model},
      {"tiny", a.tiny},
      {"layers", config.num_hidden_layers},
      {"hidden", config.hidden_size},
      {"dtype", a.dtype},
      {"bf16_mode", bf16 ? "weights: frozen base and head stored in bf16, adapter banks float32 (no autocast)"
                         : "none"},
      {"device", a.device},
      {"batch", a.batch},
      {"seq", a.seq},
      {"warmup", a.warmup},
      {"steps", a.steps},
      {"median_ms", percentile(ms, 0.5)},
      {"p10_ms", percentile(ms, 0.1)},
      {"p90_ms", percentile(ms, 0.9)},
      {"mean_ms", sum / static_cast<double>(ms.size())},
      {"min_ms", *std::min_element(ms.begin(), ms.end())},
      {"peak_allocated_bytes", peak},
      {"peak_reserved_bytes", peak_reserved},
      {"timing", "per step: steady_clock around the step and torch::cuda::synchronize"},
      {"trainable_params", trainable},
      {"total_params", total_params},
      {"torch_version", TORCH_VERSION},
      {"optimizer", train ? (a.optimizer == "fused" ? std::string("increlora::FusedAdamW (ATen fused kernel), lr ")
                                                    : std::string("torch::optim::AdamW (C++, per-tensor loop), lr ")) +
                                fmt::format("{}", a.lr) +
                                ", weight_decay 0.01"
                          : "none"},
      {"lora_dropout", a.lora_dropout},
      {"reg_orth_coef", train ? a.reg_orth_coef : 0.0},
  };
  if (train) {
    result["adapted_layers"] = allocator->modules().size();
    result["lora_r"] = lora.r;
    result["target_rank"] = a.rank;
    result["capacity"] = lora.capacity;
    result["total_rank"] = allocator->total_rank();
    result["budget"] = allocator->budget();
    result["budget_met"] = allocator->budget_met();
    result["scored_steps"] = scored_steps;
    const auto& st = graphed.stats();
    result["graphed_step"] = {{"eager_steps", st.eager_steps}, {"captures", st.captures}, {"replays", st.replays},
                              {"evictions", st.evictions}};
  }
  if (timing_parts) {
    json b;
    for (const auto& [part, v] : parts) b[part] = percentile(v, 0.5);
    result["breakdown_ms"] = b;
    result["timing"] = "per step, with --breakdown: the device synchronised between the parts";
  }
  const std::string text = result.dump(2);
  if (!a.out.empty()) write_file(a.out, text);
  fmt::print("bench_step {} {} {} {}: median {:.3f} ms (p10 {:.3f}, p90 {:.3f}) over {} steps, peak {}\n", a.model,
             a.dtype, a.device, a.phase, percentile(ms, 0.5), percentile(ms, 0.1), percentile(ms, 0.9), a.steps,
             peak.is_null() ? std::string("n/a") : fmt::format("{:.1f} MiB", peak.get<double>() / (1 << 20)));
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(parse(argc, argv));
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "bench_step: %s\n", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_step: %s\n", e.what());
  }
  return 1;
}
