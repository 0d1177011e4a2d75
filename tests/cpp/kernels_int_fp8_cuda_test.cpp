// Every integer / FP8 op on CUDA equals the CPU reference bit for bit (values, dtype and
// strides): 2-D, 3-D stacks, shapes not divisible by the block, transposed views, float32,
// bfloat16 and float16. Skipped without a CUDA device.
#include <ATen/ATen.h>
#include <ATen/Context.h>
#include <gtest/gtest.h>

#include <functional>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "kernels_int_fp8_testing.h"
#include "moeq/kernels/fp8_quant.h"
#include "moeq/kernels/int_quant.h"
#include "moeq/kernels/modelopt.h"
#include "moeq/kernels/pack.h"
#include "moeq/kernels/reduce.h"
#include "moeq/kernels/source_dequant.h"

namespace {

namespace mk = moeq::kernels;
using mk::BlockShape;
using mk::IntRange;
using namespace mk::testing;

#define REQUIRE_CUDA()                  \
  do {                                  \
    if (!at::hasCUDA()) {               \
      GTEST_SKIP() << "no CUDA device"; \
    }                                   \
  } while (false)

at::Tensor cuda(const at::Tensor& t) {
  return t.defined() ? t.to(at::kCUDA) : t;
}

// f on CPU tensors and on their CUDA copies: same bits and strides.
void expect_same(const std::string& what,
                 const std::vector<at::Tensor>& inputs,
                 const std::function<std::vector<at::Tensor>(const std::vector<at::Tensor>&)>& f) {
  std::vector<at::Tensor> gpu_inputs;
  for (const at::Tensor& t : inputs) {
    gpu_inputs.push_back(cuda(t));
  }
  const std::vector<at::Tensor> cpu = f(inputs);
  const std::vector<at::Tensor> gpu = f(gpu_inputs);
  ASSERT_EQ(cpu.size(), gpu.size());
  for (size_t i = 0; i < cpu.size(); ++i) {
    EXPECT_TRUE(gpu[i].is_cuda()) << what;
    EXPECT_EQ(gpu[i].strides(), cpu[i].strides()) << what;
    EXPECT_TRUE(bits_equal(gpu[i], cpu[i])) << what << " (output " << i << ")";
  }
}

std::vector<at::Tensor> layouts(const at::Tensor& x) {
  return {x, x.transpose(-1, -2).contiguous().transpose(-1, -2)};
}

const std::vector<std::vector<int64_t>> kShapes = {
    {256, 512}, {3, 96, 384}, {50, 100}, {2, 37, 130}};
const std::vector<BlockShape> kBlocks = {BlockShape::group(32),     BlockShape::channel(),
                                         BlockShape::tensor(),      BlockShape::block(128, 128),
                                         BlockShape::block(16, 32), BlockShape::group(7)};

TEST(KernelsIntFp8CudaTest, ReductionsAndQParams) {
  REQUIRE_CUDA();
  int seed = 0;
  for (const auto& shape : kShapes) {
    for (const at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
      for (const at::Tensor& x : layouts(hard_values(shape, dt, ++seed))) {
        for (const BlockShape b : kBlocks) {
          const std::string what = ::testing::PrintToString(shape) + " " +
                                   std::string(c10::toString(dt)) + " block [" +
                                   std::to_string(b.rows) + ", " + std::to_string(b.cols) + "]";
          expect_same("amax " + what, {x}, [&](const auto& in) {
            return std::vector<at::Tensor>{mk::block_amax(in[0], b)};
          });
          expect_same("minmax " + what, {x}, [&](const auto& in) {
            auto [mn, mx] = mk::block_minmax(in[0], b);
            return std::vector<at::Tensor>{mn, mx};
          });
          const auto [mn, mx] = mk::block_minmax(x, b);
          for (const bool sym : {true, false}) {
            expect_same("qparams " + what, {mn, mx}, [&](const auto& in) {
              auto [s, z] = mk::int_qparams(in[0], in[1], IntRange::signed_bits(4), sym, dt);
              return std::vector<at::Tensor>{s, z};
            });
          }
        }
      }
    }
  }
}

TEST(KernelsIntFp8CudaTest, IntegerOps) {
  REQUIRE_CUDA();
  int seed = 50;
  for (const auto& shape : kShapes) {
    for (const at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
      for (const at::Tensor& x : layouts(hard_values(shape, dt, ++seed))) {
        for (const BlockShape b : kBlocks) {
          const auto [mn, mx] = mk::block_minmax(x, b);
          for (const int bits : {4, 8}) {
            const IntRange r = IntRange::signed_bits(bits);
            for (const bool sym : {true, false}) {
              for (const at::ScalarType sd : {dt, at::kFloat}) {
                const auto [s, z] = mk::int_qparams(mn, mx, r, sym, sd);
                const at::Tensor zp = sym ? at::Tensor() : z;
                const std::string what =
                    ::testing::PrintToString(shape) + " " + std::string(c10::toString(dt)) +
                    " scale " + std::string(c10::toString(sd)) + " block [" +
                    std::to_string(b.rows) + ", " + std::to_string(b.cols) + "] bits " +
                    std::to_string(bits) + (sym ? " sym" : " asym") +
                    (x.is_contiguous() ? "" : " transposed");
                auto opt = [](const at::Tensor& t) {
                  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
                };
                expect_same("fake " + what, {x, s, zp}, [&](const auto& in) {
                  return std::vector<at::Tensor>{
                      mk::fake_quant_int(in[0], in[1], opt(in[2]), b, r)};
                });
                expect_same("quantize " + what, {x, s, zp}, [&](const auto& in) {
                  return std::vector<at::Tensor>{mk::quantize_int(in[0], in[1], opt(in[2]), b, r)};
                });
                expect_same("packed " + what, {x, s, zp}, [&](const auto& in) {
                  return std::vector<at::Tensor>{
                      mk::quantize_int_packed(in[0], in[1], opt(in[2]), b, bits)};
                });
                const at::Tensor q = mk::quantize_int(x, s, opt(zp), b, r);
                expect_same("dequantize " + what, {q, s, zp}, [&](const auto& in) {
                  return std::vector<at::Tensor>{
                      mk::dequantize_int(in[0], in[1], opt(in[2]), b, dt)};
                });
              }
            }
          }
        }
        expect_same("dynamic int", {x}, [&](const auto& in) {
          return std::vector<at::Tensor>{
              mk::fake_quant_int_dynamic(in[0], BlockShape::channel(), {-128, 127}, false)};
        });
      }
    }
  }
}

TEST(KernelsIntFp8CudaTest, Fp8Ops) {
  REQUIRE_CUDA();
  int seed = 90;
  for (const auto& shape : kShapes) {
    for (const at::ScalarType dt : {at::kFloat, at::kBFloat16, at::kHalf}) {
      for (const at::Tensor& x : layouts(hard_values(shape, dt, ++seed))) {
        for (const BlockShape b : kBlocks) {
          const at::Tensor amax = mk::block_amax(x, b);
          for (const at::ScalarType fp8 : {at::kFloat8_e4m3fn, at::kFloat8_e5m2}) {
            for (const at::ScalarType sd : {dt, at::kFloat}) {
              const std::string what =
                  ::testing::PrintToString(shape) + " " + std::string(c10::toString(dt)) + " " +
                  std::string(c10::toString(fp8)) + " scale " + std::string(c10::toString(sd)) +
                  " block [" + std::to_string(b.rows) + ", " + std::to_string(b.cols) + "]" +
                  (x.is_contiguous() ? "" : " transposed");
              expect_same("scale " + what, {amax}, [&](const auto& in) {
                return std::vector<at::Tensor>{mk::fp8_scale_from_amax(in[0], fp8, sd)};
              });
              const at::Tensor s = mk::fp8_scale_from_amax(amax, fp8, sd);
              const at::Tensor zeros = at::zeros_like(s);
              expect_same("fake " + what, {x, s, zeros}, [&](const auto& in) {
                return std::vector<at::Tensor>{mk::fake_quant_fp8(in[0], in[1], b, fp8),
                                               mk::fake_quant_fp8(in[0], in[1], b, fp8, in[2])};
              });
              expect_same("quantize " + what, {x, s, zeros}, [&](const auto& in) {
                return std::vector<at::Tensor>{mk::quantize_fp8(in[0], in[1], b, fp8),
                                               mk::quantize_fp8(in[0], in[1], b, fp8, in[2])};
              });
              const at::Tensor q = mk::quantize_fp8(x, s, b, fp8);
              expect_same("dequantize " + what, {q, s}, [&](const auto& in) {
                return std::vector<at::Tensor>{mk::dequantize_fp8(in[0], in[1], b, dt)};
              });
            }
          }
          expect_same("modelopt scale", {amax}, [&](const auto& in) {
            return std::vector<at::Tensor>{mk::modelopt_scale_from_amax(in[0], 448.0, false),
                                           mk::modelopt_scale_from_amax(in[0], 7.0, true)};
          });
        }
        expect_same("dynamic fp8", {x}, [&](const auto& in) {
          return std::vector<at::Tensor>{mk::fake_quant_fp8_dynamic(in[0], BlockShape::channel())};
        });
      }
    }
  }
}

TEST(KernelsIntFp8CudaTest, PackingAndSourceFormats) {
  REQUIRE_CUDA();
  for (int bits = 1; bits <= 8; ++bits) {
    at::manual_seed(bits);
    for (const std::vector<int64_t>& shape :
         std::vector<std::vector<int64_t>>{{64, 512}, {3, 40, 100}, {2, 16, 33}}) {
      const at::Tensor codes = at::randint(-(1 << (bits - 1)), 1 << (bits - 1), shape, at::kChar);
      for (const at::Tensor& c : layouts(codes)) {
        const std::string what = std::to_string(bits) + " bits " + ::testing::PrintToString(shape);
        expect_same("pack " + what, {c}, [&](const auto& in) {
          return std::vector<at::Tensor>{mk::pack_int(in[0], bits), mk::pack_int_rows(in[0], bits)};
        });
        const at::Tensor packed = mk::pack_int(c, bits);
        expect_same("unpack " + what, {packed}, [&](const auto& in) {
          return std::vector<at::Tensor>{mk::unpack_int(in[0], bits, shape.back())};
        });
        if (bits == 4 && shape[shape.size() - 2] % 2 == 0) {
          expect_same("row pairs " + what, {c}, [&](const auto& in) {
            const at::Tensor p = mk::pack_int4_row_pairs(in[0]);
            return std::vector<at::Tensor>{p, mk::unpack_int4_row_pairs(p)};
          });
        }
      }
    }
  }
  at::manual_seed(3);
  const at::Tensor w = (at::randn({3, 300, 260}) * 40).to(at::kFloat8_e4m3fn);
  const at::Tensor s = at::rand({3, 3, 3}) * 1e-2;
  for (const at::ScalarType out : {at::kFloat, at::kBFloat16, at::kHalf}) {
    expect_same("fp8 block source", {w, s}, [&](const auto& in) {
      return std::vector<at::Tensor>{mk::dequantize_fp8_block_source(in[0], in[1], out)};
    });
  }
}

TEST(KernelsIntFp8CudaTest, ErrorsOnDevice) {
  REQUIRE_CUDA();
  at::Tensor x = at::randn({64, 64}, at::kCUDA);
  x[5][7] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_ERROR(mk::block_amax(x, BlockShape::group(32), "experts.w13"),
               "block_amax: experts.w13 contains NaN or Inf values");
  EXPECT_ERROR(mk::fake_quant_fp8(x, at::ones({1, 1}), BlockShape::tensor()),
               "fake_quant_fp8: scale is on cpu but x is on cuda:0");
}

}  // namespace
