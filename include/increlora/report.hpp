#pragma once
/// \file
/// Rank reports: where the rank budget went, as the original's rank_pattern.json ({module: rank}), a CSV and
/// an SVG heatmap of layers × module types. Functions return text or write files; nothing prints.

#include <cstdint>
#include <map>
#include <string>

namespace increlora {

/// A qualified module name split for the heatmap: `layer` is its last all-digit component ("3" in
/// "encoder.layer.3.attention.self.query"; "" when there is none) and `type` what follows it
/// ("attention.self.query"), or the whole name when nothing follows or there is no layer index.
struct ModuleCoordinates {
  std::string layer;
  std::string type;
};
ModuleCoordinates module_coordinates(const std::string& name);

/// {"module": rank, ...} as the original's rank_pattern.json, keys sorted.
std::string rank_pattern_json(const std::map<std::string, int64_t>& pattern);
/// "module,layer,type,rank" then one line per module.
std::string rank_pattern_csv(const std::map<std::string, int64_t>& pattern);
/// A self-contained SVG heatmap: one row per layer (numeric order), one column per module type (order of
/// first appearance in the sorted names), each cell shaded by its rank and labelled with it; cells of
/// modules that are absent stay grey.
std::string rank_heatmap_svg(const std::map<std::string, int64_t>& pattern, const std::string& title = "");
/// Writes rank_pattern.json, rank_pattern.csv and rank_heatmap.svg into `dir` (created if needed), each
/// atomically.
void write_rank_report(const std::map<std::string, int64_t>& pattern, const std::string& dir,
                       const std::string& title = "");
/// The rank pattern stored in an adapter folder written by `save_adapter` (its adapter_config.json).
std::map<std::string, int64_t> read_rank_pattern(const std::string& adapter_dir);

}  // namespace increlora
