#include "moeq/core/log.h"

#include <cstdio>
#include <memory>

namespace moeq {

std::string_view to_string(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "?";
}

namespace {
void stderr_sink(LogLevel level, std::string_view message) {
  std::fprintf(stderr, "moeq %s: %.*s\n", std::string(to_string(level)).c_str(),
               static_cast<int>(message.size()), message.data());
}
}  // namespace

Logger::Logger() : sink_(stderr_sink) {}

Logger::Sink Logger::set_sink(Sink sink) {
  std::lock_guard lock(mutex_);
  Sink previous = std::move(sink_);
  sink_ = sink ? std::move(sink) : Sink(stderr_sink);
  return previous;
}

void Logger::set_level(LogLevel level) {
  std::lock_guard lock(mutex_);
  level_ = level;
}

LogLevel Logger::level() const {
  std::lock_guard lock(mutex_);
  return level_;
}

void Logger::write(LogLevel level, std::string_view message) {
  std::lock_guard lock(mutex_);
  sink_(level, message);
}

Logger& logger() {
  static Logger instance;
  return instance;
}

ScopedLogCapture::ScopedLogCapture()
    : lines_(std::make_shared<std::string>()), mutex_(std::make_shared<std::mutex>()) {
  previous_ =
      logger().set_sink([lines = lines_, mutex = mutex_](LogLevel level, std::string_view message) {
        std::lock_guard lock(*mutex);
        lines->append(to_string(level)).append(": ").append(message).append("\n");
      });
}

ScopedLogCapture::~ScopedLogCapture() {
  logger().set_sink(std::move(previous_));
}

std::string ScopedLogCapture::text() const {
  std::lock_guard lock(*mutex_);
  return *lines_;
}

bool ScopedLogCapture::contains(std::string_view needle) const {
  return text().find(needle) != std::string::npos;
}

}  // namespace moeq
