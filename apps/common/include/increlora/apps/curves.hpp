#pragma once
/// \file
/// The training curves of a run as an SVG (training loss and the main dev metric over optimizer steps, with
/// the allocation steps marked), written beside the rank heatmap.

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace increlora::apps {

struct Curves {
  std::string title;
  std::vector<std::pair<int64_t, double>> loss;    ///< (step, mean training loss of the logging window)
  std::string metric_name;                         ///< "eval_accuracy", ...
  std::vector<std::pair<int64_t, double>> metric;  ///< (step, value) per evaluation
  std::vector<int64_t> allocation_steps;           ///< steps at which layers grew
};

/// A self-contained SVG document (two panels; an empty series draws as "no data").
std::string curves_svg(const Curves& curves);

}  // namespace increlora::apps
