#pragma once
/// \file
/// GLUE: the nine tasks' TSV files, read as the GLUE processors of Hugging Face's run_glue read them
/// (quoting off, fixed columns per task), and the official metrics.

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace increlora::glue {

/// What a task looks like on disk and how it is scored.
struct TaskSpec {
  std::string name;                 ///< "cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"
  std::vector<std::string> labels;  ///< class names in label-id order; empty for regression (STS-B)
  bool has_header = true;           ///< CoLA's train/dev files have no header row
  int text_a = 0;                   ///< column of the first sentence
  int text_b = -1;                  ///< column of the second sentence (-1: single-sentence task)
  int label = -1;                   ///< column of the label (negative: counted from the end, -1 = last)
  /// Evaluation files: one for most tasks, dev_matched and dev_mismatched for MNLI.
  std::vector<std::string> eval_files;
  /// Name of the main metric ("matthews_correlation", "accuracy", "f1", "pearson"...).
  std::string main_metric;
  /// Test files (unlabelled; a header row, an index column first) and, per file, the name of its predictions
  /// file in a GLUE benchmark submission ("SST-2.tsv"; MNLI: "MNLI-m.tsv", "MNLI-mm.tsv").
  std::vector<std::string> test_files;
  std::vector<std::string> submission_files;
  int test_text_a = 0;   ///< column of the first sentence in the test files
  int test_text_b = -1;  ///< column of the second sentence in the test files (-1: single-sentence task)

  bool is_regression() const { return labels.empty(); }
  int64_t num_labels() const { return is_regression() ? 1 : static_cast<int64_t>(labels.size()); }
};

/// The spec of a task by name. Accepts the run_glue names ("sst2", "sts-b" and "sst-2" too, any case).
TaskSpec task_spec(const std::string& task_name);
/// The known task names.
std::vector<std::string> task_names();

struct Example {
  std::string text_a;
  std::optional<std::string> text_b;
  int64_t label = 0;     ///< class id (classification)
  double score = 0.0;    ///< target value (regression)
};

/// Reads one GLUE TSV file of `spec`'s task: quoting off, a UTF-8 BOM at the start ignored, rows too short
/// for the task's columns skipped (as run_glue does for QQP), an unknown label an error naming file and line.
std::vector<Example> read_tsv(const std::string& path, const TaskSpec& spec);

/// Reads one GLUE test file of `spec`'s task (no labels: every Example's label is 0). Rows too short for the
/// task's test columns are an error naming file and line: a submission needs a prediction for every row.
std::vector<Example> read_test_tsv(const std::string& path, const TaskSpec& spec);

/// A GLUE submission file: a header "index\tprediction", then per example its row index and its prediction,
/// the label name for classification (as the task's labels spell it) and the score with 3 decimals for STS-B.
std::string submission_tsv(const TaskSpec& spec, const std::vector<int64_t>& class_ids,
                           const std::vector<double>& scores);

/// Metric name → value. Classification predictions are class ids; regression predictions are scores.
using Metrics = std::map<std::string, double>;

double accuracy(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels);
/// F1 of the positive class (label 1), as sklearn's f1_score with the default binary average.
double f1_binary(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels);
/// Matthews correlation coefficient (0 when a marginal is constant, as sklearn returns).
double matthews_corrcoef(const std::vector<int64_t>& predictions, const std::vector<int64_t>& labels);
double pearson(const std::vector<double>& x, const std::vector<double>& y);
/// Spearman's rank correlation with average ranks for ties, as scipy.stats.spearmanr.
double spearman(const std::vector<double>& x, const std::vector<double>& y);

/// The official metrics of `task` (as Hugging Face's glue metric): accuracy; F1 and their mean for MRPC and
/// QQP; Matthews correlation for CoLA; Pearson, Spearman and their mean for STS-B.
Metrics classification_metrics(const std::string& task, const std::vector<int64_t>& predictions,
                               const std::vector<int64_t>& labels);
Metrics regression_metrics(const std::string& task, const std::vector<double>& predictions,
                           const std::vector<double>& labels);

}  // namespace increlora::glue
