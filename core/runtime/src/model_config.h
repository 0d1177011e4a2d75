// Typed reads of config.json for the model builders: required fields, defaults, key aliases
// (num_local_experts | num_experts), null treated as absent, and errors that name the field and
// the file. Also the RoPE parameters in both spellings: transformers 5's "rope_parameters" and the
// published checkpoints' "rope_theta" + "rope_scaling".
#pragma once

#include <moeq/runtime/blocks.h>

#include <nlohmann/json.hpp>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>
#include <vector>

namespace moeq::runtime::detail {

class ConfigReader {
 public:
  // `origin` names the file in messages.
  ConfigReader(const nlohmann::json& json, std::string origin);

  const std::string& origin() const { return origin_; }
  // Present and not null.
  bool has(std::string_view key) const;

  int64_t get_int(std::string_view key) const;
  int64_t get_int(std::string_view key, int64_t fallback) const;
  // The first of `keys` present (aliases); an error naming all of them when none is.
  int64_t get_int_any(std::initializer_list<std::string_view> keys) const;
  double get_double(std::string_view key, double fallback) const;
  bool get_bool(std::string_view key, bool fallback) const;
  std::string get_string(std::string_view key) const;
  std::string get_string(std::string_view key, std::string fallback) const;
  std::vector<int64_t> get_int_list(std::string_view key) const;         // absent: empty
  std::vector<std::string> get_string_list(std::string_view key) const;  // absent: empty
  // The architecture: architectures[0].
  std::string architecture() const;

  const nlohmann::json& json() const { return json_; }

 private:
  const nlohmann::json* find(std::string_view key) const;
  [[noreturn]] void type_error(std::string_view key, std::string_view expected) const;

  const nlohmann::json& json_;
  std::string origin_;
};

// head_dim as transformers derives it: config.head_dim when set, hidden_size / num_heads otherwise.
int64_t head_dim(const ConfigReader& config);

// The RoPE options of a config. `default_theta`: the model's default when no theta is given
// (Mixtral 1e6, most others 1e4).
RopeOptions rope_options(const ConfigReader& config, int64_t head_dim, double default_theta);

}  // namespace moeq::runtime::detail
