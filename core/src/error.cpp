#include "moeq/core/error.h"

#include <filesystem>

namespace moeq {

namespace {
std::string locate(const std::string& message, const char* file, int line) {
  return fmt::format("{} (at {}:{})", message, std::filesystem::path(file).filename().string(),
                     line);
}
}  // namespace

Error::Error(std::string message, const char* file, int line)
    : std::runtime_error(locate(message, file, line)),
      message_(std::move(message)),
      file_(file),
      line_(line) {}

Error Error::with_context(const std::string& context) const {
  return Error(fmt::format("while {}: {}", context, message_), file_, line_);
}

namespace detail {

void throw_error(const char* file, int line, std::string message) {
  throw Error(std::move(message), file, line);
}

void throw_internal_error(const char* file, int line, const char* condition, std::string message) {
  std::string text = fmt::format("internal error: '{}' failed", condition);
  if (!message.empty()) {
    text += ": " + message;
  }
  text += "; this is a bug in moeq, please report it";
  throw InternalError(std::move(text), file, line);
}

}  // namespace detail
}  // namespace moeq
