// Scalar numerics of the FP4 (E2M1) formats and the MX formats, shared by the CPU references and
// the CUDA kernels (host and device), so both agree bit for bit.
//
// Each "scheme" reproduces one library's arithmetic op by op (docs/numerics-fp4.md):
//   Nvfp4Ct    compressed-tensors 0.20 nvfp4-pack-quantized (tensor_group, group 16)
//   Nvfp4Mo    ModelOpt 0.47 NVFP4QTensor.quantize / dequantize
//   MxCt<E>    compressed-tensors mxfp4-pack-quantized / mxfp8-quantized (group 32)
//   MxMo<E>    ModelOpt MXFP4QTensor / MXFP8QTensor
// T is the dtype the library computes in (the weight's dtype): values travel as float holding a
// value exact in T, and round_to<T> emulates one torch op whose result dtype is T.
//
// A scheme turns a group's amax (or a stored scale byte) into a GroupScale, encodes an element
// to its code (4-bit E2M1 code with the sign in bit 3, or an fp8 byte) and decodes a code back
// to the value the library's dequantization produces.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/numerics.h"

namespace moeq::kernels::fp4 {

using numerics::BFloat16;
using numerics::Float8_e4m3fn;
using numerics::Half;
using numerics::round_to;

constexpr int kNvfp4Group = 16;
constexpr int kMxGroup = 32;
constexpr float kE2M1Max = 6.0f;
constexpr float kE4M3Max = 448.0f;
constexpr float kE4M3MinSubnormal = 0.001953125f;  // 2^-9

// ---- E2M1
// ----------------------------------------------------------------------------------------

// Magnitude of a 3-bit E2M1 index: {0, 0.5, 1, 1.5, 2, 3, 4, 6}.
MOEQ_HOST_DEVICE MOEQ_INLINE float e2m1_magnitude(uint32_t index) {
  return index < 4 ? 0.5f * static_cast<float>(index)
                   : (index < 6 ? static_cast<float>(index - 2) : (index == 6 ? 4.0f : 6.0f));
}

// Index of the nearest E2M1 magnitude, ties to the even mantissa: 0.25 -> 0, 0.75 -> 1,
// 1.25 -> 1, 1.75 -> 2, 2.5 -> 2, 3.5 -> 4, 5 -> 4; above 5 -> 6. compressed-tensors'
// cast_to_fp4 thresholds, ModelOpt's NVFP4 _cast_fp4 (searchsorted plus the 0.75/1.75/3.5
// adjustment) and its Triton fp4_round_magnitude all give this. `a` is |v|, not NaN.
MOEQ_HOST_DEVICE MOEQ_INLINE uint32_t e2m1_index_ties_even(float a) {
  return static_cast<uint32_t>(a > 0.25f) + static_cast<uint32_t>(a >= 0.75f) +
         static_cast<uint32_t>(a > 1.25f) + static_cast<uint32_t>(a >= 1.75f) +
         static_cast<uint32_t>(a > 2.5f) + static_cast<uint32_t>(a >= 3.5f) +
         static_cast<uint32_t>(a > 5.0f);
}

// ModelOpt MXFP4QTensor's cast_fp4: the number of midpoints strictly below |v|, so every tie
// rounds down (0.75 -> 0.5, 1.75 -> 1.5, 3.5 -> 3).
MOEQ_HOST_DEVICE MOEQ_INLINE uint32_t e2m1_index_ties_down(float a) {
  return static_cast<uint32_t>(a > 0.25f) + static_cast<uint32_t>(a > 0.75f) +
         static_cast<uint32_t>(a > 1.25f) + static_cast<uint32_t>(a > 1.75f) +
         static_cast<uint32_t>(a > 2.5f) + static_cast<uint32_t>(a > 3.5f) +
         static_cast<uint32_t>(a > 5.0f);
}

// The same roundings computed as what they are: E2M1 is a float with one mantissa bit, so the
// nearest value is a rounding on the grid of a's binade (step 0.5 below 2, 1 below 4, 2 up to 6;
// a above 6 gives 6). Bit-identical to the threshold forms above (checked exhaustively around
// every midpoint), and cheaper: a few instructions per element in the kernels.
MOEQ_HOST_DEVICE MOEQ_INLINE float e2m1_round_even(float a) {
  const float c = a < 6.0f ? a : 6.0f;
  const float step = c < 2.0f ? 0.5f : (c < 4.0f ? 1.0f : 2.0f);
  const float inv = c < 2.0f ? 2.0f : (c < 4.0f ? 1.0f : 0.5f);
  return numerics::round_half_even(c * inv) * step;
}
MOEQ_HOST_DEVICE MOEQ_INLINE float e2m1_round_down(float a) {
  const float c = a < 6.0f ? a : 6.0f;
  const float step = c < 2.0f ? 0.5f : (c < 4.0f ? 1.0f : 2.0f);
  const float inv = c < 2.0f ? 2.0f : (c < 4.0f ? 1.0f : 0.5f);
#if defined(__CUDA_ARCH__)
  return ::ceilf(c * inv - 0.5f) * step + 0.0f;  // ceil(-0.5) is -0.0: make zero +0
#else
  return std::ceil(c * inv - 0.5f) * step + 0.0f;
#endif
}
// The 3-bit index of an E2M1 magnitude.
MOEQ_HOST_DEVICE MOEQ_INLINE uint32_t e2m1_index_of(float q) {
  return static_cast<uint32_t>(q < 2.0f ? q * 2.0f : (q < 4.0f ? q + 2.0f : q * 0.5f + 4.0f));
}

// The signed E2M1 value of a 4-bit code. Code 8 (sign, magnitude 0) is -0.0 when
// `negative_zero` (compressed-tensors, transformers, ModelOpt MXFP4) and +0.0 otherwise
// (ModelOpt NVFP4's lookup table).
MOEQ_HOST_DEVICE MOEQ_INLINE float e2m1_value(uint32_t code, bool negative_zero) {
  const float m = e2m1_magnitude(code & 7u);
  if ((code & 8u) == 0u) {
    return m;
  }
  return (m == 0.0f && !negative_zero) ? 0.0f : -m;
}

// Two codes per byte along the row, the even element in the low nibble.
MOEQ_HOST_DEVICE MOEQ_INLINE uint8_t pack_nibbles(uint32_t even, uint32_t odd) {
  return static_cast<uint8_t>((even & 15u) | ((odd & 15u) << 4));
}

// ---- small float helpers ------------------------------------------------------------------------

MOEQ_HOST_DEVICE MOEQ_INLINE float bits_to_float(uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(b);
#else
  float f;
  std::memcpy(&f, &b, sizeof(f));
  return f;
#endif
}

MOEQ_HOST_DEVICE MOEQ_INLINE uint32_t float_to_bits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t b;
  std::memcpy(&b, &f, sizeof(b));
  return b;
#endif
}

MOEQ_HOST_DEVICE MOEQ_INLINE float infinity_f() {
  return bits_to_float(0x7f800000u);
}

MOEQ_HOST_DEVICE MOEQ_INLINE float abs_f(float v) {
  return v < 0.0f ? -v : (v == 0.0f ? 0.0f : v);
}

// 2^e for an integer e in [-149, 127] (exact; subnormal below -126); +inf above 127.
MOEQ_HOST_DEVICE MOEQ_INLINE float exp2_int(int e) {
  if (e > 127) {
    return infinity_f();
  }
  if (e >= -126) {
    return bits_to_float(static_cast<uint32_t>(e + 127) << 23);
  }
  return e < -149 ? 0.0f : bits_to_float(1u << (e + 149));
}

// float log2 rounded to nearest, as torch's log2 gives it for float32 (checked against torch
// on the values near powers of two where it matters: ceil(log2(d)) for d just above 2^k is k).
MOEQ_HOST_DEVICE MOEQ_INLINE float log2_rn(float d) {
#if defined(__CUDA_ARCH__)
  return static_cast<float>(::log2(static_cast<double>(d)));
#else
  return static_cast<float>(std::log2(static_cast<double>(d)));
#endif
}

MOEQ_HOST_DEVICE MOEQ_INLINE float ceil_f(float v) {
#if defined(__CUDA_ARCH__)
  return ::ceilf(v);
#else
  return std::ceil(v);
#endif
}

// Bits of a value exact in T, and T's mantissa / exponent widths.
template <typename T>
struct FloatBits;
template <>
struct FloatBits<float> {
  static constexpr int kMantissa = 23;
  static constexpr int kExponent = 8;
  MOEQ_HOST_DEVICE MOEQ_INLINE static uint32_t bits(float v) { return float_to_bits(v); }
};
template <>
struct FloatBits<BFloat16> {
  static constexpr int kMantissa = 7;
  static constexpr int kExponent = 8;
  MOEQ_HOST_DEVICE MOEQ_INLINE static uint32_t bits(float v) { return BFloat16(v).x; }
};
template <>
struct FloatBits<Half> {
  static constexpr int kMantissa = 10;
  static constexpr int kExponent = 5;
  MOEQ_HOST_DEVICE MOEQ_INLINE static uint32_t bits(float v) { return Half(v).x; }
};

// ---- scales ---------------------------------------------------------------------------------

// What a group is quantized with. NVFP4 encodes x / enc; MX encodes x * enc (enc is then the
// exact reciprocal of a power-of-two scale, so the product equals the libraries' quotient);
// decode multiplies by `dec`. `stored` is the byte the format writes: fp8 E4M3 bits for
// NVFP4, the E8M0 biased exponent for MX. `valid` is false when the scale cannot quantize (a
// zero or non-finite stored scale, E8M0 code 255).
struct GroupScale {
  float enc;
  float dec;
  uint8_t stored;
  bool valid;
};

// compressed-tensors' generate_gparam: global_scale = 448 * 6 / max(amax, tiny(T)), evaluated as
// torch does for `2688.0 / tensor` (reciprocal, then multiply, each rounded to T), NaN and Inf
// mapped to 1. `amax` is exact in T.
template <typename T>
MOEQ_HOST_DEVICE MOEQ_INLINE float nvfp4_ct_global_scale(float amax) {
  constexpr float kTiny = std::is_same_v<T, Half> ? 6.103515625e-05f          // 2^-14
                                                  : 1.1754943508222875e-38f;  // 2^-126
  const float a = amax < kTiny ? kTiny : amax;
  const float r = round_to<T>(1.0f / a);
  const float g = round_to<T>(r * 2688.0f);
  return numerics::is_finite(g) ? g : 1.0f;
}

// ModelOpt's weight_scale_2 = amax.float() / (6 * 448).
MOEQ_HOST_DEVICE MOEQ_INLINE float nvfp4_mo_global_scale(float amax) {
  return amax / 2688.0f;
}

// compressed-tensors NVFP4 (calculate_qparams with a global scale, then _quantize_dequantize):
//   block scale s = fp8(clamp(gs * T(amax / 6), -448, 448)); s == 0 -> 0.125 (fp8 eps)
//   e = float(s) / gs;  code = e2m1(clamp(x / e, -6, 6));  x' = T(q * e)
template <typename T>
struct Nvfp4Ct {
  static constexpr int kGroup = kNvfp4Group;
  static constexpr bool kFp4 = true;
  float global;  // weight_global_scale (448 * 6 / amax)

  MOEQ_HOST_DEVICE MOEQ_INLINE GroupScale from_amax(float amax) const {
    const float d = round_to<T>(amax / 6.0f);
    const float p = numerics::clamp(global * d, -kE4M3Max, kE4M3Max);
    uint8_t b = numerics::fp8_encode<Float8_e4m3fn>(p);
    float f = numerics::fp8_decode<Float8_e4m3fn>(b);
    if (f == 0.0f) {
      f = 0.125f;
      b = numerics::fp8_encode<Float8_e4m3fn>(f);
    }
    const float e = f / global;
    return {e, e, b, true};
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE GroupScale from_stored(uint8_t b) const {
    const float f = numerics::fp8_decode<Float8_e4m3fn>(b);
    const float e = f / global;
    return {e, e, b, numerics::is_finite(e) && e > 0.0f};
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE uint32_t encode(float x, const GroupScale& s) const {
    const float v = numerics::clamp(x / s.enc, -kE2M1Max, kE2M1Max);
    return (v < 0.0f ? 8u : 0u) | e2m1_index_of(e2m1_round_even(abs_f(v)));
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE float decode(uint32_t code, const GroupScale& s) const {
    return round_to<T>(e2m1_value(code, true) * s.dec);
  }
  // decode(encode(x)) without the code.
  MOEQ_HOST_DEVICE MOEQ_INLINE float fake(float x, const GroupScale& s) const {
    const float v = numerics::clamp(x / s.enc, -kE2M1Max, kE2M1Max);
    const float q = e2m1_round_even(abs_f(v));
    return round_to<T>((v < 0.0f ? -q : q) * s.dec);
  }
};

// ModelOpt NVFP4QTensor (dynamic path of get_weights_scaling_factor, then quantize):
//   s = fp8(clamp(amax / (6 * wsf2), 2^-9, 448)) with a zero ratio set to 1 first
//   e = float(s) * wsf2;  code = e2m1(x / e);  x' = T(table[code] * e), table[8] = +0
template <typename T>
struct Nvfp4Mo {
  static constexpr int kGroup = kNvfp4Group;
  static constexpr bool kFp4 = true;
  float global;  // weight_scale_2 (amax / (6 * 448))

  MOEQ_HOST_DEVICE MOEQ_INLINE GroupScale from_amax(float amax) const {
    float p = amax / (6.0f * global);
    if (p == 0.0f) {
      p = 1.0f;
    }
    p = numerics::clamp(p, kE4M3MinSubnormal, kE4M3Max);
    const uint8_t b = numerics::fp8_encode<Float8_e4m3fn>(p);
    const float e = numerics::fp8_decode<Float8_e4m3fn>(b) * global;
    return {e, e, b, numerics::is_finite(e) && e > 0.0f};
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE GroupScale from_stored(uint8_t b) const {
    const float e = numerics::fp8_decode<Float8_e4m3fn>(b) * global;
    return {e, e, b, numerics::is_finite(e) && e > 0.0f};
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE uint32_t encode(float x, const GroupScale& s) const {
    const float v = x / s.enc;
    return (v < 0.0f ? 8u : 0u) | e2m1_index_of(e2m1_round_even(abs_f(v)));
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE float decode(uint32_t code, const GroupScale& s) const {
    return round_to<T>(e2m1_value(code, false) * s.dec);
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE float fake(float x, const GroupScale& s) const {
    const float v = x / s.enc;
    const float q = e2m1_round_even(abs_f(v));
    return round_to<T>((v < 0.0f ? 0.0f - q : q) * s.dec);  // code 8 decodes to +0
  }
};

// ModelOpt's static NVFP4 export (get_weights_scaling_factor_from_quantizer with a per-block
// _amax, e.g. from the FP8 scale sweep): s = fp8(clamp((amax/6 or 1) * 448 / (global_amax/6),
// 2^-9, 448)).
MOEQ_HOST_DEVICE MOEQ_INLINE uint8_t nvfp4_mo_static_block_scale(float block_amax,
                                                                 float global_amax) {
  float p = block_amax / 6.0f;
  if (p == 0.0f) {
    p = 1.0f;
  }
  const float v = p * 448.0f / (global_amax / 6.0f);
  return numerics::fp8_encode<Float8_e4m3fn>(numerics::clamp(v, kE4M3MinSubnormal, kE4M3Max));
}

enum class MxElem : int { kFp4 = 0, kFp8 = 1 };

// compressed-tensors' E8M0 code of a group amax (exact in T): round_to_power_2 on T's bits (add
// half of the next mantissa bit above the element's mantissa: round up from a fraction of 0.75),
// then 127 + floor(log2(.)) - offset (2 for FP4, 8 for FP8), clamped to [0, 255]. A zero (or
// vanishing) amax gives 0; an amax that rounds to Inf gives 255 (invalid).
template <typename T>
MOEQ_HOST_DEVICE MOEQ_INLINE int mx_ct_code(float amax, MxElem elem) {
  using B = FloatBits<T>;
  const uint32_t bits = B::bits(amax);
  const uint32_t add = 1u << (B::kMantissa - 2);
  const uint32_t exp_mask = ((1u << B::kExponent) - 1u) << B::kMantissa;
  const uint32_t field = ((bits + add) & exp_mask) >> B::kMantissa;
  if (field == 0u) {
    return 0;
  }
  if (field == (1u << B::kExponent) - 1u) {
    return 255;
  }
  const int bias = (1 << (B::kExponent - 1)) - 1;
  const int offset = elem == MxElem::kFp4 ? 2 : 8;
  const int code = 127 + (static_cast<int>(field) - bias) - offset;
  return code < 0 ? 0 : (code > 255 ? 255 : code);
}

// compressed-tensors MXFP4 / MXFP8 (calculate_qparams with E8M0 scales, the scale held in the
// weight's dtype T, then _quantize_dequantize in T):
//   sT = T(2^(code - 127)), and 1.0 (code 127) when that is zero (fp16; CT's uint8 eps of 1)
//   FP4: code = e2m1(clamp(T(x / sT), -6, 6)); x' = T(q * sT)
//   FP8: byte = fp8(clamp(T(x / sT) + 0, -448, 448)); x' = T(float(byte) * sT)
template <typename T, MxElem E>
struct MxCt {
  static constexpr int kGroup = kMxGroup;
  static constexpr bool kFp4 = E == MxElem::kFp4;

  // enc is 1 / sT, exact (a power of two in range), so x * enc equals CT's x / sT bit for bit.
  MOEQ_HOST_DEVICE MOEQ_INLINE static GroupScale from_code(int code) {
    float s = round_to<T>(exp2_int(code - 127));
    if (s == 0.0f) {
      s = 1.0f;
      code = 127;
    }
    return {exp2_int(127 - code), s, static_cast<uint8_t>(code), code != 255};
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE GroupScale from_amax(float amax) const {
    return from_code(mx_ct_code<T>(amax, E));
  }
  // A stored code quantizes with T(2^(code - 127)) (not usable when that is 0 or code is 255)
  // and decodes to q * 2^(code - 127), rounded once to the output dtype.
  MOEQ_HOST_DEVICE MOEQ_INLINE GroupScale from_stored(uint8_t b) const {
    const float s = round_to<T>(exp2_int(b - 127));
    return {exp2_int(127 - b), exp2_int(b - 127), b, b != 255 && s != 0.0f};
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE uint32_t encode(float x, const GroupScale& s) const {
    // `+ 0.0f` is CT's `scaled += zero_point` with the all-zero zero point llm-compressor
    // registers during calibration: it turns -0.0 into +0.0 (visible in an fp8 byte).
    const float v = round_to<T>(x * s.enc) + 0.0f;
    if constexpr (kFp4) {
      const float c = numerics::clamp(v, -kE2M1Max, kE2M1Max);
      return (c < 0.0f ? 8u : 0u) | e2m1_index_of(e2m1_round_even(abs_f(c)));
    } else {
      return numerics::fp8_encode<Float8_e4m3fn>(numerics::clamp(v, -kE4M3Max, kE4M3Max));
    }
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE float fake(float x, const GroupScale& s) const {
    if constexpr (kFp4) {
      const float c = numerics::clamp(round_to<T>(x * s.enc), -kE2M1Max, kE2M1Max);
      const float q = e2m1_round_even(abs_f(c));
      return round_to<T>((c < 0.0f ? -q : q) * s.dec);
    } else {
      return decode(encode(x, s), s);
    }
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE float decode(uint32_t code, const GroupScale& s) const {
    if constexpr (kFp4) {
      return round_to<T>(e2m1_value(code, true) * s.dec);
    } else {
      return round_to<T>(numerics::fp8_decode<Float8_e4m3fn>(static_cast<uint8_t>(code)) * s.dec);
    }
  }
};

// ModelOpt MXFP4QTensor / MXFP8QTensor (float32 arithmetic):
//   FP4: e = ceil(max(log2(amax / 6), -127)); code = e2m1 with ties down and the sign bit set
//        unless x / 2^e > 0 (so +0 is stored as code 8); x' = T(sign * m * 2^e)
//   FP8: e = clamp(ceil(log2(amax / 448)), -127, 127) (-127 for a zero amax);
//        byte = fp8(clamp(x * 2^-e, -448, 448)); x' = T(float(byte) * 2^e)
template <typename T, MxElem E>
struct MxMo {
  static constexpr int kGroup = kMxGroup;
  static constexpr bool kFp4 = E == MxElem::kFp4;

  // enc = 2^-e multiplies: for a power of two x * 2^-e equals ModelOpt's x / 2^e bit for bit.
  MOEQ_HOST_DEVICE MOEQ_INLINE static GroupScale from_code(int code) {
    return {exp2_int(127 - code), exp2_int(code - 127), static_cast<uint8_t>(code), code != 255};
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE GroupScale from_amax(float amax) const {
    int e;
    if constexpr (kFp4) {
      const float d = amax / kE2M1Max;
      const float l = d > 0.0f ? log2_rn(d) : -127.0f;
      e = static_cast<int>(ceil_f(l < -127.0f ? -127.0f : l));
    } else {
      const float d = amax / kE4M3Max;
      const float l = d > 0.0f ? log2_rn(d) : -127.0f;
      e = static_cast<int>(ceil_f(l));
      e = e < -127 ? -127 : (e > 127 ? 127 : e);
    }
    return from_code(e + 127);
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE GroupScale from_stored(uint8_t b) const { return from_code(b); }
  MOEQ_HOST_DEVICE MOEQ_INLINE uint32_t encode(float x, const GroupScale& s) const {
    if constexpr (kFp4) {
      const float v = x * s.enc;
      return (v > 0.0f ? 0u : 8u) | e2m1_index_of(e2m1_round_down(abs_f(v)));
    } else {
      return numerics::fp8_encode<Float8_e4m3fn>(numerics::clamp(x * s.enc, -kE4M3Max, kE4M3Max));
    }
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE float decode(uint32_t code, const GroupScale& s) const {
    if constexpr (kFp4) {
      return round_to<T>(e2m1_value(code, true) * s.dec);
    } else {
      return round_to<T>(numerics::fp8_decode<Float8_e4m3fn>(static_cast<uint8_t>(code)) * s.dec);
    }
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE float fake(float x, const GroupScale& s) const {
    if constexpr (kFp4) {
      const float v = x * s.enc;
      const float q = e2m1_round_down(abs_f(v));
      return round_to<T>((v > 0.0f ? q : -q) * s.dec);  // zeros carry the sign bit: -0.0
    } else {
      return decode(encode(x, s), s);
    }
  }
};

// ---- the NVFP4 FP8 block-scale sweep
// -------------------------------------------------------------

// The 126 positive finite FP8 E4M3 values are the bytes 1..126; candidate k is byte k + 1.
constexpr int kFp8Candidates = 126;

// Squared error of one block of |w| values `a[0..n)` under candidate k, summed in element order
// in float32.
//   ModelOpt (fp8_scale_sweep): c = fp8(k) / 448, scale = c * global_amax / 6 (1 when zero),
//     error of |w| - m * scale with m the ties-to-even E2M1 magnitude of |w| / scale.
//   compressed-tensors convention: scale = fp8(k) / global_scale, |w| / scale clamped to 6.
MOEQ_HOST_DEVICE MOEQ_INLINE float nvfp4_mo_candidate_scale(int k, float global_amax) {
  const float c = numerics::fp8_decode<Float8_e4m3fn>(static_cast<uint8_t>(k + 1)) / 448.0f;
  const float scale = c * global_amax / 6.0f;
  return scale == 0.0f ? 1.0f : scale;
}
MOEQ_HOST_DEVICE MOEQ_INLINE float nvfp4_mo_candidate_amax(int k, float global_amax) {
  return global_amax * (numerics::fp8_decode<Float8_e4m3fn>(static_cast<uint8_t>(k + 1)) / 448.0f);
}
MOEQ_HOST_DEVICE MOEQ_INLINE float nvfp4_ct_candidate_scale(int k, float global_scale) {
  return numerics::fp8_decode<Float8_e4m3fn>(static_cast<uint8_t>(k + 1)) / global_scale;
}

template <bool kClamp>
MOEQ_HOST_DEVICE MOEQ_INLINE float nvfp4_block_sq_error(const float* a, int n, float scale) {
  float loss = 0.0f;
  for (int i = 0; i < n; ++i) {
    float v = a[i] / scale;
    if constexpr (kClamp) {
      v = v > kE2M1Max ? kE2M1Max : v;
    }
    const float diff = a[i] - e2m1_round_even(v) * scale;
    loss += diff * diff;
  }
  return loss;
}

// Index (0..125) of the candidate with the smallest error; the first one on ties.
template <bool kModelOpt>
MOEQ_HOST_DEVICE MOEQ_INLINE int nvfp4_sweep_block(const float* a, int n, float global) {
  int best = 0;
  float best_loss = infinity_f();
  for (int k = 0; k < kFp8Candidates; ++k) {
    const float scale =
        kModelOpt ? nvfp4_mo_candidate_scale(k, global) : nvfp4_ct_candidate_scale(k, global);
    const float loss = nvfp4_block_sq_error<!kModelOpt>(a, n, scale);
    if (loss < best_loss) {
      best_loss = loss;
      best = k;
    }
  }
  return best;
}

}  // namespace moeq::kernels::fp4
