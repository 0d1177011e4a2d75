// FP4 E2M1 (NVFP4, MXFP4) and MXFP8 quantization, bit for bit as compressed-tensors 0.20 and
// ModelOpt 0.47 compute it (docs/numerics-fp4.md has the arithmetic and where the two differ).
//
// NVFP4: groups of 16 along cols, an FP8 E4M3 scale per group and one FP32 global scale per
//   matrix. compressed-tensors stores global_scale = 448 * 6 / amax and quantizes with
//   e = float(block_scale) / global_scale; ModelOpt stores weight_scale_2 = amax / (6 * 448) and
//   uses e = float(block_scale) * weight_scale_2. q = e2m1(x / e), x' = q * e.
// MXFP4 / MXFP8: groups of 32, E8M0 (power-of-two) scales stored as uint8 biased exponents.
// Packed FP4: two codes per byte along cols, the even element in the low nibble.
//
// Every op takes x as [..., rows, cols] (bf16, fp16 or fp32) with any strides: a transposed
// expert stack is passed as w.transpose(-1, -2) and quantized along its last dim without a copy.
// Fake-quant outputs keep x's dtype and layout; codes and scales are dense row-major
// [..., rows, cols / 2] (packed FP4) or [..., rows, cols] (MXFP8) and [..., rows, groups].
// cols need not be a multiple of the group: a partial last group is a group of its own (what
// zero padding gives); packed FP4 needs an even cols. A NaN or Inf in x is an error naming
// `what`. `global` holds one value, or one per matrix of a stack (numel == prod of x's leading
// dims), any shape and float dtype.
#pragma once

#include <ATen/core/Tensor.h>

#include <tuple>

namespace moeq::kernels {

constexpr int64_t kNvfp4GroupSize = 16;
constexpr int64_t kMxGroupSize = 32;

// Whose arithmetic an FP4 / MX op reproduces.
enum class Convention {
  kCompressedTensors,  // compressed-tensors (llm-compressor): nvfp4-/mxfp4-pack-quantized, mxfp8
  kModelOpt,           // ModelOpt: NVFP4QTensor, MXFP4QTensor, MXFP8QTensor
};

// ---- NVFP4 ------------------------------------------------------------------------------------

// The global scale from a tensor amax (any shape; float32 result of the same shape, [1] for a
// scalar): compressed-tensors' generate_gparam, 448 * 6 / amax computed in amax's dtype (pass the
// amax in the weight's dtype, as llm-compressor's observers hold it) with a zero amax giving 1;
// ModelOpt's weight_scale_2 = amax.float() / (6 * 448).
at::Tensor nvfp4_global_scale(const at::Tensor& amax,
                              Convention convention = Convention::kCompressedTensors);

// FP8 E4M3 block scales from per-group amax values [..., rows, groups] (in the weight's dtype
// for compressed-tensors: amax / 6 is rounded to it). compressed-tensors: fp8(global * (amax/6)),
// a zero becomes 0.125; ModelOpt: fp8(clamp(amax / (6 * global), 2^-9, 448)), a zero becomes 1.
at::Tensor nvfp4_block_scale(const at::Tensor& block_amax,
                             const at::Tensor& global,
                             Convention convention = Convention::kCompressedTensors);

// ModelOpt's static export of per-block amax values (NVFP4StaticQuantizer, MSE / FP8 sweep):
// fp8(clamp((amax / 6 or 1) * 448 / (global_amax / 6), 2^-9, 448)).
at::Tensor nvfp4_block_scale_static(const at::Tensor& block_amax, const at::Tensor& global_amax);

// Quantize-dequantize with block scales from each group's amax.
at::Tensor fake_quant_nvfp4(const at::Tensor& x,
                            const at::Tensor& global,
                            Convention convention = Convention::kCompressedTensors,
                            const char* what = "x");
// Returns (packed uint8 [..., rows, cols/2], block scales float8_e4m3fn [..., rows, groups]).
std::tuple<at::Tensor, at::Tensor> quantize_nvfp4(
    const at::Tensor& x,
    const at::Tensor& global,
    Convention convention = Convention::kCompressedTensors,
    const char* what = "x");

// The same with given block scales (float8_e4m3fn [..., rows, groups]; MSE / sweep observers,
// GPTQ). A zero or NaN block scale is an error.
at::Tensor fake_quant_nvfp4_with_scales(const at::Tensor& x,
                                        const at::Tensor& block_scale,
                                        const at::Tensor& global,
                                        Convention convention = Convention::kCompressedTensors,
                                        const char* what = "x");
at::Tensor quantize_nvfp4_with_scales(const at::Tensor& x,
                                      const at::Tensor& block_scale,
                                      const at::Tensor& global,
                                      Convention convention = Convention::kCompressedTensors,
                                      const char* what = "x");

// packed [..., rows, cols/2] -> [..., rows, cols] in out_dtype (dense).
at::Tensor dequantize_nvfp4(const at::Tensor& packed,
                            const at::Tensor& block_scale,
                            const at::Tensor& global,
                            at::ScalarType out_dtype,
                            Convention convention = Convention::kCompressedTensors);

// Per-group search over the 126 positive finite FP8 E4M3 block scales for the least squared
// error. Returns (block scales float8_e4m3fn, block amax float32), both [..., rows, groups].
//   kModelOpt: ModelOpt's fp8_scale_sweep with global = the global amax: candidate scale
//     (fp8 / 448) * global_amax / 6; the amax is ModelOpt's per-block _amax and the scale its
//     static export (nvfp4_block_scale_static).
//   kCompressedTensors: global = weight_global_scale, candidate e = fp8 / global with CT's
//     rounding; the amax is 6 * scale / global.
std::tuple<at::Tensor, at::Tensor> nvfp4_fp8_scale_sweep(
    const at::Tensor& x,
    const at::Tensor& global,
    Convention convention = Convention::kCompressedTensors,
    const char* what = "x");

// ---- MX ---------------------------------------------------------------------------------------

enum class MxElement { kFp4E2M1, kFp8E4M3 };

// E8M0 codes (uint8) from per-group amax values. compressed-tensors: round_to_power_2 on the
// amax's own bits, 127 + floor(log2) - (2 for FP4, 8 for FP8), clamped to [0, 255] (pass the
// amax in the weight's dtype: an fp16 weight's tiny scales become 1, code 127, as in CT);
// ModelOpt: 127 + ceil(log2(amax / emax)) with its clamps.
at::Tensor mx_scale(const at::Tensor& block_amax,
                    MxElement element,
                    Convention convention = Convention::kCompressedTensors);

at::Tensor fake_quant_mx(const at::Tensor& x,
                         MxElement element,
                         Convention convention = Convention::kCompressedTensors,
                         const char* what = "x");
// Returns (data: packed uint8 for FP4 or float8_e4m3fn for FP8, scales uint8 E8M0).
std::tuple<at::Tensor, at::Tensor> quantize_mx(
    const at::Tensor& x,
    MxElement element,
    Convention convention = Convention::kCompressedTensors,
    const char* what = "x");
at::Tensor fake_quant_mx_with_scales(const at::Tensor& x,
                                     const at::Tensor& scales,
                                     MxElement element,
                                     Convention convention = Convention::kCompressedTensors,
                                     const char* what = "x");
at::Tensor quantize_mx_with_scales(const at::Tensor& x,
                                   const at::Tensor& scales,
                                   MxElement element,
                                   Convention convention = Convention::kCompressedTensors,
                                   const char* what = "x");
at::Tensor dequantize_mx(const at::Tensor& data,
                         const at::Tensor& scales,
                         MxElement element,
                         at::ScalarType out_dtype,
                         Convention convention = Convention::kCompressedTensors);

// ---- packing ----------------------------------------------------------------------------------

// E2M1 codes (uint8 0..15) two per byte, even element in the low nibble:
// [..., cols] -> [..., cols / 2] and back.
at::Tensor pack_fp4(const at::Tensor& codes);
at::Tensor unpack_fp4(const at::Tensor& packed);

}  // namespace moeq::kernels
