// Elementwise quantize kernels (one direction per translation unit, so nvcc builds them in
// parallel).
#include "cuda/quant_common.cuh"

namespace moeq::kernels::cuda::detail {

void quant_elementwise_quantize(const void* in,
                                void* out,
                                const void* scale,
                                const float* zero_point,
                                DType in_dtype,
                                DType out_dtype,
                                DType scale_dtype,
                                QuantKind kind,
                                const ElementwiseArgs& a,
                                cudaStream_t stream) {
  quant_elementwise_dir<Direction::kQuantize>(in, out, scale, zero_point, in_dtype, out_dtype,
                                              scale_dtype, kind, a, stream);
}

}  // namespace moeq::kernels::cuda::detail
