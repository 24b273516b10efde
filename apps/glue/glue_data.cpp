#include "glue_data.hpp"

#include <increlora/apps/progress.hpp>

#include <algorithm>
#include <cstdio>

namespace increlora::apps::glue_app {

Dataset encode(const std::vector<glue::Example>& examples, const models::Tokenizer& tokenizer,
               int64_t max_len, const std::string& what) {
  Dataset d;
  d.inputs.reserve(examples.size());
  Progress progress("tokenize " + what, static_cast<int64_t>(examples.size()), "ex");
  for (const auto& e : examples) {
    d.inputs.push_back(tokenizer.encode(e.text_a, e.text_b, max_len));
    d.labels.push_back(e.label);
    d.scores.push_back(e.score);
    if (d.inputs.size() % 256 == 0) progress.update(static_cast<int64_t>(d.inputs.size()));
  }
  return d;
}

std::vector<torch::Tensor> collate(const Dataset& d, const std::vector<size_t>& idx, int64_t pad_id,
                                   const torch::Device& device, int64_t pad_to) {
  size_t len = static_cast<size_t>(std::max<int64_t>(pad_to, 0));
  for (auto i : idx) len = std::max(len, d.inputs[i].input_ids.size());
  const auto n = static_cast<int64_t>(idx.size());
  auto ids = torch::full({n, static_cast<int64_t>(len)}, pad_id, torch::kLong);
  auto mask = torch::zeros({n, static_cast<int64_t>(len)}, torch::kLong);
  auto types = torch::zeros({n, static_cast<int64_t>(len)}, torch::kLong);
  auto labels = torch::empty({n}, torch::kLong);
  auto scores = torch::empty({n}, torch::kFloat);
  auto ids_a = ids.accessor<int64_t, 2>(), mask_a = mask.accessor<int64_t, 2>(), types_a = types.accessor<int64_t, 2>();
  auto labels_a = labels.accessor<int64_t, 1>();
  auto scores_a = scores.accessor<float, 1>();
  for (int64_t r = 0; r < n; ++r) {
    const auto& e = d.inputs[idx[r]];
    for (size_t c = 0; c < e.input_ids.size(); ++c) {
      ids_a[r][c] = e.input_ids[c], mask_a[r][c] = 1, types_a[r][c] = e.token_type_ids[c];
    }
    labels_a[r] = d.labels[idx[r]];
    scores_a[r] = static_cast<float>(d.scores[idx[r]]);
  }
  return {ids.to(device), mask.to(device), types.to(device), labels.to(device), scores.to(device)};
}

Predictions predict(models::SequenceClassificationModel& model, const Dataset& d, const glue::TaskSpec& spec, int64_t batch_size,
                    int64_t pad_id, const torch::Device& device, const std::string& what) {
  Predictions out;
  const size_t n = d.inputs.size();
  Progress progress(what, static_cast<int64_t>((n + batch_size - 1) / batch_size), "batch");
  std::vector<torch::Tensor> all_logits;
  for (size_t start = 0; start < n; start += static_cast<size_t>(batch_size)) {
    std::vector<size_t> idx;
    for (size_t i = start; i < std::min(n, start + static_cast<size_t>(batch_size)); ++i) idx.push_back(i);
    const auto b = collate(d, idx, pad_id, device);
    const auto logits = model.forward(b[0], b[1], b[2]).to(torch::kCPU, torch::kFloat);
    all_logits.push_back(logits);
    if (spec.is_regression()) {
      auto s = logits.select(1, 0).contiguous();
      out.scores.insert(out.scores.end(), s.data_ptr<float>(), s.data_ptr<float>() + s.numel());
    } else {
      auto p = logits.argmax(1).contiguous();
      out.class_ids.insert(out.class_ids.end(), p.data_ptr<int64_t>(), p.data_ptr<int64_t>() + p.numel());
    }
    progress.update(static_cast<int64_t>(start / static_cast<size_t>(batch_size)) + 1);
  }
  out.logits = all_logits.empty() ? torch::zeros({0, spec.num_labels()}) : torch::cat(all_logits);
  return out;
}

std::string logits_tsv(const glue::TaskSpec& spec, const torch::Tensor& logits) {
  std::string out = "index";
  if (spec.is_regression()) {
    out += "\tscore";
  } else {
    for (const auto& label : spec.labels) out += "\t" + label;
  }
  out += "\n";
  const auto l = logits.contiguous();
  const auto a = l.accessor<float, 2>();
  char buffer[32];
  for (int64_t i = 0; i < l.size(0); ++i) {
    out += std::to_string(i);
    for (int64_t j = 0; j < l.size(1); ++j) {
      std::snprintf(buffer, sizeof buffer, "\t%.9g", a[i][j]);
      out += buffer;
    }
    out += "\n";
  }
  return out;
}

glue::Metrics score(const glue::TaskSpec& spec, const Predictions& p, const Dataset& d) {
  if (spec.is_regression()) return glue::regression_metrics(spec.name, p.scores, d.scores);
  return glue::classification_metrics(spec.name, p.class_ids, d.labels);
}

}  // namespace increlora::apps::glue_app
