// The per-group (and per-item) work of the FP4 / MX kernels, written once for the CPU references
// and the CUDA kernels: the CPU loops and the generic CUDA kernel call these functions as they
// are; the vectorized CUDA kernels load and store differently but use the same scheme methods.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "common/fp4_numerics.h"
#include "common/fp4_problem.h"

namespace moeq::kernels::fp4 {

template <typename T>
struct Tag {
  using type = T;
};

template <typename F>
void visit_dtype(DType d, F&& f) {
  switch (d) {
    case DType::kFloat32:
      f(Tag<float>{});
      break;
    case DType::kBFloat16:
      f(Tag<BFloat16>{});
      break;
    case DType::kFloat16:
      f(Tag<Half>{});
      break;
  }
}

template <typename T, typename F>
void visit_scheme(Scheme s, F&& f) {
  switch (s) {
    case Scheme::kNvfp4Ct:
      f(Tag<Nvfp4Ct<T>>{});
      break;
    case Scheme::kNvfp4Mo:
      f(Tag<Nvfp4Mo<T>>{});
      break;
    case Scheme::kMxfp4Ct:
      f(Tag<MxCt<T, MxElem::kFp4>>{});
      break;
    case Scheme::kMxfp4Mo:
      f(Tag<MxMo<T, MxElem::kFp4>>{});
      break;
    case Scheme::kMxfp8Ct:
      f(Tag<MxCt<T, MxElem::kFp8>>{});
      break;
    case Scheme::kMxfp8Mo:
      f(Tag<MxMo<T, MxElem::kFp8>>{});
      break;
  }
}

template <typename S>
inline constexpr bool kHasGlobal =
    std::is_same_v<S, Nvfp4Ct<float>> || std::is_same_v<S, Nvfp4Ct<BFloat16>> ||
    std::is_same_v<S, Nvfp4Ct<Half>> || std::is_same_v<S, Nvfp4Mo<float>> ||
    std::is_same_v<S, Nvfp4Mo<BFloat16>> || std::is_same_v<S, Nvfp4Mo<Half>>;

// The scheme of matrix b; false (and reported) when its global scale is not finite and positive.
template <typename S>
MOEQ_HOST_DEVICE MOEQ_INLINE bool make_scheme(const GroupProblem& p, int64_t b, S* s) {
  if constexpr (kHasGlobal<S>) {
    const float g = p.global[b * p.global_stride];
    s->global = g;
    if (!(numerics::is_finite(g) && g > 0.0f)) {
      report(&p.status->global, static_cast<unsigned long long>(b));
      return false;
    }
  }
  return true;
}

template <typename T>
MOEQ_HOST_DEVICE MOEQ_INLINE float load_as_float(const void* base, int64_t offset) {
  return static_cast<float>(static_cast<const T*>(base)[offset]);
}
template <typename T>
MOEQ_HOST_DEVICE MOEQ_INLINE void store_from_float(void* base, int64_t offset, float v) {
  static_cast<T*>(base)[offset] = T(v);
}

// One group (matrix b, row r, group g) of a GroupProblem, in the problem's mode.
template <typename S, typename T>
MOEQ_HOST_DEVICE void process_group(
    const GroupProblem& p, const S& s, int64_t b, int64_t r, int64_t g) {
  constexpr int G = S::kGroup;
  const MatrixLayout& L = p.x;
  const int64_t c0 = g * G;
  const int n = static_cast<int>(L.cols - c0 < G ? L.cols - c0 : G);
  const int64_t logical_row = b * L.rows + r;
  const int64_t sidx = logical_row * p.groups() + g;
  const int64_t code_row = logical_row * p.code_cols();

  if (p.mode == Mode::kDequantize) {
    const GroupScale sc = s.from_stored(p.scales[sidx]);
    if (!numerics::is_finite(sc.dec)) {
      report(&p.status->scale, static_cast<unsigned long long>(sidx));
      return;
    }
    const int64_t base = L.batch_offset(b) + r * L.row_stride;
    for (int i = 0; i < n; ++i) {
      const int64_t c = c0 + i;
      uint32_t code;
      if constexpr (S::kFp4) {
        const uint8_t byte = p.codes[code_row + c / 2];
        code = (c & 1) ? (byte >> 4) : (byte & 15u);
      } else {
        code = p.codes[code_row + c];
      }
      store_from_float<T>(p.x_data, base + c * L.col_stride, s.decode(code, sc));
    }
    return;
  }

  float v[G];
  const int64_t base = L.batch_offset(b) + r * L.row_stride;
  float amax = 0.0f;
  bool finite = true;
  for (int i = 0; i < n; ++i) {
    v[i] = load_as_float<T>(p.x_data, base + (c0 + i) * L.col_stride);
    if (!numerics::is_finite(v[i])) {
      if (finite) {
        report(&p.status->input, static_cast<unsigned long long>(logical_row * L.cols + c0 + i));
      }
      finite = false;
    }
    const float a = abs_f(v[i]);
    amax = a > amax ? a : amax;
  }
  if (!finite) {
    return;
  }

  GroupScale sc;
  if (p.mode == Mode::kFake || p.mode == Mode::kQuantize) {
    sc = s.from_amax(amax);
    if (p.mode == Mode::kQuantize) {
      p.scales[sidx] = sc.stored;
    }
  } else {
    sc = s.from_stored(p.scales[sidx]);
  }
  if (!sc.valid) {
    report(&p.status->scale, static_cast<unsigned long long>(sidx));
    return;
  }

  if (p.mode == Mode::kFake || p.mode == Mode::kFakeGiven) {
    const int64_t obase = p.out.batch_offset(b) + r * p.out.row_stride;
    for (int i = 0; i < n; ++i) {
      store_from_float<T>(p.out_data, obase + (c0 + i) * p.out.col_stride, s.fake(v[i], sc));
    }
    return;
  }
  if constexpr (S::kFp4) {
    for (int i = 0; i < n; i += 2) {
      const uint32_t lo = s.encode(v[i], sc);
      const uint32_t hi = i + 1 < n ? s.encode(v[i + 1], sc) : 0u;
      p.codes[code_row + (c0 + i) / 2] = pack_nibbles(lo, hi);
    }
  } else {
    for (int i = 0; i < n; ++i) {
      p.codes[code_row + c0 + i] = static_cast<uint8_t>(s.encode(v[i], sc));
    }
  }
}

// Item i of a ScaleProblem.
template <typename T>
MOEQ_HOST_DEVICE void process_scale_item(const ScaleProblem& p, int64_t i) {
  const float amax = load_as_float<T>(p.amax, i);
  if (!(numerics::is_finite(amax) && amax >= 0.0f)) {
    report(&p.status->input, static_cast<unsigned long long>(i));
    return;
  }
  float global = 0.0f;
  const bool nv = p.rule == ScaleRule::kNvfp4Ct || p.rule == ScaleRule::kNvfp4Mo ||
                  p.rule == ScaleRule::kNvfp4MoStatic;
  if (nv) {
    const int64_t b = i / p.per_batch;
    global = p.global[b * p.global_stride];
    const bool ok = numerics::is_finite(global) &&
                    (p.rule == ScaleRule::kNvfp4MoStatic ? global >= 0.0f : global > 0.0f);
    if (!ok) {
      report(&p.status->global, static_cast<unsigned long long>(b));
      return;
    }
  }
  GroupScale sc{};
  switch (p.rule) {
    case ScaleRule::kNvfp4Ct:
      sc = Nvfp4Ct<T>{global}.from_amax(amax);
      break;
    case ScaleRule::kNvfp4Mo:
      sc = Nvfp4Mo<T>{global}.from_amax(amax);
      break;
    case ScaleRule::kNvfp4MoStatic:
      sc = {1.0f, 1.0f, nvfp4_mo_static_block_scale(amax, global), true};
      break;
    case ScaleRule::kMxfp4Ct:
      sc = MxCt<T, MxElem::kFp4>{}.from_amax(amax);
      break;
    case ScaleRule::kMxfp4Mo:
      sc = MxMo<T, MxElem::kFp4>{}.from_amax(amax);
      break;
    case ScaleRule::kMxfp8Ct:
      sc = MxCt<T, MxElem::kFp8>{}.from_amax(amax);
      break;
    case ScaleRule::kMxfp8Mo:
      sc = MxMo<T, MxElem::kFp8>{}.from_amax(amax);
      break;
  }
  if (!sc.valid) {
    report(&p.status->scale, static_cast<unsigned long long>(i));
  }
  p.out[i] = sc.stored;
}

// Item i of a GlobalScaleProblem.
template <typename T>
MOEQ_HOST_DEVICE void process_global_item(const GlobalScaleProblem& p, int64_t i) {
  const float amax = load_as_float<T>(p.amax, i);
  if (!(numerics::is_finite(amax) && amax >= 0.0f)) {
    report(&p.status->input, static_cast<unsigned long long>(i));
    p.out[i] = 1.0f;
    return;
  }
  p.out[i] = p.modelopt ? nvfp4_mo_global_scale(amax) : nvfp4_ct_global_scale<T>(amax);
}

// Block (b, r, g) of a SweepProblem.
template <typename T>
MOEQ_HOST_DEVICE void process_sweep_block(const SweepProblem& p, int64_t b, int64_t r, int64_t g) {
  const MatrixLayout& L = p.x;
  const int64_t c0 = g * kNvfp4Group;
  const int n = static_cast<int>(L.cols - c0 < kNvfp4Group ? L.cols - c0 : kNvfp4Group);
  const int64_t logical_row = b * L.rows + r;
  const int64_t groups = (L.cols + kNvfp4Group - 1) / kNvfp4Group;
  const int64_t oidx = logical_row * groups + g;
  const float global = p.global[b * p.global_stride];
  if (!(numerics::is_finite(global) && (p.modelopt ? global >= 0.0f : global > 0.0f))) {
    report(&p.status->global, static_cast<unsigned long long>(b));
    return;
  }
  float a[kNvfp4Group];
  const int64_t base = L.batch_offset(b) + r * L.row_stride;
  for (int i = 0; i < n; ++i) {
    const float v = load_as_float<T>(p.x_data, base + (c0 + i) * L.col_stride);
    if (!numerics::is_finite(v)) {
      report(&p.status->input, static_cast<unsigned long long>(logical_row * L.cols + c0 + i));
      return;
    }
    a[i] = abs_f(v);
  }
  if (p.modelopt) {
    const int k = nvfp4_sweep_block<true>(a, n, global);
    const float best_amax = nvfp4_mo_candidate_amax(k, global);
    p.amax[oidx] = best_amax;
    p.scales[oidx] = nvfp4_mo_static_block_scale(best_amax, global);
  } else {
    const int k = nvfp4_sweep_block<false>(a, n, global);
    const auto byte = static_cast<uint8_t>(k + 1);
    p.scales[oidx] = byte;
    p.amax[oidx] = 6.0f * numerics::fp8_decode<Float8_e4m3fn>(byte) / global;
  }
}

// Row i (one group of 32) of a SourceMxfp4Problem: transformers' GPT-OSS dequantization,
// out = T(lut[code] * 2^(scale - 127)) with lut[8] = -0.0; scale 255 (NaN in E8M0) is reported.
template <typename T>
MOEQ_HOST_DEVICE void process_source_row(const SourceMxfp4Problem& p, int64_t i) {
  const uint8_t code = p.scales[i];
  if (code == 255) {
    report(&p.status->scale, static_cast<unsigned long long>(i));
    return;
  }
  const float scale = exp2_int(static_cast<int>(code) - 127);
  const uint8_t* blk = p.blocks + i * 16;
  T* out = static_cast<T*>(p.out) + i * 32;
  for (int j = 0; j < 16; ++j) {
    const uint32_t byte = blk[j];
    out[2 * j] = T(e2m1_value(byte & 15u, true) * scale);
    out[2 * j + 1] = T(e2m1_value(byte >> 4, true) * scale);
  }
}

}  // namespace moeq::kernels::fp4
