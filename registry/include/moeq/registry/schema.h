// A schema-driven YAML reader. Each section of a config declares its fields (name, type,
// required or default, allowed values, range), as TensorRT plugin creators declare theirs with
// getFieldNames(); parse_fields() checks a YAML map against it and returns typed values. Unknown
// keys, duplicate keys, wrong types, values out of range and missing required fields are errors
// that name the file, line and column and the key path:
//
//   recipe.yaml:12:5: calibration.samples: expected an integer, got 'many'
//
// The recipe (config.h) is built from these schemas; adapters declared in YAML and the quant
// core's scheme parser use the same reader for their own fields.
#pragma once

#include <yaml-cpp/yaml.h>

#include <boost/config.hpp>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "moeq/core/error.h"

namespace moeq {

// A YAML node with where it came from.
struct ConfigNode {
  YAML::Node node;
  std::string file;  // as given to the reader
  std::string path;  // key path: "calibration.samples", "adapters[2].type"; empty at the root
  YAML::Mark mark;   // 0-based; YAML::Mark::null_mark() when unknown

  // "file:line:column" (1-based), or "file" when the position is unknown.
  std::string location() const;
  // "file:line:column: path: message".
  std::string message(std::string_view text) const;
  // Throws moeq::Error with message(text).
  [[noreturn]] void fail(std::string_view text) const;

  // The value under `key` of this map (a null node when absent), located at the value, or at the
  // key when the value is empty.
  ConfigNode child(std::string_view key) const;
  // Element `index` of this sequence.
  ConfigNode element(std::size_t index) const;
};

// Reads a YAML document; syntax errors carry the file, line and column.
ConfigNode load_yaml_file(const std::string& file);
ConfigNode load_yaml_string(std::string_view text, const std::string& file_label);

enum class FieldType {
  kString,      // any scalar
  kInteger,     // a plain scalar holding a whole number
  kNumber,      // a plain scalar holding a number
  kBoolean,     // true or false
  kStringList,  // a list of scalars (a single scalar is not accepted)
  kByteSize,  // bytes: an integer, or a number with a unit (B, KB, MB, GB, TB, KiB, MiB, GiB, TiB)
  kSection,   // a map checked against a nested schema
  kStringOrMap,  // a scalar or a map, kept as the raw node for a later reader
  kMapList,      // a list of maps, each kept as the raw node for a later reader
  kAny,          // anything, kept as the raw node
};

// "an integer", "a list of strings", ...
std::string_view describe(FieldType type);

class Schema;
class ParsedFields;

using FieldValue = std::variant<std::monostate,
                                bool,
                                int64_t,
                                double,
                                std::string,
                                std::vector<std::string>,
                                ConfigNode,
                                std::vector<ConfigNode>,
                                std::shared_ptr<const ParsedFields>>;

struct Field {
  std::string name;
  FieldType type = FieldType::kString;
  bool required = false;
  FieldValue default_value;          // monostate: no default (the field may be absent)
  std::vector<std::string> choices;  // kString: the allowed values; empty for any
  std::optional<double> min;         // kInteger, kNumber, kByteSize: the allowed range
  std::optional<double> max;
  bool min_exclusive = false;             // the range is (min, ...] instead of [min, ...]
  std::shared_ptr<const Schema> section;  // kSection: the nested schema
  // Extra check on a scalar's text: returns "" when fine, else what was expected ("cpu, cuda or
  // cuda:N"), reported as "expected <that>, got '<text>'".
  std::function<std::string(const std::string&)> check;
  std::string doc;  // one line for the config reference
};

class BOOST_SYMBOL_VISIBLE Schema {
 public:
  Schema(std::string name, std::vector<Field> fields);

  const std::string& name() const { return name_; }
  const std::vector<Field>& fields() const { return fields_; }
  const Field* find(std::string_view name) const;

 private:
  std::string name_;
  std::vector<Field> fields_;
};

// A map checked against a schema: every field present in the file or defaulted, typed.
class BOOST_SYMBOL_VISIBLE ParsedFields {
 public:
  // The map these fields were read from.
  const ConfigNode& node() const { return node_; }
  const Schema& schema() const { return *schema_; }

  // Present in the file, or defaulted.
  bool has(std::string_view name) const;
  // Present in the file.
  bool given(std::string_view name) const;
  // Where the field's value is in the file (the map itself when it was defaulted).
  ConfigNode where(std::string_view name) const;

  const std::string& string(std::string_view name) const;
  int64_t integer(std::string_view name) const;  // also kByteSize
  double number(std::string_view name) const;
  bool boolean(std::string_view name) const;
  const std::vector<std::string>& strings(std::string_view name) const;
  const ConfigNode& raw(std::string_view name) const;                 // kStringOrMap, kAny
  const std::vector<ConfigNode>& nodes(std::string_view name) const;  // kMapList
  const ParsedFields& section(std::string_view name) const;

 private:
  friend ParsedFields parse_fields(const ConfigNode& node, std::shared_ptr<const Schema> schema);
  const FieldValue& value(std::string_view name) const;

  ConfigNode node_;
  std::shared_ptr<const Schema> schema_;
  std::map<std::string, FieldValue, std::less<>> values_;
  std::map<std::string, ConfigNode, std::less<>> given_;
};

// Checks `node` (a map, or empty) against `schema`; throws moeq::Error at the first problem.
ParsedFields parse_fields(const ConfigNode& node, std::shared_ptr<const Schema> schema);

// Parses "5GB", "512MiB", "1000" to bytes; nullopt when the text is not a size.
std::optional<int64_t> parse_byte_size(std::string_view text);

}  // namespace moeq
