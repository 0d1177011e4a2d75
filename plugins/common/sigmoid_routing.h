// Pieces the DeepSeek-style plugins share (deepseek_v3, glm4_moe, minimax_m2), header-only so
// each plugin stays one shared object built from its own sources and the public SDK:
// - SigmoidTopKRouter: sigmoid scores plus an `e_score_correction_bias` choose the top-k experts,
//   optionally only within the top `topk_group` of `n_group` expert groups (DeepSeek-V3,
//   GLM-4.5); the combine weights are the plain sigmoid scores of the chosen experts, optionally
//   renormalised and scaled (routed_scaling_factor). MiniMax-M2 is the one-group case with the
//   bias on the MoE block instead of the router.
// - dequantize_fp8_blocks: a WeightSource over a checkpoint whose projections are stored as FP8
//   E4M3 with 128x128 `weight_scale_inv` blocks (DeepSeek-V3, MiniMax-M2), giving bf16 weights.
#pragma once

#include <moeq/core/error.h>
#include <moeq/io/hf_config.h>
#include <moeq/kernels/source_dequant.h>
#include <moeq/runtime/blocks.h>
#include <moeq/runtime/weight_source.h>

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moeq_plugins {

struct SigmoidTopKOptions {
  int64_t hidden_size = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  // Experts are chosen within the `topk_group` best of `n_group` equal groups, a group ranked by
  // the sum of its two best biased scores. 1 / 1: no grouping.
  int64_t n_group = 1;
  int64_t topk_group = 1;
  bool norm_topk_prob = true;
  // Added to the renormalising sum: DeepSeek-V3 and GLM-4.5 add 1e-20, MiniMax-M2 nothing.
  double norm_eps = 1e-20;
  double routed_scaling_factor = 1.0;
  // DeepSeek-V3 / GLM-4.5 compute the logits in fp32 (hidden and weight upcast); MiniMax-M2 in
  // the compute dtype, with the sigmoid in fp32.
  bool logits_in_fp32 = true;
  // Full checkpoint name of the correction bias; empty: "<router>.e_score_correction_bias".
  std::string bias_name;
};

class SigmoidTopKRouter final : public moeq::runtime::Router {
 public:
  SigmoidTopKRouter(std::string type, std::string name, const SigmoidTopKOptions& o)
      : Router(std::move(type), std::move(name), o.num_experts, o.top_k),
        options_(o),
        weight_(&add_parameter("weight", {o.num_experts, o.hidden_size})),
        bias_(o.bias_name.empty() ? &add_parameter("e_score_correction_bias", {o.num_experts})
                                  : &add_named_parameter(o.bias_name, {o.num_experts})) {
    MOEQ_CHECK(
        o.n_group > 0 && o.num_experts % o.n_group == 0 && o.topk_group > 0 &&
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
    ref_.kind = moeq::fn::ProjKind::kRouter;
  }

  moeq::runtime::RouterOutput route(const at::Tensor& hidden) override {
    const auto& o = options_;
    moeq::runtime::RouterOutput out;
    if (o.logits_in_fp32) {
      out.logits = moeq::fn::linear(hidden.to(at::kFloat), weight_->value.to(at::kFloat),
                                    std::nullopt, ref_);
    } else {
      out.logits =
          moeq::fn::linear(hidden, weight_->value.to(hidden.scalar_type()), std::nullopt, ref_);
    }
    auto scores = out.logits.to(at::kFloat).sigmoid();
    auto choice = scores + bias_->value;
    if (o.n_group > 1) {
      const auto t = choice.size(0);
      auto group_scores =
          std::get<0>(choice.view({t, o.n_group, -1}).topk(2, -1)).sum(-1);  // [T, G]
      auto group_idx = std::get<1>(at::topk(group_scores, o.topk_group, -1, true, false));
      auto group_mask = at::zeros_like(group_scores).scatter_(1, group_idx, 1);
      auto score_mask = group_mask.unsqueeze(-1)
                            .expand({t, o.n_group, o.num_experts / o.n_group})
                            .reshape({t, o.num_experts});
      choice =
          choice.masked_fill(score_mask.logical_not(), -std::numeric_limits<float>::infinity());
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

  const SigmoidTopKOptions& options() const { return options_; }

 private:
  SigmoidTopKOptions options_;
  moeq::runtime::Parameter* weight_;
  moeq::runtime::Parameter* bias_;
  moeq::fn::WeightRef ref_;
};

// FP8 projections (`<m>.weight` E4M3 + `<m>.weight_scale_inv` fp32 per block) become bf16
// weights, as transformers' FP8 dequantization computes them. The block is
// quantization_config.weight_block_size (default 128x128). A source without `_scale_inv`
// tensors is returned as is.
inline std::shared_ptr<moeq::runtime::WeightSource> dequantize_fp8_blocks(
    std::shared_ptr<moeq::runtime::WeightSource> source, const moeq::io::HfConfig& config) {
  int64_t block_rows = 128;
  int64_t block_cols = 128;
  if (auto block = config.find<std::vector<int64_t>>("quantization_config.weight_block_size")) {
    MOEQ_CHECK(block->size() == 2,
               "config '{}': weight_block_size must be [rows, cols], got {} "
               "values",
               config.source(), block->size());
    block_rows = (*block)[0];
    block_cols = (*block)[1];
  }
  std::vector<moeq::runtime::DerivedSource::Rule> rules;
  constexpr std::string_view kScale = "_scale_inv";
  for (const auto& name : source->names()) {
    if (!name.ends_with(kScale)) {
      continue;
    }
    const auto weight = name.substr(0, name.size() - kScale.size());
    MOEQ_CHECK(source->has(weight), "{}: '{}' has no weight '{}' beside it", source->describe(),
               name, weight);
    rules.push_back(
        {weight, {weight, name}, [block_rows, block_cols](const std::vector<at::Tensor>& in) {
           return moeq::kernels::dequantize_fp8_block_source(in[0], in[1], at::kBFloat16,
                                                             block_rows, block_cols);
         }});
  }
  if (rules.empty()) {
    return source;
  }
  return std::make_shared<moeq::runtime::DerivedSource>(std::move(source), std::move(rules),
                                                        "FP8 block weights dequantized to bf16");
}

}  // namespace moeq_plugins
