// The WordPiece tokenizer gives Hugging Face BertTokenizer's ids: on every sentence of the shared GLUE dev
// sets (plus part of SST-2 train, MRPC train and QNLI dev) and on hand-picked hard strings (accents, CJK,
// Hangul, emoji, control characters, special tokens in the text), with and without truncation.
#include "support.hpp"

#include <increlora/models/wordpiece.hpp>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <fstream>

using increlora::bert::WordPieceTokenizer;

namespace {

std::string reference_dir() { return INCRELORA_BERT_REFERENCE_DIR; }

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  INFO("reference file " << path << " (written by the ctest fixture bert_reference: run ctest, or "
                                    "tests/models/make_reference.py)");
  REQUIRE(in.good());
  nlohmann::json j;
  in >> j;
  return j;
}

std::string join(const std::vector<int64_t>& v) {
  std::string s;
  for (auto x : v) s += (s.empty() ? "" : " ") + std::to_string(x);
  return s;
}

}  // namespace

TEST_CASE("Token ids equal BertTokenizer's on the shared GLUE sentences", "[bert][tokenizer][reference]") {
  const auto tok = WordPieceTokenizer::from_directory(INCRELORA_MINILM_DIR);
  const auto ref = read_json(reference_dir() + "/tokens.json");
  size_t checked = 0, wrong = 0;
  auto compare = [&](const std::string& what, const std::vector<int64_t>& got, const std::vector<int64_t>& want) {
    ++checked;
    if (got == want) return;
    if (++wrong <= 5) FAIL_CHECK(what << "\n  ours:        " << join(got) << "\n  BertTokenizer: " << join(want));
  };
  for (const auto& s : ref["single"]) {
    const auto text = s["text"].get<std::string>();
    compare("single: " + text, tok.encode(text).input_ids, s["ids"].get<std::vector<int64_t>>());
    compare("single, max_length 16: " + text, tok.encode(text, std::nullopt, 16).input_ids,
            s["ids_16"].get<std::vector<int64_t>>());
  }
  for (const auto& p : ref["pairs"]) {
    const auto a = p["a"].get<std::string>(), b = p["b"].get<std::string>();
    const auto full = tok.encode(a, b);
    compare("pair: " + a + " || " + b, full.input_ids, p["ids"].get<std::vector<int64_t>>());
    compare("pair types: " + a, full.token_type_ids, p["types"].get<std::vector<int64_t>>());
    const auto cut = tok.encode(a, b, 23);
    compare("pair, max_length 23: " + a + " || " + b, cut.input_ids, p["ids_23"].get<std::vector<int64_t>>());
    compare("pair types, max_length 23: " + a, cut.token_type_ids, p["types_23"].get<std::vector<int64_t>>());
    const auto odd = tok.encode(a, b, 24);
    compare("pair, max_length 24: " + a + " || " + b, odd.input_ids, p["ids_24"].get<std::vector<int64_t>>());
    compare("pair types, max_length 24: " + a, odd.token_type_ids, p["types_24"].get<std::vector<int64_t>>());
  }
  INFO(wrong << " of " << checked << " encodings differ");
  CHECK(checked > 20000);
  CHECK(wrong == 0);
}

TEST_CASE("Offsets equal the fast BertTokenizer's offset mapping in bytes", "[bert][tokenizer][reference]") {
  const auto tok = WordPieceTokenizer::from_directory(INCRELORA_MINILM_DIR);
  const auto ref = read_json(reference_dir() + "/offsets.json");
  size_t checked = 0, wrong = 0;
  for (const auto& s : ref) {
    const auto text = s["text"].get<std::string>();
    const auto got = tok.encode_with_offsets(text);
    ++checked;
    std::vector<int64_t> begins, ends, want_begins, want_ends;
    for (const auto& [b, e] : got.offsets) begins.push_back(b), ends.push_back(e);
    for (const auto& o : s["offsets"]) want_begins.push_back(o[0]), want_ends.push_back(o[1]);
    // The ids are encode_text's, and every piece covers a part of the text.
    CHECK(got.ids == tok.encode_text(text));
    if (got.ids == s["ids"].get<std::vector<int64_t>>() && begins == want_begins && ends == want_ends) continue;
    if (++wrong <= 5) {
      FAIL_CHECK(text << "\n  ours:    " << join(begins) << " / " << join(ends) << "\n  fast BertTokenizer: "
                      << join(want_begins) << " / " << join(want_ends));
    }
  }
  INFO(wrong << " of " << checked << " texts differ");
  CHECK(checked > 500);
  CHECK(wrong == 0);
}

TEST_CASE("Offsets cover the bytes of each piece", "[bert][tokenizer]") {
  const auto tok = WordPieceTokenizer::from_directory(INCRELORA_MINILM_DIR);
  const std::string text = "Naïve  [SEP]unaffable\tcafé!";
  const auto got = tok.encode_with_offsets(text);
  REQUIRE(got.ids.size() == got.offsets.size());
  std::vector<std::string> covered;
  for (const auto& [b, e] : got.offsets) covered.push_back(text.substr(b, e - b));
  // "naïve" keeps its two-byte ï inside the piece; [SEP] in the text stays whole; "##" pieces cover their own part.
  CHECK(covered.front() == "Naïve");
  CHECK(std::find(covered.begin(), covered.end(), "[SEP]") != covered.end());
  CHECK(covered.back() == "!");
  CHECK(covered[covered.size() - 2] == "café");
}

TEST_CASE("The tokenizer splits punctuation, strips accents and marks continuations", "[bert][tokenizer]") {
  const auto tok = WordPieceTokenizer::from_directory(INCRELORA_MINILM_DIR);
  CHECK(tok.tokenize("Héllo, WORLD!") == std::vector<std::string>{"hello", ",", "world", "!"});
  CHECK(tok.tokenize("unaffable") == std::vector<std::string>{"una", "##ffa", "##ble"});
  CHECK(tok.tokenize(std::string(101, 'a')) == std::vector<std::string>{"[UNK]"});
  CHECK(tok.tokenize("a [SEP] b") == std::vector<std::string>{"a", "[SEP]", "b"});
  CHECK(tok.cls_id() == 101);
  CHECK(tok.sep_id() == 102);
  CHECK(tok.pad_id() == 0);
  CHECK(tok.vocab_size() == 30522);
  const auto e = tok.encode("one two three four", std::string("five six"), 7);
  CHECK(e.input_ids.size() == 7);  // longest_first: 2 + 2 tokens kept
  CHECK(e.token_type_ids == std::vector<int64_t>{0, 0, 0, 0, 1, 1, 1});
  CHECK_THROWS_WITH(tok.encode("a", std::string("b"), 2), HasSubstring("leaves no room for the 3 special tokens"));
  CHECK_THROWS_WITH(WordPieceTokenizer("/nonexistent/vocab.txt"), HasSubstring("cannot open the vocabulary file"));
}

TEST_CASE("UTF-8 decoding round-trips and replaces invalid bytes", "[bert][tokenizer]") {
  namespace d = increlora::bert::detail;
  const std::string text = "aé東🙂";
  CHECK(d::utf8_decode(text) == std::u32string{U'a', U'é', U'東', U'🙂'});
  CHECK(d::utf8_encode(d::utf8_decode(text)) == text);
  CHECK(d::utf8_decode(std::string("a\xff" "b")) == std::u32string{U'a', 0xFFFD, U'b'});
}
