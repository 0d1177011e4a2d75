// Errors: MOEQ_CHECK for bad input or configuration, MOEQ_INTERNAL_ASSERT for moeq's own bugs.
// The split follows c10's TORCH_CHECK / TORCH_INTERNAL_ASSERT: the first names what the user got
// wrong (file, tensor, key, values), the second asks for a bug report. Both throw; library code
// never exits the process.
#pragma once

#include <fmt/format.h>

#include <stdexcept>
#include <string>
#include <type_traits>

namespace moeq {

// Bad input or configuration. what() is "message (at file:line)"; message() is the bare text.
class Error : public std::runtime_error {
 public:
  Error(std::string message, const char* file, int line);

  const std::string& message() const noexcept { return message_; }
  const char* file() const noexcept { return file_; }
  int line() const noexcept { return line_; }

  // Prepends "while <context>: " to the message, as TORCH_RETHROW's add_context does, so an
  // error raised deep inside (a tensor's scale) reaches the user with where it happened.
  Error with_context(const std::string& context) const;

 private:
  std::string message_;
  const char* file_;
  int line_;
};

// A broken invariant inside moeq: never the user's fault.
class InternalError : public Error {
 public:
  using Error::Error;
};

namespace detail {
[[noreturn]] void throw_error(const char* file, int line, std::string message);
[[noreturn]] void throw_internal_error(const char* file,
                                       int line,
                                       const char* condition,
                                       std::string message);

inline std::string format_or_empty() {
  return {};
}
template <typename... Args>
std::string format_or_empty(fmt::format_string<Args...> format, Args&&... args) {
  return fmt::format(format, std::forward<Args>(args)...);
}

// A string literal as the condition is always true: reject it at compile time (TensorRT's
// PLUGIN_DETAIL_REJECT_STRING_CONDITION).
template <typename T>
constexpr bool kIsStringCondition =
    std::is_convertible_v<T, const char*> && !std::is_same_v<std::decay_t<T>, std::nullptr_t>;
}  // namespace detail

}  // namespace moeq

// Formats only on failure. Messages are LLVM-style: lowercase, no trailing period, with values.
#define MOEQ_CHECK(cond, ...)                                                                    \
  do {                                                                                           \
    static_assert(!::moeq::detail::kIsStringCondition<decltype(cond)>,                           \
                  "MOEQ_CHECK: the condition is a string literal; did you swap the arguments?"); \
    if (!(cond)) [[unlikely]] {                                                                  \
      ::moeq::detail::throw_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__));               \
    }                                                                                            \
  } while (false)

#define MOEQ_INTERNAL_ASSERT(cond, ...)                                                   \
  do {                                                                                    \
    if (!(cond)) [[unlikely]] {                                                           \
      ::moeq::detail::throw_internal_error(__FILE__, __LINE__, #cond,                     \
                                           ::moeq::detail::format_or_empty(__VA_ARGS__)); \
    }                                                                                     \
  } while (false)

// Unconditional failure with a formatted message.
#define MOEQ_FAIL(...) ::moeq::detail::throw_error(__FILE__, __LINE__, ::fmt::format(__VA_ARGS__))
