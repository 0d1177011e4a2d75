#include <moeq/runtime/fused_experts.h>

#include <moeq/core/error.h>

#include "shape.h"

#include <ATen/ATen.h>

namespace moeq::runtime {
namespace {

const at::Tensor& resident(const Parameter& p) {
  MOEQ_INTERNAL_ASSERT(p.resident(), "weight '{}' used while not loaded", p.name);
  return p.value;
}

at::Tensor select_channels(const at::Tensor& t, int64_t dim, const StackedProjection& p) {
  return t.slice(dim, p.first, p.first + p.step * (p.count - 1) + 1, p.step);
}

}  // namespace

FusedExperts::FusedExperts(std::string type, std::string name, const FusedExpertsOptions& options)
    : Experts(std::move(type), std::move(name)), options_(options) {
  const auto& o = options_;
  MOEQ_CHECK(o.num_experts > 0 && o.hidden_size > 0 && o.intermediate_size > 0,
             "{}: fused experts need positive num_experts, hidden_size and intermediate_size, got "
             "{}, {}, {}",
             this->name(), o.num_experts, o.hidden_size, o.intermediate_size);
  MOEQ_CHECK(o.transposed || o.dispatch == FusedDispatch::kPerExpert,
             "{}: batched and grouped dispatch need stacks stored [E, in, out]", this->name());
  const auto e = o.num_experts, h = o.hidden_size, i = o.intermediate_size;
  gate_up_ = &add_parameter(o.gate_up_name, o.transposed ? std::vector<int64_t>{e, h, 2 * i}
                                                         : std::vector<int64_t>{e, 2 * i, h});
  down_ = &add_parameter(
      o.down_name, o.transposed ? std::vector<int64_t>{e, i, h} : std::vector<int64_t>{e, h, i});
  if (o.bias) {
    gate_up_bias_ = &add_parameter(o.gate_up_name + "_bias", {e, 2 * i});
    down_bias_ = &add_parameter(o.down_name + "_bias", {e, h});
  }
  gate_up_role_ = o.gate_up_name;
  down_role_ = o.down_name;
}

at::Tensor FusedExperts::activate(const at::Tensor& gate_up) const {
  const auto i = options_.intermediate_size;
  at::Tensor gate;
  at::Tensor up;
  if (options_.layout == GateUpLayout::kInterleaved) {
    gate = gate_up.slice(-1, 0, 2 * i, 2);
    up = gate_up.slice(-1, 1, 2 * i, 2);
  } else {
    gate = gate_up.narrow(-1, 0, i);
    up = gate_up.narrow(-1, i, i);
  }
  switch (options_.activation) {
    case FusedActivation::kSilu:
      return up * at::silu(gate);
    case FusedActivation::kClampedSwiglu: {
      const double limit = options_.swiglu_limit;
      gate = gate.clamp_max(limit);
      up = up.clamp(-limit, limit);
      auto glu = gate * at::sigmoid(gate * options_.swiglu_alpha);
      return (up + 1) * glu;
    }
  }
  MOEQ_INTERNAL_ASSERT(false, "unknown fused activation");
  return {};
}

at::Tensor FusedExperts::project(const Parameter& stack,
                                 const Parameter* bias,
                                 const fn::WeightRef& ref,
                                 int64_t expert,
                                 const at::Tensor& rows) {
  const auto& w = resident(stack);
  at::Tensor out = options_.transposed ? fn::matmul(rows, w[expert], ref)
                                       : fn::linear(rows, w[expert], std::nullopt, ref);
  if (bias != nullptr) {
    out = out + resident(*bias)[expert];
  }
  return out;
}

at::Tensor FusedExperts::run_expert(int64_t expert, const at::Tensor& rows) {
  MOEQ_CHECK(expert >= 0 && expert < num_experts(), "{}: expert {} out of range [0, {})", name(),
             expert, num_experts());
  const fn::WeightRef gate_up_ref{gate_up_->name, gate_up_role_, expert, fn::ProjKind::kGateUp};
  const fn::WeightRef down_ref{down_->name, down_role_, expert, fn::ProjKind::kDown};
  auto h = activate(project(*gate_up_, gate_up_bias_, gate_up_ref, expert, rows));
  return project(*down_, down_bias_, down_ref, expert, h);
}

at::Tensor FusedExperts::run_batched(const at::Tensor& x) {
  const fn::WeightRef gate_up_ref{gate_up_->name, gate_up_role_, fn::WeightRef::kAllExperts,
                                  fn::ProjKind::kGateUp};
  const fn::WeightRef down_ref{down_->name, down_role_, fn::WeightRef::kAllExperts,
                               fn::ProjKind::kDown};
  auto gate_up = fn::bmm(x, resident(*gate_up_), gate_up_ref);
  if (gate_up_bias_ != nullptr) {
    gate_up = gate_up + resident(*gate_up_bias_).unsqueeze(1);
  }
  auto out = fn::bmm(activate(gate_up), resident(*down_), down_ref);
  if (down_bias_ != nullptr) {
    out = out + resident(*down_bias_).unsqueeze(1);
  }
  return out;
}

std::optional<at::Tensor> FusedExperts::run_routed(const at::Tensor& x,
                                                   const RouterOutput& routing,
                                                   bool weight_on_input) {
  const auto t = x.size(0);
  const auto e = num_experts();
  const auto k = routing.topk_ids.size(1);
  switch (options_.dispatch) {
    case FusedDispatch::kPerExpert:
      return std::nullopt;
    case FusedDispatch::kBatched: {
      // Llama 4: a dense [T, E] weight matrix (zero where an expert was not picked); every expert
      // runs on every token, and the outputs are summed over experts.
      auto scores = at::zeros({t, e}, routing.topk_weights.options())
                        .scatter(1, routing.topk_ids, routing.topk_weights);
      auto weights = scores.t().reshape({-1, 1});
      at::Tensor out;
      if (weight_on_input) {
        auto routed_in = (x.repeat({e, 1}) * weights).to(x.scalar_type());
        out = run_batched(routed_in.view({e, t, -1}));
      } else {
        out = run_batched(x.unsqueeze(0).expand({e, t, x.size(1)}).contiguous());
        out = out * weights.view({e, t, 1});
      }
      return out.sum(0).to(x.scalar_type());
    }
    case FusedDispatch::kGrouped: {
      // transformers' grouped_mm_experts_forward: (token, slot) pairs sorted by expert.
      auto expert_ids = routing.topk_ids.reshape(-1);
      auto sample_weights = routing.topk_weights.reshape(-1);
      auto [sorted_ids, perm] = at::sort(expert_ids, /*stable=*/true, 0, false);
      auto rows = x.index_select(0, perm.div(k, "floor"));
      auto w = sample_weights.index_select(0, perm).unsqueeze(-1);
      if (weight_on_input) {
        rows = (rows * w).to(x.scalar_type());
      }
      auto offsets = at::bincount(sorted_ids, {}, e).cumsum(0).to(at::kInt);
      const fn::WeightRef gate_up_ref{gate_up_->name, gate_up_role_, fn::WeightRef::kAllExperts,
                                      fn::ProjKind::kGateUp};
      const fn::WeightRef down_ref{down_->name, down_role_, fn::WeightRef::kAllExperts,
                                   fn::ProjKind::kDown};
      auto gate_up = fn::grouped_mm(rows, resident(*gate_up_), offsets, gate_up_ref);
      if (gate_up_bias_ != nullptr) {
        gate_up = gate_up + resident(*gate_up_bias_).index_select(0, sorted_ids);
      }
      auto out = fn::grouped_mm(activate(gate_up), resident(*down_), offsets, down_ref);
      if (down_bias_ != nullptr) {
        out = out + resident(*down_bias_).index_select(0, sorted_ids);
      }
      if (!weight_on_input) {
        out = out * w;
      }
      auto restored = at::empty_like(out);
      restored.index_copy_(0, perm, out);
      return restored.view({t, k, -1}).sum(1).to(x.scalar_type());
    }
  }
  return std::nullopt;
}

std::vector<StackedProjection> FusedExperts::projections() {
  const auto& o = options_;
  const auto i = o.intermediate_size;
  const bool interleaved = o.layout == GateUpLayout::kInterleaved;
  std::vector<StackedProjection> out;
  out.reserve(3 * static_cast<size_t>(o.num_experts));
  for (int64_t e = 0; e < o.num_experts; ++e) {
    const auto prefix = child_name(std::to_string(e));
    out.push_back({prefix + "." + o.gate_name, o.gate_name, fn::ProjKind::kGate, e, gate_up_,
                   gate_up_bias_, 0, interleaved ? 2 : 1, i});
    out.push_back({prefix + "." + o.up_name, o.up_name, fn::ProjKind::kUp, e, gate_up_,
                   gate_up_bias_, interleaved ? 1 : i, interleaved ? 2 : 1, i});
    out.push_back({prefix + "." + o.down_export_name, o.down_export_name, fn::ProjKind::kDown, e,
                   down_, down_bias_, 0, 1, o.hidden_size});
  }
  return out;
}

at::Tensor FusedExperts::slice(const at::Tensor& stack, const StackedProjection& p) const {
  MOEQ_CHECK(stack.dim() == 3 && p.expert < stack.size(0),
             "{}: expected a [E, ., .] stack holding expert {}, got {}", name(), p.expert,
             detail::shape_str(stack.sizes()));
  auto w = options_.transposed ? stack[p.expert].t() : stack[p.expert];  // [out, in]
  return select_channels(w, 0, p).contiguous();
}

void FusedExperts::assign(at::Tensor& stack,
                          const StackedProjection& p,
                          const at::Tensor& weight) const {
  auto w = options_.transposed ? stack[p.expert].t() : stack[p.expert];
  select_channels(w, 0, p).copy_(weight);
}

at::Tensor FusedExperts::slice_bias(const at::Tensor& bias, const StackedProjection& p) {
  return select_channels(bias[p.expert], 0, p).contiguous();
}

}  // namespace moeq::runtime
