// Greedy and beam search equal transformers' generate: a toy decoder whose next-token logits are a fixed random
// table looked up by (example, last two tokens) runs through increlora::models::generate and, as a
// transformers model over the same table (make_generation_reference.py), through GenerationMixin.generate, under
// many settings (num_beams 1 to 5, length_penalty, early_stopping True / False / "never", no_repeat_ngram_size,
// min_length, forced BOS/EOS, max_new_tokens, pad id 0); the sequences must be identical. A tiny random BART
// checkpoint generates as transformers' BartForConditionalGeneration does. GenerationConfig reads
// generation_config.json or config.json; bad settings throw naming what to change.
#include "support.hpp"
#include "temp_dir.hpp"

#include <increlora/models/generation.hpp>

#include <increlora/safetensors.hpp>

#include <ATen/Parallel.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <memory>
#include <sstream>

#if __has_include(<increlora/models/bart.hpp>)
#include <increlora/models/bart.hpp>
#define INCRELORA_TEST_BART 1
#endif

namespace models = increlora::models;

namespace {

std::string reference_dir() { return INCRELORA_GENERATION_REFERENCE_DIR; }

nlohmann::json read_json(const std::string& path) {
  INFO("reference file " << path
                         << " (written by the ctest fixture generation_reference: run ctest, or "
                            "tests/models/make_generation_reference.py --out "
                         << reference_dir() << ")");
  std::ifstream in(path);
  REQUIRE(in.good());
  std::stringstream text;
  text << in.rdbuf();
  return nlohmann::json::parse(text.str());
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

// The toy model of make_generation_reference.py: the logits of the next token are row
// (example · V + prev) · V + last of the table, where last and prev are the prefix's last two tokens (prev = last
// while the prefix holds only the decoder start).
class TableDecoder : public models::IncrementalDecoder {
 public:
  TableDecoder(torch::Tensor table, int64_t vocab, torch::Tensor example)
      : table_(std::move(table)), vocab_(vocab), example_(example.to(table_.device())) {}
  int64_t rows() const override { return example_.size(0); }
  torch::Tensor step(const torch::Tensor& tokens) override {
    REQUIRE(tokens.dim() == 1);
    REQUIRE(tokens.size(0) == rows());
    const auto t = tokens.to(table_.device());
    prev_ = last_.defined() ? last_ : t;
    last_ = t;
    ++steps;
    return table_.index_select(0, (example_ * vocab_ + prev_) * vocab_ + last_);
  }
  void reorder(const torch::Tensor& index) override {
    const auto i = index.to(table_.device());
    example_ = example_.index_select(0, i);
    prev_ = prev_.index_select(0, i);
    last_ = last_.index_select(0, i);
  }
  int64_t steps = 0;

 private:
  torch::Tensor table_;
  int64_t vocab_;
  torch::Tensor example_, prev_, last_;
};

// `examples` examples with `copies` consecutive rows each.
std::unique_ptr<TableDecoder> table_decoder(const torch::Tensor& table, int64_t vocab, int64_t examples,
                                            int64_t copies) {
  return std::make_unique<TableDecoder>(table, vocab, torch::arange(examples).repeat_interleave(copies));
}

torch::Tensor sequences_of(const nlohmann::json& rows) {
  std::vector<torch::Tensor> out;
  for (const auto& row : rows) out.push_back(torch::tensor(row.get<std::vector<int64_t>>(), torch::kLong));
  return torch::stack(out);
}

// A Hugging Face generation config, as JSON, read through GenerationConfig::from_model_dir.
models::GenerationConfig config_of(const nlohmann::json& settings) {
  increlora::test::TempDir dir;
  write_file(dir.file("generation_config.json"), settings.dump());
  return models::GenerationConfig::from_model_dir(dir.path());
}

void check_same_sequences(const torch::Tensor& ours, const torch::Tensor& expected) {
  INFO("ours:\n" << ours << "\ntransformers:\n" << expected);
  REQUIRE(ours.sizes() == expected.sizes());
  CHECK(torch::equal(ours, expected));
}

class FixedDecoder : public models::IncrementalDecoder {
 public:
  explicit FixedDecoder(int64_t rows, int64_t vocab = 8) : rows_(rows), vocab_(vocab) {}
  int64_t rows() const override { return rows_; }
  torch::Tensor step(const torch::Tensor&) override { return torch::zeros({rows_, vocab_}); }
  void reorder(const torch::Tensor& index) override { rows_ = index.size(0); }

 private:
  int64_t rows_, vocab_;
};

}  // namespace

TEST_CASE("Greedy and beam search give transformers' sequences on a toy table model under every setting",
          "[generation]") {
  const auto reference = read_json(reference_dir() + "/toy_cases.json");
  const int64_t vocab = reference["vocab_size"].get<int64_t>();
  const int64_t examples = reference["examples"].get<int64_t>();
  const auto device = GENERATE(from_range(increlora::test::devices()));
  const auto table = increlora::SafetensorsFile(reference_dir() + "/toy_table.safetensors").tensor("table").to(device);
  REQUIRE(table.size(0) == examples * vocab * vocab);
  REQUIRE(reference["cases"].size() >= 20);
  for (const auto& c : reference["cases"]) {
    DYNAMIC_SECTION(c["name"].get<std::string>() << " on " << device) {
      INFO("settings: " << c["config"].dump());
      const auto config = config_of(c["config"]);
      auto decoder = table_decoder(table, vocab, examples, config.num_beams);
      const auto ours = models::generate(*decoder, examples, config);
      CHECK(ours.device().is_cpu());
      CHECK(ours.scalar_type() == torch::kLong);
      check_same_sequences(ours, sequences_of(c["sequences"]));
      // One decoder step per position at most: greedy stops with the last row, beam search may run past the
      // length of the best hypothesis.
      if (config.num_beams == 1) CHECK(decoder->steps == ours.size(1) - 1);
      CHECK(decoder->steps <= config.effective_max_length() - 1);
    }
  }
}

TEST_CASE("Greedy search pads rows that produced EOS and stops when every row has", "[generation]") {
  // Row 0 prefers EOS; row 1 prefers token 3 until its fourth step, then EOS. EOS is forbidden at the first step.
  class Scripted : public models::IncrementalDecoder {
   public:
    int64_t rows() const override { return 2; }
    torch::Tensor step(const torch::Tensor&) override {
      ++steps;
      auto logits = torch::zeros({2, 6});
      logits[0][2] = 5;
      logits[1][3] = 5;
      if (steps >= 4) logits[1][2] = 9;
      return logits;
    }
    void reorder(const torch::Tensor&) override {}
    int64_t steps = 0;
  } decoder;
  models::GenerationConfig config;
  config.max_length = 10;
  config.min_length = 2;
  const auto out = models::generate(decoder, 2, config);
  // Row 0 takes the best non-EOS token first (0, the first of the ties), then EOS, then the pad id (1).
  const auto expected = torch::tensor({2, 0, 2, 1, 1, 2, 3, 3, 3, 2}, torch::kLong).view({2, 5});
  check_same_sequences(out, expected);
  CHECK(decoder.steps == 4);
}

TEST_CASE("GenerationConfig reads config.json's generation fields when generation_config.json is absent",
          "[generation]") {
  increlora::test::TempDir dir;
  write_file(dir.file("config.json"), R"({"model_type": "bart", "d_model": 16, "num_beams": 4, "max_length": 142,
    "min_length": 56, "length_penalty": 2.0, "no_repeat_ngram_size": 3, "early_stopping": true,
    "decoder_start_token_id": 2, "bos_token_id": 0, "eos_token_id": 2, "pad_token_id": 1,
    "forced_bos_token_id": 0, "forced_eos_token_id": 2, "max_new_tokens": null})");
  auto c = models::GenerationConfig::from_model_dir(dir.path());
  CHECK(c.num_beams == 4);
  CHECK(c.max_length == 142);
  CHECK(c.min_length == 56);
  CHECK(c.length_penalty == 2.0);
  CHECK(c.no_repeat_ngram_size == 3);
  CHECK(c.early_stopping == models::EarlyStopping::kTrue);
  CHECK(c.decoder_start_token_id == 2);
  CHECK(c.bos_token_id == 0);
  CHECK(c.eos_token_id == 2);
  CHECK(c.pad_token_id == 1);
  CHECK(c.forced_bos_token_id == std::optional<int64_t>(0));
  CHECK(c.forced_eos_token_id == std::optional<int64_t>(2));
  CHECK_FALSE(c.max_new_tokens.has_value());
  CHECK(c.effective_max_length() == 142);

  SECTION("generation_config.json takes precedence; null values and absent fields keep the defaults") {
    write_file(dir.file("generation_config.json"),
               R"({"num_beams": 2, "early_stopping": "never", "eos_token_id": [2], "forced_bos_token_id": null,
                   "max_new_tokens": 7, "length_penalty": 1})");
    c = models::GenerationConfig::from_model_dir(dir.path());
    const models::GenerationConfig defaults;
    CHECK(c.num_beams == 2);
    CHECK(c.early_stopping == models::EarlyStopping::kNever);
    CHECK(c.eos_token_id == 2);
    CHECK(c.length_penalty == 1.0);
    CHECK_FALSE(c.forced_bos_token_id.has_value());
    CHECK(c.max_length == defaults.max_length);
    CHECK(c.min_length == defaults.min_length);
    CHECK(c.no_repeat_ngram_size == 0);
    CHECK(c.effective_max_length() == 8);
  }
  SECTION("a field of the wrong type throws naming the file and the field") {
    for (const std::string bad : {R"({"num_beams": "4"})", R"({"early_stopping": "sometimes"})",
                                  R"({"length_penalty": true})", R"({"max_length": 1.5})",
                                  R"({"eos_token_id": [2, 3]})", R"({"forced_eos_token_id": [2]})"}) {
      INFO(bad);
      write_file(dir.file("generation_config.json"), bad);
      const auto field = bad.substr(2, bad.find('"', 2) - 2);
      CHECK_THROWS_WITH(models::GenerationConfig::from_model_dir(dir.path()),
                        HasSubstring("generation_config.json") && HasSubstring("\"" + field + "\"") &&
                            HasSubstring("expected"));
    }
  }
  SECTION("a file that is not JSON throws naming it") {
    write_file(dir.file("generation_config.json"), "{num_beams: 4");
    CHECK_THROWS_WITH(models::GenerationConfig::from_model_dir(dir.path()),
                      HasSubstring("generation_config.json") && HasSubstring("not valid JSON"));
  }
}

TEST_CASE("GenerationConfig::from_model_dir throws for a directory without a config", "[generation]") {
  increlora::test::TempDir dir;
  CHECK_THROWS_WITH(models::GenerationConfig::from_model_dir(dir.path()),
                    HasSubstring("neither generation_config.json nor config.json"));
}

TEST_CASE("generate throws for inconsistent settings saying what to change", "[generation]") {
  models::GenerationConfig config;
  SECTION("a decoder with the wrong number of rows") {
    config.num_beams = 4;
    FixedDecoder decoder(3);
    CHECK_THROWS_WITH(models::generate(decoder, 3, config),
                      HasSubstring("holds 3 rows") && HasSubstring("num_beams copies"));
    FixedDecoder greedy_decoder(6);
    config.num_beams = 1;
    CHECK_THROWS_WITH(models::generate(greedy_decoder, 3, config), HasSubstring("holds 6 rows"));
  }
  SECTION("num_beams < 1") {
    config.num_beams = 0;
    FixedDecoder decoder(0);
    CHECK_THROWS_WITH(models::generate(decoder, 3, config), HasSubstring("num_beams = 0"));
  }
  SECTION("max_length < 2") {
    config.max_length = 1;
    FixedDecoder decoder(2);
    CHECK_THROWS_WITH(models::generate(decoder, 2, config),
                      HasSubstring("max_length = 1") && HasSubstring("at least 2"));
    config.max_new_tokens = 0;
    CHECK_THROWS_WITH(models::generate(decoder, 2, config), HasSubstring("max_new_tokens = 0"));
  }
  SECTION("min_length > max_length") {
    config.min_length = 30;
    FixedDecoder decoder(2);
    CHECK_THROWS_WITH(models::generate(decoder, 2, config),
                      HasSubstring("min_length = 30") && HasSubstring("raise max_length"));
  }
  SECTION("a token id outside the decoder's vocabulary") {
    config.forced_bos_token_id = 8;
    FixedDecoder decoder(2, 8);
    CHECK_THROWS_WITH(models::generate(decoder, 2, config),
                      HasSubstring("forced_bos_token_id = 8") && HasSubstring("[0, 8)"));
  }
  SECTION("a negative no_repeat_ngram_size") {
    config.no_repeat_ngram_size = -1;
    FixedDecoder decoder(2);
    CHECK_THROWS_WITH(models::generate(decoder, 2, config), HasSubstring("no_repeat_ngram_size = -1"));
  }
}

#ifdef INCRELORA_TEST_BART
TEST_CASE("A tiny random BART generates as transformers' BartForConditionalGeneration, greedy and with beams",
          "[generation][bart]") {
  namespace bart = increlora::bart;
  // A model this small runs fastest on one thread: on a busy 2-core machine the second intra-op thread makes
  // each of the ~300 tiny steps wait (20x slower). The count is restored for the tests after this one.
  struct OneThread {
    int saved = at::get_num_threads();
    OneThread() { at::set_num_threads(1); }
    ~OneThread() { at::set_num_threads(saved); }
  } one_thread;
  const std::string dir = reference_dir() + "/bart";
  const auto reference = read_json(dir + "/bart_cases.json");
  const auto device = GENERATE(from_range(increlora::test::devices()));
  bart::BartForConditionalGeneration model(bart::BartConfig::from_json_file(dir + "/config.json"));
  bart::load_pretrained(*model, dir);
  model->eval();
  model->to(torch::Device(device));
  const auto input_ids = sequences_of(reference["input_ids"]).to(device);
  const auto attention_mask = sequences_of(reference["attention_mask"]).to(device);
  const auto base = models::GenerationConfig::from_model_dir(dir);
  CHECK(base.num_beams == 4);
  CHECK(base.no_repeat_ngram_size == 3);
  CHECK(base.forced_bos_token_id == std::optional<int64_t>(0));
  for (const auto& c : reference["cases"]) {
    DYNAMIC_SECTION(c["name"].get<std::string>() << " on " << device) {
      auto config = base;
      config.num_beams = c["num_beams"].get<int64_t>();
      auto decoder = model->start_decoding(input_ids, attention_mask, config.num_beams);
      check_same_sequences(models::generate(*decoder, input_ids.size(0), config), sequences_of(c["sequences"]));
    }
  }
}
#endif
