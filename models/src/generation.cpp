// Greedy and beam search as transformers 5's GenerationMixin runs them (generation/utils.py `_sample` and
// `_beam_search` with its helpers, generation/logits_process.py), ported op for op on static-shaped tensors so
// that the same logits give the same sequences, ties and -1e9 sentinels included. Every step is a few batched
// tensor ops on the decoder's device; the host waits once per step for the "is anything left to do" flag, and
// once at the end of beam search for the output length.
#include <increlora/models/generation.hpp>

#include <increlora/errors.hpp>

#include <torch/types.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <limits>
#include <sstream>

namespace increlora::models {
namespace {

constexpr double kInf = std::numeric_limits<double>::infinity();
// transformers' sentinel for "this beam / hypothesis must not be chosen".
constexpr double kExcluded = -1.0e9;

// ---- logits processors, in the order transformers' _get_logits_processor appends them for these settings ----

// NoRepeatNGramLogitsProcessor: a token that would complete an n-gram already in the row gets -inf.
torch::Tensor ban_repeated_ngrams(const torch::Tensor& sequences, torch::Tensor scores, int64_t n) {
  const int64_t cur_len = sequences.size(1);
  if (cur_len < n) return scores;
  const int64_t vocab = scores.size(1);
  const auto prefix = sequences.slice(1, cur_len + 1 - n);  // the last n-1 tokens
  const auto windows = sequences.unfold(1, n, 1);           // [rows, cur_len - n + 1, n]
  const auto matches = (windows.slice(2, 0, n - 1) == prefix.unsqueeze(1)).all(-1);
  // Non-matching windows write to a spare column past the vocabulary.
  auto banned = torch::zeros({scores.size(0), vocab + 1}, scores.options().dtype(torch::kBool));
  const auto last = windows.select(2, n - 1).clamp_max(vocab);
  banned.scatter_(1, torch::where(matches, last, torch::full_like(last, vocab)), true);
  return scores.masked_fill(banned.slice(1, 0, vocab), -kInf);
}

// The processors for a step whose rows hold `sequences` ([rows, cur_len], the decoder start included).
torch::Tensor process(const torch::Tensor& sequences, torch::Tensor scores, const GenerationConfig& c,
                      int64_t max_length) {
  const int64_t cur_len = sequences.size(1);
  if (c.no_repeat_ngram_size > 0) scores = ban_repeated_ngrams(sequences, scores, c.no_repeat_ngram_size);
  if (c.min_length > 0 && cur_len < c.min_length) {  // MinLengthLogitsProcessor
    scores = scores.clone();
    scores.select(1, c.eos_token_id).fill_(-kInf);
  }
  if (c.forced_bos_token_id && cur_len == 1) {  // ForcedBOSTokenLogitsProcessor
    scores = torch::full_like(scores, -kInf);
    scores.select(1, *c.forced_bos_token_id).fill_(0);
  }
  if (c.forced_eos_token_id && cur_len == max_length - 1) {  // ForcedEOSTokenLogitsProcessor
    scores = torch::full_like(scores, -kInf);
    scores.select(1, *c.forced_eos_token_id).fill_(0);
  }
  return scores;
}

torch::Tensor next_logits(IncrementalDecoder& decoder, const torch::Tensor& tokens, int64_t vocab_hint,
                          const GenerationConfig& c) {
  auto logits = decoder.step(tokens);
  INCRELORA_CHECK(logits.dim() == 2 && logits.size(0) == tokens.size(0), "generate: the decoder's step returned ",
                  logits.sizes(), " for ", tokens.size(0), " rows; an IncrementalDecoder must return [rows, vocab].");
  const int64_t vocab = logits.size(1);
  if (vocab_hint < 0) {
    auto in_vocab = [&](int64_t id, const char* name) {
      INCRELORA_CHECK(id >= 0 && id < vocab, "generate: ", name, " = ", id, " is not a token of the decoder's ",
                      vocab, "-token vocabulary; set it to an id in [0, ", vocab, ").");
    };
    in_vocab(c.eos_token_id, "eos_token_id");
    in_vocab(c.pad_token_id, "pad_token_id");
    if (c.forced_bos_token_id) in_vocab(*c.forced_bos_token_id, "forced_bos_token_id");
    if (c.forced_eos_token_id) in_vocab(*c.forced_eos_token_id, "forced_eos_token_id");
  } else {
    INCRELORA_CHECK(vocab == vocab_hint, "generate: the decoder's vocabulary changed from ", vocab_hint, " to ",
                    vocab, " between steps.");
  }
  return logits.to(torch::kFloat32);
}

torch::Tensor greedy_search(IncrementalDecoder& decoder, int64_t batch, const GenerationConfig& c, int64_t max_length,
                            torch::Tensor logits) {
  const auto device = logits.device();
  const int64_t vocab = logits.size(1);
  const auto long_options = torch::TensorOptions().dtype(torch::kLong).device(device);
  // Static buffer; the columns past cur_len are never read.
  auto sequences = torch::full({batch, max_length}, c.pad_token_id, long_options);
  sequences.select(1, 0).fill_(c.decoder_start_token_id);
  auto unfinished = torch::ones({batch}, long_options);
  int64_t cur_len = 1;
  while (true) {
    const auto scores = process(sequences.slice(1, 0, cur_len), logits, c, max_length);
    auto next = scores.argmax(-1);
    // Rows that produced EOS before get the pad id.
    next = next * unfinished + c.pad_token_id * (1 - unfinished);
    sequences.select(1, cur_len).copy_(next);
    ++cur_len;
    if (cur_len >= max_length) break;  // MaxLengthCriteria: every row is done
    unfinished = unfinished * (next != c.eos_token_id).to(torch::kLong);  // EosTokenCriteria
    if (!unfinished.any().item<bool>()) break;  // host sync: one per step
    logits = next_logits(decoder, sequences.select(1, cur_len - 1), vocab, c);
  }
  return sequences.slice(1, 0, cur_len).cpu();
}

// transformers' _gather_beams: tensor [batch, beams, ...] gathered along the beam dimension by [batch, k].
torch::Tensor gather_beams(const torch::Tensor& tensor, torch::Tensor index) {
  while (index.dim() < tensor.dim()) index = index.unsqueeze(-1);
  return torch::take_along_dim(tensor, index, 1);
}

torch::Tensor beam_search(IncrementalDecoder& decoder, int64_t batch, const GenerationConfig& c, int64_t max_length,
                          torch::Tensor logits) {
  const auto device = logits.device();
  const int64_t vocab = logits.size(1);
  const int64_t beams = c.num_beams;
  const int64_t rows = batch * beams;
  const int64_t keep = 2 * beams;  // max(2, 1 + number of EOS ids) * num_beams, with one EOS id
  const double lp = c.length_penalty;
  const bool early_true = c.early_stopping == EarlyStopping::kTrue;
  const auto long_options = torch::TensorOptions().dtype(torch::kLong).device(device);
  const auto float_options = torch::TensorOptions().dtype(torch::kFloat32).device(device);
  const auto bool_options = torch::TensorOptions().dtype(torch::kBool).device(device);

  // transformers fills the static buffers with `pad_token_id or eos_token_id`: a pad id of 0 reads as unset.
  const int64_t fill = c.pad_token_id != 0 ? c.pad_token_id : c.eos_token_id;
  auto running_sequences = torch::full({batch, beams, max_length}, fill, long_options);
  running_sequences.select(2, 0).fill_(c.decoder_start_token_id);
  auto sequences = running_sequences.clone();
  // Only beam 0 counts at the first step, so the beams do not all pick the same tokens.
  auto running_scores = torch::zeros({batch, beams}, float_options);
  running_scores.slice(1, 1).fill_(kExcluded);
  auto beam_scores = torch::full({batch, beams}, kExcluded, float_options);
  auto is_finished = torch::zeros({batch, beams}, bool_options);
  auto heuristic_unsatisfied = torch::ones({batch, 1}, bool_options);
  // The flat row (batch × beams + beam) each generated token came from; -1 where none was generated.
  auto running_beam_indices = torch::full({batch, beams, max_length - 1}, -1, long_options.dtype(torch::kInt));
  auto beam_indices = running_beam_indices.clone();
  const auto top_beam_mask = torch::cat({torch::ones({beams}, bool_options), torch::zeros({keep - beams}, bool_options)});
  const auto batch_offset = torch::arange(batch, long_options).view({-1, 1}) * beams;

  int64_t cur_len = 1;
  INCRELORA_CHECK(vocab >= 2, "generate: beam search needs a vocabulary of at least 2 tokens; the decoder has ",
                  vocab, ".");
  while (true) {
    const auto flat_sequences = running_sequences.slice(2, 0, cur_len).reshape({rows, cur_len});
    auto log_probs = torch::log_softmax(logits, -1);
    log_probs = process(flat_sequences, log_probs, c, max_length);
    log_probs = log_probs.view({batch, beams, vocab}) + running_scores.unsqueeze(-1);
    log_probs = log_probs.reshape({batch, beams * vocab});

    // The top 2 × num_beams continuations over all beams of an example.
    auto [topk_log_probs, topk_indices] = torch::topk(log_probs, keep);
    const auto topk_beams = topk_indices.floor_divide(vocab);
    const auto topk_ids = topk_indices.remainder(vocab);
    auto topk_beam_indices = gather_beams(running_beam_indices, topk_beams);
    auto topk_sequences = gather_beams(running_sequences, topk_beams);
    topk_sequences.select(2, cur_len).copy_(topk_ids);
    topk_beam_indices.select(2, cur_len - 1).copy_(topk_beams + batch_offset);

    // Stopping criteria of each candidate: max length reached, or EOS.
    const auto hits = cur_len + 1 >= max_length ? torch::ones({batch, keep}, bool_options)
                                                : topk_ids == c.eos_token_id;

    // The best num_beams candidates that did not stop keep running.
    const auto topk_running_log_probs = topk_log_probs + hits.to(torch::kFloat32) * kExcluded;
    const auto next_indices = std::get<1>(torch::topk(topk_running_log_probs, beams));
    running_sequences = gather_beams(topk_sequences, next_indices);
    running_scores = gather_beams(topk_running_log_probs, next_indices);
    running_beam_indices = gather_beams(topk_beam_indices, next_indices);

    // Candidates among the top num_beams that stopped become hypotheses when they beat the worst kept one.
    const auto just_finished = hits & top_beam_mask.unsqueeze(0);
    // The length counts the generated tokens, the decoder start excluded (cur_len + 1 - decoder_prompt_len).
    auto scores = topk_log_probs / std::pow(static_cast<double>(cur_len), lp);
    if (early_true) scores += is_finished.all(-1, /*keepdim=*/true).to(torch::kFloat32) * kExcluded;  // full
    scores += (~heuristic_unsatisfied).to(torch::kFloat32) * kExcluded;
    scores += (~just_finished).to(torch::kFloat32) * kExcluded;
    const auto merged_indices =
        std::get<1>(torch::topk(torch::cat({beam_scores, scores}, 1), beams));
    sequences = gather_beams(torch::cat({sequences, topk_sequences}, 1), merged_indices);
    beam_scores = gather_beams(torch::cat({beam_scores, scores}, 1), merged_indices);
    beam_indices = gather_beams(torch::cat({beam_indices, topk_beam_indices}, 1), merged_indices);
    is_finished = gather_beams(torch::cat({is_finished, just_finished}, 1), merged_indices);

    const auto reorder_index = running_beam_indices.select(2, cur_len - 1).reshape({rows}).to(torch::kLong);
    ++cur_len;

    // Can a running beam still beat the worst hypothesis? (transformers' _check_early_stop_heuristic)
    const int64_t best_length = (c.early_stopping == EarlyStopping::kNever && lp > 0.0) ? max_length - 1 : cur_len - 1;
    const auto best_possible = running_scores.slice(1, 0, 1) / std::pow(static_cast<double>(best_length), lp);
    const auto worst_finished = torch::where(is_finished, std::get<0>(beam_scores.min(1, /*keepdim=*/true)),
                                             torch::full({}, kExcluded, float_options));
    heuristic_unsatisfied = heuristic_unsatisfied & (best_possible > worst_finished).any(-1, /*keepdim=*/true);

    // _beam_search_has_unfinished_sequences
    auto unfinished = heuristic_unsatisfied.any() & hits.all().logical_not();
    if (early_true) unfinished = unfinished & is_finished.all().logical_not();
    if (!unfinished.item<bool>()) break;  // host sync: one per step

    decoder.reorder(reorder_index);
    logits = next_logits(decoder, running_sequences.select(2, cur_len - 1).reshape({rows}), vocab, c);
  }

  // The best hypothesis of each example, cut to the longest of them.
  const auto best = sequences.select(1, 0);
  const auto best_indices = beam_indices.select(1, 0);
  const int64_t generated = (best_indices + 1).to(torch::kBool).sum(1).max().item<int64_t>();  // host sync
  return best.slice(1, 0, 1 + generated).cpu();
}

// ---- config files ----------------------------------------------------------------------------------------------

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  INCRELORA_CHECK(in.good(), "GenerationConfig: cannot open '", path, "'.");
  std::stringstream text;
  text << in.rdbuf();
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text.str());
  } catch (const nlohmann::json::exception& e) {
    INCRELORA_CHECK(false, "GenerationConfig: '", path, "' is not valid JSON (", e.what(), ").");
  }
  INCRELORA_CHECK(j.is_object(), "GenerationConfig: '", path, "' must hold a JSON object.");
  return j;
}

GenerationConfig from_json(const nlohmann::json& j, const std::string& path) {
  GenerationConfig c;
  auto present = [&](const char* key) { return j.contains(key) && !j[key].is_null(); };
  auto wrong_type = [&](const char* key, const char* expected) {
    INCRELORA_CHECK(false, "GenerationConfig: '", path, "': the field \"", key, "\" has the wrong type (",
                    j[key].dump(), "); expected ", expected, ".");
  };
  auto integer = [&](const char* key, int64_t& into) {
    if (!present(key)) return;
    if (!j[key].is_number_integer()) wrong_type(key, "an integer");
    into = j[key].get<int64_t>();
  };
  auto optional_integer = [&](const char* key, std::optional<int64_t>& into) {
    if (!present(key)) return;
    if (!j[key].is_number_integer()) wrong_type(key, "an integer or null");
    into = j[key].get<int64_t>();
  };
  integer("max_length", c.max_length);
  optional_integer("max_new_tokens", c.max_new_tokens);
  integer("min_length", c.min_length);
  integer("num_beams", c.num_beams);
  if (present("length_penalty")) {
    if (!j["length_penalty"].is_number()) wrong_type("length_penalty", "a number");
    c.length_penalty = j["length_penalty"].get<double>();
  }
  if (present("early_stopping")) {
    const auto& e = j["early_stopping"];
    if (e.is_boolean()) {
      c.early_stopping = e.get<bool>() ? EarlyStopping::kTrue : EarlyStopping::kFalse;
    } else if (e.is_string() && e.get<std::string>() == "never") {
      c.early_stopping = EarlyStopping::kNever;
    } else {
      wrong_type("early_stopping", "true, false or \"never\"");
    }
  }
  integer("no_repeat_ngram_size", c.no_repeat_ngram_size);
  integer("decoder_start_token_id", c.decoder_start_token_id);
  integer("bos_token_id", c.bos_token_id);
  integer("pad_token_id", c.pad_token_id);
  if (present("eos_token_id")) {
    const auto& e = j["eos_token_id"];
    if (e.is_number_integer()) {
      c.eos_token_id = e.get<int64_t>();
    } else if (e.is_array() && e.size() == 1 && e[0].is_number_integer()) {
      c.eos_token_id = e[0].get<int64_t>();
    } else {
      wrong_type("eos_token_id", "an integer (or a list of one; several EOS ids are not supported)");
    }
  }
  optional_integer("forced_bos_token_id", c.forced_bos_token_id);
  optional_integer("forced_eos_token_id", c.forced_eos_token_id);
  if (present("forced_eos_token_id") && j["forced_eos_token_id"].is_array()) {
    wrong_type("forced_eos_token_id", "an integer or null (several forced EOS ids are not supported)");
  }
  return c;
}

void validate(const IncrementalDecoder& decoder, int64_t batch, const GenerationConfig& c) {
  INCRELORA_CHECK(batch >= 1, "generate: batch = ", batch, "; pass the number of examples the decoder was started on.");
  INCRELORA_CHECK(c.num_beams >= 1, "generate: num_beams = ", c.num_beams, "; set it to 1 (greedy) or more (beam search).");
  if (c.max_new_tokens) {
    INCRELORA_CHECK(*c.max_new_tokens >= 1, "generate: max_new_tokens = ", *c.max_new_tokens,
                    "; set it to at least 1, or unset it to use max_length.");
  } else {
    INCRELORA_CHECK(c.max_length >= 2, "generate: max_length = ", c.max_length,
                    " leaves no room for a token after the decoder start; set it to at least 2.");
  }
  const int64_t max_length = c.effective_max_length();
  INCRELORA_CHECK(c.min_length >= 0 && c.min_length <= max_length, "generate: min_length = ", c.min_length,
                  " must lie in [0, max length = ", max_length, "]; lower min_length or raise max_length.");
  INCRELORA_CHECK(c.no_repeat_ngram_size >= 0, "generate: no_repeat_ngram_size = ", c.no_repeat_ngram_size,
                  "; set it to 0 (off) or a positive n-gram size.");
  INCRELORA_CHECK(std::isfinite(c.length_penalty), "generate: length_penalty must be finite, not ", c.length_penalty,
                  ".");
  INCRELORA_CHECK(c.decoder_start_token_id >= 0, "generate: decoder_start_token_id = ", c.decoder_start_token_id,
                  "; set it to the model's decoder start token.");
  const int64_t expected_rows = batch * c.num_beams;
  INCRELORA_CHECK(decoder.rows() == expected_rows, "generate: the decoder holds ", decoder.rows(), " rows, but batch ",
                  batch, " × num_beams ", c.num_beams, " = ", expected_rows,
                  "; start the decoder with num_beams copies of each example (1 for greedy search).");
}

}  // namespace

GenerationConfig GenerationConfig::from_model_dir(const std::string& dir) {
  const std::string generation_file = dir + "/generation_config.json";
  if (std::ifstream(generation_file).good()) return from_json(read_json(generation_file), generation_file);
  const std::string config_file = dir + "/config.json";
  INCRELORA_CHECK(std::ifstream(config_file).good(), "GenerationConfig::from_model_dir: '", dir,
                  "' holds neither generation_config.json nor config.json; pass a Hugging Face checkpoint directory.");
  return from_json(read_json(config_file), config_file);
}

torch::Tensor generate(IncrementalDecoder& decoder, int64_t batch, const GenerationConfig& config) {
  validate(decoder, batch, config);
  torch::NoGradGuard no_grad;
  const int64_t max_length = config.effective_max_length();
  // The first step feeds the decoder start to every row; its logits tell the device the searches run on.
  auto first = next_logits(decoder, torch::full({decoder.rows()}, config.decoder_start_token_id, torch::kLong),
                           /*vocab_hint=*/-1, config);
  return config.num_beams == 1 ? greedy_search(decoder, batch, config, max_length, std::move(first))
                               : beam_search(decoder, batch, config, max_length, std::move(first));
}

}  // namespace increlora::models
