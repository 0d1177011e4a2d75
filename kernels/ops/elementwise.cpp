#include "ops/elementwise.h"

#include <ATen/ATen.h>

#include "cpu/quant_cpu.h"
#include "ops/common.h"

#ifdef MOEQ_WITH_CUDA
#include "cuda/quant_cuda.cuh"
#endif

namespace moeq::kernels::detail {

Elementwise prepare_elementwise(const char* op,
                                const at::Tensor& in,
                                const at::Tensor& scale,
                                const std::optional<at::Tensor>& zero_point,
                                BlockShape block,
                                QuantKind kind,
                                int64_t qmin,
                                int64_t qmax) {
  check_device_supported(in, op);
  check_float(scale, op, "scale");
  check_same_device(in, scale, op, "scale");
  Elementwise e;
  ElementwiseArgs& a = e.args;
  a.in = view3(in, op, "x");
  a.out = a.in;
  a.block = resolve_block(block, a.in.rows, a.in.cols, op);
  const GridOperand s = grid_operand(scale, in, a.block, op, "scale");
  e.scale = s.tensor;
  a.scale = s.strides;
  if (zero_point.has_value() && zero_point->defined()) {
    const at::ScalarType zt = zero_point->scalar_type();
    MOEQ_CHECK(zt == at::kChar || zt == at::kInt || zt == at::kFloat || zt == at::kBFloat16 ||
                   zt == at::kHalf || zt == at::kFloat8_e4m3fn || zt == at::kFloat8_e5m2,
               "{}: zero_point must be int8, int32, a float or an fp8 type, got {}", op,
               c10::toString(zt));
    check_same_device(in, *zero_point, op, "zero_point");
    const GridOperand z = grid_operand(zero_point->to(at::kFloat), in, a.block, op, "zero_point");
    e.zero_point = z.tensor;
    a.zero_point = z.strides;
    a.has_zero_point = true;
  }
  a.qmin = static_cast<float>(qmin);
  a.qmax = static_cast<float>(qmax);
  e.in_dtype = dtype_of(in, op, "x");
  e.scale_dtype = dtype_of(e.scale, op, "scale");
  return e;
}

at::Tensor run_elementwise(const char* op,
                           const at::Tensor& in,
                           at::Tensor out,
                           const at::Tensor& scale,
                           const std::optional<at::Tensor>& zero_point,
                           BlockShape block,
                           QuantKind kind,
                           Direction dir,
                           int64_t qmin,
                           int64_t qmax) {
  Elementwise e = prepare_elementwise(op, in, scale, zero_point, block, kind, qmin, qmax);
  e.args.out = view3(out, op, "out");
  if (in.numel() == 0) {
    return out;
  }
  const DType out_t = dtype_of(out, op, "out");
  const float* zp = e.zero_point.defined() ? e.zero_point.const_data_ptr<float>() : nullptr;
#ifdef MOEQ_WITH_CUDA
  if (in.is_cuda()) {
    const c10::cuda::CUDAGuard guard(in.device());
    cuda::quant_elementwise(in.const_data_ptr(), out.mutable_data_ptr(), e.scale.const_data_ptr(),
                            zp, e.in_dtype, out_t, e.scale_dtype, kind, dir, e.args,
                            current_stream(in));
    return out;
  }
#endif
  cpu::quant_elementwise(in.const_data_ptr(), out.mutable_data_ptr(), e.scale.const_data_ptr(), zp,
                         e.in_dtype, out_t, e.scale_dtype, kind, dir, e.args);
  return out;
}

}  // namespace moeq::kernels::detail
