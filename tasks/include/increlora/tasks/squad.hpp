#pragma once
/// \file
/// SQuAD v2.0: the official JSON files (and Hugging Face datasets' JSON lines), the span decoding of Hugging
/// Face's run_qa (`postprocess_qa_predictions` of utils_qa.py, SQuAD v2 mode) and the metrics of the official
/// evaluate-v2.0.py, with its no-answer threshold search. Plain vectors and strings only, no tensors: the qa
/// program turns its logits into `FeatureLogits` and everything here can be tested without a model.
///
/// Offsets. The JSON files give `answer_start` in Python string indices, i.e. Unicode code points; the
/// tokenizers of models/ (see <increlora/models/token_spans.hpp>) give byte offsets into the UTF-8 text. The
/// examples keep the code points as read; `codepoint_to_byte` and friends convert, and the span decoding works
/// in bytes throughout.
///
/// Example:
/// \code
///   namespace squad = increlora::squad;
///   auto dev = squad::read_squad(squad::split_file("/data/squad", "dev"));
///   // ... run the model over the windows of each example, fill one FeatureLogits per window ...
///   auto decoded = squad::decode_predictions(dev, features, squad::DecodeOptions{});
///   squad::write_predictions_json(out + "/predictions.json", decoded);
///   squad::write_null_odds_json(out + "/null_odds.json", decoded);
///   auto metrics = squad::evaluate(dev, squad::prediction_texts(decoded), squad::null_odds(decoded),
///                                  /*na_prob_thresh=*/0.0);  // = DecodeOptions::null_score_diff_threshold
/// \endcode

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace increlora::squad {

// ---------------------------------------------------------------------------------------------------------
// Data

/// One question with its paragraph. For an unanswerable question (`is_impossible`), `answer_texts` and
/// `answer_starts` are empty (the v2 files' "plausible_answers" are not read: nothing trains or scores on them).
struct SquadExample {
  std::string id;
  std::string title;
  std::string context;
  std::string question;
  std::vector<std::string> answer_texts;  ///< one in train files, several (with repeats) in dev files
  std::vector<int64_t> answer_starts;     ///< in code points of `context`, as the JSON gives them
  bool is_impossible = false;
};

/// How `read_squad` reads.
struct ReadOptions {
  /// Used only when `read_squad` is given a folder: the split whose file `split_file` resolves
  /// ("train", "dev"; "validation" and "eval" mean "dev").
  std::string split = "dev";
  /// Check that every answer text equals the context's code points at `answer_start`. Training needs it (the
  /// answer's token span is found from `answer_start`); the official evaluation never looks at `answer_start`,
  /// so a dev file with a mismatch can still be scored with this off. Bounds (0 <= answer_start, the answer
  /// inside the context) are checked either way.
  bool check_answer_text = true;
};

/// The file of `split` ("train", or "dev" / "validation" / "eval") in `folder`. The rule: the first of these
/// that exists, for split S (S = "dev" for the three dev names): S-v2.0.json (the official names
/// train-v2.0.json, dev-v2.0.json), S.json, S.jsonl, and for dev also validation.json, validation.jsonl
/// (Hugging Face datasets' split name). Throws, listing the names tried, when none exists. A `folder` that is a
/// regular file is returned as it is.
std::string split_file(const std::string& folder, const std::string& split);

/// Reads a SQuAD file: the official layout {"version", "data": [{"title", "paragraphs": [{"context", "qas":
/// [{"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"}]}]}]}, or JSON lines in Hugging
/// Face datasets' flattened form, one {"id", "title", "context", "question", "answers": {"text": [...],
/// "answer_start": [...]}} per line (the form is recognised by content, not by the file name). A folder is
/// resolved with `split_file(path, options.split)`. "title" may be missing (read as ""); "is_impossible" may be
/// missing (SQuAD v1.1 files; then it is "no answers"), and where it is given it must agree with the answers.
/// Throws naming the file, the question id (or the line) and the field for a missing or mistyped field, an
/// answer outside its context, an answer text that differs from the context (see `ReadOptions`), a duplicate
/// id, or a file without questions.
std::vector<SquadExample> read_squad(const std::string& path, const ReadOptions& options = {});

/// Counts: questions, the unanswerable among them, and articles (distinct titles).
struct DatasetCounts {
  int64_t questions = 0;
  int64_t unanswerable = 0;
  int64_t articles = 0;
};
DatasetCounts count(const std::vector<SquadExample>& examples);

// ---------------------------------------------------------------------------------------------------------
// Code points and bytes

/// Number of code points of a UTF-8 string (bytes that do not continue a sequence).
int64_t codepoint_length(const std::string& utf8);
/// The byte offset at which code point `codepoint_offset` starts (== utf8.size() for the end). Throws when it is
/// negative or past the end.
int64_t codepoint_to_byte(const std::string& utf8, int64_t codepoint_offset);
/// The code point index of byte `byte_offset`; throws when it is past the end or inside a multi-byte character.
int64_t byte_to_codepoint(const std::string& utf8, int64_t byte_offset);
/// The byte offset of every code point, plus one entry for the end: element i is `codepoint_to_byte(utf8, i)`
/// (for converting many offsets of one text at once).
std::vector<int64_t> codepoint_byte_offsets(const std::string& utf8);
/// Half-open byte range [first, second) of answer `i` of `example` in its context.
std::pair<int64_t, int64_t> answer_byte_span(const SquadExample& example, size_t i);

// ---------------------------------------------------------------------------------------------------------
// Official metrics (evaluate-v2.0.py)

/// The official normalisation: lowercase (Python's str.lower, from a table of Unicode 14 taken from Python
/// 3.11; final sigma approximated: a capital sigma after a letter and before none becomes ς), remove ASCII
/// punctuation (Python's string.punctuation: other punctuation such as – “ ” stays), remove the whole words
/// a/an/the (words as Python's Unicode regex \b sees them: runs of letters, digits and '_', so "theater" and
/// "théa" keep their letters), then collapse whitespace (Python's str.split: Unicode spaces, not U+200B).
/// Invalid UTF-8 bytes are read as U+FFFD.
std::string normalize_answer(const std::string& text);
/// 1 when the normalised strings are equal, else 0.
double exact_match(const std::string& gold, const std::string& prediction);
/// Token F1 of the normalised strings, tokens counted with multiplicity (collections.Counter &); when either
/// side has no tokens, 1 if both have none, else 0.
double token_f1(const std::string& gold, const std::string& prediction);
/// The official per-question scores: the maximum over the gold answers, gold answers that normalise to
/// nothing dropped and [""] used when none is left (so the right answer to an unanswerable question is "").
double max_exact_match(const std::vector<std::string>& gold_answers, const std::string& prediction);
double max_token_f1(const std::vector<std::string>& gold_answers, const std::string& prediction);

/// Metric name → value, with the official script's names: exact, f1, total, HasAns_exact, HasAns_f1,
/// HasAns_total, NoAns_exact, NoAns_f1, NoAns_total (scores in percent; HasAns_* / NoAns_* only when there are
/// such questions), and with no-answer scores best_exact, best_exact_thresh, best_f1, best_f1_thresh.
using Metrics = std::map<std::string, double>;

/// The official evaluation of `predictions` (id → answer text, "" = no answer) on `examples`.
/// A question without a prediction is an error naming it (the official script prints "Missing prediction"
/// and then fails with a KeyError in its HasAns/NoAns breakdown: there is no official score to reproduce);
/// predictions for ids not in `examples` are ignored, as there. Duplicate ids in `examples` are an error.
Metrics evaluate(const std::vector<SquadExample>& examples, const std::map<std::string, std::string>& predictions);

/// As above with the no-answer scores `na_probs` (id → score, larger = more likely unanswerable; every question
/// needs one): a question whose score is > `na_prob_thresh` counts as answered "" (scored 1 when it is
/// unanswerable, else 0), and best_exact / best_f1 are the scores at the best threshold, found as the official
/// find_best_thresh does: start from "all answered empty" (the unanswerable count), walk the questions in
/// increasing score (ties in `examples` order: the official walks them in the order of its na-prob file, which
/// `write_null_odds_json` writes in examples order), add each one's raw score (an unanswerable one with a
/// non-empty prediction loses 1), and keep the first maximum; the threshold is that question's score (0.0 when
/// answering none is best). With `null_odds(decode_predictions(...))` as `na_probs`, pass the decoding's
/// `null_score_diff_threshold` as `na_prob_thresh` to score the predictions as decoded; best_*_thresh are then
/// values to use as that threshold.
Metrics evaluate(const std::vector<SquadExample>& examples, const std::map<std::string, std::string>& predictions,
                 const std::map<std::string, double>& na_probs, double na_prob_thresh = 1.0);

/// What find_best_thresh returns: the best score in percent of all questions, and the threshold giving it.
struct BestThreshold {
  double score = 0.0;
  double threshold = 0.0;
};
/// The official find_best_thresh (what `evaluate` uses) over questions i = 0, 1, ... (the order ties in
/// `na_probs` are walked in): `raw_scores[i]` (exact or F1 in [0, 1], scored without a threshold), `na_probs[i]`,
/// `has_answer[i]` (the question has gold answers) and `prediction_empty[i]` (the prediction string is "", before
/// normalisation, as the official `if preds[qid]` tests).
BestThreshold find_best_threshold(const std::vector<double>& raw_scores, const std::vector<double>& na_probs,
                                  const std::vector<bool>& has_answer, const std::vector<bool>& prediction_empty);

// ---------------------------------------------------------------------------------------------------------
// Span decoding (Hugging Face's postprocess_qa_predictions, version_2_with_negative)

/// The model's output on one window (feature) of an example.
struct FeatureLogits {
  int64_t example_index = 0;       ///< index into the examples given to `decode_predictions`
  std::vector<float> start_logits;  ///< one per token of the window; token 0 is the CLS token (the null answer)
  std::vector<float> end_logits;    ///< same length
  /// Per token, the half-open byte range [first, second) of the example's context that it covers; no value for
  /// tokens outside the context (CLS, question, separators, padding, and context tokens this window does not
  /// own if the caller masks them). Same length as the logits.
  std::vector<std::optional<std::pair<int64_t, int64_t>>> offsets;
};

struct DecodeOptions {
  int64_t n_best_size = 20;        ///< start and end candidates per window, and the length of the n-best lists
  int64_t max_answer_length = 30;  ///< longest answer, in tokens
  /// Predict "" when null_score − best_non_null_score > this (run_qa's --null_score_diff_threshold).
  double null_score_diff_threshold = 0.0;
};

/// One entry of an n-best list; the null answer has text "" and CLS's logits.
struct NbestEntry {
  std::string text;
  float start_logit = 0.0f;
  float end_logit = 0.0f;
  float score = 0.0f;        ///< start_logit + end_logit (float, as numpy adds the float32 logits)
  double probability = 0.0;  ///< softmax of the scores over the entries of the list
};

struct ExamplePrediction {
  std::string id;
  std::string text;  ///< the prediction: the best non-null answer, or "" when the null answer wins
  /// null_score − best_non_null_score, with null_score the smallest CLS score over the example's windows.
  /// Larger = more likely unanswerable, so it is the na_prob of `evaluate` and the value of null_odds.json
  /// (run_qa's scores_diff_json). The prediction is "" exactly when this is > null_score_diff_threshold.
  double null_score_diff = 0.0;
  float null_score = 0.0f;
  std::vector<NbestEntry> nbest;  ///< best first, at most n_best_size non-null entries plus the null one
};

/// Decodes the answer of every example from its windows' logits, as postprocess_qa_predictions does for
/// SQuAD v2: per window, every pair of the n_best_size highest start and end logits (ties: the lower token
/// first) whose tokens both have offsets, end >= start and end − start + 1 <= max_answer_length becomes a
/// candidate with score start + end and text context[offsets[start].first, offsets[end].second); the null
/// candidate is the window with the smallest start[0] + end[0]. The n_best_size best candidates (stable sort,
/// so ties keep window, start, end order, the null one last) form the n-best list, the null one appended if it
/// fell out; with no non-null candidate at all, a candidate "empty" with score 0 is put first, as there. The
/// token_is_max_context filter of the TensorFlow-era scripts is not applied (run_qa does not either): the
/// windows' overlap is settled by score alone. Every example needs at least one window. Throws for windows
/// whose logits and offsets differ in length, an example_index out of range, or offsets outside the context.
std::vector<ExamplePrediction> decode_predictions(const std::vector<SquadExample>& examples,
                                                  const std::vector<FeatureLogits>& features,
                                                  const DecodeOptions& options = {});

/// id → predicted text, and id → null_score_diff, for `evaluate`.
std::map<std::string, std::string> prediction_texts(const std::vector<ExamplePrediction>& predictions);
std::map<std::string, double> null_odds(const std::vector<ExamplePrediction>& predictions);

// ---------------------------------------------------------------------------------------------------------
// Files (as run_qa writes them: one JSON object keyed by id, in examples order, indented by 4). Each is
// written whole or not at all: to a temporary file beside `path`, then renamed over it.

/// predictions.json: {id: text}, the input of evaluate-v2.0.py.
void write_predictions_json(const std::string& path, const std::vector<ExamplePrediction>& predictions);
/// null_odds.json: {id: null_score_diff}, evaluate-v2.0.py's --na-prob-file.
void write_null_odds_json(const std::string& path, const std::vector<ExamplePrediction>& predictions);
/// nbest_predictions.json: {id: [{start_logit, end_logit, text, probability}, ...]}.
void write_nbest_predictions_json(const std::string& path, const std::vector<ExamplePrediction>& predictions);
/// The metrics as evaluate-v2.0.py's --out-file writes them (its key order; the totals as integers).
void write_metrics_json(const std::string& path, const Metrics& metrics);

}  // namespace increlora::squad
