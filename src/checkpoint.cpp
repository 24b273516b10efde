#include "increlora/checkpoint.hpp"

#include "increlora/errors.hpp"
#include "increlora/modules.hpp"
#include "increlora/optim.hpp"
#include "increlora/safetensors.hpp"
#include "increlora/serialize.hpp"
#include "io.hpp"

#include <ATen/Context.h>
#include <torch/cuda.h>
#include <torch/optim/adam.h>
#include <torch/optim/adamw.h>
#include <torch/optim/sgd.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <thread>
#include <set>
#include <unordered_map>

#include <unistd.h>

namespace increlora {
namespace {

using ordered_json = nlohmann::ordered_json;
using detail::join_path;

constexpr const char* kStateTensors = "trainer_state.safetensors";
constexpr const char* kStateJson = "trainer_state.json";
constexpr const char* kStateFormat = "increlora-checkpoint";
constexpr const char* kSaveIdMetadata = "increlora_save_id";  // trainer_state.safetensors' metadata

enum class OptimizerKind { kAdam, kAdamW, kSGD };

OptimizerKind kind_of(const torch::optim::Optimizer& optimizer, const char* caller) {
  if (dynamic_cast<const torch::optim::AdamW*>(&optimizer)) return OptimizerKind::kAdamW;
  if (dynamic_cast<const torch::optim::Adam*>(&optimizer)) return OptimizerKind::kAdam;
  if (dynamic_cast<const torch::optim::SGD*>(&optimizer)) return OptimizerKind::kSGD;
  INCRELORA_CHECK(false, caller, ": the optimizer is not a torch::optim::Adam, AdamW or SGD, the optimizers whose "
                  "state increlora checkpoints; use one of them.");
  return OptimizerKind::kAdam;
}

const char* kind_name(OptimizerKind kind) {
  switch (kind) {
    case OptimizerKind::kAdam: return "Adam";
    case OptimizerKind::kAdamW: return "AdamW";
    case OptimizerKind::kSGD: return "SGD";
  }
  return "";
}

// The optimizer's state is keyed by TensorImpl; checkpoints key it by the parameter's qualified name.
std::unordered_map<const void*, std::string> parameter_names(const torch::nn::Module& model) {
  std::unordered_map<const void*, std::string> names;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (item.value().defined()) names.emplace(item.value().unsafeGetTensorImpl(), item.key());
  }
  return names;
}

std::vector<std::vector<std::string>> group_names(const torch::optim::Optimizer& optimizer,
                                                  const torch::nn::Module& model, const char* caller) {
  const auto names = parameter_names(model);
  std::vector<std::vector<std::string>> groups;
  for (size_t g = 0; g < optimizer.param_groups().size(); ++g) {
    std::vector<std::string> group;
    for (const auto& p : optimizer.param_groups()[g].params()) {
      const auto it = names.find(p.unsafeGetTensorImpl());
      INCRELORA_CHECK(it != names.end(), caller, ": parameter group ", g, " of the optimizer holds a tensor of shape ",
                      p.sizes(), " that is not a parameter of the model; build the optimizer from the model's "
                      "parameters.");
      group.push_back(it->second);
    }
    groups.push_back(std::move(group));
  }
  return groups;
}

ordered_json options_json(OptimizerKind kind, const torch::optim::OptimizerOptions& options) {
  if (kind == OptimizerKind::kSGD) {
    const auto& o = static_cast<const torch::optim::SGDOptions&>(options);
    return {{"lr", o.lr()}, {"momentum", o.momentum()}, {"dampening", o.dampening()},
            {"weight_decay", o.weight_decay()}, {"nesterov", o.nesterov()}};
  }
  // AdamOptions and AdamWOptions have the same fields.
  const auto fields = [](const auto& o) {
    return ordered_json{{"lr", o.lr()},
                        {"beta1", std::get<0>(o.betas())},
                        {"beta2", std::get<1>(o.betas())},
                        {"eps", o.eps()},
                        {"weight_decay", o.weight_decay()},
                        {"amsgrad", o.amsgrad()}};
  };
  return kind == OptimizerKind::kAdam ? fields(static_cast<const torch::optim::AdamOptions&>(options))
                                      : fields(static_cast<const torch::optim::AdamWOptions&>(options));
}

// ---- typed fields of trainer_state.json ------------------------------------------------------------------------
// nlohmann converts 16.9 to 16, true to 1.0 and 2^64-1 to -1 without a word, and its own exceptions name
// neither the file nor the field: every field is checked here first, the message naming both.

const ordered_json& field(const ordered_json& object, const std::string& key, const std::string& what,
                          const std::string& path) {
  INCRELORA_CHECK(object.is_object() && object.contains(key), what, " lacks a field or has one of the wrong type (no \"",
                  path, key, "\"); the checkpoint is corrupted.");
  return object.at(key);
}

[[noreturn]] void wrong_type(const ordered_json& v, const std::string& key, const std::string& what,
                             const std::string& path, const char* kind) {
  // Thrown directly (not through INCRELORA_CHECK(false, ...)) so that the compiler sees that this never returns.
  C10_THROW_ERROR(Error, c10::str("increlora: ", what, " lacks a field or has one of the wrong type: \"", path, key,
                                  "\" must be ", kind, ", got ", v.dump(), "; the checkpoint is corrupted."));
}

int64_t integer_field(const ordered_json& object, const std::string& key, const std::string& what,
                      const std::string& path = "") {
  const auto& v = field(object, key, what, path);
  const bool fits = v.is_number_integer() &&
                    !(v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX));
  if (!fits) wrong_type(v, key, what, path, "an integer");
  return v.get<int64_t>();
}

double number_field(const ordered_json& object, const std::string& key, const std::string& what,
                    const std::string& path = "") {
  const auto& v = field(object, key, what, path);
  if (!v.is_number()) wrong_type(v, key, what, path, "a number");
  return v.get<double>();
}

bool bool_field(const ordered_json& object, const std::string& key, const std::string& what,
                const std::string& path = "") {
  const auto& v = field(object, key, what, path);
  if (!v.is_boolean()) wrong_type(v, key, what, path, "true or false");
  return v.get<bool>();
}

std::string string_field(const ordered_json& object, const std::string& key, const std::string& what,
                         const std::string& path = "") {
  const auto& v = field(object, key, what, path);
  if (!v.is_string()) wrong_type(v, key, what, path, "a string");
  return v.get<std::string>();
}

std::vector<std::string> strings_field(const ordered_json& object, const std::string& key, const std::string& what,
                                       const std::string& path = "") {
  const auto& v = field(object, key, what, path);
  bool ok = v.is_array();
  for (size_t i = 0; ok && i < v.size(); ++i) ok = v[i].is_string();
  if (!ok) wrong_type(v, key, what, path, "an array of strings");
  return v.get<std::vector<std::string>>();
}

const ordered_json& object_field(const ordered_json& object, const std::string& key, const std::string& what,
                                 const std::string& path = "") {
  const auto& v = field(object, key, what, path);
  if (!v.is_object()) wrong_type(v, key, what, path, "an object");
  return v;
}

// A number field within the range the optimizer's constructor enforces (which a restored value bypasses).
double bounded_field(const ordered_json& object, const std::string& key, const std::string& what,
                     const std::string& path, bool below_one) {
  const double v = number_field(object, key, what, path);
  INCRELORA_CHECK(v >= 0.0 && (!below_one || v < 1.0), what, ": \"", path, key, "\" is ", v, " but must be ",
                  below_one ? "in [0, 1)" : ">= 0", "; the checkpoint is corrupted.");
  return v;
}

// Applies the saved options `j` (checked: call it on a clone first to validate without changing anything).
void set_options(OptimizerKind kind, torch::optim::OptimizerOptions& options, const ordered_json& j,
                 const std::string& what, const std::string& path) {
  const auto bounded = [&](const char* key, bool below_one = false) {
    return bounded_field(j, key, what, path, below_one);
  };
  if (kind == OptimizerKind::kSGD) {
    auto& o = static_cast<torch::optim::SGDOptions&>(options);
    o.lr(bounded("lr")).momentum(bounded("momentum"));
    o.dampening(number_field(j, "dampening", what, path)).weight_decay(bounded("weight_decay"));
    o.nesterov(bool_field(j, "nesterov", what, path));
    return;
  }
  const auto apply = [&](auto& o) {
    o.lr(bounded("lr")).eps(bounded("eps"));
    o.betas(std::make_tuple(bounded("beta1", true), bounded("beta2", true)));
    o.weight_decay(bounded("weight_decay")).amsgrad(bool_field(j, "amsgrad", what, path));
  };
  if (kind == OptimizerKind::kAdam) {
    apply(static_cast<torch::optim::AdamOptions&>(options));
  } else {
    apply(static_cast<torch::optim::AdamWOptions&>(options));
  }
}

// The state tensors an optimizer's step() reads; a saved state must hold exactly these (plus, for Adam with
// amsgrad, max_exp_avg_sq).
std::set<std::string> state_fields(OptimizerKind kind, bool amsgrad) {
  if (kind == OptimizerKind::kSGD) return {"momentum_buffer"};
  if (amsgrad) return {"exp_avg", "exp_avg_sq", "max_exp_avg_sq"};
  return {"exp_avg", "exp_avg_sq"};
}

bool amsgrad_of(OptimizerKind kind, const torch::optim::OptimizerOptions& options) {
  if (kind == OptimizerKind::kAdam) return static_cast<const torch::optim::AdamOptions&>(options).amsgrad();
  if (kind == OptimizerKind::kAdamW) return static_cast<const torch::optim::AdamWOptions&>(options).amsgrad();
  return false;
}

// The per-parameter tensors of one optimizer state, by field name.
std::vector<std::pair<std::string, torch::Tensor>> state_tensors(OptimizerKind kind,
                                                                 const torch::optim::OptimizerParamState& state,
                                                                 int64_t* step) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  const auto add = [&out](const char* field, const torch::Tensor& t) {
    if (t.defined()) out.emplace_back(field, t);
  };
  const auto adam = [&](const auto& s) {
    *step = s.step();
    add("exp_avg", s.exp_avg());
    add("exp_avg_sq", s.exp_avg_sq());
    add("max_exp_avg_sq", s.max_exp_avg_sq());
  };
  switch (kind) {
    case OptimizerKind::kAdam: adam(static_cast<const torch::optim::AdamParamState&>(state)); break;
    case OptimizerKind::kAdamW: adam(static_cast<const torch::optim::AdamWParamState&>(state)); break;
    case OptimizerKind::kSGD:
      *step = 0;
      add("momentum_buffer", static_cast<const torch::optim::SGDParamState&>(state).momentum_buffer());
      break;
  }
  return out;
}

std::unique_ptr<torch::optim::OptimizerParamState> make_state(OptimizerKind kind, int64_t step,
                                                              const std::map<std::string, torch::Tensor>& fields) {
  const auto get = [&fields](const char* name) {
    const auto it = fields.find(name);
    return it == fields.end() ? torch::Tensor() : it->second;
  };
  if (kind == OptimizerKind::kSGD) {
    auto s = std::make_unique<torch::optim::SGDParamState>();
    s->momentum_buffer(get("momentum_buffer"));
    return s;
  }
  const auto fill = [&](auto s) {
    s->step(step);
    s->exp_avg(get("exp_avg"));
    s->exp_avg_sq(get("exp_avg_sq"));
    s->max_exp_avg_sq(get("max_exp_avg_sq"));
    return s;
  };
  if (kind == OptimizerKind::kAdam) return fill(std::make_unique<torch::optim::AdamParamState>());
  return fill(std::make_unique<torch::optim::AdamWParamState>());
}

std::vector<std::pair<std::string, at::Generator>> generators() {
  std::vector<std::pair<std::string, at::Generator>> out;
  out.emplace_back("rng.cpu", at::globalContext().defaultGenerator(c10::DeviceType::CPU));
  if (torch::cuda::is_available()) {
    for (int64_t i = 0; i < static_cast<int64_t>(torch::cuda::device_count()); ++i) {
      out.emplace_back(fmt::format("rng.cuda.{}", i),
                       at::globalContext().defaultGenerator(c10::Device(c10::DeviceType::CUDA, static_cast<int8_t>(i))));
    }
  }
  return out;
}

std::string strip_slashes(std::string dir) {
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  return dir;
}

}  // namespace

void save_checkpoint(const std::string& dir, const torch::nn::Module& model, const RankAllocator& allocator,
                     const torch::optim::Optimizer& optimizer, int64_t step) {
  save_checkpoint(dir, model, &allocator, optimizer, step, std::string());
}

int64_t load_checkpoint(const std::string& dir, torch::nn::Module& model, RankAllocator& allocator,
                        torch::optim::Optimizer& optimizer, bool restore_rng) {
  return load_checkpoint(dir, model, &allocator, optimizer, restore_rng, nullptr);
}

void save_checkpoint(const std::string& dir_arg, const torch::nn::Module& model, const RankAllocator* allocator,
                     const torch::optim::Optimizer& optimizer, int64_t step, const std::string& user_state) {
  constexpr const char* caller = "save_checkpoint";
  INCRELORA_CHECK(step >= 0, caller, ": step must be >= 0 (got ", step, ").");
  const std::string dir = strip_slashes(dir_arg);
  INCRELORA_CHECK(!dir.empty(), caller, ": the folder name is empty; pass the checkpoint folder.");
  const auto kind = kind_of(optimizer, caller);
  const auto groups = group_names(optimizer, model, caller);
  // One id for every file of this save, so that a reader can tell a mix of two saves (see load_checkpoint).
  const auto save_id = detail::unique_tag();

  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  ordered_json j = ordered_json::object();
  j["format"] = kStateFormat;
  j["format_version"] = kCheckpointFormatVersion;
  j["save_id"] = save_id;
  j["step"] = step;
  if (!user_state.empty()) {
    ordered_json user;
    try {
      user = ordered_json::parse(user_state);
    } catch (const nlohmann::json::exception& e) {
      INCRELORA_CHECK(false, caller, ": user_state is not valid JSON (", e.what(), "); pass a JSON object's text.");
    }
    INCRELORA_CHECK(user.is_object(), caller, ": user_state must be a JSON object (got ", user.type_name(), ").");
    j["user"] = std::move(user);
  }
  // A model without adapter layers (a head trained alone) has no adapter files.
  const bool with_adapter = !named_svd_linears(model, /*adapters_only=*/true).empty();
  j["adapter"] = with_adapter;

  // Parameters the optimizer trains that the adapter files do not hold (a task head, trained biases).
  const auto adapter = lora_state_dict(model);
  std::vector<std::string> extra;
  for (const auto& group : groups) {
    for (const auto& name : group) {
      if (!adapter.contains(name)) extra.push_back(name);
    }
  }
  const auto params = model.named_parameters(/*recurse=*/true);
  for (const auto& name : extra) tensors.emplace_back("model." + name, params[name]);
  j["trained_parameters"] = extra;

  if (allocator != nullptr) {
    const auto state = allocator->state();
    std::vector<std::string> layers;
    for (const auto& entry : allocator->modules()) layers.push_back(entry.first);
    j["allocator"] = {{"layers", layers},
                      {"round", state.round},
                      {"total_rank", state.total_rank},
                      {"budget_met", state.budget_met},
                      {"armed_step", state.armed_step},
                      {"last_update_step", state.last_update_step},
                      {"last_step", state.last_step},
                      {"pending_round", state.pending_round},
                      {"non_finite_steps", state.non_finite_steps}};
    tensors.emplace_back("allocator.sensitivity", state.sensitivity);
    tensors.emplace_back("allocator.uncertainty", state.uncertainty);
    // Which layers had non-finite scores since the last round: the next round's first event names them.
    if (state.non_finite_layers.defined()) tensors.emplace_back("allocator.non_finite_layers", state.non_finite_layers);
  } else {
    j["allocator"] = nullptr;
  }

  ordered_json jgroups = ordered_json::array();
  ordered_json jstate = ordered_json::object();
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto& group = optimizer.param_groups()[g];
    jgroups.push_back({{"params", groups[g]}, {"options", options_json(kind, group.options())}});
    for (size_t i = 0; i < groups[g].size(); ++i) {
      const auto it = optimizer.state().find(group.params()[i].unsafeGetTensorImpl());
      if (it == optimizer.state().end()) continue;  // never stepped (no gradient yet)
      int64_t param_step = 0;
      std::vector<std::string> fields;
      for (auto& [field, t] : state_tensors(kind, *it->second, &param_step)) {
        tensors.emplace_back(fmt::format("optimizer.{}.{}", groups[g][i], field), t);
        fields.push_back(field);
      }
      jstate[groups[g][i]] = {{"step", param_step}, {"fields", fields}};
    }
  }
  j["optimizer"] = {{"type", kind_name(kind)}, {"param_groups", jgroups}, {"state", jstate}};

  std::vector<std::string> rng;
  for (auto& [name, gen] : generators()) {
    std::lock_guard<std::mutex> lock(gen.mutex());
    tensors.emplace_back(name, gen.get_state());
    rng.push_back(name);
  }
  j["rng"] = rng;

  // The whole new version is built (and flushed) in the sibling folder "<dir>.tmp-<pid>-<tag>", then put in
  // place by one atomic swap (detail::replace_directory): a reader, or a crash, sees the previous checkpoint or
  // the complete new one. The strays of killed saves go first.
  const auto [parent, base] = detail::split_path(dir);
  detail::make_directories(parent, caller);
  detail::remove_dead_strays(parent, base);
  const std::string staged = dir + ".tmp-" + save_id;
  try {
    detail::make_directories(staged, caller);
    if (with_adapter) detail::save_adapter(model, staged, "none", save_id);
    save_safetensors(join_path(staged, kStateTensors), tensors, {{"format", "pt"}, {kSaveIdMetadata, save_id}});
    detail::write_file_atomically(join_path(staged, kStateJson), j.dump(2) + "\n");
    detail::replace_directory(staged, dir);
  } catch (...) {
    detail::remove_tree(staged);
    throw;
  }
}

int64_t load_checkpoint(const std::string& dir_arg, torch::nn::Module& model, RankAllocator* allocator,
                        torch::optim::Optimizer& optimizer, bool restore_rng, std::string* user_state) {
  constexpr const char* caller = "load_checkpoint";
  const std::string dir = strip_slashes(dir_arg);
  const auto json_path = join_path(dir, kStateJson);
  // A save killed between the two renames of replace_directory's fallback leaves no `dir` but the previous
  // version parked beside it: put it back (and drop the dead writers' strays) before reading.
  detail::recover_directory(dir, [](const std::string& folder) { return detail::path_exists(join_path(folder, kStateJson)); });
  const std::string what = fmt::format("{}: '{}'", caller, json_path);

  // The files are read by name, so a save that swaps the folder between two reads would hand over a mix of two
  // checkpoints: their save ids tell, and the reads start again (the new version is complete by then).
  ordered_json j;
  std::shared_ptr<const SafetensorsFile> file_holder;
  std::optional<detail::PreparedAdapter> prepared;
  bool with_adapter = true;
  for (int attempt = 0;; ++attempt) {
    INCRELORA_CHECK(detail::path_exists(json_path), caller, ": '", dir, "' has no ", kStateJson,
                    "; pass a folder written by save_checkpoint.");
    try {
      j = ordered_json::parse(detail::read_text_file(json_path, std::string(caller) + ": the trainer state"));
    } catch (const nlohmann::json::exception& e) {
      INCRELORA_CHECK(false, what, " is not valid JSON (", e.what(), "); the checkpoint is corrupted.");
    }
    INCRELORA_CHECK(j.is_object(), what, " is ", j.type_name(), ", not a JSON object; the checkpoint is corrupted.");
    const auto format = j.contains("format") ? j.at("format") : ordered_json();
    INCRELORA_CHECK(format.is_string() && format.get<std::string>() == kStateFormat, what,
                    " is not an increlora checkpoint state (its \"format\" is ",
                    j.contains("format") ? format.dump() : std::string("missing"), ", not \"", kStateFormat,
                    "\"); pass a folder written by save_checkpoint.");
    const auto version = integer_field(j, "format_version", what);
    INCRELORA_CHECK(version >= 1 && version <= kCheckpointFormatVersion, what, " has format_version ", version,
                    " but this increlora reads versions 1 to ", kCheckpointFormatVersion, "; update increlora.");
    const auto json_id = j.contains("save_id") ? string_field(j, "save_id", what) : std::string();
    with_adapter = j.contains("adapter") ? bool_field(j, "adapter", what) : true;
    file_holder = std::make_shared<const SafetensorsFile>(join_path(dir, kStateTensors));
    const auto it = file_holder->metadata().find(kSaveIdMetadata);
    const auto tensors_id = it == file_holder->metadata().end() ? std::string() : it->second;
    prepared.reset();
    if (with_adapter) prepared = detail::prepare_adapter_load(model, dir);
    const auto adapter_id = prepared ? prepared->save_id : std::string();
    // Files of older versions, or rewritten by hand, carry no id: only two ids that differ are a mix.
    const auto same = [](const std::string& a, const std::string& b) { return a.empty() || b.empty() || a == b; };
    if (same(json_id, tensors_id) && same(json_id, adapter_id) && same(tensors_id, adapter_id)) break;
    INCRELORA_CHECK(attempt < 50, caller, ": the files in '", dir, "' come from different saves (", kStateJson, " ",
                    json_id, ", ", kStateTensors, " ", tensors_id, ", the adapter ", adapter_id,
                    "); the folder was assembled by hand or is corrupted: save the checkpoint again.");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  const auto& file = *file_holder;

  // Read and check everything before touching the model, the allocator or the optimizer.
  const int64_t step = integer_field(j, "step", what);
  INCRELORA_CHECK(step >= 0, what, ": \"step\" is ", step, "; the checkpoint is corrupted.");
  std::string user = "{}";
  RankAllocatorState alloc_state;
  std::vector<std::string> saved_layers;
  std::map<std::string, std::map<std::string, torch::Tensor>> saved_state;
  std::map<std::string, int64_t> saved_steps;
  const auto kind = kind_of(optimizer, caller);
  const auto groups = group_names(optimizer, model, caller);

  const auto& ja = field(j, "allocator", what, "");
  INCRELORA_CHECK(ja.is_null() || ja.is_object(), what, " lacks a field or has one of the wrong type: \"allocator\" "
                  "must be an object or null, got ", ja.dump(), "; the checkpoint is corrupted.");
  INCRELORA_CHECK(ja.is_null() == (allocator == nullptr), caller, ": the checkpoint was saved ",
                  ja.is_null() ? "without" : "with", " a RankAllocator but one is ",
                  allocator == nullptr ? "not " : "", "given; restore it as it was saved.");
  if (allocator != nullptr) {
    const std::string path = "allocator.";
    saved_layers = strings_field(ja, "layers", what, path);
    alloc_state.round = integer_field(ja, "round", what, path);
    alloc_state.total_rank = integer_field(ja, "total_rank", what, path);
    alloc_state.budget_met = bool_field(ja, "budget_met", what, path);
    alloc_state.armed_step = integer_field(ja, "armed_step", what, path);
    alloc_state.last_update_step = ja.contains("last_update_step") ? integer_field(ja, "last_update_step", what, path) : -1;
    // Checkpoints before these fields were saved after step `step`; nothing was pending then.
    alloc_state.last_step = ja.contains("last_step") ? integer_field(ja, "last_step", what, path) : step;
    alloc_state.pending_round = ja.contains("pending_round") ? bool_field(ja, "pending_round", what, path) : false;
    alloc_state.non_finite_steps = ja.contains("non_finite_steps") ? integer_field(ja, "non_finite_steps", what, path) : 0;
    INCRELORA_CHECK(alloc_state.round >= 0 && alloc_state.total_rank >= 0 && alloc_state.non_finite_steps >= 0, what,
                    ": the allocator's round (", alloc_state.round, "), total_rank (", alloc_state.total_rank,
                    ") or non_finite_steps (", alloc_state.non_finite_steps, ") is negative; the checkpoint is corrupted.");
    std::vector<std::string> layers;
    for (const auto& entry : allocator->modules()) layers.push_back(entry.first);
    INCRELORA_CHECK(layers == saved_layers, caller, ": the allocator scores the layers ",
                    fmt::format("{}", fmt::join(layers, ", ")), " but the checkpoint's scored ",
                    fmt::format("{}", fmt::join(saved_layers, ", ")), "; build the allocator over the same model.");
    for (auto* score : {&alloc_state.sensitivity, &alloc_state.uncertainty}) {
      const auto name = score == &alloc_state.sensitivity ? "allocator.sensitivity" : "allocator.uncertainty";
      *score = file.tensor(name);
      INCRELORA_CHECK(score->dim() == 1 && score->numel() == static_cast<int64_t>(layers.size()) &&
                          score->is_floating_point() && torch::isfinite(*score).all().item<bool>(),
                      caller, ": '", file.path(), "' tensor '", name, "' is ", score->scalar_type(), " of shape ",
                      score->sizes(), " but the allocator needs ", layers.size(), " finite floating-point scores, one "
                      "per layer; the checkpoint is corrupted.");
    }
    // Absent from checkpoints written before it was saved: then none.
    if (file.contains("allocator.non_finite_layers")) {
      const auto name = "allocator.non_finite_layers";
      alloc_state.non_finite_layers = file.tensor(name);
      const auto& flags = alloc_state.non_finite_layers;
      INCRELORA_CHECK(flags.dim() == 1 && flags.numel() == static_cast<int64_t>(layers.size()) &&
                          flags.scalar_type() == torch::kBool,
                      caller, ": '", file.path(), "' tensor '", name, "' is ", flags.scalar_type(), " of shape ",
                      flags.sizes(), " but the allocator needs ", layers.size(), " booleans, one per layer; the "
                      "checkpoint is corrupted.");
    }
    // RankAllocator::load_state compares the total with the model's ranks after the adapter is restored:
    // compare it with the ranks the adapter will restore now, before anything is.
    int64_t total = 0;
    for (const auto& entry : allocator->modules()) {
      total += prepared && prepared->ranks.count(entry.first) ? prepared->ranks.at(entry.first) : entry.second->rank();
    }
    INCRELORA_CHECK(total == alloc_state.total_rank, caller, ": the checkpoint's allocator has total rank ",
                    alloc_state.total_rank, " but its adapter's layers add up to ", total,
                    "; the files do not belong together or are corrupted.");
  }
  const auto extra = strings_field(j, "trained_parameters", what);
  const auto rng = strings_field(j, "rng", what);
  if (j.contains("user")) user = object_field(j, "user", what).dump();

  const auto& jopt = object_field(j, "optimizer", what);
  const auto saved_kind = string_field(jopt, "type", what, "optimizer.");
  INCRELORA_CHECK(saved_kind == kind_name(kind), caller, ": the checkpoint holds the state of a ", saved_kind,
                  " optimizer but the optimizer given is ", kind_name(kind), "; build the same optimizer type.");
  const auto& jgroups = field(jopt, "param_groups", what, "optimizer.");
  INCRELORA_CHECK(jgroups.is_array(), what, " lacks a field or has one of the wrong type: \"optimizer.param_groups\" "
                  "must be an array, got ", jgroups.dump(), "; the checkpoint is corrupted.");
  INCRELORA_CHECK(jgroups.size() == groups.size(), caller, ": the checkpoint's optimizer has ",
                  jgroups.size(), " parameter groups but the optimizer given has ", groups.size(),
                  "; build it with the same groups.");
  std::vector<std::unique_ptr<torch::optim::OptimizerOptions>> new_options;
  std::map<std::string, bool> amsgrad_by_param;
  for (size_t g = 0; g < groups.size(); ++g) {
    const auto path = fmt::format("optimizer.param_groups[{}].", g);
    const auto saved = strings_field(jgroups[g], "params", what, path);
    for (size_t i = 0; i < std::max(saved.size(), groups[g].size()); ++i) {
      const auto mine = i < groups[g].size() ? groups[g][i] : std::string("(nothing)");
      const auto theirs = i < saved.size() ? saved[i] : std::string("(nothing)");
      INCRELORA_CHECK(mine == theirs, caller, ": parameter ", i, " of group ", g, " is '", theirs,
                      "' in the checkpoint but '", mine, "' in the optimizer given; build the optimizer over the "
                      "same parameters in the same order.");
    }
    new_options.push_back(optimizer.param_groups()[g].options().clone());
    set_options(kind, *new_options.back(), object_field(jgroups[g], "options", what, path), what, path + "options.");
    for (const auto& name : groups[g]) amsgrad_by_param[name] = amsgrad_of(kind, *new_options.back());
  }
  const auto& jstate = object_field(jopt, "state", what, "optimizer.");
  for (const auto& [name, entry] : jstate.items()) {
    const auto path = fmt::format("optimizer.state.{}.", name);
    INCRELORA_CHECK(amsgrad_by_param.count(name) == 1, what, ": \"optimizer.state\" holds the state of '", name,
                    "', which no parameter group trains; the checkpoint is corrupted.");
    saved_steps[name] = integer_field(entry, "step", what, path);
    INCRELORA_CHECK(saved_steps[name] >= 0, what, ": \"", path, "step\" is ", saved_steps[name],
                    "; the checkpoint is corrupted.");
    const auto fields = strings_field(entry, "fields", what, path);
    const auto wanted = state_fields(kind, amsgrad_by_param.at(name));
    const std::set<std::string> got(fields.begin(), fields.end());
    INCRELORA_CHECK(got == wanted && got.size() == fields.size(), what, ": \"", path, "fields\" is ",
                    field(entry, "fields", what, path).dump(), " but a ", kind_name(kind), " state holds ",
                    fmt::format("{}", fmt::join(wanted, ", ")), "; the checkpoint is corrupted.");
    for (const auto& f : fields) saved_state[name][f] = file.tensor(fmt::format("optimizer.{}.{}", name, f));
  }

  const auto params = model.named_parameters(/*recurse=*/true);
  std::vector<std::pair<torch::Tensor, torch::Tensor>> extra_copies;
  for (const auto& name : extra) {
    const auto* target = params.find(name);
    INCRELORA_CHECK(target != nullptr, caller, ": the checkpoint trained the parameter '", name,
                    "', which the model lacks; build the model it was saved from.");
    auto value = file.tensor("model." + name);
    INCRELORA_CHECK(value.sizes() == target->sizes(), caller, ": the parameter '", name, "' has shape ",
                    value.sizes(), " in the checkpoint but ", target->sizes(), " in the model.");
    INCRELORA_CHECK(value.is_floating_point() || !target->is_floating_point(), caller, ": the parameter '", name,
                    "' is stored as ", value.scalar_type(), " in '", file.path(), "', not as floating point "
                    "numbers; the checkpoint is corrupted.");
    extra_copies.emplace_back(*target, std::move(value));
  }
  // Moments of the wrong shape would only fail at the next step(), a generator state of the wrong size at
  // set_state: check both before anything is restored.
  for (size_t g = 0; g < groups.size(); ++g) {
    for (size_t i = 0; i < groups[g].size(); ++i) {
      const auto it = saved_state.find(groups[g][i]);
      if (it == saved_state.end()) continue;
      const auto& p = optimizer.param_groups()[g].params()[i];
      for (const auto& [f, t] : it->second) {
        INCRELORA_CHECK(t.sizes() == p.sizes(), caller, ": the optimizer state '", f,
                        "' of parameter '", groups[g][i], "' has shape ", t.sizes(), " but the parameter has ",
                        p.sizes(), "; the checkpoint belongs to another model or is corrupted.");
        INCRELORA_CHECK(t.is_floating_point(), caller, ": the optimizer state '", f, "' of parameter '",
                        groups[g][i], "' is stored as ", t.scalar_type(), ", not as floating point numbers; the "
                        "checkpoint is corrupted.");
      }
    }
  }
  std::vector<torch::Tensor> rng_states;
  for (size_t i = 0; i < rng.size(); ++i) {
    INCRELORA_CHECK(std::count(rng.begin(), rng.end(), rng[i]) == 1, what, ": \"rng\" names '", rng[i],
                    "' twice; the checkpoint is corrupted.");
    rng_states.push_back(file.tensor(rng[i]));
  }
  // The live generators the saved states go to (by name; a generator this process lacks is left alone).
  std::vector<std::pair<at::Generator, torch::Tensor>> rng_restores;
  if (restore_rng) {
    for (const auto& [name, gen] : generators()) {
      for (size_t i = 0; i < rng.size(); ++i) {
        if (name != rng[i]) continue;
        auto copy = gen;
        std::lock_guard<std::mutex> lock(copy.mutex());
        const auto current = copy.get_state();
        INCRELORA_CHECK(rng_states[i].scalar_type() == current.scalar_type() &&
                            rng_states[i].sizes() == current.sizes(),
                        caller, ": the random generator state '", rng[i], "' is ", rng_states[i].scalar_type(), " ",
                        rng_states[i].sizes(), " but this generator's is ", current.scalar_type(), " ",
                        current.sizes(), "; the checkpoint is corrupted (or pass restore_rng = false).");
        // The generator checks the content only as it takes it: try it on a copy, so that a corrupted state
        // fails here rather than after everything else was restored.
        try {
          auto probe = copy.clone();
          probe.set_state(rng_states[i]);
        } catch (const c10::Error& e) {
          INCRELORA_CHECK(false, caller, ": the random generator state '", rng[i], "' in '", file.path(),
                          "' is not a valid state (", e.what_without_backtrace(), "); the checkpoint is corrupted "
                          "(or pass restore_rng = false).");
        }
        rng_restores.emplace_back(gen, rng_states[i]);
      }
    }
  }

  // Apply, nothing left to fail: adapter, trained parameters, allocator, optimizer, generators.
  if (prepared) prepared->apply();
  {
    torch::NoGradGuard no_grad;
    for (auto& [target, value] : extra_copies) target.copy_(value);
  }
  if (allocator != nullptr) allocator->load_state(alloc_state);
  // A FusedAdamW's per-slot counts belong to the state being replaced: the allocator's next
  // update_and_increase tracks the slots again and derives them from the restored start steps.
  if (auto* fused = dynamic_cast<FusedAdamW*>(&optimizer)) fused->untrack_adapter_slots();
  for (size_t g = 0; g < groups.size(); ++g) {
    auto& group = optimizer.param_groups()[g];
    // In place (checked above on a clone, so it cannot fail): whatever holds the group's options keeps them.
    const auto path = fmt::format("optimizer.param_groups[{}].", g);
    set_options(kind, group.options(), jgroups[g].at("options"), what, path + "options.");
    for (size_t i = 0; i < groups[g].size(); ++i) {
      const auto& p = group.params()[i];
      auto& state = optimizer.state();
      state.erase(p.unsafeGetTensorImpl());
      const auto it = saved_state.find(groups[g][i]);
      if (it == saved_state.end() && saved_steps.count(groups[g][i]) == 0) continue;
      std::map<std::string, torch::Tensor> fields;
      if (it != saved_state.end()) {
        for (const auto& [f, t] : it->second) fields[f] = t.to(p.options());
      }
      state[p.unsafeGetTensorImpl()] = make_state(kind, saved_steps[groups[g][i]], fields);
    }
  }
  if (user_state != nullptr) *user_state = user;
  for (auto& [gen, saved] : rng_restores) {
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(saved);
  }
  return step;
}

}  // namespace increlora
