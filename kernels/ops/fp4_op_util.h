// Shared pieces of the FP4 / MX op layer (fp4_ops.cpp, mx_ops.cpp, source_mxfp4_ops.cpp):
// tensor -> problem descriptions, the status buffer the kernels report bad values into, and the
// device dispatch.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "common/fp4_cpu.h"
#include "common/fp4_problem.h"
#include "moeq/core/error.h"
#include "moeq/kernels/fp4_quant.h"
#include "ops/common.h"

#ifdef MOEQ_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "cuda/fp4_quant.cuh"
#endif

namespace moeq::kernels::fp4_ops {

using fp4::DType;
using fp4::MatrixLayout;
using fp4::Status;

using detail::shape_str;  // one shape formatter for the whole op layer (ops/common.h)

inline const char* convention_name(Convention c) {
  return c == Convention::kModelOpt ? "modelopt" : "compressed_tensors";
}

inline DType dtype_of(const at::Tensor& t, const char* what) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kHalf:
      return DType::kFloat16;
    default:
      MOEQ_FAIL("{}: expected a float32, bfloat16 or float16 tensor, got {}", what,
                c10::toString(t.scalar_type()));
  }
}

inline DType out_dtype_of(at::ScalarType s) {
  switch (s) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kHalf:
      return DType::kFloat16;
    default:
      MOEQ_FAIL("out_dtype: expected float32, bfloat16 or float16, got {}", c10::toString(s));
  }
}

// x as [batch..., rows, cols] with its strides.
inline MatrixLayout layout_of(const at::Tensor& t, const char* what) {
  MOEQ_CHECK(t.dim() >= 2,
             "{}: expected a tensor [..., rows, cols] of at least 2 dims, got shape {}", what,
             shape_str(t.sizes()));
  MOEQ_CHECK(t.dim() - 2 <= fp4::kMaxBatchDims, "{}: at most {} leading dims, got shape {}", what,
             fp4::kMaxBatchDims, shape_str(t.sizes()));
  MatrixLayout L;
  L.nbatch = static_cast<int>(t.dim() - 2);
  for (int d = 0; d < L.nbatch; ++d) {
    L.batch_sizes[d] = t.size(d);
    L.batch_strides[d] = t.stride(d);
    L.batch *= t.size(d);
  }
  L.rows = t.size(-2);
  L.cols = t.size(-1);
  L.row_stride = t.stride(-2);
  L.col_stride = t.stride(-1);
  return L;
}

inline void check_device(const at::Tensor& t,
                         const at::Tensor& ref,
                         const char* what,
                         const char* ref_what) {
  MOEQ_CHECK(t.device() == ref.device(), "{} is on {} but {} is on {}", what, t.device().str(),
             ref_what, ref.device().str());
}

// The global scales as dense float32 on x's device: one value (stride 0) or one per matrix.
struct Globals {
  at::Tensor values;
  int64_t stride = 0;
};
inline Globals globals_for(const at::Tensor& global,
                           int64_t batch,
                           const at::Tensor& x,
                           const char* what) {
  MOEQ_CHECK(global.defined(), "{}: the global scale is undefined", what);
  MOEQ_CHECK(at::isFloatingType(global.scalar_type()),
             "{}: the global scale must be a float tensor, got {}", what,
             c10::toString(global.scalar_type()));
  MOEQ_CHECK(global.numel() == 1 || global.numel() == batch,
             "{}: the global scale must hold 1 value or one per matrix ({}), got shape {}", what,
             batch, shape_str(global.sizes()));
  check_device(global, x, "the global scale", what);
  Globals g;
  g.values = global.reshape({-1}).to(at::kFloat).contiguous();
  g.stride = global.numel() == 1 ? 0 : 1;
  return g;
}

// Where the kernels report bad values: a host Status for CPU work; for CUDA a device copy (set
// with one memset) read back into pinned memory after the kernel, one stream synchronization.
class StatusBuffer {
 public:
  explicit StatusBuffer(const at::Device& device) : device_(device) {
#ifdef MOEQ_WITH_CUDA
    if (device.is_cuda()) {
      dev_ = at::empty({3}, at::TensorOptions().dtype(at::kLong).device(device));
      host_copy_ = at::empty({3}, at::TensorOptions().dtype(at::kLong).pinned_memory(true));
      stream_ = at::cuda::getCurrentCUDAStream(device.index()).stream();
      const cudaError_t err = cudaMemsetAsync(dev_.data_ptr(), 0xFF, 3 * sizeof(int64_t), stream_);
      MOEQ_CHECK(err == cudaSuccess, "cudaMemsetAsync: {}", cudaGetErrorString(err));
    }
#endif
  }
  Status* ptr() {
    return dev_.defined() ? reinterpret_cast<Status*>(dev_.data_ptr<int64_t>()) : &host_;
  }
  Status read() const {
    if (!dev_.defined()) {
      return host_;
    }
    Status s;
#ifdef MOEQ_WITH_CUDA
    cudaError_t err = cudaMemcpyAsync(host_copy_.data_ptr(), dev_.data_ptr(), 3 * sizeof(int64_t),
                                      cudaMemcpyDeviceToHost, stream_);
    if (err == cudaSuccess) {
      err = cudaStreamSynchronize(stream_);
    }
    MOEQ_CHECK(err == cudaSuccess, "reading the kernel status on {}: {}", device_.str(),
               cudaGetErrorString(err));
    const auto* v = host_copy_.data_ptr<int64_t>();
    s.input = static_cast<unsigned long long>(v[0]);
    s.scale = static_cast<unsigned long long>(v[1]);
    s.global = static_cast<unsigned long long>(v[2]);
#endif
    return s;
  }

 private:
  at::Device device_;
  Status host_;
  at::Tensor dev_;
  at::Tensor host_copy_;
#ifdef MOEQ_WITH_CUDA
  cudaStream_t stream_ = nullptr;
#endif
};

// Row-major coordinates of a logical index into a tensor of `sizes`.
inline std::string coords(int64_t index, at::IntArrayRef sizes) {
  std::vector<int64_t> c(sizes.size());
  for (int64_t d = static_cast<int64_t>(sizes.size()) - 1; d >= 0; --d) {
    const int64_t n = sizes[d] > 0 ? sizes[d] : 1;
    c[d] = index % n;
    index /= n;
  }
  return shape_str(c);
}

// The value of t at a logical row-major index, as a string (error messages only).
inline std::string value_at(const at::Tensor& t, int64_t index) {
  const at::Tensor e = t.reshape({-1})[index].to(at::kCPU);
  if (e.scalar_type() == at::kByte) {
    return std::to_string(e.item<uint8_t>());
  }
  return fmt::format("{}", e.to(at::kDouble).item<double>());
}

// Runs a problem on the tensor's device.
template <typename P>
void run_on(const at::Device& device, const P& p) {
  if (device.is_cuda()) {
#ifdef MOEQ_WITH_CUDA
    c10::cuda::CUDAGuard guard(device);
    fp4::cuda::launch(p, at::cuda::getCurrentCUDAStream(device.index()).stream());
#else
    MOEQ_FAIL("moeq was built without CUDA: cannot run on {}", device.str());
#endif
  } else {
    MOEQ_CHECK(device.is_cpu(), "unsupported device {}", device.str());
    fp4::cpu::run(p);
  }
}

inline uint8_t* bytes_of(const at::Tensor& t) {
  return static_cast<uint8_t*>(t.data_ptr());
}

inline Convention parse_convention(c10::string_view s) {
  if (s == "compressed_tensors" || s == "ct") {
    return Convention::kCompressedTensors;
  }
  if (s == "modelopt") {
    return Convention::kModelOpt;
  }
  MOEQ_FAIL("convention must be 'compressed_tensors' or 'modelopt', got '{}'", std::string(s));
}

}  // namespace moeq::kernels::fp4_ops

namespace moeq::kernels::fp4_ops {

// A GroupProblem to build from tensors: x is the real-valued tensor (the output of kDequantize).
struct GroupCall {
  fp4::Scheme scheme = fp4::Scheme::kNvfp4Ct;
  fp4::Mode mode = fp4::Mode::kFake;
  at::Tensor x;
  at::Tensor out;     // kFake / kFakeGiven
  at::Tensor codes;   // dense
  at::Tensor scales;  // dense
  Globals globals;    // NVFP4
  const char* what = "x";
  const char* scales_what = "scales";
};

inline void run_group(GroupCall& c) {
  fp4::GroupProblem p;
  p.scheme = c.scheme;
  p.mode = c.mode;
  p.dtype = dtype_of(c.x, c.what);
  p.x = layout_of(c.x, c.what);
  p.x_data = c.x.data_ptr();
  if (c.out.defined()) {
    p.out = layout_of(c.out, "out");
    p.out_data = c.out.data_ptr();
  }
  if (c.codes.defined()) {
    p.codes = bytes_of(c.codes);
  }
  if (c.scales.defined()) {
    p.scales = bytes_of(c.scales);
  }
  if (fp4::is_nvfp4(c.scheme)) {
    p.global = c.globals.values.data_ptr<float>();
    p.global_stride = c.globals.stride;
  }
  if (c.x.numel() == 0) {
    return;
  }
  StatusBuffer status(c.x.device());
  p.status = status.ptr();
  run_on(c.x.device(), p);
  const Status s = status.read();
  if (s.global != fp4::kNone) {
    const auto b = static_cast<int64_t>(s.global);
    MOEQ_FAIL("{}: the global scale {} of matrix {} must be finite and positive", c.what,
              value_at(c.globals.values, b % std::max<int64_t>(c.globals.values.numel(), 1)), b);
  }
  if (s.input != fp4::kNone) {
    const auto i = static_cast<int64_t>(s.input);
    MOEQ_FAIL("{} has a non-finite value {} at {} (shape {})", c.what, value_at(c.x, i),
              coords(i, c.x.sizes()), shape_str(c.x.sizes()));
  }
  if (s.scale != fp4::kNone) {
    const auto i = static_cast<int64_t>(s.scale);
    std::vector<int64_t> gshape(c.x.sizes().begin(), c.x.sizes().end());
    gshape.back() = p.groups();
    if (c.mode == fp4::Mode::kFake || c.mode == fp4::Mode::kQuantize) {
      MOEQ_FAIL(
          "{}: group {} has an amax at the top of the float range that rounds to E8M0 code 255 "
          "(NaN): MX cannot represent it",
          c.what, coords(i, gshape));
    }
    MOEQ_FAIL(
        "{}: the scale {} at {} cannot {} ({})", c.scales_what, value_at(c.scales, i),
        coords(i, gshape), c.mode == fp4::Mode::kDequantize ? "dequantize" : "quantize",
        c.mode == fp4::Mode::kDequantize ? "NaN, or E8M0 code 255" : "zero, NaN, or E8M0 code 255");
  }
}

// Raises on the status of an elementwise scale problem over `amax`.
inline void raise_scale_status(const Status& s,
                               const at::Tensor& amax,
                               const at::Tensor& global,
                               const char* what) {
  if (s.global != fp4::kNone) {
    const auto b = static_cast<int64_t>(s.global);
    MOEQ_FAIL("{}: the global value {} of matrix {} must be finite and positive", what,
              value_at(global.reshape({-1}), b % std::max<int64_t>(global.numel(), 1)), b);
  }
  if (s.input != fp4::kNone) {
    const auto i = static_cast<int64_t>(s.input);
    MOEQ_FAIL("{} has a value {} at {} that is not finite and non-negative", what,
              value_at(amax, i), coords(i, amax.sizes()));
  }
  if (s.scale != fp4::kNone) {
    const auto i = static_cast<int64_t>(s.scale);
    MOEQ_FAIL("{}: the amax {} at {} rounds to E8M0 code 255 (NaN): MX cannot represent it", what,
              value_at(amax, i), coords(i, amax.sizes()));
  }
}

inline void check_real(const at::Tensor& x, const char* what) {
  MOEQ_CHECK(x.defined(), "{} is undefined", what);
  dtype_of(x, what);
  MOEQ_CHECK(x.dim() >= 2, "{}: expected [..., rows, cols] with at least 2 dims, got shape {}",
             what, shape_str(x.sizes()));
  MOEQ_CHECK(x.device().is_cpu() || x.device().is_cuda(), "{}: unsupported device {}", what,
             x.device().str());
}

inline int64_t batch_of(const at::Tensor& x) {
  int64_t b = 1;
  for (int64_t d = 0; d + 2 < x.dim(); ++d) {
    b *= x.size(d);
  }
  return b;
}

inline std::vector<int64_t> with_last(at::IntArrayRef sizes, int64_t last) {
  std::vector<int64_t> s(sizes.begin(), sizes.end());
  s.back() = last;
  return s;
}

inline int64_t div_up(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}

inline void check_even_cols(const at::Tensor& x, const char* what) {
  MOEQ_CHECK(x.size(-1) % 2 == 0,
             "{}: packed FP4 holds two values per byte and needs an even number of cols, got {} "
             "(shape {})",
             what, x.size(-1), shape_str(x.sizes()));
}

// A given scale tensor: dtype, shape [..., rows, groups] matching x, same device; made dense.
inline at::Tensor given_scales(const at::Tensor& scales,
                               const at::Tensor& x,
                               at::ScalarType dtype,
                               int64_t group,
                               const char* scales_what,
                               const char* what) {
  MOEQ_CHECK(scales.defined(), "{} is undefined", scales_what);
  MOEQ_CHECK(scales.scalar_type() == dtype, "{} must be {}, got {}", scales_what,
             c10::toString(dtype), c10::toString(scales.scalar_type()));
  const auto expect = with_last(x.sizes(), div_up(x.size(-1), group));
  MOEQ_CHECK(scales.sizes().vec() == expect,
             "{} must have shape {} (one per {} values of {} {}), got {}", scales_what,
             shape_str(expect), group, what, shape_str(x.sizes()), shape_str(scales.sizes()));
  check_device(scales, x, scales_what, what);
  return scales.contiguous();
}

inline fp4::Scheme nvfp4_scheme(Convention c) {
  return c == Convention::kModelOpt ? fp4::Scheme::kNvfp4Mo : fp4::Scheme::kNvfp4Ct;
}

}  // namespace moeq::kernels::fp4_ops
