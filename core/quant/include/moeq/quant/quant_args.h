// QuantArgs: how one tensor (a weight, an input or an output activation) is quantized, with the
// semantics and the JSON form of compressed-tensors' QuantizationArgs (0.20.0,
// quantization/quant_args.py). from_json() and validate() apply its validator's rules in its
// order and with its messages, then moeq's own limits (what the kernels implement), each with a
// message of its own. to_json() writes exactly what compressed-tensors writes into
// config.json["quantization_config"]["config_groups"][...]["weights"].
#pragma once

#include <c10/core/ScalarType.h>

#include <array>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace moeq::quant {

enum class QuantType { kInt, kFloat };

enum class Strategy { kTensor, kChannel, kGroup, kBlock, kToken, kTensorGroup, kAttnHead };

// compressed-tensors' `dynamic`: false, true, or "local" (dynamic local scales with a static
// global scale; tensor_group only, i.e. NVFP4 activations).
enum class DynamicMode { kStatic, kDynamic, kLocal };

std::string_view to_string(QuantType type);
std::string_view to_string(Strategy strategy);
QuantType parse_quant_type(std::string_view text);  // case-insensitive, like compressed-tensors
Strategy parse_strategy(std::string_view text);

// "torch.float8_e4m3fn" <-> at::kFloat8_e4m3fn (the form compressed-tensors serializes).
std::string dtype_to_string(at::ScalarType dtype);
at::ScalarType parse_dtype(std::string_view text);  // accepts "torch.xxx" and "xxx"

struct QuantArgs {
  int num_bits = 8;
  QuantType type = QuantType::kInt;
  bool symmetric = true;
  std::optional<int64_t> group_size;  // > 0 for group / tensor_group, -1 means channel
  std::optional<Strategy> strategy;   // inferred by validate() when absent
  std::optional<std::array<int64_t, 2>> block_structure;  // [rows, cols], block strategy only
  DynamicMode dynamic = DynamicMode::kStatic;
  std::optional<at::ScalarType> scale_dtype;  // uint8 (E8M0) for MX, float8_e4m3fn for NVFP4
  std::optional<at::ScalarType> zp_dtype;     // as given; zero_point_dtype() has the default
  std::optional<std::string> observer;        // as given; observer_name() has the default
  nlohmann::json observer_kwargs = nlohmann::json::object();

  // compressed-tensors' validator, then moeq's limits. Infers `strategy`. Throws moeq::Error.
  QuantArgs& validate();
  // Parses compressed-tensors' JSON (unknown keys are an error, as with extra="forbid") and
  // validates it.
  static QuantArgs from_json(const nlohmann::json& json);
  nlohmann::json to_json() const;

  // The strategy after validate().
  Strategy resolved_strategy() const;
  // compressed-tensors' zp_dtype default: float8_e4m3fn for 4- and 6-bit floats, else the
  // storage dtype (int8 for int <= 8 bits, float8_e4m3fn for 8-bit floats).
  at::ScalarType zero_point_dtype() const;
  // The storage dtype of quantized values (QuantizationArgs.pytorch_dtype()).
  at::ScalarType storage_dtype() const;
  bool is_dynamic() const { return dynamic == DynamicMode::kDynamic; }
  // Observer used when quantizing statically: the given one, else "minmax".
  std::string observer_name() const;

  // Format families the kernels implement.
  bool is_nvfp4() const;  // fp4, tensor_group, group 16
  bool is_mx() const;     // float, group 32, uint8 (E8M0) scales: MXFP4 / MXFP8
  bool is_fp4() const { return type == QuantType::kFloat && num_bits == 4; }
  bool is_fp8() const { return type == QuantType::kFloat && num_bits == 8; }

  bool operator==(const QuantArgs& other) const;
};

}  // namespace moeq::quant
