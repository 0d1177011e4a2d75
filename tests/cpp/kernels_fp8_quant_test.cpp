// FP8 quantization ops: compressed-tensors' numerics (its formulas written with ATen ops),
// saturation and underflow, E5M2, scales from amax, the FP8 block source format, and every
// validation error.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include "kernels_int_fp8_testing.h"
#include "moeq/kernels/fp8_quant.h"
#include "moeq/kernels/modelopt.h"
#include "moeq/kernels/reduce.h"
#include "moeq/kernels/source_dequant.h"

namespace {

namespace mk = moeq::kernels;
using mk::BlockShape;
using namespace mk::testing;

TEST(KernelsFp8QuantTest, MatchesComputeTensorsFormulas) {
  const std::vector<BlockShape> blocks = {BlockShape::tensor(), BlockShape::channel(),
                                          BlockShape::block(16, 32), BlockShape::group(64)};
  const std::vector<std::pair<at::ScalarType, at::ScalarType>> dtypes = {
      {at::kFloat, at::kFloat},
      {at::kBFloat16, at::kBFloat16},
      {at::kHalf, at::kHalf},
      {at::kBFloat16, at::kFloat},
      {at::kHalf, at::kBFloat16}};
  int seed = 100;
  for (const at::ScalarType fp8 : {at::kFloat8_e4m3fn, at::kFloat8_e5m2}) {
    for (const auto& [xd, sd] : dtypes) {
      for (const BlockShape block : blocks) {
        SCOPED_TRACE(::testing::Message() << fp8 << " " << xd << " scale " << sd << " block ["
                                          << block.rows << ", " << block.cols << "]");
        const at::Tensor x = hard_values({40, 100}, xd, ++seed);
        const at::Tensor amax = mk::block_amax(x, block);
        const at::Tensor scale = mk::fp8_scale_from_amax(amax, fp8, sd);
        const int64_t br = block.rows == 0 ? 40 : block.rows;
        const int64_t bc = block.cols == 0 ? 100 : block.cols;
        const at::Tensor s_full = expand_grid(scale, 40, 100, br, bc);
        EXPECT_TRUE(
            bits_equal(mk::fake_quant_fp8(x, scale, block, fp8), ct_fake_fp8(x, s_full, fp8)));
        const at::Tensor q = mk::quantize_fp8(x, scale, block, fp8);
        EXPECT_EQ(q.scalar_type(), fp8);
        EXPECT_TRUE(bits_equal(q, ct_fp8_code(x, s_full, fp8)));
        EXPECT_TRUE(
            bits_equal(mk::dequantize_fp8(q, scale, block, xd), (q.to(sd) * s_full).to(xd)));
      }
    }
  }
}

TEST(KernelsFp8QuantTest, SaturatesAndUnderflows) {
  // 1e4 / 1 saturates to 448 (compressed-tensors clamps before the cast: no NaN); 1e-4 is below
  // half the smallest E4M3 subnormal (2^-9 / 2) and flushes to 0; 2^-9 stays a subnormal.
  const at::Tensor x = at::tensor({1e4f, -1e4f, 1e-4f, 0.001953125f, 0.0f, 464.0f}).view({1, 6});
  const at::Tensor one = at::ones({1, 1});
  const at::Tensor q = mk::quantize_fp8(x, one, BlockShape::tensor());
  const at::Tensor back = q.to(at::kFloat);
  EXPECT_TRUE(bits_equal(
      back, at::tensor({448.0f, -448.0f, 0.0f, 0.001953125f, 0.0f, 448.0f}).view({1, 6})));
  const at::Tensor q5 = mk::quantize_fp8(x, one, BlockShape::tensor(), at::kFloat8_e5m2);
  EXPECT_EQ(q5.to(at::kFloat)[0][0].item<float>(), 10240.0f);
  EXPECT_EQ(mk::quantize_fp8(at::full({1, 1}, 1e6f), one, BlockShape::tensor(), at::kFloat8_e5m2)
                .to(at::kFloat)
                .item<float>(),
            57344.0f);
}

TEST(KernelsFp8QuantTest, TiesRoundToEvenMantissa) {
  // E4M3 values near 1: 1.0, 1.125, 1.25 ... the midpoints go to the even mantissa.
  const at::Tensor x = at::tensor({1.0625f, 1.1875f, 1.3125f, 17.0f, 19.0f}).view({1, 5});
  const at::Tensor q = mk::quantize_fp8(x, at::ones({1, 1}), BlockShape::tensor());
  EXPECT_TRUE(
      bits_equal(q.to(at::kFloat), at::tensor({1.0f, 1.25f, 1.25f, 16.0f, 20.0f}).view({1, 5})));
}

TEST(KernelsFp8QuantTest, ScaleFromAmaxMatchesCalculateQparams) {
  for (const at::ScalarType sd : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor amax = at::tensor({0.0f, 1.0f, 448.0f, 3.7e-5f, 123.456f, 1e-30f});
    const at::Tensor s = mk::fp8_scale_from_amax(amax, at::kFloat8_e4m3fn, sd);
    // calculate_qparams: amax / (896.to(dtype) / 2) in the scale dtype, zero -> eps.
    at::Tensor want = amax.to(sd) / (at::scalar_tensor(896.0).to(sd) / 2);
    const double eps = sd == at::kBFloat16 ? 0.0078125
                       : sd == at::kHalf   ? 0.0009765625
                                           : 1.1920928955078125e-07;
    want = at::where(want == 0, at::scalar_tensor(eps, sd), want);
    EXPECT_TRUE(bits_equal(s, want)) << sd;
  }
  EXPECT_EQ(
      mk::fp8_scale_from_amax(at::full({1}, 57344.0f), at::kFloat8_e5m2, at::kFloat).item<float>(),
      1.0f);
}

TEST(KernelsFp8QuantTest, DynamicPerTokenEqualsStatic) {
  const at::Tensor x = hard_values({2, 12, 256}, at::kBFloat16, 3);
  const at::Tensor scale = mk::fp8_scale_from_amax(mk::block_amax(x, BlockShape::channel()),
                                                   at::kFloat8_e4m3fn, at::kBFloat16);
  EXPECT_TRUE(bits_equal(mk::fake_quant_fp8_dynamic(x, BlockShape::channel()),
                         mk::fake_quant_fp8(x, scale, BlockShape::channel(), at::kFloat8_e4m3fn,
                                            at::zeros_like(scale))));
}

TEST(KernelsFp8QuantTest, ZeroPointAsComputeTensorsAddsIt) {
  // A zero fp8 zero point (compressed-tensors' symmetric default) turns -0.0 into +0.0.
  const at::Tensor x = at::tensor({-0.0f, 3.0f, -5.0f}).view({1, 3});
  const at::Tensor s = at::full({1, 1}, 0.5f);
  const at::Tensor zp = at::zeros({1, 1}, at::kFloat8_e4m3fn);
  const at::Tensor q = mk::quantize_fp8(x, s, BlockShape::tensor(), at::kFloat8_e4m3fn, zp);
  EXPECT_EQ(q.view(at::kByte)[0][0].item<int>(), 0x00);
  EXPECT_EQ(mk::quantize_fp8(x, s, BlockShape::tensor()).view(at::kByte)[0][0].item<int>(), 0x80);
  const at::Tensor z_full = at::zeros({1, 3}, at::kFloat8_e4m3fn);
  const at::Tensor want =
      ((x / s + z_full.to(at::kFloat)).clamp(-448, 448).to(at::kFloat8_e4m3fn).to(at::kFloat) -
       z_full.to(at::kFloat)) *
      s;
  EXPECT_TRUE(
      bits_equal(mk::fake_quant_fp8(x, s, BlockShape::tensor(), at::kFloat8_e4m3fn, zp), want));
}

TEST(KernelsFp8QuantTest, TransposedStackEqualsContiguousCopy) {
  const at::Tensor stack = hard_values({2, 160, 96}, at::kBFloat16, 8);
  const at::Tensor xt = stack.transpose(-1, -2);
  const BlockShape block = BlockShape::block(128, 128);
  const at::Tensor scale =
      mk::fp8_scale_from_amax(mk::block_amax(xt, block), at::kFloat8_e4m3fn, at::kFloat);
  const at::Tensor q = mk::quantize_fp8(xt, scale, block);
  EXPECT_EQ(q.strides(), xt.strides());
  EXPECT_TRUE(bits_equal(q, mk::quantize_fp8(xt.contiguous(), scale.contiguous(), block)));
}

TEST(KernelsFp8QuantTest, ModeloptScales) {
  const at::Tensor amax =
      at::tensor({0.0f, 2.5f, std::numeric_limits<float>::quiet_NaN(), 1e-45f, 448.0f, 7.0f});
  const at::Tensor div = mk::modelopt_scale_from_amax(amax, 448.0);
  const at::Tensor rcp = mk::modelopt_scale_from_amax(amax, 448.0, true);
  // export_amax: 0 / NaN -> maxbound, clamp(tiny, max); then amax.float() / maxbound.
  const at::Tensor sane =
      at::where(amax == 0, at::full_like(amax, 448.0), amax)
          .nan_to_num(448.0)
          .clamp(std::numeric_limits<float>::min(), std::numeric_limits<float>::max());
  EXPECT_TRUE(bits_equal(div, sane / at::scalar_tensor(448.0f)));
  EXPECT_TRUE(bits_equal(rcp, sane * (1.0f / 448.0f)));
  EXPECT_EQ(div[0].item<float>(), 1.0f);
}

TEST(KernelsFp8QuantTest, BlockSourceDequantRoundsOnce) {
  at::manual_seed(4);
  const at::Tensor w = (at::randn({3, 200, 300}) * 50).to(at::kFloat8_e4m3fn);
  const at::Tensor s = at::rand({3, 2, 3}) * 1e-2;
  const at::Tensor out = mk::dequantize_fp8_block_source(w, s, at::kBFloat16);
  const at::Tensor want = (w.to(at::kFloat) * expand_grid(s, 200, 300, 128, 128)).to(at::kBFloat16);
  EXPECT_TRUE(bits_equal(out, want));
  EXPECT_TRUE(bits_equal(
      mk::dequantize_fp8_block_source(w, s.to(at::kBFloat16), at::kFloat),
      w.to(at::kFloat) * expand_grid(s.to(at::kBFloat16).to(at::kFloat), 200, 300, 128, 128)));
}

TEST(KernelsFp8QuantTest, RejectsBadInputs) {
  const at::Tensor x = at::randn({8, 64});
  const at::Tensor s = at::ones({1, 1});
  EXPECT_ERROR(mk::fake_quant_fp8(x, s, BlockShape::tensor(), at::kChar),
               "fake_quant_fp8: fp8_dtype must be float8_e4m3fn or float8_e5m2, got Char");
  EXPECT_ERROR(mk::quantize_fp8(x.to(at::kChar), s, BlockShape::tensor()),
               "quantize_fp8: x must be float32, bfloat16 or float16, got Char");
  EXPECT_ERROR(mk::dequantize_fp8(x, s, BlockShape::tensor(), at::kFloat),
               "dequantize_fp8: q must be float8_e4m3fn or float8_e5m2, got Float");
  EXPECT_ERROR(mk::dequantize_fp8(x.to(at::kFloat8_e4m3fn), s, BlockShape::tensor(), at::kChar),
               "dequantize_fp8: out_dtype must be float32, bfloat16 or float16, got Char");
  EXPECT_ERROR(mk::fp8_scale_from_amax(at::ones({2}), at::kFloat8_e4m3fn, at::kFloat8_e4m3fn),
               "fp8_scale_from_amax: scale_dtype must be float32, bfloat16 or float16");
  EXPECT_ERROR(mk::fp8_scale_from_amax(at::ones({2}, at::kInt), at::kFloat8_e4m3fn, at::kFloat),
               "fp8_scale_from_amax: amax must be float32, bfloat16 or float16, got Int");
  EXPECT_ERROR(mk::modelopt_scale_from_amax(at::ones({2}), 0.0),
               "modelopt_scale_from_amax: maxbound must be positive, got 0");
  EXPECT_ERROR(mk::dequantize_fp8_block_source(x, s, at::kBFloat16),
               "dequantize_fp8_block_source: weight must be float8_e4m3fn, got Float");
  EXPECT_ERROR(
      mk::dequantize_fp8_block_source(x.to(at::kFloat8_e4m3fn), s.to(at::kInt), at::kBFloat16),
      "scale_inv must be float32, bfloat16, float16 or float8_e8m0fnu, got Int");
  EXPECT_ERROR(mk::dequantize_fp8_block_source(x.to(at::kFloat8_e4m3fn), s, at::kBFloat16, 0),
               "dequantize_fp8_block_source: block must be positive, got [0, 128]");
  EXPECT_ERROR(
      mk::dequantize_fp8_block_source(x.to(at::kFloat8_e4m3fn), at::ones({2, 1}), at::kBFloat16),
      "needs the block grid [1, 1]");
  at::Tensor bad = x.clone();
  bad[0][0] = std::numeric_limits<float>::infinity();
  EXPECT_ERROR(mk::fake_quant_fp8_dynamic(bad, BlockShape::channel(), at::kFloat8_e4m3fn, "h"),
               "block_amax: h contains NaN or Inf values");
}

}  // namespace
