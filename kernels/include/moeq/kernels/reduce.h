// Block reductions that observers and real quantizers build on.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

#include "moeq/kernels/block.h"

namespace moeq::kernels {

// max |x| per block, float32, shape [..., ceil(rows/br), ceil(cols/bc)]. A NaN or Inf in x is an
// error naming `what` (the tensor's name), never a silent NaN scale (on CUDA the check waits for
// the kernel). The grid is laid out like x: for a transposed view (rows contiguous) it is a
// transposed view too, so scales derived from it are read coalesced by the quantizers.
at::Tensor block_amax(const at::Tensor& x, BlockShape block, const char* what = "tensor");

// (min, max) per block, float32, same shape and layout as block_amax. -0.0 counts as +0.0.
std::tuple<at::Tensor, at::Tensor> block_minmax(const at::Tensor& x,
                                                BlockShape block,
                                                const char* what = "tensor");

}  // namespace moeq::kernels
