// Between safetensors dtypes and torch scalar types. F4 is stored by torch as
// Float4_e2m1fn_x2, two values per byte: its torch shape halves the last dimension of the header
// shape (as the safetensors Python bindings do). F6_E2M3 and F6_E3M2 have no torch type.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string_view>
#include <vector>

#include "moeq/io/safetensors_header.h"

namespace moeq::io {

// nullopt where torch has no such type.
std::optional<at::ScalarType> to_scalar_type(DType dtype);
// Errors (naming the tensor) where safetensors has no such type.
DType to_dtype(at::ScalarType type, std::string_view tensor_name);

// The torch shape of a tensor stored with the given header shape, and back.
std::vector<int64_t> torch_shape(DType dtype,
                                 const std::vector<int64_t>& header_shape,
                                 std::string_view tensor_name);
std::vector<int64_t> header_shape(DType dtype, at::IntArrayRef torch_shape);

}  // namespace moeq::io
