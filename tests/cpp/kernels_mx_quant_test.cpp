// MXFP4 / MXFP8 and the GPT-OSS MXFP4 source: E8M0 scale rules, rounding, layouts, validation.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "moeq/core/error.h"
#include "moeq/kernels/fp4_quant.h"
#include "moeq/kernels/source_dequant.h"

namespace {

using moeq::kernels::Convention;
using moeq::kernels::MxElement;
namespace mk = moeq::kernels;

constexpr auto kCt = Convention::kCompressedTensors;
constexpr auto kMo = Convention::kModelOpt;
constexpr auto kFp4 = MxElement::kFp4E2M1;
constexpr auto kFp8 = MxElement::kFp8E4M3;

#define EXPECT_ERROR(stmt, needle)                                                \
  do {                                                                            \
    try {                                                                         \
      (void)(stmt);                                                               \
      ADD_FAILURE() << "no error from " #stmt;                                    \
    } catch (const moeq::Error& e) {                                              \
      EXPECT_NE(e.message().find(needle), std::string::npos)                      \
          << "message: " << e.message() << "\nexpected to contain: " << (needle); \
    }                                                                             \
  } while (false)

bool bits_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) {
    return false;
  }
  const auto view = [](const at::Tensor& t) {
    switch (t.element_size()) {
      case 4:
        return t.contiguous().view(at::kInt);
      case 2:
        return t.contiguous().view(at::kShort);
      default:
        return t.contiguous().view(at::kByte);
    }
  };
  return at::equal(view(a), view(b));
}

int code_of(float amax, MxElement e, Convention c, at::ScalarType dtype = at::kFloat) {
  return mk::mx_scale(at::tensor({amax}).to(dtype), e, c).item<uint8_t>();
}

TEST(MxScaleTest, CompressedTensorsRoundToPowerOfTwo) {
  // round_to_power_2 rounds up from a mantissa fraction of 0.75, then 127 + e - 2 (FP4) / - 8 (FP8)
  EXPECT_EQ(code_of(6.0f, kFp4, kCt), 127);    // 6 = 1.5 * 2^2 -> 2^2
  EXPECT_EQ(code_of(7.0f, kFp4, kCt), 128);    // 1.75 * 2^2 -> 2^3
  EXPECT_EQ(code_of(6.99f, kFp4, kCt), 127);   // fraction 0.7475
  EXPECT_EQ(code_of(448.0f, kFp8, kCt), 128);  // 1.75 * 2^8 -> 2^9
  EXPECT_EQ(code_of(1.0f, kFp8, kCt), 119);
  EXPECT_EQ(code_of(0.0f, kFp4, kCt), 0);  // log2(0) = -inf, clamped
  EXPECT_EQ(code_of(0.0f, kFp8, kCt), 0);
  EXPECT_EQ(code_of(std::ldexp(1.0f, -126), kFp4, kCt), 0);  // 127 - 126 - 2 < 0: clamped
  EXPECT_EQ(code_of(std::ldexp(1.0f, 127), kFp4, kCt), 252);
  // bf16 subnormal amax: the bit trick leaves a zero exponent -> code 0, scale 2^-127 (kept)
  EXPECT_EQ(code_of(std::ldexp(1.0f, -130), kFp4, kCt, at::kBFloat16), 0);
  // fp16: subnormal amax -> code 0, whose scale 2^-127 is 0 in fp16 and becomes 1 (code 127)
  EXPECT_EQ(code_of(std::ldexp(1.0f, -20), kFp4, kCt, at::kHalf), 127);
  EXPECT_EQ(code_of(std::ldexp(1.0f, -14), kFp4, kCt, at::kHalf), 111);
  // an amax that rounds to 2^128 cannot be represented (E8M0 255 is NaN)
  EXPECT_ERROR(mk::mx_scale(at::tensor({3.3e38f}), kFp4, kCt),
               "at [0] rounds to E8M0 code 255 (NaN)");
}

TEST(MxScaleTest, ModelOptCeilLog2) {
  EXPECT_EQ(code_of(6.0f, kFp4, kMo), 127);   // log2(6 / 6) = 0
  EXPECT_EQ(code_of(6.01f, kFp4, kMo), 128);  // ceil
  EXPECT_EQ(code_of(448.0f, kFp8, kMo), 127);
  EXPECT_EQ(code_of(449.0f, kFp8, kMo), 128);
  EXPECT_EQ(code_of(0.0f, kFp4, kMo), 0);  // -127
  EXPECT_EQ(code_of(0.0f, kFp8, kMo), 0);
  // just above 6 * 2^10 the float32 log2 rounds to exactly 10, so ceil gives 10 (torch's result)
  EXPECT_EQ(code_of(std::nextafter(6144.0f, 1e9f), kFp4, kMo), 137);
  EXPECT_EQ(code_of(std::ldexp(1.0f, -140), kFp8, kMo), 0);
  EXPECT_EQ(code_of(std::numeric_limits<float>::max(), kFp8, kMo), 127 + 120);
}

at::Tensor tie_group() {
  // amax 6: scale 1 in both conventions; E2M1 midpoints and zeros
  return at::tensor({6.0f,  0.75f,  1.75f, 3.5f,  0.25f,  5.0f,  2.5f, 1.25f, 0.0f, -0.75f, -1.75f,
                     -3.5f, -0.25f, -5.0f, -2.5f, -1.25f, -0.0f, 4.0f, 3.0f,  2.0f, 1.5f,   1.0f,
                     0.5f,  -6.0f,  5.5f,  0.3f,  0.1f,   -0.1f, 2.9f, 4.5f,  0.6f, 1.1f})
      .reshape({1, 32});
}

TEST(MxQuantTest, Fp4TiesEvenForCompressedTensorsDownForModelOpt) {
  const at::Tensor x = tie_group();
  const at::Tensor ct = mk::fake_quant_mx(x, kFp4, kCt);
  const at::Tensor mo = mk::fake_quant_mx(x, kFp4, kMo);
  const std::vector<float> want_ct = {6,   1,     2,  4,   0,  4,     2, 1, 0,   -1,  -2,
                                      -4,  -0.0f, -4, -2,  -1, 0,     4, 3, 2,   1.5, 1,
                                      0.5, -6,    6,  0.5, 0,  -0.0f, 3, 4, 0.5, 1};
  // ModelOpt: ties down, and an exact zero (even +0) carries the sign bit: it decodes to -0.0
  const std::vector<float> want_mo = {6,   0.5,   1.5, 3,   0,  4,     2, 1, -0.0f, -0.5, -1.5,
                                      -3,  -0.0f, -4,  -2,  -1, -0.0f, 4, 3, 2,     1.5,  1,
                                      0.5, -6,    6,   0.5, 0,  -0.0f, 3, 4, 0.5,   1};
  EXPECT_TRUE(bits_equal(ct, at::tensor(want_ct).reshape({1, 32}))) << ct;
  EXPECT_TRUE(bits_equal(mo, at::tensor(want_mo).reshape({1, 32}))) << mo;
  const auto [d, s] = mk::quantize_mx(x, kFp4, kMo);
  EXPECT_EQ(s.item<uint8_t>(), 127);
  EXPECT_EQ(mk::unpack_fp4(d)[0][8].item<uint8_t>(), 8);  // +0 -> code 8 in ModelOpt's MXFP4
}

TEST(MxQuantTest, Fp8RoundsToNearestEven) {
  // amax 448: CT scale 2^1 (448 rounds up to 2^9), ModelOpt scale 2^0
  at::Tensor x = at::zeros({1, 32});
  x[0][0] = 448.0f;
  x[0][1] = 17.0f;  // CT: 8.5 -> 8 (ties to even) -> 16; ModelOpt: 17 -> 16 (fp8 step 2) ties
  x[0][2] = 19.0f;  // ModelOpt: 19 -> 20
  x[0][3] = 1e-4f;  // below fp8 subnormals
  const at::Tensor ct = mk::fake_quant_mx(x, kFp8, kCt);
  const at::Tensor mo = mk::fake_quant_mx(x, kFp8, kMo);
  EXPECT_EQ(ct[0][0].item<float>(), 448.0f);
  EXPECT_EQ(ct[0][1].item<float>(), 16.0f);
  EXPECT_EQ(mo[0][1].item<float>(), 16.0f);
  EXPECT_EQ(mo[0][2].item<float>(), 20.0f);
  EXPECT_EQ(mo[0][3].item<float>(), 0.0f);
  const auto [d, s] = mk::quantize_mx(x, kFp8, kCt);
  EXPECT_EQ(d.scalar_type(), at::kFloat8_e4m3fn);
  EXPECT_EQ(s.item<uint8_t>(), 128);
}

TEST(MxQuantTest, QuantizeDequantizeEqualsFakeQuant) {
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    at::Tensor x = at::randn({5, 96}).to(dtype);
    x[1] = 0;
    x[2] *= 1e-5;
    for (Convention c : {kCt, kMo}) {
      for (MxElement e : {kFp4, kFp8}) {
        const auto [d, s] = mk::quantize_mx(x, e, c);
        EXPECT_TRUE(bits_equal(mk::dequantize_mx(d, s, e, dtype, c), mk::fake_quant_mx(x, e, c)))
            << c10::toString(dtype);
        EXPECT_TRUE(bits_equal(mk::mx_scale(x.reshape({5, 3, 32}).abs().amax(-1), e, c), s));
        EXPECT_TRUE(
            bits_equal(mk::fake_quant_mx_with_scales(x, s, e, c), mk::fake_quant_mx(x, e, c)));
        EXPECT_TRUE(bits_equal(mk::quantize_mx_with_scales(x, s, e, c), d));
      }
    }
  }
}

TEST(MxQuantTest, TransposedStackEqualsContiguous) {
  const at::Tensor w = at::randn({3, 64, 40}).to(at::kBFloat16);  // [E, in, out]
  const at::Tensor wt = w.transpose(-1, -2);
  for (Convention c : {kCt, kMo}) {
    for (MxElement e : {kFp4, kFp8}) {
      const at::Tensor fq = mk::fake_quant_mx(wt, e, c);
      EXPECT_EQ(fq.strides(), wt.strides());
      EXPECT_TRUE(bits_equal(fq, mk::fake_quant_mx(wt.contiguous(), e, c)));
      const auto [d, s] = mk::quantize_mx(wt, e, c);
      const auto [dc, sc] = mk::quantize_mx(wt.contiguous(), e, c);
      EXPECT_TRUE(bits_equal(d, dc));
      EXPECT_TRUE(bits_equal(s, sc));
      for (int i = 0; i < 3; ++i) {
        EXPECT_TRUE(bits_equal(std::get<0>(mk::quantize_mx(wt[i], e, c)), d[i]));
      }
    }
  }
}

TEST(MxValidationTest, Messages) {
  const at::Tensor x = at::randn({4, 64});
  EXPECT_ERROR(mk::quantize_mx(at::randn({4, 63}), kFp4), "needs an even number of cols, got 63");
  EXPECT_NO_THROW(mk::quantize_mx(at::randn({4, 63}), kFp8));
  EXPECT_ERROR(mk::fake_quant_mx_with_scales(x, at::zeros({4, 2}, at::kInt), kFp4),
               "scales must be Byte, got Int");
  EXPECT_ERROR(mk::fake_quant_mx_with_scales(x, at::zeros({4, 3}, at::kByte), kFp4),
               "scales must have shape [4, 2] (one per 32 values of x [4, 64]), got [4, 3]");
  at::Tensor s = at::full({4, 2}, 127, at::kByte);
  s[3][1] = 255;
  EXPECT_ERROR(mk::quantize_mx_with_scales(x, s, kFp8, kMo),
               "scales: the scale 255 at [3, 1] cannot quantize");
  EXPECT_ERROR(mk::dequantize_mx(at::zeros({4, 32}, at::kByte), s, kFp4, at::kFloat),
               "scales: the scale 255 at [3, 1] cannot dequantize");
  EXPECT_ERROR(mk::dequantize_mx(at::zeros({4, 32}, at::kByte), s, kFp8, at::kFloat),
               "data must be Float8_e4m3fn for MXFP8, got Byte");
  at::Tensor bad = x.clone();
  bad[0][0] = std::numeric_limits<float>::infinity();
  EXPECT_ERROR(mk::fake_quant_mx(bad, kFp8, kCt, "experts.down_proj"),
               "experts.down_proj has a non-finite value inf at [0, 0]");
  EXPECT_ERROR(mk::quantize_mx(at::full({1, 32}, 3.3e38f), kFp4),
               "x: group [0, 0] has an amax at the top of the float range");
}

TEST(MxSourceTest, GptOssBlocksAndScales) {
  // one row, two groups: codes 0..15 twice, scales 2^0 and 2^-127
  at::Tensor blocks = at::zeros({1, 2, 16}, at::kByte);
  for (int j = 0; j < 16; ++j) {
    const int lo = (2 * j) % 16;
    const int hi = (2 * j + 1) % 16;
    blocks[0][0][j] = lo | (hi << 4);
    blocks[0][1][j] = lo | (hi << 4);
  }
  const at::Tensor scales = at::tensor({127, 0}, at::kByte).reshape({1, 2});
  const at::Tensor out = mk::dequantize_mxfp4_source(blocks, scales, at::kFloat);
  ASSERT_EQ(out.sizes(), at::IntArrayRef({1, 64}));
  const std::vector<float> lut = {0,     0.5,  1,  1.5,  2,  3,  4,  6,
                                  -0.0f, -0.5, -1, -1.5, -2, -3, -4, -6};
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(out[0][i].item<float>(), lut[i % 16]) << i;
    EXPECT_EQ(std::signbit(out[0][i].item<float>()), std::signbit(lut[i % 16])) << i;
    EXPECT_EQ(out[0][32 + i].item<float>(), std::ldexp(lut[i % 16], -127)) << i;
  }
  const at::Tensor stack = mk::dequantize_mxfp4_source(
      at::zeros({2, 3, 4, 16}, at::kByte), at::full({2, 3, 4}, 120, at::kByte), at::kBFloat16);
  EXPECT_EQ(stack.sizes(), at::IntArrayRef({2, 3, 128}));
  EXPECT_ERROR(mk::dequantize_mxfp4_source(blocks, at::full({1, 2}, 255, at::kByte), at::kBFloat16),
               "scales: E8M0 code 255 (NaN) at [0, 0]");
  EXPECT_ERROR(mk::dequantize_mxfp4_source(at::zeros({1, 2, 8}, at::kByte), scales, at::kBFloat16),
               "blocks must be [..., groups, 16] (32 E2M1 codes per group), got shape [1, 2, 8]");
  EXPECT_ERROR(
      mk::dequantize_mxfp4_source(blocks, at::zeros({1, 3}, at::kByte), at::kBFloat16),
      "scales must have shape [1, 2] (blocks [1, 2, 16] without its last dim), got [1, 3]");
  EXPECT_ERROR(mk::dequantize_mxfp4_source(blocks, scales.to(at::kInt), at::kBFloat16),
               "scales must be uint8 (E8M0), got Int");
}

}  // namespace
