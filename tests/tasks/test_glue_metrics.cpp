// GLUE readers and metrics: the shared TSV files read with the right columns and counts, and the official
// metrics equal to sklearn's and scipy's on fixed predictions.
#include "support.hpp"

#include <increlora/tasks/glue.hpp>

#include <cmath>
#include <fstream>

namespace glue = increlora::glue;

namespace {
std::string glue_dir(const std::string& task) { return increlora::test::shared_dir() + "/data/glue/" + task; }

std::vector<int64_t> label_counts(const std::vector<glue::Example>& examples, int64_t classes) {
  std::vector<int64_t> counts(static_cast<size_t>(classes), 0);
  for (const auto& e : examples) ++counts[static_cast<size_t>(e.label)];
  return counts;
}
}  // namespace

// Expected values computed with sklearn 1.x (accuracy_score, f1_score, matthews_corrcoef) and scipy
// (pearsonr, spearmanr) on the same vectors.
TEST_CASE("GLUE metrics equal sklearn's and scipy's on fixed predictions", "[bert][glue][metrics]") {
  const std::vector<int64_t> p{1, 0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 1, 1, 0, 1, 1, 0};
  const std::vector<int64_t> y{1, 0, 0, 1, 0, 1, 1, 0, 1, 0, 1, 0, 1, 1, 1, 1, 0, 0, 1, 1};
  CHECK(glue::accuracy(p, y) == Approx(0.7).epsilon(1e-12));
  CHECK(glue::f1_binary(p, y) == Approx(0.75).epsilon(1e-12));
  CHECK(glue::matthews_corrcoef(p, y) == Approx(0.375).epsilon(1e-12));

  const std::vector<int64_t> p3{0, 1, 2, 2, 1, 0, 0, 2, 1, 1, 2, 0}, y3{0, 1, 2, 1, 1, 0, 2, 2, 1, 0, 2, 0};
  CHECK(glue::accuracy(p3, y3) == Approx(0.75).epsilon(1e-12));
  CHECK(glue::matthews_corrcoef(p3, y3) == Approx(0.625).epsilon(1e-12));

  const std::vector<double> x{0.5, 2.25, 3.0, 3.0, 4.75, 1.0, 0.0, 5.0, 2.25, 3.5, 4.0, 1.5};
  const std::vector<double> t{0.0, 2.0, 3.2, 2.8, 5.0, 1.6, 0.4, 4.6, 2.0, 4.0, 3.8, 1.0};
  CHECK(glue::pearson(x, t) == Approx(0.9703133135080843).epsilon(1e-12));
  CHECK(glue::spearman(x, t) == Approx(0.9701245210591611).epsilon(1e-12));  // ties get average ranks

  // Degenerate cases return what sklearn returns.
  CHECK(glue::matthews_corrcoef({1, 1, 1, 1}, {1, 0, 1, 0}) == 0.0);
  CHECK(glue::f1_binary({0, 0, 0}, {0, 0, 1}) == 0.0);
  CHECK(std::isnan(glue::pearson({1, 1, 1}, {1, 2, 3})));
  CHECK_THROWS_WITH(glue::accuracy({1, 0}, {1}), HasSubstring("differ in length"));
}

TEST_CASE("Each task reports the official GLUE metrics", "[bert][glue][metrics]") {
  const std::vector<int64_t> p{1, 0, 1, 1}, y{1, 0, 0, 1};
  CHECK(glue::classification_metrics("cola", p, y).count("matthews_correlation") == 1);
  CHECK(glue::classification_metrics("sst2", p, y).at("accuracy") == 0.75);
  const auto mrpc = glue::classification_metrics("mrpc", p, y);
  CHECK(mrpc.at("f1") == Approx(0.8));
  CHECK(mrpc.at("combined_score") == Approx((0.75 + 0.8) / 2));
  CHECK(glue::classification_metrics("qqp", p, y).count("f1") == 1);
  const auto sts = glue::regression_metrics("stsb", {1.0, 2.0, 3.5}, {1.1, 1.9, 3.9});
  CHECK(sts.count("pearson") == 1);
  CHECK(sts.count("spearmanr") == 1);
  CHECK(sts.at("spearmanr") == Approx(1.0));
  CHECK_THROWS_WITH(glue::regression_metrics("sst2", {1.0}, {1.0}), HasSubstring("classification task"));
}

TEST_CASE("Task specs cover the nine GLUE tasks and reject unknown names", "[bert][glue]") {
  for (const auto& name : glue::task_names()) CHECK(glue::task_spec(name).name == name);
  CHECK(glue::task_spec("SST-2").name == "sst2");
  CHECK(glue::task_spec("STS-B").is_regression());
  CHECK(glue::task_spec("mnli").num_labels() == 3);
  CHECK(glue::task_spec("mnli").eval_files == std::vector<std::string>{"dev_matched.tsv", "dev_mismatched.tsv"});
  CHECK_THROWS_WITH(glue::task_spec("squad"), HasSubstring("unknown GLUE task 'squad'; use one of: cola, sst2"));
}

TEST_CASE("The shared GLUE files read with the official row and label counts", "[bert][glue][data]") {
  struct Case {
    std::string task, folder, file;
    size_t rows;
    std::vector<int64_t> counts;
  };
  // Counts from ../shared/data/README.md.
  const std::vector<Case> cases{
      {"sst2", "SST-2", "train.tsv", 67349, {29780, 37569}}, {"sst2", "SST-2", "dev.tsv", 872, {428, 444}},
      {"cola", "CoLA", "train.tsv", 8551, {2528, 6023}},     {"cola", "CoLA", "dev.tsv", 1043, {322, 721}},
      {"mrpc", "MRPC", "train.tsv", 3668, {1194, 2474}},     {"mrpc", "MRPC", "dev.tsv", 408, {129, 279}},
      {"qnli", "QNLI", "dev.tsv", 5463, {2702, 2761}}};
  for (const auto& c : cases) {
    INFO(c.folder << "/" << c.file);
    const auto spec = glue::task_spec(c.task);
    const auto examples = glue::read_tsv(glue_dir(c.folder) + "/" + c.file, spec);
    CHECK(examples.size() == c.rows);
    CHECK(label_counts(examples, spec.num_labels()) == c.counts);
    CHECK(examples.front().text_b.has_value() == (spec.text_b >= 0));
  }
  // Quoting is off: QNLI sentences that begin with a literal quote keep it.
  const auto qnli = glue::read_tsv(glue_dir("QNLI") + "/dev.tsv", glue::task_spec("qnli"));
  size_t quoted = 0;
  for (const auto& e : qnli) quoted += !e.text_b->empty() && e.text_b->front() == '"';
  CHECK(quoted > 0);
  // CoLA has no header: its first row is an example; MRPC's BOM-prefixed header is skipped.
  const auto cola = glue::read_tsv(glue_dir("CoLA") + "/dev.tsv", glue::task_spec("cola"));
  CHECK(cola.front().text_a == "The sailors rode the breeze clear of the rocks.");
  const auto mrpc = glue::read_tsv(glue_dir("MRPC") + "/dev.tsv", glue::task_spec("mrpc"));
  CHECK(mrpc.front().text_a.rfind("He said the foodservice pie business", 0) == 0);
}

TEST_CASE("Reading a GLUE file names the file and the fix when it does not fit the task", "[bert][glue][errors]") {
  CHECK_THROWS_WITH(glue::read_tsv("/nonexistent/train.tsv", glue::task_spec("sst2")),
                    HasSubstring("cannot open the GLUE file '/nonexistent/train.tsv'"));
  // MRPC's file read as RTE: RTE's label column (the last) holds MRPC's second sentence.
  CHECK_THROWS_WITH(glue::read_tsv(glue_dir("MRPC") + "/dev.tsv", glue::task_spec("rte")),
                    HasSubstring("unknown label"));
}
