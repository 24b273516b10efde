#include <increlora/apps/output.hpp>
#include <increlora/apps/progress.hpp>

#include <fmt/format.h>

#include <algorithm>
#include <cstdio>

namespace increlora::apps {

Progress::Progress(std::string label, int64_t total, std::string unit, bool enabled)
    : label_(std::move(label)), unit_(std::move(unit)), total_(total), enabled_(enabled),
      start_(std::chrono::steady_clock::now()) {}

Progress::Progress(std::string label, int64_t total, std::string unit)
    : Progress(std::move(label), total, std::move(unit), stderr_is_terminal()) {}

Progress::~Progress() { finish(); }

void Progress::update(int64_t done, const std::string& detail) {
  if (!enabled_) return;
  const auto now = std::chrono::steady_clock::now();
  if (first_ < 0) first_ = done, start_ = now;
  // At most ~10 redraws a second, and always the last one.
  if (drawn_ && done < total_ && now - last_draw_ < std::chrono::milliseconds(100)) return;
  last_draw_ = now;
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(done - first_) / elapsed : 0.0;
  std::string eta = "--";
  if (rate > 0 && total_ > done) {
    const auto s = static_cast<int64_t>(static_cast<double>(total_ - done) / rate);
    eta = s >= 3600 ? fmt::format("{}h{:02d}m", s / 3600, s / 60 % 60) : fmt::format("{}m{:02d}s", s / 60, s % 60);
  }
  const int width = 24;
  const int filled = total_ > 0 ? static_cast<int>(width * std::min<int64_t>(done, total_) / total_) : 0;
  fmt::print(stderr, "\r\033[K{} [{}{}] {}/{} {:.1f} {}/s eta {}{}{}", label_, std::string(filled, '#'),
             std::string(width - filled, '.'), done, total_, rate, unit_, eta, detail.empty() ? "" : " | ", detail);
  std::fflush(stderr);
  drawn_ = true;
}

bool Progress::due() const {
  return enabled_ && (!drawn_ || std::chrono::steady_clock::now() - last_draw_ >= std::chrono::milliseconds(100));
}

void Progress::clear() {
  if (!enabled_ || !drawn_) return;
  std::fputs("\r\033[K", stderr);
  std::fflush(stderr);
  drawn_ = false;
}

void Progress::finish() {
  clear();
  enabled_ = false;
}

}  // namespace increlora::apps
