// Per-element formulas of the integer and FP8 quantizers, shared by the CPU references and the
// CUDA kernels. Each emulates compressed-tensors 0.20.0's torch code op by op, in the dtypes torch
// would use: X is the input's dtype, S the scale's, C = promote(X, S) the dtype of x / scale.
//
//   fake / quantize (forward_helpers.py: _quantize_dequantize, _quantize)
//     t = x / scale                     in C
//     t = t + zero_point.to(X)          in C        (when a zero point is given)
//     q = round(clamp(t, qmin, qmax))   in C        (int: round half to even)
//     q = clamp(t, -fmax, fmax).to(F8)              (fp8: the cast rounds half to even)
//   dequantize (_dequantize)
//     d = q.to(S); d = d - zero_point.to(S); d = d * scale     in S, then .to(out dtype)
//
// compressed-tensors registers a zero point for symmetric schemes too (initialize.py,
// force_zero_point) and its forward adds it: adding +0 turns a -0.0 quotient into +0.0, so the
// zero point is optional for both kinds and callers pass zeros to reproduce that bit for bit.
//
//   qparams (utils/helpers.py: calculate_qparams), in the scale's dtype M
//     min = min(min, 0); max = max(max, 0); range = (qmax - qmin).to(M)
//     symmetric:  scale = max(|min|, |max|) / (range / 2)
//     asymmetric: scale = (max - min) / range; zp = clamp(qmin - min / scale, qmin, qmax)
//     scale == 0 -> eps(M); zp -> round(clamp(zp, -128, 127)).to(int8), NaN -> 0
#pragma once

#include "common/geometry.h"
#include "common/numerics.h"

namespace moeq::kernels::quant {

using namespace numerics;

// ---- one block's parameters ---------------------------------------------------------------------

// What the per-element formulas need of a block's scale and zero point, computed once per block:
// the scale, its reciprocal (for the device fast path of quotient), and the zero point converted
// to X (for the add) and to S (for the subtract).
struct Prepared {
  float s;
  float r;
  float zx;
  float zs;
};

template <typename X, typename S>
MOEQ_HOST_DEVICE MOEQ_INLINE Prepared prepare(float s, float zp) {
  return {s, 1.0f / s, round_to<X>(zp), round_to<S>(zp)};
}

// round_to<C>(x / s): one torch division in dtype C.
//
// The CPU reference divides. On the device, when C is bfloat16 or float16, t = x * (1/s) is used
// instead where that provably rounds to the same C value: |t - x/s| <= 2 float ulps (1/s and the
// product each round once), so if no C rounding boundary (a midpoint between two C values, at a
// fixed bit pattern of the float) lies within 3 ulps of t, x/s and float(x/s) round to C like t
// does. Near a midpoint, out of the normal range, or for NaN/Inf the exact division runs.
template <typename C>
MOEQ_HOST_DEVICE MOEQ_INLINE float quotient(float x, const Prepared& p) {
#if defined(__CUDA_ARCH__)
  if constexpr (std::is_same_v<C, BFloat16> || std::is_same_v<C, Half>) {
    const float t = x * p.r;
    const uint32_t bits = __float_as_uint(t);
    const uint32_t exp = (bits >> 23) & 0xFFu;
    bool fast;
    if constexpr (std::is_same_v<C, BFloat16>) {
      // 2^-100 <= |t| < 2^101; the low 16 bits not within 3 of the midpoint 0x8000.
      fast = exp - 27u <= 200u && (bits & 0xFFFFu) - 0x7FFDu > 6u;
    } else {
      // fp16 normal range without its top binade: 2^-14 <= |t| < 2^15; midpoint 0x1000.
      fast = exp - 113u <= 28u && (bits & 0x1FFFu) - 0x0FFDu > 6u;
    }
    // x == 0: x * (1/s) is the exact signed zero when 1/s is finite.
    fast |= x == 0.0f && fabsf(p.r) < INFINITY;
    return round_to<C>(fast ? t : x / p.s);
  }
#endif
  return round_to<C>(x / p.s);
}

// ---- integer -----------------------------------------------------------------------------------

// The integer code (an integral float in [qmin, qmax], or NaN for a NaN input).
template <typename X, typename S>
MOEQ_HOST_DEVICE MOEQ_INLINE float int_code(
    float x, const Prepared& p, bool has_zp, float qmin, float qmax) {
  using C = promote_t<X, S>;
  float t = quotient<C>(x, p);
  if (has_zp) {
    t = round_to<C>(t + p.zx);
  }
  return round_half_even(clamp(t, qmin, qmax));
}

// Also the fp8 dequantization (q is then the fp8 value).
template <typename S>
MOEQ_HOST_DEVICE MOEQ_INLINE float int_dequant(float q, const Prepared& p, bool has_zp) {
  float d = round_to<S>(q);
  if (has_zp) {
    d = round_to<S>(d - p.zs);
  }
  return round_to<S>(d * p.s);
}

// The stored int8 code. NaN (only from a NaN input; observers reject those) becomes 0, as torch's
// float -> int8 cast gives on x86.
MOEQ_HOST_DEVICE MOEQ_INLINE int8_t int_code_to_int8(float q) {
  return is_nan(q) ? int8_t{0} : static_cast<int8_t>(static_cast<int>(q));
}

// ---- fp8 ---------------------------------------------------------------------------------------

// The fp8 value of x / s (+ zero point), saturated to +-fmax before the cast (torch.clamp then
// .to(F8)).
template <typename X, typename S, typename F8>
MOEQ_HOST_DEVICE MOEQ_INLINE float fp8_value(float x, const Prepared& p, bool has_zp) {
  using C = promote_t<X, S>;
  float t = quotient<C>(x, p);
  if (has_zp) {
    t = round_to<C>(t + p.zx);
  }
  return fp8_round<F8>(clamp(t, -fp8_max<F8>(), fp8_max<F8>()));
}

// ---- qparams -----------------------------------------------------------------------------------

struct QParams {
  float scale;
  float zero_point;  // already rounded and clamped to int8 (0 when symmetric)
};

// compressed-tensors' calculate_qparams for one block, computed in dtype M (the scale's dtype).
template <typename M>
MOEQ_HOST_DEVICE MOEQ_INLINE QParams
int_qparams(float mn, float mx, float qmin, float qmax, bool symmetric) {
  mn = minimum(round_to<M>(mn), 0.0f);
  mx = maximum(round_to<M>(mx), 0.0f);
  const float range = round_to<M>(qmax - qmin);
  QParams p{0.0f, 0.0f};
  float zp = 0.0f;
  if (symmetric) {
    const float amax = maximum(fabsf(mn), fabsf(mx));
    p.scale = round_to<M>(amax / round_to<M>(range / 2.0f));
  } else {
    p.scale = round_to<M>(round_to<M>(mx - mn) / range);
    zp = clamp(round_to<M>(qmin - round_to<M>(mn / p.scale)), qmin, qmax);
  }
  if (p.scale == 0.0f) {
    p.scale = eps<M>();
  }
  p.zero_point = is_nan(zp) ? 0.0f : round_half_even(clamp(zp, -128.0f, 127.0f));
  return p;
}

// The fp8 scale amax / fmax in dtype M (calculate_qparams with qmin, qmax = -fmax, fmax).
template <typename M, typename F8>
MOEQ_HOST_DEVICE MOEQ_INLINE float fp8_scale(float amax) {
  return int_qparams<M>(-amax, amax, -fp8_max<F8>(), fp8_max<F8>(), true).scale;
}

// ModelOpt's export scale (TensorQuantizer.export_amax, then get_scaling_factor):
//   amax: 0 or NaN -> maxbound, +-Inf -> +-finfo(A).max, clamp(tiny(A), max(A)); float(amax) /
//   maxbound. ModelOpt divides a float32 tensor by a Python float: torch does that as a true
//   division on CPU tensors and as a multiplication by the float reciprocal on CUDA tensors;
//   `reciprocal` picks the latter.
template <typename A>
MOEQ_HOST_DEVICE MOEQ_INLINE float modelopt_scale(float amax, float maxbound, bool reciprocal) {
  constexpr float kTiny = std::is_same_v<A, Half>       ? 6.103515625e-05f
                          : std::is_same_v<A, BFloat16> ? 1.1754943508222875e-38f
                                                        : 1.1754943508222875e-38f;
  constexpr float kMax = std::is_same_v<A, Half>       ? 65504.0f
                         : std::is_same_v<A, BFloat16> ? 3.3895313892515355e+38f
                                                       : 3.4028234663852886e+38f;
  float a = amax;
  if (a == 0.0f || is_nan(a)) {
    a = round_to<A>(maxbound);
  }
  a = clamp(a, kTiny, kMax);
  return reciprocal ? a * (1.0f / maxbound) : a / maxbound;
}

// ---- one element of an elementwise op
// ------------------------------------------------------------

struct IntFormat {};  // Kind: integer codes; otherwise Kind is the fp8 type

// Kind: IntFormat or an fp8 type; In/Out: the element types read and written; S: the scale's.
// prepare() once per block, then apply() per element.
template <typename Kind, typename In, typename Out, typename S, Direction D>
struct ElementOp {
  float qmin;
  float qmax;
  bool has_zero_point;

  MOEQ_HOST_DEVICE MOEQ_INLINE Prepared prepare(float s, float zp) const {
    if constexpr (D == Direction::kDequantize) {
      return quant::prepare<Out, S>(s, zp);
    } else {
      return quant::prepare<In, S>(s, zp);
    }
  }

  MOEQ_HOST_DEVICE MOEQ_INLINE Out apply(In x, const Prepared& p) const {
    constexpr bool kInt = std::is_same_v<Kind, IntFormat>;
    float v;
    if constexpr (kIsFloat8<In>) {
      v = fp8_to_float<In>(x.x);
    } else {
      v = to_float(x);
    }
    if constexpr (D == Direction::kFake) {
      static_assert(std::is_same_v<In, Out>);
      if constexpr (kInt) {
        const float q = int_code<In, S>(v, p, has_zero_point, qmin, qmax);
        return from_float<Out>(int_dequant<S>(q, p, has_zero_point));
      } else {
        const float q = fp8_value<In, S, Kind>(v, p, has_zero_point);
        return from_float<Out>(int_dequant<S>(q, p, has_zero_point));
      }
    } else if constexpr (D == Direction::kQuantize) {
      if constexpr (kInt) {
        static_assert(std::is_same_v<Out, int8_t>);
        return int_code_to_int8(int_code<In, S>(v, p, has_zero_point, qmin, qmax));
      } else {
        static_assert(std::is_same_v<Out, Kind>);
        return Out(fp8_bits<Kind>(fp8_value<In, S, Kind>(v, p, has_zero_point)), Out::from_bits());
      }
    } else {
      return from_float<Out>(int_dequant<S>(v, p, has_zero_point));
    }
  }
};

}  // namespace moeq::kernels::quant
