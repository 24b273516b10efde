#pragma once
/// \file
/// What every program of the toolkit writes and reads around training: the JSON-lines log, JSON files written
/// whole or not at all, the device flag, the default model folder, and the model folder flags.

#include <nlohmann/json.hpp>

#include <torch/types.h>

#include <chrono>
#include <fstream>
#include <string>

namespace increlora::apps {

/// One JSON object per line, flushed per line (a killed run leaves whole lines). `append` continues a log.
class JsonLog {
 public:
  /// An empty `path` writes nothing (the ranks of a data-parallel run other than rank 0).
  JsonLog(const std::string& path, bool append);
  void write(const nlohmann::json& entry);

 private:
  std::string path_;
  std::ofstream out_;
};

/// Writes `value` (pretty-printed) to `path` through a temporary file and a rename: readers see the old file
/// or the new one, never a part.
void write_json(const std::string& path, const nlohmann::json& value);
/// Writes `text` to `path` the same way.
void write_text_file(const std::string& path, const std::string& text);
/// Reads a JSON file; throws naming the file when it is missing or not JSON.
nlohmann::json read_json(const std::string& path);

/// "cpu", "cuda", "cuda:N" or "auto" (CUDA when available); throws saying what to pass.
torch::Device parse_device(const std::string& text);
/// $INCRELORA_CACHE (default ~/.cache/increlora)/models/all-MiniLM-L6-v2, which scripts/setup.sh prepares.
std::string default_model_dir();
/// The model folder from the seed's --model_name_or_path and our --model_dir (`model_dir_given`: whether the
/// command line gave --model_dir): a local directory, or an error saying how to get one (hub ids are not
/// downloaded here).
std::string resolve_model_dir(const std::string& model_name_or_path, const std::string& model_dir,
                              bool model_dir_given);
/// Whether stderr is a terminal (progress bars) or a file (plain log lines).
bool stderr_is_terminal();

inline double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace increlora::apps
