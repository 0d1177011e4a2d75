// Op layer of MXFP4 / MXFP8: validates inputs, runs the problem on the tensor's device and
// registers the torch ops.
#include <torch/library.h>

#include <string>

#include "ops/fp4_op_util.h"

namespace moeq::kernels {

using namespace fp4_ops;  // NOLINT(google-build-using-namespace)

namespace {

fp4::Scheme mx_scheme(MxElement e, Convention c) {
  const bool mo = c == Convention::kModelOpt;
  if (e == MxElement::kFp4E2M1) {
    return mo ? fp4::Scheme::kMxfp4Mo : fp4::Scheme::kMxfp4Ct;
  }
  return mo ? fp4::Scheme::kMxfp8Mo : fp4::Scheme::kMxfp8Ct;
}

bool is_fp4(MxElement e) {
  return e == MxElement::kFp4E2M1;
}

// The codes tensor quantize_mx returns: packed uint8 [..., cols / 2] or float8_e4m3fn [..., cols].
at::Tensor make_codes(const at::Tensor& x, MxElement e) {
  if (is_fp4(e)) {
    return at::empty(with_last(x.sizes(), x.size(-1) / 2), x.options().dtype(at::kByte));
  }
  return at::empty(x.sizes(), x.options().dtype(at::kFloat8_e4m3fn));
}

at::Tensor make_scales(const at::Tensor& x) {
  return at::empty(with_last(x.sizes(), div_up(x.size(-1), kMxGroupSize)),
                   x.options().dtype(at::kByte));
}

}  // namespace

at::Tensor mx_scale(const at::Tensor& block_amax, MxElement element, Convention convention) {
  MOEQ_CHECK(block_amax.defined(), "block_amax is undefined");
  fp4::ScaleProblem p;
  const bool mo = convention == Convention::kModelOpt;
  p.rule = is_fp4(element) ? (mo ? fp4::ScaleRule::kMxfp4Mo : fp4::ScaleRule::kMxfp4Ct)
                           : (mo ? fp4::ScaleRule::kMxfp8Mo : fp4::ScaleRule::kMxfp8Ct);
  p.dtype = dtype_of(block_amax, "block_amax");
  const at::Tensor a = block_amax.contiguous();
  at::Tensor out = at::empty(block_amax.sizes(), block_amax.options().dtype(at::kByte));
  p.amax = a.data_ptr();
  p.count = a.numel();
  p.out = bytes_of(out);
  if (p.count == 0) {
    return out;
  }
  StatusBuffer status(a.device());
  p.status = status.ptr();
  run_on(a.device(), p);
  raise_scale_status(status.read(), a, a, "block_amax");
  return out;
}

at::Tensor fake_quant_mx(const at::Tensor& x,
                         MxElement element,
                         Convention convention,
                         const char* what) {
  check_real(x, what);
  GroupCall c;
  c.scheme = mx_scheme(element, convention);
  c.mode = fp4::Mode::kFake;
  c.x = x;
  c.out = at::empty_like(x);
  c.what = what;
  run_group(c);
  return c.out;
}

std::tuple<at::Tensor, at::Tensor> quantize_mx(const at::Tensor& x,
                                               MxElement element,
                                               Convention convention,
                                               const char* what) {
  check_real(x, what);
  if (is_fp4(element)) {
    check_even_cols(x, what);
  }
  GroupCall c;
  c.scheme = mx_scheme(element, convention);
  c.mode = fp4::Mode::kQuantize;
  c.x = x;
  c.codes = make_codes(x, element);
  c.scales = make_scales(x);
  c.what = what;
  run_group(c);
  return {c.codes, c.scales};
}

at::Tensor fake_quant_mx_with_scales(const at::Tensor& x,
                                     const at::Tensor& scales,
                                     MxElement element,
                                     Convention convention,
                                     const char* what) {
  check_real(x, what);
  GroupCall c;
  c.scheme = mx_scheme(element, convention);
  c.mode = fp4::Mode::kFakeGiven;
  c.x = x;
  c.out = at::empty_like(x);
  c.scales = given_scales(scales, x, at::kByte, kMxGroupSize, "scales", what);
  c.what = what;
  run_group(c);
  return c.out;
}

at::Tensor quantize_mx_with_scales(const at::Tensor& x,
                                   const at::Tensor& scales,
                                   MxElement element,
                                   Convention convention,
                                   const char* what) {
  check_real(x, what);
  if (is_fp4(element)) {
    check_even_cols(x, what);
  }
  GroupCall c;
  c.scheme = mx_scheme(element, convention);
  c.mode = fp4::Mode::kQuantizeGiven;
  c.x = x;
  c.codes = make_codes(x, element);
  c.scales = given_scales(scales, x, at::kByte, kMxGroupSize, "scales", what);
  c.what = what;
  run_group(c);
  return c.codes;
}

at::Tensor dequantize_mx(const at::Tensor& data,
                         const at::Tensor& scales,
                         MxElement element,
                         at::ScalarType out_dtype,
                         Convention convention) {
  MOEQ_CHECK(data.defined(), "data is undefined");
  const at::ScalarType want = is_fp4(element) ? at::kByte : at::kFloat8_e4m3fn;
  MOEQ_CHECK(data.scalar_type() == want, "data must be {} for {}, got {}", c10::toString(want),
             is_fp4(element) ? "MXFP4 (packed E2M1)" : "MXFP8", c10::toString(data.scalar_type()));
  MOEQ_CHECK(data.dim() >= 2, "data: expected [..., rows, cols{}], got shape {}",
             is_fp4(element) ? " / 2" : "", shape_str(data.sizes()));
  out_dtype_of(out_dtype);
  const int64_t cols = is_fp4(element) ? data.size(-1) * 2 : data.size(-1);
  at::Tensor out = at::empty(with_last(data.sizes(), cols), data.options().dtype(out_dtype));
  GroupCall c;
  c.scheme = mx_scheme(element, convention);
  c.mode = fp4::Mode::kDequantize;
  c.x = out;
  c.codes = data.contiguous();
  c.scales = given_scales(scales, out, at::kByte, kMxGroupSize, "scales", "the dequantized tensor");
  c.what = "data";
  run_group(c);
  return out;
}

// ---- torch ops
// -----------------------------------------------------------------------------------

namespace {

MxElement parse_element(c10::string_view s) {
  if (s == "fp4" || s == "e2m1") {
    return MxElement::kFp4E2M1;
  }
  if (s == "fp8" || s == "e4m3") {
    return MxElement::kFp8E4M3;
  }
  MOEQ_FAIL("element must be 'fp4' or 'fp8', got '{}'", std::string(s));
}

at::Tensor op_mx_scale(const at::Tensor& block_amax,
                       c10::string_view element,
                       c10::string_view convention) {
  return mx_scale(block_amax, parse_element(element), parse_convention(convention));
}
at::Tensor op_fake_quant_mx(const at::Tensor& x,
                            c10::string_view element,
                            c10::string_view convention,
                            c10::string_view what) {
  const std::string w(what);
  return fake_quant_mx(x, parse_element(element), parse_convention(convention), w.c_str());
}
std::tuple<at::Tensor, at::Tensor> op_quantize_mx(const at::Tensor& x,
                                                  c10::string_view element,
                                                  c10::string_view convention,
                                                  c10::string_view what) {
  const std::string w(what);
  return quantize_mx(x, parse_element(element), parse_convention(convention), w.c_str());
}
at::Tensor op_fake_quant_mx_with_scales(const at::Tensor& x,
                                        const at::Tensor& scales,
                                        c10::string_view element,
                                        c10::string_view convention,
                                        c10::string_view what) {
  const std::string w(what);
  return fake_quant_mx_with_scales(x, scales, parse_element(element), parse_convention(convention),
                                   w.c_str());
}
at::Tensor op_quantize_mx_with_scales(const at::Tensor& x,
                                      const at::Tensor& scales,
                                      c10::string_view element,
                                      c10::string_view convention,
                                      c10::string_view what) {
  const std::string w(what);
  return quantize_mx_with_scales(x, scales, parse_element(element), parse_convention(convention),
                                 w.c_str());
}
at::Tensor op_dequantize_mx(const at::Tensor& data,
                            const at::Tensor& scales,
                            c10::string_view element,
                            at::ScalarType out_dtype,
                            c10::string_view convention) {
  return dequantize_mx(data, scales, parse_element(element), out_dtype,
                       parse_convention(convention));
}

}  // namespace

void mx_impl_all(torch::Library& m) {
  m.impl("mx_scale", &op_mx_scale);
  m.impl("fake_quant_mx", &op_fake_quant_mx);
  m.impl("quantize_mx", &op_quantize_mx);
  m.impl("fake_quant_mx_with_scales", &op_fake_quant_mx_with_scales);
  m.impl("quantize_mx_with_scales", &op_quantize_mx_with_scales);
  m.impl("dequantize_mx", &op_dequantize_mx);
}

}  // namespace moeq::kernels

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def(
      "mx_scale(Tensor block_amax, str element=\"fp4\", str convention=\"compressed_tensors\") "
      "-> Tensor");
  m.def(
      "fake_quant_mx(Tensor x, str element=\"fp4\", str convention=\"compressed_tensors\", "
      "str what=\"x\") -> Tensor");
  m.def(
      "quantize_mx(Tensor x, str element=\"fp4\", str convention=\"compressed_tensors\", "
      "str what=\"x\") -> (Tensor, Tensor)");
  m.def(
      "fake_quant_mx_with_scales(Tensor x, Tensor scales, str element=\"fp4\", "
      "str convention=\"compressed_tensors\", str what=\"x\") -> Tensor");
  m.def(
      "quantize_mx_with_scales(Tensor x, Tensor scales, str element=\"fp4\", "
      "str convention=\"compressed_tensors\", str what=\"x\") -> Tensor");
  m.def(
      "dequantize_mx(Tensor data, Tensor scales, str element, ScalarType out_dtype, "
      "str convention=\"compressed_tensors\") -> Tensor");
}

TORCH_LIBRARY_IMPL(moeq, CPU, m) {
  moeq::kernels::mx_impl_all(m);
}

#ifdef MOEQ_WITH_CUDA
TORCH_LIBRARY_IMPL(moeq, CUDA, m) {
  moeq::kernels::mx_impl_all(m);
}
#endif
