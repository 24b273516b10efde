#include <increlora/apps/output.hpp>

#include <torch/cuda.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <optional>
#include <sstream>
#include <stdexcept>

#include <unistd.h>

namespace increlora::apps {

namespace fs = std::filesystem;

JsonLog::JsonLog(const std::string& path, bool append) : path_(path) {
  if (path.empty()) return;
  out_.open(path, append ? std::ios::app : std::ios::trunc);
  if (!out_) throw std::runtime_error("cannot write " + path + "; check the output folder");
}

void JsonLog::write(const nlohmann::json& entry) {
  if (path_.empty()) return;
  out_ << entry.dump() << '\n' << std::flush;
  if (!out_) throw std::runtime_error("cannot write " + path_ + " (disk full?)");
}

void write_json(const std::string& path, const nlohmann::json& value) { write_text_file(path, value.dump(2) + "\n"); }

void write_text_file(const std::string& path, const std::string& text) {
  const auto tmp = path + ".tmp-" + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw std::runtime_error("cannot write " + path + "; check the output folder");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw std::runtime_error("cannot write " + path + "; check the output folder");
  }
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::invalid_argument("cannot read " + path);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::invalid_argument(path + " is not valid JSON (" + e.what() + ")");
  }
}

torch::Device parse_device(const std::string& text) {
  if (text == "auto") return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  std::optional<torch::Device> device;
  try {
    device = torch::Device(text);
  } catch (const std::exception&) {
    throw std::invalid_argument("--device: expected cpu, cuda, cuda:N or auto, got '" + text + "'");
  }
  if (device->is_cuda() && !torch::cuda::is_available()) {
    throw std::invalid_argument("--device " + text + ": no CUDA device is available; use --device cpu");
  }
  if (device->is_cuda() && device->has_index() &&
      device->index() >= static_cast<int64_t>(torch::cuda::device_count())) {
    throw std::invalid_argument("--device " + text + ": this machine has " +
                                std::to_string(torch::cuda::device_count()) + " CUDA device(s)");
  }
  if (!device->is_cpu() && !device->is_cuda()) {
    throw std::invalid_argument("--device " + text + ": only cpu and cuda are supported");
  }
  return *device;
}

std::string default_model_dir() {
  const char* home = std::getenv("HOME");
  const char* cache = std::getenv("INCRELORA_CACHE");
  const std::string root = cache ? cache : std::string(home ? home : ".") + "/.cache/increlora";
  return root + "/models/all-MiniLM-L6-v2";
}

std::string resolve_model_dir(const std::string& model_name_or_path, const std::string& model_dir,
                              bool model_dir_given) {
  if (model_name_or_path.empty()) return model_dir;
  if (!fs::is_directory(model_name_or_path)) {
    throw std::invalid_argument("--model_name_or_path " + model_name_or_path + ": not a local directory. This "
                                "program reads a Hugging Face checkpoint directory (config.json, model.safetensors "
                                "and the tokenizer files): download the model (e.g. huggingface-cli download " +
                                model_name_or_path + " --local-dir DIR) and pass DIR");
  }
  if (model_dir_given && fs::path(model_dir) != fs::path(model_name_or_path)) {
    throw std::invalid_argument("--model_name_or_path and --model_dir name different folders; give one of them");
  }
  return model_name_or_path;
}

bool stderr_is_terminal() { return ::isatty(::fileno(stderr)) == 1; }

}  // namespace increlora::apps
