// FP8 (E4M3FN, E5M2) quantization with compressed-tensors' numerics:
//   q = fp8(clamp(x / scale, -fmax, fmax))   (round to nearest even by the cast)
//   x' = q.to(scale dtype) * scale
// with x / scale in promote(x, scale)'s dtype as torch computes it. compressed-tensors knows
// E4M3FN only; E5M2 follows the same formulas with fmax = 57344.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "moeq/kernels/block.h"

namespace moeq::kernels {

// zero_point (optional, any float/int/fp8 dtype, on the scale's grid): compressed-tensors keeps a
// zero zero-point for symmetric FP8 too and adds it (x / scale + 0 turns -0.0 into +0.0); pass
// zeros to reproduce its bytes exactly.
at::Tensor fake_quant_fp8(const at::Tensor& x,
                          const at::Tensor& scale,
                          BlockShape block,
                          at::ScalarType fp8_dtype = at::kFloat8_e4m3fn,
                          const std::optional<at::Tensor>& zero_point = std::nullopt);

at::Tensor quantize_fp8(const at::Tensor& x,
                        const at::Tensor& scale,
                        BlockShape block,
                        at::ScalarType fp8_dtype = at::kFloat8_e4m3fn,
                        const std::optional<at::Tensor>& zero_point = std::nullopt);

at::Tensor dequantize_fp8(const at::Tensor& q,
                          const at::Tensor& scale,
                          BlockShape block,
                          at::ScalarType out_dtype,
                          const std::optional<at::Tensor>& zero_point = std::nullopt);

// Dynamic FP8 (per-token / per-group activations): amax per block, scale = amax / fmax in x's
// dtype, fake quantization. A NaN or Inf in x is an error naming `what`.
at::Tensor fake_quant_fp8_dynamic(const at::Tensor& x,
                                  BlockShape block,
                                  at::ScalarType fp8_dtype = at::kFloat8_e4m3fn,
                                  const char* what = "tensor");

// scale = amax / fmax (fmax 448 for E4M3FN, 57344 for E5M2) with compressed-tensors' rules
// (zero becomes eps of scale_dtype).
at::Tensor fp8_scale_from_amax(const at::Tensor& amax,
                               at::ScalarType fp8_dtype,
                               at::ScalarType scale_dtype);

}  // namespace moeq::kernels
