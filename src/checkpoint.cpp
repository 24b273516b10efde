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

#include <mutex>
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

void set_options(OptimizerKind kind, torch::optim::OptimizerOptions& options, const ordered_json& j) {
  if (kind == OptimizerKind::kSGD) {
    auto& o = static_cast<torch::optim::SGDOptions&>(options);
    o.lr(j.at("lr").get<double>()).momentum(j.at("momentum").get<double>());
    o.dampening(j.at("dampening").get<double>()).weight_decay(j.at("weight_decay").get<double>());
    o.nesterov(j.at("nesterov").get<bool>());
    return;
  }
  const auto apply = [&j](auto& o) {
    o.lr(j.at("lr").get<double>()).eps(j.at("eps").get<double>());
    o.betas(std::make_tuple(j.at("beta1").get<double>(), j.at("beta2").get<double>()));
    o.weight_decay(j.at("weight_decay").get<double>()).amsgrad(j.at("amsgrad").get<bool>());
  };
  if (kind == OptimizerKind::kAdam) {
    apply(static_cast<torch::optim::AdamOptions&>(options));
  } else {
    apply(static_cast<torch::optim::AdamWOptions&>(options));
  }
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

  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  ordered_json j = ordered_json::object();
  j["format"] = kStateFormat;
  j["format_version"] = kCheckpointFormatVersion;
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

  // Build the whole folder under a temporary name, then swap it in: a crash leaves the previous checkpoint.
  const auto slash = dir.rfind('/');
  if (slash != std::string::npos && slash > 0) detail::make_directories(dir.substr(0, slash), caller);
  const std::string staged = dir + ".tmp-" + std::to_string(::getpid());
  detail::remove_tree(staged);
  try {
    if (with_adapter) {
      save_adapter(model, staged);
    } else {
      detail::make_directories(staged, caller);
    }
    save_safetensors(join_path(staged, kStateTensors), tensors, {{"format", "pt"}});
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
  INCRELORA_CHECK(detail::path_exists(json_path), caller, ": '", dir, "' has no ", kStateJson,
                  "; pass a folder written by save_checkpoint.");
  const std::string what = fmt::format("{}: '{}'", caller, json_path);
  ordered_json j;
  try {
    j = ordered_json::parse(detail::read_text_file(json_path, std::string(caller) + ": the trainer state"));
  } catch (const nlohmann::json::exception& e) {
    INCRELORA_CHECK(false, what, " is not valid JSON (", e.what(), "); the checkpoint is corrupted.");
  }
  const SafetensorsFile file(join_path(dir, kStateTensors));

  // Read and check everything before touching the model, the allocator or the optimizer.
  int64_t step = 0;
  bool with_adapter = true;
  std::string user = "{}";
  RankAllocatorState alloc_state;
  std::vector<std::string> saved_layers, extra, rng;
  ordered_json jopt;
  std::map<std::string, std::map<std::string, torch::Tensor>> saved_state;
  std::map<std::string, int64_t> saved_steps;
  const auto kind = kind_of(optimizer, caller);
  const auto groups = group_names(optimizer, model, caller);
  try {
    INCRELORA_CHECK(j.value("format", std::string()) == kStateFormat, what, " is not an increlora checkpoint state.");
    // nlohmann converts 16.9 to 16 without a word: a count or step must be stored as an integer.
    const auto integer = [&what](const ordered_json& object, const char* key, int64_t fallback,
                                 bool required) -> int64_t {
      if (!object.contains(key)) {
        INCRELORA_CHECK(!required, what, " lacks a field or has one of the wrong type (no \"", key,
                        "\"); the checkpoint is corrupted.");
        return fallback;
      }
      const auto& v = object.at(key);
      INCRELORA_CHECK(v.is_number_integer(), what, " lacks a field or has one of the wrong type: \"", key,
                      "\" must be an integer, got ", v.dump(), "; the checkpoint is corrupted.");
      return v.get<int64_t>();
    };
    const auto version = integer(j, "format_version", 0, true);
    INCRELORA_CHECK(version >= 1 && version <= kCheckpointFormatVersion, what, " has format_version ", version,
                    " but this increlora reads versions 1 to ", kCheckpointFormatVersion, "; update increlora.");
    step = integer(j, "step", 0, true);
    const auto& ja = j.at("allocator");
    INCRELORA_CHECK(ja.is_null() == (allocator == nullptr), caller, ": the checkpoint was saved ",
                    ja.is_null() ? "without" : "with", " a RankAllocator but one is ",
                    allocator == nullptr ? "not " : "", "given; restore it as it was saved.");
    with_adapter = j.value("adapter", true);
    if (allocator != nullptr) {
      saved_layers = ja.at("layers").get<std::vector<std::string>>();
      alloc_state.round = integer(ja, "round", 0, true);
      alloc_state.total_rank = integer(ja, "total_rank", 0, true);
      alloc_state.budget_met = ja.at("budget_met").get<bool>();
      alloc_state.armed_step = integer(ja, "armed_step", 0, true);
      alloc_state.last_update_step = integer(ja, "last_update_step", -1, false);
      // Checkpoints before these fields were saved after step `step`; nothing was pending then.
      alloc_state.last_step = integer(ja, "last_step", step, false);
      alloc_state.pending_round = ja.value("pending_round", false);
      alloc_state.non_finite_steps = integer(ja, "non_finite_steps", 0, false);
      alloc_state.sensitivity = file.tensor("allocator.sensitivity");
      alloc_state.uncertainty = file.tensor("allocator.uncertainty");
      std::vector<std::string> layers;
      for (const auto& entry : allocator->modules()) layers.push_back(entry.first);
      INCRELORA_CHECK(layers == saved_layers, caller, ": the allocator scores the layers ",
                      fmt::format("{}", fmt::join(layers, ", ")), " but the checkpoint's scored ",
                      fmt::format("{}", fmt::join(saved_layers, ", ")), "; build the allocator over the same model.");
    }
    extra = j.at("trained_parameters").get<std::vector<std::string>>();
    rng = j.at("rng").get<std::vector<std::string>>();
    jopt = j.at("optimizer");
    if (j.contains("user")) {
      INCRELORA_CHECK(j.at("user").is_object(), what, " has a \"user\" field that is not an object; the checkpoint is "
                      "corrupted.");
      user = j.at("user").dump();
    }

    const auto saved_kind = jopt.value("type", std::string());
    INCRELORA_CHECK(saved_kind == kind_name(kind), caller, ": the checkpoint holds the state of a ", saved_kind,
                    " optimizer but the optimizer given is ", kind_name(kind), "; build the same optimizer type.");
    const auto& jgroups = jopt.at("param_groups");
    INCRELORA_CHECK(jgroups.is_array() && jgroups.size() == groups.size(), caller, ": the checkpoint's optimizer has ",
                    jgroups.size(), " parameter groups but the optimizer given has ", groups.size(),
                    "; build it with the same groups.");
    for (size_t g = 0; g < groups.size(); ++g) {
      const auto saved = jgroups[g].at("params").get<std::vector<std::string>>();
      for (size_t i = 0; i < std::max(saved.size(), groups[g].size()); ++i) {
        const auto mine = i < groups[g].size() ? groups[g][i] : std::string("(nothing)");
        const auto theirs = i < saved.size() ? saved[i] : std::string("(nothing)");
        INCRELORA_CHECK(mine == theirs, caller, ": parameter ", i, " of group ", g, " is '", theirs,
                        "' in the checkpoint but '", mine, "' in the optimizer given; build the optimizer over the "
                        "same parameters in the same order.");
      }
      auto scratch = optimizer.param_groups()[g].options().clone();  // checks the saved options' fields
      set_options(kind, *scratch, jgroups[g].at("options"));
    }
    for (const auto& [name, entry] : jopt.at("state").items()) {
      saved_steps[name] = integer(entry, "step", 0, true);
      for (const auto& field : entry.at("fields").get<std::vector<std::string>>()) {
        saved_state[name][field] = file.tensor(fmt::format("optimizer.{}.{}", name, field));
      }
    }
  } catch (const nlohmann::json::exception& e) {
    INCRELORA_CHECK(false, what, " lacks a field or has one of the wrong type (", e.what(),
                    "); the checkpoint is corrupted.");
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
    extra_copies.emplace_back(*target, std::move(value));
  }
  std::vector<torch::Tensor> rng_states;
  for (const auto& name : rng) rng_states.push_back(file.tensor(name));
  // Moments of the wrong shape would only fail at the next step(), a generator state of the wrong size at
  // set_state: check both before anything is restored.
  for (size_t g = 0; g < groups.size(); ++g) {
    for (size_t i = 0; i < groups[g].size(); ++i) {
      const auto it = saved_state.find(groups[g][i]);
      if (it == saved_state.end()) continue;
      const auto& p = optimizer.param_groups()[g].params()[i];
      for (const auto& [field, t] : it->second) {
        INCRELORA_CHECK(field == "step" || t.sizes() == p.sizes(), caller, ": the optimizer state '", field,
                        "' of parameter '", groups[g][i], "' has shape ", t.sizes(), " but the parameter has ",
                        p.sizes(), "; the checkpoint belongs to another model or is corrupted.");
      }
    }
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
                            rng_states[i].numel() == current.numel(),
                        caller, ": the random generator state '", rng[i], "' has ", rng_states[i].numel(),
                        " entries but this generator's has ", current.numel(), "; the checkpoint is corrupted (or "
                        "pass restore_rng = false).");
        rng_restores.emplace_back(gen, rng_states[i]);
      }
    }
  }

  // Apply: adapter (checks itself before copying), trained parameters, allocator, optimizer, generators.
  if (with_adapter) load_adapter(model, dir);
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
    set_options(kind, group.options(), jopt.at("param_groups")[g].at("options"));
    for (size_t i = 0; i < groups[g].size(); ++i) {
      const auto& p = group.params()[i];
      auto& state = optimizer.state();
      state.erase(p.unsafeGetTensorImpl());
      const auto it = saved_state.find(groups[g][i]);
      if (it == saved_state.end() && saved_steps.count(groups[g][i]) == 0) continue;
      std::map<std::string, torch::Tensor> fields;
      if (it != saved_state.end()) {
        for (const auto& [field, t] : it->second) fields[field] = t.to(p.device());
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
