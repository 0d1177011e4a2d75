#include <moeq/runtime/functional.h>

#include <moeq/core/error.h>

#include "shape.h"

#include <ATen/ATen.h>

#include <cstdio>
#include <cstdlib>
#include <limits>
#include <vector>

namespace moeq::fn {
namespace {

// This thread's override stack. Dispatch searches entries [0, limit) from the top; while a
// handler at index i runs, limit is i, so the handler's own calls reach the overrides below it.
struct OverrideStack {
  std::vector<const Handlers*> entries;
  size_t limit = std::numeric_limits<size_t>::max();
};

OverrideStack& stack() {
  thread_local OverrideStack s;
  return s;
}

// Restores the search limit when a handler returns or throws.
class LimitScope {
 public:
  LimitScope(OverrideStack& s, size_t limit) : s_(s), saved_(s.limit) { s_.limit = limit; }
  ~LimitScope() { s_.limit = saved_; }
  LimitScope(const LimitScope&) = delete;
  LimitScope& operator=(const LimitScope&) = delete;

 private:
  OverrideStack& s_;
  size_t saved_;
};

// Calls the innermost visible handler selected by `member`, or `fallback` when there is none.
template <typename Member, typename Call, typename Fallback>
at::Tensor dispatch(Member member, Call call, Fallback fallback) {
  OverrideStack& s = stack();
  size_t i = std::min(s.limit, s.entries.size());
  while (i > 0) {
    --i;
    const auto& handler = s.entries[i]->*member;
    if (handler) {
      LimitScope scope(s, i);
      return call(handler);
    }
  }
  return fallback();
}

}  // namespace

namespace plain {

at::Tensor linear(const at::Tensor& input,
                  const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias) {
  return at::linear(input, weight, bias);
}

at::Tensor bmm(const at::Tensor& a, const at::Tensor& b) {
  return at::bmm(a, b);
}

at::Tensor matmul(const at::Tensor& a, const at::Tensor& b) {
  return at::matmul(a, b);
}

at::Tensor grouped_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offsets) {
  MOEQ_CHECK(a.dim() == 2 && b.dim() == 3 && offsets.dim() == 1,
             "grouped_mm: expected a [T, k], b [G, k, n], offsets [G], got {}, {}, {}",
             ::moeq::runtime::detail::shape_str(a.sizes()),
             ::moeq::runtime::detail::shape_str(b.sizes()),
             ::moeq::runtime::detail::shape_str(offsets.sizes()));
  MOEQ_CHECK(a.size(1) == b.size(1) && offsets.size(0) == b.size(0),
             "grouped_mm: shapes do not agree: a {}, b {}, offsets {}",
             ::moeq::runtime::detail::shape_str(a.sizes()),
             ::moeq::runtime::detail::shape_str(b.sizes()),
             ::moeq::runtime::detail::shape_str(offsets.sizes()));
  const auto elem = a.element_size();
  const bool aligned = a.stride(0) * elem % 16 == 0 && b.stride(0) * elem % 16 == 0 &&
                       (b.stride(1) * elem % 16 == 0 || b.stride(2) * elem % 16 == 0);
  if (a.is_cuda() && a.scalar_type() == at::kBFloat16 && b.scalar_type() == at::kBFloat16 &&
      aligned) {
    return at::_grouped_mm(a, b, offsets.to(at::kInt));
  }
  const auto ends = offsets.to(at::kCPU, at::kLong);
  const auto* end = ends.data_ptr<int64_t>();
  auto out = at::empty({a.size(0), b.size(2)}, a.options());
  int64_t begin = 0;
  for (int64_t g = 0; g < b.size(0); ++g) {
    MOEQ_CHECK(end[g] >= begin && end[g] <= a.size(0),
               "grouped_mm: offsets must be non-decreasing and at most {}, got {} after {}",
               a.size(0), end[g], begin);
    if (end[g] > begin) {
      auto rows = out.narrow(0, begin, end[g] - begin);
      at::mm_out(rows, a.narrow(0, begin, end[g] - begin), b[g]);
    }
    begin = end[g];
  }
  return out;
}

}  // namespace plain

at::Tensor linear(const at::Tensor& input,
                  const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias,
                  const WeightRef& ref) {
  return dispatch(
      &Handlers::linear, [&](const LinearFn& f) { return f(input, weight, bias, ref); },
      [&] { return plain::linear(input, weight, bias); });
}

at::Tensor bmm(const at::Tensor& a, const at::Tensor& b, const WeightRef& ref) {
  return dispatch(
      &Handlers::bmm, [&](const BmmFn& f) { return f(a, b, ref); },
      [&] { return plain::bmm(a, b); });
}

at::Tensor matmul(const at::Tensor& a, const at::Tensor& b, const WeightRef& ref) {
  return dispatch(
      &Handlers::matmul, [&](const MatmulFn& f) { return f(a, b, ref); },
      [&] { return plain::matmul(a, b); });
}

at::Tensor grouped_mm(const at::Tensor& a,
                      const at::Tensor& b,
                      const at::Tensor& offsets,
                      const WeightRef& ref) {
  return dispatch(
      &Handlers::grouped_mm, [&](const GroupedMmFn& f) { return f(a, b, offsets, ref); },
      [&] { return plain::grouped_mm(a, b, offsets); });
}

FunctionalOverride::FunctionalOverride(Handlers handlers) : handlers_(std::move(handlers)) {
  auto& s = stack();
  s.entries.push_back(&handlers_);
  depth_ = s.entries.size();
}

FunctionalOverride::~FunctionalOverride() {
  auto& s = stack();
  // A destructor must not throw: a guard popped out of order is a bug, reported by aborting the
  // pop rather than corrupting the stack.
  if (s.entries.size() != depth_ || s.entries.back() != &handlers_) {
    fmt::print(stderr, "moeq: FunctionalOverride destroyed out of order (depth {}, stack {})\n",
               depth_, s.entries.size());
    std::abort();
  }
  s.entries.pop_back();
}

size_t override_depth() {
  return stack().entries.size();
}

}  // namespace moeq::fn
