#include <increlora/models/bart_tokenizer.hpp>

#include <increlora/errors.hpp>

#include <nlohmann/json.hpp>

#include "unicode.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <mutex>
#include <functional>
#include <optional>
#include <queue>
#include <sstream>
#include <unordered_map>
#include <utility>

namespace increlora::bart {
namespace {

using models::detail::append_utf8;
using models::detail::is_letter;
using models::detail::is_number;
using models::detail::is_white_space;
using models::detail::utf8_strict_next;

bool file_exists(const std::string& path) { return std::ifstream(path, std::ios::binary).good(); }

std::string read_file(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  INCRELORA_CHECK(in.good(), "BartTokenizer: cannot open ", what, " ", path,
                  " (pass the directory of a Hugging Face BART / RoBERTa / GPT-2 tokenizer).");
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

nlohmann::json read_json_file(const std::string& path, const char* what) {
  const std::string text = read_file(path, what);
  try {
    return nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    INCRELORA_CHECK(false, "BartTokenizer: ", what, " ", path, " is not valid JSON (", e.what(), ").");
  }
  return {};
}

// A token in Hugging Face's files is a string or a serialised AddedToken {"content": ...}.
std::optional<std::string> token_content(const nlohmann::json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return std::nullopt;
}

bool json_flag(const nlohmann::json& obj, const char* key, bool fallback) {
  return obj.is_object() && obj.contains(key) && obj[key].is_boolean() ? obj[key].get<bool>() : fallback;
}

// GPT-2's bytes_to_unicode: the printable bytes stand for themselves, the others for 256, 257, ... in order.
std::vector<char32_t> bytes_to_unicode() {
  std::vector<char32_t> table(256);
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
    table[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return table;
}

// GPT-2's pre-tokenizer regex on the code points `cp`; appends each match as [begin, end) code-point indices.
void pre_tokenize(const std::vector<char32_t>& cp, std::vector<std::pair<size_t, size_t>>& words) {
  const size_t n = cp.size();
  auto category = [&](size_t k) {  // 0 white space, 1 letter, 2 number, 3 other
    const char32_t c = cp[k];
    return is_white_space(c) ? 0 : is_letter(c) ? 1 : is_number(c) ? 2 : 3;
  };
  size_t i = 0;
  while (i < n) {
    const char32_t c = cp[i];
    // 's|'t|'re|'ve|'m|'ll|'d (case-sensitive)
    if (c == U'\'' && i + 1 < n) {
      const char32_t a = cp[i + 1];
      if (a == U's' || a == U't' || a == U'm' || a == U'd') {
        words.emplace_back(i, i + 2);
        i += 2;
        continue;
      }
      if (i + 2 < n) {
        const char32_t b = cp[i + 2];
        if ((a == U'r' && b == U'e') || (a == U'v' && b == U'e') || (a == U'l' && b == U'l')) {
          words.emplace_back(i, i + 3);
          i += 3;
          continue;
        }
      }
    }
    // ' ?\p{L}+', ' ?\p{N}+', ' ?[^\s\p{L}\p{N}]+': an optional space, then a run of one class
    const size_t start = (c == U' ' && i + 1 < n) ? i + 1 : i;
    const int cls = category(start);
    if (cls != 0) {
      size_t end = start + 1;
      while (end < n && category(end) == cls) ++end;
      words.emplace_back(i, end);
      i = end;
      continue;
    }
    // '\s+(?!\S)', then '\s+': a run of white space leaves its last character to the word after it
    size_t end = i + 1;
    while (end < n && is_white_space(cp[end])) ++end;
    if (end < n && end - i >= 2) --end;
    words.emplace_back(i, end);
    i = end;
  }
}

// Appends `bytes` read as UTF-8 to `out`, each maximal invalid subpart replaced by U+FFFD (Rust's
// String::from_utf8_lossy, Python's errors="replace").
void append_lossy(const std::string& bytes, std::string& out) {
  const auto* s = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  for (size_t i = 0; i < n;) {
    char32_t c = 0;
    size_t bad = 1;
    const size_t len = utf8_strict_next(s, n, i, c, &bad);
    if (len > 0) {
      out.append(bytes, i, len);
      i += len;
    } else {
      append_utf8(0xFFFD, out);
      i += bad;
    }
  }
}

}  // namespace

struct BartTokenizer::Impl {
  std::unordered_map<std::string, int64_t> vocab;  // byte-level spelling → id
  std::vector<std::optional<std::string>> id_to_token;
  /// (left id, right id) → (rank, merged id)
  std::unordered_map<uint64_t, std::pair<int32_t, int64_t>> merges;
  int64_t byte_id[256];                       // id of each byte's character, -1 when the vocabulary lacks it
  std::vector<char32_t> byte_to_char;         // bytes_to_unicode
  std::unordered_map<char32_t, uint8_t> char_to_byte;
  std::vector<AddedToken> added;              // kept whole in the text, longest first
  std::unordered_map<int64_t, size_t> added_by_id;
  std::string sources;                        // the files read, for messages

  mutable std::mutex cache_mutex;
  mutable std::unordered_map<std::string, std::vector<int64_t>> cache;  // word bytes → ids
  static constexpr size_t kCacheCapacity = 100000;

  static uint64_t key(int64_t a, int64_t b) { return (static_cast<uint64_t>(a) << 32) | static_cast<uint32_t>(b); }

  void set_vocab(const nlohmann::json& v, const std::string& file) {
    INCRELORA_CHECK(v.is_object() && !v.empty(), "BartTokenizer: ", file,
                    " must be a JSON object {token: id} (GPT-2's vocab.json).");
    for (auto it = v.begin(); it != v.end(); ++it) {
      INCRELORA_CHECK(it.value().is_number_integer() && it.value().get<int64_t>() >= 0 &&
                          it.value().get<int64_t>() < (int64_t{1} << 31),
                      "BartTokenizer: ", file, ": the id of token \"", it.key(),
                      "\" is not a non-negative integer below 2^31.");
      vocab[it.key()] = it.value().get<int64_t>();
    }
  }

  void add_merge(const std::string& a, const std::string& b, const std::string& file, size_t line) {
    const auto ia = vocab.find(a), ib = vocab.find(b), iab = vocab.find(a + b);
    INCRELORA_CHECK(ia != vocab.end() && ib != vocab.end() && iab != vocab.end(), "BartTokenizer: ", file,
                    " line ", line, ": the merge \"", a, " ", b, "\" uses a token its vocabulary lacks (\"",
                    ia == vocab.end() ? a : ib == vocab.end() ? b : a + b,
                    "\"); use the vocab.json and merges.txt of one tokenizer.");
    const int32_t rank = static_cast<int32_t>(merges.size());
    merges.emplace(key(ia->second, ib->second), std::make_pair(rank, iab->second));
  }

  void parse_merges_txt(const std::string& text, const std::string& file) {
    std::istringstream in(text);
    std::string line;
    size_t number = 0;
    while (std::getline(in, line)) {
      ++number;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (number == 1 && line.rfind("#version", 0) == 0) continue;
      if (line.empty()) continue;
      const size_t space = line.find(' ');
      INCRELORA_CHECK(space != std::string::npos && space > 0 && space + 1 < line.size() &&
                          line.find(' ', space + 1) == std::string::npos,
                      "BartTokenizer: ", file, " line ", number, " is not a merge \"a b\" (GPT-2's merges.txt).");
      add_merge(line.substr(0, space), line.substr(space + 1), file, number);
    }
    INCRELORA_CHECK(!merges.empty(), "BartTokenizer: ", file, " has no merges (GPT-2's merges.txt: one \"a b\" per line).");
  }

  void index_bytes() {
    byte_to_char = bytes_to_unicode();
    for (int b = 0; b < 256; ++b) {
      char_to_byte[byte_to_char[b]] = static_cast<uint8_t>(b);
      std::string s;
      append_utf8(byte_to_char[b], s);
      const auto it = vocab.find(s);
      byte_id[b] = it == vocab.end() ? -1 : it->second;
    }
  }

  /// BPE on one word's bytes: the ids of its byte characters, merged lowest rank first (leftmost on a tie), as
  /// the tokenizers library's BPE::merge_word does it: a queue of candidate merges over a linked list of symbols,
  /// O(n log n), so a long run without spaces (a URL, a hash) stays fast.
  std::vector<int64_t> bpe(const char* bytes, size_t n, int64_t unk) const {
    struct Symbol {
      int64_t id;
      std::ptrdiff_t prev, next;  // -1: none
      bool alive;
    };
    struct Candidate {
      int32_t rank;
      std::ptrdiff_t pos;  // the left symbol
      int64_t new_id;
      bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::vector<Symbol> sym(n);
    for (size_t k = 0; k < n; ++k) {
      const int64_t id = byte_id[static_cast<unsigned char>(bytes[k])];
      sym[k] = {id >= 0 ? id : unk, static_cast<std::ptrdiff_t>(k) - 1,
                k + 1 < n ? static_cast<std::ptrdiff_t>(k + 1) : -1, true};
    }
    std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> queue;
    auto consider = [&](std::ptrdiff_t left) {
      const std::ptrdiff_t right = sym[static_cast<size_t>(left)].next;
      if (right < 0) return;
      const auto it = merges.find(key(sym[static_cast<size_t>(left)].id, sym[static_cast<size_t>(right)].id));
      if (it != merges.end()) queue.push({it->second.first, left, it->second.second});
    };
    for (size_t k = 0; k + 1 < n; ++k) consider(static_cast<std::ptrdiff_t>(k));
    while (!queue.empty()) {
      const Candidate top = queue.top();
      queue.pop();
      Symbol& left = sym[static_cast<size_t>(top.pos)];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = sym[static_cast<size_t>(left.next)];
      const auto it = merges.find(key(left.id, right.id));  // an entry queued before a neighbour changed
      if (it == merges.end() || it->second.second != top.new_id) continue;
      left.id = top.new_id;
      right.alive = false;
      left.next = right.next;
      if (right.next >= 0) sym[static_cast<size_t>(right.next)].prev = top.pos;
      if (left.prev >= 0) consider(left.prev);
      consider(top.pos);
    }
    std::vector<int64_t> out;
    for (const auto& s : sym) {
      if (s.alive) out.push_back(s.id);
    }
    return out;
  }
};

BartTokenizer::BartTokenizer(std::shared_ptr<Impl> impl, BartTokenizerOptions options)
    : impl_(std::move(impl)), options_(std::move(options)) {
  finish_setup();
}

BartTokenizer::BartTokenizer(const std::string& vocab_file, const std::string& merges_file,
                             BartTokenizerOptions options)
    : options_(std::move(options)) {
  auto impl = std::make_shared<Impl>();
  impl->set_vocab(read_json_file(vocab_file, "vocab file"), vocab_file);
  impl->parse_merges_txt(read_file(merges_file, "merges file"), merges_file);
  impl->sources = vocab_file + " and " + merges_file;
  impl_ = std::move(impl);
  finish_setup();
}

void BartTokenizer::finish_setup() {
  Impl& impl = *impl_;
  impl.index_bytes();
  int64_t next_id = 0;
  for (const auto& [token, id] : impl.vocab) next_id = std::max(next_id, id + 1);
  for (const auto& t : options_.added_tokens) next_id = std::max(next_id, t.id + 1);
  std::vector<AddedToken> added = options_.added_tokens;
  for (const std::string* name : {&options_.bos_token, &options_.pad_token, &options_.eos_token,
                                  &options_.unk_token, &options_.mask_token}) {
    if (name->empty()) continue;
    const bool listed = std::any_of(added.begin(), added.end(), [&](const AddedToken& t) { return t.content == *name; });
    if (listed) continue;
    AddedToken t;
    t.content = *name;
    const auto it = impl.vocab.find(*name);
    t.id = it != impl.vocab.end() ? it->second : next_id++;
    added.push_back(t);
  }
  impl.id_to_token.assign(static_cast<size_t>(next_id), std::nullopt);
  for (const auto& [token, id] : impl.vocab) impl.id_to_token[static_cast<size_t>(id)] = token;
  for (const auto& t : added) {
    INCRELORA_CHECK(!t.content.empty() && t.id >= 0, "BartTokenizer: an added token needs a non-empty content and an "
                    "id >= 0 (got \"", t.content, "\" with id ", t.id, ").");
    impl.id_to_token[static_cast<size_t>(t.id)] = t.content;
    impl.vocab[t.content] = t.id;
  }
  std::stable_sort(added.begin(), added.end(),
                   [](const AddedToken& a, const AddedToken& b) { return a.content.size() > b.content.size(); });
  impl.added = std::move(added);
  for (size_t k = 0; k < impl.added.size(); ++k) impl.added_by_id.emplace(impl.added[k].id, k);
  const auto unk = impl.vocab.find(options_.unk_token);
  unk_id_ = unk == impl.vocab.end() ? 0 : unk->second;
  bos_id_ = token_to_id(options_.bos_token);
  eos_id_ = token_to_id(options_.eos_token);
  pad_id_ = token_to_id(options_.pad_token);
  mask_id_ = token_to_id(options_.mask_token);
}

BartTokenizer BartTokenizer::from_directory(const std::string& dir) {
  const std::string vocab_file = dir + "/vocab.json", merges_file = dir + "/merges.txt";
  const std::string tokenizer_file = dir + "/tokenizer.json", config_file = dir + "/tokenizer_config.json";
  const std::string special_file = dir + "/special_tokens_map.json";
  const bool have_vocab = file_exists(vocab_file), have_merges = file_exists(merges_file);
  const bool have_tokenizer_json = file_exists(tokenizer_file);
  INCRELORA_CHECK(have_vocab || have_merges || have_tokenizer_json, "BartTokenizer: ", dir,
                  " has neither vocab.json + merges.txt nor tokenizer.json; pass the directory of a Hugging Face "
                  "BART / RoBERTa / GPT-2 tokenizer.");
  // Both of vocab.json and merges.txt, else tokenizer.json; one of the pair alone is an incomplete download.
  const bool have_pair = (have_vocab && have_merges) || !have_tokenizer_json;
  BartTokenizerOptions options;
  auto impl = std::make_shared<Impl>();
  nlohmann::json tokenizer_json;
  if (have_tokenizer_json) tokenizer_json = read_json_file(tokenizer_file, "tokenizer file");
  if (have_pair) {
    impl->set_vocab(read_json_file(vocab_file, "vocab file"), vocab_file);
    impl->parse_merges_txt(read_file(merges_file, "merges file"), merges_file);
    impl->sources = vocab_file + " and " + merges_file;
  } else {
    const auto& model = tokenizer_json.is_object() && tokenizer_json.contains("model") ? tokenizer_json["model"]
                                                                                       : nlohmann::json();
    INCRELORA_CHECK(model.is_object() && model.value("type", std::string()) == "BPE" && model.contains("vocab") &&
                        model.contains("merges") && model["merges"].is_array(),
                    "BartTokenizer: ", tokenizer_file, " has no BPE model with vocab and merges.");
    impl->set_vocab(model["vocab"], tokenizer_file);
    size_t number = 0;
    for (const auto& m : model["merges"]) {
      ++number;
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t space = s.find(' ');
        INCRELORA_CHECK(space != std::string::npos, "BartTokenizer: ", tokenizer_file, " merge ", number,
                        " is not \"a b\".");
        a = s.substr(0, space), b = s.substr(space + 1);
      } else {
        INCRELORA_CHECK(m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string(), "BartTokenizer: ",
                        tokenizer_file, " merge ", number, " is neither \"a b\" nor [\"a\", \"b\"].");
        a = m[0].get<std::string>(), b = m[1].get<std::string>();
      }
      impl->add_merge(a, b, tokenizer_file, number);
    }
    impl->sources = tokenizer_file;
  }
  // The added tokens and their flags: tokenizer.json, else tokenizer_config.json's added_tokens_decoder.
  auto read_added = [&](const nlohmann::json& t, int64_t id) {
    if (!t.is_object() || !t.contains("content") || !t["content"].is_string()) return;
    AddedToken a;
    a.content = t["content"].get<std::string>();
    a.id = id;
    a.special = json_flag(t, "special", true);
    a.lstrip = json_flag(t, "lstrip", false);
    a.rstrip = json_flag(t, "rstrip", false);
    options.added_tokens.push_back(a);
  };
  if (have_tokenizer_json && tokenizer_json.contains("added_tokens") && tokenizer_json["added_tokens"].is_array()) {
    for (const auto& t : tokenizer_json["added_tokens"]) {
      if (t.is_object() && t.contains("id") && t["id"].is_number_integer()) read_added(t, t["id"].get<int64_t>());
    }
  }
  if (have_tokenizer_json && tokenizer_json.contains("pre_tokenizer")) {
    const auto& pre = tokenizer_json["pre_tokenizer"];
    options.add_prefix_space = json_flag(pre, "add_prefix_space", options.add_prefix_space);
    if (pre.is_object() && pre.contains("pretokenizers") && pre["pretokenizers"].is_array()) {
      for (const auto& p : pre["pretokenizers"]) {
        if (p.value("type", std::string()) == "ByteLevel") {
          options.add_prefix_space = json_flag(p, "add_prefix_space", options.add_prefix_space);
        }
      }
    }
  }
  auto read_specials = [&](const nlohmann::json& j) {
    if (!j.is_object()) return;
    for (auto [key, field] : {std::pair<const char*, std::string*>{"bos_token", &options.bos_token},
                              {"eos_token", &options.eos_token},
                              {"pad_token", &options.pad_token},
                              {"unk_token", &options.unk_token},
                              {"mask_token", &options.mask_token}}) {
      if (!j.contains(key)) continue;
      if (auto v = token_content(j[key])) *field = *v;
    }
  };
  if (file_exists(special_file)) read_specials(read_json_file(special_file, "special tokens file"));
  if (file_exists(config_file)) {
    const auto config = read_json_file(config_file, "tokenizer config");
    read_specials(config);
    options.add_prefix_space = json_flag(config, "add_prefix_space", options.add_prefix_space);
    if (!have_tokenizer_json && config.is_object() && config.contains("added_tokens_decoder") &&
        config["added_tokens_decoder"].is_object()) {
      for (auto it = config["added_tokens_decoder"].begin(); it != config["added_tokens_decoder"].end(); ++it) {
        try {
          read_added(it.value(), std::stoll(it.key()));
        } catch (const std::logic_error&) {
          INCRELORA_CHECK(false, "BartTokenizer: ", config_file, ": added_tokens_decoder key \"", it.key(),
                          "\" is not an id.");
        }
      }
    }
  }
  return BartTokenizer(std::move(impl), std::move(options));
}

void BartTokenizer::encode_plain(const std::string& text, size_t begin, size_t end, std::vector<int64_t>& ids) const {
  if (begin >= end) return;
  const Impl& impl = *impl_;
  std::string piece;
  if (options_.add_prefix_space && text[begin] != ' ') piece.push_back(' ');
  piece.append(text, begin, end - begin);
  // Code points and where each starts (the text is valid UTF-8: encode checked it).
  std::vector<char32_t> cps;
  std::vector<size_t> at;
  cps.reserve(piece.size());
  at.reserve(piece.size() + 1);
  const auto* s = reinterpret_cast<const unsigned char*>(piece.data());
  for (size_t i = 0; i < piece.size();) {
    char32_t c = 0;
    const size_t len = utf8_strict_next(s, piece.size(), i, c);
    at.push_back(i);
    cps.push_back(c);
    i += len;
  }
  at.push_back(piece.size());
  std::vector<std::pair<size_t, size_t>> words;
  pre_tokenize(cps, words);
  std::string word;
  for (const auto& [wb, we] : words) {
    word.assign(piece, at[wb], at[we] - at[wb]);
    {
      std::lock_guard<std::mutex> lock(impl.cache_mutex);
      const auto it = impl.cache.find(word);
      if (it != impl.cache.end()) {
        ids.insert(ids.end(), it->second.begin(), it->second.end());
        continue;
      }
    }
    auto merged = impl.bpe(word.data(), word.size(), unk_id_);
    ids.insert(ids.end(), merged.begin(), merged.end());
    std::lock_guard<std::mutex> lock(impl.cache_mutex);
    if (impl.cache.size() >= Impl::kCacheCapacity) impl.cache.clear();
    impl.cache.emplace(word, std::move(merged));
  }
}

std::vector<int64_t> BartTokenizer::tokenize(const std::string& text) const {
  const Impl& impl = *impl_;
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  for (size_t i = 0; i < n;) {
    char32_t c = 0;
    const size_t len = utf8_strict_next(s, n, i, c);
    INCRELORA_CHECK(len > 0, "BartTokenizer: the text is not valid UTF-8 at byte offset ", i, " (byte value ",
                    static_cast<int>(s[i]), "); convert the text to UTF-8 before tokenizing.");
    i += len;
  }
  // White space (the White_Space property) ending at byte `e` / starting at byte `b`, for lstrip / rstrip.
  auto white_before = [&](size_t e, size_t floor) {
    while (e > floor) {
      size_t b = e - 1;
      while (b > floor && (s[b] & 0xC0) == 0x80) --b;
      char32_t c = 0;
      utf8_strict_next(s, n, b, c);
      if (!is_white_space(c)) break;
      e = b;
    }
    return e;
  };
  auto white_after = [&](size_t b) {
    while (b < n) {
      char32_t c = 0;
      const size_t len = utf8_strict_next(s, n, b, c);
      if (!is_white_space(c)) break;
      b += len;
    }
    return b;
  };
  std::vector<int64_t> ids;
  size_t piece_begin = 0;
  for (size_t i = 0; i < n;) {
    const AddedToken* match = nullptr;
    for (const auto& t : impl.added) {  // longest first: the first that matches here is the longest
      if (t.content.size() <= n - i && std::memcmp(text.data() + i, t.content.data(), t.content.size()) == 0) {
        match = &t;
        break;
      }
    }
    if (!match) {
      ++i;
      continue;
    }
    const size_t start = match->lstrip ? white_before(i, piece_begin) : i;
    const size_t stop = match->rstrip ? white_after(i + match->content.size()) : i + match->content.size();
    encode_plain(text, piece_begin, start, ids);
    ids.push_back(match->id);
    piece_begin = i = stop;
  }
  encode_plain(text, piece_begin, n, ids);
  return ids;
}

std::vector<int64_t> BartTokenizer::encode(const std::string& text, int64_t max_length) const {
  INCRELORA_CHECK(max_length == 0 || max_length >= 2, "BartTokenizer::encode: max_length must be 0 (no "
                  "truncation) or at least 2 (room for <s> and </s>), got ", max_length, ".");
  std::vector<int64_t> body = tokenize(text);
  if (max_length >= 2 && static_cast<int64_t>(body.size()) > max_length - 2) {
    body.resize(static_cast<size_t>(max_length - 2));
  }
  std::vector<int64_t> ids;
  ids.reserve(body.size() + 2);
  ids.push_back(bos_id_);
  ids.insert(ids.end(), body.begin(), body.end());
  ids.push_back(eos_id_);
  return ids;
}

std::string BartTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  const Impl& impl = *impl_;
  std::string out, chunk;  // chunk: the bytes of the BPE tokens since the last added token
  for (const int64_t id : ids) {
    INCRELORA_CHECK(id >= 0 && id < vocab_size() && impl.id_to_token[static_cast<size_t>(id)].has_value(),
                    "BartTokenizer::decode: id ", id, " is not in the vocabulary of ", impl.sources,
                    " (ids run from 0 to ", vocab_size() - 1, ").");
    const auto added = impl.added_by_id.find(id);
    if (added != impl.added_by_id.end()) {
      const AddedToken& t = impl.added[added->second];
      if (skip_special_tokens && t.special) continue;
      append_lossy(chunk, out);
      chunk.clear();
      out += t.content;
      continue;
    }
    // A token whose characters all stand for bytes gives those bytes; any other is taken as it is spelled.
    const std::string& token = *impl.id_to_token[static_cast<size_t>(id)];
    const auto* s = reinterpret_cast<const unsigned char*>(token.data());
    const size_t mark = chunk.size();
    bool all_bytes = true;
    for (size_t i = 0; i < token.size();) {
      char32_t c = 0;
      const size_t len = utf8_strict_next(s, token.size(), i, c);
      const auto it = len > 0 ? impl.char_to_byte.find(c) : impl.char_to_byte.end();
      if (it == impl.char_to_byte.end()) {
        all_bytes = false;
        break;
      }
      chunk.push_back(static_cast<char>(it->second));
      i += len;
    }
    if (!all_bytes) {
      chunk.resize(mark);
      chunk += token;
    }
  }
  append_lossy(chunk, out);
  return out;
}

int64_t BartTokenizer::token_to_id(const std::string& token) const {
  const auto it = impl_->vocab.find(token);
  return it == impl_->vocab.end() ? unk_id_ : it->second;
}

std::string BartTokenizer::id_to_token(int64_t id) const {
  INCRELORA_CHECK(id >= 0 && id < vocab_size() && impl_->id_to_token[static_cast<size_t>(id)].has_value(),
                  "BartTokenizer::id_to_token: id ", id, " is not in the vocabulary of ", impl_->sources, ".");
  return *impl_->id_to_token[static_cast<size_t>(id)];
}

int64_t BartTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->id_to_token.size()); }

}  // namespace increlora::bart
