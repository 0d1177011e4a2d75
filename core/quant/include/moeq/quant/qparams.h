// Scales and zero points from per-block statistics, with compressed-tensors' numerics
// (quantization/utils/helpers.py: calculate_qparams, generate_gparam; mxfp_utils.py). The
// arithmetic runs in the observed tensor's dtype with the same torch ops in the same order, so
// the results are bit-identical to compressed-tensors' on the same statistics.
#pragma once

#include <ATen/core/Tensor.h>

#include "moeq/quant/quant_args.h"

namespace moeq::quant {

struct QParams {
  // On the block grid. dtype: the observed dtype for int and fp8; float32 holding FP8 values for
  // NVFP4 (the global scale promotes); the observed dtype holding powers of two for MX.
  at::Tensor scale;
  // zero_point_dtype(); zeros when symmetric, as compressed-tensors keeps them until it writes
  // the checkpoint: its quantizers add them, which turns a -0.0 quotient into +0.0.
  at::Tensor zero_point;
  at::Tensor global_scale;  // NVFP4 only: float32, one per tensor (per expert) on the grid's
                            // leading dims: [..., 1, 1]; undefined otherwise
};

// The dtype compressed-tensors gives scale parameters: the observed dtype when it is float16,
// bfloat16, float32 or float64, else float16 (quantization/lifecycle/initialize.py).
at::ScalarType scale_param_dtype(at::ScalarType observed_dtype);

// compressed-tensors' calculate_qparams(min_vals, max_vals, args, global_scale): min/max (any
// float dtype, block grid) are first cast to `observed_dtype`. `global_scale` may be undefined.
QParams calculate_qparams(const at::Tensor& min_vals,
                          const at::Tensor& max_vals,
                          const QuantArgs& args,
                          at::ScalarType observed_dtype,
                          const at::Tensor& global_scale = {});

// compressed-tensors' generate_gparam for NVFP4: 448 * 6 / max(amax, tiny), computed in `amax`'s
// dtype (the observed dtype), NaN and Inf mapped to 1, returned as float32 of amax's shape.
at::Tensor nvfp4_global_scale_from_amax(const at::Tensor& amax);

// The (qmin, qmax) range of args: [-2^(b-1), 2^(b-1) - 1] for int, +-448 for fp8, +-6 for fp4.
std::pair<double, double> quant_range(const QuantArgs& args);

}  // namespace moeq::quant
