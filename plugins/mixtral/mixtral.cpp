// The mixtral plugin: MixtralForCausalLM (Mixtral-8x7B, 8x22B and their fine-tunes) and its sparse
// MoE block, an easy-tier module: a softmax top-k router and per-expert w1/w2/w3 projections.
#include <moeq/adapters/sparse_moe.h>
#include <moeq/registry/causal_lm_architecture.h>
#include <moeq/registry/plugin_abi.h>
#include <moeq/registry/plugin_registrar.h>
#include <moeq/runtime/models.h>

namespace {

void register_mixtral(moeq::PluginRegistrar& registrar) {
  registrar.add_architecture(
      "MixtralForCausalLM",
      moeq::causal_lm_architecture(
          "MixtralForCausalLM", &moeq::runtime::build_mixtral_for_causal_lm,
          "Mixtral: GQA attention, softmax top-k router (renormalised), experts w1/w3/w2"));
  registrar.add_module_adapter("MixtralSparseMoeBlock",
                               moeq::adapters::sparse_moe_adapter_factory("MixtralSparseMoeBlock"));
}

}  // namespace

MOEQ_PLUGIN(mixtral, "0.1.0", register_mixtral)
