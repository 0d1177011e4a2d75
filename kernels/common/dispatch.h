// DType -> C++ type dispatch for host code (CPU references and CUDA launchers alike): calls
// f(Type<T>{}) with the element type a DType names.
#pragma once

#include <stdexcept>
#include <string>
#include <type_traits>

#include "common/geometry.h"
#include "common/int_fp8.h"
#include "common/numerics.h"

namespace moeq::kernels {

template <typename T>
struct Type {
  using type = T;
};

[[noreturn]] inline void unsupported_dtype(const char* where, DType t) {
  // The op layer validates dtypes first; reaching here is a bug in moeq.
  throw std::logic_error(std::string("moeq internal error: ") + where + " got unsupported dtype " +
                         std::to_string(static_cast<int>(t)));
}

// float32, bfloat16, float16.
template <typename F>
decltype(auto) dispatch_float(DType t, F&& f) {
  switch (t) {
    case DType::kFloat32:
      return f(Type<float>{});
    case DType::kBFloat16:
      return f(Type<numerics::BFloat16>{});
    case DType::kFloat16:
      return f(Type<numerics::Half>{});
    default:
      unsupported_dtype("dispatch_float", t);
  }
}

// The code format of a QuantKind: quant::IntFormat or the fp8 type.
template <typename F>
decltype(auto) dispatch_kind(QuantKind k, F&& f) {
  switch (k) {
    case QuantKind::kInt:
      return f(Type<quant::IntFormat>{});
    case QuantKind::kFp8E4M3:
      return f(Type<numerics::Float8_e4m3fn>{});
    case QuantKind::kFp8E5M2:
      return f(Type<numerics::Float8_e5m2>{});
  }
  throw std::logic_error("moeq internal error: dispatch_kind");
}

// The element type that holds a kind's codes: int8 or the fp8 type.
template <typename Kind>
using code_t = std::conditional_t<std::is_same_v<Kind, quant::IntFormat>, int8_t, Kind>;

// An elementwise quantizer's element types: calls
//   f(Type<Kind>, Type<In>, Type<Out>, Type<S>, std::integral_constant<Direction, D>)
// with In = Out = the float type for kFake, In = float, Out = the code type for kQuantize and
// In = the code type, Out = float for kDequantize.
template <typename F>
void dispatch_elementwise(
    QuantKind kind, Direction dir, DType in_t, DType out_t, DType scale_t, F&& f) {
  dispatch_kind(kind, [&](auto kind_tag) {
    using Code = code_t<typename decltype(kind_tag)::type>;
    dispatch_float(scale_t, [&](auto s_tag) {
      switch (dir) {
        case Direction::kFake:
          dispatch_float(in_t, [&](auto x_tag) {
            f(kind_tag, x_tag, x_tag, s_tag, std::integral_constant<Direction, Direction::kFake>{});
          });
          break;
        case Direction::kQuantize:
          dispatch_float(in_t, [&](auto x_tag) {
            f(kind_tag, x_tag, Type<Code>{}, s_tag,
              std::integral_constant<Direction, Direction::kQuantize>{});
          });
          break;
        case Direction::kDequantize:
          dispatch_float(out_t, [&](auto y_tag) {
            f(kind_tag, Type<Code>{}, y_tag, s_tag,
              std::integral_constant<Direction, Direction::kDequantize>{});
          });
          break;
      }
    });
  });
}

}  // namespace moeq::kernels
