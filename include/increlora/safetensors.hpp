#pragma once
/// \file
/// Reading and writing the safetensors format (https://github.com/huggingface/safetensors): an 8-byte
/// little-endian header length, a JSON header naming each tensor's dtype, shape and byte range, then the raw
/// little-endian data. It holds tensors and strings only, so loading a file can never run code (unlike a
/// pickle): this is how increlora stores adapters, checkpoints and exports, and how it reads Hugging Face
/// weights.

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace increlora {

/// A safetensors file opened read-only and memory-mapped. The constructor validates the whole header: every
/// tensor's byte range must lie inside the file, match its dtype and shape, and the ranges must tile the data
/// section without overlap or gap (as the reference implementation demands). Tensors are copied out on
/// request, so the file's pages are read only for the tensors asked for.
///
/// Supported dtypes: F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL.
///
/// Example:
/// \code
///   increlora::SafetensorsFile file("model.safetensors");
///   for (const auto& name : file.names()) shapes[name] = file.tensor(name).sizes().vec();
/// \endcode
class SafetensorsFile {
 public:
  /// Opens and validates `path`. Throws (c10::Error, message naming the file) when it is missing, shorter
  /// than its header says, has a header that is not the expected JSON, an unknown dtype, or byte ranges that
  /// overlap, leave gaps or run past the end of the file.
  explicit SafetensorsFile(const std::string& path);

  /// Tensor names in the order the header lists them (for files written by the Python library and by
  /// `save_safetensors`, the order of their data).
  std::vector<std::string> names() const;
  bool contains(const std::string& name) const;
  /// An owning CPU tensor with the stored dtype and shape (a copy: it stays valid after the file is closed).
  /// Throws when the file holds no tensor of that name.
  torch::Tensor tensor(const std::string& name) const;
  /// The stored shape of `name`, without reading its data.
  std::vector<int64_t> shape(const std::string& name) const;
  /// The stored dtype of `name`.
  torch::ScalarType dtype(const std::string& name) const;
  /// The header's "__metadata__" entry (string keys to string values; empty when absent).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// The path the file was opened from.
  const std::string& path() const { return path_; }

 private:
  struct Entry {
    torch::ScalarType dtype;
    std::vector<int64_t> shape;
    uint64_t begin = 0;  // byte offsets into the data section
    uint64_t end = 0;
  };
  const Entry& entry(const std::string& name) const;

  std::string path_;
  std::shared_ptr<const void> mapping_;  // the whole file, unmapped when the last copy of this object goes
  size_t size_ = 0;
  size_t data_start_ = 0;
  std::vector<std::string> order_;
  std::map<std::string, Entry> entries_;
  std::map<std::string, std::string> metadata_;
};

/// Writes `tensors` (in the given order, any device, any strides; copied to CPU as needed) and `metadata` to
/// `path` in the safetensors format. The file is written to "<path>.tmp-<pid>" and renamed over `path` only
/// when complete, so a failure (full disk, bad tensor, unwritable folder) never leaves a half-written file
/// and never damages an existing one. Throws on duplicate or empty names, undefined tensors and dtypes the
/// format does not have.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// The names `load_state_into` could not match: file tensors with no module counterpart (`unexpected`,
/// as named in the file) and module tensors the file did not provide (`missing`, as named in the module).
struct LoadReport {
  std::vector<std::string> missing, unexpected;
};

/// Copies the file's tensors into `module.named_parameters()` and `named_buffers()` by name, converting the
/// dtype to the module tensor's and copying to its device. `name_map` maps a file name to a module name
/// (return "" to skip that tensor; it then counts as neither missing nor unexpected). Everything is checked
/// before anything is copied, so a failed load leaves the module untouched: a shape mismatch throws naming
/// the tensor and both shapes; with `strict`, missing or unexpected names throw listing them, otherwise they
/// are returned.
///
/// Example (a Hugging Face checkpoint whose names carry a prefix the C++ model lacks):
/// \code
///   increlora::SafetensorsFile file("model.safetensors");
///   auto report = increlora::load_state_into(*model, file, [](const std::string& n) {
///     return n.rfind("bert.", 0) == 0 ? n.substr(5) : std::string();
///   }, /*strict=*/false);
/// \endcode
LoadReport load_state_into(torch::nn::Module& module, const SafetensorsFile& file,
                           const std::function<std::string(const std::string&)>& name_map = nullptr,
                           bool strict = true);

}  // namespace increlora
