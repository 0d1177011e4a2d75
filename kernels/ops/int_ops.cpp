// Integer quantization ops (int_quant.h): the compressed-tensors numerics of common/int_fp8.h.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/quant_cpu.h"
#include "moeq/kernels/fp8_quant.h"
#include "moeq/kernels/int_quant.h"
#include "moeq/kernels/pack.h"
#include "moeq/kernels/reduce.h"
#include "ops/common.h"
#include "ops/elementwise.h"

#ifdef MOEQ_WITH_CUDA
#include "cuda/quant_cuda.cuh"
#endif

namespace moeq::kernels {

using namespace detail;

IntRange IntRange::signed_bits(int num_bits) {
  check_num_bits(num_bits, "IntRange::signed_bits");
  return {-(int64_t{1} << (num_bits - 1)), (int64_t{1} << (num_bits - 1)) - 1};
}

at::Tensor fake_quant_int(const at::Tensor& x,
                          const at::Tensor& scale,
                          const std::optional<at::Tensor>& zero_point,
                          BlockShape block,
                          IntRange range) {
  constexpr const char* op = "fake_quant_int";
  check_float(x, op, "x");
  check_int_range(range.qmin, range.qmax, op);
  return run_elementwise(op, x, at::empty_like(x), scale, zero_point, block, QuantKind::kInt,
                         Direction::kFake, range.qmin, range.qmax);
}

at::Tensor quantize_int(const at::Tensor& x,
                        const at::Tensor& scale,
                        const std::optional<at::Tensor>& zero_point,
                        BlockShape block,
                        IntRange range) {
  constexpr const char* op = "quantize_int";
  check_float(x, op, "x");
  check_int_range(range.qmin, range.qmax, op);
  return run_elementwise(op, x, at::empty_like(x, x.options().dtype(at::kChar)), scale, zero_point,
                         block, QuantKind::kInt, Direction::kQuantize, range.qmin, range.qmax);
}

at::Tensor dequantize_int(const at::Tensor& q,
                          const at::Tensor& scale,
                          const std::optional<at::Tensor>& zero_point,
                          BlockShape block,
                          at::ScalarType out_dtype) {
  constexpr const char* op = "dequantize_int";
  MOEQ_CHECK(q.scalar_type() == at::kChar, "{}: q must be int8 codes, got {}", op,
             c10::toString(q.scalar_type()));
  check_float_dtype(out_dtype, op, "out_dtype");
  return run_elementwise(op, q, at::empty_like(q, q.options().dtype(out_dtype)), scale, zero_point,
                         block, QuantKind::kInt, Direction::kDequantize, -128, 127);
}

at::Tensor quantize_int_packed(const at::Tensor& x,
                               const at::Tensor& scale,
                               const std::optional<at::Tensor>& zero_point,
                               BlockShape block,
                               int num_bits) {
  constexpr const char* op = "quantize_int_packed";
  check_num_bits(num_bits, op);
  const IntRange range = IntRange::signed_bits(num_bits);
#ifdef MOEQ_WITH_CUDA
  if (x.is_cuda() && x.numel() > 0) {
    check_float(x, op, "x");
    const Elementwise e = prepare_elementwise(op, x, scale, zero_point, block, QuantKind::kInt,
                                              range.qmin, range.qmax);
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = ceil_div(shape.back() * num_bits, 32);
    at::Tensor out = at::empty(shape, x.options().dtype(at::kInt));
    const c10::cuda::CUDAGuard guard(x.device());
    if (cuda::quantize_pack_int(
            x.const_data_ptr(), e.scale.const_data_ptr(),
            e.zero_point.defined() ? e.zero_point.const_data_ptr<float>() : nullptr, e.in_dtype,
            e.scale_dtype, e.args, num_bits, out.mutable_data_ptr<int32_t>(), current_stream(x))) {
      return out;
    }
  }
#endif
  return pack_int(quantize_int(x, scale, zero_point, block, range), num_bits);
}

std::tuple<at::Tensor, at::Tensor> int_qparams(const at::Tensor& min_vals,
                                               const at::Tensor& max_vals,
                                               IntRange range,
                                               bool symmetric,
                                               at::ScalarType scale_dtype) {
  constexpr const char* op = "int_qparams";
  check_device_supported(min_vals, op);
  check_float(min_vals, op, "min_vals");
  check_float(max_vals, op, "max_vals");
  check_same_device(min_vals, max_vals, op, "max_vals");
  MOEQ_CHECK(min_vals.sizes() == max_vals.sizes(),
             "{}: min_vals {} and max_vals {} must have the same shape", op,
             shape_str(min_vals.sizes()), shape_str(max_vals.sizes()));
  check_int_range(range.qmin, range.qmax, op);
  check_float_dtype(scale_dtype, op, "scale_dtype");
  const at::Tensor mn = dense(min_vals.to(at::kFloat));
  const at::Tensor mx = at::empty_like(mn).copy_(max_vals);
  at::Tensor scale = at::empty_like(mn, mn.options().dtype(scale_dtype));
  at::Tensor zp = at::empty_like(mn, mn.options().dtype(at::kChar));
  const int64_t n = mn.numel();
  if (n == 0) {
    return {scale, zp};
  }
  const DType s_t = dtype_of(scale, op, "scale");
  int8_t* zp_ptr = zp.mutable_data_ptr<int8_t>();
  const auto qmin = static_cast<float>(range.qmin);
  const auto qmax = static_cast<float>(range.qmax);
#ifdef MOEQ_WITH_CUDA
  if (mn.is_cuda()) {
    const c10::cuda::CUDAGuard guard(mn.device());
    cuda::int_qparams(mn.const_data_ptr<float>(), mx.const_data_ptr<float>(), n, qmin, qmax,
                      symmetric, s_t, scale.mutable_data_ptr(), zp_ptr, current_stream(mn));
    return {scale, zp};
  }
#endif
  cpu::int_qparams(mn.const_data_ptr<float>(), mx.const_data_ptr<float>(), n, qmin, qmax, symmetric,
                   s_t, scale.mutable_data_ptr(), zp_ptr);
  return {scale, zp};
}

at::Tensor fake_quant_int_dynamic(
    const at::Tensor& x, BlockShape block, IntRange range, bool symmetric, const char* what) {
  check_float(x, "fake_quant_int_dynamic", "x");
  const auto [mn, mx] = block_minmax(x, block, what);
  const auto [scale, zp] = int_qparams(mn, mx, range, symmetric, x.scalar_type());
  return fake_quant_int(x, scale, zp, block, range);  // zeros when symmetric, as CT adds them
}

}  // namespace moeq::kernels

namespace {

namespace mk = moeq::kernels;
using mk::detail::block_from_list;

at::Tensor fake_quant_int_op(const at::Tensor& x,
                             const at::Tensor& scale,
                             const std::optional<at::Tensor>& zero_point,
                             at::IntArrayRef block,
                             int64_t qmin,
                             int64_t qmax) {
  return mk::fake_quant_int(x, scale, zero_point, block_from_list(block, "fake_quant_int"),
                            {qmin, qmax});
}

at::Tensor quantize_int_op(const at::Tensor& x,
                           const at::Tensor& scale,
                           const std::optional<at::Tensor>& zero_point,
                           at::IntArrayRef block,
                           int64_t qmin,
                           int64_t qmax) {
  return mk::quantize_int(x, scale, zero_point, block_from_list(block, "quantize_int"),
                          {qmin, qmax});
}

at::Tensor dequantize_int_op(const at::Tensor& q,
                             const at::Tensor& scale,
                             const std::optional<at::Tensor>& zero_point,
                             at::IntArrayRef block,
                             at::ScalarType out_dtype) {
  return mk::dequantize_int(q, scale, zero_point, block_from_list(block, "dequantize_int"),
                            out_dtype);
}

at::Tensor quantize_int_packed_op(const at::Tensor& x,
                                  const at::Tensor& scale,
                                  const std::optional<at::Tensor>& zero_point,
                                  at::IntArrayRef block,
                                  int64_t num_bits) {
  mk::detail::check_num_bits(num_bits, "quantize_int_packed");
  return mk::quantize_int_packed(x, scale, zero_point,
                                 block_from_list(block, "quantize_int_packed"),
                                 static_cast<int>(num_bits));
}

std::tuple<at::Tensor, at::Tensor> int_qparams_op(const at::Tensor& min_vals,
                                                  const at::Tensor& max_vals,
                                                  int64_t qmin,
                                                  int64_t qmax,
                                                  bool symmetric,
                                                  at::ScalarType scale_dtype) {
  return mk::int_qparams(min_vals, max_vals, {qmin, qmax}, symmetric, scale_dtype);
}

at::Tensor fake_quant_int_dynamic_op(const at::Tensor& x,
                                     at::IntArrayRef block,
                                     int64_t qmin,
                                     int64_t qmax,
                                     bool symmetric,
                                     std::string_view what) {
  return mk::fake_quant_int_dynamic(x, block_from_list(block, "fake_quant_int_dynamic"),
                                    {qmin, qmax}, symmetric, std::string(what).c_str());
}

void register_impls(torch::Library& m) {
  m.impl("fake_quant_int", &fake_quant_int_op);
  m.impl("quantize_int", &quantize_int_op);
  m.impl("dequantize_int", &dequantize_int_op);
  m.impl("quantize_int_packed", &quantize_int_packed_op);
  m.impl("int_qparams", &int_qparams_op);
  m.impl("fake_quant_int_dynamic", &fake_quant_int_dynamic_op);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def(
      "fake_quant_int(Tensor x, Tensor scale, Tensor? zero_point, int[] block, int qmin, "
      "int qmax) -> Tensor");
  m.def(
      "quantize_int(Tensor x, Tensor scale, Tensor? zero_point, int[] block, int qmin, "
      "int qmax) -> Tensor");
  m.def(
      "dequantize_int(Tensor q, Tensor scale, Tensor? zero_point, int[] block, "
      "ScalarType out_dtype) -> Tensor");
  m.def(
      "quantize_int_packed(Tensor x, Tensor scale, Tensor? zero_point, int[] block, "
      "int num_bits) -> Tensor");
  m.def(
      "int_qparams(Tensor min_vals, Tensor max_vals, int qmin, int qmax, bool symmetric, "
      "ScalarType scale_dtype) -> (Tensor, Tensor)");
  m.def(
      "fake_quant_int_dynamic(Tensor x, int[] block, int qmin, int qmax, bool symmetric, "
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
