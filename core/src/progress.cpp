#include "moeq/core/progress.h"

#include <fmt/format.h>

#include <unistd.h>
#include <algorithm>
#include <cstdio>

namespace moeq {
namespace {

std::string si(double value) {
  if (value >= 1e9)
    return fmt::format("{:.1f}G", value / 1e9);
  if (value >= 1e6)
    return fmt::format("{:.1f}M", value / 1e6);
  if (value >= 1e3)
    return fmt::format("{:.1f}k", value / 1e3);
  return fmt::format("{:.0f}", value);
}

std::string clock(double seconds) {
  const auto s = static_cast<int64_t>(std::max(0.0, seconds) + 0.5);
  return s >= 3600 ? fmt::format("{}:{:02}:{:02}", s / 3600, (s / 60) % 60, s % 60)
                   : fmt::format("{}:{:02}", s / 60, s % 60);
}

}  // namespace

ProgressBar::ProgressBar(std::string label, int64_t total, std::string counter_unit)
    : label_(std::move(label)),
      total_(std::max<int64_t>(total, 1)),
      unit_(std::move(counter_unit)),
      tty_(isatty(STDERR_FILENO) != 0),
      start_(std::chrono::steady_clock::now()),
      last_draw_(start_) {}

ProgressBar::~ProgressBar() {
  finish();
}

std::string ProgressBar::render(const std::string& label,
                                int64_t done,
                                int64_t total,
                                double counter_per_second,
                                const std::string& counter_unit,
                                double elapsed_seconds,
                                int width) {
  const double fraction =
      std::clamp(static_cast<double>(done) / static_cast<double>(total), 0.0, 1.0);
  const int filled = static_cast<int>(fraction * width + 0.5);
  const double eta = fraction > 0.0 ? elapsed_seconds * (1.0 - fraction) / fraction : 0.0;
  return fmt::format("{} [{}{}] {:3.0f}% {} {}/s {} eta {}", label, std::string(filled, '#'),
                     std::string(width - filled, ' '), fraction * 100.0, si(counter_per_second),
                     counter_unit, clock(elapsed_seconds), clock(eta));
}

void ProgressBar::update(int64_t done, int64_t counter) {
  done_ = done;
  counter_ = counter;
  const auto now = std::chrono::steady_clock::now();
  // A terminal redraws at most 10 times a second; a log gets no intermediate lines.
  if (tty_ && now - last_draw_ > std::chrono::milliseconds(100)) {
    last_draw_ = now;
    draw(false);
  }
}

void ProgressBar::finish() {
  if (finished_) {
    return;
  }
  finished_ = true;
  draw(true);
}

void ProgressBar::draw(bool final) {
  const double elapsed =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const double rate = elapsed > 0.0 ? static_cast<double>(counter_) / elapsed : 0.0;
  const auto text =
      render(label_, final ? std::max(done_, int64_t{0}) : done_, total_, rate, unit_, elapsed, 30);
  if (tty_) {
    std::fprintf(stderr, "\r%s\x1b[K%s", text.c_str(), final ? "\n" : "");
  } else if (final) {
    std::fprintf(stderr, "%s\n", text.c_str());
  }
  std::fflush(stderr);
}

}  // namespace moeq
