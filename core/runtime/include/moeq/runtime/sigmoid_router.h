// SigmoidTopKRouter: DeepSeek-style routing, shared by the deepseek_v3, glm4_moe and minimax_m2
// plugins and by models declared in YAML (registry/declared_model.h). Sigmoid scores plus an
// `e_score_correction_bias` choose the top-k experts, optionally only within the top `topk_group`
// of `n_group` expert groups (DeepSeek-V3, GLM-4.5); the combine weights are the plain sigmoid
// scores of the chosen experts, optionally renormalised and scaled (routed_scaling_factor).
// MiniMax-M2 is the one-group case with the bias on the MoE block instead of the router.
#pragma once

#include <moeq/runtime/blocks.h>

#include <cstdint>
#include <string>

namespace moeq::runtime {

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

// logits = x W^T ("<name>.weight"); scores = sigmoid(logits) in fp32; the top-k of scores + bias
// (within the best groups); weights = the chosen scores, renormalised and scaled. RouterOutput's
// probs are the sigmoid scores.
class SigmoidTopKRouter final : public Router {
 public:
  SigmoidTopKRouter(std::string type, std::string name, const SigmoidTopKOptions& options);
  RouterOutput route(const at::Tensor& hidden) override;
  const SigmoidTopKOptions& options() const { return options_; }

 private:
  SigmoidTopKOptions options_;
  Parameter* weight_;
  Parameter* bias_;
  fn::WeightRef ref_;
};

}  // namespace moeq::runtime
