// FP8 (E4M3FN, E5M2) quantization with compressed-tensors' numerics:
//   q = fp8(clamp(x / scale, -fmax, fmax))   (round to nearest even by the cast)
//   x' = float(q) * scale
#pragma once

#include <ATen/core/Tensor.h>

#include "moeq/kernels/block.h"

namespace moeq::kernels {

at::Tensor fake_quant_fp8(const at::Tensor& x,
                          const at::Tensor& scale,
                          BlockShape block,
                          at::ScalarType fp8_dtype = at::kFloat8_e4m3fn);

at::Tensor quantize_fp8(const at::Tensor& x,
                        const at::Tensor& scale,
                        BlockShape block,
                        at::ScalarType fp8_dtype = at::kFloat8_e4m3fn);

at::Tensor dequantize_fp8(const at::Tensor& q,
                          const at::Tensor& scale,
                          BlockShape block,
                          at::ScalarType out_dtype);

// scale = amax / fmax (fmax 448 for E4M3FN, 57344 for E5M2) with compressed-tensors' rules
// (zero becomes eps of scale_dtype).
at::Tensor fp8_scale_from_amax(const at::Tensor& amax,
                               at::ScalarType fp8_dtype,
                               at::ScalarType scale_dtype);

}  // namespace moeq::kernels
