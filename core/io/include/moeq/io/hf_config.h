// Typed access to a Hugging Face config.json.
//
//   HfConfig config = HfConfig::load(model_dir);              // or the file itself
//   int64_t experts = config.get<int64_t>("num_local_experts");
//   double theta = config.get_or("rope_theta", 10000.0);
//   double factor = config.get<double>("rope_scaling.factor");  // dotted path; "a.0" indexes
//   int64_t n = config.get_first<int64_t>({"num_local_experts", "num_experts",
//   "n_routed_experts"}); std::string arch = config.architecture();                 //
//   architectures[0]
//
// A key whose value is null counts as absent (config.json writes unset options as null), so
// get_or returns the fallback for it. Every error names the file, the key and what was found.
// Types: bool; integers (a JSON integer, or a float with an integral value as Python writers
// sometimes produce, checked against the type's range); floating point (any number);
// std::string; std::vector of these; nlohmann::json (anything).
#pragma once

#include <fmt/format.h>

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

namespace moeq::io {

namespace detail {
template <typename T>
inline constexpr bool kIsVector = false;
template <typename T>
inline constexpr bool kIsVector<std::vector<T>> = true;
}  // namespace detail

class HfConfig {
 public:
  // path: config.json or the directory holding it.
  static HfConfig load(const std::filesystem::path& path);
  // source names the text in messages.
  static HfConfig parse(std::string_view text, std::string source);

  // The value at key; an error when it is absent, null or of another type.
  template <typename T>
  T get(std::string_view key) const {
    return convert<T>(require(key), key);
  }
  // The value at key, or fallback when it is absent or null; an error when of another type.
  template <typename T>
  T get_or(std::string_view key, T fallback) const {
    const nlohmann::json* value = lookup(key);
    return value == nullptr ? fallback : convert<T>(*value, key);
  }
  std::string get_or(std::string_view key, const char* fallback) const {
    return get_or<std::string>(key, fallback);
  }
  // The value at key, nullopt when it is absent or null.
  template <typename T>
  std::optional<T> find(std::string_view key) const {
    const nlohmann::json* value = lookup(key);
    return value == nullptr ? std::nullopt : std::optional<T>(convert<T>(*value, key));
  }
  // The value at the first present key; an error listing them all when none is.
  template <typename T>
  T get_first(std::initializer_list<std::string_view> keys) const {
    const auto [value, key] = require_first(keys);
    return convert<T>(*value, key);
  }

  bool contains(std::string_view key) const { return lookup(key) != nullptr; }
  // architectures[0], the key of the architecture registry.
  std::string architecture() const;

  const nlohmann::json& json() const { return json_; }
  const std::string& source() const { return source_; }

 private:
  HfConfig(nlohmann::json json, std::string source);

  const nlohmann::json* lookup(std::string_view key) const;
  const nlohmann::json& require(std::string_view key) const;
  std::pair<const nlohmann::json*, std::string_view> require_first(
      std::initializer_list<std::string_view> keys) const;

  template <typename T>
  T convert(const nlohmann::json& value, std::string_view key) const {
    if constexpr (std::is_same_v<T, bool>) {
      return to_bool(value, key);
    } else if constexpr (std::is_integral_v<T>) {
      const int64_t result = to_int(value, key);
      if (!std::in_range<T>(result)) {
        type_error(value, key,
                   fmt::format("an integer in [{}, {}]", std::numeric_limits<T>::min(),
                               std::numeric_limits<T>::max()));
      }
      return static_cast<T>(result);
    } else if constexpr (std::is_floating_point_v<T>) {
      return static_cast<T>(to_double(value, key));
    } else if constexpr (std::is_same_v<T, std::string>) {
      return to_string(value, key);
    } else if constexpr (std::is_same_v<T, nlohmann::json>) {
      return value;
    } else if constexpr (detail::kIsVector<T>) {
      if (!value.is_array()) {
        type_error(value, key, "an array");
      }
      T result;
      result.reserve(value.size());
      for (size_t i = 0; i < value.size(); ++i) {
        result.push_back(convert<typename T::value_type>(value[i], fmt::format("{}[{}]", key, i)));
      }
      return result;
    } else {
      static_assert(detail::kIsVector<T>, "HfConfig: unsupported type");
    }
  }

  bool to_bool(const nlohmann::json& value, std::string_view key) const;
  int64_t to_int(const nlohmann::json& value, std::string_view key) const;
  double to_double(const nlohmann::json& value, std::string_view key) const;
  std::string to_string(const nlohmann::json& value, std::string_view key) const;
  [[noreturn]] void type_error(const nlohmann::json& value,
                               std::string_view key,
                               std::string_view expected) const;

  nlohmann::json json_;
  std::string source_;
};

}  // namespace moeq::io
