// A progress bar for long steps (one per decoder layer): label, bar, percent, elapsed time, rate
// of a counter (tokens/s) and ETA, redrawn in place on a terminal (stderr), and as a few plain
// lines when stderr is not a terminal (CI logs), so logs stay short.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace moeq {

class ProgressBar {
 public:
  // `total` units of work; `counter_unit` names what update()'s counter counts ("tok").
  ProgressBar(std::string label, int64_t total, std::string counter_unit);
  ~ProgressBar();
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // `done` of `total` units finished; `counter` the running count of counter units.
  void update(int64_t done, int64_t counter);
  // Draws the final state once (also done by the destructor).
  void finish();

  // One rendering of the bar, for tests: "layer 3/32 [#####     ] 50% 1.2k tok/s 0:03 eta 0:03".
  static std::string render(const std::string& label,
                            int64_t done,
                            int64_t total,
                            double counter_per_second,
                            const std::string& counter_unit,
                            double elapsed_seconds,
                            int width);

 private:
  void draw(bool final);

  std::string label_;
  int64_t total_;
  std::string unit_;
  int64_t done_ = 0;
  int64_t counter_ = 0;
  bool tty_;
  bool finished_ = false;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_;
};

}  // namespace moeq
