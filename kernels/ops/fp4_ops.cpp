// Op layer of NVFP4 and FP4 packing: validates inputs, builds the problem, runs it on the tensor's
// device (ops/fp4_op_util.h) and registers the torch ops.
#include <torch/library.h>

#include <string>

#include "ops/fp4_op_util.h"

namespace moeq::kernels {

using fp4_ops::GroupCall;
using fp4_ops::shape_str;

using namespace fp4_ops;  // NOLINT(google-build-using-namespace)

at::Tensor nvfp4_global_scale(const at::Tensor& amax, Convention convention) {
  MOEQ_CHECK(amax.defined(), "amax is undefined");
  fp4::GlobalScaleProblem p;
  p.modelopt = convention == Convention::kModelOpt;
  p.dtype = dtype_of(amax, "amax");
  const at::Tensor a = amax.contiguous();
  at::Tensor out = at::empty(amax.dim() == 0 ? at::IntArrayRef{1} : amax.sizes(),
                             amax.options().dtype(at::kFloat));
  p.amax = a.data_ptr();
  p.count = a.numel();
  p.out = out.data_ptr<float>();
  if (p.count == 0) {
    return out;
  }
  StatusBuffer status(a.device());
  p.status = status.ptr();
  run_on(a.device(), p);
  raise_scale_status(status.read(), a, a, "amax");
  return out;
}

namespace {

at::Tensor run_block_scale(const at::Tensor& block_amax,
                           const at::Tensor& global,
                           fp4::ScaleRule rule,
                           const char* what) {
  MOEQ_CHECK(block_amax.defined(), "{} is undefined", what);
  const fp4::DType dt = dtype_of(block_amax, what);
  const int64_t per_batch =
      block_amax.dim() >= 2 ? block_amax.size(-1) * block_amax.size(-2) : block_amax.numel();
  const int64_t batch = per_batch > 0 ? block_amax.numel() / per_batch : 1;
  const Globals g = globals_for(global, batch, block_amax, what);
  const at::Tensor a = block_amax.contiguous();
  at::Tensor out = at::empty(block_amax.sizes(), block_amax.options().dtype(at::kFloat8_e4m3fn));
  fp4::ScaleProblem p;
  p.rule = rule;
  p.dtype = dt;
  p.amax = a.data_ptr();
  p.count = a.numel();
  p.per_batch = per_batch > 0 ? per_batch : 1;
  p.global = g.values.data_ptr<float>();
  p.global_stride = g.stride;
  p.out = bytes_of(out);
  if (p.count == 0) {
    return out;
  }
  StatusBuffer status(a.device());
  p.status = status.ptr();
  run_on(a.device(), p);
  raise_scale_status(status.read(), a, g.values, what);
  return out;
}

}  // namespace

at::Tensor nvfp4_block_scale(const at::Tensor& block_amax,
                             const at::Tensor& global,
                             Convention convention) {
  return run_block_scale(
      block_amax, global,
      convention == Convention::kModelOpt ? fp4::ScaleRule::kNvfp4Mo : fp4::ScaleRule::kNvfp4Ct,
      "block_amax");
}

at::Tensor nvfp4_block_scale_static(const at::Tensor& block_amax, const at::Tensor& global_amax) {
  return run_block_scale(block_amax, global_amax, fp4::ScaleRule::kNvfp4MoStatic, "block_amax");
}

at::Tensor fake_quant_nvfp4(const at::Tensor& x,
                            const at::Tensor& global,
                            Convention convention,
                            const char* what) {
  check_real(x, what);
  GroupCall c;
  c.scheme = nvfp4_scheme(convention);
  c.mode = fp4::Mode::kFake;
  c.x = x;
  c.out = at::empty_like(x);
  c.globals = globals_for(global, batch_of(x), x, what);
  c.what = what;
  run_group(c);
  return c.out;
}

std::tuple<at::Tensor, at::Tensor> quantize_nvfp4(const at::Tensor& x,
                                                  const at::Tensor& global,
                                                  Convention convention,
                                                  const char* what) {
  check_real(x, what);
  check_even_cols(x, what);
  GroupCall c;
  c.scheme = nvfp4_scheme(convention);
  c.mode = fp4::Mode::kQuantize;
  c.x = x;
  c.codes = at::empty(with_last(x.sizes(), x.size(-1) / 2), x.options().dtype(at::kByte));
  c.scales = at::empty(with_last(x.sizes(), div_up(x.size(-1), kNvfp4GroupSize)),
                       x.options().dtype(at::kFloat8_e4m3fn));
  c.globals = globals_for(global, batch_of(x), x, what);
  c.what = what;
  run_group(c);
  return {c.codes, c.scales};
}

at::Tensor fake_quant_nvfp4_with_scales(const at::Tensor& x,
                                        const at::Tensor& block_scale,
                                        const at::Tensor& global,
                                        Convention convention,
                                        const char* what) {
  check_real(x, what);
  GroupCall c;
  c.scheme = nvfp4_scheme(convention);
  c.mode = fp4::Mode::kFakeGiven;
  c.x = x;
  c.out = at::empty_like(x);
  c.scales = given_scales(block_scale, x, at::kFloat8_e4m3fn, kNvfp4GroupSize, "block_scale", what);
  c.globals = globals_for(global, batch_of(x), x, what);
  c.what = what;
  c.scales_what = "block_scale";
  run_group(c);
  return c.out;
}

at::Tensor quantize_nvfp4_with_scales(const at::Tensor& x,
                                      const at::Tensor& block_scale,
                                      const at::Tensor& global,
                                      Convention convention,
                                      const char* what) {
  check_real(x, what);
  check_even_cols(x, what);
  GroupCall c;
  c.scheme = nvfp4_scheme(convention);
  c.mode = fp4::Mode::kQuantizeGiven;
  c.x = x;
  c.codes = at::empty(with_last(x.sizes(), x.size(-1) / 2), x.options().dtype(at::kByte));
  c.scales = given_scales(block_scale, x, at::kFloat8_e4m3fn, kNvfp4GroupSize, "block_scale", what);
  c.globals = globals_for(global, batch_of(x), x, what);
  c.what = what;
  c.scales_what = "block_scale";
  run_group(c);
  return c.codes;
}

at::Tensor dequantize_nvfp4(const at::Tensor& packed,
                            const at::Tensor& block_scale,
                            const at::Tensor& global,
                            at::ScalarType out_dtype,
                            Convention convention) {
  MOEQ_CHECK(packed.defined(), "packed is undefined");
  MOEQ_CHECK(packed.scalar_type() == at::kByte, "packed must be uint8, got {}",
             c10::toString(packed.scalar_type()));
  MOEQ_CHECK(packed.dim() >= 2, "packed: expected [..., rows, cols / 2], got shape {}",
             shape_str(packed.sizes()));
  out_dtype_of(out_dtype);
  at::Tensor out =
      at::empty(with_last(packed.sizes(), packed.size(-1) * 2), packed.options().dtype(out_dtype));
  GroupCall c;
  c.scheme = nvfp4_scheme(convention);
  c.mode = fp4::Mode::kDequantize;
  c.x = out;
  c.codes = packed.contiguous();
  c.scales = given_scales(block_scale, out, at::kFloat8_e4m3fn, kNvfp4GroupSize, "block_scale",
                          "the unpacked tensor");
  c.globals = globals_for(global, batch_of(out), packed, "packed");
  c.what = "packed";
  c.scales_what = "block_scale";
  run_group(c);
  return out;
}

std::tuple<at::Tensor, at::Tensor> nvfp4_fp8_scale_sweep(const at::Tensor& x,
                                                         const at::Tensor& global,
                                                         Convention convention,
                                                         const char* what) {
  check_real(x, what);
  const auto gshape = with_last(x.sizes(), div_up(x.size(-1), kNvfp4GroupSize));
  at::Tensor scales = at::empty(gshape, x.options().dtype(at::kFloat8_e4m3fn));
  at::Tensor amax = at::empty(gshape, x.options().dtype(at::kFloat));
  const Globals g = globals_for(global, batch_of(x), x, what);
  fp4::SweepProblem p;
  p.modelopt = convention == Convention::kModelOpt;
  p.dtype = dtype_of(x, what);
  p.x = layout_of(x, what);
  p.x_data = x.data_ptr();
  p.global = g.values.data_ptr<float>();
  p.global_stride = g.stride;
  p.scales = bytes_of(scales);
  p.amax = amax.data_ptr<float>();
  if (x.numel() == 0) {
    return {scales, amax};
  }
  StatusBuffer status(x.device());
  p.status = status.ptr();
  run_on(x.device(), p);
  const fp4::Status s = status.read();
  if (s.global != fp4::kNone) {
    const auto b = static_cast<int64_t>(s.global);
    MOEQ_FAIL("{}: the global {} {} of matrix {} must be finite and {}", what,
              p.modelopt ? "amax" : "scale", value_at(g.values, b % g.values.numel()), b,
              p.modelopt ? "non-negative" : "positive");
  }
  if (s.input != fp4::kNone) {
    const auto i = static_cast<int64_t>(s.input);
    MOEQ_FAIL("{} has a non-finite value {} at {} (shape {})", what, value_at(x, i),
              coords(i, x.sizes()), shape_str(x.sizes()));
  }
  return {scales, amax};
}

namespace {

at::Tensor run_pack(const at::Tensor& in, bool unpack) {
  const char* what = unpack ? "packed" : "codes";
  MOEQ_CHECK(in.defined(), "{} is undefined", what);
  MOEQ_CHECK(in.scalar_type() == at::kByte, "{} must be uint8, got {}", what,
             c10::toString(in.scalar_type()));
  MOEQ_CHECK(in.dim() >= 1, "{} must have at least 1 dim", what);
  MOEQ_CHECK(in.device().is_cpu() || in.device().is_cuda(), "{}: unsupported device {}", what,
             in.device().str());
  if (!unpack) {
    MOEQ_CHECK(in.size(-1) % 2 == 0,
               "codes: packing two per byte needs an even last dim, got {} (shape {})", in.size(-1),
               shape_str(in.sizes()));
  }
  const at::Tensor in2 = in.dim() == 1 ? in.unsqueeze(0) : in;
  const int64_t cols = unpack ? in.size(-1) * 2 : in.size(-1) / 2;
  at::Tensor out = at::empty(with_last(in.sizes(), cols), in.options());
  fp4::PackProblem p;
  p.unpack = unpack;
  p.in = layout_of(in2, what);
  p.in_data = bytes_of(in2);
  p.out = bytes_of(out);
  if (in.numel() == 0) {
    return out;
  }
  StatusBuffer status(in.device());
  p.status = status.ptr();
  run_on(in.device(), p);
  const fp4::Status s = status.read();
  if (s.input != fp4::kNone) {
    const auto i = static_cast<int64_t>(s.input);
    MOEQ_FAIL("codes: {} at {} is not an E2M1 code (0..15)", value_at(in, i),
              coords(i, in.sizes()));
  }
  return out;
}

}  // namespace

at::Tensor pack_fp4(const at::Tensor& codes) {
  return run_pack(codes, false);
}
at::Tensor unpack_fp4(const at::Tensor& packed) {
  return run_pack(packed, true);
}

// ---- torch ops
// -----------------------------------------------------------------------------------

namespace {

at::Tensor op_nvfp4_global_scale(const at::Tensor& amax, c10::string_view convention) {
  return nvfp4_global_scale(amax, parse_convention(convention));
}
at::Tensor op_nvfp4_block_scale(const at::Tensor& block_amax,
                                const at::Tensor& global,
                                c10::string_view convention) {
  return nvfp4_block_scale(block_amax, global, parse_convention(convention));
}
at::Tensor op_fake_quant_nvfp4(const at::Tensor& x,
                               const at::Tensor& global,
                               c10::string_view convention,
                               c10::string_view what) {
  const std::string w(what);
  return fake_quant_nvfp4(x, global, parse_convention(convention), w.c_str());
}
std::tuple<at::Tensor, at::Tensor> op_quantize_nvfp4(const at::Tensor& x,
                                                     const at::Tensor& global,
                                                     c10::string_view convention,
                                                     c10::string_view what) {
  const std::string w(what);
  return quantize_nvfp4(x, global, parse_convention(convention), w.c_str());
}
at::Tensor op_fake_quant_nvfp4_with_scales(const at::Tensor& x,
                                           const at::Tensor& block_scale,
                                           const at::Tensor& global,
                                           c10::string_view convention,
                                           c10::string_view what) {
  const std::string w(what);
  return fake_quant_nvfp4_with_scales(x, block_scale, global, parse_convention(convention),
                                      w.c_str());
}
at::Tensor op_quantize_nvfp4_with_scales(const at::Tensor& x,
                                         const at::Tensor& block_scale,
                                         const at::Tensor& global,
                                         c10::string_view convention,
                                         c10::string_view what) {
  const std::string w(what);
  return quantize_nvfp4_with_scales(x, block_scale, global, parse_convention(convention),
                                    w.c_str());
}
at::Tensor op_dequantize_nvfp4(const at::Tensor& packed,
                               const at::Tensor& block_scale,
                               const at::Tensor& global,
                               at::ScalarType out_dtype,
                               c10::string_view convention) {
  return dequantize_nvfp4(packed, block_scale, global, out_dtype, parse_convention(convention));
}
std::tuple<at::Tensor, at::Tensor> op_nvfp4_fp8_scale_sweep(const at::Tensor& x,
                                                            const at::Tensor& global,
                                                            c10::string_view convention,
                                                            c10::string_view what) {
  const std::string w(what);
  return nvfp4_fp8_scale_sweep(x, global, parse_convention(convention), w.c_str());
}

}  // namespace

void fp4_impl_all(torch::Library& m) {
  m.impl("nvfp4_global_scale", &op_nvfp4_global_scale);
  m.impl("nvfp4_block_scale", &op_nvfp4_block_scale);
  m.impl("nvfp4_block_scale_static", &nvfp4_block_scale_static);
  m.impl("fake_quant_nvfp4", &op_fake_quant_nvfp4);
  m.impl("quantize_nvfp4", &op_quantize_nvfp4);
  m.impl("fake_quant_nvfp4_with_scales", &op_fake_quant_nvfp4_with_scales);
  m.impl("quantize_nvfp4_with_scales", &op_quantize_nvfp4_with_scales);
  m.impl("dequantize_nvfp4", &op_dequantize_nvfp4);
  m.impl("nvfp4_fp8_scale_sweep", &op_nvfp4_fp8_scale_sweep);
  m.impl("pack_fp4", &pack_fp4);
  m.impl("unpack_fp4", &unpack_fp4);
}

}  // namespace moeq::kernels

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def("nvfp4_global_scale(Tensor amax, str convention=\"compressed_tensors\") -> Tensor");
  m.def(
      "nvfp4_block_scale(Tensor block_amax, Tensor global_scale, "
      "str convention=\"compressed_tensors\") -> Tensor");
  m.def("nvfp4_block_scale_static(Tensor block_amax, Tensor global_amax) -> Tensor");
  m.def(
      "fake_quant_nvfp4(Tensor x, Tensor global_scale, str convention=\"compressed_tensors\", "
      "str what=\"x\") -> Tensor");
  m.def(
      "quantize_nvfp4(Tensor x, Tensor global_scale, str convention=\"compressed_tensors\", "
      "str what=\"x\") -> (Tensor, Tensor)");
  m.def(
      "fake_quant_nvfp4_with_scales(Tensor x, Tensor block_scale, Tensor global_scale, "
      "str convention=\"compressed_tensors\", str what=\"x\") -> Tensor");
  m.def(
      "quantize_nvfp4_with_scales(Tensor x, Tensor block_scale, Tensor global_scale, "
      "str convention=\"compressed_tensors\", str what=\"x\") -> Tensor");
  m.def(
      "dequantize_nvfp4(Tensor packed, Tensor block_scale, Tensor global_scale, "
      "ScalarType out_dtype, str convention=\"compressed_tensors\") -> Tensor");
  m.def(
      "nvfp4_fp8_scale_sweep(Tensor x, Tensor global_scale, "
      "str convention=\"compressed_tensors\", str what=\"x\") -> (Tensor, Tensor)");
  m.def("pack_fp4(Tensor codes) -> Tensor");
  m.def("unpack_fp4(Tensor packed) -> Tensor");
}

TORCH_LIBRARY_IMPL(moeq, CPU, m) {
  moeq::kernels::fp4_impl_all(m);
}

#ifdef MOEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(moeq, CUDA, m) {
  moeq::kernels::fp4_impl_all(m);
}
#endif
