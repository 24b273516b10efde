#pragma once
// The GLUE program's data path: TSV examples tokenized once, batches padded to their longest input (or to a
// fixed length for CUDA graphs), and the model's predictions over a dataset.
#include <increlora/models/encoder.hpp>
#include <increlora/tasks/glue.hpp>

#include <torch/types.h>

#include <cstdint>
#include <string>
#include <vector>

namespace increlora::apps::glue_app {

struct Dataset {
  std::vector<bert::Encoding> inputs;
  std::vector<int64_t> labels;
  std::vector<double> scores;
};

/// Tokenizes `examples` ([CLS] a [SEP] (b [SEP]), truncated to max_len), with a progress line named `what`.
Dataset encode(const std::vector<glue::Example>& examples, const models::Tokenizer& tokenizer,
               int64_t max_len, const std::string& what);

/// {input_ids, attention_mask, token_type_ids, labels, scores} of the examples `idx`, on `device`: padded to the
/// longest input of the batch (the mask makes padding inert; short batches run much faster on a CPU), or to
/// `pad_to` when that is longer (one shape for every batch, which a CUDA graph needs).
std::vector<torch::Tensor> collate(const Dataset& data, const std::vector<size_t>& idx, int64_t pad_id,
                                   const torch::Device& device, int64_t pad_to = 0);

struct Predictions {
  std::vector<int64_t> class_ids;  ///< classification: argmax per example
  std::vector<double> scores;      ///< regression: the score per example
  torch::Tensor logits;            ///< [examples × labels] float32 on the CPU
};

/// The logits as TSV: a header "index\t<label names>", then per example its row index and its logits.
std::string logits_tsv(const glue::TaskSpec& spec, const torch::Tensor& logits);

/// The model's predictions over `data` in order (call in eval mode without gradients).
Predictions predict(models::SequenceClassificationModel& model, const Dataset& data, const glue::TaskSpec& spec,
                    int64_t batch_size, int64_t pad_id, const torch::Device& device, const std::string& what);

/// The task's official metrics of `predictions` against `data`'s labels.
glue::Metrics score(const glue::TaskSpec& spec, const Predictions& predictions, const Dataset& data);

}  // namespace increlora::apps::glue_app
