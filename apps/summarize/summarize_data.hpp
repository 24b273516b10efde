#pragma once
// The summarization program's data path, as the seed's run_summarization_no_trainer.py prepares it: the source
// (with --source_prefix) tokenized as "<s> ... </s>" and cut to max_source_length, the summary likewise to
// max_target_length as the labels; batches pad sources with the pad token and labels with -100 (ignored by the
// loss), and the decoder reads the labels shifted right behind decoder_start_token_id (teacher forcing), as
// DataCollatorForSeq2Seq and BART's shift_tokens_right build them.
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

namespace increlora::apps::summarize_app {

/// What the batches need from the tokenizer: "<s> pieces </s>" ids of a text cut to a length, and the ids the
/// padding and the decoder start use.
struct Seq2SeqTokenizer {
  std::function<std::vector<int64_t>(const std::string& text, int64_t max_length)> encode;
  int64_t pad_id = 1;
  int64_t decoder_start_id = 2;
};

/// One tokenized example.
struct Feature {
  std::vector<int64_t> input_ids;  ///< the source
  std::vector<int64_t> labels;     ///< the summary (the decoder's targets)
};

/// The features of (source, summary) pairs, in order.
std::vector<Feature> make_features(const std::vector<std::string>& sources, const std::vector<std::string>& summaries,
                                   const Seq2SeqTokenizer& tokenizer, int64_t max_source_length,
                                   int64_t max_target_length, const std::string& source_prefix = "");

/// {input_ids, attention_mask, decoder_input_ids, labels} of the features `idx` on `device`: sources padded to
/// the longest (or to `source_pad_to` when that is longer: one shape for CUDA graphs) with the pad id, labels
/// to the longest (or `target_pad_to`) with -100, and decoder_input_ids = the labels shifted right with the
/// decoder start id in front (padding there is the pad id).
std::vector<torch::Tensor> collate(const std::vector<Feature>& features, const std::vector<size_t>& idx,
                                   const Seq2SeqTokenizer& tokenizer, const torch::Device& device,
                                   int64_t source_pad_to = 0, int64_t target_pad_to = 0);

}  // namespace increlora::apps::summarize_app
