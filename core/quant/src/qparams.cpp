#include "moeq/quant/qparams.h"

#include <ATen/ATen.h>

#include <limits>

#include "moeq/core/error.h"

namespace moeq::quant {

namespace {

bool is_mx_args(const QuantArgs& args) {
  // mxfp_utils.should_generate_mx_scales
  return args.type == QuantType::kFloat && (args.num_bits == 4 || args.num_bits == 8) &&
         args.group_size == 32 && args.scale_dtype == at::kByte;
}

// mxfp_utils.round_to_power_2: adds half of the element type's dropped mantissa, then keeps the
// sign and exponent bits.
at::Tensor round_to_power_2(const at::Tensor& x, int elem_mantissa) {
  int mantissa = 0;
  int exponent = 0;
  at::ScalarType uint_dtype = at::kUInt16;
  switch (x.scalar_type()) {
    case at::kBFloat16:
      mantissa = 7, exponent = 8;
      break;
    case at::kHalf:
      mantissa = 10, exponent = 5;
      break;
    case at::kFloat:
      mantissa = 23, exponent = 8, uint_dtype = at::kUInt32;
      break;
    default:
      MOEQ_FAIL("MX scales from {} statistics are not supported (bfloat16, float16 or float32)",
                c10::toString(x.scalar_type()));
  }
  const at::Tensor bits = x.contiguous().view(uint_dtype).to(at::kInt);
  const int64_t add = int64_t{1} << (mantissa - elem_mantissa - 1);
  const int64_t mask = ((int64_t{1} << (exponent + 1)) - 1) << mantissa;
  const at::Tensor rounded = at::bitwise_and(bits + add, mask);
  if (uint_dtype == at::kUInt16) {
    return rounded.to(at::kUInt16).view(x.scalar_type());
  }
  return rounded.view(x.scalar_type());
}

// mxfp_utils.generate_mx_scales: biased E8M0 exponents, in the dtype of x.
at::Tensor generate_mx_scales(const at::Tensor& max_val_pos, int num_bits) {
  const int offset = num_bits == 8 ? 8 : 2;  // floor(log2(448)), floor(log2(6))
  const at::Tensor power_2 = round_to_power_2(max_val_pos, /*elem_mantissa=*/1);
  return 127 + at::floor(at::log2(power_2)) - offset;
}

// quant_args.round_to_quantized_type_dtype
at::Tensor round_to_dtype(const at::Tensor& t, at::ScalarType dtype, bool cast_back) {
  at::Tensor rounded;
  if (at::isFloatingType(dtype)) {
    double max = 0;
    AT_DISPATCH_FLOATING_TYPES_AND4(
        at::kHalf, at::kBFloat16, at::kFloat8_e4m3fn, at::kFloat8_e5m2, dtype, "finfo",
        [&] { max = static_cast<double>(std::numeric_limits<scalar_t>::max()); });
    rounded = at::clamp(t, -max, max).to(dtype);
  } else {
    double min = 0;
    double max = 0;
    AT_DISPATCH_INTEGRAL_TYPES(dtype, "iinfo", [&] {
      min = static_cast<double>(std::numeric_limits<scalar_t>::lowest());
      max = static_cast<double>(std::numeric_limits<scalar_t>::max());
    });
    rounded = at::round(at::clamp(t, min, max)).to(dtype);
  }
  return cast_back ? rounded.to(t.scalar_type()) : rounded;
}

// helpers._get_dtype_eps
double dtype_eps(at::ScalarType dtype) {
  if (dtype == at::kFloat8_e4m3fn) {
    return 0.125;
  }
  if (!at::isFloatingType(dtype)) {
    return 1.0;
  }
  double eps = 0;
  AT_DISPATCH_FLOATING_TYPES_AND3(at::kHalf, at::kBFloat16, at::kFloat8_e5m2, dtype, "eps", [&] {
    eps = static_cast<double>(std::numeric_limits<scalar_t>::epsilon());
  });
  return eps;
}

}  // namespace

at::ScalarType scale_param_dtype(at::ScalarType observed_dtype) {
  switch (observed_dtype) {
    case at::kHalf:
    case at::kBFloat16:
    case at::kFloat:
    case at::kDouble:
      return observed_dtype;
    default:
      return at::kHalf;
  }
}

std::pair<double, double> quant_range(const QuantArgs& args) {
  if (args.type == QuantType::kInt) {
    const double range = std::ldexp(1.0, args.num_bits);
    return {-range / 2, range / 2 - 1};
  }
  if (args.num_bits == 8) {
    return {-448.0, 448.0};
  }
  MOEQ_CHECK(args.num_bits == 4, "no quantization range for float num_bits {}", args.num_bits);
  return {-6.0, 6.0};
}

QParams calculate_qparams(const at::Tensor& min_in,
                          const at::Tensor& max_in,
                          const QuantArgs& args,
                          at::ScalarType observed_dtype,
                          const at::Tensor& global_scale) {
  at::Tensor min_vals = min_in.to(observed_dtype);
  at::Tensor max_vals = max_in.to(observed_dtype);
  // 0 must be representable
  min_vals = at::minimum(min_vals, at::zeros_like(min_vals));
  max_vals = at::maximum(max_vals, at::zeros_like(max_vals));

  const auto [qmin, qmax] = quant_range(args);
  const auto range_options = at::TensorOptions().dtype(at::kFloat).device(min_vals.device());
  const at::Tensor q_min = at::scalar_tensor(qmin, range_options);
  const at::Tensor q_max = at::scalar_tensor(qmax, range_options);
  const at::Tensor bit_range = q_max - q_min;

  at::Tensor scales;
  at::Tensor zero_points;
  if (args.symmetric) {
    const at::Tensor max_val_pos = at::maximum(at::abs(min_vals), at::abs(max_vals));
    if (is_mx_args(args)) {
      scales = generate_mx_scales(max_val_pos, args.num_bits);
    } else {
      scales = max_val_pos / (bit_range.to(max_val_pos.scalar_type()) / 2);
    }
    zero_points = at::zeros(scales.sizes(), min_vals.options());
  } else {
    scales = (max_vals - min_vals) / bit_range.to(max_vals.scalar_type());
    zero_points = at::clamp(q_min - (min_vals / scales), q_min, q_max);
  }
  if (global_scale.defined()) {
    scales = global_scale * scales;
  }
  if (args.scale_dtype) {
    scales = round_to_dtype(scales, *args.scale_dtype, /*cast_back=*/true);
  }
  if (is_mx_args(args)) {
    // maybe_convert_from_mx_exp: E8M0 exponent -> 2^(e - 127), back in the scale's dtype
    const at::Tensor exponent = (scales.to(at::kInt) - 127).to(at::kFloat);
    scales = at::pow(2.0, exponent).to(scales.scalar_type());
  }
  const double eps = dtype_eps(args.scale_dtype ? *args.scale_dtype : scales.scalar_type());
  scales = at::where(scales == 0, at::scalar_tensor(eps, scales.options()), scales);
  zero_points = round_to_dtype(zero_points, args.zero_point_dtype(), /*cast_back=*/false);
  if (scales.dim() == 0) {
    scales = scales.reshape({1});
    zero_points = zero_points.reshape({1});
  }
  QParams out;
  out.scale = scales;
  out.zero_point = zero_points;
  out.global_scale = global_scale;
  return out;
}

at::Tensor nvfp4_global_scale_from_amax(const at::Tensor& amax) {
  // generate_gparam(-amax, amax): 448.0 * 6.0 / max_val_pos, where python's float / tensor is
  // tensor.reciprocal() * float (torch.Tensor.__rdiv__).
  const at::Tensor max_val_pos = at::maximum(at::abs(amax), at::zeros_like(amax));
  double tiny = 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, amax.scalar_type(), "tiny", [&] {
    tiny = static_cast<double>(std::numeric_limits<scalar_t>::min());
  });
  const at::Tensor clamped = at::clamp_min(max_val_pos, tiny);
  const at::Tensor scale = at::reciprocal(clamped) * (448.0 * 6.0);
  return at::nan_to_num(scale, 1.0, 1.0, 1.0).to(at::kFloat);
}

}  // namespace moeq::quant
