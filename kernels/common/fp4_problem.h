// Plain descriptions of the FP4 / MX kernels' work (no ATen): the op layer fills them from
// tensors, the CPU references (fp4_cpu.h) and the CUDA launchers (cuda/fp4_quant.cuh) run them.
//
// A real-valued tensor is seen as [batch..., rows, cols] with arbitrary element strides (a
// transposed expert stack arrives as x.transpose(-1, -2)); groups run along cols. Codes and
// scales are always dense row-major: codes [batch, rows, cols / 2] (packed E2M1, even element in
// the low nibble) or [batch, rows, cols] (fp8 bytes), scales [batch, rows, ceil(cols / group)].
// A partial last group is a group of its own (the same result as zero padding).
#pragma once

#include <cstdint>

#include "common/numerics.h"

namespace moeq::kernels::fp4 {

enum class DType : int { kFloat32 = 0, kBFloat16 = 1, kFloat16 = 2 };

enum class Scheme : int {
  kNvfp4Ct = 0,  // compressed-tensors NVFP4; global = weight_global_scale
  kNvfp4Mo = 1,  // ModelOpt NVFP4; global = weight_scale_2
  kMxfp4Ct = 2,
  kMxfp4Mo = 3,
  kMxfp8Ct = 4,
  kMxfp8Mo = 5,
};

MOEQ_HOST_DEVICE MOEQ_INLINE constexpr bool is_nvfp4(Scheme s) {
  return s == Scheme::kNvfp4Ct || s == Scheme::kNvfp4Mo;
}
MOEQ_HOST_DEVICE MOEQ_INLINE constexpr bool is_fp8_elem(Scheme s) {
  return s == Scheme::kMxfp8Ct || s == Scheme::kMxfp8Mo;
}
MOEQ_HOST_DEVICE MOEQ_INLINE constexpr int group_size(Scheme s) {
  return is_nvfp4(s) ? 16 : 32;
}

enum class Mode : int {
  kFake = 0,           // amax -> scale -> quantize -> dequantize, into `out`
  kQuantize = 1,       // amax -> scale -> codes + scales
  kFakeGiven = 2,      // given scales -> quantize -> dequantize, into `out`
  kQuantizeGiven = 3,  // given scales -> codes
  kDequantize = 4,     // codes + scales -> `x` (the output here)
};

constexpr int kMaxBatchDims = 8;

struct MatrixLayout {
  int nbatch = 0;
  int64_t batch_sizes[kMaxBatchDims] = {};
  int64_t batch_strides[kMaxBatchDims] = {};
  int64_t batch = 1;  // product of batch_sizes
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t row_stride = 0;
  int64_t col_stride = 0;

  // Element offset of matrix b (row-major over the batch dims).
  MOEQ_HOST_DEVICE MOEQ_INLINE int64_t batch_offset(int64_t b) const {
    int64_t off = 0;
    for (int d = nbatch - 1; d >= 0; --d) {
      off += (b % batch_sizes[d]) * batch_strides[d];
      b /= batch_sizes[d];
    }
    return off;
  }
};

// First (lowest) logical row-major index of a bad value; kNone when there is none. `input`: a
// NaN or Inf element; `scale`: a scale that cannot be used (zero, NaN, E8M0 code 255); `global`:
// a global scale that is not finite and positive (its batch index).
constexpr unsigned long long kNone = ~0ull;
struct Status {
  unsigned long long input = kNone;
  unsigned long long scale = kNone;
  unsigned long long global = kNone;
};

MOEQ_HOST_DEVICE MOEQ_INLINE void report(unsigned long long* slot, unsigned long long index) {
#if defined(__CUDA_ARCH__)
  atomicMin(slot, index);
#else
  unsigned long long cur = __atomic_load_n(slot, __ATOMIC_RELAXED);
  while (index < cur && !__atomic_compare_exchange_n(slot, &cur, index, true, __ATOMIC_RELAXED,
                                                     __ATOMIC_RELAXED)) {
  }
#endif
}

struct GroupProblem {
  Scheme scheme = Scheme::kNvfp4Ct;
  Mode mode = Mode::kFake;
  DType dtype = DType::kFloat32;  // of x and out
  MatrixLayout x;                 // input, or the output of kDequantize
  void* x_data = nullptr;
  MatrixLayout out;  // kFake / kFakeGiven output (same logical shape as x)
  void* out_data = nullptr;
  uint8_t* codes = nullptr;
  uint8_t* scales = nullptr;
  const float* global = nullptr;  // NVFP4 only: one per matrix (global_stride 1) or shared (0)
  int64_t global_stride = 0;
  Status* status = nullptr;

  MOEQ_HOST_DEVICE MOEQ_INLINE int64_t groups() const {
    const int g = group_size(scheme);
    return (x.cols + g - 1) / g;
  }
  MOEQ_HOST_DEVICE MOEQ_INLINE int64_t code_cols() const {
    return is_fp8_elem(scheme) ? x.cols : x.cols / 2;
  }
};

// Scale bytes from given per-group amax values (dense [batch, rows, groups] in `dtype`).
enum class ScaleRule : int {
  kNvfp4Ct = 0,        // global = weight_global_scale
  kNvfp4Mo = 1,        // global = weight_scale_2
  kNvfp4MoStatic = 2,  // global = the global amax
  kMxfp4Ct = 3,
  kMxfp4Mo = 4,
  kMxfp8Ct = 5,
  kMxfp8Mo = 6,
};
struct ScaleProblem {
  ScaleRule rule = ScaleRule::kNvfp4Ct;
  DType dtype = DType::kFloat32;  // of amax
  const void* amax = nullptr;
  int64_t count = 0;
  int64_t per_batch = 1;  // elements sharing one global value
  const float* global = nullptr;
  int64_t global_stride = 0;
  uint8_t* out = nullptr;
  Status* status = nullptr;
};

// NVFP4 global scales from amax values: compressed-tensors (448 * 6 / amax in amax's dtype) or
// ModelOpt (amax / (6 * 448) in float32). Dense, `count` values.
struct GlobalScaleProblem {
  bool modelopt = false;
  DType dtype = DType::kFloat32;
  const void* amax = nullptr;
  int64_t count = 0;
  float* out = nullptr;
  Status* status = nullptr;
};

// The NVFP4 per-block search over the 126 FP8 E4M3 scales. ModelOpt: global = global amax, out
// amax = ModelOpt's per-block _amax and scale = its static export of it; compressed-tensors:
// global = weight_global_scale, scale = the best candidate, amax = 6 * scale / global.
struct SweepProblem {
  bool modelopt = false;
  DType dtype = DType::kFloat32;
  MatrixLayout x;
  const void* x_data = nullptr;
  const float* global = nullptr;
  int64_t global_stride = 0;
  uint8_t* scales = nullptr;  // [batch, rows, groups]
  float* amax = nullptr;      // [batch, rows, groups]
  Status* status = nullptr;
};

// GPT-OSS source MXFP4: blocks [n, groups, 16] and scales [n, groups], dense, -> out [n, groups*32]
// dense in `dtype`.
struct SourceMxfp4Problem {
  DType dtype = DType::kBFloat16;
  const uint8_t* blocks = nullptr;
  const uint8_t* scales = nullptr;
  int64_t rows = 0;  // n * groups
  void* out = nullptr;
  Status* status = nullptr;
};

// E2M1 codes (uint8 0..15, laid out as `in`) <-> packed bytes, even element in the low nibble.
// pack: in [batch, rows, cols] -> out dense [batch, rows, cols / 2]; a code above 15 is reported
// in status->input. unpack: in [batch, rows, cols / 2] -> out dense [batch, rows, cols].
struct PackProblem {
  bool unpack = false;
  MatrixLayout in;  // in elements (bytes)
  const uint8_t* in_data = nullptr;
  uint8_t* out = nullptr;
  Status* status = nullptr;
};

}  // namespace moeq::kernels::fp4
