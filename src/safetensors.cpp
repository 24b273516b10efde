#include "increlora/safetensors.hpp"

#include "increlora/errors.hpp"
#include "io.hpp"

#include <torch/types.h>

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <unordered_map>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

// The format stores little-endian bytes and we copy them as they are.
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "increlora's safetensors reader/writer assumes a little-endian host"
#endif

namespace increlora {
namespace {

using ordered_json = nlohmann::ordered_json;

// The reference implementation refuses headers above 100 MB; so do we, before allocating anything for one.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;
constexpr const char* kMetadataKey = "__metadata__";

struct DtypeName {
  const char* name;
  torch::ScalarType type;
};
constexpr DtypeName kDtypes[] = {
    {"F64", torch::kFloat64}, {"F32", torch::kFloat32}, {"F16", torch::kFloat16}, {"BF16", torch::kBFloat16},
    {"I64", torch::kInt64},   {"I32", torch::kInt32},   {"I16", torch::kInt16},   {"I8", torch::kInt8},
    {"U8", torch::kUInt8},    {"BOOL", torch::kBool},
};

std::string supported_dtypes() {
  std::string out;
  for (const auto& d : kDtypes) out += (out.empty() ? "" : ", ") + std::string(d.name);
  return out;
}

const char* dtype_name(torch::ScalarType type) {
  for (const auto& d : kDtypes) {
    if (d.type == type) return d.name;
  }
  return nullptr;
}

std::string shape_string(const std::vector<int64_t>& shape) { return fmt::format("[{}]", fmt::join(shape, ", ")); }

using detail::errno_text;
using detail::write_all;
using detail::write_atomically;

// A file descriptor closed on scope exit.
struct Fd {
  int fd = -1;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

uint64_t read_u64(const ordered_json& value, const std::string& what) {
  INCRELORA_CHECK(value.is_number_unsigned(), what, " must be a non-negative integer, got ", value.dump(), ".");
  return value.get<uint64_t>();
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const std::string where = fmt::format("safetensors file '{}': ", path);
  Fd in;
  in.fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);  // a FIFO must not block: refused below
  INCRELORA_CHECK(in.fd >= 0, where, fmt::format("could not open it ({}); check the path.", errno_text()));
  struct stat st {};
  INCRELORA_CHECK(::fstat(in.fd, &st) == 0, where, fmt::format("could not stat it ({}).", errno_text()));
  INCRELORA_CHECK(S_ISREG(st.st_mode), where, fmt::format("it is not a regular file (a FIFO, device or folder); pass the "
                                                          "file itself."));
  size_ = static_cast<size_t>(st.st_size);
  INCRELORA_CHECK(size_ >= 8, where, fmt::format("it is {} bytes long, too short for the 8-byte header length; the file is "
                                   "truncated or not a safetensors file.", size_));
  void* base = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, in.fd, 0);
  INCRELORA_CHECK(base != MAP_FAILED, where, fmt::format("could not memory-map it ({}).", errno_text()));
  const size_t size = size_;
  mapping_ = std::shared_ptr<const void>(base, [size](const void* p) { ::munmap(const_cast<void*>(p), size); });
  const auto* bytes = static_cast<const char*>(base);

  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);
  INCRELORA_CHECK(header_len <= kMaxHeaderBytes,
                  where, fmt::format("the header length field says {} bytes, more than the format's limit of {}; the file is "
                       "corrupted or not a safetensors file.", header_len, kMaxHeaderBytes));
  INCRELORA_CHECK(header_len <= size_ - 8, where, fmt::format("the header length field says {} bytes but only {} follow it; the "
                                                "file is truncated.", header_len, size_ - 8));
  INCRELORA_CHECK(header_len >= 2 && bytes[8] == '{',
                  where, fmt::format("the header does not start with a JSON object ('{{'); the file is corrupted or not a "
                       "safetensors file."));
  data_start_ = 8 + static_cast<size_t>(header_len);
  const uint64_t data_size = size_ - data_start_;

  ordered_json header;
  std::string duplicate;
  try {
    // JSON parsers keep the last of two equal keys without a word; a header naming a tensor twice is corrupted.
    std::set<std::string> names;
    header = ordered_json::parse(bytes + 8, bytes + data_start_,
                                 [&](int depth, nlohmann::json::parse_event_t event, ordered_json& parsed) {
                                   if (depth == 1 && event == nlohmann::json::parse_event_t::key &&
                                       !names.insert(parsed.get<std::string>()).second && duplicate.empty()) {
                                     duplicate = parsed.get<std::string>();
                                   }
                                   return true;
                                 });
  } catch (const nlohmann::json::exception& e) {
    INCRELORA_CHECK(false, where, fmt::format("the header is not valid JSON ({}); the file is corrupted.", e.what()));
  }
  INCRELORA_CHECK(header.is_object(), where, fmt::format("the header is JSON but not an object; the file is corrupted."));
  INCRELORA_CHECK(duplicate.empty(), where, fmt::format("the header names \"{}\" twice; the file is corrupted.", duplicate));

  std::vector<std::pair<uint64_t, std::string>> by_offset;
  for (const auto& [name, info] : header.items()) {
    if (name == kMetadataKey) {
      INCRELORA_CHECK(info.is_object(), where, fmt::format("\"{}\" must be an object of strings.", kMetadataKey));
      for (const auto& [key, value] : info.items()) {
        INCRELORA_CHECK(value.is_string(), where, fmt::format("metadata entry \"{}\" must be a string, got {}.", key, value.dump()));
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const std::string what = fmt::format("safetensors file '{}': tensor '{}'", path, name);
    INCRELORA_CHECK(info.is_object() && info.contains("dtype") && info.contains("shape") &&
                        info.contains("data_offsets"),
                    what, " must be an object with \"dtype\", \"shape\" and \"data_offsets\"; the header is corrupted.");
    const auto& dtype = info["dtype"];
    INCRELORA_CHECK(dtype.is_string(), what, ": \"dtype\" must be a string.");
    Entry entry{torch::kFloat, {}, 0, 0};
    bool known = false;
    for (const auto& d : kDtypes) {
      if (dtype.get<std::string>() == d.name) {
        entry.dtype = d.type;
        known = true;
      }
    }
    INCRELORA_CHECK(known, what, " has dtype ", dtype.get<std::string>(), ", which increlora does not read (supported: ",
                    supported_dtypes(), ").");
    const auto& shape = info["shape"];
    INCRELORA_CHECK(shape.is_array(), what, ": \"shape\" must be an array.");
    for (const auto& dim : shape) {
      const uint64_t d = read_u64(dim, what + ": a shape entry");
      INCRELORA_CHECK(d <= static_cast<uint64_t>(INT64_MAX), what, ": shape entry ", d, " is too large.");
      entry.shape.push_back(static_cast<int64_t>(d));
    }
    // The element count is checked against the data size as it grows, so a hostile shape cannot overflow.
    uint64_t numel = std::count(entry.shape.begin(), entry.shape.end(), 0) > 0 ? 0 : 1;
    for (const int64_t d : entry.shape) {
      if (numel == 0) break;
      INCRELORA_CHECK(numel <= data_size / static_cast<uint64_t>(d), what, " has shape ", shape.dump(),
                      ", larger than the file's ", data_size, "-byte data section; the file is truncated or corrupted.");
      numel *= static_cast<uint64_t>(d);
    }
    const auto& offsets = info["data_offsets"];
    INCRELORA_CHECK(offsets.is_array() && offsets.size() == 2, what,
                    ": \"data_offsets\" must be an array [begin, end].");
    entry.begin = read_u64(offsets[0], what + ": data_offsets[0]");
    entry.end = read_u64(offsets[1], what + ": data_offsets[1]");
    INCRELORA_CHECK(entry.begin <= entry.end, what, " has data_offsets [", entry.begin, ", ", entry.end,
                    "] whose end is before its begin; the header is corrupted.");
    INCRELORA_CHECK(entry.end <= data_size, what, " has data_offsets [", entry.begin, ", ", entry.end,
                    "] past the end of the data section (", data_size, " bytes); the file is truncated or corrupted.");
    const uint64_t expected = numel * c10::elementSize(entry.dtype);
    INCRELORA_CHECK(entry.end - entry.begin == expected, what, " is ", dtype.get<std::string>(), " of shape ",
                    shape.dump(), " (", expected, " bytes) but its data_offsets [", entry.begin, ", ", entry.end,
                    "] span ", entry.end - entry.begin, " bytes; the header is corrupted.");
    by_offset.emplace_back(entry.begin, name);
    order_.push_back(name);
    entries_.emplace(name, std::move(entry));
  }

  // The byte ranges must tile the data section exactly, as the reference implementation requires: an overlap
  // would alias two tensors, a gap or a tail hides bytes nobody accounts for.
  std::stable_sort(by_offset.begin(), by_offset.end(), [this](const auto& a, const auto& b) {
    return a.first != b.first ? a.first < b.first : entries_.at(a.second).end < entries_.at(b.second).end;
  });
  uint64_t covered = 0;
  std::string previous;
  for (const auto& [begin, name] : by_offset) {
    const auto& e = entries_.at(name);
    INCRELORA_CHECK(begin >= covered, where, fmt::format("tensor '{}' at bytes [{}, {}) overlaps tensor '{}' which ends at {}; the "
                                           "header is corrupted.", name, e.begin, e.end, previous, covered));
    INCRELORA_CHECK(begin == covered, where, fmt::format("bytes [{}, {}) of the data section belong to no tensor (before '{}'); "
                                           "the header is corrupted.", covered, begin, name));
    covered = e.end;
    previous = name;
  }
  INCRELORA_CHECK(covered == data_size, where, fmt::format("the tensors cover {} bytes of data but the file holds {}; the file has "
                                             "trailing bytes or the header is corrupted.", covered, data_size));
}

const SafetensorsFile::Entry& SafetensorsFile::entry(const std::string& name) const {
  const auto it = entries_.find(name);
  if (it == entries_.end()) {
    std::string listed;
    for (size_t i = 0; i < order_.size() && i < 8; ++i) listed += (i ? ", " : "") + order_[i];
    if (order_.size() > 8) listed += fmt::format(", ... ({} in all)", order_.size());
    INCRELORA_CHECK(false, "safetensors file '", path_, "' holds no tensor named '", name, "'. It holds: ",
                    listed.empty() ? std::string("(nothing)") : listed, ".");
  }
  return it->second;
}

std::vector<std::string> SafetensorsFile::names() const { return order_; }

bool SafetensorsFile::contains(const std::string& name) const { return entries_.count(name) == 1; }

std::vector<int64_t> SafetensorsFile::shape(const std::string& name) const { return entry(name).shape; }

torch::ScalarType SafetensorsFile::dtype(const std::string& name) const { return entry(name).dtype; }

torch::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const auto& e = entry(name);
  auto out = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype));
  // memcpy rather than from_blob: the data need not be aligned for the element type.
  if (e.end > e.begin) {
    std::memcpy(out.data_ptr(), static_cast<const char*>(mapping_.get()) + data_start_ + e.begin, e.end - e.begin);
  }
  return out;
}

void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, torch::Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  // Everything that can be wrong with the input is checked before the file is created.
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json meta = ordered_json::object();
    for (const auto& [key, value] : metadata) meta[key] = value;
    header[kMetadataKey] = std::move(meta);
  }
  std::set<std::string> seen;
  uint64_t offset = 0;
  for (const auto& [name, t] : tensors) {
    INCRELORA_CHECK(!name.empty(), "save_safetensors: a tensor has an empty name; give every tensor a name.");
    INCRELORA_CHECK(name != kMetadataKey, "save_safetensors: \"", kMetadataKey,
                    "\" is reserved for the metadata; rename that tensor.");
    INCRELORA_CHECK(seen.insert(name).second, "save_safetensors: the name '", name,
                    "' appears twice; tensor names must be unique.");
    INCRELORA_CHECK(t.defined(), "save_safetensors: tensor '", name, "' is undefined.");
    const char* dtype = dtype_name(t.scalar_type());
    INCRELORA_CHECK(dtype != nullptr, "save_safetensors: tensor '", name, "' has dtype ", t.scalar_type(),
                    ", which the format (as increlora writes it) does not have; convert it to one of ",
                    supported_dtypes(), ".");
    const uint64_t bytes = static_cast<uint64_t>(t.numel()) * t.element_size();
    header[name] = {{"dtype", dtype}, {"shape", t.sizes().vec()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
  }
  std::string text = header.dump();
  // Pad with spaces so the data section starts 8-byte aligned, as the Python library does.
  text.append((8 - text.size() % 8) % 8, ' ');
  const uint64_t header_len = text.size();

  write_atomically(path, [&](int fd, const std::string& tmp) {
    write_all(fd, &header_len, 8, tmp);
    write_all(fd, text.data(), text.size(), tmp);
    for (const auto& item : tensors) {
      const auto cpu = item.second.detach().to(torch::kCPU).contiguous();
      if (cpu.numel() > 0) write_all(fd, cpu.data_ptr(), cpu.numel() * cpu.element_size(), tmp);
    }
  });
}

LoadReport load_state_into(torch::nn::Module& module, const SafetensorsFile& file,
                           const std::function<std::string(const std::string&)>& name_map, bool strict) {
  std::vector<std::pair<std::string, torch::Tensor>> targets;  // module order, for the missing list
  std::unordered_map<std::string, torch::Tensor> by_name;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    if (item.value().defined()) targets.emplace_back(item.key(), item.value());
  }
  for (const auto& item : module.named_buffers(/*recurse=*/true)) {
    if (item.value().defined()) targets.emplace_back(item.key(), item.value());
  }
  for (const auto& [name, t] : targets) by_name.emplace(name, t);

  // Plan and check everything first, so that a failing load copies nothing.
  LoadReport report;
  std::vector<std::pair<std::string, std::string>> plan;  // file name, module name
  std::set<std::string> filled;
  for (const auto& name : file.names()) {
    const std::string target = name_map ? name_map(name) : name;
    if (target.empty()) continue;
    const auto it = by_name.find(target);
    if (it == by_name.end()) {
      report.unexpected.push_back(name);
      continue;
    }
    INCRELORA_CHECK(filled.insert(target).second, "load_state_into: two tensors of '", file.path(),
                    "' map to the module tensor '", target, "'; fix the name map.");
    const auto stored = file.shape(name);
    const auto wanted = it->second.sizes().vec();
    INCRELORA_CHECK(stored == wanted, "load_state_into: tensor '", name, "' of '", file.path(), "' has shape ",
                    shape_string(stored), " but the module's '", target, "' has shape ", shape_string(wanted),
                    "; build the module with the configuration the file was saved from.");
    plan.emplace_back(name, target);
  }
  for (const auto& [name, t] : targets) {
    if (filled.count(name) == 0) report.missing.push_back(name);
  }
  if (strict) {
    INCRELORA_CHECK(report.missing.empty() && report.unexpected.empty(), "load_state_into: '", file.path(),
                    "' does not match the module. Missing from the file: ",
                    report.missing.empty() ? std::string("(none)") : fmt::format("{}", fmt::join(report.missing, ", ")),
                    ". Unexpected in the file: ",
                    report.unexpected.empty() ? std::string("(none)")
                                              : fmt::format("{}", fmt::join(report.unexpected, ", ")),
                    ". Pass a name_map, or strict = false to load what matches.");
  }
  torch::NoGradGuard no_grad;
  for (const auto& [name, target] : plan) by_name.at(target).copy_(file.tensor(name));
  return report;
}

}  // namespace increlora
