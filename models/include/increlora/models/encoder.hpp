#pragma once
/// \file
/// One entry point for the programs over every encoder family of models/: read a Hugging Face checkpoint
/// directory, look at its config.json's `model_type`, and build the matching encoder with a task head and
/// adapters (BERT, RoBERTa and MiniLM through increlora::bert; DeBERTa-v2/v3 through increlora::deberta), and the
/// matching tokenizer (WordPiece's vocab.txt or SentencePiece's spm.model). The programs (glue, qa) then need no
/// code per family, and a user with microsoft/deberta-v3-base on disk runs them unchanged but for the path.

#include <increlora/models/token_spans.hpp>
#include <increlora/models/wordpiece.hpp>

#include <torch/nn/module.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace increlora::models {

/// The tokenizer of a checkpoint, whichever family: "[CLS] a [SEP] (b [SEP])" inputs and pieces with offsets.
class Tokenizer {
 public:
  virtual ~Tokenizer() = default;
  /// [CLS] a [SEP] (b [SEP]) with segment ids, truncated to max_length as the Hugging Face tokenizer's
  /// longest_first does (max_length <= 0: no truncation).
  virtual bert::Encoding encode(const std::string& text_a, const std::optional<std::string>& text_b,
                                int64_t max_length) const = 0;
  /// The pieces of `text` (no special tokens) with the bytes each came from.
  virtual TokenSpans encode_with_offsets(const std::string& text) const = 0;
  virtual int64_t cls_id() const = 0;
  virtual int64_t sep_id() const = 0;
  virtual int64_t pad_id() const = 0;
};

/// The tokenizer files of `dir`: spm.model (DeBERTa-v2/v3) or vocab.txt (WordPiece); throws naming what is
/// missing.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& dir);

/// The `model_type` of <dir>/config.json ("bert", "roberta", "deberta-v2", ...).
std::string model_type(const std::string& dir);

/// Which layers get adapters, in the seed's terms.
struct AdapterPlan {
  /// The seed's --lora_module entries (query,key,value,intermediate,layer.output,attention.output), qualified
  /// names, dotted suffixes or "re:<regex>"; each family maps the short names onto its own layer names.
  std::vector<std::string> short_names;
  int64_t r = 0;  ///< initial rank (0: no adapters at all)
  double lora_alpha = 1.0;
  double lora_dropout = 0.0;
  int64_t capacity = 0;  ///< bank capacity per adapted layer (0: SVDLinear's default)
};

enum class HeadKind { kSequenceClassification, kQuestionAnswering };

/// The number of layers `plan` adapts in the model of `dir` with `head` (throws naming the candidates when a
/// pattern matches nothing): what capacity sizing needs before the model is built.
int64_t count_adapted_layers(const std::string& dir, HeadKind head, const AdapterPlan& plan,
                             int64_t num_labels = 2);

/// An encoder with a sequence classification / regression head, loaded from the checkpoint.
struct SequenceClassificationModel {
  std::shared_ptr<torch::nn::Module> module;
  /// logits [batch, num_labels] from input_ids, attention_mask, token_type_ids.
  std::function<torch::Tensor(const torch::Tensor&, const torch::Tensor&, const torch::Tensor&)> forward;
  std::vector<std::string> head_prefixes;  ///< the tensors trained in full beside the adapters
  std::string model_type;
  /// transformers' class of this model ("BertForSequenceClassification", ...), for exported configs.
  std::string architecture;
  std::vector<std::string> initialized;  ///< tensors the checkpoint did not have (head, adapters)
};

/// An encoder with the extractive-QA head (qa_outputs), loaded from the checkpoint.
struct QuestionAnsweringModel {
  std::shared_ptr<torch::nn::Module> module;
  /// {start_logits, end_logits} [batch, seq] from input_ids, attention_mask, token_type_ids.
  std::function<std::pair<torch::Tensor, torch::Tensor>(const torch::Tensor&, const torch::Tensor&,
                                                        const torch::Tensor&)>
      forward;
  std::vector<std::string> head_prefixes;
  std::string model_type;
  std::string architecture;
  std::vector<std::string> initialized;
};

SequenceClassificationModel make_sequence_classifier(const std::string& dir, int64_t num_labels,
                                                     const AdapterPlan& plan,
                                                     std::optional<double> cls_dropout = std::nullopt);
QuestionAnsweringModel make_question_answering(const std::string& dir, const AdapterPlan& plan);

}  // namespace increlora::models
