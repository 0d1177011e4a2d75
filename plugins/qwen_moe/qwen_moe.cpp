// The qwen_moe plugin: Qwen2MoeForCausalLM (Qwen1.5-MoE, Qwen2-57B-A14B: shared expert behind a
// sigmoid gate, q/k/v biases) and Qwen3MoeForCausalLM (Qwen3-30B-A3B, 235B-A22B: q/k norm,
// norm_topk_prob). Both sparse MoE blocks are easy-tier modules.
#include <moeq/adapters/sparse_moe.h>
#include <moeq/registry/causal_lm_architecture.h>
#include <moeq/registry/plugin_abi.h>
#include <moeq/registry/plugin_registrar.h>
#include <moeq/runtime/models.h>

namespace {

void register_qwen_moe(moeq::PluginRegistrar& registrar) {
  registrar.add_architecture(
      "Qwen2MoeForCausalLM",
      moeq::causal_lm_architecture(
          "Qwen2MoeForCausalLM", &moeq::runtime::build_qwen2_moe_for_causal_lm,
          "Qwen2-MoE: softmax top-k router, shared expert with a sigmoid gate, q/k/v biases"));
  registrar.add_architecture(
      "Qwen3MoeForCausalLM",
      moeq::causal_lm_architecture(
          "Qwen3MoeForCausalLM", &moeq::runtime::build_qwen3_moe_for_causal_lm,
          "Qwen3-MoE: softmax top-k router (norm_topk_prob), q/k RMSNorm"));
  for (const char* block : {"Qwen2MoeSparseMoeBlock", "Qwen3MoeSparseMoeBlock"}) {
    registrar.add_module_adapter(block, moeq::adapters::sparse_moe_adapter_factory(block));
  }
}

}  // namespace

MOEQ_PLUGIN(qwen_moe, "0.1.0", register_qwen_moe)
