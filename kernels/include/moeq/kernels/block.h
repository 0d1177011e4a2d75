// Block geometry shared by every quantizer op.
//
// Every op sees its input as [..., rows, cols]: leading dims are a batch (experts), the last two
// are one 2-D matrix, and quantization groups run along `cols` (the input / K axis). A stack
// stored transposed ([E, in, out], GPT-OSS, Llama4) is passed as x.transpose(-1, -2): ops honour
// strides, so no hidden copy is made and outputs keep the input's layout.
//
// A block is block.rows x block.cols elements; 0 means "the whole extent". So the
// compressed-tensors strategies map to: tensor {0, 0}; channel / token {1, 0}; group g {1, g};
// block [b0, b1] {b0, b1}. Scales have shape [..., ceil(rows/block.rows), ceil(cols/block.cols)]
// and a partial last block is a block of its own.
#pragma once

#include <cstdint>

namespace moeq::kernels {

struct BlockShape {
  int64_t rows = 0;  // 0: all rows
  int64_t cols = 0;  // 0: all cols

  static constexpr BlockShape tensor() { return {0, 0}; }
  static constexpr BlockShape channel() { return {1, 0}; }
  static constexpr BlockShape group(int64_t size) { return {1, size}; }
  static constexpr BlockShape block(int64_t r, int64_t c) { return {r, c}; }
};

}  // namespace moeq::kernels
