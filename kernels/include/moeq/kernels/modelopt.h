// ModelOpt export conventions that are not a quantizer of their own (the packing of INT4-AWQ is in
// pack.h; FP8 and INT4 weights use quantize_fp8 / quantize_int with the scales from here).
#pragma once

#include <ATen/core/Tensor.h>

namespace moeq::kernels {

// The exported scaling factor from a calibrated amax (TensorQuantizer.export_amax, then
// get_scaling_factor): amax 0 or NaN -> maxbound, clamp to [tiny, max] of amax's dtype, then
// float32(amax) / maxbound. maxbound: 448 (FP8 E4M3), 7 (INT4-AWQ), 127 (INT8).
// `reciprocal` reproduces ModelOpt run on CUDA tensors, where torch computes a division by a
// Python float as a multiplication by its float reciprocal (a true division on CPU tensors).
at::Tensor modelopt_scale_from_amax(const at::Tensor& amax,
                                    double maxbound,
                                    bool reciprocal = false);

}  // namespace moeq::kernels
