#pragma once
/// \file
/// BART's tokenizer: the byte-level BPE of GPT-2 and RoBERTa, giving the ids of Hugging Face's `BartTokenizer`
/// (in transformers 5 an alias of `RobertaTokenizer`, run by the tokenizers library) on a checkpoint's
/// vocab.json + merges.txt (or its tokenizer.json).
///
/// The pipeline is that tokenizer's: the added tokens written in the text ("<mask>", "</s>", ...) are kept whole
/// and the text is split around them (leftmost, longest first; a token flagged lstrip / rstrip also swallows the
/// whitespace on that side, as facebook/bart-large's tokenizer.json flags "<mask>"); each remaining piece is
/// cut by GPT-2's pre-tokenizer regex
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+` (implemented over code points,
/// \s being the Unicode White_Space property as in tokenizers' regex engine), each word's UTF-8 bytes are mapped
/// to printable characters by GPT-2's bytes_to_unicode table and merged by BPE (lowest merge rank first, the
/// leftmost pair on a tie), and `encode` frames the pieces as `<s> ... </s>`.
///
/// Decisions where transformers does something a C++ caller would not want, or that Python cannot meet:
/// * Invalid UTF-8 in the text (a Python str cannot hold it) throws a c10::Error naming the byte offset.
/// * `decode` throws for an id outside the vocabulary (transformers drops it silently).
/// * `encode` with max_length 1 throws (transformers warns and returns the untruncated ids).
/// * transformers 5 ignores clean_up_tokenization_spaces for BPE tokenizers (it would strip the spaces before
///   punctuation); `decode` never cleans up either, whatever tokenizer_config.json says.
/// * The letter / number classes come from Python 3.11's Unicode 14 database (models/tools/gen_unicode_tables.py);
///   tokenizers' Oniguruma knows Unicode 16, so only characters assigned since Unicode 14 are classed otherwise.
///
/// Example:
/// \code
///   auto tok = increlora::bart::BartTokenizer::from_directory("facebook-bart-large");
///   auto ids = tok.encode("The article to summarise.", 1024);  // <s> ... </s>
///   std::string text = tok.decode(ids);                        // "The article to summarise."
/// \endcode

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace increlora::bart {

/// A token kept whole when it appears in the text, as an entry of tokenizer.json's "added_tokens" (Hugging Face's
/// `AddedToken`).
struct AddedToken {
  std::string content;
  int64_t id = 0;
  /// Special tokens are what `decode(ids, /*skip_special_tokens=*/true)` leaves out.
  bool special = true;
  /// Also take the whitespace left / right of the token in the text (BART's "<mask>" has lstrip).
  bool lstrip = false;
  bool rstrip = false;
};

/// Settings of the tokenizer, named as in Hugging Face's tokenizer_config.json.
struct BartTokenizerOptions {
  std::string bos_token = "<s>";
  std::string eos_token = "</s>";
  std::string pad_token = "<pad>";
  std::string unk_token = "<unk>";
  std::string mask_token = "<mask>";
  /// Put a space in front of each piece of text that does not start with one, so that the first word is cut as
  /// every other word (false for BART: the model was trained without).
  bool add_prefix_space = false;
  /// The tokens kept whole in the text with their flags (tokenizer.json's added_tokens). The five special tokens
  /// above are added when missing here, with the id of the vocabulary (or the next free id, as transformers
  /// appends a token the vocabulary lacks) and no lstrip / rstrip, as transformers 5 sets them up from
  /// vocab.json alone.
  std::vector<AddedToken> added_tokens;
};

class BartTokenizer {
 public:
  /// Reads GPT-2's `vocab_file` (vocab.json: {token: id}) and `merges_file` (merges.txt: one "a b" pair per line
  /// by rank, an optional "#version" first line). Throws c10::Error naming the file when one is missing, is not
  /// valid, or a merge uses a token the vocabulary lacks.
  BartTokenizer(const std::string& vocab_file, const std::string& merges_file, BartTokenizerOptions options = {});
  /// Reads `<dir>/vocab.json` and `<dir>/merges.txt`, or `<dir>/tokenizer.json` when those two are absent, with
  /// the added tokens of `<dir>/tokenizer.json` (or tokenizer_config.json's added_tokens_decoder) and the special
  /// tokens and add_prefix_space of `<dir>/tokenizer_config.json` and `<dir>/special_tokens_map.json`, each where
  /// present.
  static BartTokenizer from_directory(const std::string& dir);

  /// `<s>` + the ids of `text` + `</s>`, as transformers' `tokenizer(text)["input_ids"]`; with max_length >= 2 only
  /// the first max_length - 2 ids of the text are kept (`truncation=True`: `</s>` always ends it). max_length 0:
  /// no truncation. Throws c10::Error for invalid UTF-8 (naming the byte offset) and for max_length 1 or below 0.
  std::vector<int64_t> encode(const std::string& text, int64_t max_length = 0) const;
  /// The ids of `text` without `<s>` and `</s>` (added tokens written in the text included), as transformers'
  /// `tokenizer(text, add_special_tokens=False)`.
  std::vector<int64_t> tokenize(const std::string& text) const;
  /// The text of `ids`, as transformers' `decode(ids, skip_special_tokens=...)`: the bytes the BPE tokens stand
  /// for, read as UTF-8 with each invalid sequence replaced by U+FFFD (e.g. ids cut inside a character); an added
  /// token is written as it is, and left out when it is special and `skip_special_tokens`. Throws c10::Error for an
  /// id outside [0, vocab_size()) or one no token has.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const;

  /// The id of `token` (a vocabulary entry in its byte-level spelling, "Ġthe", or an added token), or the unk id.
  int64_t token_to_id(const std::string& token) const;
  /// The token of `id` in its byte-level spelling; throws for an id outside the vocabulary.
  std::string id_to_token(int64_t id) const;
  /// How many ids the tokenizer can give: one more than the largest id (Hugging Face's `len(tokenizer)`, 50265
  /// for BART).
  int64_t vocab_size() const;
  int64_t bos_id() const { return bos_id_; }
  int64_t eos_id() const { return eos_id_; }
  int64_t pad_id() const { return pad_id_; }
  int64_t unk_id() const { return unk_id_; }
  int64_t mask_id() const { return mask_id_; }
  const BartTokenizerOptions& options() const { return options_; }

 private:
  struct Impl;
  BartTokenizer(std::shared_ptr<Impl> impl, BartTokenizerOptions options);
  void finish_setup();
  /// BPE ids of text[begin, end), a piece without added tokens, appended to `ids`.
  void encode_plain(const std::string& text, size_t begin, size_t end, std::vector<int64_t>& ids) const;

  std::shared_ptr<Impl> impl_;  // vocabulary, merges and the word cache, shared by copies
  BartTokenizerOptions options_;
  int64_t bos_id_ = 0, eos_id_ = 0, pad_id_ = 0, unk_id_ = 0, mask_id_ = 0;
};

}  // namespace increlora::bart
