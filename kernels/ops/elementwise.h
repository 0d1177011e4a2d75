// The elementwise quantizer ops (fake / quantize / dequantize, integer and FP8) share one runner:
// validate the operands against x's block grid, then run the CPU reference or the CUDA kernel.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

#include "common/geometry.h"
#include "moeq/kernels/block.h"

namespace moeq::kernels::detail {

// Validated operands of an elementwise call on `in`.
struct Elementwise {
  ElementwiseArgs args;   // args.out is set by run_elementwise
  at::Tensor scale;       // the tensors the kernels read
  at::Tensor zero_point;  // float32, or undefined
  DType in_dtype;
  DType scale_dtype;
};

Elementwise prepare_elementwise(const char* op,
                                const at::Tensor& in,
                                const at::Tensor& scale,
                                const std::optional<at::Tensor>& zero_point,
                                BlockShape block,
                                QuantKind kind,
                                int64_t qmin,
                                int64_t qmax);

// Writes op(in) into out (allocated by the caller with in's sizes) and returns out.
at::Tensor run_elementwise(const char* op,
                           const at::Tensor& in,
                           at::Tensor out,
                           const at::Tensor& scale,
                           const std::optional<at::Tensor>& zero_point,
                           BlockShape block,
                           QuantKind kind,
                           Direction dir,
                           int64_t qmin,
                           int64_t qmax);

}  // namespace moeq::kernels::detail
