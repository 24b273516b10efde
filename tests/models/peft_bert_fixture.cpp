// The C++ half of the PEFT check on a transformers model: all-MiniLM-L6-v2 as a BertModel with adapters on
// query, value and each layer's output.dense, trained a few IncreLoRA steps (so that ranks differ between
// layers and ΔW is far from zero), exported in PEFT's format, with inputs and the C++ outputs beside it.
//
//   peft_bert_fixture MODEL_DIR OUT_DIR
#include <increlora/models/bert.hpp>

#include <increlora/increlora.hpp>

#include <torch/optim/adamw.h>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: peft_bert_fixture MODEL_DIR OUT_DIR\n");
    return 2;
  }
  const std::string model_dir = argv[1], out = argv[2];
  torch::manual_seed(0);
  const auto config = increlora::bert::BertConfig::from_json_file(model_dir + "/config.json");
  increlora::bert::LoraSettings lora;
  lora.patterns = increlora::bert::lora_patterns_from_short_names({"query", "value", "layer.output"});
  lora.r = 1;
  lora.lora_alpha = 16;
  increlora::bert::BertModel model(config, lora, /*add_pooling_layer=*/false);
  increlora::bert::load_pretrained(*model, model_dir);
  model->eval();  // no dropout: the C++ and Python runs see the same function
  increlora::mark_only_lora_as_trainable(*model);

  increlora::FusedAdamW optimizer(model->parameters(), torch::optim::AdamWOptions(2e-2).weight_decay(0.0));
  increlora::RankAllocator allocator(*model, increlora::RankAllocatorOptions().lora_r(1).target_rank(2)
                                                 .init_warmup(2).incre_interval(2).top_h(6).incre_rank_num(1)
                                                 .total_step(20).advance_learn(true));
  const auto ids = torch::randint(1000, 5000, {4, 16}, torch::kLong);
  const auto mask = torch::ones({4, 16}, torch::kLong);
  const auto target = torch::randn({4, 16, config.hidden_size});
  for (int64_t step = 0; step < 20; ++step) {
    optimizer.zero_grad();
    auto loss = (model(ids, mask).last_hidden_state - target).pow(2).mean() + increlora::compute_orth_regu(*model);
    loss.backward();
    allocator.update_and_increase(*model, step, optimizer);
    optimizer.step();
  }
  if (!allocator.budget_met()) {
    std::fprintf(stderr, "peft_bert_fixture: the budget was not met\n");
    return 1;
  }
  increlora::export_peft(*model, out + "/peft");
  torch::NoGradGuard no_grad;
  const auto probe = torch::randint(1000, 5000, {3, 12}, torch::kLong);
  auto probe_mask = torch::ones({3, 12}, torch::kLong);
  probe_mask.index_put_({2, torch::indexing::Slice(8, torch::indexing::None)}, 0);  // some padding too
  const auto y = model(probe, probe_mask).last_hidden_state;
  increlora::save_safetensors(out + "/probe.safetensors",
                              {{"input_ids", probe}, {"attention_mask", probe_mask}, {"last_hidden_state", y}});
  std::printf("peft_bert_fixture: total rank %lld over %zu layers\n", static_cast<long long>(allocator.total_rank()),
              allocator.modules().size());
  return 0;
}
