#include "model_config.h"

#include <moeq/runtime/models.h>

#include <moeq/core/error.h>

#include <cmath>

namespace moeq::runtime::detail {

namespace {
std::string type_name(const nlohmann::json& value) {
  return value.is_number_float() ? "float" : std::string(value.type_name());
}
}  // namespace

ConfigReader::ConfigReader(const nlohmann::json& json, std::string origin)
    : json_(json), origin_(std::move(origin)) {
  MOEQ_CHECK(json_.is_object(), "{}: expected a JSON object at the top level, got {}", origin_,
             type_name(json_));
}

const nlohmann::json* ConfigReader::find(std::string_view key) const {
  auto it = json_.find(key);
  if (it == json_.end() || it->is_null()) {
    return nullptr;
  }
  return &*it;
}

bool ConfigReader::has(std::string_view key) const {
  return find(key) != nullptr;
}

void ConfigReader::type_error(std::string_view key, std::string_view expected) const {
  MOEQ_FAIL("{}: field '{}' must be {}, got {} {}", origin_, key, expected, type_name(*find(key)),
            find(key)->dump());
}

int64_t ConfigReader::get_int(std::string_view key) const {
  const auto* value = find(key);
  MOEQ_CHECK(value != nullptr, "{}: missing required field '{}'", origin_, key);
  if (!value->is_number_integer()) {
    type_error(key, "an integer");
  }
  return value->get<int64_t>();
}

int64_t ConfigReader::get_int(std::string_view key, int64_t fallback) const {
  return has(key) ? get_int(key) : fallback;
}

int64_t ConfigReader::get_int_any(std::initializer_list<std::string_view> keys) const {
  for (auto key : keys) {
    if (has(key)) {
      return get_int(key);
    }
  }
  std::string names;
  for (auto key : keys) {
    names += fmt::format("{}'{}'", names.empty() ? "" : " or ", key);
  }
  MOEQ_FAIL("{}: missing required field {}", origin_, names);
}

double ConfigReader::get_double(std::string_view key, double fallback) const {
  const auto* value = find(key);
  if (value == nullptr) {
    return fallback;
  }
  if (!value->is_number()) {
    type_error(key, "a number");
  }
  return value->get<double>();
}

bool ConfigReader::get_bool(std::string_view key, bool fallback) const {
  const auto* value = find(key);
  if (value == nullptr) {
    return fallback;
  }
  if (!value->is_boolean()) {
    type_error(key, "true or false");
  }
  return value->get<bool>();
}

std::string ConfigReader::get_string(std::string_view key) const {
  const auto* value = find(key);
  MOEQ_CHECK(value != nullptr, "{}: missing required field '{}'", origin_, key);
  if (!value->is_string()) {
    type_error(key, "a string");
  }
  return value->get<std::string>();
}

std::string ConfigReader::get_string(std::string_view key, std::string fallback) const {
  return has(key) ? get_string(key) : std::move(fallback);
}

std::vector<int64_t> ConfigReader::get_int_list(std::string_view key) const {
  const auto* value = find(key);
  if (value == nullptr) {
    return {};
  }
  if (!value->is_array()) {
    type_error(key, "a list of integers");
  }
  std::vector<int64_t> out;
  for (const auto& item : *value) {
    if (!item.is_number_integer()) {
      type_error(key, "a list of integers");
    }
    out.push_back(item.get<int64_t>());
  }
  return out;
}

std::vector<std::string> ConfigReader::get_string_list(std::string_view key) const {
  const auto* value = find(key);
  if (value == nullptr) {
    return {};
  }
  if (!value->is_array()) {
    type_error(key, "a list of strings");
  }
  std::vector<std::string> out;
  for (const auto& item : *value) {
    if (!item.is_string()) {
      type_error(key, "a list of strings");
    }
    out.push_back(item.get<std::string>());
  }
  return out;
}

std::string ConfigReader::architecture() const {
  auto archs = get_string_list("architectures");
  MOEQ_CHECK(!archs.empty(), "{}: 'architectures' is missing or empty: cannot tell the model",
             origin_);
  return archs.front();
}

int64_t head_dim(const ConfigReader& config) {
  if (config.has("head_dim")) {
    return config.get_int("head_dim");
  }
  const auto hidden = config.get_int("hidden_size");
  const auto heads = config.get_int("num_attention_heads");
  MOEQ_CHECK(heads > 0 && hidden % heads == 0,
             "{}: hidden_size {} is not a multiple of num_attention_heads {}", config.origin(),
             hidden, heads);
  return hidden / heads;
}

RopeOptions rope_options(const ConfigReader& config, int64_t head_dim, double default_theta) {
  // transformers: rope_parameters = rope_scaling or rope_parameters; theta from it, else the
  // top-level rope_theta, else the model's default; the type from "rope_type" or legacy "type".
  const nlohmann::json* params = nullptr;
  std::string params_key;
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (config.has(key)) {
      params = &config.json().at(key);
      params_key = key;
      break;
    }
  }
  static const nlohmann::json kEmpty = nlohmann::json::object();
  const auto& p = params != nullptr ? *params : kEmpty;
  MOEQ_CHECK(p.is_object(), "{}: field '{}' must be an object, got {}", config.origin(), params_key,
             p.dump());
  const ConfigReader rope(p, config.origin() + ": " + params_key);

  RopeOptions options;
  options.head_dim = head_dim;
  options.theta = rope.get_double("rope_theta", config.get_double("rope_theta", default_theta));
  options.partial_rotary_factor =
      rope.get_double("partial_rotary_factor", config.get_double("partial_rotary_factor", 1.0));
  MOEQ_CHECK(options.partial_rotary_factor > 0.0 && options.partial_rotary_factor <= 1.0,
             "{}: partial_rotary_factor must be in (0, 1], got {}", config.origin(),
             options.partial_rotary_factor);
  const auto type = rope.get_string("rope_type", rope.get_string("type", "default"));
  if (type == "default") {
    options.type = RopeType::kDefault;
  } else if (type == "linear") {
    options.type = RopeType::kLinear;
    options.factor = rope.get_double("factor", 1.0);
  } else if (type == "llama3") {
    options.type = RopeType::kLlama3;
    MOEQ_CHECK(rope.has("factor") && rope.has("low_freq_factor") && rope.has("high_freq_factor"),
               "{}: llama3 RoPE needs factor, low_freq_factor and high_freq_factor in '{}'",
               config.origin(), params_key);
    options.factor = rope.get_double("factor", 1.0);
    options.low_freq_factor = rope.get_double("low_freq_factor", 1.0);
    options.high_freq_factor = rope.get_double("high_freq_factor", 4.0);
    // A top-level original_max_position_embeddings wins (Phi-3 style), then the parameters'
    // own, then max_position_embeddings.
    options.original_max_position_embeddings =
        config.has("original_max_position_embeddings")
            ? config.get_int("original_max_position_embeddings")
        : rope.has("original_max_position_embeddings")
            ? rope.get_int("original_max_position_embeddings")
            : config.get_int("max_position_embeddings");
  } else {
    MOEQ_FAIL("{}: RoPE type '{}' is not supported yet (supported: default, linear, llama3)",
              config.origin(), type);
  }
  return options;
}

}  // namespace moeq::runtime::detail

namespace moeq::runtime {

const std::vector<BuiltinArchitecture>& builtin_architectures() {
  static const std::vector<BuiltinArchitecture> kArchitectures = {
      {"MixtralForCausalLM", &build_mixtral_for_causal_lm},
      {"Qwen2MoeForCausalLM", &build_qwen2_moe_for_causal_lm},
      {"Qwen3MoeForCausalLM", &build_qwen3_moe_for_causal_lm},
  };
  return kArchitectures;
}

CausalLMBuilder find_builtin_architecture(std::string_view architecture) {
  std::string known;
  for (const auto& a : builtin_architectures()) {
    if (a.name == architecture) {
      return a.build;
    }
    known += fmt::format("{}{}", known.empty() ? "" : ", ", a.name);
  }
  MOEQ_FAIL("no model builder for architecture '{}' (built in: {})", architecture, known);
}

}  // namespace moeq::runtime
