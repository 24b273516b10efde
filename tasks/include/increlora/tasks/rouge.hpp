#pragma once
/// \file
/// ROUGE as Google's `rouge_score` package (0.1.2, what Hugging Face's `rouge` metric wraps) computes it:
/// rouge1 … rouge9 (n-gram overlap), rougeL (longest common subsequence) and rougeLsum (summary-level LCS over
/// the lines of the texts), with its tokeniser and, optionally, NLTK's Porter stemmer in the mode rouge_score
/// uses. The results equal rouge_score's to the last bit: the same counts, divided and combined in the same
/// order (the ctest rouge_score_reference checks this against the package on the shared XSum sample).
///
/// Corpus scores. Hugging Face's metric (what the seed's run_summarization reports as `.mid.fmeasure * 100`)
/// aggregates the per-pair scores with rouge_score's BootstrapAggregator: "mid" is the median of 1,000 means of
/// resamples drawn with numpy's global, unseeded generator: an estimate of the plain mean that changes from run to
/// run (on the 600 pairs of the cross-check it is up to 0.07 points of F × 100 off the mean). `corpus_score`
/// reports the plain mean: it is what "mid" estimates, and it is reproducible.
///
/// Example:
/// \code
///   namespace rouge = increlora::rouge;
///   auto s = rouge::score("The cat sat on the mat.", "A cat sat on a mat", {"rouge1", "rougeL"}, true);
///   double f = s.at("rouge1").fmeasure;
///   // rougeLsum wants one sentence per line, as the seed's postprocess_text makes them:
///   auto corpus = rouge::corpus_score(rouge::sentences_per_line(references),
///                                     rouge::sentences_per_line(predictions), rouge::default_rouge_types(), true);
///   double rouge_lsum = 100.0 * corpus.at("rougeLsum").fmeasure;
/// \endcode

#include <map>
#include <string>
#include <vector>

namespace increlora::rouge {

/// Precision, recall and F-measure of one ROUGE type, in [0, 1]. F = 2PR / (P + R), and 0 when P + R = 0.
struct Score {
  double precision = 0.0;
  double recall = 0.0;
  double fmeasure = 0.0;
};

/// Rouge type name → score. The names are rouge_score's: "rouge1" … "rouge9", "rougeL", "rougeLsum".
using Scores = std::map<std::string, Score>;

/// {"rouge1", "rouge2", "rougeL", "rougeLsum"}: what Hugging Face's metric computes by default.
std::vector<std::string> default_rouge_types();

/// NLTK's `PorterStemmer().stem(word)` in its default mode, NLTK_EXTENSIONS, which rouge_score uses: the
/// irregular forms first (skies → sky, dying → die, news → news, innings → inning, proceed → proceed, …),
/// words of at most 2 characters as they are, then steps 1a–5b of Porter (1980) with Martin Porter's and NLTK's
/// departures (ies → ie and ied → ie in 4-letter words, ied → i in longer ones, y → i only when at least two
/// letters precede it and the last of them is a consonant, alli → al before step 2, bli → ble, fulli → ful,
/// logi → log, a 2-letter vowel–consonant stem counting as cvc).
/// Meant for the tokens `tokenize` makes (lowercase ASCII letters and digits, digits being consonants); ASCII
/// letters are lowercased first, and other bytes are treated as consonants.
std::string porter_stem(const std::string& word);

/// rouge_score's tokeniser: lowercase (as Python's str.lower: of the non-ASCII characters only U+0130 İ → "i"
/// and U+212A KELVIN SIGN → "k" give ASCII letters), every run of characters other than [a-z0-9] becomes a
/// separator, and with `use_stemmer` tokens longer than 3 characters go through `porter_stem`. `text` is
/// UTF-8; bytes that are not valid UTF-8 are separators too.
std::vector<std::string> tokenize(const std::string& text, bool use_stemmer);

/// rouge_score's `RougeScorer(rouge_types, use_stemmer).score(target, prediction)`:
/// * "rougeN" (N = 1 … 9): n-grams counted with multiplicity; P = overlap / max(prediction n-grams, 1),
///   R = overlap / max(target n-grams, 1);
/// * "rougeL": LCS of the token sequences; P = LCS / prediction tokens, R = LCS / target tokens (all 0 when either
///   side has no tokens);
/// * "rougeLsum": both texts split on "\n" (empty lines dropped, no other sentence splitting: use
///   `sentences_per_line` first for texts that are not one sentence per line), then for each target line the union
///   of its LCS with every prediction line (one LCS per pair, chosen as rouge_score's backtracking chooses it),
///   each token counted at most as often as it occurs on either side; P = hits / prediction tokens,
///   R = hits / target tokens. With rougeL, the newlines are mere whitespace.
/// Throws, naming it, for a type that is none of these (e.g. "rouge0", "rougeLSum", "rouge-1").
Scores score(const std::string& target, const std::string& prediction, const std::vector<std::string>& rouge_types,
             bool use_stemmer);

/// The mean over pairs of each type's precision, recall and F-measure (a mean of per-pair F-measures, not the F
/// of mean P and R): what the "mid" of rouge_score's BootstrapAggregator estimates (see the file comment). Every
/// element must hold the same types. Throws for an empty list.
Scores mean_scores(const std::vector<Scores>& per_pair);

/// `mean_scores` of `score(targets[i], predictions[i], …)` over all pairs. Throws when the lists differ in length
/// or are empty.
Scores corpus_score(const std::vector<std::string>& targets, const std::vector<std::string>& predictions,
                    const std::vector<std::string>& rouge_types, bool use_stemmer);

/// The sentences of `text`, trimmed, empty ones dropped. A stand-in for nltk.sent_tokenize (whose punkt model is not
/// available offline), which the seed applies before rougeLsum. The rule: a newline always ends a sentence (so
/// texts that are already one sentence per line, such as CNN/DailyMail highlights, keep their lines as they are);
/// otherwise a run of '.', '!' or '?', optionally followed by closing quotes or brackets (" ' ) ] ’ ”), ends a
/// sentence when whitespace follows and then an uppercase ASCII letter, a digit or an opening quote (" ' “ ‘) —
/// except after the title abbreviations Mr, Mrs, Ms, Dr, Prof, St, Jr, Sr, Rev, Gen, Gov, Sen, Rep, Capt, Lt, Col,
/// Sgt, No, Mt, vs, etc and after a single capital letter (an initial: "J. K. Rowling"). It differs from punkt on other
/// abbreviations ("U.S. Army"), which punkt learned from a corpus.
std::vector<std::string> split_sentences(const std::string& text);

/// `split_sentences(text)` joined with "\n": the seed's `"\n".join(nltk.sent_tokenize(text.strip()))`, the input
/// rougeLsum expects.
std::string sentences_per_line(const std::string& text);
/// The same for every text of a list.
std::vector<std::string> sentences_per_line(const std::vector<std::string>& texts);

}  // namespace increlora::rouge
