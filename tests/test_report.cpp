// Rank reports: rank_pattern.json, CSV and the SVG heatmap.
#include "support.hpp"

#include <increlora/report.hpp>
#include <increlora/serialize.hpp>

#include "temp_dir.hpp"

using increlora::test::read_bytes;
using increlora::test::TempDir;

TEST_CASE("Module names split into a layer index and a module type", "[report]") {
  const auto c = increlora::module_coordinates("encoder.layer.11.attention.self.query");
  CHECK(c.layer == "11");
  CHECK(c.type == "attention.self.query");
  CHECK(increlora::module_coordinates("fc1").layer.empty());
  CHECK(increlora::module_coordinates("fc1").type == "fc1");
  CHECK(increlora::module_coordinates("blocks.3").type == "blocks.3");
  CHECK(increlora::module_coordinates("blocks.3").layer == "3");
}

TEST_CASE("A rank report holds the pattern as JSON, CSV and a layers-by-types heatmap", "[report]") {
  const std::map<std::string, int64_t> pattern{{"encoder.layer.0.attention.self.query", 2},
                                               {"encoder.layer.0.output.dense", 1},
                                               {"encoder.layer.10.attention.self.query", 4},
                                               {"encoder.layer.2.attention.self.query", 3}};
  CHECK(increlora::rank_pattern_json(pattern) ==
        "{\n  \"encoder.layer.0.attention.self.query\": 2,\n  \"encoder.layer.0.output.dense\": 1,\n"
        "  \"encoder.layer.10.attention.self.query\": 4,\n  \"encoder.layer.2.attention.self.query\": 3\n}\n");
  const auto csv = increlora::rank_pattern_csv(pattern);
  CHECK_THAT(csv, HasSubstring("module,layer,type,rank\nencoder.layer.0.attention.self.query,0,attention.self.query,2\n"));
  const auto svg = increlora::rank_heatmap_svg(pattern, "a <title>");
  CHECK_THAT(svg, HasSubstring("<svg xmlns=\"http://www.w3.org/2000/svg\""));
  CHECK_THAT(svg, HasSubstring("a &lt;title&gt;"));
  // Rows in numeric layer order: 0, 2, 10; the absent (layer 2, output.dense) cell is grey.
  const auto row0 = svg.find(">layer 0<"), row2 = svg.find(">layer 2<"), row10 = svg.find(">layer 10<");
  CHECK(row0 < row2);
  CHECK(row2 < row10);
  CHECK_THAT(svg, HasSubstring("fill=\"#e0e0e0\""));
  CHECK_THAT(svg, HasSubstring("<title>attention.self.query @ layer 10: 4</title>"));
  CHECK_THAT(svg, HasSubstring("fill=\"#08306b\""));  // the largest rank is the darkest

  TempDir dir;
  increlora::write_rank_report(pattern, dir.file("report"));
  CHECK(dir.entries("report") == std::vector<std::string>{"rank_heatmap.svg", "rank_pattern.csv", "rank_pattern.json"});
  CHECK(read_bytes(dir.file("report/rank_pattern.csv")) == csv);
}

TEST_CASE("The rank pattern of a saved adapter reads back for a report", "[report]") {
  TempDir dir;
  increlora::test::TinyNet net(4, 2, increlora::SVDLinearOptions(4, 4).r(1).capacity(4));
  net->fc[1]->grow(2, 1, 0);
  increlora::save_adapter(*net, dir.path());
  CHECK(increlora::read_rank_pattern(dir.path()) == std::map<std::string, int64_t>{{"fc0", 1}, {"fc1", 3}});
  CHECK_THROWS_WITH(increlora::read_rank_pattern(dir.file("none")), HasSubstring("has no adapter_config.json"));
}
