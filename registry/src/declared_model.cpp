#include "moeq/registry/declared_model.h"

#include <moeq/adapters/sparse_moe.h>
#include <moeq/runtime/model_config.h>
#include <moeq/runtime/sigmoid_router.h>
#include <moeq/runtime/weight_source.h>

#include <algorithm>
#include <charconv>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <utility>

#include "moeq/registry/causal_lm_architecture.h"

namespace moeq {

namespace fs = std::filesystem;

// The stanza's pieces (named, not anonymous: DeclaredModel, declared in the header, holds them).
namespace declared_detail {

using runtime::Activation;

constexpr std::string_view kLayerPrefix = "model.layers.{layer}.";
constexpr std::string_view kLayer = "{layer}";
constexpr std::string_view kExpert = "{expert}";
constexpr std::string_view kWeight = ".weight";

// ---- values: a literal, or read from config.json --------------------------------------------

enum class ValueType { kInteger, kNumber, kBoolean, kString, kIntegerList };

std::string_view describe(ValueType type) {
  switch (type) {
    case ValueType::kInteger:
      return "an integer";
    case ValueType::kNumber:
      return "a number";
    case ValueType::kBoolean:
      return "true or false";
    case ValueType::kString:
      return "a string";
    case ValueType::kIntegerList:
      return "a list of integers";
  }
  return "?";
}

using Literal =
    std::variant<std::monostate, bool, int64_t, double, std::string, std::vector<int64_t>>;

// How a value field of a stanza is declared: its type and checks, and its default (config.json
// keys tried in order, then a literal).
struct ValueSpec {
  std::string name;
  ValueType type = ValueType::kInteger;
  std::vector<std::string> keys;  // default config.json keys
  Literal fallback;               // default literal (monostate: none)
  std::optional<double> min;      // for literals
  std::vector<std::string> choices;
  std::string doc;
};

// A resolved declaration: where it is (for messages), the config.json keys to try, the literal.
struct Value {
  ConfigNode where;
  std::vector<std::string> keys;
  Literal literal;
  bool given = false;  // written in the file (not the default)
};

std::string describe_keys(const std::vector<std::string>& keys) {
  std::string out;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    out += fmt::format("{}'{}'", i == 0 ? "" : ", ", keys[i]);
  }
  return out;
}

// The value as the stanza declares it: a literal, or {config: key | [keys], default: literal}.
std::string describe_value(const Value& v) {
  std::string out;
  if (!v.keys.empty()) {
    out = fmt::format("config.json {}", describe_keys(v.keys));
  }
  std::visit(
      [&](const auto& x) {
        using T = std::decay_t<decltype(x)>;
        if constexpr (std::is_same_v<T, std::monostate>) {
        } else if constexpr (std::is_same_v<T, std::vector<int64_t>>) {
          out += fmt::format("{}[{}]", out.empty() ? "" : ", else ", fmt::join(x, ", "));
        } else {
          out += fmt::format("{}{}", out.empty() ? "" : ", else ", x);
        }
      },
      v.literal);
  return out;
}

std::pair<std::string, std::string> split_path(const std::string& path) {
  const auto dot = path.rfind('.');
  if (dot == std::string::npos) {
    return {std::string(), path};
  }
  return {path.substr(0, dot), path.substr(dot + 1)};
}

// Checks a scalar with the schema reader (same messages as the recipe's fields).
FieldValue check_scalar(const ConfigNode& at, const Field& proto) {
  auto [parent_path, key] = split_path(at.path);
  YAML::Node wrapper(YAML::NodeType::Map);
  wrapper[key] = at.node;
  Field field = proto;
  field.name = key;
  field.required = true;
  const auto schema = std::make_shared<const Schema>("value", std::vector<Field>{field});
  const ParsedFields parsed =
      parse_fields(ConfigNode{wrapper, at.file, parent_path, at.mark}, schema);
  switch (proto.type) {
    case FieldType::kInteger:
      return parsed.integer(key);
    case FieldType::kNumber:
      return parsed.number(key);
    case FieldType::kBoolean:
      return parsed.boolean(key);
    default:
      return parsed.string(key);
  }
}

Literal parse_literal(const ConfigNode& at, const ValueSpec& spec) {
  Field field{.name = spec.name, .choices = spec.choices, .min = spec.min};
  switch (spec.type) {
    case ValueType::kInteger:
      field.type = FieldType::kInteger;
      return std::get<int64_t>(check_scalar(at, field));
    case ValueType::kNumber:
      field.type = FieldType::kNumber;
      return std::get<double>(check_scalar(at, field));
    case ValueType::kBoolean:
      field.type = FieldType::kBoolean;
      return std::get<bool>(check_scalar(at, field));
    case ValueType::kString:
      field.type = FieldType::kString;
      return std::get<std::string>(check_scalar(at, field));
    case ValueType::kIntegerList: {
      if (!at.node.IsSequence()) {
        at.fail(fmt::format("expected {}, or a map {{config: <key>, default: <value>}}",
                            describe(spec.type)));
      }
      std::vector<int64_t> out;
      field.type = FieldType::kInteger;
      for (std::size_t i = 0; i < at.node.size(); ++i) {
        out.push_back(std::get<int64_t>(check_scalar(at.element(i), field)));
      }
      return out;
    }
  }
  return {};
}

std::shared_ptr<const Schema> config_value_schema() {
  static const auto schema = std::make_shared<const Schema>(
      "value", std::vector<Field>{
                   {.name = "config",
                    .type = FieldType::kAny,
                    .required = true,
                    .doc = "a config.json key, or a list of keys tried in order (dots reach into "
                           "nested objects: rope_parameters.rope_theta)"},
                   {.name = "default",
                    .type = FieldType::kAny,
                    .doc = "the literal used when config.json has none of the keys; without it "
                           "a missing key is an error"},
               });
  return schema;
}

Value parse_value(const ParsedFields& section, const ValueSpec& spec) {
  Value v;
  if (!section.given(spec.name)) {
    v.where = section.node().child(spec.name);
    v.keys = spec.keys;
    v.literal = spec.fallback;
    return v;
  }
  v.where = section.where(spec.name);
  v.given = true;
  if (v.where.node.IsMap()) {
    const ParsedFields value = parse_fields(v.where, config_value_schema());
    const ConfigNode keys = value.where("config");
    if (keys.node.IsScalar() && !keys.node.Scalar().empty()) {
      v.keys.push_back(keys.node.Scalar());
    } else if (keys.node.IsSequence() && keys.node.size() > 0) {
      for (std::size_t i = 0; i < keys.node.size(); ++i) {
        const ConfigNode key = keys.element(i);
        if (!key.node.IsScalar() || key.node.Scalar().empty()) {
          key.fail("expected a config.json key");
        }
        v.keys.push_back(key.node.Scalar());
      }
    } else {
      keys.fail("expected a config.json key or a non-empty list of keys");
    }
    if (value.given("default")) {
      v.literal = parse_literal(value.where("default"), spec);
    }
    return v;
  }
  v.literal = parse_literal(v.where, spec);
  return v;
}

// ---- reading a value against config.json -------------------------------------------------

template <typename T>
T resolve(const Value& v, const io::HfConfig& config) {
  for (const auto& key : v.keys) {
    if (config.contains(key)) {
      return config.get<T>(key);
    }
  }
  if constexpr (std::is_same_v<T, double>) {
    if (const auto* i = std::get_if<int64_t>(&v.literal)) {
      return static_cast<double>(*i);
    }
  }
  if (const auto* literal = std::get_if<T>(&v.literal)) {
    return *literal;
  }
  v.where.fail(fmt::format("config '{}' has none of the keys {} and no default is declared",
                           config.source(), describe_keys(v.keys)));
}

// "config key 'n_group'" or "the declared value": where a resolved value came from.
std::string source_of(const Value& v, const io::HfConfig& config) {
  for (const auto& key : v.keys) {
    if (config.contains(key)) {
      return fmt::format("config key '{}'", key);
    }
  }
  return "the declared default";
}

// ---- requires: config.json values the declaration implements -------------------------------

// A config.json key whose value must be one of `accepted` (scalars). A key absent or null in
// config.json passes: the declaration's own defaults describe the model then, as the compiled
// plugins' get_or(key, <implemented value>) do.
struct Requirement {
  ConfigNode where;  // the entry's value: "file:line:col: models[0].requires.<key>"
  std::string key;   // dots reach into objects (rope_parameters.rope_type)
  std::vector<nlohmann::json> accepted;
};

// A YAML scalar as the JSON value it spells: true/false, an integer, a number, else a string. A
// quoted scalar is always a string ("1" accepts the string "1", 1 the number).
nlohmann::json scalar_json(const ConfigNode& at) {
  const std::string& text = at.node.Scalar();
  if (at.node.Tag() != "!") {
    if (text == "true" || text == "True" || text == "TRUE") {
      return true;
    }
    if (text == "false" || text == "False" || text == "FALSE") {
      return false;
    }
    const char* end = text.data() + text.size();
    int64_t integer = 0;
    if (auto [ptr, ec] = std::from_chars(text.data(), end, integer);
        ec == std::errc() && ptr == end) {
      return integer;
    }
    double number = 0.0;
    if (auto [ptr, ec] = std::from_chars(text.data(), end, number);
        ec == std::errc() && ptr == end) {
      return number;
    }
  }
  return text;
}

// Numbers compare by value (1 accepts 1.0); other types only equal their own.
bool same_value(const nlohmann::json& found, const nlohmann::json& accepted) {
  if (found.is_number() && accepted.is_number()) {
    if (found.is_number_float() || accepted.is_number_float()) {
      return found.get<double>() == accepted.get<double>();
    }
    return found.get<int64_t>() == accepted.get<int64_t>();
  }
  return found == accepted;
}

// 'sigmoid' for strings, the JSON text otherwise.
std::string show_json(const nlohmann::json& value) {
  return value.is_string() ? fmt::format("'{}'", value.get<std::string>()) : value.dump();
}

std::string describe_accepted(const std::vector<nlohmann::json>& accepted) {
  std::vector<std::string> shown;
  for (const auto& value : accepted) {
    shown.push_back(show_json(value));
  }
  return fmt::format("{}", fmt::join(shown, ", "));
}

std::vector<Requirement> parse_requirements(const ConfigNode& at) {
  if (!at.node.IsMap()) {
    at.fail(
        "expected a map from config.json keys to the accepted value or list of values "
        "({scoring_func: sigmoid, topk_method: [noaux_tc, greedy]})");
  }
  if (at.node.size() == 0) {
    at.fail("names no config.json key (leave requires out instead)");
  }
  std::vector<Requirement> out;
  std::map<std::string, YAML::Mark> seen;
  for (const auto& entry : at.node) {
    const YAML::Node key = entry.first;
    if (!key.IsScalar() || key.Scalar().empty()) {
      ConfigNode{key, at.file, at.path, key.Mark().is_null() ? at.mark : key.Mark()}.fail(
          "expected a config.json key");
    }
    Requirement r;
    r.key = key.Scalar();
    r.where = at.child(r.key);
    if (const auto [first, fresh] = seen.emplace(r.key, key.Mark()); !fresh) {
      ConfigNode{key, at.file, r.where.path, key.Mark()}.fail(
          fmt::format("duplicate key (first given at line {})", first->second.line + 1));
    }
    const auto one = [](const ConfigNode& value) {
      if (value.node.IsNull()) {
        value.fail(
            "null is not an accepted value: a key absent or null in config.json always passes "
            "(leave the key out of requires instead)");
      }
      if (!value.node.IsScalar()) {
        value.fail("expected an accepted value: a string, a number, true or false");
      }
      return scalar_json(value);
    };
    if (r.where.node.IsSequence()) {
      if (r.where.node.size() == 0) {
        r.where.fail("lists no accepted value");
      }
      for (std::size_t i = 0; i < r.where.node.size(); ++i) {
        r.accepted.push_back(one(r.where.element(i)));
      }
    } else if (r.where.node.IsScalar() || r.where.node.IsNull()) {
      r.accepted.push_back(one(r.where));
    } else {
      r.where.fail("expected the accepted value or a list of accepted values, got a map");
    }
    out.push_back(std::move(r));
  }
  return out;
}

// Refuses a config.json holding a variant the declaration does not implement.
void check_requirements(const std::vector<Requirement>& requirements, const io::HfConfig& config) {
  for (const auto& r : requirements) {
    if (!config.contains(r.key)) {
      continue;  // absent or null: the declared defaults apply
    }
    const auto found = config.get<nlohmann::json>(r.key);
    const bool ok = std::any_of(r.accepted.begin(), r.accepted.end(),
                                [&](const nlohmann::json& a) { return same_value(found, a); });
    if (!ok) {
      r.where.fail(fmt::format(
          "config key '{}' is {} in '{}', which this declaration does not implement (accepted: "
          "{})",
          r.key, show_json(found), config.source(), describe_accepted(r.accepted)));
    }
  }
}

// ---- tensor name patterns -------------------------------------------------------------------

std::size_t count(std::string_view text, std::string_view what) {
  std::size_t n = 0;
  for (auto at = text.find(what); at != std::string_view::npos; at = text.find(what, at + 1)) {
    ++n;
  }
  return n;
}

std::string replace_all(std::string text, std::string_view what, std::string_view with) {
  for (auto at = text.find(what); at != std::string::npos; at = text.find(what, at + with.size())) {
    text.replace(at, what.size(), with);
  }
  return text;
}

// A name with {layer} (and, for experts, {expert}) placeholders.
std::string expand(const std::string& pattern, int64_t layer) {
  return replace_all(pattern, kLayer, std::to_string(layer));
}

// Checks the placeholders of a pattern: it starts with model.layers.{layer}., has {expert} exactly
// when `with_expert`, and no other placeholder.
void check_pattern(const ConfigNode& at, const std::string& text, bool with_expert) {
  if (!text.starts_with(kLayerPrefix)) {
    at.fail(fmt::format("'{}' must start with '{}' (the decoder layer)", text, kLayerPrefix));
  }
  const std::string rest = replace_all(replace_all(text, kLayer, ""), kExpert, "");
  if (const auto open = rest.find_first_of("{}"); open != std::string::npos) {
    const auto close = rest.find('}', open);
    at.fail(fmt::format("'{}': unknown placeholder '{}' (patterns know {{layer}} and {{expert}})",
                        text,
                        rest.substr(open, close == std::string::npos ? 1 : close - open + 1)));
  }
  if (count(text, kLayer) != 1) {
    at.fail(fmt::format("'{}' must contain {{layer}} exactly once", text));
  }
  const auto experts = count(text, kExpert);
  if (with_expert && experts != 1) {
    at.fail(fmt::format("'{}' must contain {{expert}} exactly once", text));
  }
  if (!with_expert && experts != 0) {
    at.fail(fmt::format("'{}' is not per expert: {{expert}} is not allowed here", text));
  }
}

std::string strip_weight(const ConfigNode& at, const std::string& text, std::string_view what) {
  if (!text.ends_with(kWeight) || text.size() == kWeight.size()) {
    at.fail(fmt::format("'{}' must be {} tensor name ending in '.weight'", text, what));
  }
  return text.substr(0, text.size() - kWeight.size());
}

// "<module>.<last>" -> {module, last}.
std::pair<std::string, std::string> split_last(const std::string& name) {
  const auto dot = name.rfind('.');
  return {name.substr(0, dot), name.substr(dot + 1)};
}

// A gated MLP's three projections: "<module>.<proj>.weight".
struct MlpNames {
  std::string module;  // a pattern
  std::string gate;
  std::string up;
  std::string down;
};

std::shared_ptr<const Schema> mlp_tensors_schema(const std::string& what) {
  auto field = [&](const char* name, const char* proj) {
    return Field{.name = name,
                 .type = FieldType::kString,
                 .required = true,
                 .doc = fmt::format("the {} projection's weight of {}", proj, what)};
  };
  return std::make_shared<const Schema>(
      "mlp tensors", std::vector<Field>{field("gate", "gate (w1)"), field("up", "up (w3)"),
                                        field("down", "down (w2)")});
}

// Splits the three patterns of an MLP; they must share their module. `experts`: the module part
// ends with ".{expert}" and is returned without it.
MlpNames parse_mlp_names(const ParsedFields& f, bool experts) {
  MlpNames names;
  std::string* projs[] = {&names.gate, &names.up, &names.down};
  const char* keys[] = {"gate", "up", "down"};
  ConfigNode first;
  for (int i = 0; i < 3; ++i) {
    const ConfigNode at = f.where(keys[i]);
    const std::string& text = f.string(keys[i]);
    check_pattern(at, text, experts);
    auto [module, proj] = split_last(strip_weight(at, text, "a projection's"));
    if (experts) {
      const std::string tail = fmt::format(".{}", kExpert);
      if (!module.ends_with(tail)) {
        at.fail(fmt::format("'{}' must be '<experts>.{{expert}}.<projection>.weight'", text));
      }
      module.resize(module.size() - tail.size());
    }
    if (i == 0) {
      names.module = module;
      first = at;
    } else if (module != names.module) {
      at.fail(fmt::format("'{}' is not under the same module as {} ('{}')", text, first.path,
                          names.module));
    }
    *projs[i] = proj;
  }
  return names;
}

// ---- the stanza -----------------------------------------------------------------------------

struct Types {
  std::string router;
  std::string experts;
  std::string mlp;
  std::string attention;
  std::string norm;
  std::string decoder_layer;
};

}  // namespace declared_detail

using namespace declared_detail;  // NOLINT(google-build-using-namespace)

struct DeclaredModel {
  ConfigNode where;
  std::string architecture;
  std::string description;
  std::string moe_block_type;
  Types types;

  Value rms_norm_eps;
  Value tie_word_embeddings;
  Value activation;
  Value excluded_layers;

  double default_theta = 10000.0;
  std::optional<double> default_partial_rotary_factor;
  Value rotary_dim;  // 0: not given

  Value qkv_bias;
  Value o_bias;
  Value qk_norm;
  runtime::QkNormScope qk_norm_scope = runtime::QkNormScope::kPerHead;
  Value sliding_window;

  bool fp8_block_scaled = false;  // source format
  Value weight_block_size;

  bool sigmoid = false;  // router kind
  ConfigNode router_where;
  Value num_experts;
  Value top_k;
  Value normalize_topk;
  Value weights_in_compute_dtype;
  Value n_group;
  Value topk_group;
  Value norm_topk_prob;
  Value norm_eps;
  Value routed_scaling_factor;
  Value logits_in_fp32;

  Value expert_intermediate;
  bool shared = false;
  Value shared_count;
  Value shared_intermediate;
  Value dense_intermediate;

  Value first_moe_layer;
  Value moe_layer_step;
  Value dense_layers;

  // Patterns.
  std::string block;          // model.layers.{layer}.mlp
  std::string router_module;  // model.layers.{layer}.mlp.gate
  std::string router_bias;    // full pattern; empty: <router>.e_score_correction_bias
  MlpNames experts;           // module: model.layers.{layer}.mlp.experts
  MlpNames shared_names;      // module: the shared expert's name relative to the block
  bool shared_gate = false;
  std::optional<MlpNames> dense;
  ConfigNode dense_where;

  std::vector<Requirement> requirements;  // `requires`, checked before anything is read
};

namespace {

// ---- schemas --------------------------------------------------------------------------------

Field value_field(const ValueSpec& spec) {
  return Field{.name = spec.name, .type = FieldType::kAny, .doc = spec.doc};
}

std::shared_ptr<const Schema> value_schema(const std::string& name,
                                           const std::vector<ValueSpec>& specs,
                                           std::vector<Field> extra = {}) {
  std::vector<Field> fields = std::move(extra);
  for (const auto& spec : specs) {
    fields.push_back(value_field(spec));
  }
  return std::make_shared<const Schema>(name, std::move(fields));
}

const ValueSpec& spec(const std::vector<ValueSpec>& specs, std::string_view name) {
  const auto it =
      std::find_if(specs.begin(), specs.end(), [&](const ValueSpec& s) { return s.name == name; });
  MOEQ_INTERNAL_ASSERT(it != specs.end(), "declared model: no value spec '{}'", name);
  return *it;
}

const std::vector<ValueSpec>& model_values() {
  static const std::vector<ValueSpec> specs = {
      {.name = "rms_norm_eps",
       .type = ValueType::kNumber,
       .keys = {"rms_norm_eps"},
       .fallback = 1e-6,
       .min = 0.0,
       .doc = "RMSNorm epsilon (layer norms, q/k norms, the final norm)"},
      {.name = "tie_word_embeddings",
       .type = ValueType::kBoolean,
       .keys = {"tie_word_embeddings"},
       .fallback = false,
       .doc = "lm_head reads model.embed_tokens.weight"},
      {.name = "activation",
       .type = ValueType::kString,
       .keys = {"hidden_act"},
       .fallback = std::string("silu"),
       .choices = {"silu"},
       .doc = "the gated MLPs' activation (the runtime implements silu)"},
      {.name = "excluded_layers",
       .type = ValueType::kInteger,
       .keys = {"num_nextn_predict_layers"},
       .fallback = int64_t{0},
       .min = 0,
       .doc = "layers stored after the last decoder layer that the model does not run (MTP): "
              "copied through unquantized, or dropped (quantize.drop_excluded_layers)"},
  };
  return specs;
}

const std::vector<ValueSpec>& attention_values() {
  static const std::vector<ValueSpec> specs = {
      {.name = "qkv_bias",
       .type = ValueType::kBoolean,
       .keys = {"attention_bias"},
       .fallback = false,
       .doc = "biases on q_proj, k_proj, v_proj"},
      {.name = "o_bias", .type = ValueType::kBoolean, .fallback = false, .doc = "a bias on o_proj"},
      {.name = "qk_norm",
       .type = ValueType::kBoolean,
       .fallback = false,
       .doc = "per-head RMSNorm on q and k before RoPE (self_attn.q_norm, self_attn.k_norm)"},
      {.name = "sliding_window",
       .type = ValueType::kInteger,
       .fallback = int64_t{0},
       .min = 0,
       .doc = "keys further back are masked, on every layer; 0: full attention"},
  };
  return specs;
}

const std::vector<ValueSpec>& router_values() {
  static const std::vector<ValueSpec> specs = {
      {.name = "num_experts",
       .type = ValueType::kInteger,
       .keys = {"num_local_experts", "num_experts", "n_routed_experts"},
       .min = 1,
       .doc = "routed experts per MoE layer"},
      {.name = "top_k",
       .type = ValueType::kInteger,
       .keys = {"num_experts_per_tok"},
       .min = 1,
       .doc = "experts per token"},
      {.name = "normalize_topk",
       .type = ValueType::kBoolean,
       .keys = {"norm_topk_prob"},
       .fallback = false,
       .doc = "softmax_topk: renormalise the top-k probabilities to sum to one"},
      {.name = "weights_in_compute_dtype",
       .type = ValueType::kBoolean,
       .fallback = false,
       .doc = "softmax_topk: cast the combine weights to the compute dtype (Qwen) instead of "
              "keeping them fp32 (Mixtral)"},
      {.name = "n_group",
       .type = ValueType::kInteger,
       .keys = {"n_group"},
       .fallback = int64_t{1},
       .min = 1,
       .doc = "sigmoid_topk: expert groups; experts are chosen within the best topk_group"},
      {.name = "topk_group",
       .type = ValueType::kInteger,
       .keys = {"topk_group"},
       .fallback = int64_t{1},
       .min = 1,
       .doc = "sigmoid_topk: groups kept per token"},
      {.name = "norm_topk_prob",
       .type = ValueType::kBoolean,
       .keys = {"norm_topk_prob"},
       .fallback = true,
       .doc = "sigmoid_topk: renormalise the chosen scores"},
      {.name = "norm_eps",
       .type = ValueType::kNumber,
       .fallback = 1e-20,
       .min = 0.0,
       .doc = "sigmoid_topk: added to the renormalising sum (DeepSeek-V3, GLM-4.5: 1e-20; "
              "MiniMax-M2: 0)"},
      {.name = "routed_scaling_factor",
       .type = ValueType::kNumber,
       .keys = {"routed_scaling_factor"},
       .fallback = 1.0,
       .doc = "sigmoid_topk: the combine weights' scale"},
      {.name = "logits_in_fp32",
       .type = ValueType::kBoolean,
       .fallback = true,
       .doc = "sigmoid_topk: router logits from fp32 hidden and weight (DeepSeek-V3, GLM-4.5) or "
              "in the compute dtype (MiniMax-M2)"},
  };
  return specs;
}

const std::vector<std::string>& softmax_only() {
  static const std::vector<std::string> names = {"normalize_topk", "weights_in_compute_dtype"};
  return names;
}
const std::vector<std::string>& sigmoid_only() {
  static const std::vector<std::string> names = {
      "n_group",       "topk_group", "norm_topk_prob", "norm_eps", "routed_scaling_factor",
      "logits_in_fp32"};
  return names;
}

const std::vector<ValueSpec>& experts_values() {
  static const std::vector<ValueSpec> specs = {
      {.name = "intermediate_size",
       .type = ValueType::kInteger,
       .keys = {"moe_intermediate_size"},
       .min = 1,
       .doc = "each routed expert's intermediate size"},
  };
  return specs;
}

const std::vector<ValueSpec>& shared_values() {
  static const std::vector<ValueSpec> specs = {
      {.name = "count",
       .type = ValueType::kInteger,
       .fallback = int64_t{1},
       .min = 0,
       .doc = "shared experts fused into one MLP (its intermediate size is count x "
              "intermediate_size); 0: none"},
      {.name = "intermediate_size",
       .type = ValueType::kInteger,
       .keys = {"shared_expert_intermediate_size", "moe_intermediate_size"},
       .min = 1,
       .doc = "one shared expert's intermediate size"},
  };
  return specs;
}

const std::vector<ValueSpec>& dense_values() {
  static const std::vector<ValueSpec> specs = {
      {.name = "intermediate_size",
       .type = ValueType::kInteger,
       .keys = {"intermediate_size"},
       .min = 1,
       .doc = "the dense MLP layers' intermediate size"},
  };
  return specs;
}

const std::vector<ValueSpec>& moe_layer_values() {
  static const std::vector<ValueSpec> specs = {
      {.name = "first",
       .type = ValueType::kInteger,
       .fallback = int64_t{0},
       .min = 0,
       .doc = "layers below this index are dense (first_k_dense_replace)"},
      {.name = "step",
       .type = ValueType::kInteger,
       .fallback = int64_t{1},
       .min = 1,
       .doc = "layer i is MoE only when (i + 1) % step == 0 (decoder_sparse_step)"},
      {.name = "dense",
       .type = ValueType::kIntegerList,
       .fallback = std::vector<int64_t>{},
       .doc = "layer indices that are dense whatever first and step say (mlp_only_layers)"},
  };
  return specs;
}

const ValueSpec& rotary_dim_value() {
  static const ValueSpec spec{
      .name = "rotary_dim",
      .type = ValueType::kInteger,
      .fallback = int64_t{0},
      .min = 0,
      .doc =
          "the rotated channels of each head (MiniMax-M2's rotary_dim) when config.json gives "
          "no partial_rotary_factor; both given must agree; 0: not given"};
  return spec;
}

std::shared_ptr<const Schema> rope_schema() {
  static const auto schema = std::make_shared<const Schema>(
      "rope",
      std::vector<Field>{
          {.name = "default_theta",
           .type = FieldType::kNumber,
           .default_value = 10000.0,
           .min = 0.0,
           .min_exclusive = true,
           .doc = "rope_theta when config.json gives none (type, scaling and theta are read from "
                  "rope_parameters / rope_scaling / rope_theta as for the built-in models)"},
          {.name = "default_partial_rotary_factor",
           .type = FieldType::kNumber,
           .min = 0.0,
           .max = 1.0,
           .min_exclusive = true,
           .doc = "the rotated fraction of each head when config.json gives no "
                  "partial_rotary_factor (GLM-4.5: 0.5); unset: 1"},
          value_field(rotary_dim_value()),
      });
  return schema;
}

std::shared_ptr<const Schema> attention_schema() {
  static const auto schema = value_schema(
      "attention", attention_values(),
      {Field{.name = "qk_norm_scope",
             .type = FieldType::kString,
             .default_value = std::string("per_head"),
             .choices = {"per_head", "full_width"},
             .doc = "what the q/k norm normalises: each head (Qwen3, GLM-4.5: weights [head_dim]) "
                    "or the whole projection before the heads are split (MiniMax-M2: weights "
                    "[heads * head_dim])"}});
  return schema;
}

const std::vector<std::string>& source_formats() {
  static const std::vector<std::string> formats = {"as_stored", "fp8_block_scaled"};
  return formats;
}

const ValueSpec& weight_block_size_value() {
  static const ValueSpec spec{
      .name = "weight_block_size",
      .type = ValueType::kIntegerList,
      .keys = {"quantization_config.weight_block_size"},
      .fallback = std::vector<int64_t>{128, 128},
      .min = 1,
      .doc = "fp8_block_scaled: [rows, cols] of each weight_scale_inv block"};
  return spec;
}

std::shared_ptr<const Schema> source_schema() {
  static const auto schema = value_schema(
      "source", {weight_block_size_value()},
      {Field{.name = "format",
             .type = FieldType::kString,
             .default_value = std::string("as_stored"),
             .choices = source_formats(),
             .doc = "as_stored: tensors are read as the checkpoint stores them; fp8_block_scaled: "
                    "each '<m>.weight' with a '<m>.weight_scale_inv' beside it is FP8 E4M3 "
                    "dequantized to bf16 per block (DeepSeek-V3, MiniMax-M2), the other tensors "
                    "read as stored (a bf16 release loads unchanged)"}});
  return schema;
}

std::shared_ptr<const Schema> types_schema() {
  auto field = [](const char* name, const char* doc) {
    return Field{.name = name, .type = FieldType::kString, .doc = doc};
  };
  static const auto schema = std::make_shared<const Schema>(
      "types",
      std::vector<Field>{
          field("router", "the router's type key; default <stem>Router"),
          field("experts", "the experts container's; default <stem>Experts"),
          field("mlp", "each expert's, the shared expert's and dense MLPs'; default <stem>MLP"),
          field("attention", "default <stem>Attention"),
          field("norm", "every RMSNorm's; default <stem>RMSNorm"),
          field("decoder_layer", "default <stem>DecoderLayer"),
      });
  return schema;
}

std::shared_ptr<const Schema> tensors_schema() {
  static const auto schema = std::make_shared<const Schema>(
      "tensors",
      std::vector<Field>{
          {.name = "router",
           .type = FieldType::kString,
           .required = true,
           .doc = "the router weight, '<block>.<router>.weight'; its parent is the MoE block"},
          {.name = "router_bias",
           .type = FieldType::kString,
           .doc = "sigmoid_topk: the score-correction bias (on the router or on the block); "
                  "required with sigmoid_topk, not allowed with softmax_topk"},
          {.name = "experts",
           .type = FieldType::kSection,
           .required = true,
           .section = mlp_tensors_schema("routed expert {expert}"),
           .doc = "'<experts>.{expert}.<projection>.weight' for gate, up and down"},
          {.name = "shared_experts",
           .type = FieldType::kSection,
           .section = mlp_tensors_schema("the shared expert"),
           .doc = "'<block>.<shared>.<projection>.weight' for gate, up and down; absent: no "
                  "shared expert"},
          {.name = "shared_expert_gate",
           .type = FieldType::kString,
           .doc = "the shared expert's sigmoid gate, '<block>.<shared>_gate.weight' (Qwen2-MoE)"},
          {.name = "dense_mlp",
           .type = FieldType::kSection,
           .section = mlp_tensors_schema("a dense layer's MLP"),
           .doc = "'<mlp>.<projection>.weight' for gate, up and down; required when a layer is "
                  "dense"},
      });
  return schema;
}

std::vector<Field> model_fields() {
  std::vector<Field> fields = {
      {.name = "architecture",
       .type = FieldType::kString,
       .required = true,
       .doc = "config.json's architectures[0], the architecture registry's key"},
      {.name = "description",
       .type = FieldType::kString,
       .default_value = std::string(""),
       .doc = "one line for moeq plugins and moeq inspect"},
      {.name = "moe_block_type",
       .type = FieldType::kString,
       .required = true,
       .doc = "the MoE block's module type (the Hugging Face class name); the easy-tier adapter "
              "is registered under it"},
      {.name = "types",
       .type = FieldType::kSection,
       .section = types_schema(),
       .doc = "the other modules' type keys; <stem> is the architecture without ForCausalLM"},
      {.name = "rope",
       .type = FieldType::kSection,
       .section = rope_schema(),
       .doc = "RoPE defaults"},
      {.name = "attention",
       .type = FieldType::kSection,
       .section = attention_schema(),
       .doc = "the attention's options (GQA from num_attention_heads, num_key_value_heads, "
              "head_dim)"},
      {.name = "source",
       .type = FieldType::kSection,
       .section = source_schema(),
       .doc = "how the checkpoint stores the weights"},
      {.name = "router",
       .type = FieldType::kSection,
       .required = true,
       .section =
           value_schema("router", router_values(),
                        {Field{.name = "kind",
                               .type = FieldType::kString,
                               .required = true,
                               .choices = {"softmax_topk", "sigmoid_topk"},
                               .doc = "softmax_topk (Mixtral, Qwen) or sigmoid_topk with a "
                                      "correction bias (DeepSeek-V3, GLM-4.5, MiniMax-M2)"}}),
       .doc = "the router"},
      {.name = "experts",
       .type = FieldType::kSection,
       .section = value_schema("experts", experts_values()),
       .doc = "the routed experts"},
      {.name = "shared_experts",
       .type = FieldType::kSection,
       .section = value_schema("shared_experts", shared_values()),
       .doc = "the shared expert (with tensors.shared_experts)"},
      {.name = "dense_mlp",
       .type = FieldType::kSection,
       .section = value_schema("dense_mlp", dense_values()),
       .doc = "the dense layers' MLP"},
      {.name = "moe_layers",
       .type = FieldType::kSection,
       .section = value_schema("moe_layers", moe_layer_values()),
       .doc = "which layers are MoE"},
      {.name = "tensors",
       .type = FieldType::kSection,
       .required = true,
       .section = tensors_schema(),
       .doc = "tensor name patterns: {layer} is the decoder layer's index, {expert} the expert's"},
      {.name = "requires",
       .type = FieldType::kAny,
       .doc = "config.json keys (dots reach into objects) mapped to the value, or list of values, "
              "the declaration implements; another value is an error when the model is built, a "
              "key absent or null in config.json passes"},
  };
  for (const auto& spec : model_values()) {
    fields.push_back(value_field(spec));
  }
  return fields;
}

// A section's fields, or its defaults when the section is absent.
ParsedFields section_or_empty(const ParsedFields& parent,
                              std::string_view name,
                              const std::shared_ptr<const Schema>& schema) {
  if (parent.has(name)) {
    return parent.section(name);
  }
  return parse_fields(parent.node().child(name), schema);
}

std::string stem(const std::string& architecture) {
  constexpr std::string_view kSuffix = "ForCausalLM";
  return architecture.ends_with(kSuffix) && architecture.size() > kSuffix.size()
             ? architecture.substr(0, architecture.size() - kSuffix.size())
             : architecture;
}

std::shared_ptr<const DeclaredModel> parse_model(const ConfigNode& node) {
  const ParsedFields f = parse_fields(node, declared_model_schema());
  auto m = std::make_shared<DeclaredModel>();
  m->where = node;
  m->architecture = f.string("architecture");
  m->description = f.string("description");
  m->moe_block_type = f.string("moe_block_type");
  if (f.given("requires")) {
    m->requirements = parse_requirements(f.where("requires"));
  }
  for (const auto& spec : model_values()) {
    Value v = parse_value(f, spec);
    if (spec.name == "rms_norm_eps") {
      m->rms_norm_eps = v;
    } else if (spec.name == "tie_word_embeddings") {
      m->tie_word_embeddings = v;
    } else if (spec.name == "activation") {
      m->activation = v;
    } else {
      m->excluded_layers = v;
    }
  }

  const std::string s = stem(m->architecture);
  const ParsedFields types = section_or_empty(f, "types", types_schema());
  auto type = [&](const char* key, const std::string& fallback) {
    return types.given(key) ? types.string(key) : fallback;
  };
  m->types = Types{type("router", s + "Router"), type("experts", s + "Experts"),
                   type("mlp", s + "MLP"),       type("attention", s + "Attention"),
                   type("norm", s + "RMSNorm"),  type("decoder_layer", s + "DecoderLayer")};

  const ParsedFields rope = section_or_empty(f, "rope", rope_schema());
  m->default_theta = rope.number("default_theta");
  if (rope.given("default_partial_rotary_factor")) {
    m->default_partial_rotary_factor = rope.number("default_partial_rotary_factor");
  }
  m->rotary_dim = parse_value(rope, rotary_dim_value());

  const ParsedFields attention = section_or_empty(f, "attention", attention_schema());
  m->qkv_bias = parse_value(attention, spec(attention_values(), "qkv_bias"));
  m->o_bias = parse_value(attention, spec(attention_values(), "o_bias"));
  m->qk_norm = parse_value(attention, spec(attention_values(), "qk_norm"));
  m->qk_norm_scope = attention.string("qk_norm_scope") == "full_width"
                         ? runtime::QkNormScope::kFullWidth
                         : runtime::QkNormScope::kPerHead;
  m->sliding_window = parse_value(attention, spec(attention_values(), "sliding_window"));

  const ParsedFields source = section_or_empty(f, "source", source_schema());
  m->fp8_block_scaled = source.string("format") == "fp8_block_scaled";
  if (!m->fp8_block_scaled && source.given("weight_block_size")) {
    source.where("weight_block_size")
        .fail(fmt::format("only used with format 'fp8_block_scaled' (format is '{}')",
                          source.string("format")));
  }
  m->weight_block_size = parse_value(source, weight_block_size_value());
  if (const auto* block = std::get_if<std::vector<int64_t>>(&m->weight_block_size.literal);
      block != nullptr && block->size() != 2) {
    const ConfigNode at = m->weight_block_size.where.node.IsMap()
                              ? m->weight_block_size.where.child("default")
                              : m->weight_block_size.where;
    at.fail(fmt::format("expected [rows, cols], got {} values", block->size()));
  }

  const ParsedFields& router = f.section("router");
  m->router_where = router.node();
  m->sigmoid = router.string("kind") == "sigmoid_topk";
  const auto& wrong = m->sigmoid ? softmax_only() : sigmoid_only();
  for (const auto& name : wrong) {
    if (router.given(name)) {
      router.where(name).fail(fmt::format("only used with kind '{}' (kind is '{}')",
                                          m->sigmoid ? "softmax_topk" : "sigmoid_topk",
                                          router.string("kind")));
    }
  }
  auto router_value = [&](const char* name) {
    return parse_value(router, spec(router_values(), name));
  };
  m->num_experts = router_value("num_experts");
  m->top_k = router_value("top_k");
  m->normalize_topk = router_value("normalize_topk");
  m->weights_in_compute_dtype = router_value("weights_in_compute_dtype");
  m->n_group = router_value("n_group");
  m->topk_group = router_value("topk_group");
  m->norm_topk_prob = router_value("norm_topk_prob");
  m->norm_eps = router_value("norm_eps");
  m->routed_scaling_factor = router_value("routed_scaling_factor");
  m->logits_in_fp32 = router_value("logits_in_fp32");

  const ParsedFields experts =
      section_or_empty(f, "experts", value_schema("experts", experts_values()));
  m->expert_intermediate = parse_value(experts, experts_values()[0]);
  const ParsedFields shared =
      section_or_empty(f, "shared_experts", value_schema("shared_experts", shared_values()));
  m->shared_count = parse_value(shared, spec(shared_values(), "count"));
  m->shared_intermediate = parse_value(shared, spec(shared_values(), "intermediate_size"));
  const ParsedFields dense =
      section_or_empty(f, "dense_mlp", value_schema("dense_mlp", dense_values()));
  m->dense_intermediate = parse_value(dense, dense_values()[0]);
  const ParsedFields moe_layers =
      section_or_empty(f, "moe_layers", value_schema("moe_layers", moe_layer_values()));
  m->first_moe_layer = parse_value(moe_layers, spec(moe_layer_values(), "first"));
  m->moe_layer_step = parse_value(moe_layers, spec(moe_layer_values(), "step"));
  m->dense_layers = parse_value(moe_layers, spec(moe_layer_values(), "dense"));

  // Tensor names.
  const ParsedFields& tensors = f.section("tensors");
  {
    const ConfigNode at = tensors.where("router");
    const std::string& text = tensors.string("router");
    check_pattern(at, text, false);
    m->router_module = strip_weight(at, text, "the router's");
    m->block = split_last(m->router_module).first;
    if (m->block.size() + 1 <= kLayerPrefix.size()) {
      at.fail(
          fmt::format("'{}': the router must be inside the MoE block "
                      "('model.layers.{{layer}}.<block>.<router>.weight')",
                      text));
    }
  }
  if (tensors.given("router_bias")) {
    const ConfigNode at = tensors.where("router_bias");
    if (!m->sigmoid) {
      at.fail(fmt::format("only used with router kind 'sigmoid_topk' (kind is '{}')",
                          router.string("kind")));
    }
    const std::string& text = tensors.string("router_bias");
    check_pattern(at, text, false);
    if (text != m->router_module + ".e_score_correction_bias") {
      m->router_bias = text;
    }
  } else if (m->sigmoid) {
    tensors.node().fail(
        "missing required field 'router_bias' (router kind 'sigmoid_topk' reads a "
        "score-correction bias)");
  }
  m->experts = parse_mlp_names(tensors.section("experts"), true);

  m->shared = tensors.has("shared_experts");
  if (m->shared) {
    MlpNames names = parse_mlp_names(tensors.section("shared_experts"), false);
    const std::string prefix = m->block + ".";
    if (!names.module.starts_with(prefix) || names.module.size() == prefix.size()) {
      tensors.section("shared_experts")
          .where("gate")
          .fail(fmt::format("'{}' must be inside the MoE block '{}' (the router's parent)",
                            tensors.section("shared_experts").string("gate"), m->block));
    }
    names.module = names.module.substr(prefix.size());
    m->shared_names = names;
  } else if (f.given("shared_experts")) {
    f.where("shared_experts").fail("declared without tensors.shared_experts");
  }
  if (tensors.given("shared_expert_gate")) {
    const ConfigNode at = tensors.where("shared_expert_gate");
    const std::string& text = tensors.string("shared_expert_gate");
    if (!m->shared) {
      at.fail("declared without tensors.shared_experts");
    }
    const std::string expected = fmt::format("{}.{}_gate.weight", m->block, m->shared_names.module);
    if (text != expected) {
      at.fail(fmt::format("'{}' must be '{}' (the runtime names the gate after the shared expert)",
                          text, expected));
    }
    m->shared_gate = true;
  }
  if (tensors.has("dense_mlp")) {
    m->dense = parse_mlp_names(tensors.section("dense_mlp"), false);
    m->dense_where = tensors.where("dense_mlp");
  } else {
    m->dense_where = tensors.node();
  }
  return m;
}

// ---- the builder ----------------------------------------------------------------------------

std::unique_ptr<runtime::CausalLM> build_declared(const DeclaredModel& m,
                                                  const io::HfConfig& config,
                                                  std::shared_ptr<runtime::WeightSource> weights,
                                                  const runtime::RuntimeOptions& options) {
  using runtime::AttentionOptions, runtime::CausalLM, runtime::CausalLMConfig,
      runtime::DecoderLayer;
  using runtime::GatedMlp, runtime::GatedMlpOptions, runtime::PerExpertMlps, runtime::RMSNorm;
  using runtime::RotaryEmbedding, runtime::SigmoidTopKOptions, runtime::SigmoidTopKRouter;
  using runtime::SoftmaxTopKOptions, runtime::SoftmaxTopKRouter, runtime::SparseMoeBlock;
  using runtime::SparseMoeOptions, runtime::Attention;
  // First: a variant the declaration does not implement is named as such, not as whatever
  // reading its other keys would trip over.
  check_requirements(m.requirements, config);
  const auto hidden = config.get<int64_t>("hidden_size");
  const auto num_layers = config.get<int64_t>("num_hidden_layers");
  const auto heads = config.get<int64_t>("num_attention_heads");
  const auto head_dim = runtime::model_config::head_dim(config);
  const auto eps = resolve<double>(m.rms_norm_eps, config);

  const auto act = resolve<std::string>(m.activation, config);
  if (act != "silu") {
    m.activation.where.fail(
        fmt::format("activation '{}' (from {}) is not supported (supported: silu)", act,
                    source_of(m.activation, config)));
  }
  const auto activation = Activation::kSilu;

  CausalLMConfig lm;
  lm.vocab_size = config.get<int64_t>("vocab_size");
  lm.hidden_size = hidden;
  lm.num_layers = num_layers;
  lm.rms_norm_eps = eps;
  lm.tie_word_embeddings = resolve<bool>(m.tie_word_embeddings, config);
  lm.norm_type = m.types.norm;
  if (m.fp8_block_scaled) {
    const auto block = resolve<std::vector<int64_t>>(m.weight_block_size, config);
    if (block.size() != 2 || block[0] < 1 || block[1] < 1) {
      m.weight_block_size.where.fail(
          fmt::format("{} must be [rows, cols] of positive integers, got [{}]",
                      source_of(m.weight_block_size, config), fmt::join(block, ", ")));
    }
    weights = runtime::dequantize_fp8_blocks(std::move(weights), block[0], block[1],
                                             options.placement.device);
  }
  auto model = std::make_unique<CausalLM>(m.architecture, lm, std::move(weights), options);
  const auto excluded = resolve<int64_t>(m.excluded_layers, config);
  if (excluded < 0) {
    m.excluded_layers.where.fail(fmt::format("must be >= 0, got {} (from {})", excluded,
                                             source_of(m.excluded_layers, config)));
  }
  for (int64_t i = 0; i < excluded; ++i) {
    model->exclude_prefix(fmt::format("model.layers.{}", num_layers + i));
  }

  auto rope = runtime::model_config::rope_options(config, head_dim, m.default_theta);
  const bool factor_given = config.contains("partial_rotary_factor") ||
                            config.contains("rope_parameters.partial_rotary_factor") ||
                            config.contains("rope_scaling.partial_rotary_factor");
  if (const auto rotary_dim = resolve<int64_t>(m.rotary_dim, config); rotary_dim != 0) {
    if (rotary_dim < 0 || rotary_dim > head_dim || rotary_dim % 2 != 0) {
      m.rotary_dim.where.fail(
          fmt::format("{} must be a positive even number <= head_dim {}, got {}",
                      source_of(m.rotary_dim, config), head_dim, rotary_dim));
    }
    const auto from_dim = static_cast<double>(rotary_dim) / static_cast<double>(head_dim);
    // The same agreement test as transformers' int(head_dim * partial_rotary_factor).
    if (factor_given && static_cast<int64_t>(static_cast<double>(head_dim) *
                                             rope.partial_rotary_factor) != rotary_dim) {
      m.rotary_dim.where.fail(
          fmt::format("{} {} disagrees with partial_rotary_factor {} (head_dim {}) in config '{}'",
                      source_of(m.rotary_dim, config), rotary_dim, rope.partial_rotary_factor,
                      head_dim, config.source()));
    }
    if (!factor_given) {
      rope.partial_rotary_factor = from_dim;
    }
  } else if (m.default_partial_rotary_factor && !factor_given) {
    rope.partial_rotary_factor = *m.default_partial_rotary_factor;
  }
  auto rotary = std::make_shared<const RotaryEmbedding>(rope);
  model->set_rotary(rotary);

  AttentionOptions attention;
  attention.hidden_size = hidden;
  attention.num_heads = heads;
  attention.num_kv_heads = config.get_or<int64_t>("num_key_value_heads", heads);
  attention.head_dim = head_dim;
  attention.qkv_bias = resolve<bool>(m.qkv_bias, config);
  attention.o_bias = resolve<bool>(m.o_bias, config);
  attention.qk_norm = resolve<bool>(m.qk_norm, config);
  attention.qk_norm_scope = m.qk_norm_scope;
  attention.qk_norm_type = m.types.norm;
  attention.qk_norm_eps = eps;
  attention.sliding_window = resolve<int64_t>(m.sliding_window, config);

  const auto num_experts = resolve<int64_t>(m.num_experts, config);
  const auto top_k = resolve<int64_t>(m.top_k, config);
  if (num_experts < 1 || top_k < 1 || top_k > num_experts) {
    m.router_where.fail(fmt::format("top_k {} (from {}) must be in [1, num_experts {} (from {})]",
                                    top_k, source_of(m.top_k, config), num_experts,
                                    source_of(m.num_experts, config)));
  }
  SoftmaxTopKOptions softmax;
  SigmoidTopKOptions sigmoid;
  if (m.sigmoid) {
    sigmoid.hidden_size = hidden;
    sigmoid.num_experts = num_experts;
    sigmoid.top_k = top_k;
    sigmoid.n_group = resolve<int64_t>(m.n_group, config);
    sigmoid.topk_group = resolve<int64_t>(m.topk_group, config);
    sigmoid.norm_topk_prob = resolve<bool>(m.norm_topk_prob, config);
    sigmoid.norm_eps = resolve<double>(m.norm_eps, config);
    sigmoid.routed_scaling_factor = resolve<double>(m.routed_scaling_factor, config);
    sigmoid.logits_in_fp32 = resolve<bool>(m.logits_in_fp32, config);
  } else {
    softmax.hidden_size = hidden;
    softmax.num_experts = num_experts;
    softmax.top_k = top_k;
    softmax.normalize_topk = resolve<bool>(m.normalize_topk, config);
    softmax.weights_in_compute_dtype = resolve<bool>(m.weights_in_compute_dtype, config);
  }

  GatedMlpOptions expert;
  expert.hidden_size = hidden;
  expert.intermediate_size = resolve<int64_t>(m.expert_intermediate, config);
  expert.activation = activation;
  expert.gate_name = m.experts.gate;
  expert.up_name = m.experts.up;
  expert.down_name = m.experts.down;

  SparseMoeOptions block;
  if (m.shared) {
    const auto n_shared = resolve<int64_t>(m.shared_count, config);
    if (n_shared < 0) {
      m.shared_count.where.fail(fmt::format("must be >= 0, got {} (from {})", n_shared,
                                            source_of(m.shared_count, config)));
    }
    block.shared_expert = n_shared > 0;
    block.shared_expert_gate = m.shared_gate;
    block.shared_expert_name = m.shared_names.module;
    block.shared_expert_type = m.types.mlp;
    block.shared_expert_options.hidden_size = hidden;
    block.shared_expert_options.intermediate_size =
        resolve<int64_t>(m.shared_intermediate, config) * n_shared;
    block.shared_expert_options.activation = activation;
    block.shared_expert_options.gate_name = m.shared_names.gate;
    block.shared_expert_options.up_name = m.shared_names.up;
    block.shared_expert_options.down_name = m.shared_names.down;
  }

  const auto first = resolve<int64_t>(m.first_moe_layer, config);
  if (first < 0 || first > num_layers) {
    m.first_moe_layer.where.fail(fmt::format("{} must be in [0, num_hidden_layers {}], got {}",
                                             source_of(m.first_moe_layer, config), num_layers,
                                             first));
  }
  const auto step = resolve<int64_t>(m.moe_layer_step, config);
  if (step < 1) {
    m.moe_layer_step.where.fail(
        fmt::format("{} must be >= 1, got {}", source_of(m.moe_layer_step, config), step));
  }
  const auto dense_layers = resolve<std::vector<int64_t>>(m.dense_layers, config);

  for (int64_t i = 0; i < num_layers; ++i) {
    const auto prefix = fmt::format("model.layers.{}", i);
    auto layer = std::make_unique<DecoderLayer>(m.types.decoder_layer, prefix, i);
    layer->set_input_layernorm(
        std::make_unique<RMSNorm>(m.types.norm, prefix + ".input_layernorm", hidden, eps));
    layer->set_attention(
        std::make_unique<Attention>(m.types.attention, prefix + ".self_attn", attention, rotary));
    layer->set_post_attention_layernorm(
        std::make_unique<RMSNorm>(m.types.norm, prefix + ".post_attention_layernorm", hidden, eps));
    const bool sparse =
        i >= first && (i + 1) % step == 0 &&
        std::find(dense_layers.begin(), dense_layers.end(), i) == dense_layers.end();
    if (sparse) {
      const auto name = expand(m.block, i);
      auto moe = std::make_unique<SparseMoeBlock>(m.moe_block_type, name, block);
      const auto router_name = expand(m.router_module, i);
      if (m.sigmoid) {
        auto options_i = sigmoid;
        options_i.bias_name = m.router_bias.empty() ? std::string() : expand(m.router_bias, i);
        moe->set_router(
            std::make_unique<SigmoidTopKRouter>(m.types.router, router_name, options_i));
      } else {
        moe->set_router(std::make_unique<SoftmaxTopKRouter>(m.types.router, router_name, softmax));
      }
      moe->set_experts(std::make_unique<PerExpertMlps>(m.types.experts, expand(m.experts.module, i),
                                                       num_experts, m.types.mlp, expert));
      layer->set_mlp(std::move(moe));
    } else {
      if (!m.dense) {
        m.dense_where.fail(fmt::format(
            "layer {} is dense (moe_layers: first {}, step {}) but tensors.dense_mlp is not "
            "declared",
            i, first, step));
      }
      GatedMlpOptions dense;
      dense.hidden_size = hidden;
      dense.intermediate_size = resolve<int64_t>(m.dense_intermediate, config);
      dense.activation = activation;
      dense.gate_name = m.dense->gate;
      dense.up_name = m.dense->up;
      dense.down_name = m.dense->down;
      layer->set_mlp(std::make_unique<GatedMlp>(m.types.mlp, expand(m.dense->module, i), dense));
    }
    model->add_layer(std::move(layer));
  }
  return model;
}

class DeclaredArchitecture final : public ArchitectureBuilder {
 public:
  explicit DeclaredArchitecture(std::shared_ptr<const DeclaredModel> model)
      : model_(std::move(model)) {}

  std::string key() const override { return model_->architecture; }
  std::string describe() const override {
    const std::string& d = model_->description;
    return fmt::format("{}{}declared in {}", d, d.empty() ? "" : "; ", model_->where.location());
  }
  std::unique_ptr<runtime::CausalLM> build(const io::HfConfig& config,
                                           std::shared_ptr<runtime::WeightSource> weights,
                                           const runtime::RuntimeOptions& options) const override {
    try {
      return build_declared(*model_, config, std::move(weights), options);
    } catch (const Error& e) {
      detail::throw_error(e.file(), e.line(),
                          fmt::format("model '{}' declared at {}: {}", model_->architecture,
                                      model_->where.location(), e.message()));
    }
  }

 private:
  std::shared_ptr<const DeclaredModel> model_;
};

bool valid_plugin_name(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
  });
}

}  // namespace

bool is_declared_plugin_path(std::string_view spec) {
  return spec.ends_with(".yaml") || spec.ends_with(".yml");
}

std::shared_ptr<const Schema> declared_model_schema() {
  static const auto schema = std::make_shared<const Schema>("declared model", model_fields());
  return schema;
}

std::shared_ptr<const Schema> declared_plugin_schema() {
  static const auto schema = std::make_shared<const Schema>(
      "declared plugin",
      std::vector<Field>{
          {.name = "name",
           .type = FieldType::kString,
           .required = true,
           .check = [](const std::string& text) -> std::string {
             return valid_plugin_name(text) ? "" : "a plugin name (letters, digits and '_')";
           },
           .doc = "the plugin's name, unique among the loaded plugins"},
          {.name = "version",
           .type = FieldType::kString,
           .default_value = std::string("0.0.0"),
           .doc = "the plugin's version, shown by moeq plugins"},
          {.name = "models",
           .type = FieldType::kMapList,
           .required = true,
           .doc = "the declared models, each registering an architecture and its MoE block's "
                  "easy-tier adapter"},
      });
  return schema;
}

DeclaredPlugin parse_declared_plugin(const ConfigNode& root) {
  const ParsedFields f = parse_fields(root, declared_plugin_schema());
  DeclaredPlugin plugin;
  plugin.root = root;
  plugin.name = f.string("name");
  plugin.version = f.string("version");
  const auto& models = f.nodes("models");
  if (models.empty()) {
    f.where("models").fail("declares no models");
  }
  for (const auto& node : models) {
    plugin.models.push_back(parse_model(node));
  }
  return plugin;
}

DeclaredPlugin load_declared_plugin(const fs::path& file) {
  return parse_declared_plugin(load_yaml_file(file.string()));
}

const std::string& declared_architecture(const DeclaredModel& model) {
  return model.architecture;
}

const std::string& declared_moe_block_type(const DeclaredModel& model) {
  return model.moe_block_type;
}

void register_declared_plugin(const DeclaredPlugin& plugin, PluginRegistrar& registrar) {
  for (const auto& model : plugin.models) {
    const std::string file = model->where.file;
    const SourceLocation at(file.c_str(), static_cast<int>(model->where.mark.line) + 1);
    registrar.add_architecture(
        model->architecture, [model] { return std::make_unique<DeclaredArchitecture>(model); }, at);
    registrar.add_module_adapter(model->moe_block_type,
                                 adapters::sparse_moe_adapter_factory(model->moe_block_type), at);
  }
}

}  // namespace moeq
