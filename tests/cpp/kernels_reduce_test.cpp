// Block reductions: amax / min / max per block for every block shape, layouts, stacks, and the
// NaN / Inf error naming the tensor.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <limits>
#include <vector>

#include "kernels_int_fp8_testing.h"
#include "moeq/kernels/reduce.h"

namespace {

namespace mk = moeq::kernels;
using mk::BlockShape;
using namespace mk::testing;

// Reference: pad to whole blocks with a neutral value, reshape, reduce.
at::Tensor ref_reduce(const at::Tensor& x, int64_t br, int64_t bc, int kind) {
  const int64_t rows = x.size(-2);
  const int64_t cols = x.size(-1);
  const int64_t nr = (rows + br - 1) / br;
  const int64_t nc = (cols + bc - 1) / bc;
  const double fill = kind == 0 ? 0.0 : (kind == 1 ? INFINITY : -INFINITY);
  at::Tensor v = kind == 0 ? x.to(at::kFloat).abs() : x.to(at::kFloat) + 0.0;
  std::vector<int64_t> padded(x.sizes().begin(), x.sizes().end());
  padded[padded.size() - 2] = nr * br;
  padded[padded.size() - 1] = nc * bc;
  at::Tensor p = at::full(padded, fill);
  p.slice(-2, 0, rows).slice(-1, 0, cols).copy_(v);
  std::vector<int64_t> blocks(x.sizes().begin(), x.sizes().end() - 2);
  const int64_t lead = static_cast<int64_t>(blocks.size());
  blocks.insert(blocks.end(), {nr, br, nc, bc});
  p = p.reshape(blocks);
  const std::vector<int64_t> dims = {lead + 1, lead + 3};
  return kind == 1 ? p.amin(dims) : p.amax(dims);
}

TEST(KernelsReduceTest, AllBlockShapes) {
  const std::vector<BlockShape> blocks = {BlockShape::tensor(),      BlockShape::channel(),
                                          BlockShape::group(32),     BlockShape::group(7),
                                          BlockShape::block(16, 32), BlockShape::block(3, 1)};
  int seed = 0;
  for (const at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
    for (const BlockShape b : blocks) {
      SCOPED_TRACE(::testing::Message() << dt << " [" << b.rows << ", " << b.cols << "]");
      const at::Tensor x = hard_values({2, 45, 100}, dt, ++seed);
      const int64_t br = b.rows == 0 ? 45 : b.rows;
      const int64_t bc = b.cols == 0 ? 100 : b.cols;
      EXPECT_TRUE(bits_equal(mk::block_amax(x, b), ref_reduce(x, br, bc, 0)));
      const auto [mn, mx] = mk::block_minmax(x, b);
      EXPECT_TRUE(bits_equal(mn, ref_reduce(x, br, bc, 1)));
      EXPECT_TRUE(bits_equal(mx, ref_reduce(x, br, bc, 2)));
      // A transposed view: same values, grid laid out like the view.
      const at::Tensor t = x.transpose(-1, -2).contiguous().transpose(-1, -2);
      const at::Tensor at_ = mk::block_amax(t, b);
      EXPECT_TRUE(bits_equal(at_, ref_reduce(x, br, bc, 0)));
      if (at_.size(-2) > 1) {
        EXPECT_EQ(at_.stride(-2), 1);
      }
    }
  }
}

TEST(KernelsReduceTest, NegativeZeroCountsAsZero) {
  const at::Tensor x = at::tensor({-0.0f, -0.0f}).view({1, 2});
  const auto [mn, mx] = mk::block_minmax(x, BlockShape::tensor());
  EXPECT_FALSE(std::signbit(mn.item<float>()));
  EXPECT_FALSE(std::signbit(mx.item<float>()));
}

TEST(KernelsReduceTest, NonFiniteInputIsAnErrorNamingTheTensor) {
  for (const float bad :
       {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
        -std::numeric_limits<float>::infinity()}) {
    at::Tensor x = at::randn({4, 64});
    x[2][17] = bad;
    EXPECT_ERROR(mk::block_amax(x, BlockShape::group(32), "model.layers.3.mlp.experts.5.w1"),
                 "block_amax: model.layers.3.mlp.experts.5.w1 contains NaN or Inf values; a "
                 "quantization scale computed from it would not be finite");
    EXPECT_ERROR(mk::block_minmax(x.to(at::kBFloat16), BlockShape::channel(), "w2"),
                 "block_minmax: w2 contains NaN or Inf values");
  }
}

TEST(KernelsReduceTest, RejectsBadInputs) {
  EXPECT_ERROR(mk::block_amax(at::zeros({4, 4}, at::kInt), BlockShape::tensor()),
               "block_amax: x must be float32, bfloat16 or float16, got Int");
  EXPECT_ERROR(mk::block_amax(at::zeros({4}), BlockShape::tensor()),
               "block_amax: x must have at least 2 dims [..., rows, cols], got shape [4]");
  EXPECT_ERROR(mk::block_minmax(at::zeros({4, 4}), BlockShape{0, -2}),
               "block_minmax: block extents must be >= 0 (0: the whole extent), got [0, -2]");
}

}  // namespace
