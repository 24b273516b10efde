#pragma once
/// \file
/// Text generation for encoder-decoder models: greedy and beam search as Hugging Face's `generate` runs them
/// (num_beams, length_penalty, early_stopping, no_repeat_ngram_size, min/max length, forced BOS/EOS), over an
/// `IncrementalDecoder` that keeps its own key/value cache, so a decoding step costs one token, not a re-run of
/// the prefix. The model families of models/ (increlora::bart) hand out decoders; this file knows no model.

#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <string>

namespace increlora::models {

/// A decoder started on a batch of encoded inputs: `rows()` hypotheses, each with its own prefix and cache.
/// `generate` calls step() once per position (the first call with the decoder start token in every row) and, in
/// beam search, reorder() between steps; a model family implements it over its key/value cache
/// (increlora::bart::BartForConditionalGeneration::start_decoding).
class IncrementalDecoder {
 public:
  virtual ~IncrementalDecoder() = default;
  /// The number of hypotheses (batch × copies per example, as the decoder was started).
  virtual int64_t rows() const = 0;
  /// Appends `tokens` ([rows()] int64, any device: `generate` passes the first step's on the CPU, later ones
  /// on the device of the logits) to every row's prefix and returns the logits of the next token:
  /// [rows(), vocab] float32 on the model's device. `generate` runs on that device.
  virtual torch::Tensor step(const torch::Tensor& tokens) = 0;
  /// Keeps the rows `index` ([n] int64; rows may repeat or be dropped): beam search's reordering. After it,
  /// rows() is n.
  virtual void reorder(const torch::Tensor& index) = 0;
};

/// When beam search stops a batch entry (Hugging Face's `early_stopping`). With num_beams hypotheses kept:
enum class EarlyStopping {
  kFalse,  ///< false: stop when the best running beam, scored at the current length, cannot beat the worst one
  kTrue,   ///< true: stop as soon as num_beams hypotheses are complete
  kNever,  ///< "never": as false, but with length_penalty > 0 the running beam is scored at max_length
};

/// The settings of Hugging Face's GenerationConfig that greedy and beam search use. Defaults are its defaults,
/// except the token ids, which it leaves unset: here they default to BART's (start 2, BOS 0, EOS 2, pad 1).
/// One EOS id (transformers also takes a list).
struct GenerationConfig {
  int64_t max_length = 20;                ///< the longest sequence, the decoder start token included
  std::optional<int64_t> max_new_tokens;  ///< when set, overrides max_length (= 1 + max_new_tokens)
  int64_t min_length = 0;  ///< EOS is forbidden while the sequence (decoder start included) is shorter
  int64_t num_beams = 1;   ///< 1: greedy search
  /// A finished hypothesis scores sum log p / length^length_penalty, length counting the generated tokens (EOS
  /// included, the decoder start not), as transformers 5 does: > 0 favours longer hypotheses, < 0 shorter ones.
  double length_penalty = 1.0;
  EarlyStopping early_stopping = EarlyStopping::kFalse;
  int64_t no_repeat_ngram_size = 0;  ///< > 0: no n-gram of this size occurs twice in a hypothesis
  int64_t decoder_start_token_id = 2;
  int64_t bos_token_id = 0;
  int64_t eos_token_id = 2;
  int64_t pad_token_id = 1;
  std::optional<int64_t> forced_bos_token_id;  ///< the token forced right after the decoder start
  std::optional<int64_t> forced_eos_token_id;  ///< the token forced at max_length − 1

  /// The generation settings of a Hugging Face checkpoint directory: generation_config.json when present,
  /// else the generation fields of config.json (as transformers 5 falls back for checkpoints like BART's, whose
  /// generation settings live in config.json); absent and null fields keep the defaults above. Throws naming
  /// the file and the field when a field has the wrong type (early_stopping: true, false or "never";
  /// eos_token_id: an integer or a list of one), and when the directory holds neither file.
  static GenerationConfig from_model_dir(const std::string& dir);
  /// The effective maximum length (max_new_tokens when set).
  int64_t effective_max_length() const { return max_new_tokens ? 1 + *max_new_tokens : max_length; }
};

/// Generates for the `batch` examples `decoder` was started on (with num_beams consecutive copies of each for
/// beam search, greedy: one). Returns Hugging Face's `generate(...)` sequences: [batch, length] int64 on the
/// CPU, each row starting with decoder_start_token_id; the same sequences transformers 5 returns for the same
/// logits, as its code computes them step for step:
///  * the logits processors, in transformers' order: no_repeat_ngram_size, min_length, forced_bos_token_id (at
///    length 1), forced_eos_token_id (at max length − 1); beam search applies them to log_softmax(logits);
///  * greedy: argmax; rows that produced EOS get pad_token_id; stops when every row has EOS or at max length;
///  * beam search: 2 × num_beams candidates per example over beams × vocab (only beam 0 at the first step), the
///    EOS candidates among the best num_beams become hypotheses, the num_beams best others keep running, the
///    decoder is reordered to them; early_stopping as above; the best hypothesis of each example is returned,
///    cut to the longest of them. A hypothesis cut by max_length ends without EOS (none is appended), and rows
///    are padded with pad_token_id, or with eos_token_id when pad_token_id is 0 (transformers fills with
///    `pad_token_id or eos_token_id`).
/// Runs on the device of the decoder's logits with batched tensor ops; the host waits once per step for the
/// stopping decision (and once at the end of beam search for the output length). Throws when decoder.rows() is
/// not batch × num_beams, num_beams < 1, max_length < 2 (max_new_tokens < 1), min_length > max length,
/// no_repeat_ngram_size < 0, or a token id lies outside the decoder's vocabulary.
///
/// Example (BART summarization with the checkpoint's settings):
/// \code
///   auto config = increlora::models::GenerationConfig::from_model_dir(dir);
///   auto decoder = model->start_decoding(input_ids, attention_mask, /*copies=*/config.num_beams);
///   auto summaries = increlora::models::generate(*decoder, input_ids.size(0), config);  // [batch, length]
/// \endcode
torch::Tensor generate(IncrementalDecoder& decoder, int64_t batch, const GenerationConfig& config);

}  // namespace increlora::models
