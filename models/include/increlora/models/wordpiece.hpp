#pragma once
/// \file
/// A WordPiece tokenizer that gives the same token ids as Hugging Face's `BertTokenizer` (uncased or cased
/// BERT vocabularies: BERT, MiniLM, ...), read from a checkpoint's `vocab.txt` and `tokenizer_config.json`.
///
/// The pipeline is BertTokenizer's: special tokens in the text are kept whole; the rest is cleaned (control
/// characters dropped, whitespace turned into spaces), CJK ideographs are surrounded by spaces, accents are
/// stripped (NFD minus nonspacing marks) and the text is lowercased when the vocabulary is uncased; it is
/// split on whitespace and punctuation; each word is cut greedily into the longest vocabulary pieces
/// ("##" marks a continuation), or becomes [UNK] when it cannot be.

#include <increlora/models/token_spans.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

namespace increlora::bert {

/// Settings of the tokenizer, named as in Hugging Face's tokenizer_config.json.
struct WordPieceOptions {
  /// Lowercase the text (uncased vocabularies).
  bool do_lower_case = true;
  /// Strip accents; unset follows do_lower_case, as BertTokenizer does.
  std::optional<bool> strip_accents;
  /// Put spaces around CJK ideographs so that each is a word.
  bool tokenize_chinese_chars = true;
  /// Words longer than this (in characters) become [UNK].
  int64_t max_input_chars_per_word = 100;
  std::string unk_token = "[UNK]";
  std::string cls_token = "[CLS]";
  std::string sep_token = "[SEP]";
  std::string pad_token = "[PAD]";
  std::string mask_token = "[MASK]";
};

/// One encoded input: [CLS] a [SEP] (b [SEP]), with segment ids 0 for the first part and 1 for the second.
struct Encoding {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> token_type_ids;
};

class WordPieceTokenizer {
 public:
  /// Reads `vocab_file` (one token a line; the line number is the id).
  WordPieceTokenizer(const std::string& vocab_file, WordPieceOptions options = {});
  /// Reads `<dir>/vocab.txt` and the settings in `<dir>/tokenizer_config.json` when that file exists.
  static WordPieceTokenizer from_directory(const std::string& dir);

  /// The word pieces of `text`, as strings.
  std::vector<std::string> tokenize(const std::string& text) const;
  /// The ids of `text`'s word pieces, without special tokens.
  std::vector<int64_t> encode_text(const std::string& text) const;
  /// The same ids with the bytes of `text` each piece came from, as the fast BertTokenizer's offset mapping
  /// (in bytes, not characters): a "##" piece covers its own characters, an [UNK] word the whole word, an
  /// accent-stripped or lowercased character the input character.
  models::TokenSpans encode_with_offsets(const std::string& text) const;
  /// [CLS] a [SEP] or [CLS] a [SEP] b [SEP], truncated to `max_length` tokens as BertTokenizer's
  /// "longest_first" does (the tokenizers library's rule: the shorter part keeps at most half of the room left by
  /// the special tokens, the longer part the rest; the first part counts as the shorter on a tie).
  /// max_length <= 0: no truncation.
  Encoding encode(const std::string& text_a, const std::optional<std::string>& text_b = std::nullopt,
                  int64_t max_length = 0) const;
  /// The same from pieces already looked up with `encode_text`.
  Encoding build_inputs(std::vector<int64_t> ids_a, std::optional<std::vector<int64_t>> ids_b,
                        int64_t max_length) const;

  /// The id of `token`, or the [UNK] id.
  int64_t token_to_id(const std::string& token) const;
  const std::string& id_to_token(int64_t id) const;
  int64_t vocab_size() const { return static_cast<int64_t>(id_to_token_.size()); }
  int64_t cls_id() const { return cls_id_; }
  int64_t sep_id() const { return sep_id_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t unk_id() const { return unk_id_; }
  const WordPieceOptions& options() const { return options_; }

 private:
  using Offset = std::pair<int64_t, int64_t>;
  /// Cuts `word` into pieces; `ranges` (when given) gets each piece's [first, last) characters in the word.
  void wordpiece(const std::u32string& word, std::vector<std::string>& out,
                 std::vector<std::pair<size_t, size_t>>* ranges) const;
  /// Pieces of text[begin, end) (no special tokens in it); `offsets` gets their byte ranges in `text`.
  void tokenize_plain(const std::string& text, size_t begin, size_t end, std::vector<std::string>& out,
                      std::vector<Offset>* offsets) const;
  void tokenize_into(const std::string& text, std::vector<std::string>& out, std::vector<Offset>* offsets) const;

  WordPieceOptions options_;
  std::unordered_map<std::string, int64_t> vocab_;
  std::vector<std::string> id_to_token_;
  std::vector<std::string> special_tokens_;
  int64_t cls_id_ = 0, sep_id_ = 0, pad_id_ = 0, unk_id_ = 0;
};

/// [CLS] a [SEP] (b [SEP]) with token_type_ids 0 for the first part and 1 for the second, truncated to
/// `max_length` tokens as Hugging Face's "longest_first" in the tokenizers library (what transformers 5's
/// tokenizers all run): the shorter part keeps at most half the room left by the special tokens, the longer part
/// the rest, the first part counting as the shorter on a tie; a single text keeps its first max_length - 2
/// pieces. max_length <= 0: no truncation. The layout of BERT's and DeBERTa-v2/v3's inputs.
Encoding build_pair_inputs(int64_t cls_id, int64_t sep_id, std::vector<int64_t> ids_a,
                           std::optional<std::vector<int64_t>> ids_b, int64_t max_length);

namespace detail {
/// UTF-8 → code points; an invalid byte becomes U+FFFD (which the cleaning step then drops).
std::u32string utf8_decode(const std::string& text);
/// Decodes the code point starting at byte `i` into `c` and returns its length in bytes (1 for an invalid byte,
/// which becomes U+FFFD).
size_t utf8_next(const std::string& text, size_t i, char32_t& c);
std::string utf8_encode(const std::u32string& text);
/// BertNormalizer: clean, space around CJK, strip accents, lowercase.
std::u32string normalize(const std::u32string& text, bool lowercase, bool strip_accents, bool chinese_chars);
/// BertNormalizer on one code point, appended to `out` (the normaliser works character by character).
void normalize_char(char32_t c, bool lowercase, bool strip_accents, bool chinese_chars, std::u32string& out);
}  // namespace detail

}  // namespace increlora::bert
