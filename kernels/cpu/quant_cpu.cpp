// CPU references: straightforward loops over [batch, rows, cols] with arbitrary strides. They
// define the numerics; the CUDA kernels must match them bit for bit.
#include "cpu/quant_cpu.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <vector>

#include "common/dispatch.h"
#include "common/int_fp8.h"
#include "common/pack.h"

namespace moeq::kernels::cpu {
namespace {

using namespace numerics;

// Rows of about this many elements make one parallel task.
constexpr int64_t kGrainElements = 1 << 15;

int64_t grain_rows(int64_t cols) {
  return std::max<int64_t>(1, kGrainElements / std::max<int64_t>(cols, 1));
}

template <typename Kind, typename In, typename Out, typename S, Direction D>
void quant_elementwise_impl(
    const In* in, Out* out, const S* scale, const float* zp, const ElementwiseArgs& a) {
  const quant::ElementOp<Kind, In, Out, S, D> op{a.qmin, a.qmax, a.has_zero_point};
  const View3& x = a.in;
  const View3& y = a.out;
  at::parallel_for(0, x.batch * x.rows, grain_rows(x.cols), [&](int64_t begin, int64_t end) {
    for (int64_t br = begin; br < end; ++br) {
      const int64_t b = br / x.rows;
      const int64_t r = br % x.rows;
      const int64_t gr = r / a.block.rows;
      const In* xr = in + b * x.sb + r * x.sr;
      Out* yr = out + b * y.sb + r * y.sr;
      const S* sr = scale + b * a.scale.sb + gr * a.scale.sr;
      const float* zr = zp ? zp + b * a.zero_point.sb + gr * a.zero_point.sr : nullptr;
      int64_t gc_prev = -1;
      quant::Prepared p{};
      for (int64_t c = 0; c < x.cols; ++c) {
        const int64_t gc = c / a.block.cols;
        if (gc != gc_prev) {
          p = op.prepare(to_float(sr[gc * a.scale.sc]), zr ? zr[gc * a.zero_point.sc] : 0.0f);
          gc_prev = gc;
        }
        yr[c * y.sc] = op.apply(xr[c * x.sc], p);
      }
    }
  });
}

template <typename T>
bool block_reduce_impl(const T* x, const ReduceArgs& a) {
  const View3& v = a.in;
  const int64_t n_gr = ceil_div(v.rows, a.block.rows);
  const int64_t n_gc = ceil_div(v.cols, a.block.cols);
  std::atomic<bool> finite{true};
  at::parallel_for(0, v.batch * n_gr, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> amax(n_gc), mn(n_gc), mx(n_gc);
    bool ok = true;
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t b = bg / n_gr;
      const int64_t gr = bg % n_gr;
      std::fill(amax.begin(), amax.end(), 0.0f);
      std::fill(mn.begin(), mn.end(), INFINITY);
      std::fill(mx.begin(), mx.end(), -INFINITY);
      const int64_t r_end = std::min(v.rows, (gr + 1) * a.block.rows);
      for (int64_t r = gr * a.block.rows; r < r_end; ++r) {
        const T* xr = x + b * v.sb + r * v.sr;
        for (int64_t c = 0; c < v.cols; ++c) {
          // + 0.0f turns -0 into +0, so min and max never depend on the order of equal zeros.
          const float e = to_float(xr[c * v.sc]) + 0.0f;
          ok &= is_finite(e);
          const int64_t gc = c / a.block.cols;
          amax[gc] = std::max(amax[gc], std::fabs(e));
          mn[gc] = std::min(mn[gc], e);
          mx[gc] = std::max(mx[gc], e);
        }
      }
      for (int64_t gc = 0; gc < n_gc; ++gc) {
        if (a.amax) {
          a.amax[b * a.amax_strides.sb + gr * a.amax_strides.sr + gc * a.amax_strides.sc] =
              amax[gc];
        }
        const int64_t o =
            b * a.minmax_strides.sb + gr * a.minmax_strides.sr + gc * a.minmax_strides.sc;
        if (a.min) {
          a.min[o] = mn[gc];
        }
        if (a.max) {
          a.max[o] = mx[gc];
        }
      }
    }
    if (!ok) {
      finite.store(false, std::memory_order_relaxed);
    }
  });
  return finite.load();
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
                       const ElementwiseArgs& args) {
  dispatch_elementwise(
      kind, dir, in_dtype, out_dtype, scale_dtype,
      [&](auto kind_t, auto in_t, auto out_t, auto s_t, auto d) {
        using In = typename decltype(in_t)::type;
        using Out = typename decltype(out_t)::type;
        using S = typename decltype(s_t)::type;
        quant_elementwise_impl<typename decltype(kind_t)::type, In, Out, S, decltype(d)::value>(
            static_cast<const In*>(in), static_cast<Out*>(out), static_cast<const S*>(scale),
            zero_point, args);
      });
}

bool block_reduce(const void* x, DType dtype, const ReduceArgs& args) {
  return dispatch_float(dtype, [&](auto t) {
    using T = typename decltype(t)::type;
    return block_reduce_impl(static_cast<const T*>(x), args);
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
                 int8_t* zero_point) {
  dispatch_float(scale_dtype, [&](auto t) {
    using M = typename decltype(t)::type;
    M* s = static_cast<M*>(scale);
    for (int64_t i = 0; i < n; ++i) {
      const quant::QParams p = quant::int_qparams<M>(min[i], max[i], qmin, qmax, symmetric);
      s[i] = from_float<M>(p.scale);
      zero_point[i] = static_cast<int8_t>(p.zero_point);
    }
  });
}

void fp8_scale_from_amax(
    const float* amax, int64_t n, QuantKind fp8, DType scale_dtype, void* scale) {
  dispatch_kind(fp8, [&](auto k) {
    using F8 = typename decltype(k)::type;
    if constexpr (!std::is_same_v<F8, quant::IntFormat>) {
      dispatch_float(scale_dtype, [&](auto t) {
        using M = typename decltype(t)::type;
        M* s = static_cast<M*>(scale);
        for (int64_t i = 0; i < n; ++i) {
          s[i] = from_float<M>(quant::fp8_scale<M, F8>(amax[i]));
        }
      });
    }
  });
}

void modelopt_scale_from_amax(
    const void* amax, DType amax_dtype, int64_t n, float maxbound, bool reciprocal, float* scale) {
  dispatch_float(amax_dtype, [&](auto t) {
    using A = typename decltype(t)::type;
    const A* a = static_cast<const A*>(amax);
    for (int64_t i = 0; i < n; ++i) {
      scale[i] = quant::modelopt_scale<A>(to_float(a[i]), maxbound, reciprocal);
    }
  });
}

void pack_int(const int8_t* codes, const View3& v, int num_bits, int32_t* out) {
  const int64_t words = ceil_div(v.cols * num_bits, 32);
  at::parallel_for(0, v.batch * v.rows, grain_rows(v.cols), [&](int64_t begin, int64_t end) {
    uint32_t u[pack::kChunk];
    uint32_t w[8];
    for (int64_t br = begin; br < end; ++br) {
      const int8_t* xr = codes + (br / v.rows) * v.sb + (br % v.rows) * v.sr;
      int32_t* yr = out + br * words;
      for (int64_t c0 = 0; c0 < v.cols; c0 += pack::kChunk) {
        const int n = static_cast<int>(std::min<int64_t>(pack::kChunk, v.cols - c0));
        for (int i = 0; i < n; ++i) {
          u[i] = pack::offset_code(xr[(c0 + i) * v.sc], num_bits);
        }
        pack::pack_chunk(u, n, num_bits, w);
        const int64_t w0 = c0 / pack::kChunk * num_bits;
        for (int j = 0; j < num_bits && w0 + j < words; ++j) {
          yr[w0 + j] = static_cast<int32_t>(w[j]);
        }
      }
    }
  });
}

void unpack_int(const int32_t* words, const View3& v, int num_bits, int64_t cols, int8_t* out) {
  at::parallel_for(0, v.batch * v.rows, grain_rows(cols), [&](int64_t begin, int64_t end) {
    uint32_t w[8];
    for (int64_t br = begin; br < end; ++br) {
      const int32_t* xr = words + (br / v.rows) * v.sb + (br % v.rows) * v.sr;
      int8_t* yr = out + br * cols;
      for (int64_t c0 = 0; c0 < cols; c0 += pack::kChunk) {
        const int64_t w0 = c0 / pack::kChunk * num_bits;
        for (int j = 0; j < num_bits; ++j) {
          w[j] = w0 + j < v.cols ? static_cast<uint32_t>(xr[(w0 + j) * v.sc]) : 0u;
        }
        const int n = static_cast<int>(std::min<int64_t>(pack::kChunk, cols - c0));
        for (int i = 0; i < n; ++i) {
          yr[c0 + i] = pack::signed_code(pack::unpack_element(w, i, num_bits), num_bits);
        }
      }
    }
  });
}

void pack_int4_row_pairs(const int8_t* codes, const View3& v, uint8_t* out) {
  const int64_t half = v.rows / 2;
  at::parallel_for(0, v.batch * half, grain_rows(v.cols), [&](int64_t begin, int64_t end) {
    for (int64_t bj = begin; bj < end; ++bj) {
      const int64_t b = bj / half;
      const int64_t j = bj % half;
      const int8_t* lo = codes + b * v.sb + 2 * j * v.sr;
      const int8_t* hi = lo + v.sr;
      uint8_t* yr = out + bj * v.cols;
      for (int64_t c = 0; c < v.cols; ++c) {
        yr[c] = pack::pack_nibbles(lo[c * v.sc], hi[c * v.sc]);
      }
    }
  });
}

void unpack_int4_row_pairs(const uint8_t* packed, const View3& v, int8_t* out) {
  at::parallel_for(0, v.batch * v.rows, grain_rows(v.cols), [&](int64_t begin, int64_t end) {
    for (int64_t bj = begin; bj < end; ++bj) {
      const uint8_t* xr = packed + (bj / v.rows) * v.sb + (bj % v.rows) * v.sr;
      int8_t* lo = out + 2 * bj * v.cols;
      int8_t* hi = lo + v.cols;
      for (int64_t c = 0; c < v.cols; ++c) {
        lo[c] = pack::low_nibble(xr[c * v.sc]);
        hi[c] = pack::high_nibble(xr[c * v.sc]);
      }
    }
  });
}

}  // namespace moeq::kernels::cpu
