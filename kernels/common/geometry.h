// Plain descriptions of the operands the quantizer ops work on, shared by the op layer, the CPU
// references and the CUDA launchers (which see no ATen).
//
// Every op sees its input as [batch, rows, cols] with element strides (leading dims collapsed into
// one batch dim); quantization groups run along cols. Block-grid operands (scales, zero points,
// reductions' outputs) are [batch, ceil(rows / block.rows), ceil(cols / block.cols)] with strides
// of their own; a batch stride of 0 shares one grid across the batch.
#pragma once

#include <cstdint>

#include "common/macros.h"

namespace moeq::kernels {

// The element types the kernels read and write.
enum class DType : uint8_t {
  kFloat32,
  kBFloat16,
  kFloat16,
  kInt8,
  kUInt8,
  kInt32,
  kFloat8E4M3,
  kFloat8E5M2,
};

struct View3 {
  int64_t batch = 1;
  int64_t rows = 1;
  int64_t cols = 1;
  int64_t sb = 0;  // element strides
  int64_t sr = 0;
  int64_t sc = 0;
};

struct GridStrides {
  int64_t sb = 0;
  int64_t sr = 0;
  int64_t sc = 0;
};

// A resolved block: both extents >= 1.
struct Block2 {
  int64_t rows = 1;
  int64_t cols = 1;
};

MOEQ_HOST_DEVICE MOEQ_INLINE constexpr int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

// What an elementwise quantizer op computes.
enum class QuantKind : uint8_t { kInt, kFp8E4M3, kFp8E5M2 };
enum class Direction : uint8_t {
  kFake,        // x -> dequantize(quantize(x)), same dtype as x
  kQuantize,    // x -> codes (int8 for kInt, the fp8 dtype for kFp8*)
  kDequantize,  // codes -> values of the output dtype
};

// An elementwise quantizer call: input and output views (same sizes, own strides), the scale and
// optional zero point (float32) over the block grid, and the integer range.
struct ElementwiseArgs {
  View3 in;
  View3 out;
  GridStrides scale;
  GridStrides zero_point;
  bool has_zero_point = false;
  Block2 block;
  float qmin = 0.0f;
  float qmax = 0.0f;
};

// A block reduction: per block max |x| (into amax) and/or min and max (into min, max), float32.
// Null outputs are skipped; min and max share strides.
struct ReduceArgs {
  View3 in;
  Block2 block;
  float* amax = nullptr;
  GridStrides amax_strides;
  float* min = nullptr;
  float* max = nullptr;
  GridStrides minmax_strides;
};

}  // namespace moeq::kernels
