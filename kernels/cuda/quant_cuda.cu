// CUDA kernels of the integer / FP8 quantizer ops: reductions, packing, small grids, and the
// entry points. Every element goes through the formulas of common/int_fp8.h (compiled with
// --fmad=false, no fast math), so results equal the CPU references bit for bit.
#include "cuda/quant_common.cuh"

#include "common/pack.h"

namespace moeq::kernels::cuda {
namespace {

using namespace detail;

// ---- block reductions --------------------------------------------------------------------------

// Float atomics that order like floats (no NaN reaches them: the caller rejects non-finite x).
__device__ MOEQ_INLINE void atomic_max_float(float* addr, float v) {
  if (!signbit(v)) {
    atomicMax(reinterpret_cast<int*>(addr), __float_as_int(v));
  } else {
    atomicMin(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
  }
}
__device__ MOEQ_INLINE void atomic_min_float(float* addr, float v) {
  if (!signbit(v)) {
    atomicMin(reinterpret_cast<int*>(addr), __float_as_int(v));
  } else {
    atomicMax(reinterpret_cast<unsigned int*>(addr), __float_as_uint(v));
  }
}

// Ordered keys of floats: |x| as its bits (non-negative floats order like their int bits; NaN
// and Inf above every finite value), and for min / max the float itself (-0 canonicalized to +0).
struct Acc {
  uint32_t amax;  // bits of max |x|
  float lo;
  float hi;
  uint32_t bad;  // max exponent field seen: 0x7F800000 marks a NaN or an Inf
};

template <bool kAmax, bool kMinMax>
__device__ MOEQ_INLINE void accumulate(Acc& a, float e) {
  const uint32_t bits = __float_as_uint(e);
  if constexpr (kAmax) {
    a.amax = max(a.amax, bits & 0x7FFFFFFFu);  // NaN / Inf win: caught via a.amax
  }
  if constexpr (kMinMax) {
    a.bad = max(a.bad, bits & 0x7F800000u);
    const float c = e + 0.0f;  // -0 -> +0, as the CPU reference
    a.lo = fminf(a.lo, c);
    a.hi = fmaxf(a.hi, c);
  }
}

template <bool kAmax, bool kMinMax>
__device__ MOEQ_INLINE void merge(Acc& a, const Acc& b) {
  a.amax = max(a.amax, b.amax);
  a.lo = fminf(a.lo, b.lo);
  a.hi = fmaxf(a.hi, b.hi);
  a.bad = max(a.bad, b.bad);
}

constexpr Acc kEmpty{0u, INFINITY, -INFINITY, 0u};

template <bool kAmax, bool kMinMax>
__device__ MOEQ_INLINE void emit(
    const Acc& a, float* amax, float* mn, float* mx, int64_t off_a, int64_t off_m, int* nonfinite) {
  bool bad = false;
  if constexpr (kAmax) {
    bad |= a.amax >= 0x7F800000u;
    atomicMax(reinterpret_cast<unsigned int*>(amax + off_a), a.amax);
  }
  if constexpr (kMinMax) {
    bad |= a.bad == 0x7F800000u;
    atomic_min_float(mn + off_m, a.lo);
    atomic_max_float(mx + off_m, a.hi);
  }
  if (bad) {
    *nonfinite = 1;
  }
}

// kUniform: all V elements of a thread share one inner block, and `width` aligned lanes share it
// too (reduced with shuffles before one atomic). Otherwise the elements may belong to different
// inner blocks: one accumulator per element, one atomic per distinct block.
template <typename T, int V, bool kAmax, bool kMinMax, bool kUniform>
__global__ void __launch_bounds__(kThreads) reduce_kernel(const T* __restrict__ in,
                                                          Geom g,
                                                          int width,
                                                          float* __restrict__ amax,
                                                          float* __restrict__ mn,
                                                          float* __restrict__ mx,
                                                          int* __restrict__ nonfinite) {
  const int64_t i0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  const bool active = i0 < g.I;
  const int lane = threadIdx.x & 31;
  constexpr int kN = kUniform ? 1 : V;  // accumulators
  int64_t gi[kN];
  {
    const int64_t start = active ? i0 : 0;
    int64_t q = start / g.bI;
    int64_t r = start - q * g.bI;
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      gi[k] = q;
      if (++r == g.bI) {
        r = 0;
        ++q;
      }
    }
  }
  const int64_t o_begin = static_cast<int64_t>(blockIdx.y) * g.oc;
  const int64_t o_end = o_begin + g.oc < g.O ? o_begin + g.oc : g.O;
  for (int64_t b = blockIdx.z; b < g.B; b += gridDim.z) {
    const T* x = in + b * g.in_b + (active ? i0 : 0) * g.in_i;
    int64_t go = o_begin / g.bO;
    int64_t ro = o_begin - go * g.bO;
    Acc acc[kN];
#pragma unroll
    for (int k = 0; k < kN; ++k) {
      acc[k] = kEmpty;
    }
    for (int64_t o = o_begin; o < o_end; o += kUnroll) {
      Vec<T, V> xv[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (active && o + u < o_end) {
          xv[u] = load_vec<V>(x + (o + u) * g.in_o, g.in_i);
        }
      }
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        if (o + u < o_end) {
          if (active) {
#pragma unroll
            for (int k = 0; k < V; ++k) {
              accumulate<kAmax, kMinMax>(acc[kUniform ? 0 : k], to_float(xv[u].v[k]));
            }
          }
          if (++ro == g.bO || o + u + 1 == o_end) {  // uniform across the warp
            if constexpr (kUniform) {
              Acc a = acc[0];
              for (int off = width >> 1; off > 0; off >>= 1) {
                Acc other;
                other.amax = __shfl_xor_sync(0xffffffffu, a.amax, off);
                other.lo = __shfl_xor_sync(0xffffffffu, a.lo, off);
                other.hi = __shfl_xor_sync(0xffffffffu, a.hi, off);
                other.bad = __shfl_xor_sync(0xffffffffu, a.bad, off);
                merge<kAmax, kMinMax>(a, other);
              }
              if (active && (width == 0 || lane % width == 0)) {
                emit<kAmax, kMinMax>(a, amax, mn, mx, b * g.s_b + go * g.s_o + gi[0] * g.s_i,
                                     b * g.z_b + go * g.z_o + gi[0] * g.z_i, nonfinite);
              }
              acc[0] = kEmpty;
            } else if (active) {
              Acc a = acc[0];
#pragma unroll
              for (int k = 0; k < V; ++k) {
                if (k > 0) {
                  merge<kAmax, kMinMax>(a, acc[k]);
                }
                if (k == V - 1 || gi[k + 1] != gi[k]) {
                  emit<kAmax, kMinMax>(a, amax, mn, mx, b * g.s_b + go * g.s_o + gi[k] * g.s_i,
                                       b * g.z_b + go * g.z_o + gi[k] * g.z_i, nonfinite);
                  if (k < V - 1) {
                    a = acc[k + 1];
                  }
                }
                acc[k] = kEmpty;
              }
            }
            if (ro == g.bO) {
              ro = 0;
              ++go;
            }
          }
        }
      }
    }
  }
}

template <typename T, bool kAmax, bool kMinMax>
void launch_reduce(
    const T* in, Geom g, float* amax, float* mn, float* mx, int* nonfinite, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  const bool vec = g.in_i == 1 && g.I % V == 0 && g.in_o % V == 0 && g.in_b % V == 0 &&
                   aligned(in, sizeof(T) * V);
  const int v = vec ? V : 1;
  // Flush as rarely as possible: a block's outer chunk covers whole outer blocks when it can.
  const Launch l = plan(g, v, 8, std::max<int64_t>(g.bO, kUnroll));
  // Lanes that share one inner block reduce with shuffles first (width lanes, aligned).
  const bool uniform = g.bI % v == 0;
  int width = 0;
  if (uniform) {
    const int64_t lanes = g.bI / v;
    if (g.bI % (32 * v) == 0) {
      width = 32;
    } else if (lanes <= 32 && (lanes & (lanes - 1)) == 0) {
      width = static_cast<int>(lanes);
    }
  }
  if (vec && uniform) {
    reduce_kernel<T, V, kAmax, kMinMax, true>
        <<<l.grid, l.block, 0, stream>>>(in, g, width, amax, mn, mx, nonfinite);
  } else if (vec) {
    reduce_kernel<T, V, kAmax, kMinMax, false>
        <<<l.grid, l.block, 0, stream>>>(in, g, width, amax, mn, mx, nonfinite);
  } else {
    reduce_kernel<T, 1, kAmax, kMinMax, true>
        <<<l.grid, l.block, 0, stream>>>(in, g, width, amax, mn, mx, nonfinite);
  }
  check(cudaGetLastError(), "block reduction launch");
}

// ---- quantize + pack (compressed-tensors pack-quantized) ---------------------------------------

// One thread packs one 32-element chunk of a row (all in one inner block) into kBits words.
template <int kBits, typename X, typename S>
__global__ void __launch_bounds__(kThreads) quantize_pack_kernel(const X* __restrict__ in,
                                                                 const S* __restrict__ scale,
                                                                 const float* __restrict__ zp,
                                                                 Geom g,
                                                                 float qmin,
                                                                 float qmax,
                                                                 uint32_t* __restrict__ out,
                                                                 int64_t words_per_row) {
  constexpr int kPerLoad = 16 / sizeof(X);
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t i0 = chunk * pack::kChunk;
  if (i0 >= g.I) {
    return;
  }
  const int64_t gi = i0 / g.bI;
  const bool has_zp = zp != nullptr;
  const int64_t o_begin = static_cast<int64_t>(blockIdx.y) * g.oc;
  const int64_t o_end = o_begin + g.oc < g.O ? o_begin + g.oc : g.O;
  for (int64_t b = blockIdx.z; b < g.B; b += gridDim.z) {
    for (int64_t o = o_begin; o < o_end; ++o) {
      const int64_t go = o / g.bO;
      const quant::Prepared p =
          quant::prepare<X, S>(to_float(scale[b * g.s_b + go * g.s_o + gi * g.s_i]),
                               has_zp ? zp[b * g.z_b + go * g.z_o + gi * g.z_i] : 0.0f);
      const X* x = in + b * g.in_b + o * g.in_o + i0;
      uint32_t u[pack::kChunk];
#pragma unroll
      for (int j = 0; j < pack::kChunk / kPerLoad; ++j) {
        const Vec<X, kPerLoad> xv = *reinterpret_cast<const Vec<X, kPerLoad>*>(x + j * kPerLoad);
#pragma unroll
        for (int k = 0; k < kPerLoad; ++k) {
          const float q = quant::int_code<X, S>(to_float(xv.v[k]), p, has_zp, qmin, qmax);
          u[j * kPerLoad + k] = pack::offset_code(quant::int_code_to_int8(q), kBits);
        }
      }
      Vec<uint32_t, kBits> w;
      pack::pack_chunk(u, pack::kChunk, kBits, w.v);
      uint32_t* y = out + (b * g.O + o) * words_per_row + chunk * kBits;
      *reinterpret_cast<Vec<uint32_t, kBits>*>(y) = w;
    }
  }
}

// ---- packing -----------------------------------------------------------------------------------

// codes [B, R, C] -> words [B, R, W]: one thread per 32-element chunk.
__global__ void __launch_bounds__(kThreads) pack_int_kernel(const int8_t* __restrict__ codes,
                                                            View3 v,
                                                            int bits,
                                                            int64_t words,
                                                            bool vec,
                                                            uint32_t* __restrict__ out) {
  const int64_t chunks = ceil_div(v.cols, pack::kChunk);
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= v.batch * v.rows * chunks) {
    return;
  }
  const int64_t chunk = t % chunks;
  const int64_t br = t / chunks;
  const int8_t* x = codes + (br / v.rows) * v.sb + (br % v.rows) * v.sr;
  const int64_t c0 = chunk * pack::kChunk;
  const int n = static_cast<int>(v.cols - c0 < pack::kChunk ? v.cols - c0 : pack::kChunk);
  uint32_t u[pack::kChunk];
  if (vec) {
    const Vec<int8_t, 16> a = *reinterpret_cast<const Vec<int8_t, 16>*>(x + c0);
    const Vec<int8_t, 16> c = *reinterpret_cast<const Vec<int8_t, 16>*>(x + c0 + 16);
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      u[i] = pack::offset_code(a.v[i], bits);
      u[16 + i] = pack::offset_code(c.v[i], bits);
    }
  } else {
    for (int i = 0; i < n; ++i) {
      u[i] = pack::offset_code(x[(c0 + i) * v.sc], bits);
    }
  }
  uint32_t w[8];
  pack::pack_chunk(u, n, bits, w);
  uint32_t* y = out + br * words;
  const int64_t w0 = chunk * bits;
  for (int j = 0; j < bits && w0 + j < words; ++j) {
    y[w0 + j] = w[j];
  }
}

// words [B, R, W] (strided) -> codes [B, R, cols] contiguous: one thread per 32-element chunk.
__global__ void __launch_bounds__(kThreads) unpack_int_kernel(const int32_t* __restrict__ words,
                                                              View3 v,
                                                              int bits,
                                                              int64_t cols,
                                                              bool vec,
                                                              int8_t* __restrict__ out) {
  const int64_t chunks = ceil_div(cols, pack::kChunk);
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= v.batch * v.rows * chunks) {
    return;
  }
  const int64_t chunk = t % chunks;
  const int64_t br = t / chunks;
  const int32_t* x = words + (br / v.rows) * v.sb + (br % v.rows) * v.sr;
  const int64_t w0 = chunk * bits;
  uint32_t w[8];
  for (int j = 0; j < bits; ++j) {
    w[j] = w0 + j < v.cols ? static_cast<uint32_t>(x[(w0 + j) * v.sc]) : 0u;
  }
  const int64_t c0 = chunk * pack::kChunk;
  int8_t* y = out + br * cols + c0;
  if (vec) {
    Vec<int8_t, 16> a, c;
#pragma unroll
    for (int i = 0; i < 16; ++i) {
      a.v[i] = pack::signed_code(pack::unpack_element(w, i, bits), bits);
      c.v[i] = pack::signed_code(pack::unpack_element(w, 16 + i, bits), bits);
    }
    *reinterpret_cast<Vec<int8_t, 16>*>(y) = a;
    *reinterpret_cast<Vec<int8_t, 16>*>(y + 16) = c;
  } else {
    const int n = static_cast<int>(cols - c0 < pack::kChunk ? cols - c0 : pack::kChunk);
    for (int i = 0; i < n; ++i) {
      y[i] = pack::signed_code(pack::unpack_element(w, i, bits), bits);
    }
  }
}

// codes [B, R, C] -> [B, R/2, C]: one thread per kN output bytes of a row.
template <int kN>
__global__ void __launch_bounds__(kThreads)
    pack_row_pairs_kernel(const int8_t* __restrict__ codes, View3 v, uint8_t* __restrict__ out) {
  const int64_t per_row = ceil_div(v.cols, kN);
  const int64_t half = v.rows / 2;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= v.batch * half * per_row) {
    return;
  }
  const int64_t c0 = (t % per_row) * kN;
  const int64_t bj = t / per_row;
  const int8_t* lo = codes + (bj / half) * v.sb + 2 * (bj % half) * v.sr;
  const int8_t* hi = lo + v.sr;
  uint8_t* y = out + bj * v.cols + c0;
  if constexpr (kN > 1) {
    const Vec<int8_t, kN> a = *reinterpret_cast<const Vec<int8_t, kN>*>(lo + c0);
    const Vec<int8_t, kN> c = *reinterpret_cast<const Vec<int8_t, kN>*>(hi + c0);
    Vec<uint8_t, kN> r;
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      r.v[i] = pack::pack_nibbles(a.v[i], c.v[i]);
    }
    *reinterpret_cast<Vec<uint8_t, kN>*>(y) = r;
  } else {
    *y = pack::pack_nibbles(lo[c0 * v.sc], hi[c0 * v.sc]);
  }
}

template <int kN>
__global__ void __launch_bounds__(kThreads)
    unpack_row_pairs_kernel(const uint8_t* __restrict__ packed, View3 v, int8_t* __restrict__ out) {
  const int64_t per_row = ceil_div(v.cols, kN);
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= v.batch * v.rows * per_row) {
    return;
  }
  const int64_t c0 = (t % per_row) * kN;
  const int64_t bj = t / per_row;
  const uint8_t* x = packed + (bj / v.rows) * v.sb + (bj % v.rows) * v.sr;
  int8_t* lo = out + 2 * bj * v.cols + c0;
  int8_t* hi = lo + v.cols;
  if constexpr (kN > 1) {
    const Vec<uint8_t, kN> a = *reinterpret_cast<const Vec<uint8_t, kN>*>(x + c0);
    Vec<int8_t, kN> l, h;
#pragma unroll
    for (int i = 0; i < kN; ++i) {
      l.v[i] = pack::low_nibble(a.v[i]);
      h.v[i] = pack::high_nibble(a.v[i]);
    }
    *reinterpret_cast<Vec<int8_t, kN>*>(lo) = l;
    *reinterpret_cast<Vec<int8_t, kN>*>(hi) = h;
  } else {
    const uint8_t e = x[c0 * v.sc];
    *lo = pack::low_nibble(e);
    *hi = pack::high_nibble(e);
  }
}

// ---- small grids
// ----------------------------------------------------------------------------------

template <typename F>
__global__ void __launch_bounds__(kThreads) flat_kernel(int64_t n, F f) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    f(i);
  }
}

template <typename F>
void launch_flat(int64_t n, F f, cudaStream_t stream) {
  const int64_t blocks = std::min<int64_t>(ceil_div(n, kThreads), 4096);
  flat_kernel<<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(n, f);
  check(cudaGetLastError(), "grid kernel launch");
}

template <typename M>
struct QParamsFn {
  const float* mn;
  const float* mx;
  float qmin, qmax;
  bool symmetric;
  M* scale;
  int8_t* zp;
  __device__ void operator()(int64_t i) const {
    const quant::QParams p = quant::int_qparams<M>(mn[i], mx[i], qmin, qmax, symmetric);
    scale[i] = from_float<M>(p.scale);
    zp[i] = static_cast<int8_t>(p.zero_point);
  }
};

template <typename M, typename F8>
struct Fp8ScaleFn {
  const float* amax;
  M* scale;
  __device__ void operator()(int64_t i) const {
    scale[i] = from_float<M>(quant::fp8_scale<M, F8>(amax[i]));
  }
};

template <typename A>
struct ModeloptScaleFn {
  const A* amax;
  float maxbound;
  bool reciprocal;
  float* scale;
  __device__ void operator()(int64_t i) const {
    scale[i] = quant::modelopt_scale<A>(to_float(amax[i]), maxbound, reciprocal);
  }
};

int64_t launch_blocks(int64_t work) {
  return ceil_div(work, kThreads);
}

}  // namespace

void quant_elementwise(const void* in,
                       void* out,
                       const void* scale,
                       const float* zero_point,
                       DType in_dtype,
                       DType out_dtype,
                       DType scale_dtype,
                       QuantKind kind,
                       Direction dir,
                       const ElementwiseArgs& a,
                       cudaStream_t stream) {
  switch (dir) {
    case Direction::kFake:
      quant_elementwise_fake(in, out, scale, zero_point, in_dtype, out_dtype, scale_dtype, kind, a,
                             stream);
      break;
    case Direction::kQuantize:
      quant_elementwise_quantize(in, out, scale, zero_point, in_dtype, out_dtype, scale_dtype, kind,
                                 a, stream);
      break;
    case Direction::kDequantize:
      quant_elementwise_dequantize(in, out, scale, zero_point, in_dtype, out_dtype, scale_dtype,
                                   kind, a, stream);
      break;
  }
}

bool quantize_pack_int(const void* in,
                       const void* scale,
                       const float* zero_point,
                       DType in_dtype,
                       DType scale_dtype,
                       const ElementwiseArgs& a,
                       int num_bits,
                       int32_t* out,
                       cudaStream_t stream) {
  if (num_bits != 4 && num_bits != 8) {
    return false;
  }
  Geom g = make_geom(a.in, a.in, a.block, a.scale, a.zero_point);
  const bool cols_inner = inner_is_cols(a.in) || a.in.rows == 1;
  if (!cols_inner || a.in.sc != 1 || g.I % pack::kChunk != 0 || g.bI % pack::kChunk != 0 ||
      g.in_o % 8 != 0 || g.in_b % 8 != 0 || !aligned(in, 16) || !aligned(out, 16)) {
    return false;
  }
  const int64_t words_per_row = g.I * num_bits / 32;
  bool launched = false;
  dispatch_float(in_dtype, [&](auto x_t) {
    using X = typename decltype(x_t)::type;
    dispatch_float(scale_dtype, [&](auto s_t) {
      using S = typename decltype(s_t)::type;
      const Launch l = plan(g, pack::kChunk, 16, 1);
      const auto* x = static_cast<const X*>(in);
      const auto* s = static_cast<const S*>(scale);
      auto* y = reinterpret_cast<uint32_t*>(out);
      if (num_bits == 4) {
        quantize_pack_kernel<4, X, S><<<l.grid, l.block, 0, stream>>>(
            x, s, a.has_zero_point ? zero_point : nullptr, g, a.qmin, a.qmax, y, words_per_row);
      } else {
        quantize_pack_kernel<8, X, S><<<l.grid, l.block, 0, stream>>>(
            x, s, a.has_zero_point ? zero_point : nullptr, g, a.qmin, a.qmax, y, words_per_row);
      }
      launched = true;
    });
  });
  check(cudaGetLastError(), "quantize_pack launch");
  return launched;
}

void block_reduce(
    const void* x, DType dtype, const ReduceArgs& a, int* nonfinite, cudaStream_t stream) {
  Geom g = make_geom(a.in, a.in, a.block, a.amax_strides, a.minmax_strides);
  dispatch_float(dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    const T* in = static_cast<const T*>(x);
    if (a.amax && a.min) {
      launch_reduce<T, true, true>(in, g, a.amax, a.min, a.max, nonfinite, stream);
    } else if (a.amax) {
      launch_reduce<T, true, false>(in, g, a.amax, nullptr, nullptr, nonfinite, stream);
    } else {
      launch_reduce<T, false, true>(in, g, nullptr, a.min, a.max, nonfinite, stream);
    }
  });
}

void int_qparams(const float* min,
                 const float* max,
                 int64_t n,
                 float qmin,
                 float qmax,
                 bool symmetric,
                 DType scale_dtype,
                 void* scale,
                 int8_t* zero_point,
                 cudaStream_t stream) {
  dispatch_float(scale_dtype, [&](auto t) {
    using M = typename decltype(t)::type;
    launch_flat(n,
                QParamsFn<M>{min, max, qmin, qmax, symmetric, static_cast<M*>(scale), zero_point},
                stream);
  });
}

void fp8_scale_from_amax(const float* amax,
                         int64_t n,
                         QuantKind fp8,
                         DType scale_dtype,
                         void* scale,
                         cudaStream_t stream) {
  dispatch_kind(fp8, [&](auto k) {
    using F8 = typename decltype(k)::type;
    if constexpr (!std::is_same_v<F8, quant::IntFormat>) {
      dispatch_float(scale_dtype, [&](auto t) {
        using M = typename decltype(t)::type;
        launch_flat(n, Fp8ScaleFn<M, F8>{amax, static_cast<M*>(scale)}, stream);
      });
    }
  });
}

void modelopt_scale_from_amax(const void* amax,
                              DType amax_dtype,
                              int64_t n,
                              float maxbound,
                              bool reciprocal,
                              float* scale,
                              cudaStream_t stream) {
  dispatch_float(amax_dtype, [&](auto t) {
    using A = typename decltype(t)::type;
    launch_flat(n, ModeloptScaleFn<A>{static_cast<const A*>(amax), maxbound, reciprocal, scale},
                stream);
  });
}

void pack_int(
    const int8_t* codes, const View3& v, int num_bits, int32_t* out, cudaStream_t stream) {
  const int64_t words = ceil_div(v.cols * num_bits, 32);
  const bool vec = v.sc == 1 && v.cols % pack::kChunk == 0 && v.sr % 16 == 0 && v.sb % 16 == 0 &&
                   aligned(codes, 16);
  const int64_t work = v.batch * v.rows * ceil_div(v.cols, pack::kChunk);
  pack_int_kernel<<<static_cast<unsigned>(launch_blocks(work)), kThreads, 0, stream>>>(
      codes, v, num_bits, words, vec, reinterpret_cast<uint32_t*>(out));
  check(cudaGetLastError(), "pack_int launch");
}

void unpack_int(const int32_t* words,
                const View3& v,
                int num_bits,
                int64_t cols,
                int8_t* out,
                cudaStream_t stream) {
  const bool vec = cols % pack::kChunk == 0 && aligned(out, 16);
  const int64_t work = v.batch * v.rows * ceil_div(cols, pack::kChunk);
  unpack_int_kernel<<<static_cast<unsigned>(launch_blocks(work)), kThreads, 0, stream>>>(
      words, v, num_bits, cols, vec, out);
  check(cudaGetLastError(), "unpack_int launch");
}

void pack_int4_row_pairs(const int8_t* codes, const View3& v, uint8_t* out, cudaStream_t stream) {
  constexpr int kN = 16;
  const bool vec = v.sc == 1 && v.cols % kN == 0 && v.sr % kN == 0 && v.sb % kN == 0 &&
                   aligned(codes, kN) && aligned(out, kN);
  const int64_t half = v.rows / 2;
  if (vec) {
    pack_row_pairs_kernel<kN>
        <<<static_cast<unsigned>(launch_blocks(v.batch * half * (v.cols / kN))), kThreads, 0,
           stream>>>(codes, v, out);
  } else {
    pack_row_pairs_kernel<1>
        <<<static_cast<unsigned>(launch_blocks(v.batch * half * v.cols)), kThreads, 0, stream>>>(
            codes, v, out);
  }
  check(cudaGetLastError(), "pack_int4_row_pairs launch");
}

void unpack_int4_row_pairs(const uint8_t* packed,
                           const View3& v,
                           int8_t* out,
                           cudaStream_t stream) {
  constexpr int kN = 16;
  const bool vec = v.sc == 1 && v.cols % kN == 0 && v.sr % kN == 0 && v.sb % kN == 0 &&
                   aligned(packed, kN) && aligned(out, kN);
  if (vec) {
    unpack_row_pairs_kernel<kN>
        <<<static_cast<unsigned>(launch_blocks(v.batch * v.rows * (v.cols / kN))), kThreads, 0,
           stream>>>(packed, v, out);
  } else {
    unpack_row_pairs_kernel<1>
        <<<static_cast<unsigned>(launch_blocks(v.batch * v.rows * v.cols)), kThreads, 0, stream>>>(
            packed, v, out);
  }
  check(cudaGetLastError(), "unpack_int4_row_pairs launch");
}

}  // namespace moeq::kernels::cuda
