// Bit packing of integer codes exactly as the target formats store them.
#pragma once

#include <ATen/core/Tensor.h>

namespace moeq::kernels {

// compressed-tensors pack-quantized: signed codes (int8) are offset by 2^(b-1) and packed along
// the last dim into int32 words, element i of a row at global bit i*b, little-end first (the
// "dense cross-element" layout; identical to the legacy one for b in {1, 2, 4, 8}).
// [..., rows, cols] int8 -> [..., rows, ceil(cols*b/32)] int32 (contiguous). Codes outside
// [-2^(b-1), 2^(b-1)) are not detected: their offset value is masked to b bits.
at::Tensor pack_int(const at::Tensor& codes, int num_bits);
at::Tensor unpack_int(const at::Tensor& packed, int num_bits, int64_t cols);

// compressed-tensors packs asymmetric zero points along dim -2 (the output dim) the same way.
at::Tensor pack_int_rows(const at::Tensor& codes, int num_bits);
at::Tensor unpack_int_rows(const at::Tensor& packed, int num_bits, int64_t rows);

// ModelOpt INT4-AWQ: codes in [-8, 7], two adjacent *output rows* per byte (row 2j in the low
// nibble, row 2j+1 in the high one): [..., rows, cols] -> [..., rows/2, cols] uint8.
at::Tensor pack_int4_row_pairs(const at::Tensor& codes);
at::Tensor unpack_int4_row_pairs(const at::Tensor& packed);

}  // namespace moeq::kernels
