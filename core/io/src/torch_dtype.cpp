#include "moeq/io/torch_dtype.h"

#include <fmt/ranges.h>

#include "moeq/core/error.h"

namespace moeq::io {

namespace {

struct Pair {
  DType dtype;
  at::ScalarType type;
};

constexpr Pair kPairs[] = {
    {DType::kBool, at::kBool},
    {DType::kF4, at::kFloat4_e2m1fn_x2},
    {DType::kU8, at::kByte},
    {DType::kI8, at::kChar},
    {DType::kF8E5M2, at::kFloat8_e5m2},
    {DType::kF8E4M3, at::kFloat8_e4m3fn},
    {DType::kF8E8M0, at::kFloat8_e8m0fnu},
    {DType::kF8E4M3Fnuz, at::kFloat8_e4m3fnuz},
    {DType::kF8E5M2Fnuz, at::kFloat8_e5m2fnuz},
    {DType::kI16, at::kShort},
    {DType::kU16, at::kUInt16},
    {DType::kF16, at::kHalf},
    {DType::kBF16, at::kBFloat16},
    {DType::kI32, at::kInt},
    {DType::kU32, at::kUInt32},
    {DType::kF32, at::kFloat},
    {DType::kC64, at::kComplexFloat},
    {DType::kF64, at::kDouble},
    {DType::kI64, at::kLong},
    {DType::kU64, at::kUInt64},
};

}  // namespace

std::optional<at::ScalarType> to_scalar_type(DType dtype) {
  for (const Pair& pair : kPairs) {
    if (pair.dtype == dtype) {
      return pair.type;
    }
  }
  return std::nullopt;
}

DType to_dtype(at::ScalarType type, std::string_view tensor_name) {
  for (const Pair& pair : kPairs) {
    if (pair.type == type) {
      return pair.dtype;
    }
  }
  MOEQ_FAIL("tensor '{}': torch dtype {} has no safetensors equivalent", tensor_name,
            c10::toString(type));
}

std::vector<int64_t> torch_shape(DType dtype,
                                 const std::vector<int64_t>& header_shape,
                                 std::string_view tensor_name) {
  std::vector<int64_t> shape = header_shape;
  if (dtype == DType::kF4) {
    MOEQ_CHECK(!shape.empty() && shape.back() % 2 == 0,
               "tensor '{}': F4 with shape [{}] cannot be a torch float4_e2m1fn_x2 tensor, which "
               "needs an even last dimension",
               tensor_name, fmt::join(header_shape, ", "));
    shape.back() /= 2;
  }
  return shape;
}

std::vector<int64_t> header_shape(DType dtype, at::IntArrayRef torch_shape) {
  std::vector<int64_t> shape(torch_shape.begin(), torch_shape.end());
  if (dtype == DType::kF4 && !shape.empty()) {
    shape.back() *= 2;
  }
  return shape;
}

}  // namespace moeq::io
