// libFuzzer target: the WordPiece tokenizer of models/ (BertTokenizer's pipeline) and what it reads. The first
// byte of the input says what the rest is:
//   'V'   a vocab.txt: a tokenizer is built from it (default settings) and tokenizes a few fixed sentences;
//   'C'   a tokenizer_config.json beside a real vocabulary (the first lines of all-MiniLM-L6-v2's): the same;
//   other the text: all-MiniLM-L6-v2's tokenizer (its vocab.txt and tokenizer_config.json) tokenizes it, with
//         offsets, and encodes it as a pair split at the first tab, truncated to (first byte % 64) tokens.
// Every result is checked against the documented invariants (ids inside the vocabulary, offsets inside the text
// and covering at least one byte, the [CLS] a [SEP] (b [SEP]) layout within max_length).
// Seeds: 'V' and 'C' from the MiniLM files (written here); text from GLUE sentences and fuzz/corpus/tokenizer
// (written by scripts/sanitize.sh).
#include "fuzz_support.hpp"

#include <increlora/models/wordpiece.hpp>

#include <c10/util/Exception.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#ifndef INCRELORA_MINILM_DIR
#define INCRELORA_MINILM_DIR ""
#endif

namespace {

using namespace increlora::fuzz;
using increlora::bert::WordPieceTokenizer;

constexpr int kSmallVocabLines = 1200;  // [PAD], [unused*], [UNK], [CLS], [SEP], [MASK], punctuation, letters

std::unique_ptr<WordPieceTokenizer> minilm;
std::string scratch_vocab, scratch_config_dir;

const char* const kSentences[] = {
    "Hello, World! It's a charming and often affecting journey.",
    "Héllo wörld [CLS] naïve café [SEP] [MASK] 東京 ﬁ ＡＢＣ \t\r\n\x01 end",
    "unaffable supercalifragilisticexpialidocious ##piece",
};

void check_ids(const WordPieceTokenizer& tok, const std::vector<int64_t>& ids, const std::string& what) {
  for (const auto id : ids) {
    if (id < 0 || id >= tok.vocab_size()) fail(what + ": id " + std::to_string(id) + " outside the vocabulary");
  }
}

void exercise(const WordPieceTokenizer& tok, const std::string& text, const std::optional<std::string>& pair,
              int64_t max_length) {
  const auto pieces = tok.tokenize(text);
  const auto ids = tok.encode_text(text);
  check_ids(tok, ids, "encode_text");
  if (ids.size() != pieces.size()) fail("encode_text and tokenize disagree on the number of pieces");
  for (size_t i = 0; i < ids.size(); ++i) {
    if (tok.id_to_token(ids[i]) != pieces[i] && ids[i] != tok.unk_id()) {
      fail("piece '" + pieces[i] + "' has the id of '" + tok.id_to_token(ids[i]) + "'");
    }
  }
  const auto spans = tok.encode_with_offsets(text);
  check_ids(tok, spans.ids, "encode_with_offsets");
  if (spans.ids != ids) fail("encode_with_offsets gives other ids than encode_text");
  if (spans.offsets.size() != spans.ids.size()) fail("encode_with_offsets: one offset per id expected");
  const auto n = static_cast<int64_t>(text.size());
  for (const auto& [first, last] : spans.offsets) {
    if (first < 0 || first >= last || last > n) {
      fail("offset [" + std::to_string(first) + ", " + std::to_string(last) + ") outside the text of " +
           std::to_string(n) + " bytes or empty");
    }
  }
  const auto enc = tok.encode(text, pair, max_length);
  check_ids(tok, enc.input_ids, "encode");
  if (enc.token_type_ids.size() != enc.input_ids.size()) fail("encode: token_type_ids and input_ids differ in length");
  const size_t specials = pair ? 3 : 2;
  if (enc.input_ids.size() < specials || enc.input_ids.front() != tok.cls_id() || enc.input_ids.back() != tok.sep_id()) {
    fail("encode: not [CLS] ... [SEP]");
  }
  if (max_length > static_cast<int64_t>(specials) && static_cast<int64_t>(enc.input_ids.size()) > max_length) {
    fail("encode: " + std::to_string(enc.input_ids.size()) + " tokens for max_length " + std::to_string(max_length));
  }
}

void build_fixture(const std::string& dir) {
  const char* env = std::getenv("INCRELORA_MINILM_DIR");
  const std::string minilm_dir = env && *env ? env : INCRELORA_MINILM_DIR;
  if (!exists(minilm_dir + "/vocab.txt")) {
    throw std::runtime_error("fuzz_tokenizer: no vocab.txt in '" + minilm_dir +
                             "' (run scripts/setup.sh, or set INCRELORA_MINILM_DIR to a BERT checkpoint)");
  }
  make_dirs(dir + "/full");
  copy_file(minilm_dir + "/vocab.txt", dir + "/full/vocab.txt");
  if (exists(minilm_dir + "/tokenizer_config.json")) {
    copy_file(minilm_dir + "/tokenizer_config.json", dir + "/full/tokenizer_config.json");
  }
  std::istringstream in(read_file(minilm_dir + "/vocab.txt"));
  std::string line, small;
  for (int i = 0; i < kSmallVocabLines && std::getline(in, line); ++i) small += line + "\n";
  write_file(dir + "/small_vocab.txt", small);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const auto dir = fixture("fuzz_tokenizer", build_fixture);
  minilm = std::make_unique<WordPieceTokenizer>(WordPieceTokenizer::from_directory(dir + "/full"));
  seed("vocab_small", "V" + read_file(dir + "/small_vocab.txt"));
  const std::string config = exists(dir + "/full/tokenizer_config.json")
                                 ? read_file(dir + "/full/tokenizer_config.json")
                                 : R"({"do_lower_case": true, "unk_token": "[UNK]"})";
  seed("config_minilm", "C" + config);
  seed("config_cased", R"(C{"do_lower_case": false, "strip_accents": true, "tokenize_chinese_chars": false})");
  scratch_vocab = scratch_dir() + "/vocab.txt";
  scratch_config_dir = scratch_dir() + "/config";
  make_dirs(scratch_config_dir);
  copy_file(dir + "/small_vocab.txt", scratch_config_dir + "/vocab.txt");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  try {
    if (data[0] == 'V' || data[0] == 'C') {
      std::unique_ptr<WordPieceTokenizer> tok;
      if (data[0] == 'V') {
        write_file(scratch_vocab, rest);
        tok = std::make_unique<WordPieceTokenizer>(scratch_vocab);
      } else {
        write_file(scratch_config_dir + "/tokenizer_config.json", rest);
        tok = std::make_unique<WordPieceTokenizer>(WordPieceTokenizer::from_directory(scratch_config_dir));
      }
      for (const char* s : kSentences) exercise(*tok, s, std::string("a second part"), 12);
    } else {
      const auto tab = rest.find('\t');
      const auto max_length = static_cast<int64_t>(data[0] % 64);
      if (tab == std::string::npos) {
        exercise(*minilm, rest, std::nullopt, max_length);
      } else {
        exercise(*minilm, rest.substr(0, tab), rest.substr(tab + 1), max_length);
      }
    }
  } catch (const c10::Error&) {
    // The expected refusal of a vocabulary or a config the tokenizer cannot use.
  }
  return 0;
}
