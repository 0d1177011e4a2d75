// The olmoe plugin: OlmoeForCausalLM (allenai/OLMoE-1B-7B), an easy-tier model built out of tree
// from the installed moeq SDK. What differs from the runtime's stock blocks, per transformers
// 5.17's modeling_olmoe.py:
// - attention: q_norm / k_norm are RMSNorms over the whole q and k projections (weights
//   [hidden_size] and [kv_heads * head_dim]), applied before the heads are split, then optional
//   clip_qkv clamps q, k and v: the runtime's Attention with QkNormScope::kFullWidth and
//   AttentionOptions::clip_qkv;
// - routing: softmax over the router logits in fp32, top-k, renormalised only with
//   norm_topk_prob (false for the published model), weights cast to the compute dtype: exactly
//   the runtime's SoftmaxTopKRouter;
// - experts: mlp.experts.{e}.gate_proj/up_proj/down_proj (the hub layout; transformers 5 fuses
//   them on load and splits them again on save).
#include <moeq/adapters/sparse_moe.h>
#include <moeq/core/error.h>
#include <moeq/registry/causal_lm_architecture.h>
#include <moeq/registry/plugin.h>
#include <moeq/runtime/model_config.h>

#include <fmt/format.h>

namespace {

using namespace moeq::runtime;  // NOLINT(google-build-using-namespace)

constexpr const char* kArchitecture = "OlmoeForCausalLM";

// Builds the model from config.json alone; weights are read later, layer by layer, under the
// names given here (model.layers.{i}.self_attn.q_proj.weight ...).
std::unique_ptr<CausalLM> build_olmoe(const moeq::io::HfConfig& config,
                                      std::shared_ptr<WeightSource> weights,
                                      const RuntimeOptions& options) {
  const auto hidden = config.get<int64_t>("hidden_size");
  const auto num_layers = config.get<int64_t>("num_hidden_layers");
  const auto heads = config.get<int64_t>("num_attention_heads");
  const auto head_dim = model_config::head_dim(config);
  const auto eps = config.get_or("rms_norm_eps", 1e-5);  // OlmoeConfig's default
  // transformers sizes q_norm with hidden_size: a head_dim that breaks this would not load there.
  MOEQ_CHECK(
      heads * head_dim == hidden,
      "config '{}': OLMoE needs num_attention_heads * head_dim == hidden_size ({} * {} != {})",
      config.source(), heads, head_dim, hidden);

  CausalLMConfig lm;
  lm.vocab_size = config.get<int64_t>("vocab_size");
  lm.hidden_size = hidden;
  lm.num_layers = num_layers;
  lm.rms_norm_eps = eps;
  lm.tie_word_embeddings = config.get_or("tie_word_embeddings", false);
  lm.norm_type = "OlmoeRMSNorm";
  auto model = std::make_unique<CausalLM>(kArchitecture, lm, std::move(weights), options);

  // Both spellings: rope_parameters (transformers 5) and rope_theta / rope_scaling (the hub).
  auto rotary = std::make_shared<const RotaryEmbedding>(
      model_config::rope_options(config, head_dim, /*default_theta=*/10000.0));
  model->set_rotary(rotary);

  // OlmoeAttention is the runtime's Attention: attention_bias on all four projections,
  // full-width q/k norms with rms_norm_eps, then clip_qkv.
  AttentionOptions attention;
  attention.hidden_size = hidden;
  attention.num_heads = heads;
  attention.num_kv_heads = config.get_or<int64_t>("num_key_value_heads", heads);
  attention.head_dim = head_dim;
  attention.qkv_bias = config.get_or("attention_bias", false);
  attention.o_bias = attention.qkv_bias;
  attention.qk_norm = true;
  attention.qk_norm_scope = QkNormScope::kFullWidth;
  attention.qk_norm_type = "OlmoeRMSNorm";
  attention.qk_norm_eps = eps;
  if (config.contains("clip_qkv")) {  // null in the published config: absent
    attention.clip_qkv = config.get<double>("clip_qkv");
  }

  // OlmoeTopKRouter is the runtime's softmax router with Qwen's dtype rule.
  const auto num_experts = config.get_first<int64_t>({"num_experts", "num_local_experts"});
  SoftmaxTopKOptions router;
  router.hidden_size = hidden;
  router.num_experts = num_experts;
  router.top_k = config.get<int64_t>("num_experts_per_tok");
  router.normalize_topk = config.get_or("norm_topk_prob", false);
  router.weights_in_compute_dtype = true;

  GatedMlpOptions expert;  // gate_proj / up_proj / down_proj are the defaults
  expert.hidden_size = hidden;
  expert.intermediate_size = config.get<int64_t>("intermediate_size");
  expert.activation = model_config::activation(config, kArchitecture);

  for (int64_t i = 0; i < num_layers; ++i) {
    const auto prefix = fmt::format("model.layers.{}", i);
    auto layer = std::make_unique<DecoderLayer>("OlmoeDecoderLayer", prefix, i);
    layer->set_input_layernorm(
        std::make_unique<RMSNorm>("OlmoeRMSNorm", prefix + ".input_layernorm", hidden, eps));
    layer->set_attention(
        std::make_unique<Attention>("OlmoeAttention", prefix + ".self_attn", attention, rotary));
    layer->set_post_attention_layernorm(std::make_unique<RMSNorm>(
        "OlmoeRMSNorm", prefix + ".post_attention_layernorm", hidden, eps));
    const auto mlp = prefix + ".mlp";
    // The type key "OlmoeSparseMoeBlock" is what the adapter registered below attaches to.
    auto moe = std::make_unique<SparseMoeBlock>("OlmoeSparseMoeBlock", mlp, SparseMoeOptions{});
    moe->set_router(std::make_unique<SoftmaxTopKRouter>("OlmoeTopKRouter", mlp + ".gate", router));
    moe->set_experts(std::make_unique<PerExpertMlps>("OlmoeExperts", mlp + ".experts", num_experts,
                                                     "OlmoeMLP", expert));
    layer->set_mlp(std::move(moe));
    model->add_layer(std::move(layer));
  }
  return model;
}

void register_olmoe(moeq::PluginRegistrar& registrar) {
  registrar.add_architecture(
      kArchitecture, moeq::causal_lm_architecture(
                         kArchitecture, &build_olmoe,
                         "OLMoE: full-width q/k norm, optional clip_qkv, softmax top-k routing, "
                         "experts gate_proj/up_proj/down_proj"));
  // Easy tier: the stock adapter owns calibration routing and expert coverage.
  registrar.add_module_adapter("OlmoeSparseMoeBlock",
                               moeq::adapters::sparse_moe_adapter_factory("OlmoeSparseMoeBlock"));
}

}  // namespace

MOEQ_PLUGIN(olmoe, "0.1.0", register_olmoe)
