// Quantize-dequantize with explicit candidate scales, composed of ATen ops exactly as
// compressed-tensors writes it (lifecycle/forward_helpers.py: _quantize_dequantize;
// fp4_utils.cast_to_fp4), on the blocked layout the MSE searches score. Candidates there are any
// float (NVFP4's are not rounded to FP8 while searching), which no kernel takes. Private to
// moeq_quant.
#pragma once

#include <ATen/core/Tensor.h>

#include "moeq/kernels/block.h"
#include "moeq/quant/quant_args.h"

namespace moeq::quant::detail {

// Element-wise: scale and zero_point (may be undefined) broadcast against x. Returns the
// quantize-dequantized values in the dtype torch's promotion gives (the caller casts to x's
// dtype), as compressed-tensors' _quantize_dequantize.
at::Tensor qdq(const at::Tensor& x,
               const at::Tensor& scale,
               const at::Tensor& zero_point,
               const QuantArgs& args);

// x [..., rows, cols] -> [..., R, C, br * bc]: the elements of each block, zero-padded where a
// block is partial (as compressed-tensors pads for block quantization).
at::Tensor to_blocks(const at::Tensor& x, kernels::BlockShape block);

}  // namespace moeq::quant::detail
