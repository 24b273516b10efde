#pragma once
/// \file
/// Token ids with the part of the input text each token came from: what extractive question answering needs
/// to turn a predicted token span back into the answer's characters. Every tokenizer of models/ gives it.

#include <cstdint>
#include <utility>
#include <vector>

namespace increlora::models {

/// The tokens of one text (no special tokens). `offsets[i]` is the half-open byte range [first, second) of the
/// UTF-8 input that token i covers (a token that normalisation produced from several bytes covers all of them;
/// every token covers at least one byte of the text).
struct TokenSpans {
  std::vector<int64_t> ids;
  std::vector<std::pair<int64_t, int64_t>> offsets;
};

}  // namespace increlora::models
