// rank_report: where the rank budget of a saved adapter went.
//
//   rank_report ADAPTER_DIR [OUTPUT_DIR] [--title TEXT]
//
// Reads ADAPTER_DIR/adapter_config.json (written by increlora::save_adapter), prints the rank per module and
// writes rank_pattern.json, rank_pattern.csv and rank_heatmap.svg (layers × module types) into OUTPUT_DIR
// (default: ADAPTER_DIR).
#include <increlora/report.hpp>

#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  std::vector<std::string> positional;
  std::string title;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--title" && i + 1 < argc) {
      title = argv[++i];
    } else if (arg == "-h" || arg == "--help") {
      fmt::print("usage: {} ADAPTER_DIR [OUTPUT_DIR] [--title TEXT]\n", argv[0]);
      return 0;
    } else {
      positional.push_back(arg);
    }
  }
  if (positional.empty() || positional.size() > 2) {
    fmt::print(stderr, "usage: {} ADAPTER_DIR [OUTPUT_DIR] [--title TEXT]\n", argv[0]);
    return 2;
  }
  const std::string adapter = positional[0];
  const std::string output = positional.size() == 2 ? positional[1] : adapter;
  try {
    const auto pattern = increlora::read_rank_pattern(adapter);
    int64_t total = 0;
    size_t width = 6;
    for (const auto& [name, rank] : pattern) width = std::max(width, name.size());
    fmt::print("{:<{}}  rank\n", "module", width);
    for (const auto& [name, rank] : pattern) {
      fmt::print("{:<{}}  {}\n", name, width, rank);
      total += rank;
    }
    fmt::print("{} modules, total rank {}\n", pattern.size(), total);
    increlora::write_rank_report(pattern, output, title);
    fmt::print("wrote {0}/rank_pattern.json, {0}/rank_pattern.csv, {0}/rank_heatmap.svg\n", output);
  } catch (const std::exception& e) {
    fmt::print(stderr, "rank_report: {}\n", e.what());
    return 1;
  }
  return 0;
}
