#pragma once
// Reading a Hugging Face config.json, shared by the model families' configs (bert, deberta, bart): the file, the
// parse, and fields read with the types a model needs.
#include <increlora/errors.hpp>

#include <nlohmann/json.hpp>

#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

namespace increlora::models::detail {

/// The text of the config file at `path`, or an error that says what to pass.
inline std::string read_config_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  INCRELORA_CHECK(in.good(), "cannot open the model config '", path,
                  "'; pass a Hugging Face checkpoint directory holding config.json.");
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

/// One config object. Fields are read strictly: nlohmann converts between numbers and booleans silently and
/// truncates 768.5 to 768, and a config with `true` for a width is a mistake to name, not to guess at. A missing
/// or null field leaves the default (transformers writes null for "the default").
class ConfigJson {
 public:
  /// Parses `text`; `origin` (a path, or a description) starts every message.
  ConfigJson(const std::string& text, std::string origin) : origin_(std::move(origin)) {
    try {
      json_ = nlohmann::json::parse(text);
    } catch (const nlohmann::json::exception& e) {
      INCRELORA_CHECK(false, origin_, " is not valid JSON (", e.what(), ").");
    }
    INCRELORA_CHECK(json_.is_object(), origin_, " must hold a JSON object.");
  }

  const std::string& origin() const { return origin_; }
  bool contains(const char* key) const { return json_.contains(key); }
  /// Whether `key` is there and not null.
  bool present(const char* key) const { return json_.contains(key) && !json_.at(key).is_null(); }
  const nlohmann::json& at(const char* key) const { return json_.at(key); }

  /// Refuses the field `key`, naming what it should be.
  [[noreturn]] void wrong_type(const char* key, const char* expected) const {
    C10_THROW_ERROR(Error, c10::str("increlora: ", origin_, ": the field \"", key, "\" has the wrong type (",
                                    json_.at(key).dump(), "); expected ", expected, "."));
  }

  /// Reads `key` into `into` (bool, std::string, an integer or a floating type) when it is present.
  template <typename T>
  void get(const char* key, T& into) const {
    if (!present(key)) return;
    const auto& v = json_.at(key);
    bool ok;
    if constexpr (std::is_same_v<T, bool>) {
      ok = v.is_boolean();
    } else if constexpr (std::is_same_v<T, std::string>) {
      ok = v.is_string();
    } else if constexpr (std::is_integral_v<T>) {
      ok = v.is_number_integer();
    } else {
      static_assert(std::is_floating_point_v<T>, "ConfigJson::get reads bool, std::string, integers and floats");
      ok = v.is_number();
    }
    if (!ok) {
      wrong_type(key, std::is_same_v<T, bool>          ? "true or false"
                      : std::is_same_v<T, std::string> ? "a string"
                      : std::is_integral_v<T>          ? "an integer"
                                                       : "a number");
    }
    into = v.get<T>();
  }

  /// As `get`, for a field whose absence means "not set".
  template <typename T>
  void get(const char* key, std::optional<T>& into) const {
    if (!present(key)) return;
    T value{};
    get(key, value);
    into = value;
  }

 private:
  std::string origin_;
  nlohmann::json json_;
};

/// The model_type of the config file at `path` ("" when it has none); `caller` starts the messages.
inline std::string config_model_type(const std::string& path, const char* caller) {
  const ConfigJson config(read_config_text(path), std::string(caller) + ": '" + path + "'");
  if (!config.present("model_type") || !config.at("model_type").is_string()) return "";
  return config.at("model_type").get<std::string>();
}

}  // namespace increlora::models::detail
