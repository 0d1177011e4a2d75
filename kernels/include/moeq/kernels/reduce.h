// Block reductions that observers and real quantizers build on.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "moeq/kernels/block.h"

namespace moeq::kernels {

// max |x| per block, float32, shape [..., ceil(rows/br), ceil(cols/bc)]. A NaN or Inf in x is an
// error naming `what` (the tensor's name), never a silent NaN scale.
at::Tensor block_amax(const at::Tensor& x, BlockShape block, const char* what = "tensor");

// (min, max) per block, float32, same shape as block_amax.
std::tuple<at::Tensor, at::Tensor> block_minmax(const at::Tensor& x,
                                                BlockShape block,
                                                const char* what = "tensor");

}  // namespace moeq::kernels
