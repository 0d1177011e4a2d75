// CUDA launchers of the integer / FP8 quantizer ops: the same functions as the CPU references
// (cpu/quant_cpu.h), on device pointers, enqueued on `stream`. No ATen here.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/geometry.h"

namespace moeq::kernels::cuda {

void quant_elementwise(const void* in,
                       void* out,
                       const void* scale,
                       const float* zero_point,
                       DType in_dtype,
                       DType out_dtype,
                       DType scale_dtype,
                       QuantKind kind,
                       Direction dir,
                       const ElementwiseArgs& args,
                       cudaStream_t stream);

// Quantize then pack along cols (compressed-tensors pack-quantized) in one pass, for inputs whose
// cols are contiguous. Returns false (and does nothing) when the layout does not fit; the caller
// then quantizes and packs in two steps.
bool quantize_pack_int(const void* in,
                       const void* scale,
                       const float* zero_point,
                       DType in_dtype,
                       DType scale_dtype,
                       const ElementwiseArgs& args,
                       int num_bits,
                       int32_t* out,
                       cudaStream_t stream);

// Outputs must be pre-filled by the caller: amax with 0, min with +inf, max with -inf. Sets
// *nonfinite (device int) to 1 when x holds a NaN or an Inf.
void block_reduce(
    const void* x, DType dtype, const ReduceArgs& args, int* nonfinite, cudaStream_t stream);

void int_qparams(const float* min,
                 const float* max,
                 int64_t n,
                 float qmin,
                 float qmax,
                 bool symmetric,
                 DType scale_dtype,
                 void* scale,
                 int8_t* zero_point,
                 cudaStream_t stream);

void fp8_scale_from_amax(const float* amax,
                         int64_t n,
                         QuantKind fp8,
                         DType scale_dtype,
                         void* scale,
                         cudaStream_t stream);

void modelopt_scale_from_amax(const void* amax,
                              DType amax_dtype,
                              int64_t n,
                              float maxbound,
                              bool reciprocal,
                              float* scale,
                              cudaStream_t stream);

void pack_int(const int8_t* codes, const View3& v, int num_bits, int32_t* out, cudaStream_t stream);
void unpack_int(const int32_t* words,
                const View3& v,
                int num_bits,
                int64_t cols,
                int8_t* out,
                cudaStream_t stream);

void pack_int4_row_pairs(const int8_t* codes, const View3& v, uint8_t* out, cudaStream_t stream);
void unpack_int4_row_pairs(const uint8_t* packed, const View3& v, int8_t* out, cudaStream_t stream);

}  // namespace moeq::kernels::cuda
