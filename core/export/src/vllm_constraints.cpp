#include "vllm_constraints.h"

#include <moeq/core/error.h>

#include <algorithm>

#include "module_names.h"

namespace moeq::exporting {
namespace {

using quant::CompressionFormat;
using quant::QuantArgs;
using quant::QuantType;
using quant::Strategy;

// A routed expert's dimensions as vLLM's MoE methods name them: H (hidden) and I (intermediate).
// gate/up weights are [I, H], down weights [H, I].
struct ExpertDims {
  int64_t hidden;
  int64_t intermediate;
};

ExpertDims expert_dims(const std::string& module, int64_t out, int64_t in) {
  if (projection_of(module) == Projection::kDown) {
    return {out, in};
  }
  return {in, out};
}

bool weight_only(const quant::QuantScheme& scheme) {
  return !scheme.input_activations.has_value();
}

bool dynamic_per_token(const std::optional<QuantArgs>& a) {
  return a && a->is_dynamic() && a->resolved_strategy() == Strategy::kToken;
}

// CompressedTensorsWNA16MarlinMoEMethod (quantization/utils/marlin_utils.py:
// check_moe_marlin_supports_layer).
void check_wna16_marlin(const QuantArgs& w,
                        std::optional<CompressionFormat> format,
                        const std::string& module,
                        ExpertDims d) {
  const std::string tensor = module + ".weight";
  MOEQ_CHECK(w.num_bits == 4 || w.num_bits == 8,
             "'{}': vLLM's weight-only MoE kernels (Marlin) take 4- or 8-bit integer weights, the "
             "scheme has {} bits",
             tensor, w.num_bits);
  MOEQ_CHECK(!format || *format == CompressionFormat::kPackQuantized,
             "'{}': vLLM loads weight-only integer experts from pack-quantized checkpoints only, "
             "the scheme's format is {}",
             tensor, quant::to_string(*format));
  const Strategy s = w.resolved_strategy();
  MOEQ_CHECK(s == Strategy::kGroup || s == Strategy::kChannel,
             "'{}': vLLM's weight-only MoE kernels (Marlin) need group or channel weight scales, "
             "the scheme's strategy is {}",
             tensor, quant::to_string(s));
  const int64_t g = s == Strategy::kChannel ? -1 : w.group_size.value_or(0);
  MOEQ_CHECK(g == -1 || g == 32 || g == 64 || g == 128,
             "'{}': vLLM's Marlin MoE kernel supports group sizes -1 (channel), 32, 64 and 128, "
             "the scheme's is {}",
             tensor, g);
  MOEQ_CHECK(d.hidden % 128 == 0,
             "'{}': vLLM's Marlin MoE kernel needs the hidden size divisible by 128, the expert's "
             "hidden size is {}",
             tensor, d.hidden);
  const int64_t tile = std::max<int64_t>(64, g);
  MOEQ_CHECK(
      d.intermediate % tile == 0,
      "'{}': vLLM's Marlin MoE kernel needs the intermediate size divisible by max(64, group "
      "size) = {}, the expert's intermediate size is {}",
      tensor, tile, d.intermediate);
}

// CompressedTensorsW8A8Fp8MoEMethod.
void check_fp8_moe(const quant::QuantScheme& scheme, const std::string& module, ExpertDims d) {
  const std::string tensor = module + ".weight";
  const QuantArgs& w = *scheme.weights;
  const auto& a = scheme.input_activations;
  const Strategy s = w.resolved_strategy();
  const bool per_tensor = s == Strategy::kTensor && a && !a->is_dynamic() &&
                          a->resolved_strategy() == Strategy::kTensor;
  const bool channel_token = s == Strategy::kChannel && dynamic_per_token(a);
  const bool block =
      s == Strategy::kBlock && a && a->is_dynamic() && a->resolved_strategy() == Strategy::kGroup;
  MOEQ_CHECK(per_tensor || channel_token || block,
             "'{}': vLLM's FP8 MoE kernels take per-tensor weights with static per-tensor "
             "activations, per-channel weights with dynamic per-token activations, or block "
             "weights with dynamic per-group activations; the scheme has {} weights with {} "
             "activations",
             tensor, quant::to_string(s),
             a ? fmt::format("{} {}", a->is_dynamic() ? "dynamic" : "static",
                             quant::to_string(a->resolved_strategy()))
               : std::string("no"));
  MOEQ_CHECK(w.symmetric, "'{}': vLLM's FP8 MoE kernels take symmetric weights only", tensor);
  if (block && w.block_structure) {
    const int64_t bn = (*w.block_structure)[0];
    MOEQ_CHECK(d.intermediate % bn == 0,
               "'{}': vLLM's FP8 block MoE kernel needs the intermediate size divisible by the "
               "block height {}, the expert's intermediate size is {}",
               tensor, bn, d.intermediate);
  }
}

// CompressedTensorsW8A8Int8MoEMethod, CompressedTensorsW4A8Int8MoEMethod,
// CompressedTensorsW4A8Fp8MoEMethod.
void check_int_activation_moe(const quant::QuantScheme& scheme,
                              std::optional<CompressionFormat> format,
                              const std::string& module,
                              ExpertDims d) {
  const std::string tensor = module + ".weight";
  const QuantArgs& w = *scheme.weights;
  const QuantArgs& a = *scheme.input_activations;
  const Strategy s = w.resolved_strategy();
  MOEQ_CHECK(w.symmetric, "'{}': vLLM's W{}A{} MoE kernels take symmetric weights only", tensor,
             w.num_bits, a.num_bits);
  if (w.num_bits == 8) {
    MOEQ_CHECK(s == Strategy::kChannel && dynamic_per_token(a),
               "'{}': vLLM's INT8 MoE kernel takes only per-channel weights with dynamic "
               "per-token activations, the scheme has {} weights",
               tensor, quant::to_string(s));
    return;
  }
  MOEQ_CHECK(w.num_bits == 4,
             "'{}': vLLM has no MoE kernel for {}-bit integer weights with "
             "activation quantization",
             tensor, w.num_bits);
  MOEQ_CHECK(dynamic_per_token(scheme.input_activations),
             "'{}': vLLM's W4A8 MoE kernels need dynamic per-token activations", tensor);
  if (a.type == QuantType::kFloat) {
    // CUTLASS on sm90: the weights are reordered in 256-wide tiles.
    MOEQ_CHECK(s == Strategy::kGroup && w.group_size == 128,
               "'{}': vLLM's W4A8-FP8 MoE kernel (CUTLASS) needs group size 128", tensor);
    MOEQ_CHECK(!format || *format == CompressionFormat::kPackQuantized,
               "'{}': vLLM's W4A8-FP8 MoE kernel loads pack-quantized weights, the scheme's format "
               "is {} (set the scheme's format to pack-quantized)",
               tensor, quant::to_string(*format));
    MOEQ_CHECK(d.hidden % 256 == 0 && d.intermediate % 256 == 0,
               "'{}': vLLM's W4A8-FP8 MoE kernel (CUTLASS) needs the hidden and intermediate sizes "
               "divisible by 256, the expert has hidden {} and intermediate {}",
               tensor, d.hidden, d.intermediate);
    return;
  }
  if (s == Strategy::kGroup) {
    const int64_t g = *w.group_size;
    MOEQ_CHECK(d.hidden % g == 0 && d.intermediate % g == 0,
               "'{}': vLLM's W4A8-INT MoE kernel needs the group size {} to divide the hidden size "
               "{} and the intermediate size {}",
               tensor, g, d.hidden, d.intermediate);
  }
}

}  // namespace

void check_vllm_constraints(const quant::QuantScheme& scheme,
                            std::optional<CompressionFormat> format,
                            const std::string& module,
                            int64_t out,
                            int64_t in) {
  const QuantArgs& w = *scheme.weights;
  const std::string tensor = module + ".weight";
  const Strategy s = w.resolved_strategy();
  // Every module: grouped scales are [out, in / group]; vLLM's loaders shard and reshape them
  // assuming exact division (compressed-tensors only warns).
  if (s == Strategy::kGroup || s == Strategy::kTensorGroup) {
    const int64_t g = w.group_size.value_or(0);
    MOEQ_CHECK(g > 0 && in % g == 0,
               "'{}' [{}, {}]: the input dimension {} is not divisible by the group size {}; "
               "vLLM's grouped kernels need it (choose a scheme with another group size or "
               "ignore the module)",
               tensor, out, in, in, g);
  }
  if (w.is_fp4() || (w.type == QuantType::kInt && w.num_bits == 4 && !format)) {
    // Two 4-bit values per byte along the packed dimension.
    const int64_t packed = w.is_fp4() ? in : out;
    MOEQ_CHECK(packed % 2 == 0,
               "'{}' [{}, {}]: 4-bit values are packed in pairs along a "
               "dimension of odd size {}",
               tensor, out, in, packed);
  }
  if (expert_pattern(module).empty()) {
    return;
  }
  const ExpertDims d = expert_dims(module, out, in);
  if (w.is_nvfp4() || w.is_mx()) {
    return;  // group 16 / 32 checked above; the FP4 methods take any activations they allow
  }
  if (w.type == QuantType::kInt && weight_only(scheme)) {
    check_wna16_marlin(w, format, module, d);
  } else if (w.is_fp8() && scheme.input_activations && scheme.input_activations->is_fp8()) {
    check_fp8_moe(scheme, module, d);
  } else if (w.type == QuantType::kInt && scheme.input_activations) {
    check_int_activation_moe(scheme, format, module, d);
  } else {
    MOEQ_CHECK(false,
               "'{}': vLLM has no fused-MoE method for {}-bit {} weights with {} (supported: "
               "W4A16/W8A16, W8A8-FP8 (static, dynamic, block), W8A8-INT8, W4A8, NVFP4, MXFP4, "
               "MXFP8)",
               tensor, w.num_bits, quant::to_string(w.type),
               scheme.input_activations ? "these activations" : "no activation quantization");
  }
}

}  // namespace moeq::exporting
