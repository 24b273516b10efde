#include "qa_data.hpp"

#include <increlora/apps/progress.hpp>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <tuple>

namespace increlora::apps::qa_app {

namespace {

// run_qa strips the question's leading whitespace: some SQuAD questions start with long runs of spaces, which
// would only eat the window.
std::string lstrip(const std::string& s) {
  size_t i = 0;
  while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  return s.substr(i);
}

// The training target of one window as run_qa computes it: the first and last tokens whose bytes overlap the
// answer, when the answer lies wholly inside the window's context; otherwise the [CLS] token (0, 0).
void label_window(Feature& f, int64_t answer_begin, int64_t answer_end) {
  int64_t first = -1, last = -1;
  for (int64_t t = 0; t < static_cast<int64_t>(f.context_offsets.size()); ++t) {
    if (f.context_offsets[t].first < 0) continue;
    if (first < 0) first = t;
    last = t;
  }
  if (first < 0 || f.context_offsets[first].first > answer_begin || f.context_offsets[last].second < answer_end) {
    return;  // the answer is not (wholly) in this window
  }
  int64_t s = first;
  while (s <= last && f.context_offsets[s].first <= answer_begin) ++s;
  int64_t e = last;
  while (e >= first && f.context_offsets[e].second >= answer_end) --e;
  f.start_position = s - 1;
  f.end_position = e + 1;
}

}  // namespace

std::vector<Feature> make_features(const std::vector<squad::SquadExample>& examples, const QaTokenizer& tok,
                                   const WindowOptions& o, bool training, const std::string& what) {
  if (o.doc_stride < 0) throw std::invalid_argument("--doc_stride must be >= 0");
  if (o.max_query_length < 1) throw std::invalid_argument("--max_query_length must be >= 1");
  std::vector<Feature> features;
  features.reserve(examples.size());
  Progress progress("windows " + what, static_cast<int64_t>(examples.size()), "ex");
  // Contexts repeat across the questions of a paragraph: tokenize each once.
  const std::string* last_context = nullptr;
  models::TokenSpans context;
  for (size_t ex = 0; ex < examples.size(); ++ex) {
    const auto& e = examples[ex];
    if (!last_context || *last_context != e.context) {
      context = tok.encode_with_offsets(e.context);
      last_context = &e.context;
    }
    auto question = tok.encode_with_offsets(lstrip(e.question)).ids;
    if (static_cast<int64_t>(question.size()) > o.max_query_length) question.resize(static_cast<size_t>(o.max_query_length));
    const int64_t room = o.max_seq_length - static_cast<int64_t>(question.size()) - 3;
    if (room <= o.doc_stride) {
      throw std::invalid_argument("question '" + e.id + "' leaves " + std::to_string(room) + " context tokens per "
                                  "window with --max_seq_length " + std::to_string(o.max_seq_length) + ", not more "
                                  "than --doc_stride " + std::to_string(o.doc_stride) + "; raise --max_seq_length or "
                                  "lower --doc_stride / --max_query_length");
    }
    int64_t answer_begin = -1, answer_end = -1;
    if (training && !e.answer_texts.empty()) std::tie(answer_begin, answer_end) = squad::answer_byte_span(e, 0);
    const auto n = static_cast<int64_t>(context.ids.size());
    for (int64_t begin = 0;;) {
      const int64_t end = std::min(begin + room, n);
      Feature f;
      f.example = ex;
      f.input_ids.reserve(static_cast<size_t>(question.size() + (end - begin) + 3));
      f.input_ids.push_back(tok.cls_id);
      f.input_ids.insert(f.input_ids.end(), question.begin(), question.end());
      f.input_ids.push_back(tok.sep_id);
      f.token_type_ids.assign(f.input_ids.size(), 0);
      f.context_offsets.assign(f.input_ids.size(), {-1, -1});
      for (int64_t t = begin; t < end; ++t) {
        f.input_ids.push_back(context.ids[static_cast<size_t>(t)]);
        f.context_offsets.push_back(context.offsets[static_cast<size_t>(t)]);
      }
      f.input_ids.push_back(tok.sep_id);
      f.context_offsets.push_back({-1, -1});
      f.token_type_ids.resize(f.input_ids.size(), 1);
      if (answer_begin >= 0) label_window(f, answer_begin, answer_end);
      features.push_back(std::move(f));
      if (end >= n) break;
      begin = end - o.doc_stride;
    }
    if (ex % 256 == 0) progress.update(static_cast<int64_t>(ex));
  }
  return features;
}

std::vector<torch::Tensor> collate(const std::vector<Feature>& features, const std::vector<size_t>& idx,
                                   int64_t pad_id, const torch::Device& device, int64_t pad_to) {
  size_t len = static_cast<size_t>(std::max<int64_t>(pad_to, 0));
  for (auto i : idx) len = std::max(len, features[i].input_ids.size());
  const auto n = static_cast<int64_t>(idx.size());
  const auto L = static_cast<int64_t>(len);
  auto ids = torch::full({n, L}, pad_id, torch::kLong);
  auto mask = torch::zeros({n, L}, torch::kLong);
  auto types = torch::zeros({n, L}, torch::kLong);
  auto starts = torch::empty({n}, torch::kLong);
  auto ends = torch::empty({n}, torch::kLong);
  auto ids_a = ids.accessor<int64_t, 2>(), mask_a = mask.accessor<int64_t, 2>(), types_a = types.accessor<int64_t, 2>();
  auto starts_a = starts.accessor<int64_t, 1>(), ends_a = ends.accessor<int64_t, 1>();
  for (int64_t r = 0; r < n; ++r) {
    const auto& f = features[idx[static_cast<size_t>(r)]];
    for (size_t c = 0; c < f.input_ids.size(); ++c) {
      ids_a[r][static_cast<int64_t>(c)] = f.input_ids[c];
      mask_a[r][static_cast<int64_t>(c)] = 1;
      types_a[r][static_cast<int64_t>(c)] = f.token_type_ids[c];
    }
    starts_a[r] = f.start_position;
    ends_a[r] = f.end_position;
  }
  return {ids.to(device), mask.to(device), types.to(device), starts.to(device), ends.to(device)};
}

std::pair<std::vector<squad::SquadExample>, std::vector<squad::SquadExample>> split_by_paragraph(
    const std::vector<squad::SquadExample>& examples, double percent) {
  if (!(percent > 0 && percent < 100)) {
    throw std::invalid_argument("--validation_split_percentage must be in (0, 100)");
  }
  std::pair<std::vector<squad::SquadExample>, std::vector<squad::SquadExample>> out;
  // Paragraph k goes to validation when floor((k + 1) p / 100) > floor(k p / 100): p per cent of them, spread
  // evenly, the same on every run.
  int64_t paragraph = -1;
  const std::string* context = nullptr;
  bool to_validation = false;
  for (const auto& e : examples) {
    if (!context || *context != e.context) {
      ++paragraph;
      context = &e.context;
      const auto k = static_cast<double>(paragraph);
      to_validation = std::floor((k + 1) * percent / 100.0) > std::floor(k * percent / 100.0);
    }
    (to_validation ? out.second : out.first).push_back(e);
  }
  return out;
}

}  // namespace increlora::apps::qa_app
