#include "summarize_data.hpp"

#include <algorithm>
#include <stdexcept>

namespace increlora::apps::summarize_app {

std::vector<Feature> make_features(const std::vector<std::string>& sources, const std::vector<std::string>& summaries,
                                   const Seq2SeqTokenizer& tokenizer, int64_t max_source_length,
                                   int64_t max_target_length, const std::string& source_prefix) {
  if (sources.size() != summaries.size()) {
    throw std::invalid_argument("make_features: " + std::to_string(sources.size()) + " sources but " +
                                std::to_string(summaries.size()) + " summaries");
  }
  std::vector<Feature> out(sources.size());
  for (size_t i = 0; i < sources.size(); ++i) {
    out[i].input_ids = tokenizer.encode(source_prefix + sources[i], max_source_length);
    out[i].labels = tokenizer.encode(summaries[i], max_target_length);
  }
  return out;
}

std::vector<torch::Tensor> collate(const std::vector<Feature>& features, const std::vector<size_t>& idx,
                                   const Seq2SeqTokenizer& tokenizer, const torch::Device& device,
                                   int64_t source_pad_to, int64_t target_pad_to) {
  int64_t source_len = std::max<int64_t>(source_pad_to, 1), target_len = std::max<int64_t>(target_pad_to, 1);
  for (size_t i : idx) {
    source_len = std::max<int64_t>(source_len, static_cast<int64_t>(features.at(i).input_ids.size()));
    target_len = std::max<int64_t>(target_len, static_cast<int64_t>(features.at(i).labels.size()));
  }
  const auto rows = static_cast<int64_t>(idx.size());
  auto ids = torch::full({rows, source_len}, tokenizer.pad_id, torch::kLong);
  auto mask = torch::zeros({rows, source_len}, torch::kLong);
  auto labels = torch::full({rows, target_len}, -100, torch::kLong);
  auto decoder = torch::full({rows, target_len}, tokenizer.pad_id, torch::kLong);
  auto ids_a = ids.accessor<int64_t, 2>();
  auto mask_a = mask.accessor<int64_t, 2>();
  auto labels_a = labels.accessor<int64_t, 2>();
  auto decoder_a = decoder.accessor<int64_t, 2>();
  for (int64_t r = 0; r < rows; ++r) {
    const auto& f = features[idx[static_cast<size_t>(r)]];
    for (size_t j = 0; j < f.input_ids.size(); ++j) {
      ids_a[r][static_cast<int64_t>(j)] = f.input_ids[j];
      mask_a[r][static_cast<int64_t>(j)] = 1;
    }
    // shift_tokens_right: position 0 reads the decoder start, position j the label j − 1.
    decoder_a[r][0] = tokenizer.decoder_start_id;
    for (size_t j = 0; j < f.labels.size(); ++j) {
      labels_a[r][static_cast<int64_t>(j)] = f.labels[j];
      if (static_cast<int64_t>(j) + 1 < target_len) decoder_a[r][static_cast<int64_t>(j) + 1] = f.labels[j];
    }
  }
  return {ids.to(device), mask.to(device), decoder.to(device), labels.to(device)};
}

}  // namespace increlora::apps::summarize_app
