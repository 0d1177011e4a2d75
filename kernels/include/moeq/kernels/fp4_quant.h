// FP4 E2M1 and the MX formats.
//
// NVFP4: groups of 16 along cols, an FP8 E4M3 scale per group and one FP32 global scale.
//   compressed-tensors convention: global_scale = 448 * 6 / amax (the reciprocal of ModelOpt's
//   weight_scale_2 = amax / (6 * 448)); block scale = fp8(block_amax / 6 * global_scale);
//   q = e2m1(x / (float(block_scale) / global_scale)); x' = q * float(block_scale) / global_scale.
// MXFP4 / MXFP8: groups of 32, E8M0 (power-of-two) scales stored as uint8 exponents.
// Packed FP4: two codes per byte along cols, the even element in the low nibble.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace moeq::kernels {

constexpr int64_t kNvfp4GroupSize = 16;
constexpr int64_t kMxGroupSize = 32;

// global_scale: float32 scalar tensor (compressed-tensors' weight_global_scale).
at::Tensor fake_quant_nvfp4(const at::Tensor& x, const at::Tensor& global_scale);
// Returns (packed uint8 [..., rows, cols/2], block scales float8_e4m3fn [..., rows, cols/16]).
std::tuple<at::Tensor, at::Tensor> quantize_nvfp4(const at::Tensor& x,
                                                  const at::Tensor& global_scale);
at::Tensor dequantize_nvfp4(const at::Tensor& packed,
                            const at::Tensor& block_scale,
                            const at::Tensor& global_scale,
                            at::ScalarType out_dtype);
// 448 * 6 / amax, with NaN/Inf mapped to 1 (compressed-tensors' generate_gparam).
at::Tensor nvfp4_global_scale(const at::Tensor& amax);

enum class MxElement { kFp4E2M1, kFp8E4M3 };
at::Tensor fake_quant_mx(const at::Tensor& x, MxElement element);
// Returns (data: packed uint8 for FP4 or float8_e4m3fn for FP8, scales uint8 E8M0).
std::tuple<at::Tensor, at::Tensor> quantize_mx(const at::Tensor& x, MxElement element);
at::Tensor dequantize_mx(const at::Tensor& data,
                         const at::Tensor& scales,
                         MxElement element,
                         at::ScalarType out_dtype);

// Packing of E2M1 codes (uint8 values 0..15) two per byte, even element in the low nibble.
at::Tensor pack_fp4(const at::Tensor& codes);
at::Tensor unpack_fp4(const at::Tensor& packed);

}  // namespace moeq::kernels
