// FP8 quantization ops (fp8_quant.h): the compressed-tensors numerics of common/int_fp8.h.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/quant_cpu.h"
#include "moeq/kernels/fp8_quant.h"
#include "moeq/kernels/reduce.h"
#include "ops/common.h"
#include "ops/elementwise.h"

#ifdef MOEQ_WITH_CUDA
#include "cuda/quant_cuda.cuh"
#endif

namespace moeq::kernels {

using namespace detail;

at::Tensor fake_quant_fp8(const at::Tensor& x,
                          const at::Tensor& scale,
                          BlockShape block,
                          at::ScalarType fp8_dtype,
                          const std::optional<at::Tensor>& zero_point) {
  constexpr const char* op = "fake_quant_fp8";
  check_float(x, op, "x");
  const QuantKind kind = fp8_kind(fp8_dtype, op, "fp8_dtype");
  return run_elementwise(op, x, at::empty_like(x), scale, zero_point, block, kind, Direction::kFake,
                         0, 0);
}

at::Tensor quantize_fp8(const at::Tensor& x,
                        const at::Tensor& scale,
                        BlockShape block,
                        at::ScalarType fp8_dtype,
                        const std::optional<at::Tensor>& zero_point) {
  constexpr const char* op = "quantize_fp8";
  check_float(x, op, "x");
  const QuantKind kind = fp8_kind(fp8_dtype, op, "fp8_dtype");
  return run_elementwise(op, x, at::empty_like(x, x.options().dtype(fp8_dtype)), scale, zero_point,
                         block, kind, Direction::kQuantize, 0, 0);
}

at::Tensor dequantize_fp8(const at::Tensor& q,
                          const at::Tensor& scale,
                          BlockShape block,
                          at::ScalarType out_dtype,
                          const std::optional<at::Tensor>& zero_point) {
  constexpr const char* op = "dequantize_fp8";
  const QuantKind kind = fp8_kind(q.scalar_type(), op, "q");
  check_float_dtype(out_dtype, op, "out_dtype");
  return run_elementwise(op, q, at::empty_like(q, q.options().dtype(out_dtype)), scale, zero_point,
                         block, kind, Direction::kDequantize, 0, 0);
}

at::Tensor fp8_scale_from_amax(const at::Tensor& amax,
                               at::ScalarType fp8_dtype,
                               at::ScalarType scale_dtype) {
  constexpr const char* op = "fp8_scale_from_amax";
  check_device_supported(amax, op);
  check_float(amax, op, "amax");
  const QuantKind kind = fp8_kind(fp8_dtype, op, "fp8_dtype");
  check_float_dtype(scale_dtype, op, "scale_dtype");
  const at::Tensor a = dense(amax.to(at::kFloat));
  at::Tensor scale = at::empty_like(a, a.options().dtype(scale_dtype));
  const int64_t n = a.numel();
  if (n == 0) {
    return scale;
  }
  const DType s_t = dtype_of(scale, op, "scale");
#ifdef MOEQ_WITH_CUDA
  if (a.is_cuda()) {
    const c10::cuda::CUDAGuard guard(a.device());
    cuda::fp8_scale_from_amax(a.const_data_ptr<float>(), n, kind, s_t, scale.mutable_data_ptr(),
                              current_stream(a));
    return scale;
  }
#endif
  cpu::fp8_scale_from_amax(a.const_data_ptr<float>(), n, kind, s_t, scale.mutable_data_ptr());
  return scale;
}

at::Tensor fake_quant_fp8_dynamic(const at::Tensor& x,
                                  BlockShape block,
                                  at::ScalarType fp8_dtype,
                                  const char* what) {
  constexpr const char* op = "fake_quant_fp8_dynamic";
  check_float(x, op, "x");
  fp8_kind(fp8_dtype, op, "fp8_dtype");
  const at::Tensor scale =
      fp8_scale_from_amax(block_amax(x, block, what), fp8_dtype, x.scalar_type());
  // compressed-tensors' dynamic path adds the (zero) zero point calculate_qparams returns.
  return fake_quant_fp8(x, scale, block, fp8_dtype, at::zeros_like(scale));
}

}  // namespace moeq::kernels

namespace {

namespace mk = moeq::kernels;
using mk::detail::block_from_list;

at::ScalarType fp8_or_default(std::optional<at::ScalarType> t) {
  return t.value_or(at::kFloat8_e4m3fn);
}

at::Tensor fake_quant_fp8_op(const at::Tensor& x,
                             const at::Tensor& scale,
                             at::IntArrayRef block,
                             std::optional<at::ScalarType> fp8_dtype,
                             const std::optional<at::Tensor>& zero_point) {
  return mk::fake_quant_fp8(x, scale, block_from_list(block, "fake_quant_fp8"),
                            fp8_or_default(fp8_dtype), zero_point);
}

at::Tensor quantize_fp8_op(const at::Tensor& x,
                           const at::Tensor& scale,
                           at::IntArrayRef block,
                           std::optional<at::ScalarType> fp8_dtype,
                           const std::optional<at::Tensor>& zero_point) {
  return mk::quantize_fp8(x, scale, block_from_list(block, "quantize_fp8"),
                          fp8_or_default(fp8_dtype), zero_point);
}

at::Tensor dequantize_fp8_op(const at::Tensor& q,
                             const at::Tensor& scale,
                             at::IntArrayRef block,
                             at::ScalarType out_dtype,
                             const std::optional<at::Tensor>& zero_point) {
  return mk::dequantize_fp8(q, scale, block_from_list(block, "dequantize_fp8"), out_dtype,
                            zero_point);
}

at::Tensor fp8_scale_from_amax_op(const at::Tensor& amax,
                                  at::ScalarType fp8_dtype,
                                  at::ScalarType scale_dtype) {
  return mk::fp8_scale_from_amax(amax, fp8_dtype, scale_dtype);
}

at::Tensor fake_quant_fp8_dynamic_op(const at::Tensor& x,
                                     at::IntArrayRef block,
                                     std::optional<at::ScalarType> fp8_dtype,
                                     std::string_view what) {
  return mk::fake_quant_fp8_dynamic(x, block_from_list(block, "fake_quant_fp8_dynamic"),
                                    fp8_or_default(fp8_dtype), std::string(what).c_str());
}

void register_impls(torch::Library& m) {
  m.impl("fake_quant_fp8", &fake_quant_fp8_op);
  m.impl("quantize_fp8", &quantize_fp8_op);
  m.impl("dequantize_fp8", &dequantize_fp8_op);
  m.impl("fp8_scale_from_amax", &fp8_scale_from_amax_op);
  m.impl("fake_quant_fp8_dynamic", &fake_quant_fp8_dynamic_op);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def(
      "fake_quant_fp8(Tensor x, Tensor scale, int[] block, ScalarType? fp8_dtype=None, "
      "Tensor? zero_point=None) -> Tensor");
  m.def(
      "quantize_fp8(Tensor x, Tensor scale, int[] block, ScalarType? fp8_dtype=None, "
      "Tensor? zero_point=None) -> Tensor");
  m.def(
      "dequantize_fp8(Tensor q, Tensor scale, int[] block, ScalarType out_dtype, "
      "Tensor? zero_point=None) -> Tensor");
  m.def("fp8_scale_from_amax(Tensor amax, ScalarType fp8_dtype, ScalarType scale_dtype) -> Tensor");
  m.def(
      "fake_quant_fp8_dynamic(Tensor x, int[] block, ScalarType? fp8_dtype=None, "
      "str what='tensor') -> Tensor");
}

TORCH_LIBRARY_IMPL(moeq, CPU, m) {
  register_impls(m);
}
#ifdef MOEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(moeq, CUDA, m) {
  register_impls(m);
}
#endif
