// Helpers of the integer / FP8 kernel tests: bitwise comparison, error capture, inputs with the
// hard cases, and compressed-tensors' formulas written with plain ATen ops (forward_helpers.py)
// as the independent reference.
#pragma once

#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <cmath>
#include <optional>
#include <string>

#include "moeq/core/error.h"

namespace moeq::kernels::testing {

// The raw bits of t (contiguous, on the CPU), as an integer tensor of the same element size.
inline at::Tensor raw(const at::Tensor& t) {
  const at::Tensor c = t.cpu().contiguous();
  switch (c.element_size()) {
    case 4:
      return c.view(at::kInt);
    case 2:
      return c.view(at::kShort);
    default:
      return c.view(at::kByte);
  }
}

// Same shape, dtype and bits; a NaN equals any NaN (payload and sign of a NaN differ between the
// CPU and the GPU, e.g. for 0 * inf).
inline ::testing::AssertionResult bits_equal(const at::Tensor& a, const at::Tensor& b) {
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) {
    return ::testing::AssertionFailure()
           << "shape/dtype differ: " << a.sizes() << " " << a.scalar_type() << " vs " << b.sizes()
           << " " << b.scalar_type();
  }
  at::Tensor differ = raw(a).reshape(-1) != raw(b).reshape(-1);
  if (a.is_floating_point()) {
    const auto nan = [](const at::Tensor& t) {
      return t.cpu().contiguous().reshape(-1).to(at::kFloat).isnan();
    };
    differ &= ~(nan(a) & nan(b));
  }
  const at::Tensor diff = differ.nonzero();
  if (diff.size(0) == 0) {
    return ::testing::AssertionSuccess();
  }
  const int64_t i = diff[0].item<int64_t>();
  const auto value = [i](const at::Tensor& t) {
    return t.cpu().contiguous().reshape(-1)[i].to(at::kDouble).item<double>();
  };
  return ::testing::AssertionFailure()
         << diff.size(0) << " of " << a.numel() << " elements differ, first at flat index " << i
         << ": " << value(a) << " vs " << value(b);
}

// The message of the moeq::Error that f throws, or "<no error>".
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const moeq::Error& e) {
    return e.message();
  }
  return "<no error>";
}

#define EXPECT_ERROR(stmt, substring)                                                        \
  do {                                                                                       \
    const std::string moeq_msg_ = ::moeq::kernels::testing::error_of([&] { (void)(stmt); }); \
    EXPECT_NE(moeq_msg_.find(substring), std::string::npos)                                  \
        << "message: " << moeq_msg_ << "\nexpected to contain: " << (substring);             \
  } while (false)

// A grid [..., nR, nC] expanded to the elements of a [..., rows, cols] tensor.
inline at::Tensor expand_grid(
    const at::Tensor& grid, int64_t rows, int64_t cols, int64_t br, int64_t bc) {
  return grid.repeat_interleave(br, -2)
      .repeat_interleave(bc, -1)
      .slice(-2, 0, rows)
      .slice(-1, 0, cols);
}

// compressed-tensors' _quantize_dequantize / _quantize for integers, with the scale (and zero
// point) already expanded to x's shape: torch computes each op in the promoted dtype.
inline at::Tensor ct_int_code(const at::Tensor& x,
                              const at::Tensor& scale,
                              const std::optional<at::Tensor>& zp,
                              int64_t qmin,
                              int64_t qmax) {
  at::Tensor scaled = x / scale;
  if (zp) {
    scaled += zp->to(x.scalar_type());
  }
  return at::clamp(scaled, at::scalar_tensor(static_cast<double>(qmin)),
                   at::scalar_tensor(static_cast<double>(qmax)))
      .round();
}

inline at::Tensor ct_fake_int(const at::Tensor& x,
                              const at::Tensor& scale,
                              const std::optional<at::Tensor>& zp,
                              int64_t qmin,
                              int64_t qmax) {
  at::Tensor d = ct_int_code(x, scale, zp, qmin, qmax).to(scale.scalar_type());
  if (zp) {
    d = d - zp->to(scale.scalar_type());
  }
  return (d * scale).to(x.scalar_type());
}

inline at::Tensor ct_fp8_code(const at::Tensor& x, const at::Tensor& scale, at::ScalarType fp8) {
  const double fmax = fp8 == at::kFloat8_e4m3fn ? 448.0 : 57344.0;
  return at::clamp(x / scale, at::scalar_tensor(-fmax), at::scalar_tensor(fmax)).to(fp8);
}

inline at::Tensor ct_fake_fp8(const at::Tensor& x, const at::Tensor& scale, at::ScalarType fp8) {
  const at::Tensor q = ct_fp8_code(x, scale, fp8).to((x / scale).scalar_type());
  return (q.to(scale.scalar_type()) * scale).to(x.scalar_type());
}

// Random values with the hard cases mixed in by row: exact .5 ties of the integer grid at scale
// 2^k, zeros, an all-zero row, subnormals of the dtype, very large values.
inline at::Tensor hard_values(at::IntArrayRef shape, at::ScalarType dtype, int seed) {
  at::manual_seed(seed);
  at::Tensor x = at::randn(shape) * 0.1;
  const int64_t cols = shape.back();
  at::Tensor flat = x.view({-1, cols});
  const double tiny = dtype == at::kHalf ? 6.0e-8 : (dtype == at::kBFloat16 ? 1.0e-39 : 1.0e-40);
  for (int64_t r = 0; r < flat.size(0); ++r) {
    switch (r % 6) {
      case 1:  // ties k + 0.5 at scale 1/16 (exact in every dtype)
        flat[r] = (at::randint(-16, 16, {cols}) + 0.5) / 16.0;
        break;
      case 2:
        flat[r].zero_();
        break;
      case 3:
        flat[r] = at::randn({cols}) * tiny;
        break;
      case 4:
        flat[r] = (at::rand({cols}) * 2 - 1) * (dtype == at::kHalf ? 6.0e4 : 1.0e30);
        break;
      case 5:
        flat[r].index_put_({at::randint(0, cols, {cols / 4 + 1}, at::kLong)}, 0.0);
        break;
      default:
        break;
    }
  }
  return x.to(dtype);
}

}  // namespace moeq::kernels::testing
