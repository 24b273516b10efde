// The safetensors reader/writer: round trips, a file written by Python's safetensors, damaged files, atomic
// writes and load_state_into.
#include "support.hpp"

#include <increlora/safetensors.hpp>


#include "temp_dir.hpp"

#include <cstdint>
#include <cstring>
#include <fstream>

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

namespace {

using increlora::test::read_bytes;
using increlora::test::TempDir;

// Writes a safetensors file by hand: the 8-byte little-endian header length, `header`, then `data`.
void write_raw(const std::string& path, const std::string& header, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  const uint64_t n = header.size();
  out.write(reinterpret_cast<const char*>(&n), 8);
  out << header << data;
}

// The bytes of a file that Python's safetensors 0.8.0 wrote with
//   save({"encoder.weight": torch.arange(6.).reshape(2, 3) / 4, "ids": tensor([1, -2, 3]),
//         "half": tensor([0.5, -1.25], float16), "bf": tensor([2.0, -3.5], bfloat16),
//         "mask": tensor([True, False, True])}, metadata={"format": "pt", "note": "written by safetensors 0.8.0"})
// It orders tensors by alignment, then name, and pads the header with spaces to a multiple of 8.
const char kPythonHeader[] =
    R"({"__metadata__":{"note":"written by safetensors 0.8.0","format":"pt"},)"
    R"("ids":{"dtype":"I64","shape":[3],"data_offsets":[0,24]},)"
    R"("encoder.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[24,48]},)"
    R"("bf":{"dtype":"BF16","shape":[2],"data_offsets":[48,52]},)"
    R"("half":{"dtype":"F16","shape":[2],"data_offsets":[52,56]},)"
    R"("mask":{"dtype":"BOOL","shape":[3],"data_offsets":[56,59]}}      )";
const unsigned char kPythonData[] = {
    0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,  // ids
    0x03, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x80, 0x3e, 0x00, 0x00, 0x00, 0x3f, 0x00, 0x00, 0x40, 0x3f,  // encoder.weight
    0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0xa0, 0x3f,
    0x00, 0x40, 0x60, 0xc0,  // bf
    0x00, 0x38, 0x00, 0xbd,  // half
    0x01, 0x00, 0x01};       // mask

std::string python_data() { return std::string(reinterpret_cast<const char*>(kPythonData), sizeof(kPythonData)); }

torch::Tensor sample(torch::ScalarType dtype, const std::vector<int64_t>& shape) {
  const auto values = torch::randn(shape, torch::kDouble) * 20;
  if (dtype == torch::kBool) return values > 0;
  if (dtype == torch::kUInt8) return values.abs().to(dtype);
  return values.to(dtype);
}

struct TwoLayerImpl : torch::nn::Module {
  TwoLayerImpl() {
    fc1 = register_module("fc1", torch::nn::Linear(3, 4));
    fc2 = register_module("fc2", torch::nn::Linear(4, 2));
    register_buffer("steps", torch::zeros({1}, torch::kLong));
  }
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(TwoLayer);

}  // namespace

TEST_CASE("Every supported dtype survives a save/load round trip bit for bit", "[safetensors]") {
  const auto dtype = GENERATE(torch::kFloat64, torch::kFloat32, torch::kFloat16, torch::kBFloat16, torch::kInt64,
                              torch::kInt32, torch::kInt16, torch::kInt8, torch::kUInt8, torch::kBool);
  CAPTURE(dtype);
  TempDir dir;
  const auto matrix = sample(dtype, {3, 5});
  const auto scalar = sample(dtype, {});
  const auto empty = sample(dtype, {0, 4});
  const auto strided = sample(dtype, {4, 6}).t();  // not contiguous: written in logical order
  increlora::save_safetensors(dir.file("t.safetensors"),
                              {{"matrix", matrix}, {"scalar", scalar}, {"empty", empty}, {"strided", strided}},
                              {{"format", "pt"}, {"who", "increlora"}});
  const increlora::SafetensorsFile file(dir.file("t.safetensors"));
  CHECK(file.names() == std::vector<std::string>{"matrix", "scalar", "empty", "strided"});
  CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"who", "increlora"}});
  CHECK(file.contains("matrix"));
  CHECK_FALSE(file.contains("nothing"));
  CHECK(file.shape("strided") == std::vector<int64_t>{6, 4});
  CHECK(file.shape("scalar").empty());
  for (const auto& [name, original] : std::vector<std::pair<std::string, torch::Tensor>>{
           {"matrix", matrix}, {"scalar", scalar}, {"empty", empty}, {"strided", strided}}) {
    const auto loaded = file.tensor(name);
    CAPTURE(name);
    CHECK(loaded.scalar_type() == dtype);
    CHECK(loaded.device().is_cpu());
    CHECK(loaded.sizes() == original.sizes());
    CHECK(torch::equal(loaded, original));
  }
  // The header is padded so that the data starts 8-byte aligned, as the Python library writes it.
  const auto bytes = read_bytes(dir.file("t.safetensors"));
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes.data(), 8);
  CHECK(header_len % 8 == 0);
  CHECK(dir.entries() == std::vector<std::string>{"t.safetensors"});
}

TEST_CASE("A tensor read from the file owns its data and outlives the file object", "[safetensors]") {
  TempDir dir;
  const auto t = torch::arange(10, torch::kFloat);
  increlora::save_safetensors(dir.file("t.safetensors"), {{"t", t}});
  torch::Tensor kept;
  {
    const increlora::SafetensorsFile file(dir.file("t.safetensors"));
    kept = file.tensor("t");
  }
  ::unlink(dir.file("t.safetensors").c_str());
  CHECK(torch::equal(kept, t));
}

TEST_CASE("A file written by Python's safetensors reads with its order, dtypes, values and metadata",
          "[safetensors]") {
  TempDir dir;
  write_raw(dir.file("py.safetensors"), kPythonHeader, python_data());
  const increlora::SafetensorsFile file(dir.file("py.safetensors"));
  CHECK(file.names() == std::vector<std::string>{"ids", "encoder.weight", "bf", "half", "mask"});
  CHECK(file.metadata().at("format") == "pt");
  CHECK(file.metadata().at("note") == "written by safetensors 0.8.0");
  CHECK(torch::equal(file.tensor("ids"), torch::tensor({1, -2, 3}, torch::kLong)));
  CHECK(torch::equal(file.tensor("encoder.weight"), torch::arange(6, torch::kFloat).reshape({2, 3}) / 4));
  CHECK(torch::equal(file.tensor("bf"), torch::tensor({2.0, -3.5}).to(torch::kBFloat16)));
  CHECK(torch::equal(file.tensor("half"), torch::tensor({0.5, -1.25}).to(torch::kHalf)));
  CHECK(torch::equal(file.tensor("mask"), torch::tensor({true, false, true})));
  CHECK(file.dtype("half") == torch::kHalf);
  CHECK_THROWS_WITH(file.tensor("encoder.bias"), HasSubstring("holds no tensor named 'encoder.bias'. It holds: ids"));
}

TEST_CASE("A truncated file is refused, naming the file and what is missing", "[safetensors]") {
  TempDir dir;
  const std::string header = kPythonHeader, data = python_data();
  const auto path = dir.file("cut.safetensors");
  SECTION("shorter than the length field") {
    std::ofstream(path, std::ios::binary) << "abc";
    CHECK_THROWS_WITH(increlora::SafetensorsFile(path),
                      HasSubstring("is 3 bytes long, too short for the 8-byte header length"));
  }
  SECTION("empty") {
    std::ofstream(path, std::ios::binary).flush();
    CHECK_THROWS_WITH(increlora::SafetensorsFile(path), HasSubstring("truncated"));
  }
  SECTION("inside the header") {
    write_raw(path, header, data);
    REQUIRE(::truncate(path.c_str(), 8 + header.size() / 2) == 0);
    CHECK_THROWS_WITH(increlora::SafetensorsFile(path),
                      HasSubstring("the header length field says 376 bytes but only 188 follow it; the file is "
                                   "truncated"));
  }
  SECTION("inside the data") {
    write_raw(path, header, data);
    REQUIRE(::truncate(path.c_str(), 8 + header.size() + data.size() - 1) == 0);
    CHECK_THROWS_WITH(increlora::SafetensorsFile(path),
                      HasSubstring("tensor 'mask' has data_offsets [56, 59] past the end of the data section (58 "
                                   "bytes); the file is truncated"));
  }
  CHECK_THROWS_WITH(increlora::SafetensorsFile(dir.file("absent.safetensors")),
                    HasSubstring("absent.safetensors': could not open it (No such file or directory)"));
}

TEST_CASE("A corrupted header is refused with a message that says what is wrong", "[safetensors]") {
  TempDir dir;
  const auto path = dir.file("bad.safetensors");
  const std::string four(4, '\0');
  const auto refused = [&](const std::string& header, const std::string& data, const std::string& message) {
    write_raw(path, header, data);
    CHECK_THROWS_WITH(increlora::SafetensorsFile(path), HasSubstring(message));
  };
  refused("[1, 2]", "", "the header does not start with a JSON object");
  refused(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]})", four,
          "the header is not valid JSON");
  refused(R"({"a": {"dtype": "F32", "shape": [1]}})", four,
          "tensor 'a' must be an object with \"dtype\", \"shape\" and \"data_offsets\"");
  refused(R"({"a": {"dtype": "C64", "shape": [1], "data_offsets": [0, 4]}})", four,
          "tensor 'a' has dtype C64, which increlora does not read (supported: F64, F32, F16, BF16");
  refused(R"({"a": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", four,
          "tensor 'a': a shape entry must be a non-negative integer, got -1");
  refused(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", four,
          "tensor 'a' is F32 of shape [2] (8 bytes) but its data_offsets [0, 4] span 4 bytes");
  refused(R"({"a": {"dtype": "F32", "shape": [4611686018427387904, 8], "data_offsets": [0, 4]}})", four,
          "larger than the file's 4-byte data section");
  refused(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})", four, "whose end is before its begin");
  refused(R"({"__metadata__": {"n": 1}})", "", "metadata entry \"n\" must be a string, got 1");
  write_raw(path, "{}", "");
  std::string bytes = read_bytes(path);
  bytes[7] = '\x7f';  // a header length of about 9e18
  std::ofstream(path, std::ios::binary) << bytes;
  CHECK_THROWS_WITH(increlora::SafetensorsFile(path), HasSubstring("more than the format's limit"));
}

TEST_CASE("Byte ranges that overlap, leave gaps or run out of the file are refused", "[safetensors]") {
  TempDir dir;
  const auto path = dir.file("ranges.safetensors");
  const std::string eight(8, '\0');
  const auto refused = [&](const std::string& header, const std::string& data, const std::string& message) {
    write_raw(path, header, data);
    CHECK_THROWS_WITH(increlora::SafetensorsFile(path), HasSubstring(message));
  };
  refused(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
          R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
          eight, "tensor 'b' at bytes [4, 8) overlaps tensor 'a' which ends at 8");
  refused(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", eight,
          "bytes [0, 4) of the data section belong to no tensor (before 'a')");
  refused(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", eight,
          "the tensors cover 4 bytes of data but the file holds 8");
  refused(R"({"a": {"dtype": "F64", "shape": [2], "data_offsets": [0, 16]}})", eight,
          "past the end of the data section (8 bytes)");
  refused(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 18446744073709551615]}})", eight,
          "past the end of the data section");
  refused(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4.0]}})", eight,
          "data_offsets[1] must be a non-negative integer");
}

TEST_CASE("A write that fails leaves no file behind and the previous file intact", "[safetensors]") {
  TempDir dir;
  const auto path = dir.file("out.safetensors");
  const auto good = torch::arange(4, torch::kFloat);
  increlora::save_safetensors(path, {{"good", good}});

  SECTION("bad input is refused before anything is written") {
    CHECK_THROWS_WITH(increlora::save_safetensors(path, {{"z", torch::zeros({2}, torch::kComplexFloat)}}),
                      HasSubstring("tensor 'z' has dtype ComplexFloat, which the format (as increlora writes it) "
                                   "does not have"));
    CHECK_THROWS_WITH(increlora::save_safetensors(path, {{"a", good}, {"a", good}}),
                      HasSubstring("the name 'a' appears twice"));
    CHECK_THROWS_WITH(increlora::save_safetensors(path, {{"u", torch::Tensor()}}),
                      HasSubstring("tensor 'u' is undefined"));
    CHECK_THROWS_WITH(increlora::save_safetensors(path, {{"__metadata__", good}}), HasSubstring("is reserved"));
  }
  SECTION("the disk fills up in the middle of the data") {
    // A file-size limit makes write() fail with EFBIG part-way, as a full disk would (SIGXFSZ ignored).
    rlimit old_limit{};
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &old_limit) == 0);
    const auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
    rlimit small = old_limit;
    small.rlim_cur = 4096;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
    const auto big = torch::ones({64, 1024});
    bool threw = false;
    std::string message;
    try {
      increlora::save_safetensors(path, {{"big", big}});
    } catch (const c10::Error& e) {
      threw = true;
      message = e.what();
    }
    ::setrlimit(RLIMIT_FSIZE, &old_limit);
    ::signal(SIGXFSZ, old_handler);
    CHECK(threw);
    CHECK_THAT(message, HasSubstring("could not write"));
  }
  SECTION("the rename fails because the target is a folder") {
    const auto folder = dir.file("folder.safetensors");
    REQUIRE(::mkdir(folder.c_str(), 0755) == 0);
    CHECK_THROWS_WITH(increlora::save_safetensors(folder, {{"good", good}}), HasSubstring("could not rename"));
    ::rmdir(folder.c_str());
  }
  SECTION("the folder does not exist") {
    CHECK_THROWS_WITH(increlora::save_safetensors(dir.file("no/such/x.safetensors"), {{"good", good}}),
                      HasSubstring("check that the folder exists"));
  }
  CHECK(dir.entries() == std::vector<std::string>{"out.safetensors"});
  CHECK(torch::equal(increlora::SafetensorsFile(path).tensor("good"), good));
}

TEST_CASE("load_state_into copies tensors by name, converting dtype, and reports what did not match",
          "[safetensors]") {
  TempDir dir;
  TwoLayer source, target;
  torch::NoGradGuard no_grad;
  source->named_buffers()["steps"].fill_(7);
  std::vector<std::pair<std::string, torch::Tensor>> tensors;
  for (const auto& p : source->named_parameters()) tensors.emplace_back(p.key(), p.value().to(torch::kDouble));
  for (const auto& b : source->named_buffers()) tensors.emplace_back(b.key(), b.value());
  const auto path = dir.file("m.safetensors");
  increlora::save_safetensors(path, tensors);
  const increlora::SafetensorsFile file(path);

  const auto report = increlora::load_state_into(*target, file);
  CHECK(report.missing.empty());
  CHECK(report.unexpected.empty());
  for (const auto& p : source->named_parameters()) {
    CHECK(target->named_parameters()[p.key()].scalar_type() == torch::kFloat);
    CHECK(torch::equal(target->named_parameters()[p.key()], p.value()));
  }
  CHECK(target->named_buffers()["steps"].item<int64_t>() == 7);

  SECTION("a name map renames and skips") {
    TwoLayer other;
    const auto before = other->fc1->weight.clone();
    const auto partial = increlora::load_state_into(*other, file, [](const std::string& name) {
      return name.rfind("fc1.", 0) == 0 ? std::string() : name;
    }, /*strict=*/false);
    CHECK(partial.missing == std::vector<std::string>{"fc1.weight", "fc1.bias"});
    CHECK(partial.unexpected.empty());
    CHECK(torch::equal(other->fc1->weight, before));
    CHECK(torch::equal(other->fc2->weight, source->fc2->weight));
  }
  SECTION("strict loading lists missing and unexpected names and copies nothing") {
    TwoLayer other;
    const auto before = other->fc2->weight.clone();
    const auto rename = [](const std::string& name) { return name == "fc1.bias" ? std::string("fc1.b") : name; };
    CHECK_THROWS_WITH(increlora::load_state_into(*other, file, rename),
                      HasSubstring("Missing from the file: fc1.bias. Unexpected in the file: fc1.bias."));
    CHECK(torch::equal(other->fc2->weight, before));
    const auto loose = increlora::load_state_into(*other, file, rename, /*strict=*/false);
    CHECK(loose.missing == std::vector<std::string>{"fc1.bias"});
    CHECK(loose.unexpected == std::vector<std::string>{"fc1.bias"});
  }
  SECTION("a shape mismatch names the tensor and both shapes") {
    auto wide = std::make_shared<torch::nn::Module>();
    wide->register_module("fc1", torch::nn::Linear(5, 4));
    CHECK_THROWS_WITH(increlora::load_state_into(*wide, file, nullptr, /*strict=*/false),
                      HasSubstring("tensor 'fc1.weight' of '" + path + "' has shape [4, 3] but the module's "
                                   "'fc1.weight' has shape [4, 5]"));
  }
}
