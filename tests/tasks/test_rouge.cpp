// ROUGE as rouge_score computes it: the Porter stemmer of NLTK, the tokeniser, the four scores on hand-checked
// pairs, the corpus mean, the sentence splitter, the errors, and the speed. The ctest rouge_score_reference runs the
// hidden case at the end and compares everything it writes with rouge_score and nltk themselves (rouge_reference.py).
// Expected values here are what rouge_score 0.1.2 / nltk 3.10.4 return for the same inputs.
#include "catch.hpp"
#include "support.hpp"

#include <increlora/tasks/rouge.hpp>
#include <increlora/tasks/summarization.hpp>

#include <c10/util/Exception.h>
#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

namespace rouge = increlora::rouge;

namespace {

std::vector<increlora::summarization::Example> xsum_examples() {
  increlora::summarization::ReadOptions options;
  options.dataset_name = "xsum";
  return increlora::summarization::read_examples(
      increlora::test::shared_dir() + "/data/summarization/xsum_sample.jsonl", options);
}

void check_score(const rouge::Score& got, double precision, double recall, double fmeasure) {
  CHECK(got.precision == Approx(precision).margin(1e-15));
  CHECK(got.recall == Approx(recall).margin(1e-15));
  CHECK(got.fmeasure == Approx(fmeasure).margin(1e-15));
}

std::vector<std::string> words(const std::string& s) {
  std::vector<std::string> w;
  std::istringstream in(s);
  for (std::string t; in >> t;) w.push_back(t);
  return w;
}
std::string join(const std::vector<std::string>& w, size_t from, size_t to, const char* sep = " ") {
  std::string s;
  for (size_t i = from; i < std::min(to, w.size()); ++i) s += (i == from ? "" : sep) + w[i];
  return s;
}
std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::istringstream in(s);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------------
// Porter stemmer

TEST_CASE("porter_stem follows the examples of Porter's paper in NLTK's mode", "[rouge][porter]") {
  const std::vector<std::pair<std::string, std::string>> cases{
      {"caresses", "caress"},   {"ponies", "poni"},         {"ties", "tie"},            {"caress", "caress"},
      {"cats", "cat"},          {"feed", "feed"},           {"agreed", "agre"},         {"plastered", "plaster"},
      {"bled", "bled"},         {"motoring", "motor"},      {"sing", "sing"},           {"conflated", "conflat"},
      {"troubled", "troubl"},   {"sized", "size"},          {"hopping", "hop"},         {"tanned", "tan"},
      {"falling", "fall"},      {"hissing", "hiss"},        {"fizzed", "fizz"},         {"failing", "fail"},
      {"filing", "file"},       {"happy", "happi"},         {"relational", "relat"},    {"conditional", "condit"},
      {"rational", "ration"},   {"valenci", "valenc"},      {"hesitanci", "hesit"},     {"digitizer", "digit"},
      {"conformabli", "conform"}, {"radicalli", "radic"},   {"differentli", "differ"},  {"vileli", "vile"},
      {"analogousli", "analog"}, {"vietnamization", "vietnam"}, {"predication", "predic"}, {"operator", "oper"},
      {"feudalism", "feudal"},  {"decisiveness", "decis"},  {"hopefulness", "hope"},    {"callousness", "callous"},
      {"formaliti", "formal"},  {"sensitiviti", "sensit"},  {"sensibiliti", "sensibl"}, {"triplicate", "triplic"},
      {"formative", "form"},    {"formalize", "formal"},    {"electriciti", "electr"},  {"electrical", "electr"},
      {"hopeful", "hope"},      {"goodness", "good"},       {"revival", "reviv"},       {"allowance", "allow"},
      {"inference", "infer"},   {"airliner", "airlin"},     {"gyroscopic", "gyroscop"}, {"adjustable", "adjust"},
      {"defensible", "defens"}, {"irritant", "irrit"},      {"replacement", "replac"},  {"adjustment", "adjust"},
      {"dependent", "depend"},  {"adoption", "adopt"},      {"homologou", "homolog"},   {"communism", "commun"},
      {"activate", "activ"},    {"angulariti", "angular"},  {"homologous", "homolog"},  {"effective", "effect"},
      {"bowdlerize", "bowdler"}, {"probate", "probat"},     {"rate", "rate"},           {"cease", "ceas"},
      {"controll", "control"},  {"roll", "roll"}};
  for (const auto& [word, stem] : cases) {
    INFO(word);
    CHECK(rouge::porter_stem(word) == stem);
  }
}

TEST_CASE("porter_stem has NLTK's irregular forms and extensions", "[rouge][porter]") {
  const std::vector<std::pair<std::string, std::string>> cases{
      {"sky", "sky"},          {"skies", "sky"},        {"dying", "die"},          {"lying", "lie"},
      {"tying", "tie"},        {"news", "news"},        {"innings", "inning"},     {"outings", "outing"},
      {"cannings", "canning"}, {"howe", "howe"},        {"proceed", "proceed"},    {"exceed", "exceed"},
      {"succeed", "succeed"},  {"generously", "gener"}, {"fully", "fulli"},        {"logically", "logic"},
      {"analogies", "analog"}, {"spied", "spi"},        {"tried", "tri"},          {"flies", "fli"},
      {"enjoy", "enjoy"},      {"says", "say"},         {"saying", "say"},         {"1990s", "1990"},
      {"yyyy", "yyyi"},        {"syzygy", "syzygi"},    {"SKIES", "sky"},          {"Running", "run"},
      {"is", "is"},            {"a", "a"},              {"", ""}};
  for (const auto& [word, stem] : cases) {
    INFO(word);
    CHECK(rouge::porter_stem(word) == stem);
  }
}

// ---------------------------------------------------------------------------------------------------------
// Tokens

TEST_CASE("tokenize lowercases and splits on everything but ASCII letters and digits", "[rouge]") {
  using V = std::vector<std::string>;
  CHECK(rouge::tokenize("The Quick-Brown fox's 2nd!! caf\xC3\xA9 \xC4\xB0stanbul \xE2\x84\xAA" "elvin", false) ==
        V{"the", "quick", "brown", "fox", "s", "2nd", "caf", "i", "stanbul", "kelvin"});
  CHECK(rouge::tokenize("", false).empty());
  CHECK(rouge::tokenize(" ... !!! \n\t--- ", true).empty());
  CHECK(rouge::tokenize("\xFF\xFE" "abc\x80" "def", false) == V{"abc", "def"});  // invalid UTF-8: separators
}

TEST_CASE("tokenize stems only tokens longer than 3 characters", "[rouge]") {
  using V = std::vector<std::string>;
  CHECK(rouge::tokenize("Running quickly, the runners' generously-sized 1990s rallies", true) ==
        V{"run", "quickli", "the", "runner", "gener", "size", "1990", "ralli"});
  CHECK(rouge::tokenize("ties dies lies", true) == V{"tie", "die", "lie"});
  CHECK(rouge::tokenize("was has", true) == V{"was", "has"});  // "was" → "wa" if it were stemmed
}

// ---------------------------------------------------------------------------------------------------------
// Scores

TEST_CASE("score gives rouge_score's values on its documentation example", "[rouge]") {
  const auto s = rouge::score("The quick brown fox jumps over the lazy dog", "The quick brown dog jumps on the log.",
                              rouge::default_rouge_types(), false);
  REQUIRE(s.size() == 4);
  // 6 of 8 prediction unigrams in the 9 of the target; bigrams: "the quick", "quick brown" of 7 and 8.
  check_score(s.at("rouge1"), 6.0 / 8, 6.0 / 9, 0.7058823529411765);
  check_score(s.at("rouge2"), 2.0 / 7, 2.0 / 8, 0.26666666666666666);
  check_score(s.at("rougeL"), 5.0 / 8, 5.0 / 9, 0.5882352941176471);
  check_score(s.at("rougeLsum"), 5.0 / 8, 5.0 / 9, 0.5882352941176471);  // one line each: = rougeL
}

TEST_CASE("rougeLsum takes the union of LCS over the lines and rougeL ignores them", "[rouge]") {
  const std::string target = "The cats were running quickly.\nDogs barked.";
  const std::string prediction = "A cat runs quickly.\nThe dog barks loudly.\nCats run.";
  const auto stemmed = rouge::score(target, prediction, rouge::default_rouge_types(), true);
  check_score(stemmed.at("rouge1"), 6.0 / 10, 6.0 / 7, 0.7058823529411764);
  check_score(stemmed.at("rouge2"), 2.0 / 9, 2.0 / 6, 0.26666666666666666);
  check_score(stemmed.at("rougeL"), 5.0 / 10, 5.0 / 7, 0.588235294117647);
  check_score(stemmed.at("rougeLsum"), 6.0 / 10, 6.0 / 7, 0.7058823529411764);
  const auto plain = rouge::score(target, prediction, rouge::default_rouge_types(), false);
  check_score(plain.at("rouge1"), 3.0 / 10, 3.0 / 7, 0.3529411764705882);
  check_score(plain.at("rouge2"), 0.0, 0.0, 0.0);
  check_score(plain.at("rougeL"), 2.0 / 10, 2.0 / 7, 0.23529411764705882);
  check_score(plain.at("rougeLsum"), 3.0 / 10, 3.0 / 7, 0.3529411764705882);
}

TEST_CASE("score is 0 for empty or punctuation-only texts and 1 for identical ones", "[rouge]") {
  const auto types = std::vector<std::string>{"rouge1", "rouge2", "rouge3", "rougeL", "rougeLsum"};
  for (const auto& [target, prediction] : std::vector<std::pair<std::string, std::string>>{
           {"", ""}, {"a b c", ""}, {"", "a b c"}, {"!!!", "... ---"}, {"a b", "\n\n"}}) {
    for (const auto& [type, s] : rouge::score(target, prediction, types, true)) {
      INFO(type << " of '" << target << "' and '" << prediction << "'");
      check_score(s, 0.0, 0.0, 0.0);
    }
  }
  for (const auto& [type, s] : rouge::score("One two three.\nFour five", "One two three.\nFour five", types, false)) {
    INFO(type);
    check_score(s, 1.0, 1.0, 1.0);
  }
  // rougeN of a text shorter than N: no n-grams, so 0 / max(0, 1) = 0.
  check_score(rouge::score("one", "one", {"rouge2"}, false).at("rouge2"), 0.0, 0.0, 0.0);
}

TEST_CASE("score counts repeated n-grams at most as often as the target has them", "[rouge]") {
  const auto s = rouge::score("the cat the cat", "the the the cat", {"rouge1", "rouge2"}, false);
  check_score(s.at("rouge1"), 3.0 / 4, 3.0 / 4, 0.75);                // the: min(2, 3), cat: 1
  check_score(s.at("rouge2"), 1.0 / 3, 1.0 / 3, 1.0 / 3);             // "the cat" once in the prediction
}

TEST_CASE("score rejects unknown ROUGE types naming them", "[rouge][errors]") {
  for (const std::string bad : {"rouge0", "rougeLSum", "rouge-1", "rouge10", "bleu", ""}) {
    INFO(bad);
    try {
      rouge::score("a", "a", {"rouge1", bad}, false);
      FAIL("no error for " << bad);
    } catch (const c10::Error& e) {
      CHECK_THAT(e.what_without_backtrace(), HasSubstring("'" + bad + "'"));
      CHECK_THAT(e.what_without_backtrace(), HasSubstring("increlora:"));
    }
  }
}

TEST_CASE("corpus_score is the mean of the per-pair scores", "[rouge]") {
  const std::vector<std::string> targets{"a b c d", "x y", "p q r"};
  const std::vector<std::string> predictions{"a b", "z", "p q r"};
  const auto corpus = rouge::corpus_score(targets, predictions, {"rouge1", "rougeL"}, false);
  // Per pair rouge1 (P, R, F): (1, 0.5, 2/3), (0, 0, 0), (1, 1, 1).
  check_score(corpus.at("rouge1"), 2.0 / 3, 0.5, (2.0 / 3 + 0.0 + 1.0) / 3);
  check_score(corpus.at("rougeL"), 2.0 / 3, 0.5, (2.0 / 3 + 0.0 + 1.0) / 3);
  CHECK_THROWS_WITH(rouge::corpus_score(targets, {"a"}, {"rouge1"}, false),
                    HasSubstring("3 targets but 1 predictions"));
  CHECK_THROWS_WITH(rouge::corpus_score({}, {}, {"rouge1"}, false), HasSubstring("no pairs"));
  CHECK_THROWS_WITH(rouge::mean_scores({rouge::Scores{{"rouge1", {}}}, rouge::Scores{{"rouge2", {}}}}),
                    HasSubstring("'rouge2'"));
}

// ---------------------------------------------------------------------------------------------------------
// Sentences

TEST_CASE("split_sentences ends sentences at stops before a capital and keeps the newlines", "[rouge][sentences]") {
  using V = std::vector<std::string>;
  CHECK(rouge::split_sentences("It rained. Then it stopped! Did it? Yes.") ==
        V{"It rained.", "Then it stopped!", "Did it?", "Yes."});
  CHECK(rouge::split_sentences("He said \"Stop.\" Then he left.") == V{"He said \"Stop.\"", "Then he left."});
  CHECK(rouge::split_sentences("Prices rose 3.5 per cent. 2016 was worse.") ==
        V{"Prices rose 3.5 per cent.", "2016 was worse."});
  CHECK(rouge::split_sentences("Mr. Smith met Dr. Jones and J. K. Rowling. They talked.") ==
        V{"Mr. Smith met Dr. Jones and J. K. Rowling.", "They talked."});
  CHECK(rouge::split_sentences("no capital. after this") == V{"no capital. after this"});
  CHECK(rouge::split_sentences("  First line\n\nsecond line  \n") == V{"First line", "second line"});
  CHECK(rouge::split_sentences("Wait... What?! \xE2\x80\x9CQuoted\xE2\x80\x9D end.") ==
        V{"Wait...", "What?!", "\xE2\x80\x9CQuoted\xE2\x80\x9D end."});
  CHECK(rouge::split_sentences("").empty());
  CHECK(rouge::sentences_per_line(" A b. C d. ") == "A b.\nC d.");
  CHECK(rouge::sentences_per_line(std::vector<std::string>{"Aa. Bb.", "C"}) ==
        std::vector<std::string>{"Aa.\nBb.", "C"});
}

// ---------------------------------------------------------------------------------------------------------
// Speed

TEST_CASE("scoring 1000 XSum pairs with the stemmer takes well under a second", "[rouge][speed]") {
  const auto examples = xsum_examples();
  std::vector<std::string> targets, predictions;
  for (size_t i = 0; i < 1000; ++i) {
    const auto& e = examples[i % examples.size()];
    targets.push_back(e.summary);
    predictions.push_back(rouge::sentences_per_line(join(words(e.document), i % 7, i % 7 + 30)));
  }
  const auto start = std::chrono::steady_clock::now();
  const auto corpus = rouge::corpus_score(targets, predictions, rouge::default_rouge_types(), true);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  INFO("1000 pairs in " << seconds << " s");
  CHECK(seconds < 0.5);
  CHECK(corpus.at("rouge1").fmeasure > 0.0);
}

// ---------------------------------------------------------------------------------------------------------
// The fixture of the ctest rouge_score_reference

// Writes cpp_rouge.json into $INCRELORA_ROUGE_FIXTURE_DIR: fixed pairs built from the XSum sample with this
// library's scores (four types, with and without stemmer) and tokens, the corpus means, and porter_stem of every
// distinct token of the sample, NLTK's irregular forms, hand-picked suffix cases and synthetic words (bases ×
// suffixes × inflections); rouge_reference.py recomputes them.
TEST_CASE("The rouge_score reference fixture is written from the XSum sample", "[.][rouge_fixture]") {
  const char* out_dir = std::getenv("INCRELORA_ROUGE_FIXTURE_DIR");
  REQUIRE(out_dir != nullptr);
  const auto examples = xsum_examples();
  REQUIRE(examples.size() == 50);

  std::vector<std::pair<std::string, std::string>> pairs;  // (target, prediction)
  for (size_t i = 0; i < examples.size(); ++i) {
    const auto& e = examples[i];
    const auto doc_lines = lines_of(e.document);
    auto summary_words = words(e.summary);
    pairs.emplace_back(e.summary, doc_lines.front());                                      // first sentence
    auto shuffled = summary_words;                                                         // a fixed shuffle
    for (size_t k = 0; k + 1 < shuffled.size(); k += 2) std::swap(shuffled[k], shuffled[k + 1]);
    std::rotate(shuffled.begin(), shuffled.begin() + static_cast<std::ptrdiff_t>(i % shuffled.size()),
                shuffled.end());
    pairs.emplace_back(e.summary, join(shuffled, 0, shuffled.size()));
    pairs.emplace_back(e.summary, join(summary_words, 0, (summary_words.size() + 1) / 2));  // truncated
    pairs.emplace_back(e.summary, e.summary);                                               // identical
    pairs.emplace_back(e.summary, i % 2 ? "" : " ");                                        // empty
    pairs.emplace_back(e.summary, i % 3 ? "... !!! --- \xE2\x80\x94 \xE2\x80\x9C\xE2\x80\x9D" : "?");  // punctuation
    pairs.emplace_back(e.summary, "In 2016, 1,000 people (3.5%) said 37-year-old " + std::to_string(i));  // numbers
    pairs.emplace_back(e.summary, join(doc_lines, 0, 3, "\n"));                            // several lines
    pairs.emplace_back(rouge::sentences_per_line(join(doc_lines, 0, 2)),                    // lines on both sides
                       rouge::sentences_per_line(e.summary + " " + join(doc_lines, 2, 4)));
    pairs.emplace_back(join(doc_lines, 0, 4, "\n\n"), join(doc_lines, 1, 5, "\n"));         // blank lines
    pairs.emplace_back("", e.summary);                                                      // empty target
    pairs.emplace_back(e.summary, "\xC4\xB0stanbul \xE2\x84\xAA" "elvin caf\xC3\xA9 " + summary_words.back());
  }

  nlohmann::json out;
  out["rouge_types"] = rouge::default_rouge_types();
  for (const bool stem : {false, true}) {
    const std::string key = stem ? "stemmed" : "plain";
    nlohmann::json scored = nlohmann::json::array();
    std::vector<rouge::Scores> all;
    for (const auto& [target, prediction] : pairs) {
      const auto s = rouge::score(target, prediction, rouge::default_rouge_types(), stem);
      all.push_back(s);
      nlohmann::json entry;
      for (const auto& [type, v] : s) entry[type] = {v.precision, v.recall, v.fmeasure};
      scored.push_back(entry);
    }
    out[key]["scores"] = scored;
    for (const auto& [type, v] : rouge::mean_scores(all)) out[key]["mean"][type] = {v.precision, v.recall, v.fmeasure};
  }
  nlohmann::json pair_list = nlohmann::json::array();
  for (const auto& [target, prediction] : pairs) pair_list.push_back({target, prediction});
  out["pairs"] = pair_list;

  // Tokens of every text, and porter_stem of every distinct token plus the hard cases.
  std::set<std::string> texts, vocabulary;
  for (const auto& e : examples) {
    texts.insert(e.document);
    texts.insert(e.summary);
    for (const auto& t : rouge::tokenize(e.document, false)) vocabulary.insert(t);
    for (const auto& t : rouge::tokenize(e.summary, false)) vocabulary.insert(t);
  }
  for (const char* w :
       {"sky", "skies", "dying", "lying", "tying", "news", "innings", "inning", "outings", "outing", "cannings",
        "canning", "howe", "proceed", "exceed", "succeed", "ties", "dies", "cried", "died", "agreed", "feed",
        "generously", "fully", "logically", "analogies", "biology", "spied", "flies", "enjoy", "syzygy", "yyyy",
        "yay", "toy", "happy", "relational", "conditional", "valency", "digitizer", "conformably", "radically",
        "differently", "vilely", "analogously", "vietnamization", "predication", "operator", "feudalism",
        "decisiveness", "hopefulness", "callousness", "formality", "sensitivity", "sensibility", "triplicate",
        "formative", "formalize", "electricity", "electrical", "hopeful", "goodness", "revival", "allowance",
        "inference", "airliner", "gyroscopic", "adjustable", "defensible", "irritant", "replacement", "adjustment",
        "dependent", "adoption", "homologous", "communism", "activate", "angularity", "effective", "bowdlerize",
        "probate", "rate", "cease", "controlling", "rolling", "hopping", "hissing", "fizzed", "failing", "filing",
        "conflated", "troubled", "sized", "a", "is", "as", "us", "sss", "eed", "ing", "ed", "bed", "red", "sing",
        "ying", "oed", "1990s", "2nd", "x1s", "Running", "SKIES", "Dying"})
    vocabulary.insert(w);
  // Synthetic words for every rule of every step: bases (consonant / vowel / 'y' patterns of measure 0 to 3) with
  // each suffix the rules test, alone and followed by an inflection.
  const char* const bases[] = {"",     "b",    "tr",   "a",    "ea",    "oy",   "y",    "yy",  "happ", "sens",
                               "rel",  "form", "cr",   "gener", "analog", "fe",  "agr",  "contr", "hop",  "fil",
                               "wil",  "bowdl", "electr", "sy",  "ab",    "ov",   "hew",  "box",  "pl",  "oat"};
  const char* const suffixes[] = {
      "sses", "ies",   "ss",    "s",      "eed",     "ed",      "ing",     "ied",   "at",    "bl",    "iz",
      "y",    "ational", "tional", "enci", "anci",   "izer",    "bli",     "alli",  "entli", "eli",   "ousli",
      "ization", "ation", "ator", "alism", "iveness", "fulness", "ousness", "aliti", "iviti", "biliti", "fulli",
      "logi", "icate", "ative", "alize",  "iciti",   "ical",    "ful",     "ness",  "al",    "ance",  "ence",
      "er",   "ic",    "able",  "ible",   "ant",     "ement",   "ment",    "ent",   "sion",  "tion",  "ion",
      "ou",   "ism",   "ate",   "iti",    "ous",     "ive",     "ize",     "e",     "ll",    "ly",    "ally",
      "fully", "logy", "ies",   "bb",     "zz",      "ss",      "tt"};
  const char* const inflections[] = {"", "s", "ed", "ing", "ly", "ies", "e"};
  for (const char* b : bases)
    for (const char* suffix : suffixes)
      for (const char* inflection : inflections) vocabulary.insert(std::string(b) + suffix + inflection);
  nlohmann::json stems = nlohmann::json::object();
  for (const auto& w : vocabulary) stems[w] = rouge::porter_stem(w);
  out["porter"] = stems;
  nlohmann::json tokens = nlohmann::json::object();
  for (const auto& [target, prediction] : pairs) texts.insert({target, prediction});
  for (const auto& t : texts) tokens[t] = {rouge::tokenize(t, false), rouge::tokenize(t, true)};
  out["tokens"] = tokens;

  std::ofstream file(std::string(out_dir) + "/cpp_rouge.json");
  file << out.dump();
  REQUIRE(file.good());
}
