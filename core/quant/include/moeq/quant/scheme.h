// QuantScheme: the QuantArgs of a module's weight and activations plus the modules it targets,
// as compressed-tensors' QuantizationScheme (quantization/quant_scheme.py); the named schemes
// (presets), the compressed-tensors format each is written in, and the ModelOpt quant_algo each
// corresponds to.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "moeq/quant/quant_args.h"

namespace moeq::quant {

// compressed-tensors' CompressionFormat (config/base.py), the formats moeq writes plus dense and
// mixed-precision.
enum class CompressionFormat {
  kDense,
  kIntQuantized,
  kFloatQuantized,
  kNaiveQuantized,
  kPackQuantized,
  kNvfp4PackQuantized,
  kMxfp4PackQuantized,
  kMxfp8Quantized,
  kMixedPrecision,
};

std::string_view to_string(CompressionFormat format);  // "pack-quantized", ...
CompressionFormat parse_compression_format(std::string_view text);

struct QuantScheme {
  std::vector<std::string> targets;
  std::optional<QuantArgs> weights;
  std::optional<QuantArgs> input_activations;
  std::optional<QuantArgs> output_activations;
  std::optional<CompressionFormat> format;  // as given; compression_format() infers it

  // Validates every QuantArgs and compressed-tensors' scheme rules. Throws moeq::Error.
  QuantScheme& validate();
  static QuantScheme from_json(const nlohmann::json& json);
  nlohmann::json to_json() const;

  // `format` when given, else infer_format(*this).
  CompressionFormat compression_format() const;
};

// compressed-tensors' format choice for a Linear (compressors/format.py): the first format of
// COMPRESSION_FORMAT_PRIORITY whose compressor accepts the scheme: mxfp4-pack, mxfp8, nvfp4-pack,
// int-quantized (int weights with input activations), pack-quantized (int weights, no float
// activations), float-quantized (float weights with input activations), naive, dense.
CompressionFormat infer_format(const QuantScheme& scheme);

// A named scheme: moeq's name, compressed-tensors' preset it equals, and the ModelOpt quant_algo
// of the same weights and activations where ModelOpt has one.
struct PresetInfo {
  std::string_view name;           // "W8A8-FP8"
  std::string_view ct_preset;      // "FP8"
  std::string_view modelopt_algo;  // "FP8", or empty
};

std::span<const PresetInfo> preset_schemes();
// Looks a name up case-insensitively with '-' and '_' alike; moeq's names and
// compressed-tensors' preset names (FP8, FP8_DYNAMIC, FP8_BLOCK, W8A8, INT8, W4A8, W4AFP8) both
// work. Throws moeq::Error listing the known names.
const PresetInfo& find_preset(std::string_view name);
bool is_preset_scheme(std::string_view name);
// The preset's QuantScheme, identical to compressed-tensors 0.20.0's preset_name_to_scheme.
QuantScheme preset_scheme(std::string_view name,
                          std::vector<std::string> targets = {std::string("Linear")});

// The ModelOpt quant_algo written for this scheme's weights and activations ("FP8",
// "FP8_PER_CHANNEL_PER_TOKEN", "NVFP4", "W4A16_NVFP4", "W4A16_AWQ"), or nullopt when ModelOpt's
// unified HF format has no equivalent that moeq writes.
std::optional<std::string_view> modelopt_quant_algo(const QuantScheme& scheme);

}  // namespace moeq::quant
