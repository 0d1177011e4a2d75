// Op layer of the GPT-OSS MXFP4 source dequantization (`*_blocks` + `*_scales`).
#include <torch/library.h>

#include "moeq/kernels/source_dequant.h"
#include "ops/fp4_op_util.h"

namespace moeq::kernels {

using namespace fp4_ops;  // NOLINT(google-build-using-namespace)

at::Tensor dequantize_mxfp4_source(const at::Tensor& blocks,
                                   const at::Tensor& scales,
                                   at::ScalarType out_dtype) {
  MOEQ_CHECK(blocks.defined() && scales.defined(), "blocks and scales must be defined");
  MOEQ_CHECK(blocks.scalar_type() == at::kByte, "blocks must be uint8, got {}",
             c10::toString(blocks.scalar_type()));
  MOEQ_CHECK(scales.scalar_type() == at::kByte, "scales must be uint8 (E8M0), got {}",
             c10::toString(scales.scalar_type()));
  MOEQ_CHECK(blocks.dim() >= 2 && blocks.size(-1) == 16,
             "blocks must be [..., groups, 16] (32 E2M1 codes per group), got shape {}",
             shape_str(blocks.sizes()));
  const auto group_shape = blocks.sizes().slice(0, blocks.dim() - 1);
  MOEQ_CHECK(scales.sizes() == group_shape,
             "scales must have shape {} (blocks {} without its last dim), got {}",
             shape_str(group_shape), shape_str(blocks.sizes()), shape_str(scales.sizes()));
  check_device(scales, blocks, "scales", "blocks");
  MOEQ_CHECK(blocks.device().is_cpu() || blocks.device().is_cuda(), "blocks: unsupported device {}",
             blocks.device().str());
  fp4::SourceMxfp4Problem p;
  p.dtype = out_dtype_of(out_dtype);
  std::vector<int64_t> out_shape(group_shape.begin(), group_shape.end());
  out_shape.back() *= 32;
  at::Tensor out = at::empty(out_shape, blocks.options().dtype(out_dtype));
  const at::Tensor b = blocks.contiguous();
  const at::Tensor s = scales.contiguous();
  p.blocks = bytes_of(b);
  p.scales = bytes_of(s);
  p.rows = s.numel();
  p.out = out.data_ptr();
  if (p.rows == 0) {
    return out;
  }
  StatusBuffer status(blocks.device());
  p.status = status.ptr();
  run_on(blocks.device(), p);
  const fp4::Status st = status.read();
  if (st.scale != fp4::kNone) {
    const auto i = static_cast<int64_t>(st.scale);
    MOEQ_FAIL("scales: E8M0 code 255 (NaN) at {} (shape {})", coords(i, scales.sizes()),
              shape_str(scales.sizes()));
  }
  return out;
}

}  // namespace moeq::kernels

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def("dequantize_mxfp4_source(Tensor blocks, Tensor scales, ScalarType out_dtype) -> Tensor");
}

TORCH_LIBRARY_IMPL(moeq, CPU, m) {
  m.impl("dequantize_mxfp4_source", &moeq::kernels::dequantize_mxfp4_source);
}

#ifdef MOEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(moeq, CUDA, m) {
  m.impl("dequantize_mxfp4_source", &moeq::kernels::dequantize_mxfp4_source);
}
#endif
