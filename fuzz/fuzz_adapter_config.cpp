// libFuzzer target: load_adapter's reading of adapter_config.json. The input is the config; beside it lies the
// valid adapter.safetensors of the same save (from the fixture), and the adapter is loaded into a fresh small
// model built as the saved one was. A config it accepts must restore a rank pattern within each layer's capacity.
// Seed: the real adapter_config.json of that save.
#include "fuzz_support.hpp"

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

// Two adapted layers (one grown past its initial rank, with an advance-learning reserve) and a plain head.
struct NetImpl : torch::nn::Module {
  NetImpl() {
    fc0 = register_module("fc0", increlora::SVDLinear(increlora::SVDLinearOptions(6, 5).r(1).lora_alpha(4).capacity(4)));
    fc1 = register_module("fc1", increlora::SVDLinear(increlora::SVDLinearOptions(5, 4).r(2).lora_alpha(2).capacity(3)));
    head = register_module("head", torch::nn::Linear(4, 2));
  }
  increlora::SVDLinear fc0{nullptr}, fc1{nullptr};
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Net);

std::string work;  // the scratch adapter folder: the fixture's tensors and the input as the config

Net fresh_net() {
  torch::manual_seed(0);  // the same base weights for every model
  return Net();
}

void build_fixture(const std::string& dir) {
  auto net = fresh_net();
  net->fc0->grow(2, /*step=*/5, /*reserve_after=*/1);
  increlora::save_adapter(*net, dir + "/adapter");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const auto dir = fixture("fuzz_adapter_config", build_fixture) + "/adapter";
  seed("adapter_config.json", read_file(dir + "/" + increlora::kAdapterConfigFile));
  work = scratch_dir() + "/adapter";
  make_dirs(work);
  copy_file(dir + "/" + increlora::kAdapterTensorsFile, work + "/" + increlora::kAdapterTensorsFile);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  write_file(work + "/" + increlora::kAdapterConfigFile, data, size);
  auto net = fresh_net();
  try {
    const auto ranks = increlora::load_adapter(*net, work);
    for (const auto& [name, rank] : ranks) {
      const auto& layer = name == "fc0" ? net->fc0 : name == "fc1" ? net->fc1 : increlora::SVDLinear(nullptr);
      if (!layer) fail("load_adapter restored a rank for '" + name + "', which is no adapted layer");
      if (rank != layer->rank() || rank < 0 || layer->in_use() > layer->capacity()) {
        fail("load_adapter restored rank " + std::to_string(rank) + " for '" + name + "', but the layer has rank " +
             std::to_string(layer->rank()) + " with " + std::to_string(layer->in_use()) + " of " +
             std::to_string(layer->capacity()) + " slots in use");
      }
    }
    (void)net->fc0->forward(torch::ones({1, 6}));
    (void)net->fc1->forward(torch::ones({1, 5}));
  } catch (const c10::Error&) {
    // The expected refusal of a config that is not valid or does not fit the model.
  }
  return 0;
}
