// The DeBERTa-v2/v3 tokenizer (SentencePiece through Debian's libsentencepiece) gives Hugging Face's ids on a
// small unigram model laid out like DeBERTa-v3's spm.model, trained by the pip sentencepiece (so these suites also
// show that the Debian library reads what the pip trainer writes). The fixture deberta_tokenizer_reference
// (make_deberta_tokenizer_reference.py) writes the model directories and what Hugging Face gives:
//   * piece ids: transformers 4's sentencepiece-based DebertaV2Tokenizer (restated on the sentencepiece package,
//     since transformers 5's DebertaV2Tokenizer is tokenizers-backed and normalises differently);
//   * [CLS]/[SEP], token_type_ids, longest_first truncation and offsets: the fast tokenizer that transformers'
//     DebertaV2Converter builds from the same model (the tokenizers library), on texts where its ids agree.
#include "catch.hpp"
#include "temp_dir.hpp"

#include <increlora/models/deberta_tokenizer.hpp>

#include <nlohmann/json.hpp>

#include <c10/util/Exception.h>

#include <fstream>

using increlora::deberta::DebertaV2Tokenizer;

namespace {

std::string reference_dir() { return INCRELORA_DEBERTA_TOKENIZER_REFERENCE_DIR; }

const nlohmann::json& reference() {
  static const nlohmann::json j = [] {
    const std::string path = reference_dir() + "/reference.json";
    std::ifstream in(path);
    INFO("reference file " << path << " (written by the ctest fixture deberta_tokenizer_reference: run ctest, or "
                                      "tests/models/make_deberta_tokenizer_reference.py)");
    REQUIRE(in.good());
    nlohmann::json r;
    in >> r;
    return r;
  }();
  return j;
}

template <class T>
std::string join(const std::vector<T>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : " ") + std::to_string(x);
  return s;
}

std::string join_spans(const std::vector<std::pair<int64_t, int64_t>>& v) {
  std::string s;
  for (const auto& [b, e] : v) s += (s.empty() ? "(" : " (") + std::to_string(b) + "," + std::to_string(e) + ")";
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
};

std::string variant_dir(const std::string& variant) { return reference_dir() + "/tokenizer_" + variant; }

}  // namespace

TEST_CASE("Piece ids equal the sentencepiece-based DebertaV2Tokenizer on GLUE and SQuAD text and hard strings",
          "[deberta_tokenizer][reference]") {
  const std::string variant = GENERATE("default", "lower_punct");
  const auto& ref = reference()["variants"][variant];
  const auto tok = DebertaV2Tokenizer::from_directory(variant_dir(variant));
  CHECK(tok.options().do_lower_case == ref["do_lower_case"].get<bool>());
  CHECK(tok.options().split_by_punct == ref["split_by_punct"].get<bool>());
  Comparer compare;
  for (const auto& t : ref["texts"]) {
    const auto text = t["text"].get<std::string>();
    const auto want = t["ids"].get<std::vector<int64_t>>();
    const auto got = tok.encode_text(text);
    compare(variant + ": '" + text + "'\n  ours:        " + join(got) + "\n  transformers: " + join(want), got, want);
  }
  INFO(variant << ": " << compare.checked << " texts");
  CHECK(compare.checked > 2000);
  CHECK(compare.wrong == 0);
}

TEST_CASE("Single texts and pairs equal the fast tokenizer's input_ids and token_type_ids with longest_first",
          "[deberta_tokenizer][reference]") {
  const std::string variant = GENERATE("default", "lower_punct");
  const auto& ref = reference()["variants"][variant];
  const auto tok = DebertaV2Tokenizer::from_directory(variant_dir(variant));
  Comparer compare;
  for (const auto& s : ref["singles"]) {
    const auto a = s["a"].get<std::string>();
    const int64_t max_length = s["max_length"];
    const auto e = tok.encode(a, std::nullopt, max_length);
    const auto want = s["input_ids"].get<std::vector<int64_t>>();
    compare(variant + " single, max_length " + std::to_string(max_length) + ": '" + a + "'\n  ours: " +
                join(e.input_ids) + "\n  fast: " + join(want),
            e.input_ids, want);
    compare(variant + " single types: '" + a + "'", e.token_type_ids, s["token_type_ids"].get<std::vector<int64_t>>());
  }
  size_t truncated = 0;
  for (const auto& p : ref["pairs"]) {
    const auto a = p["a"].get<std::string>(), b = p["b"].get<std::string>();
    const int64_t max_length = p["max_length"];
    const auto e = tok.encode(a, b, max_length);
    const auto want = p["input_ids"].get<std::vector<int64_t>>();
    if (max_length > 0 && static_cast<int64_t>(want.size()) == max_length) ++truncated;
    compare(variant + " pair, max_length " + std::to_string(max_length) + ": '" + a + "' || '" + b + "'\n  ours: " +
                join(e.input_ids) + "\n  fast: " + join(want),
            e.input_ids, want);
    compare(variant + " pair types, max_length " + std::to_string(max_length) + ": '" + a + "' || '" + b +
                "'\n  ours: " + join(e.token_type_ids) + "\n  fast: " + join(p["token_type_ids"].get<std::vector<int64_t>>()),
            e.token_type_ids, p["token_type_ids"].get<std::vector<int64_t>>());
  }
  INFO(variant << ": " << compare.checked << " comparisons, " << truncated << " truncated pairs");
  CHECK(ref["singles"].size() > 500);
  CHECK(ref["pairs"].size() > 2000);
  CHECK(truncated > 1000);  // the truncation rule is exercised, not only the layout
  CHECK(compare.wrong == 0);
}

TEST_CASE("Offsets equal the fast tokenizer's offset mapping in bytes on SQuAD contexts and questions",
          "[deberta_tokenizer][reference]") {
  const std::string variant = GENERATE("default", "lower_punct");
  const auto& ref = reference()["variants"][variant];
  const auto tok = DebertaV2Tokenizer::from_directory(variant_dir(variant));
  Comparer compare;
  size_t changed_checked = 0;
  for (const auto& t : ref["offsets"]) {
    const auto text = t["text"].get<std::string>();
    const auto spans = tok.encode_with_offsets(text);
    const auto want_ids = t["ids"].get<std::vector<int64_t>>();
    auto want = t["offsets"].get<std::vector<std::pair<int64_t, int64_t>>>();
    compare(variant + " ids: '" + text + "'", spans.ids, want_ids);
    if (spans.ids != want_ids) continue;
    if (t["normalisation_changes"].get<bool>()) {
      // Characters that normalisation composes, expands or drops: SentencePiece's alignment and the fast
      // tokenizer's may differ by those characters; each of our spans still overlaps the fast one.
      ++changed_checked;
      for (size_t k = 0; k < want.size(); ++k) {
        const auto& [b, e] = spans.offsets[k];
        if (b <= want[k].second && want[k].first <= e) want[k] = spans.offsets[k];
      }
    }
    compare(variant + " offsets: '" + text + "'\n  ours: " + join_spans(spans.offsets) + "\n  fast: " + join_spans(want),
            spans.offsets, want);
  }
  INFO(variant << ": " << compare.checked << " comparisons");
  CHECK(ref["offsets"].size() > 300);
  CHECK(changed_checked >= 1);
  CHECK(compare.wrong == 0);
}

TEST_CASE("Offsets are non-empty byte ranges of the text in increasing order",
          "[deberta_tokenizer]") {
  const auto tok = DebertaV2Tokenizer::from_directory(variant_dir("default"));
  for (const std::string text : {"The Normans were the people who in the 10th and 11th centuries gave their name",
                                 "  two  spaces\tand tab", "x [SEP] y", "東京 a", "ﬁne", "", "\xff invalid byte"}) {
    const auto spans = tok.encode_with_offsets(text);
    INFO("'" << text << "': " << join_spans(spans.offsets));
    REQUIRE(spans.offsets.size() == spans.ids.size());
    CHECK(spans.ids == tok.encode_text(text));
    int64_t previous = 0;
    for (const auto& [b, e] : spans.offsets) {
      CHECK(0 <= b);
      CHECK(b < e);
      CHECK(e <= static_cast<int64_t>(text.size()));
      CHECK(b >= previous);
      previous = b;
    }
  }
  // "▁Normans" covers the space before the word and the word, as the fast tokenizer's offsets do; the first
  // word's "▁" stands for no character.
  const std::string text = "The Normans";
  const auto spans = tok.encode_with_offsets(text);
  REQUIRE(!spans.offsets.empty());
  CHECK(spans.offsets.front().first == 0);
  CHECK(spans.offsets.back().second == static_cast<int64_t>(text.size()));
}

TEST_CASE("Special tokens have DeBERTa-v3's ids and the mask token comes after the last piece",
          "[deberta_tokenizer]") {
  const int64_t pieces = reference()["piece_count"];
  const auto dir = DebertaV2Tokenizer::from_directory(variant_dir("default"));
  const DebertaV2Tokenizer file(variant_dir("default") + "/spm.model");  // no JSON: the defaults, [MASK] appended
  for (const auto* tok : {&dir, &file}) {
    CHECK(tok->pad_id() == 0);
    CHECK(tok->cls_id() == 1);
    CHECK(tok->sep_id() == 2);
    CHECK(tok->unk_id() == 3);
    CHECK(tok->mask_id() == pieces);
    CHECK(tok->vocab_size() == pieces + 1);
    CHECK(tok->token_to_id("[MASK]") == pieces);
    CHECK(tok->id_to_token(pieces) == "[MASK]");
    CHECK(tok->id_to_token(1) == "[CLS]");
    CHECK(tok->token_to_id("no such piece anywhere") == tok->unk_id());
    for (int64_t id = 0; id < tok->vocab_size(); ++id) CHECK(tok->token_to_id(tok->id_to_token(id)) == id);
    // Special tokens in the text stay whole; an unknown character becomes [UNK].
    const auto ids = tok->encode_text("[CLS]x[MASK]");
    REQUIRE(ids.size() >= 3);
    CHECK(ids.front() == 1);
    CHECK(ids.back() == pieces);
    CHECK(tok->encode_text("\xe2\x98\x83") == std::vector<int64_t>{tok->token_to_id("\xe2\x96\x81"), 3});
  }
  const auto e = dir.encode("a b", std::string("c"));
  CHECK(e.input_ids.front() == 1);
  CHECK(e.input_ids.back() == 2);
  CHECK(e.token_type_ids.front() == 0);
  CHECK(e.token_type_ids.back() == 1);
}

TEST_CASE("Missing or corrupt files and impossible arguments give errors that name the file", "[deberta_tokenizer]") {
  increlora::test::TempDir tmp;
  CHECK_THROWS_WITH(DebertaV2Tokenizer(tmp.file("spm.model")),
                    HasSubstring("cannot open the SentencePiece model") && HasSubstring(tmp.file("spm.model")));
  CHECK_THROWS_WITH(DebertaV2Tokenizer::from_directory(tmp.path()), HasSubstring(tmp.file("spm.model")));
  increlora::test::write_bytes(tmp.file("spm.model"), "this is not a protobuf model\n\x01\x02\x03");
  CHECK_THROWS_WITH(DebertaV2Tokenizer::from_directory(tmp.path()),
                    HasSubstring("is not a SentencePiece model") && HasSubstring(tmp.file("spm.model")));
  // A valid model with a broken tokenizer_config.json: the error names that file.
  increlora::test::write_bytes(tmp.file("spm.model"),
                               increlora::test::read_bytes(variant_dir("default") + "/spm.model"));
  increlora::test::write_bytes(tmp.file("tokenizer_config.json"), "{\"do_lower_case\": tru");
  CHECK_THROWS_WITH(DebertaV2Tokenizer::from_directory(tmp.path()),
                    HasSubstring("tokenizer_config.json is not valid JSON"));
  increlora::test::write_bytes(tmp.file("tokenizer_config.json"), "{\"do_lower_case\": true}");
  const auto tok = DebertaV2Tokenizer::from_directory(tmp.path());
  CHECK(tok.options().do_lower_case);
  CHECK_THROWS_WITH(tok.id_to_token(tok.vocab_size()), HasSubstring("neither a piece"));
  CHECK_THROWS_WITH(tok.id_to_token(-1), HasSubstring("neither a piece"));
  CHECK_THROWS_WITH(tok.encode("a", std::string("b"), 2), HasSubstring("leaves no room for the 3 special tokens"));
  CHECK_NOTHROW(tok.encode("a", std::string("b"), 3));
}
