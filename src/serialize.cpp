#include "increlora/serialize.hpp"

#include "increlora/errors.hpp"
#include "increlora/modules.hpp"
#include "increlora/safetensors.hpp"
#include "increlora/svd_linear.hpp"
#include "io.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <thread>
#include <cmath>
#include <optional>
#include <tuple>
#include <set>
#include <type_traits>

#include <unistd.h>

namespace increlora {
namespace {

using ordered_json = nlohmann::ordered_json;

constexpr const char* kAdapterFormat = "increlora-adapter";

using detail::join_path;

std::string shape_string(c10::IntArrayRef shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

// The slot layout [active][reserve][unused] that SVDLinearImpl::sync_rank_state() accepts, checked on a
// tensor read from a file so that a corrupted adapter is refused before the model is touched.
std::pair<int64_t, int64_t> read_slot_layout(const torch::Tensor& state, const std::string& what) {
  const auto s = state.to(torch::kLong).contiguous();
  const auto* v = s.data_ptr<int64_t>();
  int64_t active = 0, reserve = 0;
  for (int64_t i = 0; i < s.numel(); ++i) {
    const bool ok = (v[i] == static_cast<int64_t>(SlotState::kActive) && reserve == 0 && i == active) ||
                    (v[i] == static_cast<int64_t>(SlotState::kReserve) && i == active + reserve) ||
                    v[i] == static_cast<int64_t>(SlotState::kUnused);
    INCRELORA_CHECK(ok, what, " holds slot state ", v[i], " at slot ", i, ", which is not the layout active slots, "
                    "then reserve slots, then unused ones; the adapter file is corrupted.");
    if (v[i] == static_cast<int64_t>(SlotState::kActive)) ++active;
    if (v[i] == static_cast<int64_t>(SlotState::kReserve)) ++reserve;
  }
  return {active, reserve};
}

const ordered_json& json_value(const ordered_json& object, const std::string& key, const std::string& what) {
  INCRELORA_CHECK(object.is_object() && object.contains(key), what, " has no \"", key,
                  "\"; the file is corrupted or was not written by save_adapter.");
  return object.at(key);
}

// A field of the type T, checked before nlohmann converts it: it would turn 16.9 into 16, true into 1.0 and
// 2^64-1 into -1 without a word.
template <typename T>
T json_field(const ordered_json& object, const std::string& key, const std::string& what) {
  const auto& v = json_value(object, key, what);
  if constexpr (std::is_same_v<T, bool>) {
    INCRELORA_CHECK(v.is_boolean(), what, ": \"", key, "\" must be true or false, got ", v.dump(),
                    "; the file is corrupted.");
  } else if constexpr (std::is_integral_v<T>) {
    const bool fits = v.is_number_integer() &&
                      !(v.is_number_unsigned() && v.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX));
    INCRELORA_CHECK(fits, what, ": \"", key, "\" must be an integer, got ", v.dump(), "; the file is corrupted.");
  } else if constexpr (std::is_floating_point_v<T>) {
    INCRELORA_CHECK(v.is_number(), what, ": \"", key, "\" must be a number, got ", v.dump(),
                    "; the file is corrupted.");
  } else {
    static_assert(std::is_same_v<T, std::string>);
    INCRELORA_CHECK(v.is_string(), what, ": \"", key, "\" must be a string, got ", v.dump(),
                    "; the file is corrupted.");
  }
  return v.get<T>();
}

ordered_json read_json(const std::string& path, const std::string& what) {
  const auto text = detail::read_text_file(path, what);
  try {
    return ordered_json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    INCRELORA_CHECK(false, what, " '", path, "' is not valid JSON (", e.what(), "); the file is corrupted.");
  }
  return {};
}

// ---- the adapter folder's commit ------------------------------------------------------------------------------
// save_adapter keeps the folder's other files (a trained head, a rank report) and replaces its two own files,
// which cannot be renamed in one step. So the new version is first written whole into the staging folder
// "<dir>/adapter.tmp-<pid>-<tag>" (both files flushed, each carrying the save's id), then committed by two
// renames, the tensors first. Between them the folder holds the new tensors beside the old config, whose ids
// differ; the config that completes them is still in the staging folder, and load_adapter reads it from there
// (and, when its writer died, finishes the commit). Before the first rename the previous version is untouched;
// after the second, the staging folder is empty. A reader thus always gets one save's files, and a killed save
// leaves at most that one stray folder, which the next load or save removes.

constexpr const char* kStagingBase = "adapter";
constexpr const char* kSaveIdKey = "save_id";            // adapter_config.json
constexpr const char* kSaveIdMetadata = "increlora_save_id";  // adapter.safetensors' metadata

std::string config_save_id(const ordered_json& config, const std::string& what) {
  if (!config.is_object() || !config.contains(kSaveIdKey)) return "";
  return json_field<std::string>(config, kSaveIdKey, what);
}

std::string tensors_save_id(const SafetensorsFile& file) {
  const auto it = file.metadata().find(kSaveIdMetadata);
  return it == file.metadata().end() ? std::string() : it->second;
}

// Ids are compared only when both files carry one: files of older saves, or rewritten by hand, have none.
bool same_save(const std::string& a, const std::string& b) { return a.empty() || b.empty() || a == b; }

void remove_dead_adapter_strays(const std::string& dir) {
  detail::remove_dead_strays(dir, kStagingBase);
  // Left by the saves before the staging folder, which wrote each file beside its final name.
  detail::remove_dead_strays(dir, kAdapterTensorsFile);
  detail::remove_dead_strays(dir, kAdapterConfigFile);
}

struct AdapterFiles {
  ordered_json config;
  std::shared_ptr<const SafetensorsFile> tensors;
};

// The config and tensors of one save: see "the adapter folder's commit" above.
AdapterFiles read_adapter_files(const std::string& dir) {
  const auto config_path = join_path(dir, kAdapterConfigFile);
  const std::string what = fmt::format("load_adapter: the adapter config '{}'", config_path);
  for (int attempt = 0;; ++attempt) {
    INCRELORA_CHECK(detail::path_exists(config_path), "load_adapter: '", dir, "' has no ", kAdapterConfigFile,
                    "; pass a folder written by save_adapter.");
    AdapterFiles files{read_json(config_path, "load_adapter: the adapter config"), nullptr};
    files.tensors = std::make_shared<const SafetensorsFile>(join_path(dir, kAdapterTensorsFile));
    const auto tensors_id = tensors_save_id(*files.tensors);
    if (same_save(config_save_id(files.config, what), tensors_id)) {
      remove_dead_adapter_strays(dir);
      return files;
    }
    // The tensors are newer than the config: a save between its two renames.
    for (const auto& stray : detail::find_strays(dir, kStagingBase)) {
      const auto pending_path = join_path(stray.path, kAdapterConfigFile);
      if (stray.old || !detail::path_exists(pending_path)) continue;
      ordered_json pending;
      try {
        pending = read_json(pending_path, "load_adapter: the pending adapter config");
      } catch (const c10::Error&) {
        continue;  // renamed away meanwhile
      }
      if (config_save_id(pending, what) != tensors_id) continue;
      if (detail::process_alive(stray.pid)) {
        files.config = std::move(pending);  // its writer renames it in a moment; read it where it is
        return files;
      }
      if (::rename(pending_path.c_str(), config_path.c_str()) == 0) detail::sync_directory(dir);
      break;
    }
    // Finished the dead writer's commit, or a live one finished it meanwhile: read again.
    INCRELORA_CHECK(attempt < 50, "load_adapter: '", dir, "' holds ", kAdapterTensorsFile, " of the save ",
                    tensors_id, " but ", kAdapterConfigFile, " of the save ", config_save_id(files.config, what),
                    ", and no save in progress holds the config that belongs to the tensors: the folder was "
                    "written by hand or corrupted; save the adapter again.");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

void write_adapter(const torch::nn::Module& model, const std::string& dir, const std::string& bias,
                   const std::string& save_id) {
  const auto layers = named_svd_linears(model, /*adapters_only=*/true);
  INCRELORA_CHECK(!layers.empty(), "save_adapter: the model has no SVDLinear layer with an adapter (r > 0), so "
                  "there is nothing to save.");
  const auto state = lora_state_dict(model, bias);  // also validates `bias`
  detail::make_directories(dir, "save_adapter");

  ordered_json config = ordered_json::object();
  config["format"] = kAdapterFormat;
  config["format_version"] = kAdapterFormatVersion;
  config[kSaveIdKey] = save_id;
  config["bias"] = bias;
  ordered_json pattern = ordered_json::object();
  ordered_json modules = ordered_json::object();
  int64_t total = 0;
  for (const auto& [name, m] : layers) {
    pattern[name] = m->rank();
    total += m->rank();
    const auto& o = m->options();
    modules[name] = {{"in_features", o.in_features()}, {"out_features", o.out_features()},
                     {"bias", o.bias()},               {"r", o.r()},
                     {"capacity", m->capacity()},      {"rank", m->rank()},
                     {"reserve", m->reserve_rank()},   {"lora_alpha", o.lora_alpha()},
                     {"scaling", m->scale()},          {"lora_dropout", o.lora_dropout()}};
  }
  config["total_rank"] = total;
  config["rank_pattern"] = std::move(pattern);
  config["modules"] = std::move(modules);

  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& item : state) tensors.emplace_back(item.key(), item.value());

  remove_dead_adapter_strays(dir);
  const auto staging = join_path(dir, std::string(kStagingBase) + ".tmp-" + save_id);
  detail::make_directories(staging, "save_adapter");
  bool tensors_committed = false;
  try {
    save_safetensors(join_path(staging, kAdapterTensorsFile), tensors,
                     {{"format", "pt"}, {"increlora_format", kAdapterFormat},
                      {"increlora_format_version", std::to_string(kAdapterFormatVersion)},
                      {kSaveIdMetadata, save_id}});
    detail::write_file_atomically(join_path(staging, kAdapterConfigFile), config.dump(2) + "\n");
    detail::sync_directory(staging);
    for (const char* file : {kAdapterTensorsFile, kAdapterConfigFile}) {
      const auto from = join_path(staging, file), to = join_path(dir, file);
      INCRELORA_CHECK(::rename(from.c_str(), to.c_str()) == 0, "save_adapter: could not rename '", from, "' to '",
                      to, "': ", detail::errno_text(), "; check that the folder is writable.");
      tensors_committed = true;
    }
  } catch (...) {
    // Once the tensors are in place, the staged config is what completes them: it stays for load_adapter.
    if (!tensors_committed) detail::remove_tree(staging);
    throw;
  }
  detail::sync_directory(dir);
  ::rmdir(staging.c_str());
}

}  // namespace

namespace detail {

void save_adapter(const torch::nn::Module& model, const std::string& dir, const std::string& bias,
                  const std::string& save_id) {
  write_adapter(model, dir, bias, save_id);
}

PreparedAdapter prepare_adapter_load(torch::nn::Module& model, const std::string& dir) {
  const auto files = read_adapter_files(dir);
  const auto& config = files.config;
  const auto& file = *files.tensors;
  const auto config_path = join_path(dir, kAdapterConfigFile);
  const std::string what = fmt::format("load_adapter: the adapter config '{}'", config_path);
  INCRELORA_CHECK(config.is_object() && config.contains("format") && config.at("format").is_string() &&
                      config.at("format").get<std::string>() == kAdapterFormat, what,
                  " is not an increlora adapter config (its \"format\" is ",
                  config.is_object() && config.contains("format") ? config.at("format").dump() : std::string("missing"),
                  ", not \"", kAdapterFormat,
                  "\"); for a PEFT adapter use PEFT, for increlora pass a folder written by save_adapter.");
  const auto version = json_field<int64_t>(config, "format_version", what);
  INCRELORA_CHECK(version >= 1 && version <= kAdapterFormatVersion, what, " has format_version ", version,
                  " but this increlora reads versions 1 to ", kAdapterFormatVersion, "; update increlora.");
  const auto bias = json_field<std::string>(config, "bias", what);
  // Checked here, where the message can name the file (lora_state_dict's own check cannot).
  INCRELORA_CHECK(bias == "none" || bias == "all" || bias == "lora_only", what, ": \"bias\" must be \"none\", "
                  "\"all\" or \"lora_only\", got \"", bias, "\"; the file is corrupted.");
  const auto& saved = config.contains("modules") ? config.at("modules") : ordered_json();
  INCRELORA_CHECK(saved.is_object(), what, " has no \"modules\" object; the file is corrupted.");

  // Every field is read (and its type checked) before the model is compared with it.
  std::vector<std::string> saved_names;
  std::map<std::string, int64_t> saved_ranks;
  int64_t saved_total = 0;
  for (const auto& item : saved.items()) {
    const auto& name = item.key();
    saved_names.push_back(name);
    const std::string layer_what = fmt::format("{}, layer '{}'", what, name);
    INCRELORA_CHECK(item.value().is_object(), layer_what, ", is ", item.value().dump(), ", not an object; the file is "
                    "corrupted.");
    for (const char* key : {"in_features", "out_features", "r", "capacity", "rank", "reserve"}) {
      INCRELORA_CHECK(json_field<int64_t>(item.value(), key, layer_what) >= 0, layer_what, ": \"", key,
                      "\" is negative; the file is corrupted.");
    }
    (void)json_field<bool>(item.value(), "bias", layer_what);
    for (const char* key : {"lora_alpha", "scaling", "lora_dropout"}) (void)json_field<double>(item.value(), key, layer_what);
    saved_ranks[name] = json_field<int64_t>(item.value(), "rank", layer_what);
    saved_total += saved_ranks[name];
  }
  // The model must have the same adapted layers with the same shapes: check them all before copying.
  const auto saved_list = fmt::format("{}", fmt::join(saved_names, ", "));
  const auto layers = named_svd_linears(model, /*adapters_only=*/true);
  std::set<std::string> in_model;
  for (const auto& [name, m] : layers) {
    in_model.insert(name);
    INCRELORA_CHECK(saved.contains(name), "load_adapter: the model's layer '", name, "' has an adapter but the "
                    "adapter in '", dir, "' has none for it (it has: ", saved_list, "); build the model with the "
                    "adapted layers the adapter was saved from.");
    const auto& s = saved.at(name);
    const std::string layer_what = fmt::format("{}, layer '{}'", what, name);
    const auto in = json_field<int64_t>(s, "in_features", layer_what);
    const auto out = json_field<int64_t>(s, "out_features", layer_what);
    const auto capacity = json_field<int64_t>(s, "capacity", layer_what);
    const auto& o = m->options();
    INCRELORA_CHECK(in == o.in_features() && out == o.out_features() && capacity == m->capacity(),
                    "load_adapter: layer '", name, "' does not fit the saved adapter: lora_A is ",
                    shape_string({capacity, in}), " and lora_B ", shape_string({out, capacity}), " in the adapter but ",
                    shape_string({m->capacity(), o.in_features()}), " and ", shape_string({o.out_features(), m->capacity()}),
                    " in the model; build it as SVDLinearOptions(", in, ", ", out, ").capacity(", capacity, ").");
    const auto r = json_field<int64_t>(s, "r", layer_what);
    INCRELORA_CHECK(r == o.r(), "load_adapter: layer '", name, "' was saved from a layer built with r(", r,
                    ") but the model's is built with r(", o.r(), "); build it with r(", r,
                    ") (load_adapter restores the grown rank).");
    const auto alpha = json_field<double>(s, "lora_alpha", layer_what);
    INCRELORA_CHECK(alpha == o.lora_alpha(), "load_adapter: layer '", name, "' was saved with lora_alpha ", alpha,
                    " but the model's has lora_alpha ", o.lora_alpha(), "; build it with lora_alpha(", alpha,
                    ") so that the scaling matches.");
    INCRELORA_CHECK(!m->is_merged(), "load_adapter: layer '", name, "' is merged; call unmerge() first.");
  }
  for (const auto& name : saved_names) {
    INCRELORA_CHECK(in_model.count(name) == 1, "load_adapter: the adapter in '", dir, "' has a layer '", name,
                    "' that the model lacks (or builds with r = 0); build the model with the adapted layers the "
                    "adapter was saved from.");
  }

  const auto wanted = lora_state_dict(model, bias);
  std::set<std::string> expected;
  for (const auto& item : wanted) {
    expected.insert(item.key());
    INCRELORA_CHECK(file.contains(item.key()), "load_adapter: '", file.path(), "' has no tensor '", item.key(),
                    "' although its config lists the layer; the adapter is incomplete or corrupted.");
    INCRELORA_CHECK(!item.value().is_floating_point() || c10::isFloatingType(file.dtype(item.key())),
                    "load_adapter: '", file.path(), "' stores '", item.key(), "' as ", file.dtype(item.key()),
                    ", not as floating point numbers; the adapter is corrupted.");
  }
  for (const auto& name : file.names()) {
    INCRELORA_CHECK(expected.count(name) == 1, "load_adapter: '", file.path(), "' holds a tensor '", name,
                    "' that the model has no place for; the adapter does not belong to this model.");
  }
  for (const auto& [name, m] : layers) {
    const auto prefix = name.empty() ? std::string() : name + ".";
    const auto [active, reserve] =
        read_slot_layout(file.tensor(prefix + "lora_slot_state"), fmt::format("'{}' tensor '{}lora_slot_state'",
                                                                              file.path(), prefix));
    const auto& s = saved.at(name);
    const std::string layer_what = fmt::format("{}, layer '{}'", what, name);
    INCRELORA_CHECK(active == json_field<int64_t>(s, "rank", layer_what) &&
                        reserve == json_field<int64_t>(s, "reserve", layer_what),
                    "load_adapter: layer '", name, "' has rank ", active, " and reserve ", reserve, " in '",
                    file.path(), "' but its config says rank ", json_field<int64_t>(s, "rank", layer_what),
                    " and reserve ", json_field<int64_t>(s, "reserve", layer_what),
                    "; the files do not belong together or are corrupted.");
  }

  // The config's summaries last, so that a rank edited in one place is reported against the tensors first.
  if (config.contains("total_rank")) {
    INCRELORA_CHECK(json_field<int64_t>(config, "total_rank", what) == saved_total, what, " has \"total_rank\" ",
                    config.at("total_rank").dump(), " but its modules' ranks add up to ", saved_total,
                    "; the file is corrupted.");
  }
  if (config.contains("rank_pattern")) {
    const auto& pattern = config.at("rank_pattern");
    INCRELORA_CHECK(pattern.is_object() && pattern.size() == saved_ranks.size(), what, ": \"rank_pattern\" must be "
                    "an object with one entry per module, got ", pattern.dump(), "; the file is corrupted.");
    for (const auto& [name, rank] : saved_ranks) {
      INCRELORA_CHECK(pattern.contains(name) && json_field<int64_t>(pattern, name, what + ", \"rank_pattern\"") == rank,
                      what, ": \"rank_pattern\" does not give module '", name, "' its rank ", rank,
                      "; the file is corrupted.");
    }
  }

  PreparedAdapter prepared;
  prepared.save_id = config_save_id(config, what);
  prepared.ranks = saved_ranks;
  auto tensors = files.tensors;
  prepared.apply = [&model, tensors, expected, layers]() {
    // Shapes were checked through the config; load_state_into checks every tensor again before it copies any.
    load_state_into(model, *tensors,
                    [&expected](const std::string& n) { return expected.count(n) ? n : std::string(); },
                    /*strict=*/false);
    std::map<std::string, int64_t> pattern;
    for (const auto& [name, m] : layers) {
      m->sync_rank_state();
      pattern[name] = m->rank();
    }
    return pattern;
  };
  return prepared;
}

}  // namespace detail

void save_adapter(const torch::nn::Module& model, const std::string& dir, const std::string& bias) {
  write_adapter(model, dir, bias, detail::unique_tag());
}

std::map<std::string, int64_t> load_adapter(torch::nn::Module& model, const std::string& dir) {
  return detail::prepare_adapter_load(model, dir).apply();
}

void merge_and_export(const torch::nn::Module& model, const std::string& path,
                      const std::map<std::string, std::string>& metadata) {
  std::map<std::string, std::shared_ptr<SVDLinearImpl>> adapted;
  for (const auto& [name, m] : named_svd_linears(model, /*adapters_only=*/true)) {
    adapted[name.empty() ? std::string("weight") : name + ".weight"] = m;
  }
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  torch::NoGradGuard no_grad;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) {
    if (!item.value().defined() || is_adapter_tensor(item.key())) continue;
    const auto it = adapted.find(item.key());
    if (it != adapted.end() && !it->second->is_merged()) {
      // The same arithmetic as SVDLinear::merge(), so the file equals a merged model's weight.
      tensors.emplace_back(item.key(), item.value() + it->second->delta_weight());
    } else {
      tensors.emplace_back(item.key(), item.value());
    }
  }
  for (const auto& item : model.named_buffers(/*recurse=*/true)) {
    if (item.value().defined() && !is_adapter_tensor(item.key())) tensors.emplace_back(item.key(), item.value());
  }
  auto meta = metadata;
  meta.emplace("format", "pt");
  save_safetensors(path, tensors, meta);
}

void export_peft(const torch::nn::Module& model, const std::string& dir, const std::string& base_model_prefix) {
  export_peft(model, dir, PeftExportOptions().base_model_prefix(base_model_prefix));
}

void export_peft(const torch::nn::Module& model, const std::string& dir, const PeftExportOptions& options) {
  const auto layers = named_svd_linears(model, /*adapters_only=*/true);
  INCRELORA_CHECK(!layers.empty(), "export_peft: the model has no SVDLinear layer with an adapter (r > 0), so "
                  "there is nothing to export.");
  const auto& base_model_prefix = options.base_model_prefix();
  const auto qualified = [&base_model_prefix](const std::string& name) {
    if (base_model_prefix.empty()) return name;
    return name.empty() ? base_model_prefix : base_model_prefix + "." + name;
  };
  int64_t max_rank = 0;
  for (const auto& [name, m] : layers) max_rank = std::max(max_rank, m->rank());
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  std::vector<std::pair<std::string, int64_t>> ranks;
  torch::NoGradGuard no_grad;
  for (const auto& [name, m] : layers) {
    const auto module = qualified(name);
    INCRELORA_CHECK(!module.empty(), "export_peft: the model itself is the SVDLinear; pass base_model_prefix "
                    "with the module name it has in the Python model.");
    const int64_t r = m->rank();
    INCRELORA_CHECK(r >= 1, "export_peft: layer '", name, "' has rank 0, which PEFT cannot represent.");
    // A' = (λ[:r] s)[:, None] * Q[:r], B' = P[:, :r]: PEFT then computes B' A' x · (alpha / r = 1) = ΔW x.
    const auto lambda = m->lora_E.narrow(0, 0, r) * m->scale();
    auto A = (lambda.unsqueeze(1) * m->lora_A.narrow(0, 0, r)).contiguous();
    auto B = m->lora_B.narrow(1, 0, r).contiguous();
    if (options.uniform_rank() && r < max_rank) {
      // Zero rows of A' and columns of B' add nothing: B' A' is unchanged at the common rank.
      A = torch::cat({A, torch::zeros({max_rank - r, A.size(1)}, A.options())}, 0);
      B = torch::cat({B, torch::zeros({B.size(0), max_rank - r}, B.options())}, 1);
    }
    tensors.emplace_back("base_model.model." + module + ".lora_A.weight", A);
    tensors.emplace_back("base_model.model." + module + ".lora_B.weight", B);
    ranks.emplace_back(module, r);
  }
  // modules_to_save: every tensor under the named modules, in full, under PEFT's names.
  std::vector<std::string> saved_modules;
  for (const auto& module : options.modules_to_save()) {
    INCRELORA_CHECK(!module.empty(), "export_peft: an entry of modules_to_save is empty; name a module of the model.");
    size_t found = 0;
    const auto add = [&](const std::string& key, const torch::Tensor& value) {
      if (!value.defined() || is_adapter_tensor(key)) return;
      if (key.rfind(module + ".", 0) != 0) return;
      tensors.emplace_back("base_model.model." + qualified(key), value.detach().contiguous());
      ++found;
    };
    for (const auto& item : model.named_parameters(/*recurse=*/true)) add(item.key(), item.value());
    for (const auto& item : model.named_buffers(/*recurse=*/true)) add(item.key(), item.value());
    INCRELORA_CHECK(found > 0, "export_peft: modules_to_save names '", module, "', but the model has no tensor "
                    "under it; name a module by its qualified name (e.g. \"classifier\").");
    // The qualified name: PEFT matches these as plain string suffixes of module names, so a last component
    // alone ("dense", "out") could also catch other modules.
    saved_modules.push_back(qualified(module));
  }
  // PEFT takes the first pattern key that matches a module name as a suffix, so the most specific names
  // (most dots, then longest) go first: "block.fc1" must not be captured by a top-level "fc1".
  std::stable_sort(ranks.begin(), ranks.end(), [](const auto& a, const auto& b) {
    const auto dots = [](const std::string& s) { return std::count(s.begin(), s.end(), '.'); };
    return dots(a.first) != dots(b.first) ? dots(a.first) > dots(b.first) : a.first.size() > b.first.size();
  });
  ordered_json pattern = ordered_json::object();
  if (!options.uniform_rank()) {
    for (const auto& [module, r] : ranks) pattern[module] = r;
  }
  std::vector<std::string> targets;
  for (const auto& [name, m] : layers) targets.push_back(qualified(name));
  double dropout = layers.front().second->options().lora_dropout();
  for (const auto& [name, m] : layers) {
    if (m->options().lora_dropout() != dropout) dropout = 0.0;  // PEFT has one value; it only matters in training
  }

  ordered_json config = ordered_json::object();
  config["peft_type"] = "LORA";
  config["task_type"] = options.task_type().empty() ? ordered_json(nullptr) : ordered_json(options.task_type());
  config["base_model_name_or_path"] = options.base_model_name_or_path().empty()
                                          ? ordered_json(nullptr)
                                          : ordered_json(options.base_model_name_or_path());
  config["inference_mode"] = true;
  config["r"] = max_rank;
  config["lora_alpha"] = max_rank;
  config["lora_dropout"] = dropout;
  config["target_modules"] = targets;
  config["bias"] = "none";
  config["fan_in_fan_out"] = false;
  config["use_rslora"] = false;
  config["use_dora"] = false;
  config["init_lora_weights"] = true;
  config["modules_to_save"] = saved_modules.empty() ? ordered_json(nullptr) : ordered_json(saved_modules);
  config["rank_pattern"] = pattern;
  config["alpha_pattern"] = pattern;

  detail::make_directories(dir, "export_peft");
  save_safetensors(join_path(dir, kPeftTensorsFile), tensors, {{"format", "pt"}});
  detail::write_file_atomically(join_path(dir, kPeftConfigFile), config.dump(2) + "\n");
}

namespace {

// PEFT's per-layer patterns: the first key that is the module's name or a dotted suffix of it.
std::optional<double> pattern_value(const ordered_json& patterns, const std::string& module) {
  if (!patterns.is_object()) return std::nullopt;
  for (const auto& [key, value] : patterns.items()) {
    if (!value.is_number()) continue;
    if (module == key || (module.size() > key.size() && module.compare(module.size() - key.size(), key.size(), key) == 0 &&
                          module[module.size() - key.size() - 1] == '.')) {
      return value.get<double>();
    }
  }
  return std::nullopt;
}

// ΔW = B A · scale factored as P diag(σ) Q with orthonormal P [out × r], Q [r × in] (float64): QR of B and
// of Aᵀ, then the SVD of the r × r core.
std::tuple<torch::Tensor, torch::Tensor, torch::Tensor> factor_lora(const torch::Tensor& B, const torch::Tensor& A,
                                                                     double scale) {
  const auto b = B.to(torch::kCPU, torch::kDouble), a = A.to(torch::kCPU, torch::kDouble);
  const auto [qb, rb] = at::linalg_qr(b);        // B = Qb Rb
  const auto [qa, ra] = at::linalg_qr(a.t());    // Aᵀ = Qa Ra
  const auto core = torch::mm(rb, ra.t()) * scale;  // B A s = Qb (Rb Raᵀ s) Qaᵀ
  const auto [u, sigma, vh] = at::linalg_svd(core, /*full_matrices=*/false);
  return {torch::mm(qb, u), sigma, torch::mm(vh, qa.t())};
}

}  // namespace

PeftImport import_peft(torch::nn::Module& model, const std::string& dir, const std::string& base_model_prefix) {
  const auto config_path = join_path(dir, kPeftConfigFile);
  INCRELORA_CHECK(detail::path_exists(config_path), "import_peft: '", dir, "' has no ", kPeftConfigFile,
                  "; pass a folder written by a PEFT adapter's save_pretrained.");
  const auto config = read_json(config_path, "import_peft: the PEFT config");
  const std::string what = "import_peft: " + config_path;
  const auto type = json_field<std::string>(config, "peft_type", what);
  INCRELORA_CHECK(type == "LORA" || type == "ADALORA", what, " has peft_type \"", type, "\"; only LORA and ADALORA "
                  "adapters can start an IncreLoRA adapter.");
  const auto flag = [&](const char* key) { return config.contains(key) && config.at(key).is_boolean() && config.at(key).get<bool>(); };
  INCRELORA_CHECK(!flag("use_dora"), what, ": a DoRA adapter (use_dora) has a magnitude vector IncreLoRA has no "
                  "place for; merge it into the base model instead.");
  INCRELORA_CHECK(!flag("fan_in_fan_out"), what, ": fan_in_fan_out adapters (GPT-2's Conv1D) are not supported.");
  const double lora_alpha = json_field<double>(config, "lora_alpha", what);
  const bool rslora = flag("use_rslora");
  const ordered_json alpha_pattern = config.contains("alpha_pattern") ? config.at("alpha_pattern") : ordered_json();
  double ranknum = 0;
  if (type == "ADALORA") ranknum = static_cast<double>(json_field<int64_t>(config, "init_r", what));

  const auto tensors_path = join_path(dir, kPeftTensorsFile);
  const SafetensorsFile file(tensors_path);
  const std::string root = "base_model.model." + (base_model_prefix.empty() ? "" : base_model_prefix + ".");
  std::map<std::string, std::map<std::string, std::string>> adapter_keys;  // module → {A, B, E} → file key
  std::vector<std::pair<std::string, std::string>> full;                  // model name → file key
  for (const auto& key : file.names()) {
    INCRELORA_CHECK(key.rfind(root, 0) == 0, what, ": tensor '", key, "' is not under '", root, "'; pass the "
                    "base_model_prefix the adapter's names carry (the C++ model is the part of the Python model "
                    "under it).");
    const auto name = key.substr(root.size());
    bool adapter = false;
    for (const char* part : {"lora_A", "lora_B", "lora_E"}) {
      for (const std::string& suffix : {std::string(".") + part + ".weight", std::string(".") + part}) {
        if (!adapter && name.size() > suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
          adapter_keys[name.substr(0, name.size() - suffix.size())][part] = key;
          adapter = true;
        }
      }
    }
    if (!adapter) full.emplace_back(name, key);
  }

  // Check everything, then copy.
  struct Planned {
    std::shared_ptr<SVDLinearImpl> layer;
    torch::Tensor P, lambda, Q;
  };
  std::vector<std::pair<std::string, Planned>> planned;
  PeftImport result;
  result.peft_type = type;
  for (const auto& [name, m] : named_svd_linears(model, /*adapters_only=*/true)) {
    const auto it = adapter_keys.find(name);
    INCRELORA_CHECK(it != adapter_keys.end(), what, " has no adapter for the model's layer '", name, "' (",
                    tensors_path, " holds ", adapter_keys.size(), " adapted layers); adapt the same layers as the "
                    "PEFT adapter did.");
    const auto& parts = it->second;
    const bool has_e = parts.count("lora_E") > 0;
    INCRELORA_CHECK(parts.count("lora_A") && parts.count("lora_B") && has_e == (type == "ADALORA"), what,
                    ": layer '", name, "' lacks ", type == "ADALORA" ? "one of lora_A, lora_B, lora_E" : "lora_A or lora_B",
                    "; the file is incomplete.");
    const auto A = file.tensor(parts.at("lora_A")).to(torch::kDouble);
    const auto B = file.tensor(parts.at("lora_B")).to(torch::kDouble);
    const int64_t r = A.dim() == 2 ? A.size(0) : -1;
    INCRELORA_CHECK(A.dim() == 2 && B.dim() == 2 && A.size(1) == m->options().in_features() &&
                        B.size(0) == m->options().out_features() && B.size(1) == r,
                    what, ": layer '", name, "' has lora_A ", shape_string(A.sizes()), " and lora_B ",
                    shape_string(B.sizes()), " but the layer is ", m->options().in_features(), " -> ",
                    m->options().out_features(), "; import it into the model it was trained on.");
    INCRELORA_CHECK(r <= m->capacity(), what, ": layer '", name, "' has rank ", r, " but its capacity is ",
                    m->capacity(), "; build the layers with capacity(", r, ") or more (plus room to grow).");
    const double target_scale = m->options().lora_alpha() / (static_cast<double>(r) + 1e-5);  // SVDLinear::scale at r
    Planned p{m, {}, {}, {}};
    if (type == "ADALORA") {
      const auto E = file.tensor(parts.at("lora_E")).to(torch::kDouble).reshape({-1});
      INCRELORA_CHECK(E.numel() == r, what, ": layer '", name, "' has lora_E of ", E.numel(), " values for rank ", r,
                      "; the file is corrupted.");
      const double scale = lora_alpha / (ranknum + 1e-5);
      p.P = B, p.Q = A, p.lambda = E * (scale / target_scale);
    } else if (r > 0) {
      const double alpha = pattern_value(alpha_pattern, name).value_or(lora_alpha);
      const double scale = rslora ? alpha / std::sqrt(static_cast<double>(r)) : alpha / static_cast<double>(r);
      auto [P, sigma, Q] = factor_lora(B, A, scale);
      p.P = P, p.Q = Q, p.lambda = sigma / target_scale;
    } else {
      p.P = B, p.Q = A, p.lambda = torch::zeros({0}, torch::kDouble);
    }
    planned.emplace_back(name, std::move(p));
    adapter_keys.erase(it);
  }
  INCRELORA_CHECK(adapter_keys.empty(), what, " adapts '", adapter_keys.empty() ? "" : adapter_keys.begin()->first,
                  "', which is not an adapted layer of the model; adapt the same layers as the PEFT adapter did.");
  std::map<std::string, torch::Tensor> model_tensors;
  for (const auto& item : model.named_parameters(/*recurse=*/true)) model_tensors[item.key()] = item.value();
  for (const auto& item : model.named_buffers(/*recurse=*/true)) model_tensors[item.key()] = item.value();
  for (const auto& [name, key] : full) {
    const auto it = model_tensors.find(name);
    INCRELORA_CHECK(it != model_tensors.end(), what, ": the adapter saves '", name, "' in full (modules_to_save), "
                    "but the model has no such tensor; import it into the model it was trained on.");
    const auto shape = file.shape(key);
    INCRELORA_CHECK(it->second.sizes().vec() == shape, what, ": '", name, "' is ", shape_string(shape),
                    " in the adapter but ", shape_string(it->second.sizes()), " in the model (a head for another "
                    "number of labels?).");
  }

  torch::NoGradGuard no_grad;
  for (auto& [name, p] : planned) {
    const auto& bank = p.layer->lora_A;
    p.layer->assign(p.P.to(bank.options()), p.lambda.to(bank.options()), p.Q.to(bank.options()));
    result.ranks[name] = p.layer->rank();
  }
  for (const auto& [name, key] : full) {
    auto& target = model_tensors.at(name);
    target.copy_(file.tensor(key).to(target.options()));
    result.full_tensors.push_back(name);
  }
  return result;
}

}  // namespace increlora
