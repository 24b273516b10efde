#include <increlora/models/encoder.hpp>

#include <increlora/errors.hpp>
#include <increlora/models/bert.hpp>
#include <increlora/models/deberta.hpp>
#include <increlora/models/deberta_tokenizer.hpp>
#include <increlora/modules.hpp>

#include <nlohmann/json.hpp>

#include <fstream>

namespace increlora::models {

namespace {

bool is_file(const std::string& path) { return std::ifstream(path).good(); }

bool is_bert_family(const std::string& type) {
  return type == "bert" || type == "roberta" || type == "xlm-roberta";
}
bool is_deberta(const std::string& type) { return type == "deberta-v2"; }

void check_supported(const std::string& dir, const std::string& type) {
  INCRELORA_CHECK(is_bert_family(type) || is_deberta(type), "models: ", dir, "/config.json has model_type \"", type,
                  "\"; the encoders here are bert, roberta (and BERT-shaped ones such as MiniLM) and deberta-v2 "
                  "(DeBERTa-v2/v3).");
}

class WordPiece final : public Tokenizer {
 public:
  explicit WordPiece(bert::WordPieceTokenizer t) : t_(std::move(t)) {}
  bert::Encoding encode(const std::string& a, const std::optional<std::string>& b, int64_t max_length) const override {
    return t_.encode(a, b, max_length);
  }
  TokenSpans encode_with_offsets(const std::string& text) const override { return t_.encode_with_offsets(text); }
  int64_t cls_id() const override { return t_.cls_id(); }
  int64_t sep_id() const override { return t_.sep_id(); }
  int64_t pad_id() const override { return t_.pad_id(); }

 private:
  bert::WordPieceTokenizer t_;
};

// The plan as the family's LoraSettings: its own mapping of the seed's short names.
class SentencePiece final : public Tokenizer {
 public:
  explicit SentencePiece(deberta::DebertaV2Tokenizer t) : t_(std::move(t)) {}
  bert::Encoding encode(const std::string& a, const std::optional<std::string>& b, int64_t max_length) const override {
    return t_.encode(a, b, max_length);
  }
  TokenSpans encode_with_offsets(const std::string& text) const override { return t_.encode_with_offsets(text); }
  int64_t cls_id() const override { return t_.cls_id(); }
  int64_t sep_id() const override { return t_.sep_id(); }
  int64_t pad_id() const override { return t_.pad_id(); }

 private:
  deberta::DebertaV2Tokenizer t_;
};

bert::LoraSettings lora_settings(const AdapterPlan& plan, bool deberta) {
  bert::LoraSettings lora;
  lora.patterns = deberta ? deberta::lora_patterns_from_short_names(plan.short_names)
                          : bert::lora_patterns_from_short_names(plan.short_names);
  lora.r = plan.r;
  lora.lora_alpha = plan.lora_alpha;
  lora.lora_dropout = plan.lora_dropout;
  lora.capacity = plan.capacity;
  return lora;
}

}  // namespace

std::string model_type(const std::string& dir) {
  const auto path = dir + "/config.json";
  std::ifstream in(path);
  INCRELORA_CHECK(in.good(), "models: '", path, "' does not exist; pass a Hugging Face checkpoint directory.");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    INCRELORA_CHECK(false, "models: '", path, "' is not valid JSON (", e.what(), ").");
  }
  INCRELORA_CHECK(j.is_object() && j.contains("model_type") && j["model_type"].is_string(), "models: '", path,
                  "' has no \"model_type\" string; is it a Hugging Face config?");
  return j["model_type"].get<std::string>();
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir) {
  if (is_file(dir + "/spm.model")) {
    return std::make_unique<SentencePiece>(deberta::DebertaV2Tokenizer::from_directory(dir));
  }
  INCRELORA_CHECK(is_file(dir + "/vocab.txt"), "models: '", dir, "' has no tokenizer this library reads (vocab.txt "
                  "for WordPiece, spm.model for DeBERTa-v2/v3).");
  return std::make_unique<WordPiece>(bert::WordPieceTokenizer::from_directory(dir));
}

int64_t count_adapted_layers(const std::string& dir, HeadKind head, const AdapterPlan& plan, int64_t num_labels) {
  const auto type = model_type(dir);
  check_supported(dir, type);
  // A probe without adapter banks: only the layer names matter.
  auto lora = lora_settings(plan, is_deberta(type));
  const auto patterns = lora.patterns;
  lora.r = 0;
  const auto config_path = dir + "/config.json";
  const bool qa = head == HeadKind::kQuestionAnswering;
  if (is_deberta(type)) {
    const auto config = deberta::DebertaConfig::from_json_file(config_path);
    if (qa) return static_cast<int64_t>(select_modules(*deberta::DebertaQuestionAnswering(config, lora), patterns).size());
    return static_cast<int64_t>(
        select_modules(*deberta::DebertaSequenceClassifier(config, num_labels, lora), patterns).size());
  }
  const auto config = bert::BertConfig::from_json_file(config_path);
  if (qa) return static_cast<int64_t>(select_modules(*bert::QuestionAnswering(config, lora), patterns).size());
  return static_cast<int64_t>(select_modules(*bert::SequenceClassifier(config, num_labels, lora), patterns).size());
}

namespace {

// The parts of a task model that do not depend on its family.
template <typename Out, typename Holder, typename Load>
Out wrap(Holder m, const std::string& dir, const std::string& type, std::string architecture, Load load) {
  Out out;
  out.initialized = load(*m, dir).initialized;
  out.module = m.ptr();
  out.forward = [m](const torch::Tensor& ids, const torch::Tensor& mask, const torch::Tensor& types) mutable {
    return m(ids, mask, types);
  };
  out.head_prefixes = m->head_prefixes();
  out.model_type = type;
  out.architecture = std::move(architecture);
  return out;
}

}  // namespace

SequenceClassificationModel make_sequence_classifier(const std::string& dir, int64_t num_labels,
                                                     const AdapterPlan& plan, std::optional<double> cls_dropout) {
  const auto type = model_type(dir);
  check_supported(dir, type);
  const auto config_path = dir + "/config.json";
  if (is_deberta(type)) {
    deberta::DebertaSequenceClassifier m(deberta::DebertaConfig::from_json_file(config_path), num_labels,
                                         lora_settings(plan, true), cls_dropout);
    return wrap<SequenceClassificationModel>(m, dir, type, "DebertaV2ForSequenceClassification",
                                             deberta::load_pretrained);
  }
  const auto config = bert::BertConfig::from_json_file(config_path);
  bert::SequenceClassifier m(config, num_labels, lora_settings(plan, false), cls_dropout);
  return wrap<SequenceClassificationModel>(
      m, dir, type, config.is_roberta() ? "RobertaForSequenceClassification" : "BertForSequenceClassification",
      bert::load_pretrained);
}

QuestionAnsweringModel make_question_answering(const std::string& dir, const AdapterPlan& plan) {
  const auto type = model_type(dir);
  check_supported(dir, type);
  const auto config_path = dir + "/config.json";
  if (is_deberta(type)) {
    deberta::DebertaQuestionAnswering m(deberta::DebertaConfig::from_json_file(config_path), lora_settings(plan, true));
    return wrap<QuestionAnsweringModel>(m, dir, type, "DebertaV2ForQuestionAnswering", deberta::load_pretrained);
  }
  const auto config = bert::BertConfig::from_json_file(config_path);
  bert::QuestionAnswering m(config, lora_settings(plan, false));
  return wrap<QuestionAnsweringModel>(
      m, dir, type, config.is_roberta() ? "RobertaForQuestionAnswering" : "BertForQuestionAnswering",
      bert::load_pretrained);
}

}  // namespace increlora::models
