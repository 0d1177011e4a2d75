// Integer quantization with compressed-tensors' numerics:
//   q = clamp(round_half_even(x / scale + zero_point), qmin, qmax)
//   x' = (q - zero_point) * scale
// computed in the promoted dtype of (x, scale) exactly as torch would, so results are bit-exact
// with compressed-tensors' quantize/dequantize. `scale` (and `zero_point`, optional) have the
// block-grid shape of BlockShape.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "moeq/kernels/block.h"

namespace moeq::kernels {

struct IntRange {
  int64_t qmin;
  int64_t qmax;
  static IntRange signed_bits(int num_bits);  // [-2^(b-1), 2^(b-1) - 1]; num_bits in 1..8
};

at::Tensor fake_quant_int(const at::Tensor& x,
                          const at::Tensor& scale,
                          const std::optional<at::Tensor>& zero_point,
                          BlockShape block,
                          IntRange range);

// The integer codes as int8 (signed, before any packing offset).
at::Tensor quantize_int(const at::Tensor& x,
                        const at::Tensor& scale,
                        const std::optional<at::Tensor>& zero_point,
                        BlockShape block,
                        IntRange range);

at::Tensor dequantize_int(const at::Tensor& q,
                          const at::Tensor& scale,
                          const std::optional<at::Tensor>& zero_point,
                          BlockShape block,
                          at::ScalarType out_dtype);

// quantize_int then pack_int (compressed-tensors pack-quantized `weight_packed`) in one pass on
// CUDA when cols are contiguous: int32 [..., rows, ceil(cols * num_bits / 32)].
at::Tensor quantize_int_packed(const at::Tensor& x,
                               const at::Tensor& scale,
                               const std::optional<at::Tensor>& zero_point,
                               BlockShape block,
                               int num_bits);

// Dynamic quantization (compressed-tensors' compute_dynamic_scales_and_zp then fake_quantize):
// per-block min/max of x, qparams in x's dtype, fake quantization. A NaN or Inf in x is an error
// naming `what`. Note compressed-tensors' "token" strategy on a 2-D input reduces over the whole
// tensor; pass the block that matches (BlockShape::tensor() there, channel() for 3-D inputs).
at::Tensor fake_quant_int_dynamic(const at::Tensor& x,
                                  BlockShape block,
                                  IntRange range,
                                  bool symmetric,
                                  const char* what = "tensor");

// compressed-tensors' calculate_qparams from per-block (min, max): symmetric scale =
// absmax / ((qmax - qmin) / 2), asymmetric scale = (max - min) / (qmax - qmin) with a rounded,
// clamped zero point; zero scales become eps of scale_dtype. Computed in scale_dtype (min and max
// are rounded to it first), as compressed-tensors computes in the dtype of the observed tensor.
// Returns (scale in scale_dtype, int8 zero_point), laid out like min_vals. The zero point is all
// zeros when symmetric, as compressed-tensors returns (and registers, and adds in its forward:
// pass it on to reproduce that bit for bit, -0.0 becoming +0.0; std::nullopt skips the add).
std::tuple<at::Tensor, at::Tensor> int_qparams(const at::Tensor& min_vals,
                                               const at::Tensor& max_vals,
                                               IntRange range,
                                               bool symmetric,
                                               at::ScalarType scale_dtype);

}  // namespace moeq::kernels
