#include "ops/common.h"

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <optional>

#ifdef MOEQ_WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#endif

namespace moeq::kernels::detail {

std::string shape_str(at::IntArrayRef sizes) {
  return fmt::format("[{}]", fmt::join(sizes, ", "));
}

DType dtype_of(const at::Tensor& t, const char* op, const char* name) {
  switch (t.scalar_type()) {
    case at::kFloat:
      return DType::kFloat32;
    case at::kBFloat16:
      return DType::kBFloat16;
    case at::kHalf:
      return DType::kFloat16;
    case at::kChar:
      return DType::kInt8;
    case at::kByte:
      return DType::kUInt8;
    case at::kInt:
      return DType::kInt32;
    case at::kFloat8_e4m3fn:
      return DType::kFloat8E4M3;
    case at::kFloat8_e5m2:
      return DType::kFloat8E5M2;
    default:
      MOEQ_FAIL("{}: {} has unsupported dtype {}", op, name, c10::toString(t.scalar_type()));
  }
}

void check_float_dtype(at::ScalarType t, const char* op, const char* name) {
  MOEQ_CHECK(t == at::kFloat || t == at::kBFloat16 || t == at::kHalf,
             "{}: {} must be float32, bfloat16 or float16, got {}", op, name, c10::toString(t));
}

void check_float(const at::Tensor& t, const char* op, const char* name) {
  check_float_dtype(t.scalar_type(), op, name);
}

QuantKind fp8_kind(at::ScalarType t, const char* op, const char* name) {
  if (t == at::kFloat8_e4m3fn) {
    return QuantKind::kFp8E4M3;
  }
  MOEQ_CHECK(t == at::kFloat8_e5m2, "{}: {} must be float8_e4m3fn or float8_e5m2, got {}", op, name,
             c10::toString(t));
  return QuantKind::kFp8E5M2;
}

namespace {

// [batch, rows, cols] when the leading dims collapse into one batch dim.
std::optional<View3> try_view3(const at::Tensor& t) {
  const int64_t nd = t.dim();
  View3 v;
  v.rows = t.size(nd - 2);
  v.cols = t.size(nd - 1);
  v.sr = t.stride(nd - 2);
  v.sc = t.stride(nd - 1);
  v.batch = 1;
  v.sb = v.rows * v.cols;
  bool first = true;
  int64_t expected = 0;
  for (int64_t d = nd - 3; d >= 0; --d) {
    if (t.size(d) == 1) {
      continue;
    }
    if (first) {
      v.sb = t.stride(d);
      first = false;
    } else if (t.stride(d) != expected) {
      return std::nullopt;
    }
    expected = t.stride(d) * t.size(d);
    v.batch *= t.size(d);
  }
  return v;
}

}  // namespace

View3 view3(const at::Tensor& t, const char* op, const char* name) {
  MOEQ_CHECK(t.dim() >= 2, "{}: {} must have at least 2 dims [..., rows, cols], got shape {}", op,
             name, shape_str(t.sizes()));
  const std::optional<View3> v = try_view3(t);
  MOEQ_CHECK(
      v.has_value(),
      "{}: the leading dims of {} (shape {}, strides {}) do not collapse into one batch dim; "
      "pass a view whose leading dims are contiguous",
      op, name, shape_str(t.sizes()), shape_str(t.strides()));
  return *v;
}

BlockShape block_from_list(at::IntArrayRef block, const char* op) {
  MOEQ_CHECK(block.size() == 2, "{}: block must be [rows, cols], got {}", op, shape_str(block));
  return {block[0], block[1]};
}

Block2 resolve_block(BlockShape block, int64_t rows, int64_t cols, const char* op) {
  MOEQ_CHECK(block.rows >= 0 && block.cols >= 0,
             "{}: block extents must be >= 0 (0: the whole extent), got [{}, {}]", op, block.rows,
             block.cols);
  Block2 b;
  b.rows = block.rows == 0 ? std::max<int64_t>(rows, 1) : block.rows;
  b.cols = block.cols == 0 ? std::max<int64_t>(cols, 1) : block.cols;
  return b;
}

std::vector<int64_t> grid_shape(const at::Tensor& x, Block2 block) {
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape[shape.size() - 2] = ceil_div(shape[shape.size() - 2], block.rows);
  shape[shape.size() - 1] = ceil_div(shape[shape.size() - 1], block.cols);
  return shape;
}

GridOperand grid_operand(
    const at::Tensor& g, const at::Tensor& x, Block2 block, const char* op, const char* name) {
  const std::vector<int64_t> want = grid_shape(x, block);
  const int64_t nd = x.dim();
  const int64_t pad = nd - g.dim();
  bool ok = g.dim() >= 1 && pad >= 0;
  bool shared = true;  // leading dims all 1: one grid for the whole batch
  bool same = true;    // leading dims equal x's
  for (int64_t d = 0; ok && d < nd; ++d) {
    const int64_t have = d < pad ? 1 : g.size(d - pad);
    if (d >= nd - 2) {
      ok = have == want[d];
    } else {
      shared &= have == 1;
      same &= have == want[d];
    }
  }
  MOEQ_CHECK(ok && (shared || same),
             "{}: {} has shape {}, but x of shape {} with block [{}, {}] needs the block grid {} "
             "(or its last two dims, shared by all of x's leading dims)",
             op, name, shape_str(g.sizes()), shape_str(x.sizes()), block.rows, block.cols,
             shape_str(want));
  GridOperand out;
  if (shared) {
    out.tensor = g.reshape({want[nd - 2], want[nd - 1]});  // drops size-1 dims: a view
    out.strides = {0, out.tensor.stride(0), out.tensor.stride(1)};
    return out;
  }
  out.tensor = g.view(want);
  std::optional<View3> v = try_view3(out.tensor);
  if (!v) {
    out.tensor = out.tensor.contiguous();  // a small grid whose leading dims do not collapse
    v = try_view3(out.tensor);
  }
  out.strides = {v->sb, v->sr, v->sc};
  return out;
}

at::Tensor empty_grid(const at::Tensor& x, Block2 block, at::ScalarType dtype) {
  std::vector<int64_t> shape = grid_shape(x, block);
  const auto opts = x.options().dtype(dtype);
  const int64_t nd = x.dim();
  if (x.stride(nd - 2) < x.stride(nd - 1) && x.size(nd - 2) > 1) {
    std::swap(shape[nd - 2], shape[nd - 1]);
    return at::empty(shape, opts).transpose(-1, -2);
  }
  return at::empty(shape, opts);
}

at::Tensor dense(const at::Tensor& t) {
  return t.is_non_overlapping_and_dense() ? t : t.contiguous();
}

void check_same_device(const at::Tensor& x,
                       const at::Tensor& other,
                       const char* op,
                       const char* name) {
  MOEQ_CHECK(other.device() == x.device(), "{}: {} is on {} but x is on {}", op, name,
             other.device().str(), x.device().str());
}

void check_int_range(int64_t qmin, int64_t qmax, const char* op) {
  MOEQ_CHECK(qmin < qmax && qmin >= -128 && qmax <= 127,
             "{}: integer range [{}, {}] must satisfy -128 <= qmin < qmax <= 127 (int8 codes)", op,
             qmin, qmax);
}

void check_num_bits(int64_t num_bits, const char* op) {
  MOEQ_CHECK(num_bits >= 1 && num_bits <= 8, "{}: num_bits must be in 1..8, got {}", op, num_bits);
}

void check_device_supported(const at::Tensor& t, const char* op) {
#ifdef MOEQ_WITH_CUDA
  MOEQ_CHECK(t.is_cpu() || t.is_cuda(), "{}: tensors on {} are not supported (CPU or CUDA)", op,
             t.device().str());
#else
  MOEQ_CHECK(t.is_cpu(), "{}: tensors on {} are not supported (this build has CPU kernels only)",
             op, t.device().str());
#endif
}

#ifdef MOEQ_WITH_CUDA
cudaStream_t current_stream(const at::Tensor& t) {
  return at::cuda::getCurrentCUDAStream(t.device().index()).stream();
}
#endif

}  // namespace moeq::kernels::detail
