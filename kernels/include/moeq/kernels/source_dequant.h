// Source checkpoint formats that must be dequantized on load.
#pragma once

#include <ATen/core/Tensor.h>

namespace moeq::kernels {

// DeepSeek-V3 / MiniMax-M2: FP8 E4M3 weight [..., rows, cols] with `weight_scale_inv`
// [..., ceil(rows/128), ceil(cols/128)] float32: w = float(q) * scale_inv per 128x128 block.
at::Tensor dequantize_fp8_block_source(const at::Tensor& weight,
                                       const at::Tensor& scale_inv,
                                       at::ScalarType out_dtype,
                                       int64_t block_rows = 128,
                                       int64_t block_cols = 128);

// GPT-OSS MXFP4: `*_blocks` uint8 [..., rows, groups, 16] (32 E2M1 codes per group, low nibble
// first) and `*_scales` uint8 [..., rows, groups] E8M0 (bias 127) -> [..., rows, groups*32].
at::Tensor dequantize_mxfp4_source(const at::Tensor& blocks,
                                   const at::Tensor& scales,
                                   at::ScalarType out_dtype);

}  // namespace moeq::kernels
