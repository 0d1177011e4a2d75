// TensorQuantizer and ExpertQuantizers: the tensors each format writes (names, dtypes, shapes),
// round trips through dequantization, the shared input quantizer, NVFP4 global-scale sharing,
// and the ModelOpt export's tensors. Bytes are compared with the peers in
// tests/python/test_quant_conformance.py.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <functional>
#include <string>
#include <vector>

#include "moeq/core/error.h"
#include "moeq/quant/modelopt.h"
#include "moeq/quant/tensor_quantizer.h"

namespace {

using moeq::quant::CompressionFormat;
using moeq::quant::ExpertQuantizers;
using moeq::quant::ModelOptAlgo;
using moeq::quant::QuantizedTensors;
using moeq::quant::TensorQuantizer;
using moeq::quant::TensorRole;

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const moeq::Error& e) {
    return e.message();
  }
  return "";
}

struct Expected {
  const char* name;
  at::ScalarType dtype;
  std::vector<int64_t> shape;
};

void expect_tensors(const QuantizedTensors& tensors, const std::vector<Expected>& expected) {
  std::vector<std::string> names;
  names.reserve(tensors.size());
  for (const auto& [name, t] : tensors) {
    names.push_back(name);
  }
  std::vector<std::string> want;
  want.reserve(expected.size());
  for (const Expected& e : expected) {
    want.push_back(e.name);
  }
  std::sort(want.begin(), want.end());
  ASSERT_EQ(names, want);
  for (const Expected& e : expected) {
    const at::Tensor& t = tensors.at(e.name);
    EXPECT_EQ(t.scalar_type(), e.dtype) << e.name;
    EXPECT_EQ(t.sizes(), at::IntArrayRef(e.shape)) << e.name;
  }
}

at::Tensor weight(int64_t out, int64_t in, at::ScalarType dtype = at::kBFloat16, int seed = 0) {
  at::manual_seed(seed);
  return at::randn({out, in}).to(dtype);
}

TEST(TensorQuantizerTest, CompressedTensorsFormats) {
  const at::Tensor w = weight(64, 256);
  struct Case {
    const char* scheme;
    std::vector<Expected> tensors;
  };
  const std::vector<Case> cases = {
      {"W4A16",
       {{"weight_packed", at::kInt, {64, 32}},
        {"weight_scale", at::kBFloat16, {64, 2}},
        {"weight_shape", at::kLong, {2}}}},
      {"W4A16_ASYM",
       {{"weight_packed", at::kInt, {64, 32}},
        {"weight_scale", at::kBFloat16, {64, 2}},
        {"weight_shape", at::kLong, {2}},
        {"weight_zero_point", at::kInt, {8, 2}}}},
      {"W8A8-INT8", {{"weight", at::kChar, {64, 256}}, {"weight_scale", at::kBFloat16, {64, 1}}}},
      {"W8A8-FP8-DYNAMIC",
       {{"weight", at::kFloat8_e4m3fn, {64, 256}}, {"weight_scale", at::kBFloat16, {64, 1}}}},
      {"FP8-block",
       {{"weight", at::kFloat8_e4m3fn, {64, 256}}, {"weight_scale", at::kBFloat16, {1, 2}}}},
      {"NVFP4A16",
       {{"weight_packed", at::kByte, {64, 128}},
        {"weight_scale", at::kFloat8_e4m3fn, {64, 16}},
        {"weight_global_scale", at::kFloat, {1}}}},
      {"MXFP4A16", {{"weight_packed", at::kByte, {64, 128}}, {"weight_scale", at::kByte, {64, 8}}}},
      {"MXFP8", {{"weight", at::kFloat8_e4m3fn, {64, 256}}, {"weight_scale", at::kByte, {64, 8}}}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.scheme);
    const auto scheme = moeq::quant::preset_scheme(c.scheme);
    TensorQuantizer q(*scheme.weights, TensorRole::kWeight, "w");
    const QuantizedTensors tensors = q.quantize_weight(w, scheme.compression_format());
    expect_tensors(tensors, c.tensors);
    // Dequantizing what was written gives the fake-quantized weight.
    const at::Tensor back = moeq::quant::dequantize_weight(
        tensors, *scheme.weights, scheme.compression_format(), at::kBFloat16);
    EXPECT_TRUE(at::equal(back, q.fake_quantize(w)));
    EXPECT_EQ(q.fake_quantize(w).scalar_type(), at::kBFloat16);
  }
}

TEST(TensorQuantizerTest, StaticInputScalesJoinTheWeight) {
  const at::Tensor w = weight(32, 64, at::kHalf);
  ExpertQuantizers fp8(moeq::quant::preset_scheme("W8A8-FP8"), 1, "layers.0.q_proj.weight");
  fp8.weight(0).observe(w);
  fp8.observe_input(at::randn({2, 5, 64}).to(at::kHalf));
  expect_tensors(fp8.quantize_expert(0, w), {{"weight", at::kFloat8_e4m3fn, {32, 64}},
                                             {"weight_scale", at::kHalf, {1}},
                                             {"input_scale", at::kHalf, {1}}});
  ExpertQuantizers nvfp4(moeq::quant::preset_scheme("NVFP4"), 1, "layers.0.q_proj.weight");
  nvfp4.weight(0).observe(w);
  nvfp4.observe_input(at::randn({7, 64}).to(at::kHalf));
  expect_tensors(nvfp4.quantize_expert(0, w), {{"weight_packed", at::kByte, {32, 32}},
                                               {"weight_scale", at::kFloat8_e4m3fn, {32, 4}},
                                               {"weight_global_scale", at::kFloat, {1}},
                                               {"input_global_scale", at::kFloat, {1}}});
  // Dynamic activations add nothing.
  ExpertQuantizers dynamic(moeq::quant::preset_scheme("W8A8-FP8-DYNAMIC"), 1, "q_proj.weight");
  EXPECT_EQ(dynamic.quantize_expert(0, w).count("input_scale"), 0u);
}

TEST(TensorQuantizerTest, ActivationFakeQuantization) {
  at::manual_seed(3);
  const at::Tensor x = at::randn({2, 3, 64}).to(at::kBFloat16);
  for (const char* name : {"W8A8-INT8", "W8A8-FP8-DYNAMIC", "FP8-block", "MXFP4", "MXFP8"}) {
    SCOPED_TRACE(name);
    TensorQuantizer q(*moeq::quant::preset_scheme(name).input_activations, TensorRole::kInput, "x");
    const at::Tensor y = q.fake_quantize(x);
    EXPECT_EQ(y.sizes(), x.sizes());
    EXPECT_EQ(y.scalar_type(), x.scalar_type());
    EXPECT_LT((y.to(at::kFloat) - x.to(at::kFloat)).abs().max().item<float>(), 1.0f);
  }
  TensorQuantizer nvfp4(*moeq::quant::preset_scheme("NVFP4").input_activations, TensorRole::kInput,
                        "layers.2.mlp.experts.*.up_proj.input");
  EXPECT_EQ(error_of([&] { nvfp4.fake_quantize(x); }),
            "input 'layers.2.mlp.experts.*.up_proj.input' has no statistics: observe it before "
            "quantizing");
  nvfp4.observe(x);
  EXPECT_EQ(nvfp4.fake_quantize(x).sizes(), x.sizes());
}

TEST(ExpertQuantizersTest, PerExpertScalesSharedInput) {
  at::manual_seed(4);
  // A transposed [E, in, out] stack, quantized through its [E, out, in] view.
  const at::Tensor stored =
      (at::randn({3, 256, 32}) * at::arange(1, 4).reshape({3, 1, 1})).to(at::kBFloat16);
  const at::Tensor view = stored.transpose(-1, -2);
  ExpertQuantizers experts(moeq::quant::preset_scheme("W8A8-FP8"), 3,
                           "model.layers.0.mlp.experts.{}.down_proj.weight");
  EXPECT_EQ(experts.weight(2).tensor_name(), "model.layers.0.mlp.experts.2.down_proj.weight");
  EXPECT_EQ(experts.input()->tensor_name(), "model.layers.0.mlp.experts.*.down_proj.input");
  experts.observe_weights(view);
  experts.observe_input(at::ones({4, 256}).to(at::kBFloat16));
  experts.observe_input(at::empty({0, 256}).to(at::kBFloat16));  // expert 1: no tokens
  experts.observe_input(at::full({2, 256}, -3.0).to(at::kBFloat16));
  const at::Tensor fq = experts.fake_quantize_weights(view);
  for (int64_t e = 0; e < 3; ++e) {
    const QuantizedTensors t = experts.quantize_expert(e, view[e]);
    // One input scale for all experts: the max over their tokens, 3 / 448.
    EXPECT_EQ(t.at("input_scale").item<float>(),
              (at::scalar_tensor(3.0, at::kBFloat16) / 448).item<float>());
    TensorQuantizer alone(*experts.scheme().weights, TensorRole::kWeight, "alone");
    const at::Tensor contiguous = view[e].contiguous();
    EXPECT_TRUE(at::equal(alone.quantize_weight(contiguous, CompressionFormat::kFloatQuantized)
                              .at("weight")
                              .view(at::kByte),
                          t.at("weight").view(at::kByte)));
    EXPECT_TRUE(at::equal(fq[e], alone.fake_quantize(contiguous)));
  }
  EXPECT_EQ(error_of([&] { experts.observe_weights(stored[0]); }),
            "expert weights of 'model.layers.0.mlp.experts.0.down_proj.weight' must be a stack "
            "[3, out, in], got shape [256, 32]");
  EXPECT_EQ(error_of([&] { experts.weight(3); }), "expert 3 out of range [0, 3)");
  ExpertQuantizers unseen(moeq::quant::preset_scheme("W8A8-FP8"), 1, "layers.5.experts.{}.w2");
  unseen.weight(0).observe(stored[0]);
  EXPECT_EQ(error_of([&] { unseen.quantize_expert(0, stored[0]); }),
            "input 'layers.5.experts.*.w2.input' has no statistics: no calibration tokens reached "
            "it, so it has no static scale");
}

TEST(ExpertQuantizersTest, GateAndUpShareTheNvfp4GlobalScale) {
  at::manual_seed(5);
  const auto scheme = moeq::quant::preset_scheme("NVFP4A16");
  ExpertQuantizers gate(scheme, 2, "experts.{}.gate_proj.weight");
  ExpertQuantizers up(scheme, 2, "experts.{}.up_proj.weight");
  const at::Tensor g = at::randn({2, 32, 64}).to(at::kBFloat16);
  const at::Tensor u =
      (at::randn({2, 32, 64}) * at::tensor({4.0, 0.5}).reshape({2, 1, 1})).to(at::kBFloat16);
  gate.observe_weights(g);
  up.observe_weights(u);
  std::vector<at::Tensor> own;
  for (int64_t e = 0; e < 2; ++e) {
    own.push_back(at::minimum(gate.quantize_expert(e, g[e]).at("weight_global_scale"),
                              up.quantize_expert(e, u[e]).at("weight_global_scale")));
  }
  std::vector<ExpertQuantizers*> fused = {&gate, &up};
  ExpertQuantizers::share_global_scales(fused);
  for (int64_t e = 0; e < 2; ++e) {
    const at::Tensor gs = gate.quantize_expert(e, g[e]).at("weight_global_scale");
    EXPECT_TRUE(at::equal(gs, up.quantize_expert(e, u[e]).at("weight_global_scale"))) << e;
    EXPECT_TRUE(at::equal(gs, own[static_cast<size_t>(e)])) << e;  // the larger amax's scale
  }
  ExpertQuantizers int4(moeq::quant::preset_scheme("W4A16"), 2, "experts.{}.w3");
  int4.observe_weights(at::randn({2, 32, 128}));
  std::vector<ExpertQuantizers*> mixed = {&gate, &int4};
  EXPECT_EQ(error_of([&] { ExpertQuantizers::share_global_scales(mixed); }),
            "weight 'experts.0.w3' is not NVFP4: only NVFP4 global scales are shared by fused "
            "layers");
}

TEST(TensorQuantizerTest, FormatMismatchAndDynamicWeights) {
  TensorQuantizer int4(*moeq::quant::preset_scheme("W4A16").weights, TensorRole::kWeight,
                       "layers.0.mlp.down_proj.weight");
  EXPECT_EQ(error_of([&] {
              int4.quantize_weight(weight(8, 128), CompressionFormat::kNvfp4PackQuantized);
            }),
            "weight 'layers.0.mlp.down_proj.weight': format 'nvfp4-pack-quantized' cannot store "
            "4-bit int weights with strategy 'group'");
  EXPECT_EQ(error_of([&] { int4.quantize_weight(weight(8, 128), CompressionFormat::kDense); }),
            "weight 'layers.0.mlp.down_proj.weight': format 'dense' stores no quantized weight");
  EXPECT_EQ(error_of([] {
              TensorQuantizer(*moeq::quant::preset_scheme("W8A8-INT8").input_activations,
                              TensorRole::kWeight, "w");
            }),
            "weight 'w' cannot be quantized dynamically (dynamic must be false)");
}

TEST(ModelOptExportTest, TensorsAndErrors) {
  const at::Tensor w = weight(64, 256);
  const at::Tensor amax = at::abs(w).max().to(at::kFloat);
  moeq::quant::ModelOptWeight in;
  in.weight = w;
  in.weight_amax = amax;
  in.input_amax = at::scalar_tensor(3.0);
  expect_tensors(moeq::quant::export_modelopt(ModelOptAlgo::kFp8, in, "w"),
                 {{"weight", at::kFloat8_e4m3fn, {64, 256}},
                  {"weight_scale", at::kFloat, {}},
                  {"input_scale", at::kFloat, {}}});
  expect_tensors(moeq::quant::export_modelopt(ModelOptAlgo::kNvfp4, in, "w"),
                 {{"weight", at::kByte, {64, 128}},
                  {"weight_scale", at::kFloat8_e4m3fn, {64, 16}},
                  {"weight_scale_2", at::kFloat, {}},
                  {"input_scale", at::kFloat, {}}});
  in.input_amax.reset();
  in.weight_amax = std::get<0>(at::abs(w).reshape({64, 2, 128}).max(-1)).to(at::kFloat);
  in.pre_quant_scale = at::ones({256});
  const QuantizedTensors awq = moeq::quant::export_modelopt(ModelOptAlgo::kW4A16Awq, in, "w");
  expect_tensors(awq, {{"weight", at::kByte, {32, 256}},
                       {"weight_scale", at::kFloat, {64, 2}},
                       {"pre_quant_scale", at::kFloat, {256}}});
  // ModelOpt's INT4 dequantization of its own export equals its fake quantization up to the
  // narrow range and the reciprocal it multiplies by; both stay within half a step.
  const at::Tensor back =
      moeq::quant::dequantize_modelopt(ModelOptAlgo::kW4A16Awq, awq, at::kFloat);
  const at::Tensor step = awq.at("weight_scale").repeat_interleave(128, -1);
  EXPECT_TRUE(((back - w.to(at::kFloat)).abs() <= step * 0.5 + 1e-6).all().item<bool>());
  in.weight = weight(63, 256);
  in.weight_amax = at::ones({63, 2});
  EXPECT_EQ(error_of([&] { moeq::quant::export_modelopt(ModelOptAlgo::kW4A16Awq, in, "w.x"); }),
            "weight 'w.x': INT4-AWQ packs two output rows per byte, but it has 63 rows");
  EXPECT_EQ(error_of([] { moeq::quant::parse_modelopt_algo("INT8_SQ"); }),
            "ModelOpt quant_algo 'INT8_SQ' is not exported by moeq (FP8, NVFP4, W4A16_NVFP4, "
            "W4A16_AWQ)");
}

}  // namespace
