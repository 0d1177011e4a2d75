#include "moeq/quant/quant_args.h"

#include <algorithm>
#include <cctype>
#include <utility>

#include "moeq/core/error.h"
#include "moeq/quant/observer.h"

namespace moeq::quant {

namespace {

using nlohmann::json;

std::string lower(std::string_view text) {
  std::string out(text);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

constexpr std::pair<Strategy, std::string_view> kStrategies[] = {
    {Strategy::kTensor, "tensor"},      {Strategy::kChannel, "channel"},
    {Strategy::kGroup, "group"},        {Strategy::kBlock, "block"},
    {Strategy::kToken, "token"},        {Strategy::kTensorGroup, "tensor_group"},
    {Strategy::kAttnHead, "attn_head"},
};

// torch's names for the dtypes compressed-tensors may serialize (str(torch.dtype)).
constexpr std::pair<at::ScalarType, std::string_view> kDtypes[] = {
    {at::kFloat, "float32"},
    {at::kHalf, "float16"},
    {at::kBFloat16, "bfloat16"},
    {at::kDouble, "float64"},
    {at::kFloat8_e4m3fn, "float8_e4m3fn"},
    {at::kFloat8_e5m2, "float8_e5m2"},
    {at::ScalarType::Float8_e8m0fnu, "float8_e8m0fnu"},
    {at::kByte, "uint8"},
    {at::kChar, "int8"},
    {at::kShort, "int16"},
    {at::kInt, "int32"},
    {at::kLong, "int64"},
    {at::kBool, "bool"},
};

// Aliases torch accepts as attributes (torch.float is torch.float32, ...).
constexpr std::pair<std::string_view, at::ScalarType> kDtypeAliases[] = {
    {"float", at::kFloat}, {"half", at::kHalf}, {"double", at::kDouble},
    {"int", at::kInt},     {"long", at::kLong}, {"short", at::kShort},
};

std::string strategy_list() {
  std::string out;
  for (const auto& [value, name] : kStrategies) {
    out += out.empty() ? "" : ", ";
    out += name;
  }
  return out;
}

std::string describe(const std::optional<int64_t>& value) {
  return value ? std::to_string(*value) : "null";
}

// block_structure: [rows, cols] of positive ints, or the legacy string "RxC".
std::array<int64_t, 2> parse_block_structure(const json& value) {
  auto fail = [&]() -> std::array<int64_t, 2> {
    MOEQ_FAIL("invalid block_structure {}: must be a list of two positive ints [rows, cols]",
              value.dump());
  };
  std::vector<int64_t> dims;
  if (value.is_string()) {
    const std::string text = value.get<std::string>();
    size_t start = 0;
    while (start <= text.size()) {
      const size_t end = std::min(text.find('x', start), text.size());
      const std::string part = text.substr(start, end - start);
      if (part.empty() || !std::all_of(part.begin(), part.end(), ::isdigit) || part.size() > 12) {
        return fail();
      }
      dims.push_back(std::stoll(part));
      start = end + 1;
    }
  } else if (value.is_array()) {
    for (const auto& item : value) {
      if (!item.is_number_integer()) {
        return fail();
      }
      dims.push_back(item.get<int64_t>());
    }
  } else {
    return fail();
  }
  if (dims.size() != 2 || dims[0] <= 0 || dims[1] <= 0) {
    return fail();
  }
  return {dims[0], dims[1]};
}

int64_t get_int(const json& value, std::string_view key) {
  MOEQ_CHECK(value.is_number_integer(), "quantization args: '{}' must be an integer, got {}", key,
             value.dump());
  return value.get<int64_t>();
}

bool get_bool(const json& value, std::string_view key) {
  MOEQ_CHECK(value.is_boolean(), "quantization args: '{}' must be true or false, got {}", key,
             value.dump());
  return value.get<bool>();
}

std::string get_string(const json& value, std::string_view key) {
  MOEQ_CHECK(value.is_string(), "quantization args: '{}' must be a string, got {}", key,
             value.dump());
  return value.get<std::string>();
}

// compressed-tensors 0.20.0 accepts actorder null/false, "weight" (alias "static"), and rejects
// true / "group" / "dynamic" (removed). moeq implements no activation ordering (a GPTQ option),
// so only null and false are accepted.
void check_actorder(const json& value) {
  if (value.is_null() || (value.is_boolean() && !value.get<bool>())) {
    return;
  }
  MOEQ_CHECK(!value.is_boolean(),
             "actorder=true previously meant actorder='group', which compressed-tensors has "
             "removed; use actorder=null");
  MOEQ_CHECK(value.is_string(), "invalid actorder {}: expected null", value.dump());
  const std::string text = lower(value.get<std::string>());
  MOEQ_CHECK(text != "group" && text != "dynamic",
             "actorder='{}' has been removed from compressed-tensors; use actorder=null",
             value.get<std::string>());
  MOEQ_CHECK(text != "weight" && text != "static",
             "actorder='{}' is not supported: moeq implements no activation ordering; use "
             "actorder=null",
             value.get<std::string>());
  MOEQ_FAIL("invalid actorder '{}': expected null", value.get<std::string>());
}

DynamicMode parse_dynamic(const json& value) {
  if (value.is_boolean()) {
    return value.get<bool>() ? DynamicMode::kDynamic : DynamicMode::kStatic;
  }
  MOEQ_CHECK(value.is_string() && lower(value.get<std::string>()) == "local",
             "invalid dynamic {}: expected false, true or \"local\"", value.dump());
  return DynamicMode::kLocal;
}

}  // namespace

std::string_view to_string(QuantType type) {
  return type == QuantType::kInt ? "int" : "float";
}

std::string_view to_string(Strategy strategy) {
  for (const auto& [value, name] : kStrategies) {
    if (value == strategy) {
      return name;
    }
  }
  MOEQ_INTERNAL_ASSERT(false, "unknown strategy {}", static_cast<int>(strategy));
  return {};
}

QuantType parse_quant_type(std::string_view text) {
  const std::string name = lower(text);
  if (name == "int") {
    return QuantType::kInt;
  }
  MOEQ_CHECK(name == "float", "invalid quantization type '{}': expected 'int' or 'float'", text);
  return QuantType::kFloat;
}

Strategy parse_strategy(std::string_view text) {
  const std::string name = lower(text);
  for (const auto& [value, known] : kStrategies) {
    if (known == name) {
      return value;
    }
  }
  MOEQ_FAIL("invalid strategy '{}': expected one of {}", text, strategy_list());
}

std::string dtype_to_string(at::ScalarType dtype) {
  for (const auto& [value, name] : kDtypes) {
    if (value == dtype) {
      return "torch." + std::string(name);
    }
  }
  MOEQ_FAIL("dtype {} has no compressed-tensors name", c10::toString(dtype));
}

at::ScalarType parse_dtype(std::string_view text) {
  std::string_view name = text;
  if (name.starts_with("torch.")) {
    name.remove_prefix(6);
  }
  for (const auto& [value, known] : kDtypes) {
    if (known == name) {
      return value;
    }
  }
  for (const auto& [alias, value] : kDtypeAliases) {
    if (alias == name) {
      return value;
    }
  }
  MOEQ_FAIL("no such torch dtype 'torch.{}'", name);
}

Strategy QuantArgs::resolved_strategy() const {
  MOEQ_INTERNAL_ASSERT(strategy.has_value(), "QuantArgs used before validate()");
  return *strategy;
}

at::ScalarType QuantArgs::storage_dtype() const {
  if (type == QuantType::kFloat) {
    MOEQ_CHECK(num_bits == 8,
               "float quantization stores only 8-bit values in a torch dtype, got "
               "num_bits {}",
               num_bits);
    return at::kFloat8_e4m3fn;
  }
  if (num_bits <= 8) {
    return at::kChar;
  }
  return num_bits <= 16 ? at::kShort : at::kInt;
}

at::ScalarType QuantArgs::zero_point_dtype() const {
  if (zp_dtype) {
    return *zp_dtype;
  }
  if (type == QuantType::kFloat && (num_bits == 4 || num_bits == 6)) {
    return at::kFloat8_e4m3fn;
  }
  return storage_dtype();
}

std::string QuantArgs::observer_name() const {
  return observer ? *observer : "minmax";
}

bool QuantArgs::is_nvfp4() const {
  return is_fp4() && strategy == Strategy::kTensorGroup && group_size == 16;
}

bool QuantArgs::is_mx() const {
  return type == QuantType::kFloat && group_size == 32 && scale_dtype == at::kByte &&
         (num_bits == 4 || num_bits == 8);
}

bool QuantArgs::operator==(const QuantArgs& other) const {
  return num_bits == other.num_bits && type == other.type && symmetric == other.symmetric &&
         group_size == other.group_size && strategy == other.strategy &&
         block_structure == other.block_structure && dynamic == other.dynamic &&
         scale_dtype == other.scale_dtype && zp_dtype == other.zp_dtype &&
         observer == other.observer && observer_kwargs == other.observer_kwargs;
}

QuantArgs& QuantArgs::validate() {
  // ---- compressed-tensors' rules (QuantizationArgs validators, in their order) ----
  MOEQ_CHECK(!group_size || *group_size >= -1,
             "invalid group_size {}: use group_size > 0 for strategy 'group' and -1 for "
             "'channel'",
             *group_size);
  if (block_structure) {
    MOEQ_CHECK((*block_structure)[0] > 0 && (*block_structure)[1] > 0,
               "invalid block_structure [{}, {}]: must be a list of two positive ints "
               "[rows, cols]",
               (*block_structure)[0], (*block_structure)[1]);
  }
  if (!strategy) {
    if (!group_size) {
      strategy = Strategy::kTensor;
    } else if (*group_size > 0) {
      strategy = Strategy::kGroup;
    } else {
      MOEQ_CHECK(*group_size == -1,
                 "invalid group_size {}: use group_size > 0 for strategy 'group' and -1 for "
                 "'channel'",
                 *group_size);
      strategy = Strategy::kChannel;
    }
  }
  const Strategy s = *strategy;
  const std::string_view name = to_string(s);
  MOEQ_CHECK(s != Strategy::kToken || dynamic != DynamicMode::kStatic,
             "strategy 'token' requires dynamic=true: static token quantization is not possible");
  if (s == Strategy::kGroup || s == Strategy::kTensorGroup) {
    MOEQ_CHECK(group_size && *group_size > 0,
               "strategy '{}' requires a positive group_size, got {}", name, describe(group_size));
  }
  MOEQ_CHECK(
      !group_size || *group_size <= 0 || s == Strategy::kGroup || s == Strategy::kTensorGroup,
      "group_size {} requires strategy 'group' or 'tensor_group', got '{}'", *group_size, name);
  MOEQ_CHECK(s != Strategy::kBlock || block_structure, "strategy 'block' requires block_structure");
  MOEQ_CHECK(!block_structure || s == Strategy::kBlock,
             "block_structure requires strategy 'block', got '{}'", name);
  if (dynamic != DynamicMode::kStatic) {
    MOEQ_CHECK(s == Strategy::kToken || s == Strategy::kTensor || s == Strategy::kTensorGroup ||
                   s == Strategy::kGroup,
               "dynamic quantization needs strategy token, tensor, tensor_group or group, got '{}'",
               name);
    MOEQ_CHECK(dynamic != DynamicMode::kLocal || s == Strategy::kTensorGroup,
               "dynamic=\"local\" is only supported with strategy 'tensor_group', got '{}'", name);
  }
  MOEQ_CHECK(type != QuantType::kFloat || num_bits == 4 || num_bits == 6 || num_bits == 8,
             "float quantization supports num_bits 4, 6 or 8, got {}", num_bits);

  // ---- moeq's limits: what its kernels and exporters implement ----
  if (type == QuantType::kInt) {
    MOEQ_CHECK(num_bits >= 2 && num_bits <= 8,
               "moeq supports int quantization with 2 to 8 bits, got num_bits {}", num_bits);
  } else {
    MOEQ_CHECK(num_bits == 4 || num_bits == 8,
               "moeq supports float quantization with 4 bits (E2M1) or 8 bits (E4M3), got "
               "num_bits {}",
               num_bits);
    MOEQ_CHECK(symmetric, "asymmetric float quantization is not supported (fp{} has no zero point)",
               num_bits);
  }
  MOEQ_CHECK(s != Strategy::kAttnHead,
             "strategy 'attn_head' (attention and KV-cache quantization) is not supported by "
             "moeq's quantizers");
  if (is_fp4()) {
    MOEQ_CHECK(s == Strategy::kTensorGroup || s == Strategy::kGroup,
               "fp4 needs strategy 'tensor_group' (NVFP4, group_size 16) or 'group' (MXFP4, "
               "group_size 32), got '{}'",
               name);
    if (s == Strategy::kTensorGroup) {
      MOEQ_CHECK(*group_size == 16 && scale_dtype == at::kFloat8_e4m3fn,
                 "NVFP4 (fp4 with strategy 'tensor_group') needs group_size 16 and scale_dtype "
                 "torch.float8_e4m3fn, got group_size {} and scale_dtype {}",
                 *group_size, scale_dtype ? dtype_to_string(*scale_dtype) : "null");
    } else {
      MOEQ_CHECK(*group_size == 32 && scale_dtype == at::kByte,
                 "MXFP4 (fp4 with strategy 'group') needs group_size 32 and scale_dtype "
                 "torch.uint8 (E8M0), got group_size {} and scale_dtype {}",
                 *group_size, scale_dtype ? dtype_to_string(*scale_dtype) : "null");
    }
  } else if (scale_dtype) {
    const at::ScalarType d = *scale_dtype;
    const bool mx = is_mx() && num_bits == 8;
    MOEQ_CHECK(mx || d == at::kFloat || d == at::kBFloat16 || d == at::kHalf,
               "scale_dtype {} is only valid for NVFP4 (torch.float8_e4m3fn) and MX formats "
               "(torch.uint8, group_size 32); other schemes take float32, bfloat16 or float16",
               dtype_to_string(d));
  }
  if (type == QuantType::kFloat && s == Strategy::kTensorGroup) {
    MOEQ_CHECK(num_bits == 4, "strategy 'tensor_group' is NVFP4's: it needs fp4, got fp{}",
               num_bits);
  }
  if (observer && dynamic != DynamicMode::kDynamic) {
    check_observer_name(*observer);
  }
  MOEQ_CHECK(observer_kwargs.is_object(), "observer_kwargs must be an object, got {}",
             observer_kwargs.dump());
  return *this;
}

QuantArgs QuantArgs::from_json(const json& value) {
  MOEQ_CHECK(value.is_object(), "quantization args must be a JSON object, got {}", value.dump());
  QuantArgs args;
  for (const auto& [key, item] : value.items()) {
    if (key == "num_bits") {
      args.num_bits = static_cast<int>(get_int(item, key));
    } else if (key == "type") {
      args.type = parse_quant_type(get_string(item, key));
    } else if (key == "symmetric") {
      args.symmetric = get_bool(item, key);
    } else if (key == "group_size") {
      if (!item.is_null()) {
        args.group_size = get_int(item, key);
      }
    } else if (key == "strategy") {
      if (!item.is_null()) {
        args.strategy = parse_strategy(get_string(item, key));
      }
    } else if (key == "block_structure") {
      if (!item.is_null()) {
        args.block_structure = parse_block_structure(item);
      }
    } else if (key == "dynamic") {
      args.dynamic = parse_dynamic(item);
    } else if (key == "actorder") {
      check_actorder(item);
    } else if (key == "scale_dtype") {
      if (!item.is_null()) {
        args.scale_dtype = parse_dtype(get_string(item, key));
      }
    } else if (key == "zp_dtype") {
      if (!item.is_null()) {
        args.zp_dtype = parse_dtype(get_string(item, key));
      }
    } else if (key == "observer") {
      if (!item.is_null()) {
        args.observer = get_string(item, key);
      }
    } else if (key == "observer_kwargs") {
      MOEQ_CHECK(item.is_object() || item.is_null(), "observer_kwargs must be an object, got {}",
                 item.dump());
      args.observer_kwargs = item.is_null() ? json::object() : item;
    } else {
      MOEQ_FAIL(
          "unknown key '{}' in quantization args (known: num_bits, type, symmetric, group_size, "
          "strategy, block_structure, dynamic, actorder, scale_dtype, zp_dtype, observer, "
          "observer_kwargs)",
          key);
    }
  }
  args.validate();
  return args;
}

json QuantArgs::to_json() const {
  // compressed-tensors' serializer: group_size always (null when unset); block_structure,
  // actorder and scale_dtype only when set; observer and zp_dtype only when the user gave them
  // (zp_dtype is null, hence dropped, when symmetric); observer_kwargs only when not empty.
  json out = json::object();
  out["num_bits"] = num_bits;
  out["type"] = std::string(to_string(type));
  out["symmetric"] = symmetric;
  out["group_size"] = group_size ? json(*group_size) : json(nullptr);
  out["strategy"] = std::string(to_string(resolved_strategy()));
  if (block_structure) {
    out["block_structure"] = json::array({(*block_structure)[0], (*block_structure)[1]});
  }
  switch (dynamic) {
    case DynamicMode::kStatic:
      out["dynamic"] = false;
      break;
    case DynamicMode::kDynamic:
      out["dynamic"] = true;
      break;
    case DynamicMode::kLocal:
      out["dynamic"] = "local";
      break;
  }
  if (scale_dtype) {
    out["scale_dtype"] = dtype_to_string(*scale_dtype);
  }
  if (zp_dtype && !symmetric) {
    out["zp_dtype"] = dtype_to_string(*zp_dtype);
  }
  if (observer) {
    out["observer"] = *observer;
  }
  if (!observer_kwargs.empty()) {
    out["observer_kwargs"] = observer_kwargs;
  }
  return out;
}

}  // namespace moeq::quant
