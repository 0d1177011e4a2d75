// dequantize_fp8_block_source (source_dequant.h): DeepSeek-V3 / MiniMax-M2 FP8 checkpoints.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "moeq/kernels/fp8_quant.h"
#include "moeq/kernels/source_dequant.h"
#include "ops/common.h"

namespace moeq::kernels {

// w = out_dtype(float(q) * float(scale_inv)): one rounding, as DeepSeek's weight_dequant and
// transformers' Fp8Dequantize compute it. That is dequantize_fp8 with a float32 scale.
at::Tensor dequantize_fp8_block_source(const at::Tensor& weight,
                                       const at::Tensor& scale_inv,
                                       at::ScalarType out_dtype,
                                       int64_t block_rows,
                                       int64_t block_cols) {
  constexpr const char* op = "dequantize_fp8_block_source";
  MOEQ_CHECK(weight.scalar_type() == at::kFloat8_e4m3fn, "{}: weight must be float8_e4m3fn, got {}",
             op, c10::toString(weight.scalar_type()));
  MOEQ_CHECK(block_rows > 0 && block_cols > 0, "{}: block must be positive, got [{}, {}]", op,
             block_rows, block_cols);
  const at::ScalarType st = scale_inv.scalar_type();
  MOEQ_CHECK(
      st == at::kFloat || st == at::kBFloat16 || st == at::kHalf || st == at::kFloat8_e8m0fnu,
      "{}: scale_inv must be float32, bfloat16, float16 or float8_e8m0fnu, got {}", op,
      c10::toString(st));
  return dequantize_fp8(weight, scale_inv.to(at::kFloat), BlockShape::block(block_rows, block_cols),
                        out_dtype);
}

}  // namespace moeq::kernels

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def(
      "dequantize_fp8_block_source(Tensor weight, Tensor scale_inv, ScalarType out_dtype, "
      "int block_rows=128, int block_cols=128) -> Tensor");
}

TORCH_LIBRARY_IMPL(moeq, CPU, m) {
  m.impl("dequantize_fp8_block_source", &moeq::kernels::dequantize_fp8_block_source);
}
#ifdef MOEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(moeq, CUDA, m) {
  m.impl("dequantize_fp8_block_source", &moeq::kernels::dequantize_fp8_block_source);
}
#endif
