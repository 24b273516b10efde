// BART's byte-level BPE tokenizer gives Hugging Face's ids and texts. The fixture bart_tokenizer_reference
// (make_bart_tokenizer_reference.py) trains a small byte-level BPE (tokenizers' ByteLevelBPETokenizer, ~2000
// tokens) on the shared XSum sample, laid out as facebook/bart-large (<s> 0, <pad> 1, </s> 2, <unk> 3, <mask>
// last with lstrip), and records what transformers' BartTokenizer (v5: RobertaTokenizer on the tokenizers
// backend) gives: ids untruncated and truncated to 64 and 768, and decode with and without special tokens, on
// every XSum document and summary and on hand-written hard strings.
#include "catch.hpp"
#include "support.hpp"
#include "temp_dir.hpp"

#include <increlora/models/bart_tokenizer.hpp>

#include <nlohmann/json.hpp>

#include <c10/util/Exception.h>

#include <chrono>
#include <fstream>

using increlora::bart::BartTokenizer;

namespace {

std::string reference_dir() { return INCRELORA_BART_TOKENIZER_REFERENCE_DIR; }

const nlohmann::json& reference() {
  static const nlohmann::json j = [] {
    const std::string path = reference_dir() + "/reference.json";
    std::ifstream in(path);
    INFO("reference file " << path << " (written by the ctest fixture bart_tokenizer_reference: run ctest, or "
                                      "tests/models/make_bart_tokenizer_reference.py)");
    REQUIRE(in.good());
    nlohmann::json r;
    in >> r;
    return r;
  }();
  return j;
}

std::string tokenizer_dir(const char* key = "tokenizer_dir") {
  return reference_dir() + "/" + reference()[key].get<std::string>();
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : " ") + std::to_string(x);
  return s;
}

// Counts comparisons and reports the first few differences (not all: one rule broken shows on many texts).
struct Comparer {
  size_t checked = 0, wrong = 0;
  template <class T>
  void operator()(const std::string& what, const T& got, const T& want) {
    ++checked;
    if (got == want) return;
    if (++wrong <= 5) FAIL_CHECK(what);
  }
  void ids(const std::string& what, const std::vector<int64_t>& got, const std::vector<int64_t>& want) {
    (*this)(what + "\n  got  " + join(got) + "\n  want " + join(want), got, want);
  }
  void text(const std::string& what, const std::string& got, const std::string& want) {
    (*this)(what + "\n  got  \"" + got + "\"\n  want \"" + want + "\"", got, want);
  }
};

void compare_cases(const BartTokenizer& tok, const nlohmann::json& cases, bool truncated_too) {
  Comparer compare;
  for (const auto& c : cases) {
    const auto text = c["text"].get<std::string>();
    const std::string label = c["kind"].get<std::string>() + " \"" + text.substr(0, 60) + "\"";
    const auto ids = tok.encode(text);
    compare.ids("encode of " + label, ids, c["ids"].get<std::vector<int64_t>>());
    compare.ids("tokenize of " + label, tok.tokenize(text), c["tokens"].get<std::vector<int64_t>>());
    const auto want_ids = c["ids"].get<std::vector<int64_t>>();
    compare.text("decode(skip) of " + label, tok.decode(want_ids, true), c["decode_skip"].get<std::string>());
    compare.text("decode(keep) of " + label, tok.decode(want_ids, false), c["decode_keep"].get<std::string>());
    if (!truncated_too) continue;
    for (int64_t n : {64, 768}) {
      const auto key = "ids_" + std::to_string(n);
      compare.ids(key + " of " + label, tok.encode(text, n), c[key].get<std::vector<int64_t>>());
      compare.text("decode_skip_" + std::to_string(n) + " of " + label,
                   tok.decode(c[key].get<std::vector<int64_t>>(), true),
                   c["decode_skip_" + std::to_string(n)].get<std::string>());
    }
  }
  INFO(compare.wrong << " of " << compare.checked << " comparisons differ");
  CHECK(compare.checked > 0);
  CHECK(compare.wrong == 0);
}

std::vector<std::string> shared_texts() {
  const std::string path = increlora::test::shared_dir() + "/data/summarization/xsum_sample.jsonl";
  std::ifstream in(path);
  INFO("shared data file " << path);
  REQUIRE(in.good());
  std::vector<std::string> texts;
  for (std::string line; std::getline(in, line);) {
    if (line.empty()) continue;
    const auto j = nlohmann::json::parse(line);
    texts.push_back(j["document"].get<std::string>());
    texts.push_back(j["summary"].get<std::string>());
  }
  return texts;
}

void write(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

}  // namespace

TEST_CASE("Ids and decoded texts equal transformers' BartTokenizer on XSum documents summaries and hard strings",
          "[bart_tokenizer][reference]") {
  const auto tok = BartTokenizer::from_directory(tokenizer_dir());
  compare_cases(tok, reference()["cases"], /*truncated_too=*/true);
}

TEST_CASE("The special token ids and the vocabulary size equal transformers'", "[bart_tokenizer][reference]") {
  const auto& ref = reference();
  const auto tok = BartTokenizer::from_directory(tokenizer_dir());
  CHECK(tok.bos_id() == ref["bos_id"].get<int64_t>());
  CHECK(tok.eos_id() == ref["eos_id"].get<int64_t>());
  CHECK(tok.pad_id() == ref["pad_id"].get<int64_t>());
  CHECK(tok.unk_id() == ref["unk_id"].get<int64_t>());
  CHECK(tok.mask_id() == ref["mask_id"].get<int64_t>());
  CHECK(tok.vocab_size() == ref["vocab_size"].get<int64_t>());
  CHECK(tok.mask_id() == tok.vocab_size() - 1);  // laid out as facebook/bart-large
  CHECK(tok.id_to_token(tok.mask_id()) == "<mask>");
  CHECK(tok.token_to_id("</s>") == tok.eos_id());
  CHECK(tok.token_to_id("no such token") == tok.unk_id());
}

TEST_CASE("A directory with only tokenizer.json gives the same ids as vocab.json and merges.txt",
          "[bart_tokenizer][reference]") {
  const auto tok = BartTokenizer::from_directory(tokenizer_dir("json_only_dir"));
  compare_cases(tok, reference()["cases"], /*truncated_too=*/false);
}

TEST_CASE("add_prefix_space from the tokenizer config puts a space before each piece as transformers does",
          "[bart_tokenizer][reference]") {
  const auto tok = BartTokenizer::from_directory(tokenizer_dir("prefix_space_dir"));
  CHECK(tok.options().add_prefix_space);
  compare_cases(tok, reference()["prefix_space_cases"], /*truncated_too=*/true);
}

TEST_CASE("Decoding ids cut inside a character replaces each broken sequence by U+FFFD as transformers does",
          "[bart_tokenizer][reference]") {
  const auto tok = BartTokenizer::from_directory(tokenizer_dir());
  Comparer compare;
  for (const auto& c : reference()["raw_decode"]) {
    const auto ids = c["ids"].get<std::vector<int64_t>>();
    compare.text("decode(skip) of " + join(ids), tok.decode(ids, true), c["decode_skip"].get<std::string>());
    compare.text("decode(keep) of " + join(ids), tok.decode(ids, false), c["decode_keep"].get<std::string>());
  }
  CHECK(compare.wrong == 0);
}

TEST_CASE("Truncation keeps <s> and </s> and the first max_length - 2 ids of the text", "[bart_tokenizer]") {
  const auto tok = BartTokenizer::from_directory(tokenizer_dir());
  const std::string text = shared_texts().front();
  const auto full = tok.encode(text);
  REQUIRE(full.size() > 20);
  for (int64_t n : {2, 3, 10, 20}) {
    const auto cut = tok.encode(text, n);
    REQUIRE(cut.size() == static_cast<size_t>(n));
    CHECK(cut.front() == tok.bos_id());
    CHECK(cut.back() == tok.eos_id());
    CHECK(std::equal(cut.begin(), cut.end() - 1, full.begin()));
  }
  CHECK(tok.encode(text, static_cast<int64_t>(full.size()) + 5) == full);
  CHECK(tok.encode(text, static_cast<int64_t>(full.size())) == full);
  CHECK_THROWS_WITH(tok.encode(text, 1), HasSubstring("max_length"));
  CHECK_THROWS_WITH(tok.encode(text, -3), HasSubstring("max_length"));
}

TEST_CASE("decode of encode gives back every shared text", "[bart_tokenizer]") {
  const auto tok = BartTokenizer::from_directory(tokenizer_dir());
  size_t wrong = 0;
  const auto texts = shared_texts();
  for (const auto& text : texts) {
    if (tok.decode(tok.encode(text)) != text && ++wrong <= 3) FAIL_CHECK("round trip of \"" << text.substr(0, 80) << "\"");
  }
  CHECK(texts.size() == 100);
  CHECK(wrong == 0);
  // Special tokens are kept with skip_special_tokens = false.
  CHECK(tok.decode(tok.encode("a <mask> b"), false) == "<s>a<mask> b</s>");  // lstrip took the space
}

TEST_CASE("Tokenizing the whole shared XSum sample takes well under a second", "[bart_tokenizer]") {
  const auto tok = BartTokenizer::from_directory(tokenizer_dir());
  const auto texts = shared_texts();
  const auto fresh = BartTokenizer::from_directory(tokenizer_dir());  // an empty word cache
  const auto start = std::chrono::steady_clock::now();
  size_t count = 0;
  for (const auto& text : texts) count += fresh.encode(text).size();
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO(count << " ids in " << seconds << " s");
  CHECK(count > 10000);
  CHECK(seconds < 0.25);
}

TEST_CASE("Invalid UTF-8 is refused with the byte offset and unknown ids in decode are refused",
          "[bart_tokenizer]") {
  const auto tok = BartTokenizer::from_directory(tokenizer_dir());
  CHECK_THROWS_WITH(tok.encode(std::string("ab\xff" "cd")), HasSubstring("not valid UTF-8 at byte offset 2"));
  CHECK_THROWS_WITH(tok.encode(std::string("caf\xc3")), HasSubstring("byte offset 3"));       // truncated sequence
  CHECK_THROWS_WITH(tok.encode(std::string("x\xc0\xaf")), HasSubstring("byte offset 1"));     // overlong "/"
  CHECK_THROWS_WITH(tok.encode(std::string("\xed\xa0\x80")), HasSubstring("byte offset 0"));  // a surrogate
  CHECK_THROWS_WITH(tok.decode({0, tok.vocab_size()}), HasSubstring("is not in the vocabulary"));
  CHECK_THROWS_WITH(tok.decode({-1}), HasSubstring("id -1"));
  CHECK_THROWS_WITH(tok.id_to_token(tok.vocab_size()), HasSubstring("is not in the vocabulary"));
}

TEST_CASE("Missing or malformed vocab.json and merges.txt are refused naming the file", "[bart_tokenizer]") {
  increlora::test::TempDir dir;
  const std::string vocab = read(tokenizer_dir() + "/vocab.json");
  const std::string merges = read(tokenizer_dir() + "/merges.txt");

  SECTION("a directory without any tokenizer file") {
    CHECK_THROWS_WITH(BartTokenizer::from_directory(dir.path()), HasSubstring("neither vocab.json + merges.txt nor tokenizer.json"));
  }
  SECTION("merges.txt missing") {
    write(dir.file("vocab.json"), vocab);
    CHECK_THROWS_WITH(BartTokenizer::from_directory(dir.path()), HasSubstring(dir.file("merges.txt")));
  }
  SECTION("vocab.json missing") {
    write(dir.file("merges.txt"), merges);
    CHECK_THROWS_WITH(BartTokenizer::from_directory(dir.path()), HasSubstring(dir.file("vocab.json")));
  }
  SECTION("vocab.json not JSON") {
    write(dir.file("vocab.json"), "{\"a\": 1,");
    write(dir.file("merges.txt"), merges);
    CHECK_THROWS_WITH(BartTokenizer::from_directory(dir.path()),
                      HasSubstring(dir.file("vocab.json")) && HasSubstring("not valid JSON"));
  }
  SECTION("vocab.json not an object of ids") {
    write(dir.file("vocab.json"), "{\"a\": \"one\"}");
    write(dir.file("merges.txt"), merges);
    CHECK_THROWS_WITH(BartTokenizer::from_directory(dir.path()), HasSubstring(dir.file("vocab.json")) && HasSubstring("\"a\""));
  }
  SECTION("a merges.txt line that is not a pair") {
    write(dir.file("vocab.json"), vocab);
    write(dir.file("merges.txt"), "#version: 0.2\n\xc4\xa0 t\nthree parts here\n");
    CHECK_THROWS_WITH(BartTokenizer::from_directory(dir.path()),
                      HasSubstring(dir.file("merges.txt")) && HasSubstring("line 3"));
  }
  SECTION("a merge of tokens the vocabulary lacks") {
    write(dir.file("vocab.json"), vocab);
    write(dir.file("merges.txt"), "#version: 0.2\nzzzq zzzr\n");
    CHECK_THROWS_WITH(BartTokenizer::from_directory(dir.path()),
                      HasSubstring(dir.file("merges.txt")) && HasSubstring("line 2") && HasSubstring("zzzq"));
  }
  SECTION("tokenizer.json not JSON") {
    write(dir.file("tokenizer.json"), "not json");
    CHECK_THROWS_WITH(BartTokenizer::from_directory(dir.path()),
                      HasSubstring(dir.file("tokenizer.json")) && HasSubstring("not valid JSON"));
  }
  SECTION("the constructor names the file it was given") {
    CHECK_THROWS_WITH(BartTokenizer(dir.file("nope.json"), dir.file("nope.txt")), HasSubstring(dir.file("nope.json")));
  }
}
