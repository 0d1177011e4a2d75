// Every FP4 / MX op on CUDA equals the CPU reference bit for bit: 2-D, 3-D stacks, transposed
// views (the col kernel), strided / unaligned / partial-group inputs (the generic kernel), in
// float32, bfloat16 and float16. Skipped without a CUDA device.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <functional>
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

#define REQUIRE_CUDA()                  \
  do {                                  \
    if (!at::hasCUDA()) {               \
      GTEST_SKIP() << "no CUDA device"; \
    }                                   \
  } while (false)

at::Tensor raw(const at::Tensor& t) {
  const at::Tensor c = t.cpu().contiguous();
  switch (c.element_size()) {
    case 4:
      return c.view(at::kInt);
    case 2:
      return c.view(at::kShort);
    default:
      return c.view(at::kByte);
  }
}

::testing::AssertionResult same(const at::Tensor& gpu, const at::Tensor& cpu) {
  if (gpu.sizes() != cpu.sizes() || gpu.scalar_type() != cpu.scalar_type()) {
    return ::testing::AssertionFailure()
           << "shape/dtype differ: " << gpu.sizes() << " " << gpu.scalar_type() << " vs "
           << cpu.sizes() << " " << cpu.scalar_type();
  }
  if (gpu.strides() != cpu.strides()) {
    return ::testing::AssertionFailure()
           << "strides differ: " << gpu.strides() << " vs " << cpu.strides();
  }
  const at::Tensor diff = (raw(gpu) != raw(cpu)).nonzero();
  if (diff.size(0) == 0) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << diff.size(0) << " of " << gpu.numel() << " elements differ, first at " << diff[0];
}

// Values with the hard cases in every row pattern: ties at power-of-two scales, zeros, zero
// groups, subnormals of the dtype, large values, mixed magnitudes.
at::Tensor hard(at::IntArrayRef shape, at::ScalarType dtype, int seed) {
  at::manual_seed(seed);
  at::Tensor x = at::randn(shape);
  const int64_t cols = shape.back();
  at::Tensor flat = x.view({-1, cols});
  const int64_t rows = flat.size(0);
  const at::Tensor ties = at::tensor({0.25f, 0.75f, 1.25f, 1.75f, 2.5f, 3.5f, 5.0f, 6.0f});
  for (int64_t r = 0; r < rows; ++r) {
    switch (r % 7) {
      case 1:
        flat[r] = ties.index({at::randint(0, 8, {cols}, at::kLong)}) *
                  (at::randint(0, 2, {cols}) * 2 - 1) *
                  std::ldexp(1.0, static_cast<int>(r % 5) - 2);
        break;
      case 2:
        flat[r].slice(0, 0, std::min<int64_t>(cols, 32)).zero_();
        break;
      case 3:
        flat[r] *= (dtype == at::kHalf ? 1e-7 : 1e-38);
        break;
      case 4:
        flat[r] *= (dtype == at::kHalf ? 1e4 : 1e30);
        break;
      case 5:
        flat[r] *= 1e-4;
        break;
      default:
        break;
    }
  }
  return x.to(dtype);
}

struct Case {
  std::string name;
  std::function<at::Tensor(at::ScalarType, int)> make;  // the base tensor, on CPU
  std::function<at::Tensor(const at::Tensor&)> view;    // the operand: a view of the base
};

at::Tensor same_view(const at::Tensor& t) {
  return t;
}

std::vector<Case> cases() {
  return {
      {"2d",
       [](at::ScalarType d, int s) {
         return hard({37, 128}, d, s);
       },
       same_view},
      {"3d",
       [](at::ScalarType d, int s) {
         return hard({3, 32, 256}, d, s);
       },
       same_view},
      {"transposed",
       [](at::ScalarType d, int s) {
         return hard({3, 128, 64}, d, s);
       },
       [](const at::Tensor& t) { return t.transpose(-1, -2); }},
      {"transposed_odd_rows",
       [](at::ScalarType d, int s) {
         return hard({2, 64, 36}, d, s);
       },
       [](const at::Tensor& t) { return t.transpose(-1, -2); }},
      {"partial_group",
       [](at::ScalarType d, int s) {
         return hard({5, 40}, d, s);
       },
       same_view},
      {"strided",
       [](at::ScalarType d, int s) {
         return hard({6, 256}, d, s);
       },
       [](const at::Tensor& t) { return t.slice(-1, 0, 256, 2); }},
      {"unaligned",
       [](at::ScalarType d, int s) {
         return hard({6, 129}, d, s);
       },
       [](const at::Tensor& t) { return t.slice(-1, 1, 129); }},
      {"4d",
       [](at::ScalarType d, int s) {
         return hard({2, 2, 16, 64}, d, s);
       },
       same_view},
  };
}

const std::vector<at::ScalarType> kDtypes = {at::kFloat, at::kBFloat16, at::kHalf};

at::Tensor per_matrix(const at::Tensor& x, float lo, float hi) {
  int64_t batch = 1;
  for (int64_t d = 0; d + 2 < x.dim(); ++d) {
    batch *= x.size(d);
  }
  return at::linspace(lo, hi, batch);
}

TEST(Fp4CudaTest, Nvfp4MatchesCpu) {
  REQUIRE_CUDA();
  for (const Case& c : cases()) {
    for (auto dtype : kDtypes) {
      for (Convention conv : {kCt, kMo}) {
        const at::Tensor base = c.make(dtype, 1);
        const at::Tensor x = c.view(base);
        const at::Tensor xg = c.view(base.cuda());
        SCOPED_TRACE(c.name + " " + c10::toString(dtype) + (conv == kCt ? " ct" : " modelopt"));
        const at::Tensor amax = x.abs().amax().to(at::kFloat);
        const at::Tensor g = mk::nvfp4_global_scale(amax, conv) * per_matrix(x, 0.5f, 1.0f);
        const at::Tensor gg = g.cuda();
        ASSERT_TRUE(same(mk::fake_quant_nvfp4(xg, gg, conv), mk::fake_quant_nvfp4(x, g, conv)));
        if (x.size(-1) % 2 == 0) {
          const auto [p, s] = mk::quantize_nvfp4(x, g, conv);
          const auto [pg, sg] = mk::quantize_nvfp4(xg, gg, conv);
          ASSERT_TRUE(same(pg, p));
          ASSERT_TRUE(same(sg, s));
          ASSERT_TRUE(same(mk::quantize_nvfp4_with_scales(xg, sg, gg, conv),
                           mk::quantize_nvfp4_with_scales(x, s, g, conv)));
          ASSERT_TRUE(same(mk::fake_quant_nvfp4_with_scales(xg, sg, gg, conv),
                           mk::fake_quant_nvfp4_with_scales(x, s, g, conv)));
          for (auto out : kDtypes) {
            ASSERT_TRUE(same(mk::dequantize_nvfp4(pg, sg, gg, out, conv),
                             mk::dequantize_nvfp4(p, s, g, out, conv)));
          }
        }
        const at::Tensor sweep_global = conv == kCt ? g : amax.expand(g.sizes()).contiguous();
        const auto [ss, sa] = mk::nvfp4_fp8_scale_sweep(x, sweep_global, conv);
        const auto [ssg, sag] = mk::nvfp4_fp8_scale_sweep(xg, sweep_global.cuda(), conv);
        ASSERT_TRUE(same(ssg, ss));
        ASSERT_TRUE(same(sag, sa));
      }
    }
  }
}

TEST(Fp4CudaTest, MxMatchesCpu) {
  REQUIRE_CUDA();
  for (const Case& c : cases()) {
    for (auto dtype : kDtypes) {
      for (Convention conv : {kCt, kMo}) {
        for (MxElement e : {MxElement::kFp4E2M1, MxElement::kFp8E4M3}) {
          const at::Tensor base = c.make(dtype, 2);
          const at::Tensor x = c.view(base);
          const at::Tensor xg = c.view(base.cuda());
          SCOPED_TRACE(c.name + " " + c10::toString(dtype) + (conv == kCt ? " ct" : " modelopt") +
                       (e == MxElement::kFp4E2M1 ? " fp4" : " fp8"));
          ASSERT_TRUE(same(mk::fake_quant_mx(xg, e, conv), mk::fake_quant_mx(x, e, conv)));
          if (x.size(-1) % 2 == 0 || e == MxElement::kFp8E4M3) {
            const auto [d, s] = mk::quantize_mx(x, e, conv);
            const auto [dg, sg] = mk::quantize_mx(xg, e, conv);
            ASSERT_TRUE(same(dg, d));
            ASSERT_TRUE(same(sg, s));
            ASSERT_TRUE(same(mk::quantize_mx_with_scales(xg, sg, e, conv),
                             mk::quantize_mx_with_scales(x, s, e, conv)));
            ASSERT_TRUE(same(mk::fake_quant_mx_with_scales(xg, sg, e, conv),
                             mk::fake_quant_mx_with_scales(x, s, e, conv)));
            for (auto out : kDtypes) {
              ASSERT_TRUE(same(mk::dequantize_mx(dg, sg, e, out, conv),
                               mk::dequantize_mx(d, s, e, out, conv)));
            }
          }
        }
      }
    }
  }
}

TEST(Fp4CudaTest, ScalesAndPackingMatchCpu) {
  REQUIRE_CUDA();
  for (auto dtype : kDtypes) {
    SCOPED_TRACE(c10::toString(dtype));
    at::Tensor amax = hard({3, 40, 8}, dtype, 3).abs();
    amax[0][0].zero_();
    const at::Tensor ag = amax.cuda();
    for (Convention conv : {kCt, kMo}) {
      ASSERT_TRUE(same(mk::nvfp4_global_scale(ag, conv), mk::nvfp4_global_scale(amax, conv)));
      const at::Tensor g = at::tensor({1.0f, 100.0f, 1e-3f});
      ASSERT_TRUE(
          same(mk::nvfp4_block_scale(ag, g.cuda(), conv), mk::nvfp4_block_scale(amax, g, conv)));
      for (MxElement e : {MxElement::kFp4E2M1, MxElement::kFp8E4M3}) {
        ASSERT_TRUE(same(mk::mx_scale(ag, e, conv), mk::mx_scale(amax, e, conv)));
      }
    }
    const at::Tensor ga = at::tensor({2.0f, 0.5f, 0.0f});
    ASSERT_TRUE(
        same(mk::nvfp4_block_scale_static(ag, ga.cuda()), mk::nvfp4_block_scale_static(amax, ga)));
  }
  const at::Tensor codes = at::randint(0, 16, {4, 7, 34}, at::kByte);
  ASSERT_TRUE(same(mk::pack_fp4(codes.cuda()), mk::pack_fp4(codes)));
  ASSERT_TRUE(
      same(mk::unpack_fp4(mk::pack_fp4(codes).cuda()), mk::unpack_fp4(mk::pack_fp4(codes))));
  const at::Tensor strided = codes.transpose(0, 1);
  ASSERT_TRUE(same(mk::pack_fp4(strided.cuda()), mk::pack_fp4(strided)));
}

TEST(Fp4CudaTest, GptOssSourceMatchesCpu) {
  REQUIRE_CUDA();
  const at::Tensor blocks = at::randint(0, 256, {4, 24, 9, 16}, at::kByte);
  const at::Tensor scales = at::randint(0, 255, {4, 24, 9}, at::kByte);
  for (auto dtype : kDtypes) {
    ASSERT_TRUE(same(mk::dequantize_mxfp4_source(blocks.cuda(), scales.cuda(), dtype),
                     mk::dequantize_mxfp4_source(blocks, scales, dtype)));
  }
  // unaligned blocks take the generic kernel
  const at::Tensor wide = at::randint(0, 256, {4, 24, 9, 17}, at::kByte).slice(-1, 1, 17);
  ASSERT_TRUE(same(mk::dequantize_mxfp4_source(wide.cuda(), scales.cuda(), at::kBFloat16),
                   mk::dequantize_mxfp4_source(wide, scales, at::kBFloat16)));
}

TEST(Fp4CudaTest, ErrorsMatchCpu) {
  REQUIRE_CUDA();
  at::Tensor x = at::randn({64, 128});
  x[40][77] = std::numeric_limits<float>::quiet_NaN();
  x[50][3] = std::numeric_limits<float>::infinity();
  for (const at::Tensor& t : {x, x.cuda(), x.t().contiguous().cuda().t()}) {
    try {
      mk::fake_quant_nvfp4(t, at::ones({1}, t.options()), kCt, "w");
      ADD_FAILURE() << "no error";
    } catch (const moeq::Error& e) {
      EXPECT_NE(e.message().find("w has a non-finite value nan at [40, 77] (shape [64, 128])"),
                std::string::npos)
          << e.message();
    }
  }
}

}  // namespace
