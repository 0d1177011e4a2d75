#include <moeq/runtime/sigmoid_router.h>

#include <moeq/core/error.h>

#include <ATen/ATen.h>

#include <limits>
#include <utility>

namespace moeq::runtime {

SigmoidTopKRouter::SigmoidTopKRouter(std::string type,
                                     std::string name,
                                     const SigmoidTopKOptions& o)
    : Router(std::move(type), std::move(name), o.num_experts, o.top_k),
      options_(o),
      weight_(&add_parameter("weight", {o.num_experts, o.hidden_size})),
      bias_(o.bias_name.empty() ? &add_parameter("e_score_correction_bias", {o.num_experts})
                                : &add_named_parameter(o.bias_name, {o.num_experts})) {
  MOEQ_CHECK(o.n_group > 0 && o.num_experts % o.n_group == 0 && o.topk_group > 0 &&
                 o.topk_group <= o.n_group,
             "{}: n_group {} must divide n_routed_experts {} and topk_group {} be in [1, n_group]",
             this->name(), o.n_group, o.num_experts, o.topk_group);
  MOEQ_CHECK(o.n_group == 1 || o.num_experts / o.n_group >= 2,
             "{}: grouped routing ranks a group by its two best experts; n_group {} leaves {} "
             "expert(s) per group",
             this->name(), o.n_group, o.num_experts / o.n_group);
  bias_->dtype = at::kFloat;  // transformers keeps it fp32 (_keep_in_fp32_modules_strict)
  ref_.name = weight_->name;
  ref_.role = "router";
  ref_.kind = fn::ProjKind::kRouter;
}

RouterOutput SigmoidTopKRouter::route(const at::Tensor& hidden) {
  const auto& o = options_;
  RouterOutput out;
  if (o.logits_in_fp32) {
    out.logits =
        fn::linear(hidden.to(at::kFloat), weight_->value.to(at::kFloat), std::nullopt, ref_);
  } else {
    out.logits = fn::linear(hidden, weight_->value.to(hidden.scalar_type()), std::nullopt, ref_);
  }
  auto scores = out.logits.to(at::kFloat).sigmoid();
  auto choice = scores + bias_->value;
  if (o.n_group > 1) {
    const auto t = choice.size(0);
    auto group_scores = std::get<0>(choice.view({t, o.n_group, -1}).topk(2, -1)).sum(-1);  // [T, G]
    auto group_idx = std::get<1>(at::topk(group_scores, o.topk_group, -1, true, false));
    auto group_mask = at::zeros_like(group_scores).scatter_(1, group_idx, 1);
    auto score_mask = group_mask.unsqueeze(-1)
                          .expand({t, o.n_group, o.num_experts / o.n_group})
                          .reshape({t, o.num_experts});
    choice = choice.masked_fill(score_mask.logical_not(), -std::numeric_limits<float>::infinity());
  }
  auto ids = std::get<1>(at::topk(choice, o.top_k, -1, true, false));
  auto weights = scores.gather(1, ids);
  if (o.norm_topk_prob) {
    auto denominator = weights.sum(-1, true);
    if (o.norm_eps != 0.0) {
      denominator = denominator + o.norm_eps;
    }
    weights = weights / denominator;
  }
  out.topk_ids = ids;
  out.topk_weights = o.routed_scaling_factor == 1.0 ? weights : weights * o.routed_scaling_factor;
  out.probs = scores;
  return out;
}

}  // namespace moeq::runtime
