#include "increlora/report.hpp"

#include "increlora/errors.hpp"
#include "increlora/serialize.hpp"
#include "io.hpp"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <vector>

namespace increlora {
namespace {

bool all_digits(const std::string& s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](unsigned char c) { return std::isdigit(c) != 0; });
}

// Text placed in SVG/XML must not break the markup.
std::string xml_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      default: out += c;
    }
  }
  return out;
}

std::string csv_field(const std::string& s) {
  if (s.find_first_of(",\"\n") == std::string::npos) return s;
  std::string out = "\"";
  for (const char c : s) out += c == '"' ? std::string("\"\"") : std::string(1, c);
  return out + "\"";
}

}  // namespace

ModuleCoordinates module_coordinates(const std::string& name) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    const size_t dot = name.find('.', start);
    parts.push_back(name.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  for (size_t i = parts.size(); i-- > 0;) {
    if (!all_digits(parts[i])) continue;
    std::string type;
    for (size_t k = i + 1; k < parts.size(); ++k) type += (type.empty() ? "" : ".") + parts[k];
    return {parts[i], type.empty() ? name : type};
  }
  return {"", name};
}

std::string rank_pattern_json(const std::map<std::string, int64_t>& pattern) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [name, rank] : pattern) j[name] = rank;
  return j.dump(2) + "\n";
}

std::string rank_pattern_csv(const std::map<std::string, int64_t>& pattern) {
  std::string out = "module,layer,type,rank\n";
  for (const auto& [name, rank] : pattern) {
    const auto c = module_coordinates(name);
    out += fmt::format("{},{},{},{}\n", csv_field(name), csv_field(c.layer), csv_field(c.type), rank);
  }
  return out;
}

std::string rank_heatmap_svg(const std::map<std::string, int64_t>& pattern, const std::string& title) {
  std::vector<std::string> layers, types;
  std::map<std::pair<std::string, std::string>, int64_t> cells;
  int64_t max_rank = 0;
  for (const auto& [name, rank] : pattern) {
    const auto c = module_coordinates(name);
    if (std::find(layers.begin(), layers.end(), c.layer) == layers.end()) layers.push_back(c.layer);
    if (std::find(types.begin(), types.end(), c.type) == types.end()) types.push_back(c.type);
    cells[{c.layer, c.type}] = rank;
    max_rank = std::max(max_rank, rank);
  }
  // Layers in numeric order ("" for names without a layer index first).
  std::sort(layers.begin(), layers.end(), [](const std::string& a, const std::string& b) {
    if (a.size() != b.size()) return a.size() < b.size();
    return a < b;
  });
  constexpr int kCell = 36, kLeft = 70, kRowLabel = 60;
  size_t longest = 0;
  for (const auto& t : types) longest = std::max(longest, t.size());
  const int top = 30 + static_cast<int>(longest) * 6;  // room for the rotated column labels
  // Column labels rise to the right at 60°: leave room for the last one (about 6 px per character).
  const int width = kLeft + kCell * static_cast<int>(types.size()) + 20 + static_cast<int>(longest) * 3;
  const int height = top + kCell * static_cast<int>(layers.size()) + 20;
  std::string svg = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" "
      "font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
      width, height);
  svg += fmt::format("<text x=\"4\" y=\"14\" font-size=\"13\">{}</text>\n",
                     xml_escape(title.empty() ? fmt::format("rank per module (max {})", max_rank) : title));
  for (size_t t = 0; t < types.size(); ++t) {
    const int x = kLeft + kCell * static_cast<int>(t) + kCell / 2;
    svg += fmt::format("<text transform=\"translate({},{}) rotate(-60)\">{}</text>\n", x, top - 4,
                       xml_escape(types[t]));
  }
  for (size_t l = 0; l < layers.size(); ++l) {
    const int y = top + kCell * static_cast<int>(l);
    svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>\n", kRowLabel, y + kCell / 2 + 4,
                       xml_escape(layers[l].empty() ? std::string("-") : "layer " + layers[l]));
    for (size_t t = 0; t < types.size(); ++t) {
      const int x = kLeft + kCell * static_cast<int>(t);
      const auto it = cells.find({layers[l], types[t]});
      if (it == cells.end()) {
        svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#e0e0e0\" stroke=\"white\"/>\n",
                           x, y, kCell, kCell);
        continue;
      }
      // White (rank 0) to dark blue (the largest rank).
      const double f = max_rank > 0 ? static_cast<double>(it->second) / static_cast<double>(max_rank) : 0.0;
      const auto channel = [f](int from, int to) { return static_cast<int>(from + (to - from) * f + 0.5); };
      svg += fmt::format("<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"#{:02x}{:02x}{:02x}\" "
                         "stroke=\"white\"><title>{}: {}</title></rect>\n",
                         x, y, kCell, kCell, channel(247, 8), channel(251, 48), channel(255, 107),
                         xml_escape(layers[l].empty() ? types[t] : types[t] + " @ layer " + layers[l]), it->second);
      svg += fmt::format("<text x=\"{}\" y=\"{}\" text-anchor=\"middle\" fill=\"{}\">{}</text>\n", x + kCell / 2,
                         y + kCell / 2 + 4, f > 0.5 ? "white" : "black", it->second);
    }
  }
  return svg + "</svg>\n";
}

void write_rank_report(const std::map<std::string, int64_t>& pattern, const std::string& dir,
                       const std::string& title) {
  detail::make_directories(dir, "write_rank_report");
  detail::write_file_atomically(detail::join_path(dir, "rank_pattern.json"), rank_pattern_json(pattern));
  detail::write_file_atomically(detail::join_path(dir, "rank_pattern.csv"), rank_pattern_csv(pattern));
  detail::write_file_atomically(detail::join_path(dir, "rank_heatmap.svg"), rank_heatmap_svg(pattern, title));
}

std::map<std::string, int64_t> read_rank_pattern(const std::string& adapter_dir) {
  const auto path = detail::join_path(adapter_dir, kAdapterConfigFile);
  INCRELORA_CHECK(detail::path_exists(path), "read_rank_pattern: '", adapter_dir,
                  "' has no adapter_config.json; pass a folder written by save_adapter.");
  std::map<std::string, int64_t> pattern;
  try {
    const auto j = nlohmann::json::parse(detail::read_text_file(path, "read_rank_pattern: the adapter config"));
    for (const auto& [name, rank] : j.at("rank_pattern").items()) pattern[name] = rank.get<int64_t>();
  } catch (const nlohmann::json::exception& e) {
    INCRELORA_CHECK(false, "read_rank_pattern: '", path, "' has no valid \"rank_pattern\" (", e.what(),
                    "); pass a folder written by save_adapter.");
  }
  return pattern;
}

}  // namespace increlora
