#pragma once
// The question-answering program's data path, as Hugging Face's run_qa.py prepares SQuAD: each question and its
// context become one or more windows "[CLS] question [SEP] context-part [SEP]" of at most max_seq_length tokens,
// consecutive windows sharing doc_stride context tokens; training windows carry the answer's token span (or the
// [CLS] position when the answer is not inside the window, or there is none); evaluation windows keep, for every
// context token, the bytes of the context it came from, so that a predicted span becomes the answer's text.
#include <increlora/models/token_spans.hpp>
#include <increlora/tasks/squad.hpp>

#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

namespace increlora::apps::qa_app {

/// What the windows need from a tokenizer (WordPiece or SentencePiece): pieces with byte offsets, and the ids of
/// the special tokens of "[CLS] a [SEP] b [SEP]" (the layout of BERT and of DeBERTa-v2/v3).
struct QaTokenizer {
  std::function<models::TokenSpans(const std::string&)> encode_with_offsets;
  int64_t cls_id = 0, sep_id = 0, pad_id = 0;
};

struct WindowOptions {
  int64_t max_seq_length = 384;
  int64_t doc_stride = 128;     ///< context tokens shared by consecutive windows (run_qa's --doc_stride)
  int64_t max_query_length = 64;  ///< longer questions keep their first tokens (run_qa fails on them instead)
};

/// One window of one example.
struct Feature {
  size_t example = 0;  ///< index of its example
  std::vector<int64_t> input_ids, token_type_ids;
  /// Per token: the context bytes [first, second) it covers, or {-1, -1} for question and special tokens.
  std::vector<std::pair<int64_t, int64_t>> context_offsets;
  int64_t start_position = 0, end_position = 0;  ///< training target (0, 0: the [CLS] token, no answer here)
};

/// The windows of `examples`, in order (every window of example i before those of i + 1). With `training`,
/// each window gets the token span of the example's first answer (run_qa trains on one answer).
std::vector<Feature> make_features(const std::vector<squad::SquadExample>& examples, const QaTokenizer& tokenizer,
                                   const WindowOptions& options, bool training, const std::string& what);

/// {input_ids, attention_mask, token_type_ids, start_positions, end_positions} of the features `idx` on `device`,
/// padded to the longest (or to `pad_to` when longer, one shape for CUDA graphs).
std::vector<torch::Tensor> collate(const std::vector<Feature>& features, const std::vector<size_t>& idx,
                                   int64_t pad_id, const torch::Device& device, int64_t pad_to = 0);

/// Splits SQuAD examples into training and validation by paragraph: of the paragraphs in file order, about
/// `validation_percent` per cent, spread evenly through the file, go to validation with all their questions, so
/// that no context is in both. For a single file such as ../shared/data/qa/squad_v2_sample.json.
std::pair<std::vector<squad::SquadExample>, std::vector<squad::SquadExample>> split_by_paragraph(
    const std::vector<squad::SquadExample>& examples, double validation_percent);

}  // namespace increlora::apps::qa_app
