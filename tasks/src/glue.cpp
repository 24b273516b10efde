#include <increlora/tasks/glue.hpp>

#include <increlora/errors.hpp>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>

namespace increlora::glue {
namespace {

std::string canonical_name(std::string name) {
  std::transform(name.begin(), name.end(), name.begin(), [](unsigned char c) { return std::tolower(c); });
  name.erase(std::remove(name.begin(), name.end(), '-'), name.end());
  return name;
}

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> fields;
  size_t start = 0;
  while (true) {
    const size_t tab = line.find('\t', start);
    fields.push_back(line.substr(start, tab == std::string::npos ? std::string::npos : tab - start));
    if (tab == std::string::npos) break;
    start = tab + 1;
  }
  return fields;
}

void check_same_size(size_t a, size_t b, const char* what) {
  INCRELORA_CHECK(a == b, what, ": predictions (", a, ") and labels (", b, ") differ in length.");
  INCRELORA_CHECK(a > 0, what, ": no predictions to score.");
}

std::vector<double> average_ranks(const std::vector<double>& v) {
  std::vector<size_t> order(v.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return v[a] < v[b]; });
  std::vector<double> ranks(v.size());
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j + 1 < order.size() && v[order[j + 1]] == v[order[i]]) ++j;
    const double rank = (static_cast<double>(i) + static_cast<double>(j)) / 2.0 + 1.0;
    for (size_t k = i; k <= j; ++k) ranks[order[k]] = rank;
    i = j + 1;
  }
  return ranks;
}

}  // namespace

std::vector<std::string> task_names() { return {"cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"}; }

TaskSpec task_spec(const std::string& task_name) {
  const auto name = canonical_name(task_name);
  TaskSpec s;
  s.name = name;
  s.eval_files = {"dev.tsv"};
  s.test_files = {"test.tsv"};
  s.main_metric = "accuracy";
  // Columns as in the GLUE processors (transformers/data/processors/glue.py).
  if (name == "cola") {
    s.labels = {"0", "1"}, s.has_header = false, s.text_a = 3, s.label = 1, s.main_metric = "matthews_correlation";
    s.submission_files = {"CoLA.tsv"}, s.test_text_a = 1;
  } else if (name == "sst2") {
    s.labels = {"0", "1"}, s.text_a = 0, s.label = 1;
    s.submission_files = {"SST-2.tsv"}, s.test_text_a = 1;
  } else if (name == "mrpc") {
    s.labels = {"0", "1"}, s.text_a = 3, s.text_b = 4, s.label = 0, s.main_metric = "f1";
    s.submission_files = {"MRPC.tsv"}, s.test_text_a = 3, s.test_text_b = 4;
  } else if (name == "stsb") {
    s.text_a = 7, s.text_b = 8, s.label = -1, s.main_metric = "pearson";
    s.submission_files = {"STS-B.tsv"}, s.test_text_a = 7, s.test_text_b = 8;
  } else if (name == "qqp") {
    s.labels = {"0", "1"}, s.text_a = 3, s.text_b = 4, s.label = 5, s.main_metric = "f1";
    s.submission_files = {"QQP.tsv"}, s.test_text_a = 1, s.test_text_b = 2;
  } else if (name == "mnli") {
    s.labels = {"contradiction", "entailment", "neutral"}, s.text_a = 8, s.text_b = 9, s.label = -1;
    s.eval_files = {"dev_matched.tsv", "dev_mismatched.tsv"};
    s.test_files = {"test_matched.tsv", "test_mismatched.tsv"};
    s.submission_files = {"MNLI-m.tsv", "MNLI-mm.tsv"}, s.test_text_a = 8, s.test_text_b = 9;
  } else if (name == "qnli" || name == "rte") {
    s.labels = {"entailment", "not_entailment"}, s.text_a = 1, s.text_b = 2, s.label = -1;
    s.submission_files = {name == "qnli" ? "QNLI.tsv" : "RTE.tsv"}, s.test_text_a = 1, s.test_text_b = 2;
  } else if (name == "wnli") {
    s.labels = {"0", "1"}, s.text_a = 1, s.text_b = 2, s.label = -1;
    s.submission_files = {"WNLI.tsv"}, s.test_text_a = 1, s.test_text_b = 2;
  } else {
    std::string known;
    for (const auto& n : task_names()) known += (known.empty() ? "" : ", ") + n;
    INCRELORA_CHECK(false, "unknown GLUE task '", task_name, "'; use one of: ", known, ".");
  }
  return s;
}

std::vector<Example> read_tsv(const std::string& path, const TaskSpec& spec) {
  std::ifstream in(path, std::ios::binary);
  INCRELORA_CHECK(in.good(), "cannot open the GLUE file '", path, "'; point --data_dir at the task's folder (it holds ",
                  "train.tsv and ", spec.eval_files.front(), ").");
  std::vector<Example> examples;
  std::string line;
  int64_t line_no = 0;
  const int needed = std::max({spec.text_a, spec.text_b, spec.label}) + 1;
  while (std::getline(in, line)) {
    ++line_no;
    if (line_no == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_no == 1 && spec.has_header) continue;
    if (line.empty()) continue;
    const auto fields = split_tabs(line);
    const int n = static_cast<int>(fields.size());
    const int label_col = spec.label < 0 ? n + spec.label : spec.label;
    // run_glue skips malformed rows (QQP has a few); so do we.
    if (n < needed || label_col < 0) continue;
    Example e;
    e.text_a = fields[spec.text_a];
    if (spec.text_b >= 0) e.text_b = fields[spec.text_b];
    const auto& label = fields[label_col];
    if (spec.is_regression()) {
      try {
        e.score = std::stod(label);
      } catch (const std::exception&) {
        INCRELORA_CHECK(false, path, ":", line_no, ": the label '", label, "' of task ", spec.name,
                        " is not a number.");
      }
    } else {
      const auto it = std::find(spec.labels.begin(), spec.labels.end(), label);
      INCRELORA_CHECK(it != spec.labels.end(), path, ":", line_no, ": unknown label '", label, "' for task ", spec.name,
                      "; is this the ", spec.name, " folder (and not a test file without labels)?");
      e.label = it - spec.labels.begin();
    }
    examples.push_back(std::move(e));
  }
  INCRELORA_CHECK(!examples.empty(), "the GLUE file '", path, "' holds no examples for task ", spec.name, ".");
  return examples;
}

double accuracy(const std::vector<int64_t>& p, const std::vector<int64_t>& y) {
  check_same_size(p.size(), y.size(), "accuracy");
  size_t hit = 0;
  for (size_t i = 0; i < p.size(); ++i) hit += p[i] == y[i];
  return static_cast<double>(hit) / static_cast<double>(p.size());
}

double f1_binary(const std::vector<int64_t>& p, const std::vector<int64_t>& y) {
  check_same_size(p.size(), y.size(), "f1");
  double tp = 0, fp = 0, fn = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    tp += p[i] == 1 && y[i] == 1;
    fp += p[i] == 1 && y[i] != 1;
    fn += p[i] != 1 && y[i] == 1;
  }
  // sklearn returns 0 (with a warning) when there is no positive prediction or label.
  return tp == 0 ? 0.0 : 2 * tp / (2 * tp + fp + fn);
}

double matthews_corrcoef(const std::vector<int64_t>& p, const std::vector<int64_t>& y) {
  check_same_size(p.size(), y.size(), "matthews_corrcoef");
  // sklearn's multiclass form, which is the usual formula for two classes.
  std::map<int64_t, double> t_k, p_k;
  double c = 0;
  for (size_t i = 0; i < p.size(); ++i) {
    t_k[y[i]] += 1, p_k[p[i]] += 1;
    c += p[i] == y[i];
  }
  const double s = static_cast<double>(p.size());
  double pt = 0, pp = 0, tt = 0;
  for (const auto& [k, v] : p_k) pt += v * (t_k.count(k) ? t_k.at(k) : 0.0), pp += v * v;
  for (const auto& [k, v] : t_k) tt += v * v;
  const double denom = std::sqrt((s * s - pp) * (s * s - tt));
  return denom == 0 ? 0.0 : (c * s - pt) / denom;
}

double pearson(const std::vector<double>& x, const std::vector<double>& y) {
  check_same_size(x.size(), y.size(), "pearson");
  const double n = static_cast<double>(x.size());
  const double mx = std::accumulate(x.begin(), x.end(), 0.0) / n;
  const double my = std::accumulate(y.begin(), y.end(), 0.0) / n;
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    sxy += (x[i] - mx) * (y[i] - my), sxx += (x[i] - mx) * (x[i] - mx), syy += (y[i] - my) * (y[i] - my);
  }
  // scipy returns nan for a constant input.
  return (sxx == 0 || syy == 0) ? std::nan("") : sxy / std::sqrt(sxx * syy);
}

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  check_same_size(x.size(), y.size(), "spearman");
  return pearson(average_ranks(x), average_ranks(y));
}

Metrics classification_metrics(const std::string& task, const std::vector<int64_t>& p, const std::vector<int64_t>& y) {
  const auto name = task_spec(task).name;
  Metrics m;
  if (name == "cola") {
    m["matthews_correlation"] = matthews_corrcoef(p, y);
    return m;
  }
  m["accuracy"] = accuracy(p, y);
  if (name == "mrpc" || name == "qqp") {
    m["f1"] = f1_binary(p, y);
    m["combined_score"] = (m["accuracy"] + m["f1"]) / 2;
  }
  return m;
}

Metrics regression_metrics(const std::string& task, const std::vector<double>& p, const std::vector<double>& y) {
  INCRELORA_CHECK(task_spec(task).is_regression(), "regression_metrics: task ", task,
                  " is a classification task; use classification_metrics.");
  Metrics m;
  m["pearson"] = pearson(p, y);
  m["spearmanr"] = spearman(p, y);
  m["combined_score"] = (m["pearson"] + m["spearmanr"]) / 2;
  return m;
}

std::vector<Example> read_test_tsv(const std::string& path, const TaskSpec& spec) {
  std::ifstream in(path, std::ios::binary);
  INCRELORA_CHECK(in.good(), "cannot open the GLUE test file '", path, "'; --do_predict reads the task's ",
                  spec.test_files.empty() ? "test.tsv" : spec.test_files.front(), " from --data_dir (or give "
                  "--test_file).");
  std::vector<Example> examples;
  std::string line;
  int64_t line_no = 0;
  const int needed = std::max(spec.test_text_a, spec.test_text_b) + 1;
  while (std::getline(in, line)) {
    ++line_no;
    if (line_no == 1 && line.compare(0, 3, "\xEF\xBB\xBF") == 0) line.erase(0, 3);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_no == 1) continue;  // every GLUE test file has a header row
    if (line.empty()) continue;
    const auto fields = split_tabs(line);
    INCRELORA_CHECK(static_cast<int>(fields.size()) >= needed, path, ":", line_no, ": ", fields.size(),
                    " columns, but task ", spec.name, "'s test files have the sentence", spec.test_text_b >= 0 ? "s" : "",
                    " in column ", spec.test_text_a + 1, spec.test_text_b >= 0 ? " and " + std::to_string(spec.test_text_b + 1) : "",
                    "; is this the task's test file?");
    Example e;
    e.text_a = fields[spec.test_text_a];
    if (spec.test_text_b >= 0) e.text_b = fields[spec.test_text_b];
    examples.push_back(std::move(e));
  }
  INCRELORA_CHECK(!examples.empty(), path, " has no test rows.");
  return examples;
}

std::string submission_tsv(const TaskSpec& spec, const std::vector<int64_t>& class_ids,
                           const std::vector<double>& scores) {
  std::string out = "index\tprediction\n";
  const size_t n = spec.is_regression() ? scores.size() : class_ids.size();
  char buffer[64];
  for (size_t i = 0; i < n; ++i) {
    if (spec.is_regression()) {
      std::snprintf(buffer, sizeof buffer, "%.3f", scores[i]);
      out += std::to_string(i) + "\t" + buffer + "\n";
    } else {
      const auto id = class_ids[i];
      INCRELORA_CHECK(id >= 0 && id < spec.num_labels(), "submission_tsv: class id ", id, " is outside the ",
                      spec.num_labels(), " labels of task ", spec.name, ".");
      out += std::to_string(i) + "\t" + spec.labels[static_cast<size_t>(id)] + "\n";
    }
  }
  return out;
}

}  // namespace increlora::glue
