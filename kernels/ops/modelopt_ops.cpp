// ModelOpt export conventions (modelopt.h).
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/quant_cpu.h"
#include "moeq/kernels/modelopt.h"
#include "ops/common.h"

#ifdef MOEQ_WITH_CUDA
#include "cuda/quant_cuda.cuh"
#endif

namespace moeq::kernels {

using namespace detail;

at::Tensor modelopt_scale_from_amax(const at::Tensor& amax, double maxbound, bool reciprocal) {
  constexpr const char* op = "modelopt_scale_from_amax";
  check_device_supported(amax, op);
  check_float(amax, op, "amax");
  MOEQ_CHECK(maxbound > 0, "{}: maxbound must be positive, got {}", op, maxbound);
  const at::Tensor a = dense(amax);
  at::Tensor scale = at::empty_like(a, a.options().dtype(at::kFloat));
  const int64_t n = a.numel();
  if (n == 0) {
    return scale;
  }
  const DType a_t = dtype_of(a, op, "amax");
  const auto mb = static_cast<float>(maxbound);
#ifdef MOEQ_WITH_CUDA
  if (a.is_cuda()) {
    const c10::cuda::CUDAGuard guard(a.device());
    cuda::modelopt_scale_from_amax(a.const_data_ptr(), a_t, n, mb, reciprocal,
                                   scale.mutable_data_ptr<float>(), current_stream(a));
    return scale;
  }
#endif
  cpu::modelopt_scale_from_amax(a.const_data_ptr(), a_t, n, mb, reciprocal,
                                scale.mutable_data_ptr<float>());
  return scale;
}

}  // namespace moeq::kernels

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def("modelopt_scale_from_amax(Tensor amax, float maxbound, bool reciprocal=False) -> Tensor");
}

TORCH_LIBRARY_IMPL(moeq, CPU, m) {
  m.impl("modelopt_scale_from_amax", &moeq::kernels::modelopt_scale_from_amax);
}
#ifdef MOEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(moeq, CUDA, m) {
  m.impl("modelopt_scale_from_amax", &moeq::kernels::modelopt_scale_from_amax);
}
#endif
