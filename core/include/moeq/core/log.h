// The one logger. The host owns it and hands it to plugins at registration; plugins never create
// sinks of their own. Lines carry a level and are written through a replaceable sink, so tests can
// capture them and the CLI can route them around its progress bars.
#pragma once

#include <fmt/format.h>

#include <functional>
#include <mutex>
#include <string>
#include <string_view>

namespace moeq {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

std::string_view to_string(LogLevel level);

class Logger {
 public:
  using Sink = std::function<void(LogLevel, std::string_view)>;

  Logger();

  // Replaces the sink and returns the previous one (tests restore it).
  Sink set_sink(Sink sink);
  void set_level(LogLevel level);
  LogLevel level() const;
  bool enabled(LogLevel level) const { return level >= level_; }

  void write(LogLevel level, std::string_view message);

  template <typename... Args>
  void debug(fmt::format_string<Args...> format, Args&&... args) {
    log(LogLevel::kDebug, format, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void info(fmt::format_string<Args...> format, Args&&... args) {
    log(LogLevel::kInfo, format, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void warn(fmt::format_string<Args...> format, Args&&... args) {
    log(LogLevel::kWarning, format, std::forward<Args>(args)...);
  }
  template <typename... Args>
  void error(fmt::format_string<Args...> format, Args&&... args) {
    log(LogLevel::kError, format, std::forward<Args>(args)...);
  }

 private:
  template <typename... Args>
  void log(LogLevel level, fmt::format_string<Args...> format, Args&&... args) {
    if (enabled(level)) {
      write(level, fmt::format(format, std::forward<Args>(args)...));
    }
  }

  mutable std::mutex mutex_;
  Sink sink_;
  LogLevel level_ = LogLevel::kInfo;
};

// The process-wide logger.
Logger& logger();

// Captures log lines for the lifetime of the object (tests).
class ScopedLogCapture {
 public:
  ScopedLogCapture();
  ~ScopedLogCapture();
  ScopedLogCapture(const ScopedLogCapture&) = delete;
  ScopedLogCapture& operator=(const ScopedLogCapture&) = delete;

  std::string text() const;
  bool contains(std::string_view needle) const;

 private:
  Logger::Sink previous_;
  std::shared_ptr<std::string> lines_;
  std::shared_ptr<std::mutex> mutex_;
};

}  // namespace moeq
