#include <increlora/apps/curves.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

namespace increlora::apps {
namespace {

constexpr double kWidth = 720, kPanel = 220, kLeft = 70, kRight = 20, kTop = 40, kGap = 50;

std::string escape(const std::string& s) {
  std::string out;
  for (char c : s) {
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

std::string panel(const std::vector<std::pair<int64_t, double>>& points, const std::string& label, double y0,
                  int64_t max_step, const std::vector<int64_t>& marks, const char* color) {
  std::string s = fmt::format(R"(<rect x="{}" y="{}" width="{}" height="{}" fill="none" stroke="#999"/>)", kLeft, y0,
                              kWidth - kLeft - kRight, kPanel);
  s += fmt::format(R"(<text x="{}" y="{}" font-size="13">{}</text>)", kLeft, y0 - 8, escape(label));
  std::vector<std::pair<int64_t, double>> finite;
  for (const auto& p : points) {
    if (std::isfinite(p.second)) finite.push_back(p);
  }
  const double plot_w = kWidth - kLeft - kRight;
  const auto x_of = [&](int64_t step) { return kLeft + plot_w * static_cast<double>(step) / std::max<int64_t>(1, max_step); };
  for (const auto step : marks) {
    s += fmt::format(R"(<line x1="{0:.1f}" y1="{1}" x2="{0:.1f}" y2="{2}" stroke="#ddd"/>)", x_of(step), y0, y0 + kPanel);
  }
  if (finite.empty()) {
    return s + fmt::format(R"(<text x="{}" y="{}" font-size="12" fill="#777">no data</text>)", kLeft + 10,
                           y0 + kPanel / 2);
  }
  double lo = std::numeric_limits<double>::infinity(), hi = -lo;
  for (const auto& p : finite) lo = std::min(lo, p.second), hi = std::max(hi, p.second);
  if (hi - lo < 1e-12) lo -= 0.5, hi += 0.5;
  const auto y_of = [&](double v) { return y0 + kPanel * (1.0 - (v - lo) / (hi - lo)); };
  std::string path;
  for (const auto& [step, v] : finite) path += fmt::format("{:.1f},{:.1f} ", x_of(step), y_of(v));
  s += fmt::format(R"(<polyline fill="none" stroke="{}" stroke-width="1.5" points="{}"/>)", color, path);
  if (finite.size() <= 60) {
    for (const auto& [step, v] : finite) {
      s += fmt::format(R"(<circle cx="{:.1f}" cy="{:.1f}" r="2.5" fill="{}"/>)", x_of(step), y_of(v), color);
    }
  }
  s += fmt::format(R"(<text x="{}" y="{}" font-size="11" text-anchor="end">{:.4g}</text>)", kLeft - 6, y0 + 10, hi);
  s += fmt::format(R"(<text x="{}" y="{}" font-size="11" text-anchor="end">{:.4g}</text>)", kLeft - 6, y0 + kPanel, lo);
  return s;
}

}  // namespace

std::string curves_svg(const Curves& c) {
  int64_t max_step = 1;
  for (const auto& p : c.loss) max_step = std::max(max_step, p.first);
  for (const auto& p : c.metric) max_step = std::max(max_step, p.first);
  const double height = kTop + 2 * kPanel + kGap + 40;
  std::string s = fmt::format(
      R"(<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" font-family="sans-serif">)", kWidth, height);
  s += fmt::format(R"(<rect width="100%" height="100%" fill="white"/>)");
  s += fmt::format(R"(<text x="{}" y="20" font-size="15" font-weight="bold">{}</text>)", kLeft, escape(c.title));
  s += panel(c.loss, "training loss", kTop, max_step, c.allocation_steps, "#1f77b4");
  s += panel(c.metric, c.metric_name.empty() ? "dev metric" : c.metric_name, kTop + kPanel + kGap, max_step,
             c.allocation_steps, "#d62728");
  const double axis_y = kTop + 2 * kPanel + kGap + 18;
  s += fmt::format(R"(<text x="{}" y="{}" font-size="11">0</text>)", kLeft, axis_y);
  s += fmt::format(R"(<text x="{}" y="{}" font-size="11" text-anchor="end">step {}</text>)", kWidth - kRight, axis_y,
                   max_step);
  s += fmt::format(R"(<text x="{}" y="{}" font-size="11" text-anchor="middle" fill="#777">grey lines: allocation steps</text>)",
                   kWidth / 2, axis_y);
  s += "</svg>\n";
  return s;
}

}  // namespace increlora::apps
