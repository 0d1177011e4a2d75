// Op-layer helpers: validation with values in the messages, tensors -> plain views for the CPU
// references and CUDA launchers, and device dispatch.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "common/geometry.h"
#include "moeq/core/error.h"
#include "moeq/kernels/block.h"

#ifdef MOEQ_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace moeq::kernels::detail {

// "[4096, 128]"
std::string shape_str(at::IntArrayRef sizes);

// The element type of a tensor; fails (naming op and operand) for types the kernels do not take.
DType dtype_of(const at::Tensor& t, const char* op, const char* name);

// float32 / bfloat16 / float16, else an error naming op and operand.
void check_float(const at::Tensor& t, const char* op, const char* name);
void check_float_dtype(at::ScalarType t, const char* op, const char* name);
// float8_e4m3fn / float8_e5m2.
QuantKind fp8_kind(at::ScalarType t, const char* op, const char* name);

// x as [batch, rows, cols]: at least 2 dims, leading dims collapsible into one batch dim.
View3 view3(const at::Tensor& t, const char* op, const char* name);

// BlockShape -> extents >= 1 (0 means the whole extent), validated.
Block2 resolve_block(BlockShape block, int64_t rows, int64_t cols, const char* op);
BlockShape block_from_list(at::IntArrayRef block, const char* op);

// The block grid of x: x's leading dims + [ceil(rows / br), ceil(cols / bc)].
std::vector<int64_t> grid_shape(const at::Tensor& x, Block2 block);

// A grid operand (scale, zero point) of x: after left-padding with 1s its last two dims equal
// the grid's and its leading dims equal x's or are all 1 (one grid for the whole batch). Returns
// the operand to read (made contiguous when its leading dims do not collapse) and its strides.
struct GridOperand {
  at::Tensor tensor;
  GridStrides strides;
};
GridOperand grid_operand(
    const at::Tensor& g, const at::Tensor& x, Block2 block, const char* op, const char* name);

// A new float grid for x laid out like x (rows-contiguous x -> rows-contiguous grid).
at::Tensor empty_grid(const at::Tensor& x, Block2 block, at::ScalarType dtype);

// t itself when its elements fill one block of memory (any dim order), else a contiguous copy:
// elementwise kernels over small grids then walk numel elements from data_ptr.
at::Tensor dense(const at::Tensor& t);

// All tensors on x's device.
void check_same_device(const at::Tensor& x,
                       const at::Tensor& other,
                       const char* op,
                       const char* name);

// The range check of IntRange, for ops whose codes are int8.
void check_int_range(int64_t qmin, int64_t qmax, const char* op);
void check_num_bits(int64_t num_bits, const char* op);

// Fails unless t is a CPU tensor (or a CUDA tensor in a build with CUDA).
void check_device_supported(const at::Tensor& t, const char* op);

#ifdef MOEQ_WITH_CUDA
cudaStream_t current_stream(const at::Tensor& t);
#endif

}  // namespace moeq::kernels::detail
