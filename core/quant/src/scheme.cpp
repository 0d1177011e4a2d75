#include "moeq/quant/scheme.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "moeq/core/error.h"

namespace moeq::quant {

namespace {

using nlohmann::json;

constexpr std::pair<CompressionFormat, std::string_view> kFormats[] = {
    {CompressionFormat::kDense, "dense"},
    {CompressionFormat::kIntQuantized, "int-quantized"},
    {CompressionFormat::kFloatQuantized, "float-quantized"},
    {CompressionFormat::kNaiveQuantized, "naive-quantized"},
    {CompressionFormat::kPackQuantized, "pack-quantized"},
    {CompressionFormat::kNvfp4PackQuantized, "nvfp4-pack-quantized"},
    {CompressionFormat::kMxfp4PackQuantized, "mxfp4-pack-quantized"},
    {CompressionFormat::kMxfp8Quantized, "mxfp8-quantized"},
    {CompressionFormat::kMixedPrecision, "mixed-precision"},
};

constexpr PresetInfo kPresets[] = {
    {"W4A16", "W4A16", "W4A16_AWQ"},
    {"W4A16_ASYM", "W4A16_ASYM", ""},
    {"W8A16", "W8A16", ""},
    {"W8A8-INT8", "W8A8", ""},
    {"W8A8-FP8", "FP8", "FP8"},
    {"W8A8-FP8-DYNAMIC", "FP8_DYNAMIC", "FP8_PER_CHANNEL_PER_TOKEN"},
    {"FP8-block", "FP8_BLOCK", ""},
    {"NVFP4", "NVFP4", "NVFP4"},
    {"NVFP4A16", "NVFP4A16", "W4A16_NVFP4"},
    {"MXFP4", "MXFP4", ""},
    {"MXFP4A16", "MXFP4A16", ""},
    {"MXFP8", "MXFP8", ""},
    {"W4A8-INT", "W4A8", ""},
    {"W4A8-FP8", "W4AFP8", ""},
};

// compressed-tensors' names that are not moeq's (INT8 is its alias of W8A8).
constexpr std::pair<std::string_view, std::string_view> kAliases[] = {
    {"INT8", "W8A8"},
};

std::string normalize(std::string_view name) {
  std::string out(name);
  for (char& c : out) {
    c = c == '-' ? '_' : static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  }
  return out;
}

QuantArgs make_args(int num_bits,
                    QuantType type,
                    Strategy strategy,
                    std::optional<int64_t> group_size = std::nullopt,
                    DynamicMode dynamic = DynamicMode::kStatic,
                    bool symmetric = true) {
  QuantArgs args;
  args.num_bits = num_bits;
  args.type = type;
  args.strategy = strategy;
  args.group_size = group_size;
  args.dynamic = dynamic;
  args.symmetric = symmetric;
  return args;
}

QuantArgs int_weights(int bits, bool symmetric = true) {
  return make_args(bits, QuantType::kInt, Strategy::kGroup, 128, DynamicMode::kStatic, symmetric);
}

QuantArgs nvfp4_args(DynamicMode dynamic) {
  QuantArgs args = make_args(4, QuantType::kFloat, Strategy::kTensorGroup, 16, dynamic);
  args.scale_dtype = at::kFloat8_e4m3fn;
  args.zp_dtype = at::kFloat8_e4m3fn;
  if (dynamic == DynamicMode::kLocal) {
    args.observer = "static_minmax";
  }
  return args;
}

QuantArgs mx_args(int bits, DynamicMode dynamic) {
  QuantArgs args = make_args(bits, QuantType::kFloat, Strategy::kGroup, 32, dynamic);
  args.scale_dtype = at::kByte;
  args.zp_dtype = at::kByte;
  return args;
}

// The presets of compressed-tensors 0.20.0 (quantization/quant_scheme.py), field for field.
QuantScheme build_preset(std::string_view ct_name) {
  using enum Strategy;
  constexpr auto kInt = QuantType::kInt;
  constexpr auto kFloat = QuantType::kFloat;
  QuantScheme scheme;
  if (ct_name == "W4A16") {
    scheme.weights = int_weights(4);
  } else if (ct_name == "W4A16_ASYM") {
    scheme.weights = int_weights(4, /*symmetric=*/false);
  } else if (ct_name == "W8A16") {
    scheme.weights = int_weights(8);
  } else if (ct_name == "W8A8") {
    scheme.weights = make_args(8, kInt, kChannel);
    scheme.input_activations = make_args(8, kInt, kToken, std::nullopt, DynamicMode::kDynamic);
  } else if (ct_name == "W4A8") {
    scheme.weights = int_weights(4);
    scheme.input_activations = make_args(8, kInt, kToken, std::nullopt, DynamicMode::kDynamic);
  } else if (ct_name == "W4AFP8") {
    scheme.weights = int_weights(4);
    scheme.input_activations = make_args(8, kFloat, kToken, std::nullopt, DynamicMode::kDynamic);
  } else if (ct_name == "FP8") {
    scheme.weights = make_args(8, kFloat, kTensor);
    scheme.input_activations = make_args(8, kFloat, kTensor);
    scheme.input_activations->observer = "static_minmax";
  } else if (ct_name == "FP8_DYNAMIC") {
    scheme.weights = make_args(8, kFloat, kChannel);
    scheme.input_activations = make_args(8, kFloat, kToken, std::nullopt, DynamicMode::kDynamic);
  } else if (ct_name == "FP8_BLOCK") {
    scheme.weights = make_args(8, kFloat, kBlock);
    scheme.weights->block_structure = std::array<int64_t, 2>{128, 128};
    scheme.input_activations = make_args(8, kFloat, kGroup, 128, DynamicMode::kDynamic);
  } else if (ct_name == "NVFP4A16") {
    scheme.weights = nvfp4_args(DynamicMode::kStatic);
  } else if (ct_name == "NVFP4") {
    scheme.weights = nvfp4_args(DynamicMode::kStatic);
    scheme.input_activations = nvfp4_args(DynamicMode::kLocal);
  } else if (ct_name == "MXFP4A16") {
    scheme.weights = mx_args(4, DynamicMode::kStatic);
  } else if (ct_name == "MXFP4") {
    scheme.weights = mx_args(4, DynamicMode::kStatic);
    scheme.input_activations = mx_args(4, DynamicMode::kDynamic);
  } else if (ct_name == "MXFP8") {
    scheme.weights = mx_args(8, DynamicMode::kStatic);
    scheme.input_activations = mx_args(8, DynamicMode::kDynamic);
  } else {
    MOEQ_INTERNAL_ASSERT(false, "no definition for preset '{}'", ct_name);
  }
  return scheme;
}

std::optional<QuantArgs> parse_optional_args(const json& value) {
  if (value.is_null()) {
    return std::nullopt;
  }
  return QuantArgs::from_json(value);
}

json args_or_null(const std::optional<QuantArgs>& args) {
  return args ? args->to_json() : json(nullptr);
}

}  // namespace

std::string_view to_string(CompressionFormat format) {
  for (const auto& [value, name] : kFormats) {
    if (value == format) {
      return name;
    }
  }
  MOEQ_INTERNAL_ASSERT(false, "unknown compression format {}", static_cast<int>(format));
  return {};
}

CompressionFormat parse_compression_format(std::string_view text) {
  for (const auto& [value, name] : kFormats) {
    if (name == text) {
      return value;
    }
  }
  std::string known;
  for (const auto& [value, name] : kFormats) {
    known += known.empty() ? "" : ", ";
    known += name;
  }
  MOEQ_FAIL("unknown compression format '{}': moeq writes {}", text, known);
}

QuantScheme& QuantScheme::validate() {
  for (auto* args : {&weights, &input_activations, &output_activations}) {
    if (*args) {
      (*args)->validate();
    }
  }
  if (input_activations) {
    const Strategy s = input_activations->resolved_strategy();
    MOEQ_CHECK(s == Strategy::kToken || s == Strategy::kTensor || s == Strategy::kGroup ||
                   s == Strategy::kTensorGroup || s == Strategy::kAttnHead,
               "strategy '{}' is not supported for activation quantization (token, tensor, group, "
               "tensor_group or attn_head)",
               to_string(s));
  }
  MOEQ_CHECK(format != CompressionFormat::kMixedPrecision,
             "mixed-precision cannot be the format of one scheme: it describes a whole model");
  return *this;
}

QuantScheme QuantScheme::from_json(const json& value) {
  MOEQ_CHECK(value.is_object(), "quantization scheme must be a JSON object, got {}", value.dump());
  QuantScheme scheme;
  bool has_targets = false;
  for (const auto& [key, item] : value.items()) {
    if (key == "targets") {
      MOEQ_CHECK(item.is_array(), "scheme 'targets' must be a list of strings, got {}",
                 item.dump());
      for (const auto& target : item) {
        MOEQ_CHECK(target.is_string(), "scheme 'targets' must be a list of strings, got {}",
                   item.dump());
        scheme.targets.push_back(target.get<std::string>());
      }
      has_targets = true;
    } else if (key == "weights") {
      scheme.weights = parse_optional_args(item);
    } else if (key == "input_activations") {
      scheme.input_activations = parse_optional_args(item);
    } else if (key == "output_activations") {
      scheme.output_activations = parse_optional_args(item);
    } else if (key == "format") {
      if (!item.is_null()) {
        MOEQ_CHECK(item.is_string(), "scheme 'format' must be a string, got {}", item.dump());
        scheme.format = parse_compression_format(item.get<std::string>());
      }
    } else {
      MOEQ_FAIL(
          "unknown key '{}' in quantization scheme (known: targets, weights, input_activations, "
          "output_activations, format)",
          key);
    }
  }
  MOEQ_CHECK(has_targets, "quantization scheme needs 'targets'");
  scheme.validate();
  return scheme;
}

json QuantScheme::to_json() const {
  json out = json::object();
  out["targets"] = targets;
  out["weights"] = args_or_null(weights);
  out["input_activations"] = args_or_null(input_activations);
  out["output_activations"] = args_or_null(output_activations);
  out["format"] = format ? json(std::string(to_string(*format))) : json(nullptr);
  return out;
}

CompressionFormat QuantScheme::compression_format() const {
  return format ? *format : infer_format(*this);
}

CompressionFormat infer_format(const QuantScheme& scheme) {
  if (!scheme.weights) {
    return CompressionFormat::kDense;
  }
  const QuantArgs& w = *scheme.weights;
  const auto& in = scheme.input_activations;
  if (w.is_fp4() && w.group_size == 32) {
    return CompressionFormat::kMxfp4PackQuantized;
  }
  if (w.is_fp8() && w.group_size == 32 && w.scale_dtype == at::kByte) {
    return CompressionFormat::kMxfp8Quantized;
  }
  if (w.is_fp4() && w.group_size == 16) {
    return CompressionFormat::kNvfp4PackQuantized;
  }
  if (in && w.type == QuantType::kInt) {
    return CompressionFormat::kIntQuantized;
  }
  if (w.type == QuantType::kInt && w.num_bits >= 1 && w.num_bits <= 8 &&
      !(in && in->type == QuantType::kFloat)) {
    return CompressionFormat::kPackQuantized;
  }
  if (in && w.type == QuantType::kFloat) {
    return CompressionFormat::kFloatQuantized;
  }
  return CompressionFormat::kNaiveQuantized;
}

std::span<const PresetInfo> preset_schemes() {
  return kPresets;
}

const PresetInfo& find_preset(std::string_view name) {
  std::string key = normalize(name);
  for (const auto& [alias, target] : kAliases) {
    if (key == alias) {
      key = target;
    }
  }
  for (const PresetInfo& preset : kPresets) {
    if (normalize(preset.name) == key || normalize(preset.ct_preset) == key) {
      return preset;
    }
  }
  std::string known;
  for (const PresetInfo& preset : kPresets) {
    known += known.empty() ? "" : ", ";
    known += preset.name;
  }
  MOEQ_FAIL("unknown quantization scheme '{}': known schemes are {}", name, known);
}

bool is_preset_scheme(std::string_view name) {
  try {
    find_preset(name);
    return true;
  } catch (const Error&) {
    return false;
  }
}

QuantScheme preset_scheme(std::string_view name, std::vector<std::string> targets) {
  QuantScheme scheme = build_preset(find_preset(name).ct_preset);
  scheme.targets = std::move(targets);
  scheme.validate();
  return scheme;
}

std::optional<std::string_view> modelopt_quant_algo(const QuantScheme& scheme) {
  if (!scheme.weights || scheme.output_activations) {
    return std::nullopt;
  }
  const QuantArgs& w = *scheme.weights;
  const auto& in = scheme.input_activations;
  const Strategy ws = w.resolved_strategy();
  if (w.is_nvfp4()) {
    if (!in) {
      return "W4A16_NVFP4";
    }
    return in->is_nvfp4() ? std::optional<std::string_view>("NVFP4") : std::nullopt;
  }
  if (w.is_fp8() && !w.is_mx() && in && in->is_fp8()) {
    const Strategy is = in->resolved_strategy();
    if (ws == Strategy::kTensor && is == Strategy::kTensor && !in->is_dynamic()) {
      return "FP8";
    }
    if (ws == Strategy::kChannel && is == Strategy::kToken && in->is_dynamic()) {
      return "FP8_PER_CHANNEL_PER_TOKEN";
    }
    return std::nullopt;
  }
  if (w.type == QuantType::kInt && w.num_bits == 4 && w.symmetric && ws == Strategy::kGroup &&
      !in) {
    return "W4A16_AWQ";
  }
  return std::nullopt;
}

}  // namespace moeq::quant
