// Integer quantization ops: compressed-tensors' numerics (checked against its formulas written
// with ATen ops), the hard cases, layouts, and every validation error.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>
#include <tuple>
#include <vector>

#include "kernels_int_fp8_testing.h"
#include "moeq/kernels/int_quant.h"
#include "moeq/kernels/pack.h"
#include "moeq/kernels/reduce.h"

namespace {

namespace mk = moeq::kernels;
using mk::BlockShape;
using mk::IntRange;
using namespace mk::testing;

// compressed-tensors' calculate_qparams with ATen ops, in min/max's dtype.
std::tuple<at::Tensor, at::Tensor> ct_qparams(
    at::Tensor mn, at::Tensor mx, int64_t qmin, int64_t qmax, bool symmetric) {
  mn = at::minimum(mn, at::zeros_like(mn));
  mx = at::maximum(mx, at::zeros_like(mx));
  const at::Tensor bit_min = at::scalar_tensor(static_cast<double>(qmin), at::kFloat);
  const at::Tensor bit_max = at::scalar_tensor(static_cast<double>(qmax), at::kFloat);
  const at::Tensor range = bit_max - bit_min;
  at::Tensor scale;
  at::Tensor zp;
  if (symmetric) {
    scale = at::maximum(mn.abs(), mx.abs()) / (range.to(mn.scalar_type()) / 2);
    zp = at::zeros_like(scale);
  } else {
    scale = (mx - mn) / range.to(mx.scalar_type());
    zp = at::clamp(bit_min - mn / scale, bit_min, bit_max);
  }
  const double eps = mn.scalar_type() == at::kBFloat16 ? 0.0078125
                     : mn.scalar_type() == at::kHalf   ? 0.0009765625
                                                       : 1.1920928955078125e-07;
  scale = at::where(scale == 0, at::scalar_tensor(eps, scale.scalar_type()), scale);
  zp = at::round(at::clamp(zp, -128, 127)).to(at::kChar);
  return {scale, zp};
}

struct Case {
  at::ScalarType x_dtype;
  at::ScalarType scale_dtype;
  BlockShape block;
  bool symmetric;
};

// Random scales and zero points on the block grid of a [..., rows, cols] input.
std::tuple<at::Tensor, at::Tensor> random_grid(at::IntArrayRef shape,
                                               BlockShape block,
                                               at::ScalarType scale_dtype,
                                               int64_t qmin,
                                               int64_t qmax) {
  std::vector<int64_t> g(shape.begin(), shape.end());
  const int64_t rows = g[g.size() - 2];
  const int64_t cols = g[g.size() - 1];
  g[g.size() - 2] = block.rows == 0 ? 1 : (rows + block.rows - 1) / block.rows;
  g[g.size() - 1] = block.cols == 0 ? 1 : (cols + block.cols - 1) / block.cols;
  const at::Tensor scale = (at::rand(g) * 0.05 + 1e-3).to(scale_dtype);
  const at::Tensor zp = at::randint(qmin, qmax + 1, g, at::kChar);
  return {scale, zp};
}

TEST(KernelsIntQuantTest, MatchesComputeTensorsFormulas) {
  const std::vector<BlockShape> blocks = {BlockShape::group(32), BlockShape::channel(),
                                          BlockShape::tensor(), BlockShape::block(16, 32)};
  const std::vector<std::pair<at::ScalarType, at::ScalarType>> dtypes = {
      {at::kFloat, at::kFloat},    {at::kBFloat16, at::kBFloat16}, {at::kHalf, at::kHalf},
      {at::kBFloat16, at::kFloat}, {at::kFloat, at::kBFloat16},    {at::kBFloat16, at::kHalf}};
  int seed = 0;
  for (const auto& [xd, sd] : dtypes) {
    for (const BlockShape block : blocks) {
      for (const bool symmetric : {true, false}) {
        for (const int bits : {4, 8}) {
          SCOPED_TRACE(::testing::Message()
                       << xd << " scale " << sd << " block [" << block.rows << ", " << block.cols
                       << "] sym " << symmetric << " bits " << bits);
          const IntRange range = IntRange::signed_bits(bits);
          const at::Tensor x = hard_values({50, 100}, xd, ++seed);  // partial last blocks
          auto [scale, zp] = random_grid(x.sizes(), block, sd, range.qmin, range.qmax);
          const std::optional<at::Tensor> z = symmetric ? std::nullopt : std::optional(zp);
          const int64_t br = block.rows == 0 ? 50 : block.rows;
          const int64_t bc = block.cols == 0 ? 100 : block.cols;
          const at::Tensor s_full = expand_grid(scale, 50, 100, br, bc);
          const std::optional<at::Tensor> z_full =
              symmetric ? std::nullopt : std::optional(expand_grid(zp, 50, 100, br, bc));

          EXPECT_TRUE(bits_equal(mk::fake_quant_int(x, scale, z, block, range),
                                 ct_fake_int(x, s_full, z_full, range.qmin, range.qmax)));
          const at::Tensor q = mk::quantize_int(x, scale, z, block, range);
          EXPECT_TRUE(
              bits_equal(q, ct_int_code(x, s_full, z_full, range.qmin, range.qmax).to(at::kChar)));
          at::Tensor dq = q.to(sd);
          if (z_full) {
            dq = dq - z_full->to(sd);
          }
          EXPECT_TRUE(bits_equal(mk::dequantize_int(q, scale, z, block, xd), (dq * s_full).to(xd)));
        }
      }
    }
  }
}

TEST(KernelsIntQuantTest, RoundsHalfToEven) {
  const at::Tensor x =
      at::tensor({0.5f, 1.5f, 2.5f, 3.5f, -0.5f, -1.5f, -2.5f, -3.5f, 6.5f}).view({1, 9});
  const at::Tensor one = at::ones({1, 1});
  const at::Tensor q = mk::quantize_int(x, one, std::nullopt, BlockShape::tensor(), {-8, 7});
  EXPECT_TRUE(bits_equal(q, at::tensor({0, 2, 2, 4, 0, -2, -2, -4, 6}, at::kChar).view({1, 9})));
  // With a zero point the tie is taken after adding it: 0.5 + 1 = 1.5 -> 2.
  const at::Tensor zp = at::ones({1, 1}, at::kChar);
  const at::Tensor qz = mk::quantize_int(x, one, zp, BlockShape::tensor(), {-8, 7});
  EXPECT_TRUE(bits_equal(qz, at::tensor({2, 2, 4, 4, 0, 0, -2, -2, 7}, at::kChar).view({1, 9})));
}

TEST(KernelsIntQuantTest, ClampsHugeValuesKeepsZerosAndSubnormals) {
  const at::Tensor x = at::tensor({1e30f, -1e30f, 0.0f, -0.0f, 1e-40f, -1e-40f}).view({1, 6});
  const at::Tensor s = at::full({1, 1}, 1e-38f);
  const at::Tensor q = mk::quantize_int(x, s, std::nullopt, BlockShape::tensor(), {-8, 7});
  // 1e-40 / 1e-38 = 0.01 -> 0
  EXPECT_TRUE(bits_equal(q, at::tensor({7, -8, 0, 0, 0, 0}, at::kChar).view({1, 6})));
  const at::Tensor f = mk::fake_quant_int(x, s, std::nullopt, BlockShape::tensor(), {-8, 7});
  EXPECT_TRUE(bits_equal(f, ct_fake_int(x, s.expand({1, 6}), std::nullopt, -8, 7)));
}

TEST(KernelsIntQuantTest, QParamsFollowCalculateQparams) {
  for (const at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const bool symmetric : {true, false}) {
      for (const int bits : {2, 4, 8}) {
        SCOPED_TRACE(::testing::Message() << dt << " sym " << symmetric << " bits " << bits);
        const IntRange r = IntRange::signed_bits(bits);
        at::Tensor x = hard_values({40, 256}, dt, bits);
        x[7].zero_();  // an all-zero row: zero scale -> eps, zero point NaN -> 0
        const auto [mn, mx] = mk::block_minmax(x, BlockShape::group(64));
        const auto [scale, zp] = mk::int_qparams(mn, mx, r, symmetric, dt);
        const auto [want_scale, want_zp] =
            ct_qparams(mn.to(dt), mx.to(dt), r.qmin, r.qmax, symmetric);
        EXPECT_TRUE(bits_equal(scale, want_scale));
        EXPECT_EQ(scale.scalar_type(), dt);
        EXPECT_TRUE(bits_equal(zp, want_zp));  // zeros when symmetric, as calculate_qparams
        EXPECT_EQ(zp[7][0].item<int>(), 0);
        EXPECT_TRUE(bits_equal(scale[7][0], want_scale[7][0]));
        const double eps = dt == at::kBFloat16 ? 0.0078125
                           : dt == at::kHalf   ? 0.0009765625
                                               : 1.1920928955078125e-07;
        EXPECT_EQ(scale[7][0].item<double>(), eps);
      }
    }
  }
}

TEST(KernelsIntQuantTest, ZeroZeroPointTurnsNegativeZeroPositive) {
  // compressed-tensors adds its (zero) zero point for symmetric schemes too: -0.0 / s + 0 = +0.
  const at::Tensor x = at::tensor({-0.0f, -1e-30f, 0.0f}).view({1, 3});
  const at::Tensor s = at::ones({1, 1});
  const at::Tensor without = mk::fake_quant_int(x, s, std::nullopt, BlockShape::tensor(), {-8, 7});
  const at::Tensor with =
      mk::fake_quant_int(x, s, at::zeros({1, 1}, at::kChar), BlockShape::tensor(), {-8, 7});
  EXPECT_TRUE(std::signbit(without[0][0].item<float>()));
  EXPECT_FALSE(std::signbit(with[0][0].item<float>()));
  EXPECT_TRUE(std::signbit(with[0][1].item<float>()));  // round(-1e-30) is -0 either way
  EXPECT_TRUE(
      bits_equal(with, ct_fake_int(x, s.expand({1, 3}), at::zeros({1, 3}, at::kChar), -8, 7)));
}

TEST(KernelsIntQuantTest, AllZeroGroupsStayZero) {
  for (const bool symmetric : {true, false}) {
    const at::Tensor x = at::zeros({4, 128}, at::kBFloat16);
    const auto [mn, mx] = mk::block_minmax(x, BlockShape::group(128));
    const auto [scale, zp] =
        mk::int_qparams(mn, mx, IntRange::signed_bits(4), symmetric, at::kBFloat16);
    const at::Tensor f = mk::fake_quant_int(x, scale, symmetric ? std::nullopt : std::optional(zp),
                                            BlockShape::group(128), IntRange::signed_bits(4));
    EXPECT_TRUE(bits_equal(f, x));
  }
}

TEST(KernelsIntQuantTest, TransposedViewEqualsContiguousCopy) {
  const at::Tensor stack = hard_values({3, 96, 64}, at::kBFloat16, 5);  // [E, in, out]
  const at::Tensor xt = stack.transpose(-1, -2);                        // [E, out, in] view
  const BlockShape group = BlockShape::group(32);
  const at::Tensor amax_t = mk::block_amax(xt, group);
  const at::Tensor amax_c = mk::block_amax(xt.contiguous(), group);
  EXPECT_TRUE(bits_equal(amax_t, amax_c));
  EXPECT_EQ(amax_t.stride(-2), 1);  // laid out like x: rows contiguous
  const auto [scale, zp] =
      mk::int_qparams(-amax_t, amax_t, IntRange::signed_bits(4), true, at::kBFloat16);
  const at::Tensor f = mk::fake_quant_int(xt, scale, std::nullopt, group, IntRange::signed_bits(4));
  EXPECT_EQ(f.strides(), xt.strides());  // the output keeps the input's layout
  EXPECT_TRUE(bits_equal(f, mk::fake_quant_int(xt.contiguous(), scale.contiguous(), std::nullopt,
                                               group, IntRange::signed_bits(4))));
  const at::Tensor q = mk::quantize_int(xt, scale, std::nullopt, group, IntRange::signed_bits(4));
  EXPECT_EQ(q.strides(), xt.strides());
  EXPECT_TRUE(bits_equal(mk::quantize_int_packed(xt, scale, std::nullopt, group, 4),
                         mk::pack_int(q.contiguous(), 4)));
}

TEST(KernelsIntQuantTest, StacksUseOneGridPerExpertOrOneShared) {
  const at::Tensor x = hard_values({4, 24, 64}, at::kFloat, 9);
  const IntRange r = IntRange::signed_bits(8);
  const at::Tensor per_expert = at::rand({4, 24, 1}) * 0.1 + 0.01;
  const at::Tensor f = mk::fake_quant_int(x, per_expert, std::nullopt, BlockShape::channel(), r);
  for (int64_t e = 0; e < 4; ++e) {
    EXPECT_TRUE(bits_equal(
        f[e], mk::fake_quant_int(x[e], per_expert[e], std::nullopt, BlockShape::channel(), r)));
  }
  const at::Tensor shared = at::rand({24, 1}) * 0.1 + 0.01;
  const at::Tensor g = mk::fake_quant_int(x, shared, std::nullopt, BlockShape::channel(), r);
  for (int64_t e = 0; e < 4; ++e) {
    EXPECT_TRUE(
        bits_equal(g[e], mk::fake_quant_int(x[e], shared, std::nullopt, BlockShape::channel(), r)));
  }
  // 4-D inputs collapse their leading dims into one batch.
  const at::Tensor x4 = x.view({2, 2, 24, 64});
  EXPECT_TRUE(bits_equal(mk::fake_quant_int(x4, per_expert.view({2, 2, 24, 1}), std::nullopt,
                                            BlockShape::channel(), r),
                         f.view({2, 2, 24, 64})));
}

TEST(KernelsIntQuantTest, DynamicEqualsStaticOnObservedQParams) {
  for (const bool symmetric : {true, false}) {
    const at::Tensor x = hard_values({2, 16, 128}, at::kBFloat16, 11);
    const IntRange r = IntRange::signed_bits(8);
    const auto [mn, mx] = mk::block_minmax(x, BlockShape::channel());
    const auto [scale, zp] = mk::int_qparams(mn, mx, r, symmetric, at::kBFloat16);
    const at::Tensor want = mk::fake_quant_int(x, scale, zp, BlockShape::channel(), r);
    EXPECT_TRUE(bits_equal(
        mk::fake_quant_int_dynamic(x, BlockShape::channel(), r, symmetric, "act"), want));
  }
}

TEST(KernelsIntQuantTest, QuantizePackedEqualsQuantizeThenPack) {
  for (const int bits : {2, 3, 4, 8}) {
    const at::Tensor x = hard_values({2, 8, 96}, at::kBFloat16, bits);
    const IntRange r = IntRange::signed_bits(bits);
    auto [scale, zp] = random_grid(x.sizes(), BlockShape::group(32), at::kBFloat16, r.qmin, r.qmax);
    EXPECT_TRUE(
        bits_equal(mk::quantize_int_packed(x, scale, zp, BlockShape::group(32), bits),
                   mk::pack_int(mk::quantize_int(x, scale, zp, BlockShape::group(32), r), bits)));
  }
}

TEST(KernelsIntQuantTest, EmptyInputs) {
  const at::Tensor x = at::zeros({0, 64});
  const at::Tensor s = at::ones({0, 2});
  EXPECT_EQ(mk::fake_quant_int(x, s, std::nullopt, BlockShape::group(32), {-8, 7}).numel(), 0);
  EXPECT_EQ(mk::block_amax(x, BlockShape::group(32)).sizes(), (std::vector<int64_t>{0, 2}));
}

TEST(KernelsIntQuantTest, RejectsBadInputs) {
  const at::Tensor x = at::randn({8, 64});
  const at::Tensor s = at::ones({8, 2});
  const BlockShape g = BlockShape::group(32);
  const IntRange r = IntRange::signed_bits(4);
  EXPECT_ERROR(IntRange::signed_bits(0), "num_bits must be in 1..8, got 0");
  EXPECT_ERROR(IntRange::signed_bits(9), "num_bits must be in 1..8, got 9");
  EXPECT_ERROR(mk::fake_quant_int(x.to(at::kInt), s, std::nullopt, g, r),
               "fake_quant_int: x must be float32, bfloat16 or float16, got Int");
  EXPECT_ERROR(mk::fake_quant_int(x, s.to(at::kInt), std::nullopt, g, r),
               "fake_quant_int: scale must be float32, bfloat16 or float16, got Int");
  EXPECT_ERROR(mk::fake_quant_int(x, at::ones({8, 3}), std::nullopt, g, r),
               "fake_quant_int: scale has shape [8, 3], but x of shape [8, 64] with block [1, 32] "
               "needs the block grid [8, 2]");
  EXPECT_ERROR(mk::fake_quant_int(x.view({2, 4, 64}), at::ones({3, 4, 2}), std::nullopt, g, r),
               "needs the block grid [2, 4, 2]");
  EXPECT_ERROR(mk::fake_quant_int(x.view({512}), s, std::nullopt, g, r),
               "fake_quant_int: x must have at least 2 dims [..., rows, cols], got shape [512]");
  EXPECT_ERROR(mk::fake_quant_int(x, s, std::nullopt, BlockShape{-1, 32}, r),
               "block extents must be >= 0 (0: the whole extent), got [-1, 32]");
  EXPECT_ERROR(mk::fake_quant_int(x, s, std::nullopt, g, {-8, 200}),
               "integer range [-8, 200] must satisfy -128 <= qmin < qmax <= 127");
  EXPECT_ERROR(mk::quantize_int(x, s, std::nullopt, g, {7, -8}),
               "quantize_int: integer range [7, -8]");
  EXPECT_ERROR(mk::fake_quant_int(x, s, at::ones({8, 2}, at::kBool), g, r),
               "zero_point must be int8, int32, a float or an fp8 type, got Bool");
  EXPECT_ERROR(mk::fake_quant_int(x, s, at::ones({8, 1}, at::kChar), g, r),
               "zero_point has shape [8, 1]");
  EXPECT_ERROR(mk::dequantize_int(x, s, std::nullopt, g, at::kFloat),
               "dequantize_int: q must be int8 codes, got Float");
  EXPECT_ERROR(mk::dequantize_int(x.to(at::kChar), s, std::nullopt, g, at::kInt),
               "dequantize_int: out_dtype must be float32, bfloat16 or float16, got Int");
  // Leading dims that do not collapse into one batch dim.
  const at::Tensor x4 = at::randn({3, 4, 8, 64}).transpose(0, 1);
  EXPECT_ERROR(mk::fake_quant_int(x4, at::ones({8, 2}), std::nullopt, g, r),
               "do not collapse into one batch dim");
  EXPECT_ERROR(mk::int_qparams(at::zeros({4}), at::zeros({5}), r, true, at::kFloat),
               "int_qparams: min_vals [4] and max_vals [5] must have the same shape");
  EXPECT_ERROR(mk::int_qparams(at::zeros({4}), at::zeros({4}), r, true, at::kInt),
               "int_qparams: scale_dtype must be float32, bfloat16 or float16, got Int");
  EXPECT_ERROR(mk::int_qparams(at::zeros({4}, at::kInt), at::zeros({4}), r, true, at::kFloat),
               "int_qparams: min_vals must be float32, bfloat16 or float16, got Int");
  EXPECT_ERROR(mk::quantize_int_packed(x, s, std::nullopt, g, 9),
               "quantize_int_packed: num_bits must be in 1..8, got 9");
  at::Tensor bad = x.clone();
  bad[3][5] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_ERROR(mk::fake_quant_int_dynamic(bad, BlockShape::channel(), r, true, "layers.0.input"),
               "block_minmax: layers.0.input contains NaN or Inf values");
}

}  // namespace
