// Scalar numerics shared by the CPU references and the CUDA kernels (host and device).
//
// Conversions go through c10's header-only scalar types (BFloat16, Half, Float8_e4m3fn,
// Float8_e5m2), the very code torch's own casts run, so the CPU reference, the CUDA kernels and
// torch agree bit for bit. Values travel as float holding a value exactly representable in the
// type they stand for; round_to<T> emulates one torch op whose result dtype is T (torch computes
// bf16/fp16 ops in float and rounds the result once).
//
// This header sees no ATen: .cu files include it without torch's heavy headers.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Float8_e4m3fn.h>
#include <c10/util/Float8_e5m2.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <type_traits>

#include "common/macros.h"

#if defined(__CUDACC__)
#include <cuda_fp8.h>
#endif

namespace moeq::kernels::numerics {

using c10::BFloat16;
using c10::Float8_e4m3fn;
using c10::Float8_e5m2;
using c10::Half;

template <typename T>
inline constexpr bool kIsFloat8 =
    std::is_same_v<T, Float8_e4m3fn> || std::is_same_v<T, Float8_e5m2>;

// ---- rounding of one op's result --------------------------------------------------------------

// The float result of one torch op whose output dtype is T: float is exact; bf16, fp16 and the
// fp8 types round to nearest even (NaN stays NaN; fp8 e4m3fn has no Inf: |v| >= 480 is NaN).
template <typename T>
MOEQ_HOST_DEVICE MOEQ_INLINE float round_to(float v) {
  if constexpr (std::is_same_v<T, float>) {
    return v;
  } else {
    return static_cast<float>(T(v));
  }
}

template <typename T>
MOEQ_HOST_DEVICE MOEQ_INLINE float to_float(T v) {
  return static_cast<float>(v);
}

template <typename T>
MOEQ_HOST_DEVICE MOEQ_INLINE T from_float(float v) {
  if constexpr (std::is_integral_v<T>) {
    return static_cast<T>(v);
  } else {
    return T(v);
  }
}

// torch.round: round half to even (nearbyint in the default rounding mode).
MOEQ_HOST_DEVICE MOEQ_INLINE float round_half_even(float v) {
#if defined(__CUDA_ARCH__)
  return rintf(v);
#else
  return std::nearbyint(v);
#endif
}

MOEQ_HOST_DEVICE MOEQ_INLINE bool is_nan(float v) {
  return v != v;
}

MOEQ_HOST_DEVICE MOEQ_INLINE bool is_finite(float v) {
#if defined(__CUDA_ARCH__)
  return isfinite(v);
#else
  return std::isfinite(v);
#endif
}

// torch.clamp(v, lo, hi) for lo <= hi: NaN propagates.
MOEQ_HOST_DEVICE MOEQ_INLINE float clamp(float v, float lo, float hi) {
  return v < lo ? lo : (v > hi ? hi : v);  // comparisons with NaN are false: NaN passes
}

// torch.minimum / torch.maximum: NaN propagates.
MOEQ_HOST_DEVICE MOEQ_INLINE float minimum(float a, float b) {
  return (is_nan(a) || is_nan(b)) ? a + b : (a < b ? a : b);
}
MOEQ_HOST_DEVICE MOEQ_INLINE float maximum(float a, float b) {
  return (is_nan(a) || is_nan(b)) ? a + b : (a > b ? a : b);
}

// ---- dtype facts ------------------------------------------------------------------------------

// torch.finfo(T).eps, which compressed-tensors puts in place of zero scales (its
// _get_dtype_eps; 0.125 for float8_e4m3fn).
template <typename T>
MOEQ_HOST_DEVICE MOEQ_INLINE constexpr float eps() {
  if constexpr (std::is_same_v<T, float>) {
    return 1.1920928955078125e-07f;  // 2^-23
  } else if constexpr (std::is_same_v<T, BFloat16>) {
    return 0.0078125f;  // 2^-7
  } else if constexpr (std::is_same_v<T, Half>) {
    return 0.0009765625f;  // 2^-10
  } else if constexpr (std::is_same_v<T, Float8_e4m3fn>) {
    return 0.125f;
  } else {
    static_assert(std::is_same_v<T, Float8_e5m2>, "eps: unsupported type");
    return 0.25f;
  }
}

// Largest finite value of an fp8 type (torch.finfo(T).max).
template <typename F8>
MOEQ_HOST_DEVICE MOEQ_INLINE constexpr float fp8_max() {
  if constexpr (std::is_same_v<F8, Float8_e4m3fn>) {
    return 448.0f;
  } else {
    static_assert(std::is_same_v<F8, Float8_e5m2>, "fp8_max: unsupported type");
    return 57344.0f;
  }
}

// fp8 encode / decode as raw bytes (what the format stores).
template <typename F8>
MOEQ_HOST_DEVICE MOEQ_INLINE uint8_t fp8_encode(float v) {
  return F8(v).x;
}
template <typename F8>
MOEQ_HOST_DEVICE MOEQ_INLINE float fp8_decode(uint8_t bits) {
  return static_cast<float>(F8(bits, F8::from_bits()));
}

// The fp8 bits of v rounded to nearest even, and back: what F8(v) and float(F8) compute. On
// sm_89+ devices the hardware converts (cvt.rn.satfinite), which agrees with c10 for every |v| <=
// fmax (callers clamp first); NaN stays NaN (its payload may differ).
template <typename F8>
MOEQ_HOST_DEVICE MOEQ_INLINE uint8_t fp8_bits(float v) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  constexpr __nv_fp8_interpretation_t kind =
      std::is_same_v<F8, Float8_e4m3fn> ? __NV_E4M3 : __NV_E5M2;
  return __nv_cvt_float_to_fp8(v, __NV_SATFINITE, kind);
#else
  return F8(v).x;
#endif
}

template <typename F8>
MOEQ_HOST_DEVICE MOEQ_INLINE float fp8_to_float(uint8_t bits) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  constexpr __nv_fp8_interpretation_t kind =
      std::is_same_v<F8, Float8_e4m3fn> ? __NV_E4M3 : __NV_E5M2;
  return __half2float(__half(__nv_cvt_fp8_to_halfraw(bits, kind)));
#else
  return static_cast<float>(F8(bits, F8::from_bits()));
#endif
}

// round_to<F8>(v) for |v| <= fmax (or NaN).
template <typename F8>
MOEQ_HOST_DEVICE MOEQ_INLINE float fp8_round(float v) {
  return fp8_to_float<F8>(fp8_bits<F8>(v));
}

// ---- type promotion ----------------------------------------------------------------------------

// torch.promote_types for the float types moeq computes in: equal types stay, float32 wins, and
// bf16 with fp16 gives float32.
template <typename A, typename B>
struct Promote {
  using type = std::conditional_t<std::is_same_v<A, B>, A, float>;
};
template <typename A, typename B>
using promote_t = typename Promote<A, B>::type;

}  // namespace moeq::kernels::numerics
