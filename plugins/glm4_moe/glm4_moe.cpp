// The glm4_moe plugin: Glm4MoeForCausalLM (GLM-4.5, GLM-4.5-Air, GLM-4.6), an easy-tier model
// with DeepSeek-style routing:
// - attention: standard GQA with q/k/v biases (attention_bias), optional per-head q/k RMSNorm
//   (use_qk_norm), and partial RoPE: rotate-half on the first int(head_dim *
//   partial_rotary_factor) channels of each head (not interleaved; transformers' default factor
//   for this model is 0.5 when the config gives none);
// - routing: sigmoid scores plus `e_score_correction_bias` choose the top-k experts within the
//   top `topk_group` of `n_group` groups; the weights are the sigmoid scores, renormalised
//   (norm_topk_prob) and scaled (routed_scaling_factor); shared experts are added;
// - the first `first_k_dense_replace` layers are dense MLPs;
// - the multi-token-prediction layer(s) the hub checkpoints carry after the last decoder layer
//   (model.layers.<num_hidden_layers>, num_nextn_predict_layers) are not run: excluded and
//   copied through, as for DeepSeek-V3.
// The experts are per-expert 2-D projections (mlp.experts.{e}.gate_proj ...), so the block takes
// the easy tier's adapter.
#include <moeq/adapters/sparse_moe.h>
#include <moeq/core/error.h>
#include <moeq/registry/causal_lm_architecture.h>
#include <moeq/registry/plugin_abi.h>
#include <moeq/registry/plugin_registrar.h>
#include <moeq/runtime/model_config.h>

#include <fmt/format.h>

#include "../common/sigmoid_routing.h"

namespace {

using namespace moeq::runtime;  // NOLINT(google-build-using-namespace)

constexpr const char* kArchitecture = "Glm4MoeForCausalLM";

// transformers reads partial_rotary_factor from the rope parameters, then the top level, and
// Glm4MoeConfig defaults it to 0.5 (rope_options' default is 1.0).
bool has_partial_rotary_factor(const moeq::io::HfConfig& config) {
  return config.contains("partial_rotary_factor") ||
         config.contains("rope_parameters.partial_rotary_factor") ||
         config.contains("rope_scaling.partial_rotary_factor");
}

std::unique_ptr<CausalLM> build_glm4_moe(const moeq::io::HfConfig& config,
                                         std::shared_ptr<WeightSource> weights,
                                         const RuntimeOptions& options) {
  const auto hidden = config.get<int64_t>("hidden_size");
  const auto num_layers = config.get<int64_t>("num_hidden_layers");
  const auto heads = config.get<int64_t>("num_attention_heads");
  const auto head_dim = model_config::head_dim(config);
  const auto eps = config.get_or("rms_norm_eps", 1e-5);

  CausalLMConfig lm;
  lm.vocab_size = config.get<int64_t>("vocab_size");
  lm.hidden_size = hidden;
  lm.num_layers = num_layers;
  lm.rms_norm_eps = eps;
  lm.tie_word_embeddings = config.get_or("tie_word_embeddings", false);
  lm.norm_type = "Glm4MoeRMSNorm";
  auto model = std::make_unique<CausalLM>(kArchitecture, lm, std::move(weights), options);
  const auto mtp = config.contains("num_nextn_predict_layers")
                       ? config.get<int64_t>("num_nextn_predict_layers")
                       : config.get_or<int64_t>("num_mtp_layers", 0);
  for (int64_t i = 0; i < mtp; ++i) {
    model->exclude_prefix(fmt::format("model.layers.{}", num_layers + i));
  }

  auto rope = model_config::rope_options(config, head_dim, /*default_theta=*/10000.0);
  if (!has_partial_rotary_factor(config)) {
    rope.partial_rotary_factor = 0.5;
  }
  auto rotary = std::make_shared<const RotaryEmbedding>(rope);
  model->set_rotary(rotary);

  AttentionOptions attention;
  attention.hidden_size = hidden;
  attention.num_heads = heads;
  attention.num_kv_heads = config.get_or<int64_t>("num_key_value_heads", heads);
  attention.head_dim = head_dim;
  attention.qkv_bias = config.get_or("attention_bias", false);
  attention.o_bias = false;
  attention.qk_norm = config.get_or("use_qk_norm", false);
  attention.qk_norm_type = "Glm4MoeRMSNorm";
  attention.qk_norm_eps = eps;

  moeq_plugins::check_sigmoid_noaux_routing(config, "GLM-4.5");
  moeq_plugins::SigmoidTopKOptions router;  // transformers' Glm4MoeTopkRouter
  router.hidden_size = hidden;
  router.num_experts = config.get_first<int64_t>({"n_routed_experts", "num_local_experts"});
  router.top_k = config.get<int64_t>("num_experts_per_tok");
  router.n_group = config.get_or<int64_t>("n_group", 1);
  router.topk_group = config.get_or<int64_t>("topk_group", 1);
  router.norm_topk_prob = config.get_or("norm_topk_prob", true);
  router.routed_scaling_factor = config.get_or("routed_scaling_factor", 1.0);
  const auto activation = model_config::activation(config, kArchitecture);

  GatedMlpOptions expert;
  expert.hidden_size = hidden;
  expert.intermediate_size = config.get<int64_t>("moe_intermediate_size");
  expert.activation = activation;
  const auto n_shared = config.get_or<int64_t>("n_shared_experts", 1);
  MOEQ_CHECK(n_shared >= 0, "config '{}': n_shared_experts must be >= 0, got {}", config.source(),
             n_shared);
  SparseMoeOptions block;
  block.shared_expert = n_shared > 0;
  block.shared_expert_name = "shared_experts";
  block.shared_expert_type = "Glm4MoeMLP";
  block.shared_expert_options = expert;
  block.shared_expert_options.intermediate_size = expert.intermediate_size * n_shared;
  GatedMlpOptions dense;
  dense.hidden_size = hidden;
  dense.intermediate_size = config.get<int64_t>("intermediate_size");
  dense.activation = activation;
  const auto first_dense = config.get_or<int64_t>("first_k_dense_replace", 1);
  MOEQ_CHECK(first_dense >= 0 && first_dense <= num_layers,
             "config '{}': first_k_dense_replace must be in [0, num_hidden_layers {}], got {}",
             config.source(), num_layers, first_dense);

  for (int64_t i = 0; i < num_layers; ++i) {
    const auto prefix = fmt::format("model.layers.{}", i);
    auto layer = std::make_unique<DecoderLayer>("Glm4MoeDecoderLayer", prefix, i);
    layer->set_input_layernorm(
        std::make_unique<RMSNorm>("Glm4MoeRMSNorm", prefix + ".input_layernorm", hidden, eps));
    layer->set_attention(
        std::make_unique<Attention>("Glm4MoeAttention", prefix + ".self_attn", attention, rotary));
    layer->set_post_attention_layernorm(std::make_unique<RMSNorm>(
        "Glm4MoeRMSNorm", prefix + ".post_attention_layernorm", hidden, eps));
    const auto mlp = prefix + ".mlp";
    if (i >= first_dense) {
      auto moe = std::make_unique<SparseMoeBlock>("Glm4MoeMoE", mlp, block);
      moe->set_router(std::make_unique<moeq_plugins::SigmoidTopKRouter>("Glm4MoeTopkRouter",
                                                                        mlp + ".gate", router));
      moe->set_experts(std::make_unique<PerExpertMlps>("Glm4MoeExperts", mlp + ".experts",
                                                       router.num_experts, "Glm4MoeMLP", expert));
      layer->set_mlp(std::move(moe));
    } else {
      layer->set_mlp(std::make_unique<GatedMlp>("Glm4MoeMLP", mlp, dense));
    }
    model->add_layer(std::move(layer));
  }
  return model;
}

void register_glm4_moe(moeq::PluginRegistrar& registrar) {
  registrar.add_architecture(
      kArchitecture,
      moeq::causal_lm_architecture(
          kArchitecture, &build_glm4_moe,
          "GLM-4.5/4.6: GQA with partial RoPE and optional q/k norm, grouped sigmoid top-k "
          "routing with correction bias, shared experts, dense first layers; MTP layer excluded"));
  registrar.add_module_adapter("Glm4MoeMoE",
                               moeq::adapters::sparse_moe_adapter_factory("Glm4MoeMoE"));
}

}  // namespace

MOEQ_PLUGIN(glm4_moe, "0.1.0", register_glm4_moe)
