// Builds against the models and tasks components: a tiny BERT classifier with adapters, a forward pass, and a
// GLUE metric of its predictions.
#include <increlora/increlora.hpp>
#include <increlora/models/bert.hpp>
#include <increlora/tasks/glue.hpp>

#include <iostream>

int main() {
  increlora::bert::BertConfig config;
  config.vocab_size = 50, config.hidden_size = 16, config.num_hidden_layers = 1, config.num_attention_heads = 2;
  config.intermediate_size = 32, config.max_position_embeddings = 16;
  increlora::bert::LoraSettings lora;
  lora.patterns = increlora::bert::lora_patterns_from_short_names({"query", "value"});
  lora.r = 1;
  increlora::bert::SequenceClassifier model(config, 2, lora);
  const auto logits = model(torch::randint(0, 50, {4, 8}));
  const auto predictions = logits.argmax(1).contiguous();
  std::vector<int64_t> p(predictions.data_ptr<int64_t>(), predictions.data_ptr<int64_t>() + 4);
  const auto metrics = increlora::glue::classification_metrics("mrpc", p, {0, 1, 1, 0});
  std::cout << "consumer models: " << increlora::named_svd_linears(*model).size() << " adapted layers, "
            << metrics.size() << " mrpc metrics\n";
  return metrics.count("f1") == 1 ? 0 : 1;
}
