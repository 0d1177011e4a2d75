#include "reference.h"

#include <ATen/ATen.h>

#include "moeq/quant/qparams.h"

namespace moeq::quant::detail {

namespace {

// fp4_utils.cast_to_fp4 (the CPU version): the nearest E2M1 value, ties to the even mantissa
// (0.25 -> 0, 0.75 -> 1, 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4); sign kept, so a
// small negative value becomes -0.
at::Tensor cast_to_fp4(const at::Tensor& t) {
  const at::Tensor sign = at::sign(t);
  const at::Tensor a = at::abs(t);
  at::Tensor r = at::full_like(a, 6.0);
  r = at::where(a <= 5.0, 4.0, r);
  r = at::where(a < 3.5, 3.0, r);
  r = at::where(a <= 2.5, 2.0, r);
  r = at::where(a < 1.75, 1.5, r);
  r = at::where(a <= 1.25, 1.0, r);
  r = at::where(a < 0.75, 0.5, r);
  r = at::where(a <= 0.25, 0.0, r);
  return r * sign;
}

// quant_args.round_to_quantized_type_args: clamp to the range, round to the type's grid, back
// to the input's dtype.
at::Tensor round_to_type(const at::Tensor& t, const QuantArgs& args) {
  const auto [qmin, qmax] = quant_range(args);
  const auto options = at::TensorOptions().dtype(at::kFloat).device(t.device());
  const at::Tensor clamped =
      at::clamp(t, at::scalar_tensor(qmin, options), at::scalar_tensor(qmax, options));
  at::Tensor rounded;
  if (args.type == QuantType::kInt) {
    rounded = at::round(clamped);
  } else if (args.num_bits == 8) {
    rounded = clamped.to(at::kFloat8_e4m3fn);
  } else {
    rounded = cast_to_fp4(clamped);
  }
  return rounded.to(t.scalar_type());
}

}  // namespace

at::Tensor qdq(const at::Tensor& x,
               const at::Tensor& scale,
               const at::Tensor& zero_point,
               const QuantArgs& args) {
  at::Tensor scaled = x / scale;
  if (zero_point.defined()) {
    scaled.add_(zero_point.to(x.scalar_type()));
  }
  at::Tensor dequant = round_to_type(scaled, args).to(scale.scalar_type());
  if (zero_point.defined()) {
    dequant = dequant - zero_point.to(scale.scalar_type());
  }
  return dequant * scale;
}

at::Tensor to_blocks(const at::Tensor& x, kernels::BlockShape block) {
  const int64_t rows = x.size(-2);
  const int64_t cols = x.size(-1);
  const int64_t br = block.rows > 0 ? block.rows : rows;
  const int64_t bc = block.cols > 0 ? block.cols : cols;
  const int64_t nr = (rows + br - 1) / br;
  const int64_t nc = (cols + bc - 1) / bc;
  at::Tensor padded = x;
  if (nr * br != rows || nc * bc != cols) {
    padded = at::constant_pad_nd(x, {0, nc * bc - cols, 0, nr * br - rows}, 0);
  }
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 2);
  std::vector<int64_t> split = shape;
  split.insert(split.end(), {nr, br, nc, bc});
  shape.insert(shape.end(), {nr, nc, br * bc});
  return padded.reshape(split).transpose(-3, -2).reshape(shape);
}

}  // namespace moeq::quant::detail
