// Bad inputs the readers meet in the wild: each is refused with a message naming what is wrong, without
// blocking, and a failed load leaves the model and optimizer as they were.
#include "support.hpp"

#include <increlora/checkpoint.hpp>
#include <increlora/safetensors.hpp>
#include <increlora/serialize.hpp>

#include "temp_dir.hpp"

#include <ATen/Context.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <string>

#include <dirent.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

using increlora::SVDLinearOptions;
using increlora::test::TempDir;
using increlora::test::TinyNet;

namespace {

std::string read_text(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void write_text(const std::string& path, const std::string& text) { std::ofstream(path) << text; }

void replace_once(std::string& text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  REQUIRE(at != std::string::npos);
  text.replace(at, from.size(), to);
}

std::vector<torch::Tensor> snapshot(const torch::nn::Module& m) {
  std::vector<torch::Tensor> out;
  for (const auto& p : m.parameters()) out.push_back(p.detach().clone());
  return out;
}

bool unchanged(const torch::nn::Module& m, const std::vector<torch::Tensor>& before) {
  size_t i = 0;
  for (const auto& p : m.parameters()) {
    if (!torch::equal(p, before[i++])) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("A safetensors header that names a tensor twice is refused", "[bad_inputs][safetensors]") {
  TempDir dir;
  // Two entries "a" over the 8 data bytes: a JSON parser would keep the last one silently.
  const std::string header =
      R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})";
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  bytes += header + std::string(8, '\0');
  write_text(dir.file("dup.safetensors"), bytes);
  CHECK_THROWS_WITH(increlora::SafetensorsFile(dir.file("dup.safetensors")), HasSubstring("names \"a\" twice"));
}

TEST_CASE("Readers refuse FIFOs instead of blocking on them", "[bad_inputs][io]") {
  TempDir dir;
  REQUIRE(::mkfifo(dir.file("fifo.safetensors").c_str(), 0600) == 0);
  CHECK_THROWS_WITH(increlora::SafetensorsFile(dir.file("fifo.safetensors")), HasSubstring("not a regular file"));
  // An adapter folder whose config is a FIFO.
  ::mkdir(dir.file("adapter").c_str(), 0700);
  REQUIRE(::mkfifo(dir.file("adapter/adapter_config.json").c_str(), 0600) == 0);
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  CHECK_THROWS_WITH(increlora::load_adapter(*net, dir.file("adapter")), HasSubstring("not a regular file"));
}

TEST_CASE("An adapter config with a field of the wrong kind is refused naming the field", "[bad_inputs][serialize]") {
  TempDir dir;
  torch::manual_seed(1);
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  increlora::save_adapter(*net, dir.file("a"));
  const auto config_path = dir.file("a/adapter_config.json");
  const auto good = read_text(config_path);
  TinyNet fresh(4, 2, SVDLinearOptions(1, 1).r(1));
  const auto before = snapshot(*fresh);

  auto text = good;
  replace_once(text, "\"format\": \"increlora-adapter\"", "\"format\": 1");
  write_text(config_path, text);
  CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.file("a")), HasSubstring("is not an increlora adapter config"));

  text = good;
  replace_once(text, "\"in_features\": 4", "\"in_features\": 4.9");
  write_text(config_path, text);
  CHECK_THROWS_WITH(increlora::load_adapter(*fresh, dir.file("a")), HasSubstring("\"in_features\" must be an integer"));
  CHECK(unchanged(*fresh, before));

  write_text(config_path, good);
  CHECK_NOTHROW(increlora::load_adapter(*fresh, dir.file("a")));
}

TEST_CASE("A checkpoint with optimizer moments or a generator state of the wrong size is refused before any change",
          "[bad_inputs][checkpoint]") {
  const std::string bad = GENERATE(std::string("moment"), std::string("rng"));
  CAPTURE(bad);
  TempDir dir;
  torch::manual_seed(2);
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(1e-2));
  increlora::RankAllocator allocator(*net, increlora::RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(3));
  const auto x = torch::randn({4, 4});
  for (int64_t step = 0; step < 2; ++step) {
    optimizer.zero_grad();
    net->forward(x).pow(2).sum().backward();
    allocator.update_and_increase(*net, step, optimizer);
    optimizer.step();
  }
  increlora::save_checkpoint(dir.file("ckpt"), *net, allocator, optimizer, 1);
  const auto tensors_path = dir.file("ckpt/trainer_state.safetensors");
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  {
    const increlora::SafetensorsFile file(tensors_path);
    for (const auto& name : file.names()) {
      auto t = file.tensor(name);
      if (bad == "moment" && name == "optimizer.fc0.lora_A.exp_avg") t = torch::zeros({3, 3});
      if (bad == "rng" && name == "rng.cpu") t = t.narrow(0, 0, 10).clone();
      tensors.emplace_back(name, t);
    }
  }
  increlora::save_safetensors(tensors_path, tensors, {{"format", "pt"}});

  torch::manual_seed(9);
  TinyNet other(4, 2, SVDLinearOptions(1, 1).r(1));
  torch::optim::Adam other_optimizer(other->parameters(), torch::optim::AdamOptions(1e-2));
  increlora::RankAllocator other_allocator(*other, increlora::RankAllocatorOptions().lora_r(1).target_rank(2)
                                                       .incre_interval(3));
  const auto before = snapshot(*other);
  CHECK_THROWS_WITH(increlora::load_checkpoint(dir.file("ckpt"), *other, other_allocator, other_optimizer),
                    HasSubstring(bad == "moment" ? "has shape [3, 3] but the parameter has" : "random generator state"));
  CHECK(unchanged(*other, before));
  CHECK(other_optimizer.state().empty());
}

TEST_CASE("A checkpoint whose step is not an integer is refused naming the field", "[bad_inputs][checkpoint]") {
  TempDir dir;
  torch::manual_seed(4);
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(1e-2));
  increlora::RankAllocator allocator(*net, increlora::RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(3));
  increlora::save_checkpoint(dir.file("ckpt"), *net, allocator, optimizer, 7);
  auto text = read_text(dir.file("ckpt/trainer_state.json"));
  replace_once(text, "\"step\": 7", "\"step\": 7.5");
  write_text(dir.file("ckpt/trainer_state.json"), text);
  CHECK_THROWS_WITH(increlora::load_checkpoint(dir.file("ckpt"), *net, allocator, optimizer),
                    HasSubstring("\"step\" must be an integer, got 7.5"));
}

// ---- the catalogue ------------------------------------------------------------------------------------------
// Every entry is one distinct bad input: options, tensors, safetensors files, adapter folders and checkpoints.
// Each must be refused with a c10::Error whose message names what to change (and, for files, the file and the
// field); a failed load must leave the model, the optimizer, the allocator and the generator as they were.

namespace {

using ordered_json = nlohmann::ordered_json;
using Tensors = std::vector<std::pair<std::string, torch::Tensor>>;

struct BadInput {
  std::string name;              ///< what is wrong with the input
  std::function<void()> run;     ///< builds the input and feeds it in: must throw
  std::string expected;          ///< the key part of the message: what to change
  std::string names_file = "";   ///< for files: the file the message must name
};

std::string message_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "(nothing thrown)";
}

std::vector<std::string> list_folder(const std::string& path) {
  std::vector<std::string> names;
  if (DIR* d = ::opendir(path.c_str())) {
    while (const dirent* e = ::readdir(d)) {
      const std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    ::closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

void copy_folder(const std::string& from, const std::string& to) {
  REQUIRE(::mkdir(to.c_str(), 0755) == 0);
  for (const auto& name : list_folder(from)) {
    increlora::test::write_bytes(to + "/" + name, increlora::test::read_bytes(from + "/" + name));
  }
}

void edit_json(const std::string& path, const std::function<void(ordered_json&)>& edit) {
  auto j = ordered_json::parse(read_text(path));
  edit(j);
  write_text(path, j.dump(2));
}

// Rewrites a safetensors file through `edit`, keeping its metadata (the save id among it).
void edit_tensors(const std::string& path, const std::function<void(Tensors&)>& edit) {
  Tensors tensors;
  std::map<std::string, std::string> metadata;
  {
    const increlora::SafetensorsFile file(path);
    for (const auto& name : file.names()) tensors.emplace_back(name, file.tensor(name));
    metadata = file.metadata();
  }
  edit(tensors);
  increlora::save_safetensors(path, tensors, metadata);
}

torch::Tensor& tensor_named(Tensors& tensors, const std::string& name) {
  for (auto& [n, t] : tensors) {
    if (n == name) return t;
  }
  FAIL("no tensor " << name);
  return tensors.front().second;
}

void erase_tensor(Tensors& tensors, const std::string& name) {
  const auto it = std::find_if(tensors.begin(), tensors.end(), [&](const auto& item) { return item.first == name; });
  REQUIRE(it != tensors.end());
  tensors.erase(it);
}

// A safetensors file from its parts: the 8-byte length, `header`, then `data`.
void write_raw_safetensors(const std::string& path, const std::string& header, const std::string& data,
                           int64_t claimed_length = -1) {
  std::string bytes(8, '\0');
  const uint64_t n = claimed_length >= 0 ? static_cast<uint64_t>(claimed_length) : header.size();
  std::memcpy(bytes.data(), &n, 8);
  write_text(path, bytes + header + data);
}

// Everything a load may change in a model: parameters, buffers (the slot states) and ranks.
struct ModelSnapshot {
  explicit ModelSnapshot(const torch::nn::Module& m) {
    for (const auto& t : m.parameters()) tensors.push_back(t.detach().clone());
    for (const auto& t : m.buffers()) tensors.push_back(t.detach().clone());
    for (const auto& [name, layer] : increlora::named_svd_linears(m)) ranks.push_back(layer->rank());
  }
  bool operator==(const ModelSnapshot& o) const {
    if (tensors.size() != o.tensors.size() || ranks != o.ranks) return false;
    for (size_t i = 0; i < tensors.size(); ++i) {
      if (!torch::equal(tensors[i], o.tensors[i])) return false;
    }
    return true;
  }
  std::vector<torch::Tensor> tensors;
  std::vector<int64_t> ranks;
};

// Everything a load may change in an Adam optimizer: its groups' options and every parameter's state.
struct OptimizerSnapshot {
  explicit OptimizerSnapshot(const torch::optim::Optimizer& optimizer) {
    for (const auto& group : optimizer.param_groups()) {
      const auto& o = static_cast<const torch::optim::AdamOptions&>(group.options());
      options.push_back({o.lr(), std::get<0>(o.betas()), std::get<1>(o.betas()), o.eps(), o.weight_decay(),
                         o.amsgrad() ? 1.0 : 0.0});
      for (const auto& p : group.params()) {
        const auto it = optimizer.state().find(p.unsafeGetTensorImpl());
        if (it == optimizer.state().end()) {
          steps.push_back(-1);
          continue;
        }
        const auto& s = static_cast<const torch::optim::AdamParamState&>(*it->second);
        steps.push_back(s.step());
        moments.push_back(s.exp_avg().clone());
        moments.push_back(s.exp_avg_sq().clone());
      }
    }
  }
  bool operator==(const OptimizerSnapshot& o) const {
    if (options != o.options || steps != o.steps || moments.size() != o.moments.size()) return false;
    for (size_t i = 0; i < moments.size(); ++i) {
      if (!torch::equal(moments[i], o.moments[i])) return false;
    }
    return true;
  }
  std::vector<std::vector<double>> options;
  std::vector<int64_t> steps;
  std::vector<torch::Tensor> moments;
};

struct AllocatorSnapshot {
  explicit AllocatorSnapshot(const increlora::RankAllocator& a) : state(a.state()) {}
  bool operator==(const AllocatorSnapshot& o) const {
    const auto& a = state;
    const auto& b = o.state;
    return a.round == b.round && a.total_rank == b.total_rank && a.budget_met == b.budget_met &&
           a.armed_step == b.armed_step && a.last_update_step == b.last_update_step && a.last_step == b.last_step &&
           a.non_finite_steps == b.non_finite_steps && torch::equal(a.sensitivity, b.sensitivity) &&
           torch::equal(a.uncertainty, b.uncertainty);
  }
  increlora::RankAllocatorState state;
};

torch::Tensor cpu_rng_state() {
  auto gen = at::globalContext().defaultGenerator(c10::DeviceType::CPU);
  std::lock_guard<std::mutex> lock(gen.mutex());
  return gen.get_state();
}

void check_catalogue(const std::vector<BadInput>& cases, const std::function<void(const std::string&)>& after) {
  for (const auto& c : cases) {
    CAPTURE(c.name);
    const auto message = message_of(c.run);
    CAPTURE(message);
    CHECK_THAT(message, HasSubstring(c.expected));
    CHECK_THAT(message, HasSubstring("increlora"));
    if (!c.names_file.empty()) CHECK_THAT(message, HasSubstring(c.names_file));
    after(c.name);
  }
}

increlora::RankAllocatorOptions catalogue_allocator_options() {
  return increlora::RankAllocatorOptions().lora_r(1).target_rank(2).incre_interval(3);
}

// Options and tensors handed to the library's functions.
std::vector<BadInput> option_and_tensor_cases() {
  using increlora::RankAllocatorOptions;
  using increlora::RestartWarmupOptions;
  auto allocator = [](RankAllocatorOptions o) {
    TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
    increlora::RankAllocator a(*net, o);
  };
  auto layer = [](SVDLinearOptions o) { increlora::SVDLinear l(o); };
  const auto base = catalogue_allocator_options();
  return {
      {"SVDLinearOptions with in_features 0", [=] { layer(SVDLinearOptions(0, 4).r(1)); },
       "in_features (0) and out_features (4) must both be positive"},
      {"SVDLinearOptions with a negative r", [=] { layer(SVDLinearOptions(4, 4).r(-1)); }, "r must be >= 0 (got -1)"},
      {"SVDLinearOptions with a negative capacity", [=] { layer(SVDLinearOptions(4, 4).r(1).capacity(-2)); },
       "capacity must be >= 0 (got -2)"},
      {"SVDLinearOptions with a capacity below r", [=] { layer(SVDLinearOptions(4, 4).r(4).capacity(2)); },
       "raise capacity to at least r"},
      {"SVDLinearOptions with lora_dropout 1", [=] { layer(SVDLinearOptions(4, 4).r(1).lora_dropout(1.0)); },
       "lora_dropout must be in [0, 1) (got 1)"},
      {"SVDLinearOptions with a NaN lora_alpha", [=] { layer(SVDLinearOptions(4, 4).r(1).lora_alpha(std::nan(""))); },
       "lora_alpha must be a positive number"},
      {"SVDLinearOptions with a negative lora_alpha", [=] { layer(SVDLinearOptions(4, 4).r(1).lora_alpha(-2)); },
       "lora_alpha must be a positive number (got -2)"},
      {"RankAllocatorOptions with a negative incre_rank_num", [=] { allocator(RankAllocatorOptions(base).incre_rank_num(-1)); },
       "incre_rank_num must be >= 1, or 0 to derive it"},
      {"RankAllocatorOptions with a negative total_step", [=] { allocator(RankAllocatorOptions(base).total_step(-5)); },
       "total_step must be >= 0 (0: unknown), got -5"},
      {"RankAllocatorOptions with a negative score_window", [=] { allocator(RankAllocatorOptions(base).score_window(-1)); },
       "score_window must be >= 0"},
      {"RankAllocatorOptions with a negative target_total_rank",
       [=] { allocator(RankAllocatorOptions(base).target_total_rank(-3)); }, "target_total_rank must be >= 0"},
      {"RankAllocatorOptions with gradient_accumulation_steps 0",
       [=] { allocator(RankAllocatorOptions(base).gradient_accumulation_steps(0)); },
       "gradient_accumulation_steps must be >= 1"},
      {"RankAllocatorOptions with a negative init_warmup", [=] { allocator(RankAllocatorOptions(base).init_warmup(-1)); },
       "init_warmup must be >= 0"},
      {"RestartWarmupOptions whose total_steps does not exceed warmup_steps",
       [] {
         TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
         increlora::RestartWarmup w(*net, RestartWarmupOptions(10, 10));
       },
       "total_steps (10) must exceed warmup_steps (10)"},
      {"RestartWarmupOptions with negative warmup_steps",
       [] {
         TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
         increlora::RestartWarmup w(*net, RestartWarmupOptions(-1, 10));
       },
       "warmup_steps must be >= 0 (got -1)"},
      {"RestartWarmupOptions of kScaleCurrent with warmup_steps 0",
       [] {
         TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
         increlora::RestartWarmup w(*net, RestartWarmupOptions(0, 10).schedule(increlora::RestartSchedule::kScaleCurrent));
       },
       "warmup_steps must be >= 1 for kScaleCurrent"},
      {"an infinite compute_orth_regu weight",
       [] {
         TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
         increlora::compute_orth_regu(*net, std::numeric_limits<double>::infinity());
       },
       "regu_weight must be a finite"},
      {"a gradient scale of 0",
       [] {
         TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
         increlora::RankAllocator a(*net, catalogue_allocator_options());
         a.set_gradient_scale(0.0);
       },
       "the scale must be a positive finite number"},
      {"a bias mode that does not exist",
       [] {
         TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
         increlora::lora_state_dict(*net, "some");
       },
       "bias must be \"none\", \"all\" or \"lora_only\" (got \"some\")"},
      {"FusedAdamW slot factors of the wrong length",
       [] {
         TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1).capacity(4));
         increlora::FusedAdamW optimizer(net->parameters(), torch::optim::AdamWOptions(1e-3));
         optimizer.track_adapter_slots(*net, 0);
         optimizer.set_slot_lr_factors(*net->fc[0], {1.0, 1.0}, {1.0, 1.0, 1.0, 1.0});
       },
       "expected 4 factors per bank (the layer's capacity), got 2 and 4"},
      {"a negative FusedAdamW slot factor",
       [] {
         TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1).capacity(2));
         increlora::FusedAdamW optimizer(net->parameters(), torch::optim::AdamWOptions(1e-3));
         optimizer.track_adapter_slots(*net, 0);
         optimizer.set_slot_lr_factors(*net->fc[0], {1.0, -1.0}, {1.0, 1.0});
       },
       "factors must be finite and >= 0"},
      {"FusedAdamW slot tracking from a negative step",
       [] {
         TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
         increlora::FusedAdamW optimizer(net->parameters(), torch::optim::AdamWOptions(1e-3));
         optimizer.track_adapter_slots(*net, -1);
       },
       "global_step must be >= 0 (got -1)"},
      {"a forward input of the wrong width",
       [] {
         increlora::SVDLinear l(SVDLinearOptions(4, 3).r(1));
         l(torch::randn({2, 5}));
       },
       "or build the layer with in_features(5)"},
      {"a forward input of another dtype",
       [] {
         increlora::SVDLinear l(SVDLinearOptions(4, 3).r(1));
         l(torch::randn({2, 4}, torch::kDouble));
       },
       "convert one of them"},
      {"an undefined forward input",
       [] {
         increlora::SVDLinear l(SVDLinearOptions(4, 3).r(1));
         l(torch::Tensor());
       },
       "got an undefined tensor"},
      {"a 0-dimensional forward input",
       [] {
         increlora::SVDLinear l(SVDLinearOptions(4, 3).r(1));
         l(torch::tensor(1.0f));
       },
       "expected an input tensor of shape [..., 4], got a scalar"},
      {"assign with factors of the wrong shape",
       [] {
         increlora::SVDLinear l(SVDLinearOptions(4, 3).r(1));
         l->assign(torch::zeros({4, 2}), torch::zeros({2}), torch::zeros({2, 4}));
       },
       "the layer needs P [3 × r]"},
      {"assign with a rank above the capacity",
       [] {
         increlora::SVDLinear l(SVDLinearOptions(4, 3).r(1).capacity(2));
         l->assign(torch::zeros({3, 3}), torch::zeros({3}), torch::zeros({3, 4}));
       },
       "build the layer with capacity(3) or more"},
      {"growing past the capacity",
       [] {
         increlora::SVDLinear l(SVDLinearOptions(4, 3).r(1).capacity(2));
         l->grow(2, 0, 0);
       },
       "SVDLinear::grow: cannot add 2"},
      {"save_safetensors of two tensors with one name",
       [] {
         TempDir d;
         increlora::save_safetensors(d.file("x.safetensors"), {{"a", torch::zeros({1})}, {"a", torch::zeros({1})}});
       },
       "the name 'a' appears twice"},
      {"save_safetensors of an undefined tensor",
       [] {
         TempDir d;
         increlora::save_safetensors(d.file("x.safetensors"), {{"a", torch::Tensor()}});
       },
       "tensor 'a' is undefined"},
      {"save_safetensors of a complex tensor",
       [] {
         TempDir d;
         increlora::save_safetensors(d.file("x.safetensors"), {{"z", torch::zeros({2}, torch::kComplexFloat)}});
       },
       "convert it to one of F64"},
      {"save_safetensors of a tensor named __metadata__",
       [] {
         TempDir d;
         increlora::save_safetensors(d.file("x.safetensors"), {{"__metadata__", torch::zeros({1})}});
       },
       "is reserved for the metadata; rename that tensor"},
      {"save_safetensors of a tensor without a name",
       [] {
         TempDir d;
         increlora::save_safetensors(d.file("x.safetensors"), {{"", torch::zeros({1})}});
       },
       "give every tensor a name"},
  };
}

// Safetensors files, read with SafetensorsFile (a file named "bad.safetensors" in `dir`).
std::vector<BadInput> safetensors_cases(const TempDir& dir) {
  const auto path = dir.file("bad.safetensors");
  const auto folder_path = dir.file("folder.safetensors"), missing_path = dir.file("missing.safetensors");
  const auto open = [path] { increlora::SafetensorsFile file(path); };
  const auto raw = [open, path](const std::string& header, const std::string& data, int64_t claimed = -1) {
    return [=] {
      write_raw_safetensors(path, header, data, claimed);
      open();
    };
  };
  const std::string f32 = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  const std::string data8(8, '\0');
  return {
      {"an empty file", [=] { write_text(path, ""); open(); }, "it is 0 bytes long, too short", "bad.safetensors"},
      {"a file shorter than the length field", [=] { write_text(path, "abcde"); open(); }, "it is 5 bytes long",
       "bad.safetensors"},
      {"a header length past the end of the file", raw(f32, data8, 1000), "the file is truncated", "bad.safetensors"},
      {"a header length above the format's limit", raw(f32, data8, 200'000'000), "more than the format's limit",
       "bad.safetensors"},
      {"a header that is not a JSON object", raw("[1, 2, 3]", ""), "does not start with a JSON object",
       "bad.safetensors"},
      {"a header that is not valid JSON", raw("{\"a\": ", ""), "the header is not valid JSON", "bad.safetensors"},
      {"a dtype the reader does not know", raw(R"({"a":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", "xx"),
       "has dtype F8_E4M3, which increlora does not read (supported: F64", "bad.safetensors"},
      {"a dtype that is not a string", raw(R"({"a":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", data8),
       "tensor 'a': \"dtype\" must be a string", "bad.safetensors"},
      {"an entry without data_offsets", raw(R"({"a":{"dtype":"F32","shape":[2]}})", data8),
       "must be an object with \"dtype\", \"shape\" and \"data_offsets\"", "bad.safetensors"},
      {"a shape that is not an array", raw(R"({"a":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", data8),
       "tensor 'a': \"shape\" must be an array", "bad.safetensors"},
      {"a negative shape entry", raw(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", data8),
       "a shape entry must be a non-negative integer, got -2", "bad.safetensors"},
      {"a fractional shape entry", raw(R"({"a":{"dtype":"F32","shape":[2.5],"data_offsets":[0,8]}})", data8),
       "a shape entry must be a non-negative integer, got 2.5", "bad.safetensors"},
      {"a shape far larger than the data",
       raw(R"({"a":{"dtype":"F32","shape":[1099511627776,1099511627776],"data_offsets":[0,8]}})", data8),
       "larger than the file's 8-byte data section", "bad.safetensors"},
      {"data_offsets whose end is before the begin", raw(R"({"a":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", data8),
       "whose end is before its begin", "bad.safetensors"},
      {"data_offsets past the data", raw(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", data8),
       "past the end of the data section (8 bytes)", "bad.safetensors"},
      {"data_offsets that do not span the shape", raw(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,8]}})", data8),
       "(4 bytes) but its data_offsets [0, 8] span 8 bytes", "bad.safetensors"},
      {"two tensors over the same bytes",
       raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
           data8),
       "overlaps tensor 'a'", "bad.safetensors"},
      {"bytes that belong to no tensor", raw(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})", data8),
       "bytes [0, 4) of the data section belong to no tensor", "bad.safetensors"},
      {"trailing bytes after the last tensor", raw(f32, data8 + "tail"), "has trailing bytes", "bad.safetensors"},
      {"a metadata value that is not a string", raw(R"({"__metadata__":{"format":1}})", ""),
       "metadata entry \"format\" must be a string", "bad.safetensors"},
      {"metadata that is not an object", raw(R"({"__metadata__":[1]})", ""), "\"__metadata__\" must be an object",
       "bad.safetensors"},
      {"a folder where the file should be",
       [=] {
         ::mkdir(folder_path.c_str(), 0755);
         increlora::SafetensorsFile file(folder_path);
       },
       "is not a regular file (a FIFO, device or folder)", "folder.safetensors"},
      {"a file that does not exist", [=] { increlora::SafetensorsFile file(missing_path); },
       "could not open it", "missing.safetensors"},
  };
}

}  // namespace

TEST_CASE("The catalogue of bad inputs: each is refused with a message that says what to change, and failed loads "
          "change nothing",
          "[bad_inputs]") {
  TempDir dir;
  size_t total = 0;
  std::set<std::string> names;
  const auto count = [&](const std::vector<BadInput>& cases) {
    total += cases.size();
    for (const auto& c : cases) names.insert(c.name);
  };

  // Options and tensors.
  const auto options = option_and_tensor_cases();
  count(options);
  check_catalogue(options, [](const std::string&) {});

  // Safetensors files.
  const auto files = safetensors_cases(dir);
  count(files);
  check_catalogue(files, [](const std::string&) {});

  // Adapter folders: a good one, copied and damaged per entry, loaded into a fresh model that must not change.
  torch::manual_seed(31);
  const auto layer_options = SVDLinearOptions(1, 1).r(1).capacity(4);
  TinyNet saved(4, 2, layer_options);
  saved->fc[0]->grow(1, 0, 0);  // rank 2: a successful load would change the fresh model's rank
  increlora::save_adapter(*saved, dir.file("good_adapter"));
  torch::manual_seed(32);
  TinyNet fresh(4, 2, layer_options);
  const ModelSnapshot fresh_before(*fresh);
  int folders = 0;
  // A copy of the good adapter damaged by `damage`, loaded into `model` (the fresh one by default).
  const auto adapter = [&](std::function<void(const std::string&)> damage,
                           std::function<void(const std::string&)> load = nullptr) {
    return [&, damage, load] {
      const auto folder = dir.file("adapter" + std::to_string(folders++));
      copy_folder(dir.file("good_adapter"), folder);
      damage(folder);
      if (load) {
        load(folder);
      } else {
        increlora::load_adapter(*fresh, folder);
      }
    };
  };
  const auto config = [&](std::function<void(ordered_json&)> edit) {
    return adapter([edit](const std::string& folder) { edit_json(folder + "/adapter_config.json", edit); });
  };
  const auto tensors = [&](std::function<void(Tensors&)> edit) {
    return adapter([edit](const std::string& folder) { edit_tensors(folder + "/adapter.safetensors", edit); });
  };
  const auto into = [&](SVDLinearOptions o, int64_t layers) {
    return adapter([](const std::string&) {}, [o, layers](const std::string& folder) {
      TinyNet other(4, layers, o);
      increlora::load_adapter(*other, folder);
    });
  };
  const std::string cfg = "adapter_config.json", st = "adapter.safetensors";
  const std::vector<BadInput> adapters = {
      {"an adapter config whose format is a number", config([](auto& j) { j["format"] = 1; }),
       "is not an increlora adapter config (its \"format\" is 1", cfg},
      {"an adapter config without a format", config([](auto& j) { j.erase("format"); }), "its \"format\" is missing",
       cfg},
      {"an adapter config of a newer format_version", config([](auto& j) { j["format_version"] = 2; }),
       "has format_version 2 but this increlora reads versions 1 to 1; update increlora", cfg},
      {"an adapter config whose format_version is a string", config([](auto& j) { j["format_version"] = "1"; }),
       "\"format_version\" must be an integer, got \"1\"", cfg},
      {"an adapter config with in_features 16.9", config([](auto& j) { j["modules"]["fc0"]["in_features"] = 16.9; }),
       "layer 'fc0': \"in_features\" must be an integer, got 16.9", cfg},
      {"an adapter config with a capacity beyond int64",
       config([](auto& j) { j["modules"]["fc1"]["capacity"] = std::numeric_limits<uint64_t>::max(); }),
       "\"capacity\" must be an integer, got 18446744073709551615", cfg},
      {"an adapter config with a negative rank", config([](auto& j) { j["modules"]["fc0"]["rank"] = -1; }),
       "layer 'fc0': \"rank\" is negative", cfg},
      {"an adapter config with lora_alpha as a string", config([](auto& j) { j["modules"]["fc0"]["lora_alpha"] = "one"; }),
       "\"lora_alpha\" must be a number, got \"one\"", cfg},
      {"an adapter config with a layer's bias as a number", config([](auto& j) { j["modules"]["fc1"]["bias"] = 1; }),
       "\"bias\" must be true or false, got 1", cfg},
      {"an adapter config without bias", config([](auto& j) { j.erase("bias"); }), "has no \"bias\"", cfg},
      {"an adapter config with a bias mode that does not exist", config([](auto& j) { j["bias"] = "sometimes"; }),
       "\"bias\" must be \"none\", \"all\" or \"lora_only\", got \"sometimes\"", cfg},
      {"an adapter config without modules", config([](auto& j) { j.erase("modules"); }), "has no \"modules\" object",
       cfg},
      {"an adapter config whose layer entry is a number", config([](auto& j) { j["modules"]["fc1"] = 3; }),
       "layer 'fc1', is 3, not an object", cfg},
      {"an adapter config whose total_rank disagrees", config([](auto& j) { j["total_rank"] = 5; }),
       "has \"total_rank\" 5 but its modules' ranks add up to 3", cfg},
      {"an adapter config whose rank_pattern disagrees", config([](auto& j) { j["rank_pattern"]["fc0"] = 1; }),
       "\"rank_pattern\" does not give module 'fc0' its rank 2", cfg},
      {"an adapter config whose rank_pattern is not an object", config([](auto& j) { j["rank_pattern"] = ordered_json::array(); }),
       "\"rank_pattern\" must be an object with one entry per module", cfg},
      {"an adapter config whose rank_pattern holds a fraction", config([](auto& j) { j["rank_pattern"]["fc1"] = 1.5; }),
       "\"rank_pattern\": \"fc1\" must be an integer, got 1.5", cfg},
      {"an adapter config whose save_id is a number", config([](auto& j) { j["save_id"] = 5; }),
       "\"save_id\" must be a string, got 5", cfg},
      {"an adapter config that is a JSON array", config([](auto& j) { j = ordered_json::array({1, 2}); }),
       "is not an increlora adapter config", cfg},
      {"an adapter config that is not JSON",
       adapter([](const std::string& f) { write_text(f + "/adapter_config.json", "format = increlora"); }),
       "is not valid JSON", cfg},
      {"an empty adapter config", adapter([](const std::string& f) { write_text(f + "/adapter_config.json", ""); }),
       "is not valid JSON", cfg},
      {"a folder in place of the adapter config",
       adapter([](const std::string& f) {
         ::unlink((f + "/adapter_config.json").c_str());
         ::mkdir((f + "/adapter_config.json").c_str(), 0755);
       }),
       "is not a regular file", cfg},
      {"a missing adapter config", adapter([](const std::string& f) { ::unlink((f + "/adapter_config.json").c_str()); }),
       "has no adapter_config.json; pass a folder written by save_adapter", ""},
      {"a missing adapter tensors file",
       adapter([](const std::string& f) { ::unlink((f + "/adapter.safetensors").c_str()); }), "could not open it", st},
      {"a FIFO in place of the adapter tensors",
       adapter([](const std::string& f) {
         ::unlink((f + "/adapter.safetensors").c_str());
         REQUIRE(::mkfifo((f + "/adapter.safetensors").c_str(), 0600) == 0);
       }),
       "is not a regular file", st},
      {"a truncated adapter tensors file",
       adapter([](const std::string& f) {
         const auto bytes = increlora::test::read_bytes(f + "/adapter.safetensors");
         increlora::test::write_bytes(f + "/adapter.safetensors", bytes.substr(0, bytes.size() - 16));
       }),
       "the file is truncated", st},
      {"adapter tensors stored as integers",
       tensors([](Tensors& t) { tensor_named(t, "fc0.lora_A") = tensor_named(t, "fc0.lora_A").to(torch::kLong); }),
       "stores 'fc0.lora_A' as Long, not as floating point numbers", st},
      {"an adapter tensors file without a bank", tensors([](Tensors& t) { erase_tensor(t, "fc1.lora_B"); }),
       "has no tensor 'fc1.lora_B' although its config lists the layer", st},
      {"an adapter tensors file with a tensor the model lacks",
       tensors([](Tensors& t) { t.emplace_back("fc0.lora_extra", torch::zeros({2})); }),
       "holds a tensor 'fc0.lora_extra' that the model has no place for", st},
      {"an adapter slot state with an unknown value",
       tensors([](Tensors& t) { tensor_named(t, "fc1.lora_slot_state")[3] = 7; }), "holds slot state 7 at slot 3",
       st},
      {"an adapter slot state that disagrees with the config's rank",
       tensors([](Tensors& t) { tensor_named(t, "fc1.lora_slot_state")[1] = 1; }),
       "but its config says rank 1 and reserve 0", st},
      {"an adapter bank of the wrong shape",
       tensors([](Tensors& t) { tensor_named(t, "fc0.lora_A") = torch::zeros({4, 5}); }),
       "has shape [4, 5] but the module's 'fc0.lora_A' has shape [4, 4]", st},
      {"adapter files of two different saves",
       config([](auto& j) { j["save_id"] = "1-00000000000000ff"; }),
       "no save in progress holds the config that belongs to the tensors", ""},
      {"a model whose layers have another capacity", into(SVDLinearOptions(1, 1).r(1).capacity(6), 2),
       "build it as SVDLinearOptions(4, 4).capacity(4)", ""},
      {"a model built with another r", into(SVDLinearOptions(1, 1).r(2).capacity(4), 2),
       "was saved from a layer built with r(1) but the model's is built with r(2)", ""},
      {"a model with another lora_alpha", into(SVDLinearOptions(1, 1).r(1).capacity(4).lora_alpha(2), 2),
       "build it with lora_alpha(1)", ""},
      {"a model with an adapted layer the adapter lacks", into(layer_options, 3),
       "the model's layer 'fc2' has an adapter but the adapter", ""},
      {"a model that lacks a layer of the adapter", into(layer_options, 1),
       "has a layer 'fc1' that the model lacks", ""},
  };
  count(adapters);
  check_catalogue(adapters, [&](const std::string&) { CHECK(ModelSnapshot(*fresh) == fresh_before); });
  CHECK_NOTHROW(increlora::load_adapter(*fresh, dir.file("good_adapter")));  // the good one still loads

  // Checkpoints: a good one from two training steps, copied and damaged per entry, loaded into a model, allocator
  // and optimizer that trained on their own (so that they have state to lose) and must not change.
  torch::manual_seed(33);
  TinyNet net(4, 2, SVDLinearOptions(1, 1).r(1));
  torch::optim::Adam optimizer(net->parameters(), torch::optim::AdamOptions(1e-2));
  increlora::RankAllocator allocator(*net, catalogue_allocator_options());
  const auto train = [](TinyNet& n, increlora::RankAllocator& a, torch::optim::Optimizer& o, int64_t steps) {
    const auto x = torch::randn({4, 4});
    for (int64_t step = 0; step < steps; ++step) {
      o.zero_grad();
      n->forward(x).pow(2).sum().backward();
      a.update_and_increase(*n, step, o);
      o.step();
    }
  };
  train(net, allocator, optimizer, 2);
  increlora::save_checkpoint(dir.file("good_ckpt"), *net, allocator, optimizer, 1);
  torch::manual_seed(34);
  TinyNet other(4, 2, SVDLinearOptions(1, 1).r(1));
  torch::optim::Adam other_optimizer(other->parameters(), torch::optim::AdamOptions(3e-2));
  increlora::RankAllocator other_allocator(*other, catalogue_allocator_options());
  train(other, other_allocator, other_optimizer, 1);
  const ModelSnapshot model_before(*other);
  const OptimizerSnapshot optimizer_before(other_optimizer);
  const AllocatorSnapshot allocator_before(other_allocator);
  REQUIRE_FALSE(optimizer_before.moments.empty());
  int ckpts = 0;
  const auto checkpoint = [&](std::function<void(const std::string&)> damage,
                              std::function<void(const std::string&)> load = nullptr) {
    return [&, damage, load] {
      const auto folder = dir.file("ckpt" + std::to_string(ckpts++));
      copy_folder(dir.file("good_ckpt"), folder);
      damage(folder);
      if (load) {
        load(folder);
      } else {
        increlora::load_checkpoint(folder, *other, other_allocator, other_optimizer);
      }
    };
  };
  const auto state = [&](std::function<void(ordered_json&)> edit) {
    return checkpoint([edit](const std::string& folder) { edit_json(folder + "/trainer_state.json", edit); });
  };
  const auto state_tensors = [&](std::function<void(Tensors&)> edit) {
    return checkpoint([edit](const std::string& folder) { edit_tensors(folder + "/trainer_state.safetensors", edit); });
  };
  const auto group = [](ordered_json& j) -> ordered_json& { return j["optimizer"]["param_groups"][0]; };
  const std::string ts = "trainer_state.json", tt = "trainer_state.safetensors";
  const std::vector<BadInput> checkpoints = {
      {"a step that is a string", state([](auto& j) { j["step"] = "7"; }), "\"step\" must be an integer, got \"7\"", ts},
      {"a negative step", state([](auto& j) { j["step"] = -3; }), "\"step\" is -3", ts},
      {"a step beyond int64", state([](auto& j) { j["step"] = std::numeric_limits<uint64_t>::max(); }),
       "\"step\" must be an integer, got 18446744073709551615", ts},
      {"a trainer state of a newer format_version", state([](auto& j) { j["format_version"] = 2; }),
       "has format_version 2 but this increlora reads versions 1 to 1; update increlora", ts},
      {"a trainer state of another format", state([](auto& j) { j["format"] = "something-else"; }),
       "is not an increlora checkpoint state", ts},
      {"a trainer state that is a JSON array", state([](auto& j) { j = ordered_json::array(); }),
       "is array, not a JSON object", ts},
      {"a trainer state that is not JSON",
       checkpoint([](const std::string& f) { write_text(f + "/trainer_state.json", "{\"step\": 1,"); }),
       "is not valid JSON", ts},
      {"a missing trainer state", checkpoint([](const std::string& f) { ::unlink((f + "/trainer_state.json").c_str()); }),
       "has no trainer_state.json; pass a folder written by save_checkpoint", ""},
      {"a trainer state without the optimizer", state([](auto& j) { j.erase("optimizer"); }),
       "(no \"optimizer\")", ts},
      {"an optimizer type that is not the one given", state([](auto& j) { j["optimizer"]["type"] = "RMSprop"; }),
       "holds the state of a RMSprop optimizer but the optimizer given is Adam; build the same optimizer type", ""},
      {"parameter groups that are not an array", state([](auto& j) { j["optimizer"]["param_groups"] = 3; }),
       "\"optimizer.param_groups\" must be an array, got 3", ts},
      {"a learning rate that is a string", state([&](auto& j) { group(j)["options"]["lr"] = "fast"; }),
       "\"optimizer.param_groups[0].options.lr\" must be a number, got \"fast\"", ts},
      {"a negative learning rate", state([&](auto& j) { group(j)["options"]["lr"] = -0.1; }),
       "\"optimizer.param_groups[0].options.lr\" is -0.1 but must be >= 0", ts},
      {"a beta1 of 1.5", state([&](auto& j) { group(j)["options"]["beta1"] = 1.5; }),
       "\"optimizer.param_groups[0].options.beta1\" is 1.5 but must be in [0, 1)", ts},
      {"a negative eps", state([&](auto& j) { group(j)["options"]["eps"] = -1e-8; }),
       "\"optimizer.param_groups[0].options.eps\" is -1e-08 but must be >= 0", ts},
      {"amsgrad as a number", state([&](auto& j) { group(j)["options"]["amsgrad"] = 1; }),
       "\"optimizer.param_groups[0].options.amsgrad\" must be true or false, got 1", ts},
      {"a parameter group over other parameters", state([&](auto& j) { group(j)["params"][0] = "fc9.lora_A"; }),
       "parameter 0 of group 0 is 'fc9.lora_A' in the checkpoint", ""},
      {"a state with the wrong fields",
       state([](auto& j) { j["optimizer"]["state"]["fc0.lora_A"]["fields"] = ordered_json::array({"exp_avg"}); }),
       "\"optimizer.state.fc0.lora_A.fields\" is [\"exp_avg\"] but a Adam state holds exp_avg, exp_avg_sq", ts},
      {"a state of a parameter no group trains",
       state([](auto& j) { j["optimizer"]["state"]["fc7.lora_E"] = j["optimizer"]["state"]["fc0.lora_E"]; }),
       "holds the state of 'fc7.lora_E', which no parameter group trains", ts},
      {"a state step of 2.5", state([](auto& j) { j["optimizer"]["state"]["fc0.lora_A"]["step"] = 2.5; }),
       "\"optimizer.state.fc0.lora_A.step\" must be an integer, got 2.5", ts},
      {"a negative state step", state([](auto& j) { j["optimizer"]["state"]["fc1.lora_B"]["step"] = -1; }),
       "\"optimizer.state.fc1.lora_B.step\" is -1", ts},
      {"an allocator round of 1.5", state([](auto& j) { j["allocator"]["round"] = 1.5; }),
       "\"allocator.round\" must be an integer, got 1.5", ts},
      {"a negative allocator round", state([](auto& j) { j["allocator"]["round"] = -2; }),
       "the allocator's round (-2), total_rank (2) or non_finite_steps (0) is negative", ts},
      {"budget_met as a string", state([](auto& j) { j["allocator"]["budget_met"] = "no"; }),
       "\"allocator.budget_met\" must be true or false, got \"no\"", ts},
      {"an allocator over other layers",
       state([](auto& j) { j["allocator"]["layers"] = ordered_json::array({"fc0", "fc5"}); }),
       "the allocator scores the layers fc0, fc1 but the checkpoint's scored fc0, fc5", ""},
      {"an allocator total rank the adapter does not add up to", state([](auto& j) { j["allocator"]["total_rank"] = 9; }),
       "the checkpoint's allocator has total rank 9 but its adapter's layers add up to 2", ""},
      {"a checkpoint saved without an allocator loaded with one", state([](auto& j) { j["allocator"] = nullptr; }),
       "the checkpoint was saved without a RankAllocator but one is given", ""},
      {"a checkpoint saved with an allocator loaded without one",
       checkpoint([](const std::string&) {},
                  [&](const std::string& f) { increlora::load_checkpoint(f, *other, nullptr, other_optimizer, true, nullptr); }),
       "the checkpoint was saved with a RankAllocator but one is not given", ""},
      {"a user state that is not an object", state([](auto& j) { j["user"] = ordered_json::array({1}); }),
       "\"user\" must be an object", ts},
      {"an adapter flag that is a string", state([](auto& j) { j["adapter"] = "yes"; }),
       "\"adapter\" must be true or false, got \"yes\"", ts},
      {"an rng list that names a state twice", state([](auto& j) { j["rng"].push_back(j["rng"][0]); }),
       "\"rng\" names 'rng.cpu' twice", ts},
      {"an rng list that is not of strings", state([](auto& j) { j["rng"] = ordered_json::array({0}); }),
       "\"rng\" must be an array of strings", ts},
      {"trained parameters the model lacks", state([](auto& j) { j["trained_parameters"].push_back("head.weight"); }),
       "the checkpoint trained the parameter 'head.weight', which the model lacks", ""},
      {"allocator scores of the wrong size",
       state_tensors([](Tensors& t) { tensor_named(t, "allocator.sensitivity") = torch::zeros({3}); }),
       "tensor 'allocator.sensitivity' is Float of shape [3] but the allocator needs 2 finite floating-point scores", tt},
      {"allocator scores that are not finite",
       state_tensors([](Tensors& t) { tensor_named(t, "allocator.uncertainty")[1] = std::nan(""); }),
       "tensor 'allocator.uncertainty' is Float of shape [2] but the allocator needs 2 finite", tt},
      {"non-finite layer flags of the wrong size",
       state_tensors([](Tensors& t) { tensor_named(t, "allocator.non_finite_layers") = torch::zeros({5}, torch::kBool); }),
       "tensor 'allocator.non_finite_layers' is Bool of shape [5] but the allocator needs 2 booleans", tt},
      {"allocator scores that are missing", state_tensors([](Tensors& t) { erase_tensor(t, "allocator.sensitivity"); }),
       "holds no tensor named 'allocator.sensitivity'", tt},
      {"a generator state that is missing", state_tensors([](Tensors& t) { erase_tensor(t, "rng.cpu"); }),
       "holds no tensor named 'rng.cpu'", tt},
      {"a generator state of the right size but invalid content",
       state_tensors([](Tensors& t) { tensor_named(t, "rng.cpu").zero_(); }),
       "the random generator state 'rng.cpu' in", tt},
      {"optimizer moments stored as integers",
       state_tensors([](Tensors& t) {
         tensor_named(t, "optimizer.fc1.lora_B.exp_avg_sq") = tensor_named(t, "optimizer.fc1.lora_B.exp_avg_sq").to(torch::kLong);
       }),
       "the optimizer state 'exp_avg_sq' of parameter 'fc1.lora_B' is stored as Long, not as floating point", ""},
      {"optimizer moments that are missing", state_tensors([](Tensors& t) { erase_tensor(t, "optimizer.fc0.lora_E.exp_avg"); }),
       "holds no tensor named 'optimizer.fc0.lora_E.exp_avg'", tt},
      {"a trained parameter of the wrong shape",
       state_tensors([](Tensors& t) { tensor_named(t, "model.fc0.weight") = torch::zeros({4, 5}); }),
       "the parameter 'fc0.weight' has shape [4, 5] in the checkpoint but [4, 4] in the model", ""},
      {"a trained parameter stored as integers",
       state_tensors([](Tensors& t) { tensor_named(t, "model.fc1.bias") = torch::zeros({4}, torch::kLong); }),
       "the parameter 'fc1.bias' is stored as Long", tt},
      {"a truncated trainer state tensors file",
       checkpoint([](const std::string& f) {
         const auto bytes = increlora::test::read_bytes(f + "/trainer_state.safetensors");
         increlora::test::write_bytes(f + "/trainer_state.safetensors", bytes.substr(0, bytes.size() - 8));
       }),
       "the file is truncated", tt},
      {"trainer state files of two different saves", state([](auto& j) { j["save_id"] = "1-00000000000000ee"; }),
       "come from different saves", ""},
      {"a checkpoint adapter config with in_features 4.5",
       checkpoint([](const std::string& f) {
         edit_json(f + "/adapter_config.json", [](auto& j) { j["modules"]["fc1"]["in_features"] = 4.5; });
       }),
       "layer 'fc1': \"in_features\" must be an integer, got 4.5", "adapter_config.json"},
      {"an AdamW optimizer for an Adam checkpoint",
       checkpoint([](const std::string&) {},
                  [&](const std::string& f) {
                    torch::optim::AdamW adamw(other->parameters(), torch::optim::AdamWOptions(1e-3));
                    increlora::load_checkpoint(f, *other, other_allocator, adamw);
                  }),
       "holds the state of a Adam optimizer but the optimizer given is AdamW", ""},
      {"an optimizer over the parameters in another order",
       checkpoint([](const std::string&) {},
                  [&](const std::string& f) {
                    auto params = other->parameters();
                    std::reverse(params.begin(), params.end());
                    torch::optim::Adam reversed(params, torch::optim::AdamOptions(1e-3));
                    increlora::load_checkpoint(f, *other, other_allocator, reversed);
                  }),
       "build the optimizer over the same parameters in the same order", ""},
  };
  count(checkpoints);
  const auto rng_before = cpu_rng_state();
  check_catalogue(checkpoints, [&](const std::string&) {
    CHECK(ModelSnapshot(*other) == model_before);
    CHECK(OptimizerSnapshot(other_optimizer) == optimizer_before);
    CHECK(AllocatorSnapshot(other_allocator) == allocator_before);
    CHECK(torch::equal(cpu_rng_state(), rng_before));
  });
  CHECK(increlora::load_checkpoint(dir.file("good_ckpt"), *other, other_allocator, other_optimizer) == 1);

  CAPTURE(total);
  CHECK(names.size() == total);  // every entry a distinct input
  CHECK(total >= 40);
  std::fprintf(stderr, "bad_inputs: the catalogue refused %zu bad inputs\n", total);
}
