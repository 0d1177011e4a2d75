// Shapes in error messages: "[2, 16, 64]".
#pragma once

#include <c10/util/ArrayRef.h>
#include <fmt/format.h>

#include <cstdint>
#include <string>

namespace moeq::runtime::detail {

inline std::string shape_str(c10::IntArrayRef sizes) {
  return fmt::format("[{}]", fmt::join(sizes.begin(), sizes.end(), ", "));
}

}  // namespace moeq::runtime::detail
