#include <increlora/models/wordpiece.hpp>

#include <increlora/errors.hpp>

#include <nlohmann/json.hpp>

#include "unicode.hpp"

#include <algorithm>
#include <fstream>
#include <iterator>

namespace increlora::bert {
namespace {

using models::detail::find_mapping;
using models::detail::in_ranges;
using models::detail::kControlRanges;
using models::detail::kDecomposition;
using models::detail::kDecomposition_pool;
using models::detail::kNonspacingMarkRanges;
using models::detail::kWhitespaceRanges;

// As BertTokenizer: tab, newline and carriage return count as whitespace, not as control characters.
bool is_whitespace(char32_t c) { return c == U' ' || c == U'\t' || c == U'\n' || c == U'\r' || in_ranges(kWhitespaceRanges, c); }
bool is_control(char32_t c) {
  if (c == U'\t' || c == U'\n' || c == U'\r') return false;
  return in_ranges(kControlRanges, c);
}
// ASCII symbols such as "$" and "^" are not Unicode punctuation, but BERT splits them off too.
bool is_punctuation(char32_t c) { return models::detail::is_bert_punctuation(c); }
bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B820 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

// Canonical decomposition of one code point; Hangul syllables decompose by formula (Unicode ch. 3.12).
void decompose(char32_t c, std::u32string& out) {
  constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
  constexpr char32_t kVCount = 21, kTCount = 28, kNCount = kVCount * kTCount, kSCount = 11172;
  if (c >= kSBase && c < kSBase + kSCount) {
    const char32_t s = c - kSBase;
    out.push_back(kLBase + s / kNCount);
    out.push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out.push_back(kTBase + s % kTCount);
    return;
  }
  if (const auto* m = find_mapping(kDecomposition, c)) {
    out.append(kDecomposition_pool + m->offset, m->length);
  } else {
    out.push_back(c);
  }
}

void lowercase(char32_t c, std::u32string& out) { models::detail::append_lowercase(c, out); }

}  // namespace

namespace detail {

size_t utf8_next(const std::string& text, size_t i, char32_t& c) { return models::detail::utf8_next(text, i, c); }

std::u32string utf8_decode(const std::string& text) {
  std::u32string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size();) {
    char32_t c;
    i += utf8_next(text, i, c);
    out.push_back(c);
  }
  return out;
}

std::string utf8_encode(const std::u32string& text) {
  std::string out;
  out.reserve(text.size());
  for (char32_t c : text) models::detail::append_utf8(c, out);
  return out;
}

void normalize_char(char32_t c, bool lower, bool strip_accents, bool chinese_chars, std::u32string& out) {
  // Every step of BertNormalizer maps one code point to zero or more on its own, so normalising character by
  // character equals normalising the whole text, and each output character knows the input one it came from.
  if (c < 0x80) {  // ASCII: no accents, no CJK; the common case
    if (c == U' ' || c == U'\t' || c == U'\n' || c == U'\r') {
      out.push_back(U' ');
    } else if (c >= 0x20 && c != 0x7F) {
      out.push_back(lower && c >= U'A' && c <= U'Z' ? c + 32 : c);
    }
    return;
  }
  if (c == 0xFFFD || is_control(c)) return;
  char32_t cleaned[3];
  size_t count = 0;
  if (is_whitespace(c)) {
    cleaned[count++] = U' ';
  } else if (chinese_chars && is_chinese_char(c)) {
    cleaned[0] = U' ', cleaned[1] = c, cleaned[2] = U' ';
    count = 3;
  } else {
    cleaned[count++] = c;
  }
  std::u32string decomposed;
  for (size_t i = 0; i < count; ++i) {
    if (!strip_accents) {
      decomposed.push_back(cleaned[i]);
      continue;
    }
    std::u32string parts;
    decompose(cleaned[i], parts);
    for (char32_t p : parts) {
      if (!in_ranges(kNonspacingMarkRanges, p)) decomposed.push_back(p);
    }
  }
  if (!lower) {
    out += decomposed;
    return;
  }
  for (char32_t d : decomposed) lowercase(d, out);
}

std::u32string normalize(const std::u32string& text, bool lower, bool strip_accents, bool chinese_chars) {
  std::u32string out;
  out.reserve(text.size());
  for (char32_t c : text) normalize_char(c, lower, strip_accents, chinese_chars, out);
  return out;
}

}  // namespace detail

WordPieceTokenizer::WordPieceTokenizer(const std::string& vocab_file, WordPieceOptions options)
    : options_(std::move(options)) {
  std::ifstream in(vocab_file, std::ios::binary);
  INCRELORA_CHECK(in.good(), "WordPieceTokenizer: cannot open the vocabulary file '", vocab_file,
                  "'; pass a BERT checkpoint's vocab.txt.");
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty() && line.back() == '\r') line.pop_back();
    // A repeated token keeps its first id, as the line number of its first occurrence.
    vocab_.emplace(line, static_cast<int64_t>(id_to_token_.size()));
    id_to_token_.push_back(line);
  }
  INCRELORA_CHECK(!id_to_token_.empty(), "WordPieceTokenizer: the vocabulary file '", vocab_file, "' is empty.");
  auto required = [&](const std::string& token, const char* what) {
    const auto it = vocab_.find(token);
    INCRELORA_CHECK(it != vocab_.end(), "WordPieceTokenizer: the vocabulary '", vocab_file, "' has no ", what,
                    " token '", token, "'; set WordPieceOptions::", what, "_token to the one it uses.");
    return it->second;
  };
  unk_id_ = required(options_.unk_token, "unk");
  cls_id_ = required(options_.cls_token, "cls");
  sep_id_ = required(options_.sep_token, "sep");
  pad_id_ = required(options_.pad_token, "pad");
  special_tokens_ = {options_.unk_token, options_.cls_token, options_.sep_token, options_.pad_token};
  if (vocab_.count(options_.mask_token)) special_tokens_.push_back(options_.mask_token);
}

WordPieceTokenizer WordPieceTokenizer::from_directory(const std::string& dir) {
  WordPieceOptions options;
  std::ifstream config(dir + "/tokenizer_config.json");
  if (config.good()) {
    nlohmann::json j;
    try {
      config >> j;
    } catch (const nlohmann::json::exception& e) {
      INCRELORA_CHECK(false, "WordPieceTokenizer: ", dir, "/tokenizer_config.json is not valid JSON (", e.what(),
                      ").");
    }
    auto read_bool = [&](const char* key, bool& into) {
      if (j.contains(key) && j[key].is_boolean()) into = j[key].get<bool>();
    };
    read_bool("do_lower_case", options.do_lower_case);
    read_bool("tokenize_chinese_chars", options.tokenize_chinese_chars);
    if (j.contains("strip_accents") && j["strip_accents"].is_boolean()) options.strip_accents = j["strip_accents"].get<bool>();
    for (auto [key, field] : {std::pair{"unk_token", &options.unk_token}, std::pair{"cls_token", &options.cls_token},
                              std::pair{"sep_token", &options.sep_token}, std::pair{"pad_token", &options.pad_token},
                              std::pair{"mask_token", &options.mask_token}}) {
      if (j.contains(key) && j[key].is_string()) *field = j[key].get<std::string>();
    }
  }
  return WordPieceTokenizer(dir + "/vocab.txt", options);
}

int64_t WordPieceTokenizer::token_to_id(const std::string& token) const {
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? unk_id_ : it->second;
}

const std::string& WordPieceTokenizer::id_to_token(int64_t id) const {
  INCRELORA_CHECK(id >= 0 && id < vocab_size(), "WordPieceTokenizer::id_to_token: id ", id,
                  " is outside the vocabulary [0, ", vocab_size(), ").");
  return id_to_token_[static_cast<size_t>(id)];
}

void WordPieceTokenizer::wordpiece(const std::u32string& word, std::vector<std::string>& out,
                                   std::vector<std::pair<size_t, size_t>>* ranges) const {
  if (static_cast<int64_t>(word.size()) > options_.max_input_chars_per_word) {
    out.push_back(options_.unk_token);
    if (ranges) ranges->emplace_back(0, word.size());
    return;
  }
  std::vector<std::string> pieces;
  std::vector<std::pair<size_t, size_t>> piece_ranges;
  size_t start = 0;
  while (start < word.size()) {
    size_t end = word.size();
    std::string found;
    while (start < end) {
      std::string candidate = detail::utf8_encode(word.substr(start, end - start));
      if (start > 0) candidate = "##" + candidate;
      if (vocab_.count(candidate)) {
        found = std::move(candidate);
        break;
      }
      --end;
    }
    if (found.empty()) {
      out.push_back(options_.unk_token);
      if (ranges) ranges->emplace_back(0, word.size());
      return;
    }
    pieces.push_back(std::move(found));
    piece_ranges.emplace_back(start, end);
    start = end;
  }
  for (auto& p : pieces) out.push_back(std::move(p));
  if (ranges) ranges->insert(ranges->end(), piece_ranges.begin(), piece_ranges.end());
}

void WordPieceTokenizer::tokenize_plain(const std::string& text, size_t begin, size_t end,
                                        std::vector<std::string>& out, std::vector<Offset>* offsets) const {
  const bool strip = options_.strip_accents.value_or(options_.do_lower_case);
  // The normalised characters and, for each, the input bytes of the character it came from.
  std::u32string normalized;
  std::vector<Offset> source;
  for (size_t i = begin; i < end;) {
    char32_t c;
    const size_t len = detail::utf8_next(text, i, c);
    detail::normalize_char(c, options_.do_lower_case, strip, options_.tokenize_chinese_chars, normalized);
    if (offsets) source.resize(normalized.size(), Offset(static_cast<int64_t>(i), static_cast<int64_t>(i + len)));
    i += len;
  }
  std::u32string word;
  size_t word_start = 0;  // index of the word's first character in `normalized`
  std::vector<std::pair<size_t, size_t>> ranges;
  auto flush = [&] {
    if (!word.empty()) {
      ranges.clear();
      wordpiece(word, out, offsets ? &ranges : nullptr);
      if (offsets) {
        for (const auto& [first, last] : ranges) {
          offsets->emplace_back(source[word_start + first].first, source[word_start + last - 1].second);
        }
      }
    }
    word.clear();
  };
  for (size_t k = 0; k < normalized.size(); ++k) {
    const char32_t c = normalized[k];
    if (is_whitespace(c)) {
      flush();
    } else if (is_punctuation(c)) {
      flush();
      word_start = k;
      word.push_back(c);
      flush();
    } else {
      if (word.empty()) word_start = k;
      word.push_back(c);
    }
  }
  flush();
}

void WordPieceTokenizer::tokenize_into(const std::string& text, std::vector<std::string>& out,
                                       std::vector<Offset>* offsets) const {
  // Special tokens written in the text ("[SEP]") stay whole, as in BertTokenizer; the rest is split around them.
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t best = std::string::npos;
    const std::string* which = nullptr;
    for (const auto& special : special_tokens_) {
      const size_t at = text.find(special, pos);
      if (at < best) best = at, which = &special;
    }
    const size_t stop = best == std::string::npos ? text.size() : best;
    tokenize_plain(text, pos, stop, out, offsets);
    if (best == std::string::npos) break;
    out.push_back(*which);
    if (offsets) offsets->emplace_back(static_cast<int64_t>(best), static_cast<int64_t>(best + which->size()));
    pos = best + which->size();
  }
}

std::vector<std::string> WordPieceTokenizer::tokenize(const std::string& text) const {
  std::vector<std::string> out;
  tokenize_into(text, out, nullptr);
  return out;
}

models::TokenSpans WordPieceTokenizer::encode_with_offsets(const std::string& text) const {
  std::vector<std::string> pieces;
  models::TokenSpans spans;
  tokenize_into(text, pieces, &spans.offsets);
  spans.ids.reserve(pieces.size());
  for (const auto& piece : pieces) spans.ids.push_back(token_to_id(piece));
  return spans;
}

std::vector<int64_t> WordPieceTokenizer::encode_text(const std::string& text) const {
  std::vector<int64_t> ids;
  for (const auto& piece : tokenize(text)) ids.push_back(token_to_id(piece));
  return ids;
}

Encoding build_pair_inputs(int64_t cls_id, int64_t sep_id, std::vector<int64_t> a,
                           std::optional<std::vector<int64_t>> b, int64_t max_length) {
  const int64_t specials = b ? 3 : 2;
  if (max_length > 0) {
    INCRELORA_CHECK(max_length >= specials, "encode: max_length (", max_length, ") leaves no room for the ",
                    specials, " special tokens; pass at least ", specials + 1, ".");
    const auto budget = static_cast<size_t>(max_length - specials);
    if (b) {
      if (a.size() + b->size() > budget) {
        // The tokenizers library's longest_first (what BertTokenizer runs, fast as in transformers 5 and
        // run_glue's default): the shorter part keeps at most half the budget, the longer one the rest; a tie
        // counts the first part as the shorter one.
        const bool a_shorter = a.size() <= b->size();
        auto& shorter = a_shorter ? a : *b;
        auto& longer = a_shorter ? *b : a;
        shorter.resize(std::min(shorter.size(), budget / 2));
        longer.resize(std::min(longer.size(), budget - shorter.size()));
      }
    } else if (a.size() > budget) {
      a.resize(budget);
    }
  }
  Encoding e;
  e.input_ids.reserve(a.size() + (b ? b->size() : 0) + static_cast<size_t>(specials));
  e.input_ids.push_back(cls_id);
  e.input_ids.insert(e.input_ids.end(), a.begin(), a.end());
  e.input_ids.push_back(sep_id);
  e.token_type_ids.assign(e.input_ids.size(), 0);
  if (b) {
    e.input_ids.insert(e.input_ids.end(), b->begin(), b->end());
    e.input_ids.push_back(sep_id);
    e.token_type_ids.resize(e.input_ids.size(), 1);
  }
  return e;
}

Encoding WordPieceTokenizer::build_inputs(std::vector<int64_t> a, std::optional<std::vector<int64_t>> b,
                                          int64_t max_length) const {
  return build_pair_inputs(cls_id_, sep_id_, std::move(a), std::move(b), max_length);
}

Encoding WordPieceTokenizer::encode(const std::string& text_a, const std::optional<std::string>& text_b,
                                    int64_t max_length) const {
  std::optional<std::vector<int64_t>> b;
  if (text_b) b = encode_text(*text_b);
  return build_inputs(encode_text(text_a), std::move(b), max_length);
}

}  // namespace increlora::bert
