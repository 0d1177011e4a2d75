// Bit packing ops (pack.h): compressed-tensors pack-quantized and ModelOpt INT4-AWQ.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/quant_cpu.h"
#include "moeq/kernels/pack.h"
#include "ops/common.h"

#ifdef MOEQ_WITH_CUDA
#include "cuda/quant_cuda.cuh"
#endif

namespace moeq::kernels {
namespace {

using namespace detail;

// x's leading dims + [rows, cols], contiguous, of dtype.
at::Tensor empty_3d_like(const at::Tensor& x, int64_t rows, int64_t cols, at::ScalarType dtype) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape[shape.size() - 2] = rows;
  shape[shape.size() - 1] = cols;
  return at::empty(shape, x.options().dtype(dtype));
}

void check_input(const at::Tensor& t, at::ScalarType want, const char* op, const char* name) {
  check_device_supported(t, op);
  MOEQ_CHECK(t.scalar_type() == want, "{}: {} must be {}, got {}", op, name, c10::toString(want),
             c10::toString(t.scalar_type()));
}

}  // namespace

at::Tensor pack_int(const at::Tensor& codes, int num_bits) {
  constexpr const char* op = "pack_int";
  check_input(codes, at::kChar, op, "codes");
  check_num_bits(num_bits, op);
  const View3 v = view3(codes, op, "codes");
  at::Tensor out = empty_3d_like(codes, v.rows, ceil_div(v.cols * num_bits, 32), at::kInt);
  if (out.numel() == 0) {
    return out;
  }
#ifdef MOEQ_WITH_CUDA
  if (codes.is_cuda()) {
    const c10::cuda::CUDAGuard guard(codes.device());
    cuda::pack_int(codes.const_data_ptr<int8_t>(), v, num_bits, out.mutable_data_ptr<int32_t>(),
                   current_stream(codes));
    return out;
  }
#endif
  cpu::pack_int(codes.const_data_ptr<int8_t>(), v, num_bits, out.mutable_data_ptr<int32_t>());
  return out;
}

at::Tensor unpack_int(const at::Tensor& packed, int num_bits, int64_t cols) {
  constexpr const char* op = "unpack_int";
  check_input(packed, at::kInt, op, "packed");
  check_num_bits(num_bits, op);
  const View3 v = view3(packed, op, "packed");
  MOEQ_CHECK(cols >= 0 && v.cols == ceil_div(cols * num_bits, 32),
             "{}: {} cols of {} bits pack into {} int32 words, but packed has {} (shape {})", op,
             cols, num_bits, ceil_div(cols * num_bits, 32), v.cols, shape_str(packed.sizes()));
  at::Tensor out = empty_3d_like(packed, v.rows, cols, at::kChar);
  if (out.numel() == 0) {
    return out;
  }
#ifdef MOEQ_WITH_CUDA
  if (packed.is_cuda()) {
    const c10::cuda::CUDAGuard guard(packed.device());
    cuda::unpack_int(packed.const_data_ptr<int32_t>(), v, num_bits, cols,
                     out.mutable_data_ptr<int8_t>(), current_stream(packed));
    return out;
  }
#endif
  cpu::unpack_int(packed.const_data_ptr<int32_t>(), v, num_bits, cols,
                  out.mutable_data_ptr<int8_t>());
  return out;
}

at::Tensor pack_int_rows(const at::Tensor& codes, int num_bits) {
  MOEQ_CHECK(codes.dim() >= 2, "pack_int_rows: codes must have at least 2 dims, got shape {}",
             shape_str(codes.sizes()));
  return pack_int(codes.transpose(-1, -2), num_bits).transpose(-1, -2).contiguous();
}

at::Tensor unpack_int_rows(const at::Tensor& packed, int num_bits, int64_t rows) {
  MOEQ_CHECK(packed.dim() >= 2, "unpack_int_rows: packed must have at least 2 dims, got shape {}",
             shape_str(packed.sizes()));
  return unpack_int(packed.transpose(-1, -2), num_bits, rows).transpose(-1, -2).contiguous();
}

at::Tensor pack_int4_row_pairs(const at::Tensor& codes) {
  constexpr const char* op = "pack_int4_row_pairs";
  check_input(codes, at::kChar, op, "codes");
  const View3 v = view3(codes, op, "codes");
  MOEQ_CHECK(v.rows % 2 == 0,
             "{}: rows must be even (two output rows share a byte), got {} rows in shape {}", op,
             v.rows, shape_str(codes.sizes()));
  at::Tensor out = empty_3d_like(codes, v.rows / 2, v.cols, at::kByte);
  if (out.numel() == 0) {
    return out;
  }
#ifdef MOEQ_WITH_CUDA
  if (codes.is_cuda()) {
    const c10::cuda::CUDAGuard guard(codes.device());
    cuda::pack_int4_row_pairs(codes.const_data_ptr<int8_t>(), v, out.mutable_data_ptr<uint8_t>(),
                              current_stream(codes));
    return out;
  }
#endif
  cpu::pack_int4_row_pairs(codes.const_data_ptr<int8_t>(), v, out.mutable_data_ptr<uint8_t>());
  return out;
}

at::Tensor unpack_int4_row_pairs(const at::Tensor& packed) {
  constexpr const char* op = "unpack_int4_row_pairs";
  check_input(packed, at::kByte, op, "packed");
  const View3 v = view3(packed, op, "packed");
  at::Tensor out = empty_3d_like(packed, v.rows * 2, v.cols, at::kChar);
  if (out.numel() == 0) {
    return out;
  }
#ifdef MOEQ_WITH_CUDA
  if (packed.is_cuda()) {
    const c10::cuda::CUDAGuard guard(packed.device());
    cuda::unpack_int4_row_pairs(packed.const_data_ptr<uint8_t>(), v, out.mutable_data_ptr<int8_t>(),
                                current_stream(packed));
    return out;
  }
#endif
  cpu::unpack_int4_row_pairs(packed.const_data_ptr<uint8_t>(), v, out.mutable_data_ptr<int8_t>());
  return out;
}

}  // namespace moeq::kernels

namespace {

namespace mk = moeq::kernels;

int bits_arg(int64_t num_bits, const char* op) {
  mk::detail::check_num_bits(num_bits, op);
  return static_cast<int>(num_bits);
}

at::Tensor pack_int_op(const at::Tensor& codes, int64_t num_bits) {
  return mk::pack_int(codes, bits_arg(num_bits, "pack_int"));
}
at::Tensor unpack_int_op(const at::Tensor& packed, int64_t num_bits, int64_t cols) {
  return mk::unpack_int(packed, bits_arg(num_bits, "unpack_int"), cols);
}
at::Tensor pack_int_rows_op(const at::Tensor& codes, int64_t num_bits) {
  return mk::pack_int_rows(codes, bits_arg(num_bits, "pack_int_rows"));
}
at::Tensor unpack_int_rows_op(const at::Tensor& packed, int64_t num_bits, int64_t rows) {
  return mk::unpack_int_rows(packed, bits_arg(num_bits, "unpack_int_rows"), rows);
}

void register_impls(torch::Library& m) {
  m.impl("pack_int", &pack_int_op);
  m.impl("unpack_int", &unpack_int_op);
  m.impl("pack_int_rows", &pack_int_rows_op);
  m.impl("unpack_int_rows", &unpack_int_rows_op);
  m.impl("pack_int4_row_pairs", &mk::pack_int4_row_pairs);
  m.impl("unpack_int4_row_pairs", &mk::unpack_int4_row_pairs);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def("pack_int(Tensor codes, int num_bits) -> Tensor");
  m.def("unpack_int(Tensor packed, int num_bits, int cols) -> Tensor");
  m.def("pack_int_rows(Tensor codes, int num_bits) -> Tensor");
  m.def("unpack_int_rows(Tensor packed, int num_bits, int rows) -> Tensor");
  m.def("pack_int4_row_pairs(Tensor codes) -> Tensor");
  m.def("unpack_int4_row_pairs(Tensor packed) -> Tensor");
}

TORCH_LIBRARY_IMPL(moeq, CPU, m) {
  register_impls(m);
}
#ifdef MOEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(moeq, CUDA, m) {
  register_impls(m);
}
#endif
