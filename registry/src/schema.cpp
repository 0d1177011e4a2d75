#include "moeq/registry/schema.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "moeq/registry/registry.h"

namespace moeq {

// ---- ConfigNode
// ----------------------------------------------------------------------------------

std::string ConfigNode::location() const {
  if (mark.is_null()) {
    return file;
  }
  return fmt::format("{}:{}:{}", file, mark.line + 1, mark.column + 1);
}

std::string ConfigNode::message(std::string_view text) const {
  if (path.empty()) {
    return fmt::format("{}: {}", location(), text);
  }
  return fmt::format("{}: {}: {}", location(), path, text);
}

void ConfigNode::fail(std::string_view text) const {
  detail::throw_error(__FILE__, __LINE__, message(text));
}

namespace {

std::string join_path(const std::string& parent, std::string_view key) {
  return parent.empty() ? std::string(key) : fmt::format("{}.{}", parent, key);
}

// Where a map entry's value is: the value's own mark, or the key's for an empty value (yaml-cpp
// marks an empty value at the next token).
YAML::Mark value_mark(const YAML::Node& key, const YAML::Node& value) {
  return value.IsNull() || value.Mark().is_null() ? key.Mark() : value.Mark();
}

}  // namespace

ConfigNode ConfigNode::child(std::string_view key) const {
  ConfigNode result{YAML::Node(YAML::NodeType::Null), file, join_path(path, key), mark};
  if (!node.IsMap()) {
    return result;
  }
  for (const auto& entry : node) {
    const YAML::Node entry_key = entry.first;
    if (entry_key.IsScalar() && entry_key.Scalar() == key) {
      result.node = entry.second;
      result.mark = value_mark(entry_key, result.node);
      break;
    }
  }
  return result;
}

ConfigNode ConfigNode::element(std::size_t index) const {
  ConfigNode result{YAML::Node(YAML::NodeType::Null), file, fmt::format("{}[{}]", path, index),
                    mark};
  if (node.IsSequence() && index < node.size()) {
    result.node = node[index];
    if (!result.node.Mark().is_null()) {
      result.mark = result.node.Mark();
    }
  }
  return result;
}

namespace {
ConfigNode load_yaml(const std::string& text, const std::string& file_label) {
  try {
    YAML::Node root = YAML::Load(text);
    YAML::Mark mark = root.Mark();
    if (mark.is_null() || !root.IsDefined() || root.IsNull()) {
      mark = YAML::Mark();  // line 0, column 0: the top of the file
      mark.pos = 0;
    }
    return ConfigNode{root, file_label, {}, mark};
  } catch (const YAML::ParserException& e) {
    ConfigNode at{YAML::Node(), file_label, {}, e.mark};
    at.fail(fmt::format("invalid YAML: {}", e.msg));
  }
}
}  // namespace

ConfigNode load_yaml_file(const std::string& file) {
  std::ifstream in(file, std::ios::binary);
  MOEQ_CHECK(in.good(), "cannot read config file '{}': {}", file, std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return load_yaml(text.str(), file);
}

ConfigNode load_yaml_string(std::string_view text, const std::string& file_label) {
  return load_yaml(std::string(text), file_label);
}

// ---- types
// ---------------------------------------------------------------------------------------

std::string_view describe(FieldType type) {
  switch (type) {
    case FieldType::kString:
      return "a string";
    case FieldType::kInteger:
      return "an integer";
    case FieldType::kNumber:
      return "a number";
    case FieldType::kBoolean:
      return "true or false";
    case FieldType::kStringList:
      return "a list of strings";
    case FieldType::kByteSize:
      return "a size (bytes, or a number with B, KB, MB, GB, TB, KiB, MiB, GiB or TiB)";
    case FieldType::kSection:
      return "a map";
    case FieldType::kStringOrMap:
      return "a string or a map";
    case FieldType::kMapList:
      return "a list of maps";
    case FieldType::kAny:
      return "any value";
  }
  return "?";
}

std::optional<int64_t> parse_byte_size(std::string_view text) {
  const auto* begin = text.data();
  const auto* end = text.data() + text.size();
  double number = 0;
  auto [after, ec] = std::from_chars(begin, end, number);
  if (ec != std::errc() || !std::isfinite(number) || number < 0) {
    return std::nullopt;
  }
  std::string unit(after, end);
  unit.erase(0, unit.find_first_not_of(' '));
  std::transform(unit.begin(), unit.end(), unit.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  static constexpr std::pair<std::string_view, double> kUnits[] = {{"", 1},
                                                                   {"b", 1},
                                                                   {"kb", 1e3},
                                                                   {"mb", 1e6},
                                                                   {"gb", 1e9},
                                                                   {"tb", 1e12},
                                                                   {"kib", 1024.0},
                                                                   {"mib", 1048576.0},
                                                                   {"gib", 1073741824.0},
                                                                   {"tib", 1099511627776.0}};
  for (const auto& [name, scale] : kUnits) {
    if (unit == name) {
      const double bytes = number * scale;
      if (bytes != std::floor(bytes) || bytes > 9.2e18) {
        return std::nullopt;
      }
      return static_cast<int64_t>(bytes);
    }
  }
  return std::nullopt;
}

namespace {

// What the user wrote, for "got ...".
std::string got(const YAML::Node& node) {
  if (!node.IsDefined() || node.IsNull()) {
    return "nothing";
  }
  if (node.IsSequence()) {
    return "a list";
  }
  if (node.IsMap()) {
    return "a map";
  }
  if (node.Tag() == "!") {
    return fmt::format("the quoted string '{}'", node.Scalar());
  }
  return fmt::format("'{}'", node.Scalar());
}

[[noreturn]] void fail_expected(const ConfigNode& at, std::string_view expected) {
  at.fail(fmt::format("expected {}, got {}", expected, got(at.node)));
}

// A plain (unquoted) scalar: numbers and booleans are never quoted.
bool plain_scalar(const YAML::Node& node) {
  return node.IsScalar() && node.Tag() != "!";
}

std::optional<int64_t> to_integer(const std::string& text) {
  int64_t value = 0;
  const char* begin = text.data();
  if (!text.empty() && text[0] == '+') {
    ++begin;
  }
  auto [after, ec] = std::from_chars(begin, text.data() + text.size(), value);
  if (ec != std::errc() || after != text.data() + text.size() || begin == after) {
    return std::nullopt;
  }
  return value;
}

std::optional<double> to_number(const std::string& text) {
  double value = 0;
  const char* begin = text.data();
  if (!text.empty() && text[0] == '+') {
    ++begin;
  }
  auto [after, ec] = std::from_chars(begin, text.data() + text.size(), value);
  if (ec != std::errc() || after != text.data() + text.size() || begin == after ||
      !std::isfinite(value)) {
    return std::nullopt;
  }
  return value;
}

std::optional<bool> to_boolean(const std::string& text) {
  if (text == "true" || text == "True" || text == "TRUE") {
    return true;
  }
  if (text == "false" || text == "False" || text == "FALSE") {
    return false;
  }
  return std::nullopt;
}

std::string format_number(double value) {
  return fmt::format("{}", value);
}

void check_range(const Field& field, const ConfigNode& at, double value, const std::string& text) {
  const bool below = field.min && (field.min_exclusive ? value <= *field.min : value < *field.min);
  const bool above = field.max && value > *field.max;
  if (!below && !above) {
    return;
  }
  std::string expected;
  if (field.min && field.max) {
    expected = fmt::format("a value in {}{}, {}]", field.min_exclusive ? "(" : "[",
                           format_number(*field.min), format_number(*field.max));
  } else if (field.min) {
    expected =
        fmt::format("a value {} {}", field.min_exclusive ? ">" : ">=", format_number(*field.min));
  } else {
    expected = fmt::format("a value <= {}", format_number(*field.max));
  }
  at.fail(fmt::format("expected {}, got {}", expected, text));
}

std::string quoted_list(const std::vector<std::string>& items) {
  std::string out;
  for (std::size_t i = 0; i < items.size(); ++i) {
    out += fmt::format("{}'{}'", i == 0 ? "" : ", ", items[i]);
  }
  return out;
}

FieldValue parse_value(const Field& field, const ConfigNode& at) {
  const YAML::Node& node = at.node;
  switch (field.type) {
    case FieldType::kString: {
      if (!node.IsScalar()) {
        fail_expected(at, describe(field.type));
      }
      const std::string& text = node.Scalar();
      if (!field.choices.empty() &&
          std::find(field.choices.begin(), field.choices.end(), text) == field.choices.end()) {
        at.fail(fmt::format("expected one of {}, got '{}'{}", quoted_list(field.choices), text,
                            detail::suggest_key(text, field.choices)));
      }
      if (field.check) {
        if (std::string expected = field.check(text); !expected.empty()) {
          at.fail(fmt::format("expected {}, got '{}'", expected, text));
        }
      }
      return text;
    }
    case FieldType::kInteger: {
      std::optional<int64_t> value = plain_scalar(node) ? to_integer(node.Scalar()) : std::nullopt;
      if (!value) {
        fail_expected(at, describe(field.type));
      }
      check_range(field, at, static_cast<double>(*value), node.Scalar());
      return *value;
    }
    case FieldType::kNumber: {
      std::optional<double> value = plain_scalar(node) ? to_number(node.Scalar()) : std::nullopt;
      if (!value) {
        fail_expected(at, describe(field.type));
      }
      check_range(field, at, *value, node.Scalar());
      return *value;
    }
    case FieldType::kBoolean: {
      std::optional<bool> value = plain_scalar(node) ? to_boolean(node.Scalar()) : std::nullopt;
      if (!value) {
        fail_expected(at, describe(field.type));
      }
      return *value;
    }
    case FieldType::kByteSize: {
      std::optional<int64_t> value =
          node.IsScalar() ? parse_byte_size(node.Scalar()) : std::nullopt;
      if (!value) {
        fail_expected(at, describe(field.type));
      }
      check_range(field, at, static_cast<double>(*value), node.Scalar());
      return *value;
    }
    case FieldType::kStringList: {
      if (!node.IsSequence()) {
        fail_expected(at, describe(field.type));
      }
      std::vector<std::string> items;
      for (std::size_t i = 0; i < node.size(); ++i) {
        ConfigNode item = at.element(i);
        if (!item.node.IsScalar()) {
          fail_expected(item, "a string");
        }
        items.push_back(item.node.Scalar());
      }
      return items;
    }
    case FieldType::kSection: {
      MOEQ_INTERNAL_ASSERT(field.section != nullptr, "field '{}' is a section without a schema",
                           field.name);
      return std::make_shared<const ParsedFields>(parse_fields(at, field.section));
    }
    case FieldType::kStringOrMap: {
      if (!node.IsScalar() && !node.IsMap()) {
        fail_expected(at, describe(field.type));
      }
      return at;
    }
    case FieldType::kMapList: {
      if (!node.IsSequence()) {
        fail_expected(at, describe(field.type));
      }
      std::vector<ConfigNode> items;
      for (std::size_t i = 0; i < node.size(); ++i) {
        ConfigNode item = at.element(i);
        if (!item.node.IsMap()) {
          fail_expected(item, "a map");
        }
        items.push_back(std::move(item));
      }
      return items;
    }
    case FieldType::kAny:
      return at;
  }
  MOEQ_INTERNAL_ASSERT(false, "unhandled field type {}", static_cast<int>(field.type));
}

}  // namespace

// ---- Schema
// --------------------------------------------------------------------------------------

namespace {
// Whether a default value has the type parse_value() produces for `type`.
bool default_matches(FieldType type, const FieldValue& value) {
  switch (type) {
    case FieldType::kString:
      return std::holds_alternative<std::string>(value);
    case FieldType::kInteger:
    case FieldType::kByteSize:
      return std::holds_alternative<int64_t>(value);
    case FieldType::kNumber:
      return std::holds_alternative<double>(value);
    case FieldType::kBoolean:
      return std::holds_alternative<bool>(value);
    case FieldType::kStringList:
      return std::holds_alternative<std::vector<std::string>>(value);
    default:
      return false;  // sections and raw nodes have no defaults
  }
}
}  // namespace

Schema::Schema(std::string name, std::vector<Field> fields)
    : name_(std::move(name)), fields_(std::move(fields)) {
  for (std::size_t i = 0; i < fields_.size(); ++i) {
    for (std::size_t j = 0; j < i; ++j) {
      MOEQ_INTERNAL_ASSERT(fields_[i].name != fields_[j].name,
                           "schema '{}' declares field '{}' twice", name_, fields_[i].name);
    }
    MOEQ_INTERNAL_ASSERT(fields_[i].type != FieldType::kSection || fields_[i].section != nullptr,
                         "schema '{}': section '{}' has no schema", name_, fields_[i].name);
    MOEQ_INTERNAL_ASSERT(std::holds_alternative<std::monostate>(fields_[i].default_value) ||
                             default_matches(fields_[i].type, fields_[i].default_value),
                         "schema '{}': the default of '{}' does not have the field's type", name_,
                         fields_[i].name);
  }
}

const Field* Schema::find(std::string_view name) const {
  for (const Field& field : fields_) {
    if (field.name == name) {
      return &field;
    }
  }
  return nullptr;
}

// ---- ParsedFields
// --------------------------------------------------------------------------------

ParsedFields parse_fields(const ConfigNode& node, std::shared_ptr<const Schema> schema) {
  MOEQ_INTERNAL_ASSERT(schema != nullptr);
  if (node.node.IsDefined() && !node.node.IsNull() && !node.node.IsMap()) {
    fail_expected(node, "a map");
  }
  ParsedFields parsed;
  parsed.node_ = node;
  parsed.schema_ = std::move(schema);

  // Keys: known, unique, strings.
  if (node.node.IsMap()) {
    std::vector<std::string> known;
    for (const Field& field : parsed.schema_->fields()) {
      known.push_back(field.name);
    }
    std::sort(known.begin(), known.end());
    for (const auto& entry : node.node) {  // entry is a temporary pair: copy, never refer
      const YAML::Node key = entry.first;
      const YAML::Node value_node = entry.second;
      if (!key.IsScalar()) {
        ConfigNode at{key, node.file, node.path, key.Mark()};
        at.fail(fmt::format("expected a string key, got {}", got(key)));
      }
      const std::string& name = key.Scalar();
      ConfigNode value{value_node, node.file, join_path(node.path, name),
                       value_mark(key, value_node)};
      ConfigNode key_at{key, node.file, value.path, key.Mark()};
      if (parsed.schema_->find(name) == nullptr) {
        key_at.fail(fmt::format("unknown key{}; known keys: {}", detail::suggest_key(name, known),
                                detail::join_keys(known)));
      }
      if (auto previous = parsed.given_.find(name); previous != parsed.given_.end()) {
        key_at.fail(
            fmt::format("duplicate key (first given at line {})", previous->second.mark.line + 1));
      }
      parsed.given_.emplace(name, std::move(value));
    }
  }

  // Values, in the schema's order.
  for (const Field& field : parsed.schema_->fields()) {
    auto given = parsed.given_.find(field.name);
    if (given != parsed.given_.end()) {
      parsed.values_.emplace(field.name, parse_value(field, given->second));
    } else if (field.required) {
      node.fail(fmt::format("missing required field '{}'", field.name));
    } else if (!std::holds_alternative<std::monostate>(field.default_value)) {
      parsed.values_.emplace(field.name, field.default_value);
    }
  }
  return parsed;
}

bool ParsedFields::has(std::string_view name) const {
  return values_.find(name) != values_.end();
}

bool ParsedFields::given(std::string_view name) const {
  return given_.find(name) != given_.end();
}

ConfigNode ParsedFields::where(std::string_view name) const {
  auto it = given_.find(name);
  return it != given_.end() ? it->second : node_;
}

const FieldValue& ParsedFields::value(std::string_view name) const {
  MOEQ_INTERNAL_ASSERT(schema_->find(name) != nullptr, "schema '{}' has no field '{}'",
                       schema_->name(), name);
  auto it = values_.find(name);
  MOEQ_INTERNAL_ASSERT(it != values_.end(),
                       "field '{}' of '{}' is absent and has no default; check has() first", name,
                       schema_->name());
  return it->second;
}

namespace {
template <typename T>
const T& get_as(const FieldValue& value, std::string_view name) {
  const T* typed = std::get_if<T>(&value);
  MOEQ_INTERNAL_ASSERT(typed != nullptr, "field '{}' read as the wrong type", name);
  return *typed;
}
}  // namespace

const std::string& ParsedFields::string(std::string_view name) const {
  return get_as<std::string>(value(name), name);
}
int64_t ParsedFields::integer(std::string_view name) const {
  return get_as<int64_t>(value(name), name);
}
double ParsedFields::number(std::string_view name) const {
  return get_as<double>(value(name), name);
}
bool ParsedFields::boolean(std::string_view name) const {
  return get_as<bool>(value(name), name);
}
const std::vector<std::string>& ParsedFields::strings(std::string_view name) const {
  return get_as<std::vector<std::string>>(value(name), name);
}
const ConfigNode& ParsedFields::raw(std::string_view name) const {
  return get_as<ConfigNode>(value(name), name);
}
const std::vector<ConfigNode>& ParsedFields::nodes(std::string_view name) const {
  return get_as<std::vector<ConfigNode>>(value(name), name);
}
const ParsedFields& ParsedFields::section(std::string_view name) const {
  return *get_as<std::shared_ptr<const ParsedFields>>(value(name), name);
}

}  // namespace moeq
