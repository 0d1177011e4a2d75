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
  static IntRange signed_bits(int num_bits);  // [-2^(b-1), 2^(b-1) - 1]
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

// compressed-tensors' calculate_qparams from per-block (min, max): symmetric scale =
// absmax / ((qmax - qmin) / 2), asymmetric scale = (max - min) / (qmax - qmin) with a rounded,
// clamped zero point; zero scales become eps of scale_dtype. Returns (scale, zero_point or
// undefined when symmetric).
std::tuple<at::Tensor, at::Tensor> int_qparams(const at::Tensor& min_vals,
                                               const at::Tensor& max_vals,
                                               IntRange range,
                                               bool symmetric,
                                               at::ScalarType scale_dtype);

}  // namespace moeq::kernels
