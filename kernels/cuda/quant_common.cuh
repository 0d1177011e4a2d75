// Device helpers shared by the quantizer kernels' translation units (split so nvcc builds them in
// parallel). Layout: the op's [batch, rows, cols] view is walked as [batch, outer, inner] where
// inner is the dim with the smaller stride (cols for row-major weights, rows for transposed expert
// stacks), so a warp always reads consecutive addresses. A thread owns V consecutive inner
// elements (one 16-byte vector where the layout allows, else V = 1) and walks a chunk of outer
// rows, keeping the scales of its elements in registers while the outer block index stays the
// same.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>

#include "common/dispatch.h"
#include "common/int_fp8.h"
#include "cuda/quant_cuda.cuh"

namespace moeq::kernels::cuda::detail {

using namespace numerics;

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // outer rows loaded before any is computed

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("moeq CUDA error in ") + what + ": " +
                             cudaGetErrorString(err));
  }
}

inline int sm_count() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  int n = 0;
  check(cudaDeviceGetAttribute(&n, cudaDevAttrMultiProcessorCount, device), "sm count");
  return n;
}

template <typename T, int N>
struct alignas(sizeof(T) * N) Vec {
  T v[N];
};

template <int V, typename T>
__device__ MOEQ_INLINE Vec<T, V> load_vec(const T* p, int64_t stride) {
  Vec<T, V> r;
  if constexpr (V == 1) {
    r.v[0] = *p;
  } else {
    r = *reinterpret_cast<const Vec<T, V>*>(p);
  }
  (void)stride;
  return r;
}

template <int V, typename T>
__device__ MOEQ_INLINE void store_vec(T* p, const Vec<T, V>& r) {
  if constexpr (V == 1) {
    *p = r.v[0];
  } else {
    *reinterpret_cast<Vec<T, V>*>(p) = r;
  }
}

// [batch, outer, inner] geometry of an elementwise or reduction launch.
struct Geom {
  int64_t B, O, I;
  int64_t in_b, in_o, in_i;
  int64_t out_b, out_o, out_i;  // output of elementwise ops
  int64_t s_b, s_o, s_i;        // scale (or reduction output) grid, in (b, gO, gI) order
  int64_t z_b, z_o, z_i;        // zero point (or min/max outputs) grid
  int64_t bO, bI;
  int64_t oc;  // outer rows per block
};

// Inner = the dim with the smaller input stride.
inline bool inner_is_cols(const View3& v) {
  if (v.cols == 1) {
    return false;
  }
  if (v.rows == 1) {
    return true;
  }
  return std::llabs(v.sc) <= std::llabs(v.sr);
}

inline Geom make_geom(
    const View3& in, const View3& out, Block2 block, GridStrides s, GridStrides z) {
  Geom g{};
  const bool cols = inner_is_cols(in);
  g.B = in.batch;
  g.O = cols ? in.rows : in.cols;
  g.I = cols ? in.cols : in.rows;
  g.in_b = in.sb;
  g.in_o = cols ? in.sr : in.sc;
  g.in_i = cols ? in.sc : in.sr;
  g.out_b = out.sb;
  g.out_o = cols ? out.sr : out.sc;
  g.out_i = cols ? out.sc : out.sr;
  g.s_b = s.sb;
  g.s_o = cols ? s.sr : s.sc;
  g.s_i = cols ? s.sc : s.sr;
  g.z_b = z.sb;
  g.z_o = cols ? z.sr : z.sc;
  g.z_i = cols ? z.sc : z.sr;
  g.bO = cols ? block.rows : block.cols;
  g.bI = cols ? block.cols : block.rows;
  return g;
}

inline bool aligned(const void* p, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(p) % static_cast<uintptr_t>(bytes) == 0;
}

// V elements per thread fit when the inner dim is contiguous and every vector is aligned.
template <typename In, typename Out, int V>
bool vector_fits(const Geom& g, const void* in, const void* out) {
  if (V == 1) {
    return true;
  }
  return g.in_i == 1 && g.out_i == 1 && g.I % V == 0 && g.in_o % V == 0 && g.in_b % V == 0 &&
         g.out_o % V == 0 && g.out_b % V == 0 && aligned(in, sizeof(In) * V) &&
         aligned(out, sizeof(Out) * V);
}

struct Launch {
  dim3 grid;
  dim3 block;
};

// Threads along inner, `oc` outer rows per block, batch on grid.z; aims at `waves` blocks per SM.
// `prefer_oc`: an outer chunk that is a multiple of it is taken when enough blocks remain.
inline Launch plan(Geom& g, int vec, int waves, int64_t prefer_oc) {
  const int64_t inner_vecs = ceil_div(g.I, vec);
  const int threads = static_cast<int>(std::min<int64_t>(kThreads, ceil_div(inner_vecs, 32) * 32));
  const int64_t gx = ceil_div(inner_vecs, threads);
  const int64_t gz = std::min<int64_t>(g.B, 65535);
  const int64_t sms = sm_count();
  int64_t oc = ceil_div(g.O * gx * gz, sms * waves);
  oc = std::max<int64_t>({oc, ceil_div(g.O, 65535), 1});
  const int64_t preferred = ceil_div(oc, prefer_oc) * prefer_oc;
  oc = ceil_div(g.O, preferred) * gx * gz >= 2 * sms ? preferred : ceil_div(oc, kUnroll) * kUnroll;
  g.oc = oc;
  return {dim3(static_cast<unsigned>(gx), static_cast<unsigned>(ceil_div(g.O, oc)),
               static_cast<unsigned>(gz)),
          dim3(static_cast<unsigned>(threads))};
}

// ---- elementwise -------------------------------------------------------------------------------

// kUniform: all V elements of a thread lie in one inner block (always so for V = 1); the scale and
// zero point of each of the kUnroll outer rows are then loaded with the row's data. Otherwise the
// V elements have blocks of their own, loaded when the outer block index changes.
template <typename Op, typename In, typename Out, typename S, int V, bool kUniform>
__global__ void __launch_bounds__(kThreads) elementwise_kernel(const In* __restrict__ in,
                                                               Out* __restrict__ out,
                                                               const S* __restrict__ scale,
                                                               const float* __restrict__ zp,
                                                               Geom g,
                                                               Op op) {
  const int64_t i0 = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) * V;
  if (i0 >= g.I) {
    return;
  }
  const int64_t o_begin = static_cast<int64_t>(blockIdx.y) * g.oc;
  const int64_t o_end = o_begin + g.oc < g.O ? o_begin + g.oc : g.O;
  if constexpr (kUniform) {
    const int64_t gi = i0 / g.bI;
    for (int64_t b = blockIdx.z; b < g.B; b += gridDim.z) {
      const In* x = in + b * g.in_b + i0 * g.in_i;
      Out* y = out + b * g.out_b + i0 * g.out_i;
      const int64_t go = o_begin / g.bO;
      int64_t ro = o_begin - go * g.bO;
      const S* sp = scale + b * g.s_b + go * g.s_o + gi * g.s_i;
      const float* zpp = zp ? zp + b * g.z_b + go * g.z_o + gi * g.z_i : nullptr;
      for (int64_t o = o_begin; o < o_end; o += kUnroll) {
        Vec<In, V> xv[kUnroll];
        float sv[kUnroll];
        float zv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (o + u < o_end) {
            xv[u] = load_vec<V>(x + (o + u) * g.in_o, g.in_i);
            sv[u] = to_float(*sp);
            zv[u] = zpp ? *zpp : 0.0f;
            if (++ro == g.bO) {
              ro = 0;
              sp += g.s_o;
              zpp = zpp ? zpp + g.z_o : nullptr;
            }
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (o + u < o_end) {
            const quant::Prepared p = op.prepare(sv[u], zv[u]);
            Vec<Out, V> yv;
#pragma unroll
            for (int k = 0; k < V; ++k) {
              yv.v[k] = op.apply(xv[u].v[k], p);
            }
            store_vec<V>(y + (o + u) * g.out_o, yv);
          }
        }
      }
    }
  } else {
    // The inner block index of each of my elements.
    int64_t gi[V];
    {
      int64_t q = i0 / g.bI;
      int64_t r = i0 - q * g.bI;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        gi[k] = q;
        if (++r == g.bI) {
          r = 0;
          ++q;
        }
      }
    }
    for (int64_t b = blockIdx.z; b < g.B; b += gridDim.z) {
      const In* x = in + b * g.in_b + i0 * g.in_i;
      Out* y = out + b * g.out_b + i0 * g.out_i;
      int64_t go = o_begin / g.bO;
      int64_t ro = o_begin - go * g.bO;
      quant::Prepared p[V];
      auto load_grid = [&]() {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          if (k > 0 && gi[k] == gi[k - 1]) {
            p[k] = p[k - 1];
          } else {
            p[k] = op.prepare(to_float(scale[b * g.s_b + go * g.s_o + gi[k] * g.s_i]),
                              zp ? zp[b * g.z_b + go * g.z_o + gi[k] * g.z_i] : 0.0f);
          }
        }
      };
      load_grid();
      for (int64_t o = o_begin; o < o_end; o += kUnroll) {
        Vec<In, V> xv[kUnroll];
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (o + u < o_end) {
            xv[u] = load_vec<V>(x + (o + u) * g.in_o, g.in_i);
          }
        }
#pragma unroll
        for (int u = 0; u < kUnroll; ++u) {
          if (o + u < o_end) {
            if (ro == g.bO) {
              ro = 0;
              ++go;
              load_grid();
            }
            Vec<Out, V> yv;
#pragma unroll
            for (int k = 0; k < V; ++k) {
              yv.v[k] = op.apply(xv[u].v[k], p[k]);
            }
            store_vec<V>(y + (o + u) * g.out_o, yv);
            ++ro;
          }
        }
      }
    }
  }
}

template <typename Op, typename In, typename Out, typename S>
void launch_elementwise(
    const In* in, Out* out, const S* scale, const float* zp, Geom g, Op op, cudaStream_t stream) {
  constexpr int kBytes = sizeof(In) > sizeof(Out) ? sizeof(In) : sizeof(Out);
  constexpr int V = 16 / kBytes;
  if (vector_fits<In, Out, V>(g, in, out)) {
    const Launch l = plan(g, V, 16, kUnroll);
    if (g.bI % V == 0) {
      elementwise_kernel<Op, In, Out, S, V, true>
          <<<l.grid, l.block, 0, stream>>>(in, out, scale, zp, g, op);
    } else {
      elementwise_kernel<Op, In, Out, S, V, false>
          <<<l.grid, l.block, 0, stream>>>(in, out, scale, zp, g, op);
    }
  } else {
    const Launch l = plan(g, 1, 16, kUnroll);
    elementwise_kernel<Op, In, Out, S, 1, true>
        <<<l.grid, l.block, 0, stream>>>(in, out, scale, zp, g, op);
  }
  check(cudaGetLastError(), "elementwise kernel launch");
}

template <Direction D>
void quant_elementwise_dir(const void* in,
                           void* out,
                           const void* scale,
                           const float* zero_point,
                           DType in_dtype,
                           DType out_dtype,
                           DType scale_dtype,
                           QuantKind kind,
                           const ElementwiseArgs& a,
                           cudaStream_t stream) {
  Geom g = make_geom(a.in, a.out, a.block, a.scale, a.zero_point);
  dispatch_elementwise(kind, D, in_dtype, out_dtype, scale_dtype,
                       [&](auto kind_t, auto in_t, auto out_t, auto s_t, auto d) {
                         if constexpr (decltype(d)::value == D) {
                           using Kind = typename decltype(kind_t)::type;
                           using In = typename decltype(in_t)::type;
                           using Out = typename decltype(out_t)::type;
                           using S = typename decltype(s_t)::type;
                           using Op = quant::ElementOp<Kind, In, Out, S, D>;
                           launch_elementwise(static_cast<const In*>(in), static_cast<Out*>(out),
                                              static_cast<const S*>(scale),
                                              a.has_zero_point ? zero_point : nullptr, g,
                                              Op{a.qmin, a.qmax, a.has_zero_point}, stream);
                         }
                       });
}

// One instantiation per translation unit (elementwise_*.cu).
void quant_elementwise_fake(const void* in,
                            void* out,
                            const void* scale,
                            const float* zero_point,
                            DType in_dtype,
                            DType out_dtype,
                            DType scale_dtype,
                            QuantKind kind,
                            const ElementwiseArgs& a,
                            cudaStream_t stream);
void quant_elementwise_quantize(const void* in,
                                void* out,
                                const void* scale,
                                const float* zero_point,
                                DType in_dtype,
                                DType out_dtype,
                                DType scale_dtype,
                                QuantKind kind,
                                const ElementwiseArgs& a,
                                cudaStream_t stream);
void quant_elementwise_dequantize(const void* in,
                                  void* out,
                                  const void* scale,
                                  const float* zero_point,
                                  DType in_dtype,
                                  DType out_dtype,
                                  DType scale_dtype,
                                  QuantKind kind,
                                  const ElementwiseArgs& a,
                                  cudaStream_t stream);

}  // namespace moeq::kernels::cuda::detail
