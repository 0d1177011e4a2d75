// CUDA kernels of the FP4 / MX ops. The arithmetic is the shared scheme code of
// common/fp4_numerics.h (compiled with --fmad=false), so results equal the CPU reference bit for
// bit; only the memory access differs:
//   row kernel: groups along contiguous rows; each thread loads 16 bytes, the threads of a group
//     (2 to 8) reduce the amax with warp shuffles, then each encodes / decodes its own values.
//   col kernel: transposed stacks (rows contiguous, groups along the strided axis); each thread
//     loads a short vector of adjacent rows for every column of one group and handles those
//     rows' groups on its own.
//   generic kernel: one thread per group through the shared process_group (any strides, partial
//     last groups).
#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/fp4_group.h"
#include "cuda/fp4_quant.cuh"

namespace moeq::kernels::fp4::cuda {
namespace {

constexpr int kThreads = 256;

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("moeq fp4 kernel ") + what + ": " +
                             cudaGetErrorString(err));
  }
}

unsigned int blocks_for(int64_t threads) {
  return static_cast<unsigned int>((threads + kThreads - 1) / kThreads);
}

// N values of T in one aligned load / store of N * sizeof(T) bytes.
template <typename T, int N>
struct alignas(N * sizeof(T)) Vec {
  T e[N];
};

template <typename T, int N>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}
template <typename T, int N>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

template <int N>
struct alignas(N) Bytes {
  uint8_t b[N];
};
template <int N>
__device__ __forceinline__ void store_bytes(uint8_t* p, const Bytes<N>& v) {
  *reinterpret_cast<Bytes<N>*>(p) = v;
}
template <int N>
__device__ __forceinline__ Bytes<N> load_bytes(const uint8_t* p) {
  return *reinterpret_cast<const Bytes<N>*>(p);
}

__device__ __forceinline__ float max_abs(float m, float v) {
  const float a = abs_f(v);
  return a > m ? a : m;
}

// ---- dense kernel: each matrix of x (and out) dense row-major, cols % G == 0
// ----------------------- The common case (weights, expert stacks): grid y is the matrix, and
// within a matrix a 16-byte chunk's position gives its group directly, so the index math is 32-bit
// shifts.

struct DenseGeom {
  int32_t chunks;    // chunks of N values per matrix
  int64_t x_stride;  // element offset between matrices of x (and of out, below)
  int64_t out_stride;
  int64_t elems;   // rows * cols
  int64_t groups;  // rows * cols / G
};

constexpr int kChunksPerThread = 4;

template <typename S, typename T>
__global__ void __launch_bounds__(kThreads)
    dense_kernel(const GroupProblem p, const DenseGeom geo) {
  constexpr int G = S::kGroup;
  constexpr int N = 16 / static_cast<int>(sizeof(T));
  constexpr int TPG = G / N;
  const int64_t b = blockIdx.y;
  S s{};
  if (!make_scheme(p, b, &s)) {
    return;  // uniform over the block
  }
  const Mode mode = p.mode;
  const bool fake = mode == Mode::kFake || mode == Mode::kFakeGiven;
  const bool from_amax = mode == Mode::kFake || mode == Mode::kQuantize;
  T* x = static_cast<T*>(p.x_data) + b * geo.x_stride;
  T* out = fake ? static_cast<T*>(p.out_data) + b * geo.out_stride : nullptr;
  uint8_t* codes = p.codes ? p.codes + b * (S::kFp4 ? geo.elems / 2 : geo.elems) : nullptr;
  uint8_t* scales = p.scales ? p.scales + b * geo.groups : nullptr;
#pragma unroll 1
  for (int k = 0; k < kChunksPerThread; ++k) {
    const int32_t chunk = (blockIdx.x * kChunksPerThread + k) * kThreads + threadIdx.x;
    const bool live = chunk < geo.chunks;
    const int32_t g = chunk / TPG;
    const bool leader = (chunk % TPG) == 0;
    const int64_t c = static_cast<int64_t>(chunk) * N;  // element offset within the matrix

    if (mode == Mode::kDequantize) {
      if (!live) {
        continue;
      }
      const GroupScale sc = s.from_stored(scales[g]);
      if (!numerics::is_finite(sc.dec)) {
        if (leader) {
          report(&p.status->scale, static_cast<unsigned long long>(b * geo.groups + g));
        }
        continue;
      }
      uint32_t q[N];
      if constexpr (S::kFp4) {
        const Bytes<N / 2> packed = load_bytes<N / 2>(codes + c / 2);
#pragma unroll
        for (int i = 0; i < N / 2; ++i) {
          q[2 * i] = packed.b[i] & 15u;
          q[2 * i + 1] = packed.b[i] >> 4;
        }
      } else {
        const Bytes<N> raw = load_bytes<N>(codes + c);
#pragma unroll
        for (int i = 0; i < N; ++i) {
          q[i] = raw.b[i];
        }
      }
      Vec<T, N> o;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        o.e[i] = T(s.decode(q[i], sc));
      }
      store_vec<T, N>(x + c, o);
      continue;
    }

    float v[N];
    float amax = 0.0f;
    int finite = 1;
    if (live) {
      const Vec<T, N> in = load_vec<T, N>(x + c);
#pragma unroll
      for (int i = 0; i < N; ++i) {
        v[i] = static_cast<float>(in.e[i]);
        if (!numerics::is_finite(v[i])) {
          if (finite) {
            report(&p.status->input, static_cast<unsigned long long>(b * geo.elems + c + i));
          }
          finite = 0;
        }
        amax = max_abs(amax, v[i]);
      }
    }
#pragma unroll
    for (int o = TPG / 2; o > 0; o >>= 1) {
      const float other = __shfl_xor_sync(0xffffffffu, amax, o);
      amax = other > amax ? other : amax;
      finite &= __shfl_xor_sync(0xffffffffu, finite, o);
    }
    if (!live || !finite) {
      continue;
    }
    GroupScale sc;
    if (from_amax) {
      sc = s.from_amax(amax);
      if (mode == Mode::kQuantize && leader) {
        scales[g] = sc.stored;
      }
    } else {
      sc = s.from_stored(scales[g]);
    }
    if (!sc.valid) {
      if (leader) {
        report(&p.status->scale, static_cast<unsigned long long>(b * geo.groups + g));
      }
      continue;
    }
    if (fake) {
      Vec<T, N> o;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        o.e[i] = T(s.fake(v[i], sc));
      }
      store_vec<T, N>(out + c, o);
    } else if constexpr (S::kFp4) {
      Bytes<N / 2> packed;
#pragma unroll
      for (int i = 0; i < N / 2; ++i) {
        packed.b[i] = pack_nibbles(s.encode(v[2 * i], sc), s.encode(v[2 * i + 1], sc));
      }
      store_bytes<N / 2>(codes + c / 2, packed);
    } else {
      Bytes<N> raw;
#pragma unroll
      for (int i = 0; i < N; ++i) {
        raw.b[i] = static_cast<uint8_t>(s.encode(v[i], sc));
      }
      store_bytes<N>(codes + c, raw);
    }
  }
}

// ---- row kernel: x (and out) contiguous along cols, cols % G == 0, 16-byte aligned rows
// -----------

template <typename S, typename T>
__global__ void __launch_bounds__(kThreads) row_kernel(const GroupProblem p, int64_t total) {
  constexpr int G = S::kGroup;
  constexpr int N = 16 / static_cast<int>(sizeof(T));
  constexpr int TPG = G / N;  // threads per group, consecutive lanes of one warp
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  const bool live = t < total;
  const int64_t chunks_per_row = p.x.cols / N;
  const int64_t row = live ? t / chunks_per_row : 0;  // b * rows + r
  const int64_t c0 = live ? (t % chunks_per_row) * N : 0;
  const int64_t b = row / p.x.rows;
  const int64_t r = row % p.x.rows;
  const int64_t g = c0 / G;
  const int64_t sidx = row * p.groups() + g;
  const bool leader = (c0 % G) == 0;
  const Mode mode = p.mode;

  S s{};
  const bool ok = live && make_scheme(p, b, &s);
  const int64_t xoff = p.x.batch_offset(b) + r * p.x.row_stride + c0;

  if (mode == Mode::kDequantize) {
    if (!ok) {
      return;
    }
    const GroupScale sc = s.from_stored(p.scales[sidx]);
    if (!numerics::is_finite(sc.dec)) {
      report(&p.status->scale, static_cast<unsigned long long>(sidx));
      return;
    }
    uint32_t codes[N];
    if constexpr (S::kFp4) {
      const Bytes<N / 2> packed = load_bytes<N / 2>(p.codes + row * (p.x.cols / 2) + c0 / 2);
#pragma unroll
      for (int i = 0; i < N / 2; ++i) {
        codes[2 * i] = packed.b[i] & 15u;
        codes[2 * i + 1] = packed.b[i] >> 4;
      }
    } else {
      const Bytes<N> raw = load_bytes<N>(p.codes + row * p.x.cols + c0);
#pragma unroll
      for (int i = 0; i < N; ++i) {
        codes[i] = raw.b[i];
      }
    }
    Vec<T, N> out;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      out.e[i] = T(s.decode(codes[i], sc));
    }
    store_vec<T, N>(static_cast<T*>(p.x_data) + xoff, out);
    return;
  }

  float v[N];
  float amax = 0.0f;
  int finite = 1;
  if (ok) {
    const Vec<T, N> in = load_vec<T, N>(static_cast<const T*>(p.x_data) + xoff);
#pragma unroll
    for (int i = 0; i < N; ++i) {
      v[i] = static_cast<float>(in.e[i]);
      if (!numerics::is_finite(v[i])) {
        if (finite) {
          report(&p.status->input, static_cast<unsigned long long>(row * p.x.cols + c0 + i));
        }
        finite = 0;
      }
      amax = max_abs(amax, v[i]);
    }
  }
#pragma unroll
  for (int o = TPG / 2; o > 0; o >>= 1) {
    const float other = __shfl_xor_sync(0xffffffffu, amax, o);
    amax = other > amax ? other : amax;
    finite &= __shfl_xor_sync(0xffffffffu, finite, o);
  }
  if (!ok || !finite) {
    return;
  }

  GroupScale sc;
  if (mode == Mode::kFake || mode == Mode::kQuantize) {
    sc = s.from_amax(amax);
    if (mode == Mode::kQuantize && leader) {
      p.scales[sidx] = sc.stored;
    }
  } else {
    sc = s.from_stored(p.scales[sidx]);
  }
  if (!sc.valid) {
    if (leader) {
      report(&p.status->scale, static_cast<unsigned long long>(sidx));
    }
    return;
  }

  if (mode == Mode::kFake || mode == Mode::kFakeGiven) {
    Vec<T, N> out;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      out.e[i] = T(s.fake(v[i], sc));
    }
    store_vec<T, N>(static_cast<T*>(p.out_data) + p.out.batch_offset(b) + r * p.out.row_stride + c0,
                    out);
    return;
  }
  if constexpr (S::kFp4) {
    Bytes<N / 2> packed;
#pragma unroll
    for (int i = 0; i < N / 2; ++i) {
      packed.b[i] = pack_nibbles(s.encode(v[2 * i], sc), s.encode(v[2 * i + 1], sc));
    }
    store_bytes<N / 2>(p.codes + row * (p.x.cols / 2) + c0 / 2, packed);
  } else {
    Bytes<N> raw;
#pragma unroll
    for (int i = 0; i < N; ++i) {
      raw.b[i] = static_cast<uint8_t>(s.encode(v[i], sc));
    }
    store_bytes<N>(p.codes + row * p.x.cols + c0, raw);
  }
}

// ---- col kernel: rows contiguous (transposed stacks), groups along the strided axis
// --------------

template <typename S, typename T>
struct ColShape {
  static constexpr int G = S::kGroup;
  static constexpr int kVecBytes = 4;  // small per-thread work: many threads hide the latency
  static constexpr int R = kVecBytes / static_cast<int>(sizeof(T));  // rows per thread
};

// grid: x over (row chunk, group) with the row chunk fastest, y = matrix.
template <typename S, typename T>
__global__ void __launch_bounds__(kThreads, 2) col_kernel(const GroupProblem p, int32_t total) {
  constexpr int G = ColShape<S, T>::G;
  constexpr int R = ColShape<S, T>::R;
  const int32_t t = static_cast<int32_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= total) {
    return;
  }
  const int32_t rchunks = static_cast<int32_t>(p.x.rows / R);
  const int32_t g = t / rchunks;
  const int64_t r0 = static_cast<int64_t>(t - g * rchunks) * R;
  const int64_t b = blockIdx.y;
  const int64_t groups = p.x.cols / G;
  const Mode mode = p.mode;
  S s{};
  if (!make_scheme(p, b, &s)) {
    return;
  }
  const int64_t cs = p.x.col_stride;
  const T* x = static_cast<const T*>(p.x_data) + p.x.batch_offset(b) + g * G * cs + r0;
  Vec<T, R> col[G];
  float amax[R];
  bool finite[R];
#pragma unroll
  for (int j = 0; j < R; ++j) {
    amax[j] = 0.0f;
    finite[j] = true;
  }
#pragma unroll
  for (int i = 0; i < G; ++i) {
    col[i] = load_vec<T, R>(x + i * cs);
  }
#pragma unroll
  for (int i = 0; i < G; ++i) {
#pragma unroll
    for (int j = 0; j < R; ++j) {
      const float v = static_cast<float>(col[i].e[j]);
      if (!numerics::is_finite(v) && finite[j]) {
        finite[j] = false;
        report(&p.status->input,
               static_cast<unsigned long long>((b * p.x.rows + r0 + j) * p.x.cols + g * G + i));
      }
      amax[j] = max_abs(amax[j], v);
    }
  }
  const bool fake = mode == Mode::kFake || mode == Mode::kFakeGiven;
#pragma unroll
  for (int j = 0; j < R; ++j) {
    if (!finite[j]) {
      continue;
    }
    const int64_t row = b * p.x.rows + r0 + j;
    const int64_t sidx = row * groups + g;
    GroupScale sc;
    if (mode == Mode::kFake || mode == Mode::kQuantize) {
      sc = s.from_amax(amax[j]);
      if (mode == Mode::kQuantize) {
        p.scales[sidx] = sc.stored;
      }
    } else {
      sc = s.from_stored(p.scales[sidx]);
    }
    if (!sc.valid) {
      report(&p.status->scale, static_cast<unsigned long long>(sidx));
      continue;
    }
    if (fake) {
#pragma unroll
      for (int i = 0; i < G; ++i) {
        col[i].e[j] = T(s.fake(static_cast<float>(col[i].e[j]), sc));
      }
    } else if constexpr (S::kFp4) {
#pragma unroll
      for (int h = 0; h < G / 16; ++h) {
        Bytes<8> packed;
#pragma unroll
        for (int i = 0; i < 8; ++i) {
          packed.b[i] =
              pack_nibbles(s.encode(static_cast<float>(col[16 * h + 2 * i].e[j]), sc),
                           s.encode(static_cast<float>(col[16 * h + 2 * i + 1].e[j]), sc));
        }
        store_bytes<8>(p.codes + row * (p.x.cols / 2) + g * (G / 2) + 8 * h, packed);
      }
    } else {
#pragma unroll
      for (int h = 0; h < G / 16; ++h) {
        Bytes<16> raw;
#pragma unroll
        for (int i = 0; i < 16; ++i) {
          raw.b[i] = static_cast<uint8_t>(s.encode(static_cast<float>(col[16 * h + i].e[j]), sc));
        }
        store_bytes<16>(p.codes + row * p.x.cols + g * G + 16 * h, raw);
      }
    }
  }
  if (fake) {
    const int64_t ocs = p.out.col_stride;
    T* out = static_cast<T*>(p.out_data) + p.out.batch_offset(b) + g * G * ocs + r0;
#pragma unroll
    for (int i = 0; i < G; ++i) {
      store_vec<T, R>(out + i * ocs, col[i]);
    }
  }
}

// ---- generic kernel: one thread per group
// ----------------------------------------------------------

template <typename S, typename T>
__global__ void __launch_bounds__(kThreads) generic_kernel(const GroupProblem p, int64_t total) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= total) {
    return;
  }
  const int64_t groups = p.groups();
  const int64_t row = t / groups;
  const int64_t g = t % groups;
  const int64_t b = row / p.x.rows;
  S s{};
  if (!make_scheme(p, b, &s)) {
    return;
  }
  process_group<S, T>(p, s, b, row % p.x.rows, g);
}

bool aligned(const void* ptr, int bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % static_cast<uintptr_t>(bytes) == 0;
}

// Every batch stride and `stride` a multiple of `n` elements, the base aligned to `bytes`.
bool vector_friendly(const MatrixLayout& L, const void* data, int64_t stride, int n, int bytes) {
  if (!aligned(data, bytes) || stride % n != 0) {
    return false;
  }
  for (int d = 0; d < L.nbatch; ++d) {
    if (L.batch_sizes[d] > 1 && L.batch_strides[d] % n != 0) {
      return false;
    }
  }
  return true;
}

// The element offset between consecutive matrices when the batch dims collapse to one stride
// (-1 if they do not).
int64_t batch_stride(const MatrixLayout& L) {
  int64_t stride = -1;
  int64_t expect = -1;
  for (int d = L.nbatch - 1; d >= 0; --d) {
    if (L.batch_sizes[d] == 1) {
      continue;
    }
    if (stride < 0) {
      stride = L.batch_strides[d];
    } else if (L.batch_strides[d] != expect) {
      return -1;
    }
    expect = L.batch_strides[d] * L.batch_sizes[d];
  }
  return stride < 0 ? 0 : stride;
}

bool dense_rows(const MatrixLayout& L, const void* data, int n) {
  const int64_t bs = batch_stride(L);
  return L.col_stride == 1 && (L.row_stride == L.cols || L.rows == 1) && bs >= 0 && bs % n == 0 &&
         aligned(data, 16);
}

template <typename S, typename T>
void launch_group(const GroupProblem& p, cudaStream_t stream) {
  constexpr int G = S::kGroup;
  const bool fake = p.mode == Mode::kFake || p.mode == Mode::kFakeGiven;
  const int64_t rows = p.x.batch * p.x.rows;
  constexpr int N = 16 / static_cast<int>(sizeof(T));
  const int64_t elems = p.x.rows * p.x.cols;
  if (p.x.cols % G == 0 && elems / N < (int64_t{1} << 30) && p.x.batch < 65536 &&
      dense_rows(p.x, p.x_data, N) && (!fake || dense_rows(p.out, p.out_data, N)) &&
      (p.mode != Mode::kDequantize || aligned(p.codes, 16))) {
    DenseGeom geo;
    geo.chunks = static_cast<int32_t>(elems / N);
    geo.x_stride = batch_stride(p.x);
    geo.out_stride = fake ? batch_stride(p.out) : 0;
    geo.elems = elems;
    geo.groups = elems / G;
    const dim3 grid(static_cast<unsigned int>((geo.chunks + kThreads * kChunksPerThread - 1) /
                                              (kThreads * kChunksPerThread)),
                    static_cast<unsigned int>(p.x.batch));
    dense_kernel<S, T><<<grid, kThreads, 0, stream>>>(p, geo);
    check_launch("dense_kernel");
    return;
  }
  if (p.x.cols % G == 0) {
    // Row kernel: 16-byte loads along contiguous rows.
    constexpr int N = 16 / static_cast<int>(sizeof(T));
    const bool row_ok =
        p.x.col_stride == 1 && vector_friendly(p.x, p.x_data, p.x.row_stride, N, 16) &&
        (!fake ||
         (p.out.col_stride == 1 && vector_friendly(p.out, p.out_data, p.out.row_stride, N, 16)));
    if (row_ok && (p.mode != Mode::kDequantize || aligned(p.codes, 16))) {
      const int64_t total = rows * (p.x.cols / N);
      row_kernel<S, T><<<blocks_for(total), kThreads, 0, stream>>>(p, total);
      check_launch("row_kernel");
      return;
    }
    // Col kernel: transposed layouts.
    constexpr int R = ColShape<S, T>::R;
    constexpr int VB = ColShape<S, T>::kVecBytes;
    const int64_t col_total = (p.x.rows / R) * (p.x.cols / G);
    const bool col_ok = p.mode != Mode::kDequantize && p.x.row_stride == 1 && p.x.rows % R == 0 &&
                        col_total < (int64_t{1} << 30) && p.x.batch < 65536 &&
                        vector_friendly(p.x, p.x_data, p.x.col_stride, R, VB) &&
                        (!fake || (p.out.row_stride == 1 &&
                                   vector_friendly(p.out, p.out_data, p.out.col_stride, R, VB)));
    if (col_ok) {
      const dim3 grid(blocks_for(col_total), static_cast<unsigned int>(p.x.batch));
      col_kernel<S, T><<<grid, kThreads, 0, stream>>>(p, static_cast<int32_t>(col_total));
      check_launch("col_kernel");
      return;
    }
  }
  const int64_t total = rows * p.groups();
  generic_kernel<S, T><<<blocks_for(total), kThreads, 0, stream>>>(p, total);
  check_launch("generic_kernel");
}

// ---- elementwise problems
// ------------------------------------------------------------------------

template <typename T>
__global__ void __launch_bounds__(kThreads) scale_kernel(const ScaleProblem p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < p.count) {
    process_scale_item<T>(p, i);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) global_kernel(const GlobalScaleProblem p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < p.count) {
    process_global_item<T>(p, i);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) sweep_kernel(const SweepProblem p, int64_t total) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= total) {
    return;
  }
  const int64_t groups = (p.x.cols + kNvfp4Group - 1) / kNvfp4Group;
  const int64_t row = t / groups;
  process_sweep_block<T>(p, row / p.x.rows, row % p.x.rows, t % groups);
}

// One thread per group of 32: 16 packed bytes in, 32 values out.
template <typename T>
__global__ void __launch_bounds__(kThreads) source_kernel(const SourceMxfp4Problem p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i >= p.rows) {
    return;
  }
  const uint8_t code = p.scales[i];
  if (code == 255) {
    report(&p.status->scale, static_cast<unsigned long long>(i));
    return;
  }
  const float scale = exp2_int(static_cast<int>(code) - 127);
  const Bytes<16> blk = load_bytes<16>(p.blocks + i * 16);
  constexpr int N = 16 / static_cast<int>(sizeof(T));
  T* out = static_cast<T*>(p.out) + i * 32;
#pragma unroll
  for (int h = 0; h < 32 / N; ++h) {
    Vec<T, N> v;
#pragma unroll
    for (int k = 0; k < N; k += 2) {
      const uint32_t byte = blk.b[(h * N + k) / 2];
      v.e[k] = T(e2m1_value(byte & 15u, true) * scale);
      v.e[k + 1] = T(e2m1_value(byte >> 4, true) * scale);
    }
    store_vec<T, N>(out + h * N, v);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) source_generic_kernel(const SourceMxfp4Problem p) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (i < p.rows) {
    process_source_row<T>(p, i);
  }
}

// Dense codes (or packed bytes): 16 input bytes per thread.
__global__ void __launch_bounds__(kThreads) pack_dense_kernel(const PackProblem p, int64_t total) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= total) {
    return;
  }
  const Bytes<16> in = load_bytes<16>(p.in_data + t * 16);
  if (p.unpack) {
    Bytes<16> lo;
    Bytes<16> hi;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      lo.b[2 * i] = in.b[i] & 15u;
      lo.b[2 * i + 1] = in.b[i] >> 4;
      hi.b[2 * i] = in.b[8 + i] & 15u;
      hi.b[2 * i + 1] = in.b[8 + i] >> 4;
    }
    store_bytes<16>(p.out + t * 32, lo);
    store_bytes<16>(p.out + t * 32 + 16, hi);
    return;
  }
  Bytes<8> out;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const uint8_t a = in.b[2 * i];
    const uint8_t c = in.b[2 * i + 1];
    if (a > 15u || c > 15u) {
      report(&p.status->input, static_cast<unsigned long long>(t * 16 + 2 * i + (a > 15u ? 0 : 1)));
    }
    out.b[i] = pack_nibbles(a, c);
  }
  store_bytes<8>(p.out + t * 8, out);
}

__global__ void __launch_bounds__(kThreads) pack_kernel(const PackProblem p, int64_t total) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (t >= total) {
    return;
  }
  const MatrixLayout& L = p.in;
  if (p.unpack) {
    const int64_t row = t / L.cols;
    const int64_t c = t % L.cols;
    const uint8_t byte =
        p.in_data[L.batch_offset(row / L.rows) + (row % L.rows) * L.row_stride + c * L.col_stride];
    p.out[2 * t] = byte & 15u;
    p.out[2 * t + 1] = byte >> 4;
    return;
  }
  const int64_t half = L.cols / 2;
  const int64_t row = t / half;
  const int64_t c = (t % half) * 2;
  const uint8_t* in = p.in_data + L.batch_offset(row / L.rows) + (row % L.rows) * L.row_stride;
  const uint8_t lo = in[c * L.col_stride];
  const uint8_t hi = in[(c + 1) * L.col_stride];
  if (lo > 15u || hi > 15u) {
    report(&p.status->input,
           static_cast<unsigned long long>(row * L.cols + c + (lo > 15u ? 0 : 1)));
  }
  p.out[t] = pack_nibbles(lo, hi);
}

}  // namespace

void launch(const GroupProblem& p, cudaStream_t stream) {
  visit_dtype(p.dtype, [&](auto dt) {
    using T = typename decltype(dt)::type;
    visit_scheme<T>(p.scheme, [&](auto st) {
      using S = typename decltype(st)::type;
      launch_group<S, T>(p, stream);
    });
  });
}

void launch(const ScaleProblem& p, cudaStream_t stream) {
  visit_dtype(p.dtype, [&](auto dt) {
    using T = typename decltype(dt)::type;
    scale_kernel<T><<<blocks_for(p.count), kThreads, 0, stream>>>(p);
    check_launch("scale_kernel");
  });
}

void launch(const GlobalScaleProblem& p, cudaStream_t stream) {
  visit_dtype(p.dtype, [&](auto dt) {
    using T = typename decltype(dt)::type;
    global_kernel<T><<<blocks_for(p.count), kThreads, 0, stream>>>(p);
    check_launch("global_kernel");
  });
}

void launch(const SweepProblem& p, cudaStream_t stream) {
  const int64_t total = p.x.batch * p.x.rows * ((p.x.cols + kNvfp4Group - 1) / kNvfp4Group);
  visit_dtype(p.dtype, [&](auto dt) {
    using T = typename decltype(dt)::type;
    sweep_kernel<T><<<blocks_for(total), kThreads, 0, stream>>>(p, total);
    check_launch("sweep_kernel");
  });
}

void launch(const SourceMxfp4Problem& p, cudaStream_t stream) {
  visit_dtype(p.dtype, [&](auto dt) {
    using T = typename decltype(dt)::type;
    if (aligned(p.blocks, 16) && aligned(p.out, 16)) {
      source_kernel<T><<<blocks_for(p.rows), kThreads, 0, stream>>>(p);
    } else {
      source_generic_kernel<T><<<blocks_for(p.rows), kThreads, 0, stream>>>(p);
    }
    check_launch("source_kernel");
  });
}

void launch(const PackProblem& p, cudaStream_t stream) {
  const int64_t rows = p.in.batch * p.in.rows;
  const int64_t n = rows * p.in.cols;  // input bytes
  const bool flat = p.in.batch == 1 || batch_stride(p.in) == p.in.rows * p.in.cols;
  if (flat && dense_rows(p.in, p.in_data, 16) && p.in.cols % 16 == 0 && aligned(p.out, 16)) {
    const int64_t total = n / 16;
    pack_dense_kernel<<<blocks_for(total), kThreads, 0, stream>>>(p, total);
    check_launch("pack_dense_kernel");
    return;
  }
  const int64_t total = p.unpack ? rows * p.in.cols : rows * (p.in.cols / 2);
  pack_kernel<<<blocks_for(total), kThreads, 0, stream>>>(p, total);
  check_launch("pack_kernel");
}

}  // namespace moeq::kernels::fp4::cuda
