// libFuzzer target: the safetensors reader (increlora::SafetensorsFile) on a file holding the input bytes, then
// every tensor of a file it accepts read out and loaded (non-strictly) into a small module.
// Seeds: files written by save_safetensors (every supported dtype, empty and scalar tensors, metadata) and a
// real adapter save (the adapter.safetensors of a small model).
#include "fuzz_support.hpp"

#include <increlora/safetensors.hpp>
#include <increlora/serialize.hpp>
#include <increlora/svd_linear.hpp>

#include <c10/util/Exception.h>
#include <torch/nn/modules/linear.h>
#include <torch/types.h>

#include <cstddef>
#include <cstdint>
#include <string>

namespace {

using namespace increlora::fuzz;

struct SmallImpl : torch::nn::Module {
  SmallImpl() {
    fc = register_module("fc", increlora::SVDLinear(increlora::SVDLinearOptions(4, 3).r(2).capacity(4)));
    head = register_module("head", torch::nn::Linear(3, 2));
  }
  increlora::SVDLinear fc{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Small);

std::string input_path;

void build_fixture(const std::string& dir) {
  torch::manual_seed(0);
  increlora::save_safetensors(dir + "/dtypes.safetensors",
                              {{"f64", torch::randn({2, 3}, torch::kDouble)},
                               {"f32", torch::randn({3}, torch::kFloat)},
                               {"f16", torch::randn({2, 2}).to(torch::kHalf)},
                               {"bf16", torch::randn({1, 2}).to(torch::kBFloat16)},
                               {"i64", torch::arange(4, torch::kLong)},
                               {"i32", torch::arange(3, torch::kInt)},
                               {"i16", torch::arange(2, torch::kShort)},
                               {"i8", torch::arange(5, torch::kChar)},
                               {"u8", torch::arange(3, torch::kByte)},
                               {"bool", torch::tensor({true, false})},
                               {"empty", torch::zeros({0, 4})},
                               {"scalar", torch::tensor(1.5)}},
                              {{"format", "pt"}, {"note", "fuzz seed"}});
  increlora::save_safetensors(dir + "/one.safetensors", {{"fc.weight", torch::ones({3, 4})}});
  Small model;
  increlora::save_adapter(*model, dir + "/adapter");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const auto dir = fixture("fuzz_safetensors", build_fixture);
  for (const char* name : {"dtypes.safetensors", "one.safetensors"}) {
    seed(name, read_file(dir + "/" + name));
  }
  seed("adapter.safetensors", read_file(dir + "/adapter/" + std::string(increlora::kAdapterTensorsFile)));
  input_path = scratch_dir() + "/input.safetensors";
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  write_file(input_path, data, size);
  try {
    increlora::SafetensorsFile file(input_path);
    for (const auto& name : file.names()) {
      if (!file.contains(name)) fail("names() lists '" + name + "', which contains() denies");
      const auto t = file.tensor(name);
      if (t.sizes().vec() != file.shape(name)) fail("the tensor '" + name + "' has another shape than shape()");
      if (t.scalar_type() != file.dtype(name)) fail("the tensor '" + name + "' has another dtype than dtype()");
      if (t.numel() > 0) (void)t.to(torch::kDouble).sum().item<double>();  // touches every element
    }
    (void)file.metadata().size();
    Small model;
    (void)increlora::load_state_into(*model, file, nullptr, /*strict=*/false);
  } catch (const c10::Error&) {
    // The expected refusal of a file that is not a valid safetensors file (or does not fit the module).
  }
  return 0;
}
