#pragma once
/// \file
/// The DeBERTa-v2/v3 tokenizer: SentencePiece (unigram) on a checkpoint's `spm.model`, giving the ids of
/// Hugging Face's sentencepiece-based `DebertaV2Tokenizer` (transformers 4's slow tokenizer, whose pieces the
/// fast one converted by `convert_slow_tokenizer.DebertaV2Converter` reproduces on ordinary text).
///
/// The pipeline is that tokenizer's: special and added tokens written in the text ("[SEP]", "[MASK]") are kept
/// whole and the text is split around them; each remaining chunk is lowercased (do_lower_case; Python's
/// `str.lower`), cut into words at every punctuation character (split_by_punct; BERT's definition of
/// punctuation), and each chunk or word is normalised by SentencePiece with the model's own rules (nmt_nfkc for
/// DeBERTa-v3: NFKC, whitespace collapsed, a "▁" in front) and cut into the model's pieces by the unigram
/// Viterbi search of sentencepiece >= 0.1.99 and of the tokenizers library. (The search is done here, not by
/// the library: Debian 12's libsentencepiece 0.1.97 breaks ties between cuts of equal score the other way and
/// gives other ids on e.g. "3000".) Consecutive characters no piece covers become one [UNK].
/// SentencePiece itself stays inside the library: this header does not include it.
///
/// Not handled: models with byte fallback or user-defined symbols (DeBERTa's have neither; a user-defined symbol
/// would be scored as an ordinary piece), and Python's context rule that lowercases a final capital sigma to "ς"
/// (do_lower_case only; DeBERTa-v3 does not lowercase).
///
/// Example:
/// \code
///   auto tok = increlora::deberta::DebertaV2Tokenizer::from_directory("deberta-v3-base");
///   auto enc = tok.encode("A question?", std::string("The context."), 384);  // [CLS] a [SEP] b [SEP]
/// \endcode

#include <increlora/models/token_spans.hpp>
#include <increlora/models/wordpiece.hpp>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace increlora::deberta {

/// The return type of `DebertaV2Tokenizer::encode`: input_ids and token_type_ids, as for BERT.
using Encoding = bert::Encoding;

/// Settings of the tokenizer, named as in Hugging Face's tokenizer_config.json.
struct DebertaV2Options {
  /// Lowercase the text before SentencePiece (false for DeBERTa-v3).
  bool do_lower_case = false;
  /// Encode each punctuation character and each run between them on its own (false for DeBERTa-v3).
  bool split_by_punct = false;
  std::string cls_token = "[CLS]";
  std::string sep_token = "[SEP]";
  std::string pad_token = "[PAD]";
  std::string unk_token = "[UNK]";
  std::string mask_token = "[MASK]";
  /// Tokens beyond the SentencePiece vocabulary with their ids (added_tokens.json, or tokenizer_config.json's
  /// added_tokens_decoder): DeBERTa-v3 adds "[MASK]" as 128000. A special token that is neither here nor in the
  /// model gets the next free id, as transformers appends it.
  std::map<std::string, int64_t> added_tokens;
};

class DebertaV2Tokenizer {
 public:
  /// Reads the SentencePiece model `model_file` (DeBERTa's spm.model). Throws c10::Error naming the file when it
  /// is missing or is not a SentencePiece model.
  explicit DebertaV2Tokenizer(const std::string& model_file, DebertaV2Options options = {});
  /// Reads `<dir>/spm.model` with the settings and tokens of `<dir>/tokenizer_config.json`,
  /// `<dir>/special_tokens_map.json` and `<dir>/added_tokens.json`, each where present.
  static DebertaV2Tokenizer from_directory(const std::string& dir);

  /// The pieces of `text`, as strings (an unknown piece as the unk token).
  std::vector<std::string> tokenize(const std::string& text) const;
  /// The ids of `text`'s pieces, without special tokens.
  std::vector<int64_t> encode_text(const std::string& text) const;
  /// The same ids with the bytes of `text` each piece came from, as the fast tokenizer's offset mapping (in bytes,
  /// not characters): a piece "▁word" covers the one whitespace character its "▁" stands for and the word (a run
  /// of collapsed whitespace gives only its last character, as the fast tokenizer does); the "▁" SentencePiece
  /// puts in front of a chunk covers nothing in the text, so a piece that is only that "▁" takes the first
  /// character of the piece after it. A character that normalisation expands into several pieces ("ﬁ" → "f",
  /// "i") is covered by each of them. One deliberate difference: a character composed from several input
  /// characters ("e" + U+0301 → "é") covers all of them, where the fast tokenizer gives only the first.
  models::TokenSpans encode_with_offsets(const std::string& text) const;
  /// [CLS] a [SEP] or [CLS] a [SEP] b [SEP] with token_type_ids 0 for [CLS] a [SEP] and 1 for b [SEP], truncated
  /// to `max_length` tokens by `build_inputs`. max_length <= 0: no truncation.
  Encoding encode(const std::string& text_a, const std::optional<std::string>& text_b = std::nullopt,
                  int64_t max_length = 0) const;
  /// The same from pieces already looked up with `encode_text`.
  Encoding build_inputs(std::vector<int64_t> ids_a, std::optional<std::vector<int64_t>> ids_b,
                        int64_t max_length) const;

  /// The id of `token` (a SentencePiece piece, a special or an added token), or the unk id.
  int64_t token_to_id(const std::string& token) const;
  /// The piece or token of `id`; throws for an id outside [0, vocab_size()).
  std::string id_to_token(int64_t id) const;
  /// How many ids the tokenizer can give: the SentencePiece pieces and the added tokens (Hugging Face's
  /// `len(tokenizer)`, 128001 for DeBERTa-v3; the model's embedding table may be larger).
  int64_t vocab_size() const;
  int64_t cls_id() const { return cls_id_; }
  int64_t sep_id() const { return sep_id_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t unk_id() const { return unk_id_; }
  int64_t mask_id() const { return mask_id_; }
  const DebertaV2Options& options() const { return options_; }

 private:
  struct Impl;
  using Offset = std::pair<int64_t, int64_t>;
  /// Pieces of text[begin, end) (no special tokens in it): ids, and byte ranges in `text` when `offsets` is given.
  void encode_plain(const std::string& text, size_t begin, size_t end, std::vector<int64_t>& ids,
                    std::vector<Offset>* offsets) const;
  void encode_into(const std::string& text, std::vector<int64_t>& ids, std::vector<Offset>* offsets) const;

  std::shared_ptr<const Impl> impl_;  // the loaded SentencePiece model, shared by copies (read-only)
  DebertaV2Options options_;
  /// Special and added tokens that are kept whole in the text, longest first.
  std::vector<std::pair<std::string, int64_t>> whole_tokens_;
  int64_t cls_id_ = 0, sep_id_ = 0, pad_id_ = 0, unk_id_ = 0, mask_id_ = 0;
};

}  // namespace increlora::deberta
