// Module discovery and selection, mark_only_lora_as_trainable and lora_state_dict.
#include "support.hpp"

using increlora::SVDLinear;
using increlora::SVDLinearOptions;

namespace {

struct BlockImpl : torch::nn::Module {
  BlockImpl(int64_t r_query) {
    query = register_module("query", SVDLinear(SVDLinearOptions(4, 4).r(r_query)));
    value = register_module("value", SVDLinear(SVDLinearOptions(4, 4).r(1)));
    dense = register_module("dense", torch::nn::Linear(4, 4));
  }
  SVDLinear query{nullptr}, value{nullptr};
  torch::nn::Linear dense{nullptr};
};
TORCH_MODULE(Block);

struct EncoderImpl : torch::nn::Module {
  EncoderImpl() {
    layer0 = register_module("layer0", Block(1));
    layer1 = register_module("layer1", Block(0));
  }
  Block layer0{nullptr}, layer1{nullptr};
};
TORCH_MODULE(Encoder);

}  // namespace

TEST_CASE("named_svd_linears finds the adapted layers by qualified name", "[modules]") {
  Encoder model;
  std::vector<std::string> names;
  for (const auto& entry : increlora::named_svd_linears(*model)) names.push_back(entry.first);
  CHECK(names == std::vector<std::string>{"layer0.query", "layer0.value", "layer1.value"});
  CHECK(increlora::named_svd_linears(*model, /*adapters_only=*/false).size() == 4);
}

TEST_CASE("Module patterns match exact names, dotted suffixes and regular expressions", "[modules]") {
  CHECK(increlora::matches_pattern("encoder.layer.0.attention.self.query", "query"));
  CHECK(increlora::matches_pattern("encoder.layer.0.attention.self.query", "self.query"));
  CHECK_FALSE(increlora::matches_pattern("encoder.layer.0.my_query", "query"));
  CHECK(increlora::matches_pattern("query", "query"));
  CHECK(increlora::matches_pattern("encoder.layer.3.output.dense", "re:.*layer\\.[0-5]\\.output\\.dense"));
  CHECK_FALSE(increlora::matches_pattern("encoder.layer.3.output.dense", "re:layer"));
  CHECK_THROWS_WITH(increlora::matches_pattern("x", "re:("), HasSubstring("not a valid regular expression"));

  Encoder model;
  CHECK(increlora::select_modules(*model, {"query"}) == std::vector<std::string>{"layer0.query", "layer1.query"});
  CHECK(increlora::select_modules(*model, {"layer1.value", "re:layer0\\..*"}) ==
        std::vector<std::string>{"layer0.query", "layer0.value", "layer1.value"});
  CHECK_THROWS_WITH(increlora::select_modules(*model, {"key"}),
                    HasSubstring("matches no SVDLinear layer of the model. Candidates: layer0.query, layer0.value"));
}

TEST_CASE("mark_only_lora_as_trainable freezes everything but the adapters (and the biases asked for)", "[modules]") {
  Encoder model;
  auto trainable = [&] {
    std::vector<std::string> names;
    for (const auto& p : model->named_parameters()) {
      if (p.value().requires_grad()) names.push_back(p.key());
    }
    return names;
  };
  increlora::mark_only_lora_as_trainable(*model);
  for (const auto& name : trainable()) CHECK(name.find("lora_") != std::string::npos);
  CHECK(trainable().size() == 9);  // 3 adapted layers × (lora_A, lora_E, lora_B)
  increlora::mark_only_lora_as_trainable(*model, "lora_only");
  CHECK(trainable().size() == 12);
  increlora::mark_only_lora_as_trainable(*model, "all");
  CHECK(trainable().size() == 15);  // + every bias: 4 SVDLinear and 2 Linear
  CHECK_THROWS_WITH(increlora::mark_only_lora_as_trainable(*model, "some"), HasSubstring("bias must be"));
}

TEST_CASE("lora_state_dict holds the adapter tensors and rank buffers only", "[modules]") {
  Encoder model;
  const auto state = increlora::lora_state_dict(*model);
  CHECK(state.size() == 3 * (3 + 4));
  CHECK(state.contains("layer0.query.lora_A"));
  CHECK(state.contains("layer1.value.lora_slot_state"));
  CHECK_FALSE(state.contains("layer0.query.weight"));
  CHECK(increlora::lora_state_dict(*model, "lora_only").contains("layer0.query.bias"));
  CHECK_FALSE(increlora::lora_state_dict(*model, "lora_only").contains("layer1.query.bias"));
  // The entries are the model's own tensors, not copies.
  CHECK(state["layer0.value.lora_E"].data_ptr() == model->layer0->value->lora_E.data_ptr());
}
