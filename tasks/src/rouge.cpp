#include <increlora/tasks/rouge.hpp>

#include <increlora/errors.hpp>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <unordered_map>
#include <utility>

namespace increlora::rouge {
namespace {

// ----- Porter stemmer (NLTK's porter.py, mode NLTK_EXTENSIONS) -----------------------------------------------

bool ends_with(const std::string& word, const char* suffix) {
  const size_t n = std::char_traits<char>::length(suffix);
  return word.size() >= n && word.compare(word.size() - n, n, suffix) == 0;
}
std::string drop(const std::string& word, size_t n) { return word.substr(0, word.size() - n); }

bool is_vowel(char c) { return c == 'a' || c == 'e' || c == 'i' || c == 'o' || c == 'u'; }

// A 'y' is a consonant when it starts the word or follows a vowel; every other non-vowel is a consonant.
bool is_consonant(const std::string& w, size_t i) {
  if (is_vowel(w[i])) return false;
  if (w[i] != 'y') return true;
  // porter.py's walk: toggle once per 'y' back to the first letter or the first non-'y'.
  size_t j = i;
  bool negate = false;
  while (j > 0 && w[j] == 'y') {
    negate = !negate;
    --j;
  }
  return (!is_vowel(w[j])) != negate;
}

// m of [C](VC){m}[V]: the number of vowel → consonant transitions.
int measure(const std::string& s) {
  int m = 0;
  bool previous_consonant = true;
  bool previous_vowel = false;
  for (size_t i = 0; i < s.size(); ++i) {
    bool consonant;
    if (is_vowel(s[i])) consonant = false;
    else if (s[i] == 'y') consonant = i == 0 ? true : !previous_consonant;
    else consonant = true;
    if (consonant && previous_vowel) ++m;
    previous_vowel = !consonant;
    previous_consonant = consonant;
  }
  return m;
}
bool contains_vowel(const std::string& s) {
  for (size_t i = 0; i < s.size(); ++i)
    if (!is_consonant(s, i)) return true;
  return false;
}
bool ends_double_consonant(const std::string& w) {
  return w.size() >= 2 && w[w.size() - 1] == w[w.size() - 2] && is_consonant(w, w.size() - 1);
}
// *o: the word ends consonant–vowel–consonant, the last not w, x or y; NLTK also counts a 2-letter
// vowel–consonant word.
bool ends_cvc(const std::string& w) {
  const size_t n = w.size();
  if (n >= 3 && is_consonant(w, n - 3) && !is_consonant(w, n - 2) && is_consonant(w, n - 1) && w[n - 1] != 'w' &&
      w[n - 1] != 'x' && w[n - 1] != 'y')
    return true;
  return n == 2 && !is_consonant(w, 0) && is_consonant(w, 1);
}

enum class Condition { None, MeasureAbove0, MeasureAbove1, Ion, Logi };
struct Rule {
  const char* suffix;
  const char* replacement;
  Condition condition;
};

bool holds(Condition c, const std::string& stem, const std::string& word) {
  switch (c) {
    case Condition::None: return true;
    case Condition::MeasureAbove0: return measure(stem) > 0;
    case Condition::MeasureAbove1: return measure(stem) > 1;
    case Condition::Ion: return measure(stem) > 1 && (stem.back() == 's' || stem.back() == 't');
    case Condition::Logi: return measure(drop(word, 3)) > 0;  // porter.py tests word[:-3], the stem + "l"
  }
  return false;
}

// _apply_rule_list: the first rule whose suffix the word has decides, whether its condition holds or not.
template <size_t N>
std::string apply_rules(const std::string& word, const Rule (&rules)[N]) {
  for (const Rule& r : rules) {
    if (!ends_with(word, r.suffix)) continue;
    std::string stem = drop(word, std::char_traits<char>::length(r.suffix));
    if (!holds(r.condition, stem, word)) return word;
    return stem + r.replacement;
  }
  return word;
}

std::string step1a(const std::string& w) {
  if (ends_with(w, "ies") && w.size() == 4) return drop(w, 3) + "ie";
  static const Rule rules[] = {{"sses", "ss", Condition::None},
                               {"ies", "i", Condition::None},
                               {"ss", "ss", Condition::None},
                               {"s", "", Condition::None}};
  return apply_rules(w, rules);
}

std::string step1b(const std::string& w) {
  if (ends_with(w, "ied")) return drop(w, 3) + (w.size() == 4 ? "ie" : "i");
  if (ends_with(w, "eed")) {
    std::string stem = drop(w, 3);
    return measure(stem) > 0 ? stem + "ee" : w;
  }
  std::string s;
  bool removed = false;
  for (const char* suffix : {"ed", "ing"}) {
    if (ends_with(w, suffix)) {
      s = drop(w, std::char_traits<char>::length(suffix));
      if (contains_vowel(s)) {
        removed = true;
        break;
      }
    }
  }
  if (!removed) return w;
  if (ends_with(s, "at")) return s + "e";
  if (ends_with(s, "bl")) return s + "e";
  if (ends_with(s, "iz")) return s + "e";
  if (ends_double_consonant(s)) {
    const char last = s.back();
    return (last != 'l' && last != 's' && last != 'z') ? drop(s, 1) : s;
  }
  if (measure(s) == 1 && ends_cvc(s)) return s + "e";
  return s;
}

std::string step1c(const std::string& w) {
  if (!ends_with(w, "y")) return w;
  std::string stem = drop(w, 1);
  return (stem.size() > 1 && is_consonant(stem, stem.size() - 1)) ? stem + "i" : w;
}

std::string step2(const std::string& w) {
  if (ends_with(w, "alli") && measure(drop(w, 4)) > 0) return step2(drop(w, 4) + "al");
  constexpr Condition m0 = Condition::MeasureAbove0;
  static const Rule rules[] = {
      {"ational", "ate", m0}, {"tional", "tion", m0}, {"enci", "ence", m0},  {"anci", "ance", m0},
      {"izer", "ize", m0},    {"bli", "ble", m0},     {"alli", "al", m0},    {"entli", "ent", m0},
      {"eli", "e", m0},       {"ousli", "ous", m0},   {"ization", "ize", m0}, {"ation", "ate", m0},
      {"ator", "ate", m0},    {"alism", "al", m0},    {"iveness", "ive", m0}, {"fulness", "ful", m0},
      {"ousness", "ous", m0}, {"aliti", "al", m0},    {"iviti", "ive", m0},  {"biliti", "ble", m0},
      {"fulli", "ful", m0},   {"logi", "log", Condition::Logi}};
  return apply_rules(w, rules);
}

std::string step3(const std::string& w) {
  constexpr Condition m0 = Condition::MeasureAbove0;
  static const Rule rules[] = {{"icate", "ic", m0}, {"ative", "", m0}, {"alize", "al", m0}, {"iciti", "ic", m0},
                               {"ical", "ic", m0},  {"ful", "", m0},   {"ness", "", m0}};
  return apply_rules(w, rules);
}

std::string step4(const std::string& w) {
  constexpr Condition m1 = Condition::MeasureAbove1;
  static const Rule rules[] = {{"al", "", m1},   {"ance", "", m1}, {"ence", "", m1}, {"er", "", m1},
                               {"ic", "", m1},   {"able", "", m1}, {"ible", "", m1}, {"ant", "", m1},
                               {"ement", "", m1}, {"ment", "", m1}, {"ent", "", m1},
                               {"ion", "", Condition::Ion},
                               {"ou", "", m1},   {"ism", "", m1},  {"ate", "", m1},  {"iti", "", m1},
                               {"ous", "", m1},  {"ive", "", m1},  {"ize", "", m1}};
  return apply_rules(w, rules);
}

std::string step5a(const std::string& w) {
  if (!ends_with(w, "e")) return w;
  std::string stem = drop(w, 1);
  const int m = measure(stem);
  if (m > 1) return stem;
  if (m == 1 && !ends_cvc(stem)) return stem;
  return w;
}

std::string step5b(const std::string& w) {
  if (ends_with(w, "ll") && measure(drop(w, 1)) > 1) return drop(w, 1);
  return w;
}

const std::unordered_map<std::string, std::string>& irregular_forms() {
  static const std::unordered_map<std::string, std::string> pool{
      {"sky", "sky"},         {"skies", "sky"},       {"dying", "die"},        {"lying", "lie"},
      {"tying", "tie"},       {"news", "news"},       {"innings", "inning"},   {"inning", "inning"},
      {"outings", "outing"},  {"outing", "outing"},   {"cannings", "canning"}, {"canning", "canning"},
      {"howe", "howe"},       {"proceed", "proceed"}, {"exceed", "exceed"},    {"succeed", "succeed"}};
  return pool;
}

// ----- Tokens -----------------------------------------------------------------------------------------------

bool is_token_char(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'); }

// Tokens as ids into one vocabulary shared by target and prediction, so comparisons are integer comparisons.
class Vocabulary {
 public:
  std::vector<int> ids(const std::vector<std::string>& tokens) {
    std::vector<int> out;
    out.reserve(tokens.size());
    for (const auto& t : tokens) out.push_back(id(t));
    return out;
  }
  int id(const std::string& token) { return index_.emplace(token, static_cast<int>(index_.size())).first->second; }
  size_t size() const { return index_.size(); }

 private:
  std::unordered_map<std::string, int> index_;
};

using Ids = std::vector<int>;

double fmeasure(double precision, double recall) {
  return precision + recall > 0 ? 2 * precision * recall / (precision + recall) : 0.0;
}
Score make_score(double precision, double recall) { return Score{precision, recall, fmeasure(precision, recall)}; }

// The sorted n-grams of `ids` (each an index into `ids`, compared by the n tokens from there).
std::vector<Ids> sorted_ngrams(const Ids& ids, size_t n) {
  std::vector<Ids> grams;
  if (ids.size() >= n) {
    grams.reserve(ids.size() - n + 1);
    for (size_t i = 0; i + n <= ids.size(); ++i) grams.emplace_back(ids.begin() + i, ids.begin() + i + n);
  }
  std::sort(grams.begin(), grams.end());
  return grams;
}

Score score_ngrams(const Ids& target, const Ids& prediction, size_t n) {
  const auto t = sorted_ngrams(target, n);
  const auto p = sorted_ngrams(prediction, n);
  // Multiset intersection: each n-gram min(count in target, count in prediction) times.
  int64_t overlap = 0;
  for (size_t i = 0, j = 0; i < t.size() && j < p.size();) {
    if (t[i] < p[j]) ++i;
    else if (p[j] < t[i]) ++j;
    else ++overlap, ++i, ++j;
  }
  const double precision = static_cast<double>(overlap) / static_cast<double>(std::max<size_t>(p.size(), 1));
  const double recall = static_cast<double>(overlap) / static_cast<double>(std::max<size_t>(t.size(), 1));
  return make_score(precision, recall);
}

// The (rows + 1) × (cols + 1) LCS table of rouge_score's _lcs_table, row-major.
std::vector<int> lcs_table(const Ids& ref, const Ids& can) {
  const size_t cols = can.size() + 1;
  std::vector<int> t((ref.size() + 1) * cols, 0);
  for (size_t i = 1; i <= ref.size(); ++i)
    for (size_t j = 1; j <= can.size(); ++j)
      t[i * cols + j] = ref[i - 1] == can[j - 1] ? t[(i - 1) * cols + j - 1] + 1
                                                 : std::max(t[(i - 1) * cols + j], t[i * cols + j - 1]);
  return t;
}

size_t lcs_length(const Ids& a, const Ids& b) {
  std::vector<int> previous(b.size() + 1, 0), current(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j)
      current[j] = a[i - 1] == b[j - 1] ? previous[j - 1] + 1 : std::max(previous[j], current[j - 1]);
    std::swap(previous, current);
  }
  return static_cast<size_t>(previous[b.size()]);
}

Score score_lcs(const Ids& target, const Ids& prediction) {
  if (target.empty() || prediction.empty()) return Score{};
  const double lcs = static_cast<double>(lcs_length(target, prediction));
  return make_score(lcs / static_cast<double>(prediction.size()), lcs / static_cast<double>(target.size()));
}

// The indices into `ref` of the LCS that rouge_score's _backtrack_norec reads out: from the end, a match is taken,
// else it moves left when the cell on the left is strictly larger than the one above, else up.
void add_lcs_indices(const Ids& ref, const Ids& can, std::vector<char>& in_union) {
  const auto t = lcs_table(ref, can);
  const size_t cols = can.size() + 1;
  size_t i = ref.size(), j = can.size();
  while (i > 0 && j > 0) {
    if (ref[i - 1] == can[j - 1]) {
      in_union[i - 1] = 1;
      --i;
      --j;
    } else if (t[i * cols + j - 1] > t[(i - 1) * cols + j]) {
      --j;
    } else {
      --i;
    }
  }
}

Score score_summary_lcs(const std::vector<Ids>& ref_sentences, const std::vector<Ids>& can_sentences,
                        size_t vocabulary_size) {
  if (ref_sentences.empty() || can_sentences.empty()) return Score{};
  size_t m = 0, n = 0;
  std::vector<int> count_ref(vocabulary_size, 0), count_can(vocabulary_size, 0);
  for (const auto& s : ref_sentences) {
    m += s.size();
    for (int t : s) ++count_ref[t];
  }
  for (const auto& s : can_sentences) {
    n += s.size();
    for (int t : s) ++count_can[t];
  }
  if (n == 0 || m == 0) return Score{};
  int64_t hits = 0;
  for (const auto& r : ref_sentences) {
    std::vector<char> in_union(r.size(), 0);
    for (const auto& c : can_sentences) add_lcs_indices(r, c, in_union);
    for (size_t i = 0; i < r.size(); ++i) {
      if (!in_union[i]) continue;
      const int t = r[i];
      if (count_can[t] > 0 && count_ref[t] > 0) {
        ++hits;
        --count_can[t];
        --count_ref[t];
      }
    }
  }
  const double h = static_cast<double>(hits);
  return make_score(h / static_cast<double>(n), h / static_cast<double>(m));
}

// rouge_score's get_sents without split_summaries: the non-empty pieces between "\n".
std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    if (end > start) out.push_back(text.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

// 0 for "rougeL", -1 for "rougeLsum", n for "rougeN"; throws for anything else.
int parse_type(const std::string& type) {
  if (type == "rougeL") return 0;
  if (type == "rougeLsum") return -1;
  const bool rouge_n = type.size() == 6 && type.compare(0, 5, "rouge") == 0 && type[5] >= '0' && type[5] <= '9';
  INCRELORA_CHECK(rouge_n, "unknown ROUGE type '", type,
                  "'; use \"rouge1\" ... \"rouge9\", \"rougeL\" or \"rougeLsum\" (rouge_score's names).");
  INCRELORA_CHECK(type[5] != '0', "the ROUGE type 'rouge0' has no n-grams; use \"rouge1\" ... \"rouge9\".");
  return type[5] - '0';
}

// ----- Sentences ----------------------------------------------------------------------------------------------

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v'; }

std::string trim(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e && (is_space(s[b]) || s[b] == '\n')) ++b;
  while (e > b && (is_space(s[e - 1]) || s[e - 1] == '\n')) --e;
  return s.substr(b, e - b);
}

// The length of the closing quote or bracket at `i` (" ' ) ] ’ ”), 0 if none.
size_t closing_at(const std::string& s, size_t i) {
  const char c = s[i];
  if (c == '"' || c == '\'' || c == ')' || c == ']') return 1;
  if (s.compare(i, 3, "\xE2\x80\x99") == 0 || s.compare(i, 3, "\xE2\x80\x9D") == 0) return 3;
  return 0;
}
// Whether a sentence may start at `i`: an uppercase ASCII letter, a digit or an opening quote (" ' “ ‘).
bool opens_sentence(const std::string& s, size_t i) {
  const char c = s[i];
  if ((c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '"' || c == '\'') return true;
  return s.compare(i, 3, "\xE2\x80\x9C") == 0 || s.compare(i, 3, "\xE2\x80\x98") == 0;
}
// Whether the word ending at `end` (exclusive, just before the '.') is an abbreviation or an initial.
bool abbreviation_before(const std::string& s, size_t begin, size_t end) {
  size_t b = end;
  while (b > begin && std::isalpha(static_cast<unsigned char>(s[b - 1]))) --b;
  const std::string word = s.substr(b, end - b);
  if (word.empty()) return false;
  if (b > begin && !is_space(s[b - 1]) && s[b - 1] != '(' && s[b - 1] != '"') return false;  // "a.m" etc.: no
  if (word.size() == 1) return word[0] >= 'A' && word[0] <= 'Z';  // an initial
  static const char* const kTitles[] = {"Mr",  "Mrs", "Ms",  "Dr",   "Prof", "St",  "Jr",  "Sr", "Rev", "Gen",
                                        "Gov", "Sen", "Rep", "Capt", "Lt",   "Col", "Sgt", "No", "Mt",  "vs",
                                        "etc"};
  for (const char* t : kTitles)
    if (word == t) return true;
  return false;
}

void split_line(const std::string& line, std::vector<std::string>& out) {
  size_t start = 0, i = 0;
  const size_t n = line.size();
  while (i < n) {
    const char c = line[i];
    if (c != '.' && c != '!' && c != '?') {
      ++i;
      continue;
    }
    const size_t terminator = i;
    while (i < n && (line[i] == '.' || line[i] == '!' || line[i] == '?')) ++i;
    while (i < n) {
      const size_t k = closing_at(line, i);
      if (k == 0) break;
      i += k;
    }
    const size_t sentence_end = i;
    if (i >= n || !is_space(line[i])) continue;
    while (i < n && is_space(line[i])) ++i;
    if (i >= n || !opens_sentence(line, i)) continue;
    const bool single_period = line[terminator] == '.' && sentence_end == terminator + 1;
    if (single_period && abbreviation_before(line, start, terminator)) continue;
    std::string sentence = trim(line.substr(start, sentence_end - start));
    if (!sentence.empty()) out.push_back(std::move(sentence));
    start = i;
  }
  std::string rest = trim(line.substr(start));
  if (!rest.empty()) out.push_back(std::move(rest));
}

}  // namespace

std::vector<std::string> default_rouge_types() { return {"rouge1", "rouge2", "rougeL", "rougeLsum"}; }

std::string porter_stem(const std::string& word) {
  std::string stem = word;
  for (char& c : stem)
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
  const auto& pool = irregular_forms();
  if (auto it = pool.find(stem); it != pool.end()) return it->second;
  if (word.size() <= 2) return stem;
  stem = step1a(stem);
  stem = step1b(stem);
  stem = step1c(stem);
  stem = step2(stem);
  stem = step3(stem);
  stem = step4(stem);
  stem = step5a(stem);
  stem = step5b(stem);
  return stem;
}

std::vector<std::string> tokenize(const std::string& text, bool use_stemmer) {
  std::vector<std::string> tokens;
  std::string current;
  auto flush = [&] {
    if (current.empty()) return;
    tokens.push_back(use_stemmer && current.size() > 3 ? porter_stem(current) : current);
    current.clear();
  };
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c >= 'A' && c <= 'Z') {
      current.push_back(static_cast<char>(c - 'A' + 'a'));
    } else if (is_token_char(c)) {
      current.push_back(c);
    } else if (text.compare(i, 2, "\xC4\xB0") == 0) {  // U+0130 lowercases to "i" + U+0307 (not a token char)
      current.push_back('i');
      flush();
      ++i;
    } else if (text.compare(i, 3, "\xE2\x84\xAA") == 0) {  // U+212A KELVIN SIGN lowercases to "k"
      current.push_back('k');
      i += 2;
    } else {
      flush();
    }
  }
  flush();
  return tokens;
}

Scores score(const std::string& target, const std::string& prediction, const std::vector<std::string>& rouge_types,
             bool use_stemmer) {
  std::vector<int> kinds;
  kinds.reserve(rouge_types.size());
  for (const auto& type : rouge_types) kinds.push_back(parse_type(type));
  // "\n" is a separator, so the tokens of a text are those of its lines one after the other: each line is
  // tokenised once, for rougeLsum, and the whole text's tokens are their concatenation.
  Vocabulary vocabulary;
  auto line_ids = [&](const std::string& text) {
    std::vector<Ids> out;
    for (const auto& l : lines(text)) out.push_back(vocabulary.ids(tokenize(l, use_stemmer)));
    return out;
  };
  auto concatenated = [](const std::vector<Ids>& parts) {
    Ids all;
    for (const auto& p : parts) all.insert(all.end(), p.begin(), p.end());
    return all;
  };
  const std::vector<Ids> target_lines = line_ids(target), prediction_lines = line_ids(prediction);
  const Ids target_ids = concatenated(target_lines), prediction_ids = concatenated(prediction_lines);
  Scores out;
  for (size_t k = 0; k < rouge_types.size(); ++k) {
    if (kinds[k] > 0) out[rouge_types[k]] = score_ngrams(target_ids, prediction_ids, static_cast<size_t>(kinds[k]));
    else if (kinds[k] == 0) out[rouge_types[k]] = score_lcs(target_ids, prediction_ids);
    else out[rouge_types[k]] = score_summary_lcs(target_lines, prediction_lines, vocabulary.size());
  }
  return out;
}

Scores mean_scores(const std::vector<Scores>& per_pair) {
  INCRELORA_CHECK(!per_pair.empty(), "mean_scores: no scores to average; score at least one pair.");
  Scores sum;
  for (const auto& [type, s] : per_pair.front()) sum[type] = Score{};
  for (size_t i = 0; i < per_pair.size(); ++i) {
    INCRELORA_CHECK(per_pair[i].size() == sum.size(), "mean_scores: pair ", i, " has ", per_pair[i].size(),
                    " ROUGE types, pair 0 has ", sum.size(), "; score every pair with the same types.");
    for (const auto& [type, s] : per_pair[i]) {
      auto it = sum.find(type);
      INCRELORA_CHECK(it != sum.end(), "mean_scores: pair ", i, " has the ROUGE type '", type,
                      "' that pair 0 lacks; score every pair with the same types.");
      it->second.precision += s.precision;
      it->second.recall += s.recall;
      it->second.fmeasure += s.fmeasure;
    }
  }
  const double count = static_cast<double>(per_pair.size());
  for (auto& [type, s] : sum) s = Score{s.precision / count, s.recall / count, s.fmeasure / count};
  return sum;
}

Scores corpus_score(const std::vector<std::string>& targets, const std::vector<std::string>& predictions,
                    const std::vector<std::string>& rouge_types, bool use_stemmer) {
  INCRELORA_CHECK(targets.size() == predictions.size(), "corpus_score: ", targets.size(), " targets but ",
                  predictions.size(), " predictions; give one prediction per target.");
  INCRELORA_CHECK(!targets.empty(), "corpus_score: no pairs to score; give at least one target and prediction.");
  std::vector<Scores> per_pair;
  per_pair.reserve(targets.size());
  for (size_t i = 0; i < targets.size(); ++i)
    per_pair.push_back(score(targets[i], predictions[i], rouge_types, use_stemmer));
  return mean_scores(per_pair);
}

std::vector<std::string> split_sentences(const std::string& text) {
  std::vector<std::string> out;
  for (const auto& line : lines(text)) split_line(line, out);
  return out;
}

std::string sentences_per_line(const std::string& text) {
  std::string out;
  for (const auto& s : split_sentences(text)) {
    if (!out.empty()) out += '\n';
    out += s;
  }
  return out;
}

std::vector<std::string> sentences_per_line(const std::vector<std::string>& texts) {
  std::vector<std::string> out;
  out.reserve(texts.size());
  for (const auto& t : texts) out.push_back(sentences_per_line(t));
  return out;
}

}  // namespace increlora::rouge
