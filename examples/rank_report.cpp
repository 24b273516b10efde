// rank_report: where the rank budget of a saved adapter went.
//
//   rank_report ADAPTER_DIR [OUTPUT_DIR] [--title TEXT]
//
// Reads ADAPTER_DIR/adapter_config.json (written by increlora::save_adapter), prints the rank per module and
// writes rank_pattern.json, rank_pattern.csv and rank_heatmap.svg (layers × module types) into OUTPUT_DIR
// (default: ADAPTER_DIR).
#include <increlora/apps/flags.hpp>
#include <increlora/report.hpp>

#include <fmt/format.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  std::string adapter, output, title;
  increlora::apps::Flags flags("rank_report");
  flags.positional("ADAPTER_DIR", &adapter, "a folder written by increlora::save_adapter", /*required=*/true);
  flags.positional("OUTPUT_DIR", &output, "where the report goes (default: ADAPTER_DIR)", /*required=*/false);
  flags.add("title", &title, "the heatmap's title");
  try {
    flags.parse(argc, argv);
  } catch (const std::invalid_argument& e) {
    fmt::print(stderr, "rank_report: {}\n{}", e.what(), flags.usage());
    return 2;
  }
  if (flags.help()) {
    fmt::print("{}", flags.usage());
    return 0;
  }
  if (output.empty()) output = adapter;
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
