#include <increlora/models/deberta_tokenizer.hpp>

#include <increlora/errors.hpp>

#include <nlohmann/json.hpp>
#include <sentencepiece_processor.h>

#include "unicode.hpp"

#include <algorithm>
#include <fstream>
#include <string_view>
#include <tuple>
#include <unordered_map>

namespace increlora::deberta {
namespace {

// transformers' SPMTokenizer splits at every non-alphanumeric ASCII character and Unicode category P* (BERT's
// rule), and lowercases with Python's str.lower (without the context rule for a final capital sigma).
bool is_punctuation(char32_t c) { return models::detail::is_bert_punctuation(c); }
void lowercase(char32_t c, std::u32string& out) { models::detail::append_lowercase(c, out); }

constexpr std::string_view kSpaceMark = "\xE2\x96\x81";  // "▁", SentencePiece's whitespace

bool starts_with(const std::string& s, std::string_view prefix) { return s.compare(0, prefix.size(), prefix) == 0; }

bool file_exists(const std::string& path) { return std::ifstream(path, std::ios::binary).good(); }

nlohmann::json read_json_file(const std::string& path) {
  std::ifstream in(path);
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    INCRELORA_CHECK(false, "DebertaV2Tokenizer: ", path, " is not valid JSON (", e.what(), ").");
  }
  return j;
}

// A token in Hugging Face's files is a string or a serialised AddedToken {"content": ...}.
std::optional<std::string> token_content(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

}  // namespace

struct DebertaV2Tokenizer::Impl {
  sentencepiece::SentencePieceProcessor sp;
  std::string file;
  std::map<int64_t, std::string> added_by_id;
  int64_t size = 0;  // every id is below this
  /// The pieces a text can be cut into (not control, unknown, unused or byte pieces), by their text.
  std::unordered_map<std::string, int> pieces;
  size_t longest_piece = 0;  // in bytes
  float unk_score = 0;       // lowest piece score minus SentencePiece's penalty of 10

  void index_pieces() {
    float min_score = 0;
    bool any = false;
    for (int id = 0; id < sp.GetPieceSize(); ++id) {
      if (sp.IsControl(id) || sp.IsUnknown(id) || sp.IsUnused(id) || sp.IsByte(id)) continue;
      const auto& piece = sp.IdToPiece(id);
      pieces.emplace(piece, id);
      longest_piece = std::max(longest_piece, piece.size());
      min_score = any ? std::min(min_score, sp.GetScore(id)) : sp.GetScore(id);
      any = true;
    }
    unk_score = min_score - 10.0f;
  }

  /// The best-scoring cut of the normalised text `norm` into pieces: (id or -1 for unknown, [begin, end) bytes),
  /// consecutive unknown characters fused into one. This is the Viterbi search of sentencepiece >= 0.1.99 and of
  /// the tokenizers library, including how they break ties between cuts of equal score (for each end, the
  /// candidate with the earliest start, i.e. the longest last piece, wins): libsentencepiece 0.1.97 (Debian 12)
  /// breaks them the other way ("3000" → "3" "00" "0" where Hugging Face gives "3" "0" "00"), so the tokenizer
  /// uses the library for the model and its normaliser only.
  std::vector<std::tuple<int, size_t, size_t>> viterbi(const std::string& norm) const {
    struct Best {
      float score = 0;
      int id = -1;
      size_t start = std::string::npos;
    };
    const size_t n = norm.size();
    std::vector<Best> best(n + 1);
    best[0].start = 0;
    std::string key;
    for (size_t start = 0; start < n;) {
      char32_t c;
      const size_t char_len = std::min(bert::detail::utf8_next(norm, start, c), n - start);
      const float here = best[start].score;
      bool single_char_piece = false;
      for (size_t end = start + 1; end <= n && end - start <= longest_piece; ++end) {
        key.assign(norm, start, end - start);
        const auto it = pieces.find(key);
        if (it == pieces.end()) continue;
        const float score = here + sp.GetScore(it->second);
        auto& target = best[end];
        if (target.start == std::string::npos || score > target.score) target = {score, it->second, start};
        if (end - start == char_len) single_char_piece = true;
      }
      if (!single_char_piece) {
        auto& target = best[start + char_len];
        const float score = here + unk_score;
        if (target.start == std::string::npos || score > target.score) target = {score, -1, start};
      }
      start += char_len;
    }
    std::vector<std::tuple<int, size_t, size_t>> cut;
    for (size_t end = n; end > 0;) {
      const auto& b = best[end];
      cut.emplace_back(b.id, b.start, end);
      end = b.start;
    }
    std::reverse(cut.begin(), cut.end());
    std::vector<std::tuple<int, size_t, size_t>> fused;
    for (const auto& piece : cut) {
      if (std::get<0>(piece) < 0 && !fused.empty() && std::get<0>(fused.back()) < 0) {
        std::get<2>(fused.back()) = std::get<2>(piece);
      } else {
        fused.push_back(piece);
      }
    }
    return fused;
  }

  /// What SentencePiece's normaliser makes of the UTF-8 character `c`, seen between two letters: a space
  /// (whitespace, and what nmt_nfkc maps to it), nothing (removed, such as zero-width characters), or text.
  enum class Kind { space, removed, text };
  Kind kind_of(std::string_view c) const {
    if (c.size() == 1) {
      const unsigned char b = static_cast<unsigned char>(c[0]);
      if (b == ' ' || b == '\t' || b == '\n' || b == '\r') return Kind::space;
      if (b >= 0x20 && b < 0x7F) return Kind::text;
    }
    sentencepiece::ImmutableSentencePieceText spt;
    const std::string probe = "a" + std::string(c) + "a";
    if (!sp.Encode(probe, spt.mutable_proto()).ok()) return Kind::text;
    std::string normalized;
    for (size_t i = 0; i < spt.pieces_size(); ++i) normalized += spt.pieces(static_cast<int>(i)).piece();
    const std::string mark(kSpaceMark);
    if (normalized == mark + "a" + mark + "a") return Kind::space;
    if (normalized == mark + "aa") return Kind::removed;
    return Kind::text;
  }
};

DebertaV2Tokenizer::DebertaV2Tokenizer(const std::string& model_file, DebertaV2Options options)
    : options_(std::move(options)) {
  INCRELORA_CHECK(file_exists(model_file), "DebertaV2Tokenizer: cannot open the SentencePiece model '", model_file,
                  "'; pass a DeBERTa-v2/v3 checkpoint's spm.model.");
  auto impl = std::make_shared<Impl>();
  impl->file = model_file;
  const auto status = impl->sp.Load(model_file);
  INCRELORA_CHECK(status.ok(), "DebertaV2Tokenizer: '", model_file, "' is not a SentencePiece model that ",
                  "libsentencepiece can read (", status.ToString(), "); pass a DeBERTa-v2/v3 checkpoint's spm.model.");
  const int64_t pieces = impl->sp.GetPieceSize();
  impl->index_pieces();
  INCRELORA_CHECK(pieces > 0 && !impl->pieces.empty(), "DebertaV2Tokenizer: the SentencePiece model '", model_file, "' has no pieces.");

  auto piece_id = [&](const std::string& token) -> std::optional<int64_t> {
    const int id = impl->sp.PieceToId(token);
    if (id >= 0 && impl->sp.IdToPiece(id) == token) return id;
    return std::nullopt;
  };
  int64_t next_free = pieces;
  for (const auto& [token, id] : options_.added_tokens) {
    INCRELORA_CHECK(id >= 0, "DebertaV2Tokenizer: the added token '", token, "' has the negative id ", id, ".");
    next_free = std::max(next_free, id + 1);
  }
  // A special token's id: the one the added tokens give it, else its piece in the model, else (as transformers
  // adds a missing special token to the vocabulary) the next free id.
  auto special = [&](const std::string& token) {
    if (const auto it = options_.added_tokens.find(token); it != options_.added_tokens.end()) return it->second;
    if (const auto id = piece_id(token)) return *id;
    options_.added_tokens.emplace(token, next_free);
    return next_free++;
  };
  // transformers' order for adding missing special tokens: bos ([CLS]), eos ([SEP]), unk, sep, pad, cls, mask.
  cls_id_ = special(options_.cls_token);
  sep_id_ = special(options_.sep_token);
  unk_id_ = special(options_.unk_token);
  pad_id_ = special(options_.pad_token);
  mask_id_ = special(options_.mask_token);
  impl->size = next_free;
  for (const auto& [token, id] : options_.added_tokens) impl->added_by_id[id] = token;
  impl_ = std::move(impl);

  for (const auto* token : {&options_.cls_token, &options_.sep_token, &options_.unk_token, &options_.pad_token,
                            &options_.mask_token}) {
    if (!token->empty()) whole_tokens_.emplace_back(*token, token_to_id(*token));
  }
  for (const auto& [token, id] : options_.added_tokens) {
    if (!token.empty()) whole_tokens_.emplace_back(token, id);
  }
  std::sort(whole_tokens_.begin(), whole_tokens_.end(),
            [](const auto& x, const auto& y) { return x.first.size() > y.first.size(); });
  whole_tokens_.erase(std::unique(whole_tokens_.begin(), whole_tokens_.end()), whole_tokens_.end());
}

DebertaV2Tokenizer DebertaV2Tokenizer::from_directory(const std::string& dir) {
  DebertaV2Options options;
  std::vector<std::pair<const char*, std::string*>> token_fields = {
      {"cls_token", &options.cls_token}, {"sep_token", &options.sep_token}, {"pad_token", &options.pad_token},
      {"unk_token", &options.unk_token}, {"mask_token", &options.mask_token}};
  auto read_tokens = [&](const nlohmann::json& j) {
    for (auto& [key, field] : token_fields) {
      if (!j.contains(key)) continue;
      if (auto content = token_content(j[key])) *field = *content;
    }
  };
  // special_tokens_map.json first; tokenizer_config.json, which transformers reads last, wins.
  if (const auto path = dir + "/special_tokens_map.json"; file_exists(path)) read_tokens(read_json_file(path));
  if (const auto path = dir + "/tokenizer_config.json"; file_exists(path)) {
    const auto j = read_json_file(path);
    if (j.contains("do_lower_case") && j["do_lower_case"].is_boolean()) options.do_lower_case = j["do_lower_case"];
    if (j.contains("split_by_punct") && j["split_by_punct"].is_boolean()) options.split_by_punct = j["split_by_punct"];
    read_tokens(j);
    if (j.contains("added_tokens_decoder") && j["added_tokens_decoder"].is_object()) {
      for (const auto& [id, token] : j["added_tokens_decoder"].items()) {
        const auto content = token_content(token);
        INCRELORA_CHECK(content && !id.empty() && id.find_first_not_of("0123456789") == std::string::npos,
                        "DebertaV2Tokenizer: ", path, ": added_tokens_decoder[\"", id,
                        "\"] is not an id with a token {\"content\": ...}.");
        options.added_tokens[*content] = std::stoll(id);
      }
    }
  }
  if (const auto path = dir + "/added_tokens.json"; file_exists(path)) {
    const auto j = read_json_file(path);
    INCRELORA_CHECK(j.is_object(), "DebertaV2Tokenizer: ", path, " must map each added token to its id.");
    for (const auto& [token, id] : j.items()) {
      INCRELORA_CHECK(id.is_number_integer(), "DebertaV2Tokenizer: ", path, ": the id of '", token,
                      "' is not an integer.");
      options.added_tokens[token] = id.get<int64_t>();
    }
  }
  return DebertaV2Tokenizer(dir + "/spm.model", std::move(options));
}

int64_t DebertaV2Tokenizer::vocab_size() const { return impl_->size; }

int64_t DebertaV2Tokenizer::token_to_id(const std::string& token) const {
  if (const auto it = options_.added_tokens.find(token); it != options_.added_tokens.end()) return it->second;
  const int id = impl_->sp.PieceToId(token);
  if (id >= 0 && impl_->sp.IdToPiece(id) == token) return id;
  return unk_id_;
}

std::string DebertaV2Tokenizer::id_to_token(int64_t id) const {
  if (const auto it = impl_->added_by_id.find(id); it != impl_->added_by_id.end()) return it->second;
  INCRELORA_CHECK(id >= 0 && id < impl_->sp.GetPieceSize(), "DebertaV2Tokenizer::id_to_token: id ", id,
                  " is neither a piece of '", impl_->file, "' nor an added token (ids are below ", vocab_size(), ").");
  return impl_->sp.IdToPiece(static_cast<int>(id));
}

void DebertaV2Tokenizer::encode_plain(const std::string& text, size_t begin, size_t end, std::vector<int64_t>& ids,
                                      std::vector<Offset>* offsets) const {
  if (begin >= end) return;
  // The chunk as SentencePiece sees it (lowercased when asked) and, for each of its bytes, the input bytes of the
  // character it came from.
  std::string chunk;
  std::vector<Offset> source;
  if (options_.do_lower_case) {
    std::u32string lowered;
    for (size_t i = begin; i < end;) {
      char32_t c;
      const size_t len = bert::detail::utf8_next(text, i, c);
      lowered.clear();
      lowercase(c, lowered);
      // An invalid byte stays as it is: SentencePiece decides what it becomes, as on the raw text.
      const std::string bytes = c == 0xFFFD && len == 1 ? text.substr(i, 1) : bert::detail::utf8_encode(lowered);
      chunk += bytes;
      if (offsets) source.resize(chunk.size(), Offset(static_cast<int64_t>(i), static_cast<int64_t>(i + len)));
      i += len;
    }
  } else {
    chunk = text.substr(begin, end - begin);
    if (offsets) {
      for (size_t i = begin; i < end;) {
        char32_t c;
        const size_t len = bert::detail::utf8_next(text, i, c);
        source.resize(source.size() + len, Offset(static_cast<int64_t>(i), static_cast<int64_t>(i + len)));
        i += len;
      }
    }
  }

  // The words SentencePiece encodes one by one: the whole chunk, or with split_by_punct each punctuation character
  // and each run between two of them (spaces included, as transformers' _run_split_on_punc cuts).
  std::vector<std::pair<size_t, size_t>> words;
  if (options_.split_by_punct) {
    size_t start = 0;
    for (size_t i = 0; i < chunk.size();) {
      char32_t c;
      const size_t len = bert::detail::utf8_next(chunk, i, c);
      if (is_punctuation(c)) {
        if (start < i) words.emplace_back(start, i);
        words.emplace_back(i, i + len);
        start = i + len;
      }
      i += len;
    }
    if (start < chunk.size()) words.emplace_back(start, chunk.size());
  } else {
    words.emplace_back(0, chunk.size());
  }

  const auto& sp = impl_->sp;
  auto char_len = [&](size_t at) {
    char32_t c;
    return bert::detail::utf8_next(chunk, at, c);
  };
  for (const auto& [w_begin, w_end] : words) {
    // SentencePiece normalises the word; its pieces' texts put together are the normalised text, and their
    // surfaces say where in the word each came from.
    sentencepiece::ImmutableSentencePieceText spt;
    const auto status = sp.Encode(std::string_view(chunk).substr(w_begin, w_end - w_begin), spt.mutable_proto());
    INCRELORA_CHECK(status.ok(), "DebertaV2Tokenizer: SentencePiece failed on a text (", status.ToString(), ").");
    std::string norm;
    // For each byte of `norm`, the bytes of the chunk it stands for; (npos, npos) for none (SentencePiece's own
    // "▁" in front of the word, or a character that normalisation expanded into several pieces).
    constexpr size_t none = std::string::npos;
    std::vector<std::pair<size_t, size_t>> from;
    // A word after a punctuation character (split_by_punct) keeps its leading whitespace in the fast tokenizer
    // (only the chunk's own is stripped): its first "▁" stands for the last whitespace character of that run.
    std::pair<size_t, size_t> leading_mark{none, none};
    if (w_begin > 0) {
      for (size_t at = w_begin; at < w_end;) {
        const size_t len = char_len(at);
        const auto kind = impl_->kind_of(std::string_view(chunk).substr(at, len));
        if (kind == Impl::Kind::text) break;
        if (kind == Impl::Kind::space) leading_mark = {at, at + len};
        at += len;
      }
    }
    for (size_t k = 0; k < spt.pieces_size(); ++k) {
      const auto piece = spt.pieces(static_cast<int>(k));
      const std::string& text_of = piece.piece();
      size_t b = w_begin + piece.begin();
      const size_t e = w_begin + piece.end();
      size_t p = 0;
      norm += text_of;
      if (starts_with(text_of, kSpaceMark)) {
        // The "▁" stands for the whitespace in front of the piece's text: its last whitespace character (a run of
        // them collapsed into one, as the fast tokenizer aligns it), or nothing at the start of the word.
        size_t last_space = none, at = b;
        while (at < e) {
          const size_t len = char_len(at);
          const auto kind = impl_->kind_of(std::string_view(chunk).substr(at, len));
          if (kind == Impl::Kind::text) break;
          if (kind == Impl::Kind::space) last_space = at;
          at += len;
        }
        auto mark = last_space == none ? std::pair{none, none} : std::pair{last_space, at};
        if (k == 0 && last_space == none) mark = leading_mark;
        from.insert(from.end(), kSpaceMark.size(), mark);
        p = kSpaceMark.size();
        b = at;
      }
      const size_t rest = text_of.size() - p;
      if (e - b == rest && chunk.compare(b, rest, text_of, p, rest) == 0) {
        for (size_t i = 0; i < rest; ++i) from.emplace_back(b + i, b + i + 1);  // unchanged by normalisation
      } else {
        from.insert(from.end(), rest, b < e ? std::pair{b, e} : std::pair{none, none});
      }
    }

    const auto cut = impl_->viterbi(norm);
    for (const auto& [id, x, y] : cut) ids.push_back(id < 0 ? unk_id_ : static_cast<int64_t>(id));
    if (!offsets) continue;
    std::vector<std::pair<size_t, size_t>> span;
    for (const auto& [id, x, y] : cut) {
      size_t b = none, e = 0;
      for (size_t i = x; i < y; ++i) {
        if (from[i].first == none) continue;
        b = std::min(b, from[i].first);
        e = std::max(e, from[i].second);
      }
      span.emplace_back(b, b == none ? none : e);
    }
    for (size_t k = 0; k < span.size(); ++k) {
      if (span[k].first != none) continue;
      // A piece that stands for no input character (the word's "▁" alone, or the first piece of an expanded
      // character) takes the first character of the next piece that has one, as the fast tokenizer aligns it;
      // at the end of the word, the last character.
      size_t next = k + 1;
      while (next < span.size() && span[next].first == none) ++next;
      size_t b;
      if (next < span.size()) {
        b = span[next].first;
      } else {
        b = w_end - 1;
        while (b > w_begin && (static_cast<unsigned char>(chunk[b]) & 0xC0) == 0x80) --b;
      }
      span[k] = {b, b + char_len(b)};
    }
    for (const auto& [b, e] : span) offsets->emplace_back(source[b].first, source[e - 1].second);
  }
}

void DebertaV2Tokenizer::encode_into(const std::string& text, std::vector<int64_t>& ids,
                                     std::vector<Offset>* offsets) const {
  // Special and added tokens written in the text stay whole, as in transformers' tokenizers; the rest is split
  // around them (the leftmost match first, the longest of those that start there).
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t best = std::string::npos;
    const std::pair<std::string, int64_t>* which = nullptr;
    for (const auto& token : whole_tokens_) {
      const size_t at = text.find(token.first, pos);
      if (at < best) best = at, which = &token;
    }
    const size_t stop = best == std::string::npos ? text.size() : best;
    encode_plain(text, pos, stop, ids, offsets);
    if (best == std::string::npos) break;
    ids.push_back(which->second);
    if (offsets) offsets->emplace_back(static_cast<int64_t>(best), static_cast<int64_t>(best + which->first.size()));
    pos = best + which->first.size();
  }
}

std::vector<std::string> DebertaV2Tokenizer::tokenize(const std::string& text) const {
  std::vector<std::string> pieces;
  for (const auto id : encode_text(text)) pieces.push_back(id_to_token(id));
  return pieces;
}

std::vector<int64_t> DebertaV2Tokenizer::encode_text(const std::string& text) const {
  std::vector<int64_t> ids;
  encode_into(text, ids, nullptr);
  return ids;
}

models::TokenSpans DebertaV2Tokenizer::encode_with_offsets(const std::string& text) const {
  models::TokenSpans spans;
  encode_into(text, spans.ids, &spans.offsets);
  return spans;
}

Encoding DebertaV2Tokenizer::build_inputs(std::vector<int64_t> ids_a, std::optional<std::vector<int64_t>> ids_b,
                                          int64_t max_length) const {
  return bert::build_pair_inputs(cls_id_, sep_id_, std::move(ids_a), std::move(ids_b), max_length);
}

Encoding DebertaV2Tokenizer::encode(const std::string& text_a, const std::optional<std::string>& text_b,
                                    int64_t max_length) const {
  std::optional<std::vector<int64_t>> b;
  if (text_b) b = encode_text(*text_b);
  return build_inputs(encode_text(text_a), std::move(b), max_length);
}

}  // namespace increlora::deberta
