// CPU references of the FP4 / MX ops: loops over groups calling the shared per-group code
// (common/fp4_group.h), which defines the numerics the CUDA kernels reproduce.
#include <ATen/Parallel.h>

#include "common/fp4_cpu.h"
#include "common/fp4_group.h"

namespace moeq::kernels::fp4::cpu {
namespace {

// Rows of work per parallel chunk: enough elements per task to amortize the dispatch.
int64_t grain_rows(int64_t cols) {
  const int64_t per_row = cols > 0 ? cols : 1;
  const int64_t rows = 32768 / per_row;
  return rows > 0 ? rows : 1;
}

}  // namespace

void run(const GroupProblem& p) {
  const int64_t rows = p.x.batch * p.x.rows;
  const int64_t groups = p.groups();
  visit_dtype(p.dtype, [&](auto dt) {
    using T = typename decltype(dt)::type;
    visit_scheme<T>(p.scheme, [&](auto st) {
      using S = typename decltype(st)::type;
      at::parallel_for(0, rows, grain_rows(p.x.cols), [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t b = i / p.x.rows;
          const int64_t r = i % p.x.rows;
          S s{};
          if (!make_scheme(p, b, &s)) {
            continue;
          }
          for (int64_t g = 0; g < groups; ++g) {
            process_group<S, T>(p, s, b, r, g);
          }
        }
      });
    });
  });
}

void run(const ScaleProblem& p) {
  visit_dtype(p.dtype, [&](auto dt) {
    using T = typename decltype(dt)::type;
    at::parallel_for(0, p.count, 4096, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        process_scale_item<T>(p, i);
      }
    });
  });
}

void run(const GlobalScaleProblem& p) {
  visit_dtype(p.dtype, [&](auto dt) {
    using T = typename decltype(dt)::type;
    for (int64_t i = 0; i < p.count; ++i) {
      process_global_item<T>(p, i);
    }
  });
}

void run(const SweepProblem& p) {
  const int64_t rows = p.x.batch * p.x.rows;
  const int64_t groups = (p.x.cols + kNvfp4Group - 1) / kNvfp4Group;
  visit_dtype(p.dtype, [&](auto dt) {
    using T = typename decltype(dt)::type;
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t g = 0; g < groups; ++g) {
          process_sweep_block<T>(p, i / p.x.rows, i % p.x.rows, g);
        }
      }
    });
  });
}

void run(const SourceMxfp4Problem& p) {
  visit_dtype(p.dtype, [&](auto dt) {
    using T = typename decltype(dt)::type;
    at::parallel_for(0, p.rows, 2048, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        process_source_row<T>(p, i);
      }
    });
  });
}

void run(const PackProblem& p) {
  const MatrixLayout& L = p.in;
  const int64_t rows = L.batch * L.rows;
  at::parallel_for(0, rows, grain_rows(L.cols), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t b = i / L.rows;
      const int64_t r = i % L.rows;
      const uint8_t* in = p.in_data + L.batch_offset(b) + r * L.row_stride;
      if (p.unpack) {
        uint8_t* out = p.out + i * L.cols * 2;
        for (int64_t c = 0; c < L.cols; ++c) {
          const uint8_t byte = in[c * L.col_stride];
          out[2 * c] = byte & 15u;
          out[2 * c + 1] = byte >> 4;
        }
      } else {
        uint8_t* out = p.out + i * (L.cols / 2);
        for (int64_t c = 0; c < L.cols; c += 2) {
          const uint8_t lo = in[c * L.col_stride];
          const uint8_t hi = in[(c + 1) * L.col_stride];
          if (lo > 15u || hi > 15u) {
            report(&p.status->input,
                   static_cast<unsigned long long>(i * L.cols + c + (lo > 15u ? 0 : 1)));
          }
          out[c / 2] = pack_nibbles(lo, hi);
        }
      }
    }
  });
}

}  // namespace moeq::kernels::fp4::cpu
