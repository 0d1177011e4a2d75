// NVFP4 and FP4 packing: numeric properties of the CPU reference and the op layer's validation.
// (Conformance with compressed-tensors / ModelOpt is in tests/python/test_kernels_fp4.py.)
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include "moeq/core/error.h"
#include "moeq/kernels/fp4_quant.h"

namespace {

using moeq::kernels::Convention;
namespace mk = moeq::kernels;

constexpr auto kCt = Convention::kCompressedTensors;
constexpr auto kMo = Convention::kModelOpt;

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

at::Tensor f32(std::vector<float> v) {
  return at::tensor(v, at::kFloat);
}

uint8_t fp8_bits(float v) {
  return at::tensor({v}).to(at::kFloat8_e4m3fn).view(at::kByte).item<uint8_t>();
}

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

// One group of 16 with scale e = 1 (block scale 1.0, global 1): x / e hits the E2M1 midpoints.
TEST(Fp4Nvfp4Test, TiesRoundToEvenMantissa) {
  const at::Tensor x = f32({0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f, -0.25f, -0.75f,
                            -1.25f, -1.75f, -2.5f, -3.5f, -5.0f, 5.01f})
                           .reshape({1, 16});
  const at::Tensor scale = at::ones({1, 1}).to(at::kFloat8_e4m3fn);
  const at::Tensor want = f32({0.0f, 1.0f, 1.0f, 2.0f, 2.0f, 4.0f, 4.0f, 6.0f, -0.0f, -1.0f, -1.0f,
                               -2.0f, -2.0f, -4.0f, -4.0f, 6.0f})
                              .reshape({1, 16});
  for (Convention c : {kCt, kMo}) {
    at::Tensor expect = want.clone();
    if (c == kMo) {
      expect[0][8] = 0.0f;  // ModelOpt's lookup table decodes code 8 to +0.0
    }
    const at::Tensor got = mk::fake_quant_nvfp4_with_scales(x, scale, at::ones({1}), c);
    EXPECT_TRUE(bits_equal(got, expect)) << got;
  }
  // codes: 0.25 -> 0, 0.75 -> 2 (1.0), ... -0.25 -> 8 (negative zero), -0.75 -> 10
  const at::Tensor packed = mk::quantize_nvfp4_with_scales(x, scale, at::ones({1}), kCt);
  const at::Tensor codes = mk::unpack_fp4(packed);
  const std::vector<uint8_t> want_codes = {0, 2, 2, 4, 4, 6, 6, 7, 8, 10, 10, 12, 12, 14, 14, 7};
  for (int i = 0; i < 16; ++i) {
    EXPECT_EQ(codes[0][i].item<uint8_t>(), want_codes[i]) << "element " << i;
  }
}

TEST(Fp4Nvfp4Test, NegativeZeroSignFollowsEachLibrary) {
  // -1e-3 rounds to zero with the sign bit set (code 8); -0.0 gives code 0 in both libraries.
  at::Tensor x = at::zeros({1, 16});
  x[0][0] = 6.0f;
  x[0][1] = -1e-3f;
  x[0][2] = -0.0f;
  const at::Tensor codes = mk::unpack_fp4(std::get<0>(mk::quantize_nvfp4(x, at::ones({1}), kCt)));
  EXPECT_EQ(codes[0][1].item<uint8_t>(), 8);
  EXPECT_EQ(codes[0][2].item<uint8_t>(), 0);
  // compressed-tensors dequantizes code 8 to -0.0, ModelOpt's table to +0.0.
  const at::Tensor ct = mk::fake_quant_nvfp4(x, at::ones({1}), kCt);
  const at::Tensor mo = mk::fake_quant_nvfp4(x, at::full({1}, 1.0f / 448.0f), kMo);
  EXPECT_TRUE(std::signbit(ct[0][1].item<float>()));
  EXPECT_FALSE(std::signbit(mo[0][1].item<float>()));
  EXPECT_FALSE(std::signbit(ct[0][2].item<float>()));
}

TEST(Fp4Nvfp4Test, AllZeroGroupScales) {
  const at::Tensor x = at::zeros({2, 32});
  // compressed-tensors: scale 0 -> fp8 eps 0.125; ModelOpt: ratio 0 -> 1.0.
  const auto [p_ct, s_ct] = mk::quantize_nvfp4(x, at::ones({1}), kCt);
  const auto [p_mo, s_mo] = mk::quantize_nvfp4(x, at::ones({1}), kMo);
  EXPECT_TRUE((s_ct.view(at::kByte) == fp8_bits(0.125f)).all().item<bool>());
  EXPECT_TRUE((s_mo.view(at::kByte) == fp8_bits(1.0f)).all().item<bool>());
  EXPECT_TRUE((p_ct == 0).all().item<bool>());
  EXPECT_TRUE((p_mo == 0).all().item<bool>());
  EXPECT_TRUE((mk::fake_quant_nvfp4(x, at::ones({1}), kCt) == 0).all().item<bool>());
  // a whole zero tensor: compressed-tensors' global scale is 1
  EXPECT_EQ(mk::nvfp4_global_scale(at::zeros({})).item<float>(), 1.0f);
}

TEST(Fp4Nvfp4Test, UnderflowingAndSubnormalBlockScales) {
  // global 1: a group amax of 6 * 2^-12 gives a block scale of 2^-12, below half of the smallest
  // fp8 subnormal (2^-9): compressed-tensors gets 0 -> 0.125, ModelOpt clamps to 2^-9.
  at::Tensor x = at::zeros({1, 48});
  x[0][0] = 6.0f * std::ldexp(1.0f, -12);
  x[0][16] = 6.0f * std::ldexp(1.0f, -8);         // 2^-8: an fp8 subnormal
  x[0][32] = 6.0f * 3.0f * std::ldexp(1.0f, -9);  // 3 * 2^-9: subnormal, mantissa 3
  const auto [p_ct, s_ct] = mk::quantize_nvfp4(x, at::ones({1}), kCt);
  const auto [p_mo, s_mo] = mk::quantize_nvfp4(x, at::ones({1}), kMo);
  const at::Tensor sct = s_ct.view(at::kByte)[0];
  const at::Tensor smo = s_mo.view(at::kByte)[0];
  EXPECT_EQ(sct[0].item<uint8_t>(), fp8_bits(0.125f));
  EXPECT_EQ(smo[0].item<uint8_t>(), 0x01);  // 2^-9
  EXPECT_EQ(sct[1].item<uint8_t>(), 0x02);  // 2^-8
  EXPECT_EQ(smo[1].item<uint8_t>(), 0x02);
  EXPECT_EQ(sct[2].item<uint8_t>(), 0x03);
  // the underflowing group quantizes to zero with compressed-tensors (e = 0.125); with ModelOpt
  // (e = 2^-9) x / e = 0.75 is a tie that rounds to 1: x' = 2^-9
  EXPECT_EQ(mk::fake_quant_nvfp4(x, at::ones({1}), kCt)[0][0].item<float>(), 0.0f);
  EXPECT_EQ(mk::fake_quant_nvfp4(x, at::ones({1}), kMo)[0][0].item<float>(), std::ldexp(1.0f, -9));
}

TEST(Fp4Nvfp4Test, HugeValuesStayFinite) {
  for (auto dtype : {at::kFloat, at::kBFloat16}) {
    const at::Tensor x = (at::randn({4, 64}) * 1e37).to(dtype);
    const at::Tensor gs = mk::nvfp4_global_scale(x.abs().amax());
    EXPECT_TRUE(at::isfinite(mk::fake_quant_nvfp4(x, gs, kCt)).all().item<bool>());
    const at::Tensor wsf2 = mk::nvfp4_global_scale(x.abs().amax(), kMo);
    EXPECT_TRUE(at::isfinite(mk::fake_quant_nvfp4(x, wsf2, kMo)).all().item<bool>());
  }
  const at::Tensor h = ((at::rand({4, 64}) * 2 - 1) * 60000).to(at::kHalf);
  EXPECT_TRUE(at::isfinite(mk::fake_quant_nvfp4(h, mk::nvfp4_global_scale(h.abs().amax())))
                  .all()
                  .item<bool>());
}

TEST(Fp4Nvfp4Test, ExpertStackUsesOneGlobalPerExpert) {
  const at::Tensor w = at::randn({3, 8, 64}) * at::tensor({1.0f, 10.0f, 0.01f}).reshape({3, 1, 1});
  const at::Tensor gs = mk::nvfp4_global_scale(w.abs().amax({1, 2}));
  ASSERT_EQ(gs.sizes(), at::IntArrayRef({3}));
  const auto [p, s] = mk::quantize_nvfp4(w, gs);
  const at::Tensor fq = mk::fake_quant_nvfp4(w, gs);
  for (int e = 0; e < 3; ++e) {
    const auto [pe, se] = mk::quantize_nvfp4(w[e], gs[e]);
    EXPECT_TRUE(bits_equal(p[e], pe)) << "expert " << e;
    EXPECT_TRUE(bits_equal(s[e], se)) << "expert " << e;
    EXPECT_TRUE(bits_equal(fq[e], mk::fake_quant_nvfp4(w[e], gs[e]))) << "expert " << e;
  }
}

TEST(Fp4Nvfp4Test, TransposedViewEqualsContiguous) {
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor w = at::randn({2, 48, 40}).to(dtype);  // [E, in, out]
    const at::Tensor wt = w.transpose(-1, -2);              // [E, out, in], not contiguous
    const at::Tensor wc = wt.contiguous();
    const at::Tensor gs = at::tensor({300.0f, 500.0f});
    for (Convention c : {kCt, kMo}) {
      const at::Tensor g = c == kCt ? gs : 1.0f / gs;
      const at::Tensor fq = mk::fake_quant_nvfp4(wt, g, c);
      EXPECT_EQ(fq.strides(), wt.strides()) << "fake quant keeps the layout";
      EXPECT_TRUE(bits_equal(fq, mk::fake_quant_nvfp4(wc, g, c)));
      const auto [p, s] = mk::quantize_nvfp4(wt, g, c);
      const auto [pc, sc] = mk::quantize_nvfp4(wc, g, c);
      EXPECT_TRUE(p.is_contiguous() && s.is_contiguous());
      EXPECT_TRUE(bits_equal(p, pc));
      EXPECT_TRUE(bits_equal(s, sc));
    }
  }
}

TEST(Fp4Nvfp4Test, QuantizeDequantizeEqualsFakeQuant) {
  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf}) {
    const at::Tensor x = at::randn({6, 64}).to(dtype);
    for (Convention c : {kCt, kMo}) {
      const at::Tensor g = c == kCt ? mk::nvfp4_global_scale(x.abs().amax())
                                    : mk::nvfp4_global_scale(x.abs().amax(), kMo);
      const auto [p, s] = mk::quantize_nvfp4(x, g, c);
      EXPECT_TRUE(
          bits_equal(mk::dequantize_nvfp4(p, s, g, dtype, c), mk::fake_quant_nvfp4(x, g, c)));
      EXPECT_TRUE(bits_equal(mk::nvfp4_block_scale(x.reshape({6, 4, 16}).abs().amax(-1), g, c), s));
    }
  }
}

TEST(Fp4Nvfp4Test, SweepNeverWorseThanAmaxScale) {
  const at::Tensor x = at::randn({16, 64});
  const at::Tensor ga = x.abs().amax();
  const auto [scales, amax] = mk::nvfp4_fp8_scale_sweep(x, ga, kMo);
  const at::Tensor wsf2 = mk::nvfp4_global_scale(ga, kMo);
  const at::Tensor plain = mk::nvfp4_block_scale_static(x.reshape({16, 4, 16}).abs().amax(-1), ga);
  const auto err = [&](const at::Tensor& s) {
    return (mk::fake_quant_nvfp4_with_scales(x, s, wsf2, kMo) - x).pow(2).sum().item<double>();
  };
  EXPECT_LE(err(scales), err(plain));
  EXPECT_TRUE(bits_equal(scales, mk::nvfp4_block_scale_static(amax, ga)));
  const at::Tensor gs = mk::nvfp4_global_scale(ga);
  const auto [ct_scales, ct_amax] = mk::nvfp4_fp8_scale_sweep(x, gs, kCt);
  const at::Tensor ct_plain = mk::nvfp4_block_scale(x.reshape({16, 4, 16}).abs().amax(-1), gs);
  EXPECT_LE((mk::fake_quant_nvfp4_with_scales(x, ct_scales, gs) - x).pow(2).sum().item<double>(),
            (mk::fake_quant_nvfp4_with_scales(x, ct_plain, gs) - x).pow(2).sum().item<double>());
}

TEST(Fp4PackTest, RoundTripAndNibbleOrder) {
  const at::Tensor codes = at::randint(0, 16, {5, 3, 18}, at::kByte);
  const at::Tensor packed = mk::pack_fp4(codes);
  EXPECT_EQ(packed.sizes(), at::IntArrayRef({5, 3, 9}));
  EXPECT_TRUE(at::equal(packed, codes.slice(-1, 0, 18, 2) | (codes.slice(-1, 1, 18, 2) * 16)));
  EXPECT_TRUE(at::equal(mk::unpack_fp4(packed), codes));
  EXPECT_TRUE(at::equal(mk::pack_fp4(codes.transpose(0, 1).contiguous().transpose(0, 1)), packed));
  const at::Tensor one = at::tensor({3, 12}, at::kByte);
  EXPECT_EQ(mk::pack_fp4(one).item<uint8_t>(), 0xC3);
}

TEST(Fp4ValidationTest, Messages) {
  const at::Tensor x = at::randn({4, 32});
  const at::Tensor one = at::ones({1});
  EXPECT_ERROR(mk::fake_quant_nvfp4(at::randn({32}), one),
               "x: expected [..., rows, cols] with at least 2 dims, got shape [32]");
  EXPECT_ERROR(mk::fake_quant_nvfp4(at::ones({4, 32}, at::kInt), one),
               "x: expected a float32, bfloat16 or float16 tensor, got Int");
  EXPECT_ERROR(mk::fake_quant_nvfp4(x, at::ones({3})),
               "x: the global scale must hold 1 value or one per matrix (1), got shape [3]");
  EXPECT_ERROR(mk::fake_quant_nvfp4(x, at::ones({1}, at::kInt)),
               "x: the global scale must be a float tensor, got Int");
  EXPECT_ERROR(mk::fake_quant_nvfp4(x, at::zeros({1})),
               "x: the global scale 0 of matrix 0 must be finite and positive");
  EXPECT_ERROR(mk::quantize_nvfp4(at::randn({4, 31}), one),
               "x: packed FP4 holds two values per byte and needs an even number of cols, got 31");
  at::Tensor bad = x.clone();
  bad[3][17] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_ERROR(mk::fake_quant_nvfp4(bad, one, kCt, "layers.0.w1"),
               "layers.0.w1 has a non-finite value nan at [3, 17] (shape [4, 32])");
  bad[3][17] = -std::numeric_limits<float>::infinity();
  EXPECT_ERROR(mk::quantize_nvfp4(bad, one, kMo, "w2"),
               "w2 has a non-finite value -inf at [3, 17]");
  EXPECT_ERROR(mk::nvfp4_fp8_scale_sweep(bad, one, kMo, "w3"), "w3 has a non-finite value -inf");
  EXPECT_ERROR(mk::fake_quant_nvfp4_with_scales(x, at::ones({4, 2}), one),
               "block_scale must be Float8_e4m3fn, got Float");
  EXPECT_ERROR(mk::fake_quant_nvfp4_with_scales(x, at::ones({4, 1}).to(at::kFloat8_e4m3fn), one),
               "block_scale must have shape [4, 2] (one per 16 values of x [4, 32]), got [4, 1]");
  at::Tensor zs = at::ones({4, 2}).to(at::kFloat8_e4m3fn);
  zs.view(at::kByte)[2][1] = 0;
  EXPECT_ERROR(mk::quantize_nvfp4_with_scales(x, zs, one),
               "block_scale: the scale 0 at [2, 1] cannot quantize");
  zs.view(at::kByte)[2][1] = 0x7f;
  EXPECT_ERROR(mk::dequantize_nvfp4(at::zeros({4, 16}, at::kByte), zs, one, at::kBFloat16),
               "block_scale: the scale nan at [2, 1] cannot dequantize");
  EXPECT_ERROR(mk::dequantize_nvfp4(at::zeros({4, 16}, at::kInt), zs, one, at::kBFloat16),
               "packed must be uint8, got Int");
  EXPECT_ERROR(mk::dequantize_nvfp4(at::zeros({4, 16}, at::kByte), zs, one, at::kInt),
               "out_dtype: expected float32, bfloat16 or float16, got Int");
  EXPECT_ERROR(mk::nvfp4_global_scale(f32({1.0f, -2.0f})),
               "amax has a value -2 at [1] that is not finite and non-negative");
  EXPECT_ERROR(mk::nvfp4_block_scale(at::ones({2, 2}), at::full({1}, -1.0f)),
               "block_amax: the global value -1 of matrix 0 must be finite and positive");
  EXPECT_ERROR(mk::pack_fp4(at::full({2, 4}, 16, at::kByte)),
               "codes: 16 at [0, 0] is not an E2M1 code");
  EXPECT_ERROR(mk::pack_fp4(at::zeros({2, 3}, at::kByte)),
               "codes: packing two per byte needs an even last dim, got 3");
  EXPECT_ERROR(mk::unpack_fp4(at::zeros({2, 3}, at::kInt)), "packed must be uint8, got Int");
}

}  // namespace
