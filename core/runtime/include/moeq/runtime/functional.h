// moeq's matmul functionals: every projection of the model runtime (attention, dense MLPs,
// routers, experts) calls one of these instead of an ATen op, so that an adapter can intercept
// it. This is the C++ counterpart of ModelOpt's `replace_function` on torch.nn.functional.linear /
// torch.bmm / torch.matmul, without its global monkey-patching.
//
// The contract
// ------------
// 1. Every call carries a WeightRef naming its weight operand: the checkpoint name of the
//    parameter, the expert it belongs to (or the slice of a stacked [E, ...] weight), and the
//    projection's role. An interceptor identifies the call site by this operand, never by call
//    order: the routed forward skips experts that no token picked, and an all-experts
//    calibration pass calls them in a different order.
// 2. Overrides are scoped and thread-local. Constructing a FunctionalOverride pushes a set of
//    handlers on the calling thread's stack; destroying it pops them. Guards must be destroyed in
//    reverse order of construction (RAII does this); anything else is an internal error. Other
//    threads are unaffected.
// 3. A call goes to the innermost (most recently pushed) override that has a handler for that
//    functional; overrides without one are skipped. While a handler runs, the stack is seen from
//    below it: a handler that calls the same functional reaches the next override down, and at
//    the bottom the plain ATen implementation. So a handler delegates by calling fn::linear(...)
//    (typically with a fake-quantized weight), and never recurses into itself.
// 4. A handler must return what the plain implementation would return in shape, dtype and
//    device (it may change values: that is the point). It must not keep references to the
//    WeightRef's strings past the call; they view storage of the calling module.
// 5. The plain implementations: linear = at::linear; bmm = at::bmm; matmul = at::matmul;
//    grouped_mm = torch._grouped_mm's semantics (2-D x 3-D with group end offsets), computed with
//    at::_grouped_mm where the inputs allow it (CUDA, bf16, aligned) and a loop of at::mm
//    otherwise.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string_view>

namespace moeq::fn {

// Canonical projection kinds, so interceptors need not parse checkpoint names: gate and up share
// an NVFP4 global scale whatever the checkpoint calls them (gate_proj/up_proj or w1/w3).
enum class ProjKind : uint8_t {
  kOther,
  kQ,
  kK,
  kV,
  kO,
  kGate,
  kUp,
  kDown,
  kGateUp,  // a fused gate-and-up weight
  kRouter,
  kSharedExpertGate,
  kHead,  // the LM head
};

// Names the weight operand of a functional call.
struct WeightRef {
  // The parameter's checkpoint name, e.g. "model.layers.3.mlp.experts.5.gate_proj.weight", or
  // the name of a stacked 3-D weight such as "model.layers.3.mlp.experts.gate_up_proj".
  std::string_view name;
  // The projection's role within its module: "q_proj", "gate_proj", "w1", "router", ... (the
  // last component of the checkpoint name before ".weight" for per-module weights).
  std::string_view role;
  // The expert this weight belongs to: its index for a per-expert 2-D weight or for one slice of
  // a stacked weight, kNoExpert outside routed experts (attention, dense and shared MLPs,
  // routers), kAllExperts for a call on a whole stacked weight (bmm, grouped_mm).
  int64_t expert = kNoExpert;
  ProjKind kind = ProjKind::kOther;

  static constexpr int64_t kNoExpert = -1;
  static constexpr int64_t kAllExperts = -2;
};

// Handlers; an empty std::function means "not intercepted here".
using LinearFn = std::function<at::Tensor(const at::Tensor& input,
                                          const at::Tensor& weight,
                                          const std::optional<at::Tensor>& bias,
                                          const WeightRef& ref)>;
using BmmFn =
    std::function<at::Tensor(const at::Tensor& a, const at::Tensor& b, const WeightRef& ref)>;
using MatmulFn =
    std::function<at::Tensor(const at::Tensor& a, const at::Tensor& b, const WeightRef& ref)>;
using GroupedMmFn = std::function<at::Tensor(
    const at::Tensor& a, const at::Tensor& b, const at::Tensor& offsets, const WeightRef& ref)>;

struct Handlers {
  LinearFn linear;
  BmmFn bmm;
  MatmulFn matmul;
  GroupedMmFn grouped_mm;
};

// y = input @ weight^T + bias, input [..., in], weight [out, in].
at::Tensor linear(const at::Tensor& input,
                  const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias,
                  const WeightRef& ref);
// Batched: a [B, n, k] @ b [B, k, m]; ref names b (the weight operand).
at::Tensor bmm(const at::Tensor& a, const at::Tensor& b, const WeightRef& ref);
// at::matmul semantics; ref names b.
at::Tensor matmul(const at::Tensor& a, const at::Tensor& b, const WeightRef& ref);
// Grouped: a [T, k] with rows sorted by group, b [G, k, n], offsets [G] int32 holding the end row
// of each group (cumulative counts); rows of group g are a[offsets[g-1]:offsets[g]] and are
// multiplied by b[g]. Returns [T, n]. ref names b (expert = kAllExperts).
at::Tensor grouped_mm(const at::Tensor& a,
                      const at::Tensor& b,
                      const at::Tensor& offsets,
                      const WeightRef& ref);

// The plain implementations, bypassing every override.
namespace plain {
at::Tensor linear(const at::Tensor& input,
                  const at::Tensor& weight,
                  const std::optional<at::Tensor>& bias);
at::Tensor bmm(const at::Tensor& a, const at::Tensor& b);
at::Tensor matmul(const at::Tensor& a, const at::Tensor& b);
at::Tensor grouped_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& offsets);
}  // namespace plain

// Pushes handlers on this thread's override stack for the guard's lifetime (contract point 2).
class FunctionalOverride {
 public:
  explicit FunctionalOverride(Handlers handlers);
  ~FunctionalOverride();
  FunctionalOverride(const FunctionalOverride&) = delete;
  FunctionalOverride& operator=(const FunctionalOverride&) = delete;

 private:
  Handlers handlers_;
  size_t depth_;  // the stack size after the push; checked on pop
};

// The number of overrides on this thread's stack (tests, diagnostics).
size_t override_depth();

}  // namespace moeq::fn
