// CPU references of the integer / FP8 quantizer ops: they define the numerics (common/int_fp8.h)
// that the CUDA kernels (cuda/quant_cuda.cuh, same functions) must match bit for bit. Plain
// pointers and strides in; the op layer (ops/) validates and allocates.
#pragma once

#include <cstdint>

#include "common/geometry.h"

namespace moeq::kernels::cpu {

// out = op(in, scale, zero_point) elementwise; zero_point is float32 (or null).
void quant_elementwise(const void* in,
                       void* out,
                       const void* scale,
                       const float* zero_point,
                       DType in_dtype,
                       DType out_dtype,
                       DType scale_dtype,
                       QuantKind kind,
                       Direction dir,
                       const ElementwiseArgs& args);

// Block max |x| and/or min, max. Returns false when x holds a NaN or an Inf.
bool block_reduce(const void* x, DType dtype, const ReduceArgs& args);

// compressed-tensors' calculate_qparams per element of n (min, max) pairs, in scale_dtype; the
// int8 zero points are zeros when symmetric.
void int_qparams(const float* min,
                 const float* max,
                 int64_t n,
                 float qmin,
                 float qmax,
                 bool symmetric,
                 DType scale_dtype,
                 void* scale,
                 int8_t* zero_point);

// amax / fmax in scale_dtype, zero -> eps(scale_dtype).
void fp8_scale_from_amax(
    const float* amax, int64_t n, QuantKind fp8, DType scale_dtype, void* scale);

// ModelOpt's amax -> scale (common/int_fp8.h: modelopt_scale); float32 out.
void modelopt_scale_from_amax(
    const void* amax, DType amax_dtype, int64_t n, float maxbound, bool reciprocal, float* scale);

// compressed-tensors pack-quantized along cols: codes [B, R, C] (strided) -> contiguous int32
// [B, R, ceil(C * bits / 32)].
void pack_int(const int8_t* codes, const View3& v, int num_bits, int32_t* out);
// words [B, R, W] (strided) -> contiguous int8 [B, R, cols].
void unpack_int(const int32_t* words, const View3& v, int num_bits, int64_t cols, int8_t* out);

// ModelOpt INT4: codes [B, R, C] (strided, R even) -> contiguous uint8 [B, R / 2, C].
void pack_int4_row_pairs(const int8_t* codes, const View3& v, uint8_t* out);
// packed [B, R2, C] (strided) -> contiguous int8 [B, 2 * R2, C].
void unpack_int4_row_pairs(const uint8_t* packed, const View3& v, int8_t* out);

}  // namespace moeq::kernels::cpu
