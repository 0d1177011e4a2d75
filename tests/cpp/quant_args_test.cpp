// QuantArgs and QuantScheme: compressed-tensors' validation rules (each message checked), JSON
// round trips in compressed-tensors' serialization, the named schemes and their formats.
#include <gtest/gtest.h>

#include <string>

#include "moeq/core/error.h"
#include "moeq/quant/quant_args.h"
#include "moeq/quant/scheme.h"

namespace {

using moeq::quant::CompressionFormat;
using moeq::quant::QuantArgs;
using moeq::quant::QuantScheme;
using moeq::quant::Strategy;
using nlohmann::json;

// The message QuantArgs::from_json throws for `text`, or "" when it parses.
std::string args_error(const std::string& text) {
  try {
    QuantArgs::from_json(json::parse(text));
  } catch (const moeq::Error& e) {
    return e.message();
  }
  return "";
}

std::string scheme_error(const std::string& text) {
  try {
    QuantScheme::from_json(json::parse(text));
  } catch (const moeq::Error& e) {
    return e.message();
  }
  return "";
}

TEST(QuantArgsTest, InfersStrategyFromGroupSize) {
  EXPECT_EQ(QuantArgs::from_json(json::parse(R"({"num_bits": 8})")).resolved_strategy(),
            Strategy::kTensor);
  EXPECT_EQ(QuantArgs::from_json(json::parse(R"({"group_size": 128})")).resolved_strategy(),
            Strategy::kGroup);
  EXPECT_EQ(QuantArgs::from_json(json::parse(R"({"group_size": -1})")).resolved_strategy(),
            Strategy::kChannel);
  EXPECT_EQ(args_error(R"({"group_size": 0})"),
            "invalid group_size 0: use group_size > 0 for strategy 'group' and -1 for 'channel'");
}

TEST(QuantArgsTest, CompressedTensorsRulesEachWithItsMessage) {
  EXPECT_EQ(args_error(R"({"group_size": -2})"),
            "invalid group_size -2: use group_size > 0 for strategy 'group' and -1 for 'channel'");
  EXPECT_EQ(args_error(R"({"strategy": "block", "block_structure": [128]})"),
            "invalid block_structure [128]: must be a list of two positive ints [rows, cols]");
  EXPECT_EQ(args_error(R"({"strategy": "block", "block_structure": "128x0"})"),
            "invalid block_structure \"128x0\": must be a list of two positive ints [rows, cols]");
  EXPECT_EQ(args_error(R"({"strategy": "token"})"),
            "strategy 'token' requires dynamic=true: static token quantization is not possible");
  EXPECT_EQ(args_error(R"({"strategy": "group"})"),
            "strategy 'group' requires a positive group_size, got null");
  EXPECT_EQ(args_error(R"({"num_bits": 4, "type": "float", "strategy": "tensor_group",
                           "group_size": -1})"),
            "strategy 'tensor_group' requires a positive group_size, got -1");
  EXPECT_EQ(args_error(R"({"strategy": "channel", "group_size": 128})"),
            "group_size 128 requires strategy 'group' or 'tensor_group', got 'channel'");
  EXPECT_EQ(args_error(R"({"strategy": "block"})"), "strategy 'block' requires block_structure");
  EXPECT_EQ(args_error(R"({"block_structure": [128, 128]})"),
            "block_structure requires strategy 'block', got 'tensor'");
  EXPECT_EQ(args_error(R"({"strategy": "channel", "dynamic": true})"),
            "dynamic quantization needs strategy token, tensor, tensor_group or group, got "
            "'channel'");
  EXPECT_EQ(args_error(R"({"group_size": 32, "dynamic": "local"})"),
            "dynamic=\"local\" is only supported with strategy 'tensor_group', got 'group'");
  EXPECT_EQ(args_error(R"({"num_bits": 5, "type": "float"})"),
            "float quantization supports num_bits 4, 6 or 8, got 5");
  EXPECT_EQ(args_error(R"({"type": "uint"})"),
            "invalid quantization type 'uint': expected 'int' or 'float'");
  EXPECT_EQ(args_error(R"({"strategy": "rows"})"),
            "invalid strategy 'rows': expected one of tensor, channel, group, block, token, "
            "tensor_group, attn_head");
  EXPECT_EQ(args_error(R"({"dynamic": "global"})"),
            "invalid dynamic \"global\": expected false, true or \"local\"");
  EXPECT_EQ(args_error(R"({"scale_dtype": "torch.float7"})"), "no such torch dtype 'torch.float7'");
  EXPECT_EQ(args_error(R"({"num_bits": "4"})"),
            "quantization args: 'num_bits' must be an integer, got \"4\"");
  EXPECT_EQ(args_error(R"({"bits": 4})"),
            "unknown key 'bits' in quantization args (known: num_bits, type, symmetric, "
            "group_size, strategy, block_structure, dynamic, actorder, scale_dtype, zp_dtype, "
            "observer, observer_kwargs)");
  // Upper-case enum values are accepted, as compressed-tensors lower-cases them.
  EXPECT_EQ(args_error(R"({"type": "FLOAT", "strategy": "TENSOR"})"), "");
}

TEST(QuantArgsTest, ActorderOnlyNull) {
  EXPECT_EQ(args_error(R"({"actorder": null})"), "");
  EXPECT_EQ(args_error(R"({"actorder": false})"), "");
  EXPECT_EQ(args_error(R"({"actorder": true})"),
            "actorder=true previously meant actorder='group', which compressed-tensors has "
            "removed; use actorder=null");
  EXPECT_EQ(args_error(R"({"actorder": "group"})"),
            "actorder='group' has been removed from compressed-tensors; use actorder=null");
  EXPECT_EQ(args_error(R"({"actorder": "weight"})"),
            "actorder='weight' is not supported: moeq implements no activation ordering; use "
            "actorder=null");
  EXPECT_EQ(args_error(R"({"actorder": "sideways"})"),
            "invalid actorder 'sideways': expected null");
}

TEST(QuantArgsTest, MoeqLimitsEachWithItsMessage) {
  EXPECT_EQ(args_error(R"({"num_bits": 16})"),
            "moeq supports int quantization with 2 to 8 bits, got num_bits 16");
  EXPECT_EQ(args_error(R"({"num_bits": 6, "type": "float", "group_size": 32})"),
            "moeq supports float quantization with 4 bits (E2M1) or 8 bits (E4M3), got num_bits 6");
  EXPECT_EQ(args_error(R"({"type": "float", "symmetric": false})"),
            "asymmetric float quantization is not supported (fp8 has no zero point)");
  EXPECT_EQ(args_error(R"({"strategy": "attn_head"})"),
            "strategy 'attn_head' (attention and KV-cache quantization) is not supported by moeq's "
            "quantizers");
  EXPECT_EQ(args_error(R"({"num_bits": 4, "type": "float", "group_size": -1})"),
            "fp4 needs strategy 'tensor_group' (NVFP4, group_size 16) or 'group' (MXFP4, "
            "group_size 32), got 'channel'");
  EXPECT_EQ(args_error(R"({"num_bits": 4, "type": "float", "strategy": "tensor_group",
                           "group_size": 32, "scale_dtype": "torch.float8_e4m3fn"})"),
            "NVFP4 (fp4 with strategy 'tensor_group') needs group_size 16 and scale_dtype "
            "torch.float8_e4m3fn, got group_size 32 and scale_dtype torch.float8_e4m3fn");
  EXPECT_EQ(args_error(R"({"num_bits": 4, "type": "float", "group_size": 32})"),
            "MXFP4 (fp4 with strategy 'group') needs group_size 32 and scale_dtype torch.uint8 "
            "(E8M0), got group_size 32 and scale_dtype null");
  EXPECT_EQ(args_error(R"({"group_size": 128, "scale_dtype": "torch.int8"})"),
            "scale_dtype torch.int8 is only valid for NVFP4 (torch.float8_e4m3fn) and MX formats "
            "(torch.uint8, group_size 32); other schemes take float32, bfloat16 or float16");
  EXPECT_EQ(args_error(R"({"num_bits": 8, "type": "float", "strategy": "tensor_group",
                           "group_size": 16})"),
            "strategy 'tensor_group' is NVFP4's: it needs fp4, got fp8");
  EXPECT_EQ(args_error(R"({"observer": "kl"})"),
            "unknown observer 'kl': known observers are minmax, static_minmax, memoryless_minmax, "
            "absmax, percentile, mse, memoryless_mse, modelopt_mse, nvfp4_fp8_sweep");
}

TEST(QuantArgsTest, JsonAsCompressedTensorsWritesIt) {
  // compressed-tensors 0.20.0: QuantizationArgs(num_bits=4, symmetric=False, group_size=128,
  // observer="mse", observer_kwargs={"a": 1}, zp_dtype="int8").model_dump(mode="json")
  const json expected = json::parse(R"({"num_bits": 4, "type": "int", "symmetric": false,
      "group_size": 128, "strategy": "group", "dynamic": false, "zp_dtype": "torch.int8",
      "observer": "mse", "observer_kwargs": {"a": 1}})");
  const QuantArgs args = QuantArgs::from_json(json::parse(
      R"({"num_bits": 4, "symmetric": false, "group_size": 128, "observer": "mse",
          "observer_kwargs": {"a": 1}, "zp_dtype": "int8"})"));
  EXPECT_EQ(args.to_json(), expected);
  EXPECT_EQ(QuantArgs::from_json(args.to_json()), args);
  // Legacy "RxC" block structure; a symmetric zp_dtype is not written; null observer omitted.
  const QuantArgs block = QuantArgs::from_json(json::parse(
      R"({"type": "float", "strategy": "block", "block_structure": "128x64",
          "zp_dtype": "torch.float8_e4m3fn", "observer": null})"));
  EXPECT_EQ(block.to_json(), json::parse(R"({"num_bits": 8, "type": "float", "symmetric": true,
      "group_size": null, "strategy": "block", "block_structure": [128, 64],
      "dynamic": false})"));
  EXPECT_EQ(block.zero_point_dtype(), at::kFloat8_e4m3fn);
  EXPECT_EQ(QuantArgs::from_json(block.to_json()).to_json(), block.to_json());
}

TEST(QuantArgsTest, ZeroPointDtypeDefaults) {
  EXPECT_EQ(QuantArgs::from_json(json::parse(R"({"num_bits": 4})")).zero_point_dtype(), at::kChar);
  EXPECT_EQ(QuantArgs::from_json(json::parse(R"({"type": "float"})")).zero_point_dtype(),
            at::kFloat8_e4m3fn);
  EXPECT_EQ(QuantArgs::from_json(json::parse(R"({"num_bits": 4, "type": "float",
                "strategy": "tensor_group", "group_size": 16,
                "scale_dtype": "torch.float8_e4m3fn"})"))
                .zero_point_dtype(),
            at::kFloat8_e4m3fn);
}

// compressed-tensors 0.20.0: preset_name_to_scheme(NAME, ["Linear"]).model_dump(mode="json")
// (format filled in by infer_module_format, as config.json carries it).
struct PresetCase {
  const char* name;
  const char* ct_json;
  CompressionFormat format;
  const char* modelopt;
};

constexpr PresetCase kPresetCases[] = {
    {"W4A16",
     R"({"weights": {"num_bits": 4, "type": "int", "symmetric": true, "group_size": 128,
         "strategy": "group", "dynamic": false}, "input_activations": null})",
     CompressionFormat::kPackQuantized, "W4A16_AWQ"},
    {"W4A16_ASYM",
     R"({"weights": {"num_bits": 4, "type": "int", "symmetric": false, "group_size": 128,
         "strategy": "group", "dynamic": false}, "input_activations": null})",
     CompressionFormat::kPackQuantized, ""},
    {"W8A16",
     R"({"weights": {"num_bits": 8, "type": "int", "symmetric": true, "group_size": 128,
         "strategy": "group", "dynamic": false}, "input_activations": null})",
     CompressionFormat::kPackQuantized, ""},
    {"W8A8-INT8",
     R"({"weights": {"num_bits": 8, "type": "int", "symmetric": true, "group_size": null,
         "strategy": "channel", "dynamic": false}, "input_activations": {"num_bits": 8,
         "type": "int", "symmetric": true, "group_size": null, "strategy": "token",
         "dynamic": true}})",
     CompressionFormat::kIntQuantized, ""},
    {"W8A8-FP8",
     R"({"weights": {"num_bits": 8, "type": "float", "symmetric": true, "group_size": null,
         "strategy": "tensor", "dynamic": false}, "input_activations": {"num_bits": 8,
         "type": "float", "symmetric": true, "group_size": null, "strategy": "tensor",
         "dynamic": false, "observer": "static_minmax"}})",
     CompressionFormat::kFloatQuantized, "FP8"},
    {"W8A8-FP8-DYNAMIC",
     R"({"weights": {"num_bits": 8, "type": "float", "symmetric": true, "group_size": null,
         "strategy": "channel", "dynamic": false}, "input_activations": {"num_bits": 8,
         "type": "float", "symmetric": true, "group_size": null, "strategy": "token",
         "dynamic": true}})",
     CompressionFormat::kFloatQuantized, "FP8_PER_CHANNEL_PER_TOKEN"},
    {"FP8-block",
     R"({"weights": {"num_bits": 8, "type": "float", "symmetric": true, "group_size": null,
         "strategy": "block", "block_structure": [128, 128], "dynamic": false},
         "input_activations": {"num_bits": 8, "type": "float", "symmetric": true,
         "group_size": 128, "strategy": "group", "dynamic": true}})",
     CompressionFormat::kFloatQuantized, ""},
    {"NVFP4",
     R"({"weights": {"num_bits": 4, "type": "float", "symmetric": true, "group_size": 16,
         "strategy": "tensor_group", "dynamic": false, "scale_dtype": "torch.float8_e4m3fn"},
         "input_activations": {"num_bits": 4, "type": "float", "symmetric": true,
         "group_size": 16, "strategy": "tensor_group", "dynamic": "local",
         "scale_dtype": "torch.float8_e4m3fn", "observer": "static_minmax"}})",
     CompressionFormat::kNvfp4PackQuantized, "NVFP4"},
    {"NVFP4A16",
     R"({"weights": {"num_bits": 4, "type": "float", "symmetric": true, "group_size": 16,
         "strategy": "tensor_group", "dynamic": false, "scale_dtype": "torch.float8_e4m3fn"},
         "input_activations": null})",
     CompressionFormat::kNvfp4PackQuantized, "W4A16_NVFP4"},
    {"MXFP4",
     R"({"weights": {"num_bits": 4, "type": "float", "symmetric": true, "group_size": 32,
         "strategy": "group", "dynamic": false, "scale_dtype": "torch.uint8"},
         "input_activations": {"num_bits": 4, "type": "float", "symmetric": true,
         "group_size": 32, "strategy": "group", "dynamic": true, "scale_dtype": "torch.uint8"}})",
     CompressionFormat::kMxfp4PackQuantized, ""},
    {"MXFP4A16",
     R"({"weights": {"num_bits": 4, "type": "float", "symmetric": true, "group_size": 32,
         "strategy": "group", "dynamic": false, "scale_dtype": "torch.uint8"},
         "input_activations": null})",
     CompressionFormat::kMxfp4PackQuantized, ""},
    {"MXFP8",
     R"({"weights": {"num_bits": 8, "type": "float", "symmetric": true, "group_size": 32,
         "strategy": "group", "dynamic": false, "scale_dtype": "torch.uint8"},
         "input_activations": {"num_bits": 8, "type": "float", "symmetric": true,
         "group_size": 32, "strategy": "group", "dynamic": true, "scale_dtype": "torch.uint8"}})",
     CompressionFormat::kMxfp8Quantized, ""},
    {"W4A8-INT",
     R"({"weights": {"num_bits": 4, "type": "int", "symmetric": true, "group_size": 128,
         "strategy": "group", "dynamic": false}, "input_activations": {"num_bits": 8,
         "type": "int", "symmetric": true, "group_size": null, "strategy": "token",
         "dynamic": true}})",
     CompressionFormat::kIntQuantized, ""},
    {"W4A8-FP8",
     R"({"weights": {"num_bits": 4, "type": "int", "symmetric": true, "group_size": 128,
         "strategy": "group", "dynamic": false}, "input_activations": {"num_bits": 8,
         "type": "float", "symmetric": true, "group_size": null, "strategy": "token",
         "dynamic": true}})",
     CompressionFormat::kIntQuantized, ""},
};

TEST(QuantSchemeTest, PresetsEqualCompressedTensors) {
  ASSERT_EQ(moeq::quant::preset_schemes().size(), std::size(kPresetCases));
  for (const PresetCase& c : kPresetCases) {
    SCOPED_TRACE(c.name);
    const QuantScheme scheme = moeq::quant::preset_scheme(c.name);
    json expected = json::parse(c.ct_json);
    expected["targets"] = {"Linear"};
    expected["output_activations"] = nullptr;
    expected["format"] = nullptr;
    EXPECT_EQ(scheme.to_json(), expected);
    EXPECT_EQ(scheme.compression_format(), c.format);
    const auto algo = moeq::quant::modelopt_quant_algo(scheme);
    EXPECT_EQ(algo ? std::string(*algo) : "", c.modelopt);
    EXPECT_EQ(moeq::quant::find_preset(c.name).modelopt_algo, c.modelopt);
    // JSON round trip, and the scheme written with its format.
    QuantScheme with_format = scheme;
    with_format.format = scheme.compression_format();
    EXPECT_EQ(QuantScheme::from_json(with_format.to_json()).to_json(), with_format.to_json());
  }
}

TEST(QuantSchemeTest, PresetNamesAndAliases) {
  EXPECT_EQ(moeq::quant::find_preset("fp8_block").name, "FP8-block");
  EXPECT_EQ(moeq::quant::find_preset("FP8").name, "W8A8-FP8");
  EXPECT_EQ(moeq::quant::find_preset("FP8_DYNAMIC").name, "W8A8-FP8-DYNAMIC");
  EXPECT_EQ(moeq::quant::find_preset("INT8").name, "W8A8-INT8");
  EXPECT_EQ(moeq::quant::find_preset("W8A8").name, "W8A8-INT8");
  EXPECT_EQ(moeq::quant::find_preset("W4AFP8").name, "W4A8-FP8");
  EXPECT_EQ(moeq::quant::find_preset("w4a8").name, "W4A8-INT");
  EXPECT_EQ(moeq::quant::preset_scheme("nvfp4", {"re:.*experts.*"}).targets,
            std::vector<std::string>{"re:.*experts.*"});
  try {
    moeq::quant::preset_scheme("W3A3");
    FAIL() << "no error for an unknown scheme";
  } catch (const moeq::Error& e) {
    EXPECT_EQ(e.message(),
              "unknown quantization scheme 'W3A3': known schemes are W4A16, W4A16_ASYM, W8A16, "
              "W8A8-INT8, W8A8-FP8, W8A8-FP8-DYNAMIC, FP8-block, NVFP4, NVFP4A16, MXFP4, "
              "MXFP4A16, MXFP8, W4A8-INT, W4A8-FP8");
  }
}

TEST(QuantSchemeTest, SchemeRules) {
  EXPECT_EQ(scheme_error(R"({"targets": ["Linear"], "input_activations": {"num_bits": 8,
                             "strategy": "channel"}})"),
            "strategy 'channel' is not supported for activation quantization (token, tensor, "
            "group, tensor_group or attn_head)");
  EXPECT_EQ(scheme_error(R"({"targets": ["Linear"], "format": "mixed-precision"})"),
            "mixed-precision cannot be the format of one scheme: it describes a whole model");
  EXPECT_EQ(scheme_error(R"({"targets": ["Linear"], "format": "marlin-24"})"),
            "unknown compression format 'marlin-24': moeq writes dense, int-quantized, "
            "float-quantized, naive-quantized, pack-quantized, nvfp4-pack-quantized, "
            "mxfp4-pack-quantized, mxfp8-quantized, mixed-precision");
  EXPECT_EQ(scheme_error(R"({"weights": null})"), "quantization scheme needs 'targets'");
  EXPECT_EQ(scheme_error(R"({"targets": ["Linear"], "kv_cache": null})"),
            "unknown key 'kv_cache' in quantization scheme (known: targets, weights, "
            "input_activations, output_activations, format)");
  // A scheme's own format overrides the inferred one (W4A8-FP8 in pack-quantized for vLLM's
  // CUTLASS W4A8 MoE kernels).
  QuantScheme scheme = moeq::quant::preset_scheme("W4A8-FP8");
  scheme.format = CompressionFormat::kPackQuantized;
  EXPECT_EQ(scheme.compression_format(), CompressionFormat::kPackQuantized);
}

}  // namespace
