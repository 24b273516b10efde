#pragma once
/// \file
/// `Progress`: a one-line progress display with rate and ETA on a terminal (stderr), redrawn at most a few
/// times a second; on a file or pipe it stays silent, and the programs write plain log lines instead.

#include <chrono>
#include <cstdint>
#include <string>

namespace increlora::apps {

class Progress {
 public:
  /// `label` ("tokenize train", "train", "eval"), `total` units (examples, steps, batches), `unit` for the rate.
  /// `enabled` false makes every call a no-op (default: whether stderr is a terminal).
  Progress(std::string label, int64_t total, std::string unit, bool enabled);
  Progress(std::string label, int64_t total, std::string unit);
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  /// `done` units so far (absolute), with optional text after the counters ("loss 0.41 rank 40/72").
  void update(int64_t done, const std::string& detail = "");
  /// Whether an update now would redraw the line: build an expensive `detail` (one that reads the GPU) only then.
  bool due() const;
  /// Clears the line, so that a log line can be printed; the next update redraws it.
  void clear();
  /// Clears the line for good.
  void finish();
  bool enabled() const { return enabled_; }

 private:
  std::string label_, unit_;
  int64_t total_ = 0, first_ = -1;
  bool enabled_ = false, drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace increlora::apps
