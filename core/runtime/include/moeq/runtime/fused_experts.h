// Fused experts: every expert's projections stacked in two 3-D parameters, as transformers 5
// stores GPT-OSS, Llama 4 and the newer MoEs (`experts.gate_up_proj` [E, H, 2I] and
// `experts.down_proj` [E, I, H]) and runs them with matmuls on expert slices, one batched matmul
// over all experts, or a grouped matmul over tokens sorted by expert. Every one of those calls
// goes through moeq::fn with a WeightRef naming the stack (and the expert, for a slice), so the
// mid tier's adapter can quantize them by operand, whichever way the forward is dispatched.
//
// For quantization and export a stack is a set of per-expert 2-D projections [out, in]
// (StackedProjection): gate and up are separated (interleaved columns for GPT-OSS, concatenated
// halves for Llama 4), and each gets the name the serving engines map to their w13/w2 stacks
// ("experts.3.gate_proj").
#pragma once

#include <moeq/runtime/blocks.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moeq::runtime {

// How gate and up share the fused stack's output channels.
enum class GateUpLayout {
  kConcatenated,  // [gate | up]: Llama 4, transformers' default
  kInterleaved,   // gate0, up0, gate1, up1, ...: GPT-OSS
};

enum class FusedActivation {
  kSilu,           // silu(gate) * up
  kClampedSwiglu,  // GPT-OSS: (clamp(up, ±limit) + 1) * g * sigmoid(alpha * g), g = min(gate,
                   // limit)
};

// How the routed forward runs the experts.
enum class FusedDispatch {
  kPerExpert,  // a matmul per expert on the tokens that picked it (transformers' eager loop)
  kBatched,    // one bmm over [E, T, H]: every expert on every token (Llama 4's forward)
  kGrouped,    // tokens sorted by expert, one grouped matmul (transformers' grouped_mm path)
};

struct FusedExpertsOptions {
  int64_t num_experts = 0;
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  // Stacks stored [E, in, out] (GPT-OSS, Llama 4: x @ W[e]); false: [E, out, in] (x @ W[e]^T).
  bool transposed = true;
  GateUpLayout layout = GateUpLayout::kConcatenated;
  bool bias = false;  // gate_up_proj_bias [E, 2I], down_proj_bias [E, H]
  FusedActivation activation = FusedActivation::kSilu;
  double swiglu_alpha = 1.702;
  double swiglu_limit = 7.0;
  FusedDispatch dispatch = FusedDispatch::kPerExpert;
  // Checkpoint names of the stacks under the module's prefix.
  std::string gate_up_name = "gate_up_proj";
  std::string down_name = "down_proj";
  // Per-expert names the stacks are split into on export: "<prefix>.<e>.<gate_name>".
  std::string gate_name = "gate_proj";
  std::string up_name = "up_proj";
  std::string down_export_name = "down_proj";
};

// One expert's 2-D projection inside a stack: output channels first, first + step, ...
// (count of them) of expert `expert`'s slice, seen as [out, in].
struct StackedProjection {
  std::string module;  // the per-expert name, "model.layers.0.mlp.experts.3.gate_proj"
  std::string role;    // "gate_proj"
  fn::ProjKind kind = fn::ProjKind::kOther;
  int64_t expert = 0;
  Parameter* stack = nullptr;
  Parameter* bias = nullptr;  // the stacked bias, nullptr when the experts have none
  int64_t first = 0;
  int64_t step = 1;
  int64_t count = 0;
};

class FusedExperts : public Experts {
 public:
  FusedExperts(std::string type, std::string name, const FusedExpertsOptions& options);

  int64_t num_experts() const override { return options_.num_experts; }
  at::Tensor run_expert(int64_t expert, const at::Tensor& rows) override;
  std::optional<at::Tensor> run_routed(const at::Tensor& x,
                                       const RouterOutput& routing,
                                       bool weight_on_input) override;
  // The experts on stacked inputs [E, n, H] -> [E, n, H], one bmm per projection.
  at::Tensor run_batched(const at::Tensor& x);

  const FusedExpertsOptions& options() const { return options_; }
  void set_dispatch(FusedDispatch dispatch) { options_.dispatch = dispatch; }
  Parameter& gate_up() { return *gate_up_; }
  Parameter& down() { return *down_; }
  Parameter* gate_up_bias() { return gate_up_bias_; }
  Parameter* down_bias() { return down_bias_; }

  // gate, up, down of every expert, in expert order.
  std::vector<StackedProjection> projections();

  // Projection p's weight [count, in] out of a stack value (contiguous copy).
  at::Tensor slice(const at::Tensor& stack, const StackedProjection& p) const;
  // Writes weight [count, in] into a stack value in place.
  void assign(at::Tensor& stack, const StackedProjection& p, const at::Tensor& weight) const;
  // Projection p's bias [count] out of a stacked bias value.
  static at::Tensor slice_bias(const at::Tensor& bias, const StackedProjection& p);

 private:
  at::Tensor activate(const at::Tensor& gate_up) const;
  at::Tensor project(const Parameter& stack,
                     const Parameter* bias,
                     const fn::WeightRef& ref,
                     int64_t expert,
                     const at::Tensor& rows);

  FusedExpertsOptions options_;
  Parameter* gate_up_;
  Parameter* down_;
  Parameter* gate_up_bias_ = nullptr;
  Parameter* down_bias_ = nullptr;
  std::string gate_up_role_;
  std::string down_role_;
};

}  // namespace moeq::runtime
