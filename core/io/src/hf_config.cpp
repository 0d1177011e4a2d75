#include "moeq/io/hf_config.h"

#include <fmt/ranges.h>

#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "moeq/core/error.h"

namespace moeq::io {

namespace {

using Json = nlohmann::json;

std::string show(const Json& value) {
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > 80) {
    text = text.substr(0, 80) + "...";
  }
  return text;
}

// One step of a dotted key: an object member, or an array element for a decimal segment.
const Json* step(const Json& node, std::string_view segment) {
  if (node.is_object()) {
    const auto it = node.find(segment);
    return it == node.end() ? nullptr : &*it;
  }
  if (node.is_array() && !segment.empty() &&
      segment.find_first_not_of("0123456789") == std::string_view::npos && segment.size() < 10) {
    const size_t index = std::stoul(std::string(segment));
    return index < node.size() ? &node[index] : nullptr;
  }
  return nullptr;
}

// Follows a dotted key. On failure returns nullptr and, when why is given, says where it stopped.
const Json* walk(const Json& root, std::string_view key, std::string* why) {
  const Json* node = &root;
  size_t start = 0;
  while (true) {
    const size_t dot = key.find('.', start);
    const std::string_view segment =
        key.substr(start, dot == std::string_view::npos ? std::string_view::npos : dot - start);
    const Json* next = step(*node, segment);
    if (next == nullptr) {
      if (why != nullptr && start > 0 && !node->is_object()) {
        *why = fmt::format(" ('{}' is {} {}, which has no '{}')", key.substr(0, start - 1),
                           node->type_name(), show(*node), segment);
      }
      return nullptr;
    }
    node = next;
    if (dot == std::string_view::npos) {
      return node;
    }
    start = dot + 1;
  }
}

}  // namespace

HfConfig::HfConfig(Json json, std::string source)
    : json_(std::move(json)), source_(std::move(source)) {}

HfConfig HfConfig::load(const std::filesystem::path& path) {
  const std::filesystem::path file =
      std::filesystem::is_directory(path) ? path / "config.json" : path;
  std::ifstream in(file, std::ios::binary);
  MOEQ_CHECK(in.good(), "cannot open config '{}': {}", file.string(), std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return parse(text.str(), file.string());
}

HfConfig HfConfig::parse(std::string_view text, std::string source) {
  Json json;
  try {
    json = Json::parse(text);
  } catch (const Json::exception& e) {
    MOEQ_FAIL("config '{}' is not valid JSON: {}", source, e.what());
  }
  MOEQ_CHECK(json.is_object(), "config '{}' is {} {}, expected a JSON object", source,
             json.type_name(), show(json));
  return HfConfig(std::move(json), std::move(source));
}

const Json* HfConfig::lookup(std::string_view key) const {
  const Json* value = walk(json_, key, nullptr);
  return value == nullptr || value->is_null() ? nullptr : value;
}

const Json& HfConfig::require(std::string_view key) const {
  std::string why;
  const Json* value = walk(json_, key, &why);
  MOEQ_CHECK(value != nullptr, "config '{}': key '{}' is missing{}", source_, key, why);
  MOEQ_CHECK(!value->is_null(), "config '{}': key '{}' is null, expected a value", source_, key);
  return *value;
}

std::pair<const Json*, std::string_view> HfConfig::require_first(
    std::initializer_list<std::string_view> keys) const {
  for (std::string_view key : keys) {
    if (const Json* value = lookup(key)) {
      return {value, key};
    }
  }
  MOEQ_FAIL("config '{}': none of the keys '{}' is present", source_, fmt::join(keys, "', '"));
}

std::string HfConfig::architecture() const {
  const auto architectures = get<std::vector<std::string>>("architectures");
  MOEQ_CHECK(!architectures.empty(), "config '{}': key 'architectures' is an empty list", source_);
  return architectures.front();
}

void HfConfig::type_error(const Json& value,
                          std::string_view key,
                          std::string_view expected) const {
  MOEQ_FAIL("config '{}': key '{}' is {} {}, expected {}", source_, key, value.type_name(),
            show(value), expected);
}

bool HfConfig::to_bool(const Json& value, std::string_view key) const {
  if (!value.is_boolean()) {
    type_error(value, key, "a boolean");
  }
  return value.get<bool>();
}

int64_t HfConfig::to_int(const Json& value, std::string_view key) const {
  if (value.is_number_unsigned()) {
    const auto result = value.get<uint64_t>();
    if (!std::in_range<int64_t>(result)) {
      type_error(value, key, "a 64-bit signed integer");
    }
    return static_cast<int64_t>(result);
  }
  if (value.is_number_integer()) {
    return value.get<int64_t>();
  }
  if (value.is_number_float()) {
    // Python writes some integers as floats (1e6 for 1000000); accept those that are integral.
    const double number = value.get<double>();
    if (std::trunc(number) == number && std::abs(number) < 9.2e18) {
      return static_cast<int64_t>(number);
    }
  }
  type_error(value, key, "an integer");
}

double HfConfig::to_double(const Json& value, std::string_view key) const {
  if (!value.is_number()) {
    type_error(value, key, "a number");
  }
  return value.get<double>();
}

std::string HfConfig::to_string(const Json& value, std::string_view key) const {
  if (!value.is_string()) {
    type_error(value, key, "a string");
  }
  return value.get<std::string>();
}

}  // namespace moeq::io
