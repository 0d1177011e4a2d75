// block_amax / block_minmax: the statistics observers and real quantizers build on.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "cpu/quant_cpu.h"
#include "moeq/kernels/reduce.h"
#include "ops/common.h"

#ifdef MOEQ_WITH_CUDA
#include "cuda/quant_cuda.cuh"
#endif

namespace moeq::kernels {
namespace {

using namespace detail;

GridStrides strides_of(const at::Tensor& grid, const char* op) {
  const View3 v = view3(grid, op, "grid");
  return {v.sb, v.sr, v.sc};
}

// Fills the requested grids; a NaN or Inf in x is an error naming `what`.
void run_reduce(const char* op,
                const at::Tensor& x,
                BlockShape block,
                const char* what,
                at::Tensor* amax,
                at::Tensor* min,
                at::Tensor* max) {
  check_device_supported(x, op);
  check_float(x, op, "x");
  ReduceArgs a;
  a.in = view3(x, op, "x");
  a.block = resolve_block(block, a.in.rows, a.in.cols, op);
  if (amax) {
    *amax = empty_grid(x, a.block, at::kFloat);
    a.amax = amax->mutable_data_ptr<float>();
    a.amax_strides = strides_of(*amax, op);
  }
  if (min) {
    *min = empty_grid(x, a.block, at::kFloat);
    *max = empty_grid(x, a.block, at::kFloat);
    a.min = min->mutable_data_ptr<float>();
    a.max = max->mutable_data_ptr<float>();
    a.minmax_strides = strides_of(*min, op);
  }
  if (x.numel() == 0) {
    return;
  }
  const DType dtype = dtype_of(x, op, "x");
  bool finite = true;
#ifdef MOEQ_WITH_CUDA
  if (x.is_cuda()) {
    const c10::cuda::CUDAGuard guard(x.device());
    if (amax) {
      amax->zero_();
    }
    if (min) {
      min->fill_(INFINITY);
      max->fill_(-INFINITY);
    }
    at::Tensor flag = at::zeros({1}, x.options().dtype(at::kInt));
    cuda::block_reduce(x.const_data_ptr(), dtype, a, flag.mutable_data_ptr<int>(),
                       current_stream(x));
    finite = flag.item<int>() == 0;
  }
#endif
  if (x.is_cpu()) {
    finite = cpu::block_reduce(x.const_data_ptr(), dtype, a);
  }
  MOEQ_CHECK(finite,
             "{}: {} contains NaN or Inf values; a quantization scale computed from it would not "
             "be finite",
             op, what);
}

}  // namespace

at::Tensor block_amax(const at::Tensor& x, BlockShape block, const char* what) {
  at::Tensor amax;
  run_reduce("block_amax", x, block, what, &amax, nullptr, nullptr);
  return amax;
}

std::tuple<at::Tensor, at::Tensor> block_minmax(const at::Tensor& x,
                                                BlockShape block,
                                                const char* what) {
  at::Tensor min, max;
  run_reduce("block_minmax", x, block, what, nullptr, &min, &max);
  return {min, max};
}

}  // namespace moeq::kernels

namespace {

using moeq::kernels::detail::block_from_list;

at::Tensor block_amax_op(const at::Tensor& x, at::IntArrayRef block, std::string_view what) {
  return moeq::kernels::block_amax(x, block_from_list(block, "block_amax"),
                                   std::string(what).c_str());
}

std::tuple<at::Tensor, at::Tensor> block_minmax_op(const at::Tensor& x,
                                                   at::IntArrayRef block,
                                                   std::string_view what) {
  return moeq::kernels::block_minmax(x, block_from_list(block, "block_minmax"),
                                     std::string(what).c_str());
}

void register_impls(torch::Library& m) {
  m.impl("block_amax", &block_amax_op);
  m.impl("block_minmax", &block_minmax_op);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def("block_amax(Tensor x, int[] block, str what='tensor') -> Tensor");
  m.def("block_minmax(Tensor x, int[] block, str what='tensor') -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(moeq, CPU, m) {
  register_impls(m);
}
#ifdef MOEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(moeq, CUDA, m) {
  register_impls(m);
}
#endif
