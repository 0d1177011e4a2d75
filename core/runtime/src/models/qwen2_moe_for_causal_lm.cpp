// Qwen2MoeForCausalLM (Qwen/Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B).
#include <moeq/runtime/models.h>

#include "../model_config.h"

#include <moeq/core/error.h>

#include <algorithm>

namespace moeq::runtime {

std::unique_ptr<CausalLM> build_qwen2_moe_for_causal_lm(const nlohmann::json& json,
                                                        const std::string& origin,
                                                        std::shared_ptr<WeightSource> weights,
                                                        const RuntimeOptions& options) {
  const detail::ConfigReader config(json, origin);
  const auto hidden = config.get_int("hidden_size");
  const auto num_layers = config.get_int("num_hidden_layers");
  const auto heads = config.get_int("num_attention_heads");
  const auto head_dim = detail::head_dim(config);
  const auto eps = config.get_double("rms_norm_eps", 1e-6);
  const auto act = config.get_string("hidden_act", "silu");
  MOEQ_CHECK(act == "silu", "{}: hidden_act '{}' is not supported for Qwen2MoeForCausalLM (silu)",
             origin, act);

  CausalLMConfig lm;
  lm.vocab_size = config.get_int("vocab_size");
  lm.hidden_size = hidden;
  lm.num_layers = num_layers;
  lm.rms_norm_eps = eps;
  lm.tie_word_embeddings = config.get_bool("tie_word_embeddings", false);
  lm.norm_type = "Qwen2MoeRMSNorm";
  auto model = std::make_unique<CausalLM>("Qwen2MoeForCausalLM", lm, std::move(weights), options);

  auto rotary = std::make_shared<const RotaryEmbedding>(
      detail::rope_options(config, head_dim, /*default_theta=*/1e4));
  model->set_rotary(rotary);

  AttentionOptions attention;
  attention.hidden_size = hidden;
  attention.num_heads = heads;
  attention.num_kv_heads = config.get_int("num_key_value_heads", heads);
  attention.head_dim = head_dim;
  attention.qkv_bias = config.get_bool("qkv_bias", true);

  // Sliding window: only with use_sliding_window, only on layers typed "sliding_attention"
  // (config.layer_types, else transformers' default: even layers below max_window_layers).
  const bool use_sliding = config.get_bool("use_sliding_window", false);
  const auto window = use_sliding ? config.get_int("sliding_window", 4096) : 0;
  auto layer_types = config.get_string_list("layer_types");
  if (layer_types.empty()) {
    const auto max_window_layers = config.get_int("max_window_layers", 28);
    for (int64_t i = 0; i < num_layers; ++i) {
      const bool sliding = use_sliding && (i + 1) % 2 == 1 && i < max_window_layers;
      layer_types.push_back(sliding ? "sliding_attention" : "full_attention");
    }
  }
  MOEQ_CHECK(static_cast<int64_t>(layer_types.size()) == num_layers,
             "{}: layer_types has {} entries for {} layers", origin, layer_types.size(),
             num_layers);

  const auto num_experts = config.get_int_any({"num_experts", "num_local_experts"});
  const auto sparse_step = config.get_int("decoder_sparse_step", 1);
  MOEQ_CHECK(sparse_step > 0, "{}: decoder_sparse_step must be positive, got {}", origin,
             sparse_step);
  const auto mlp_only = config.get_int_list("mlp_only_layers");

  SoftmaxTopKOptions router;
  router.hidden_size = hidden;
  router.num_experts = num_experts;
  router.top_k = num_experts > 0 ? config.get_int("num_experts_per_tok") : 0;
  router.normalize_topk = config.get_bool("norm_topk_prob", false);
  router.weights_in_compute_dtype = true;

  GatedMlpOptions expert;
  expert.hidden_size = hidden;
  expert.intermediate_size = num_experts > 0 ? config.get_int("moe_intermediate_size") : 0;

  SparseMoeOptions moe_options;
  moe_options.shared_expert = true;
  moe_options.shared_expert_gate = true;
  moe_options.shared_expert_type = "Qwen2MoeMLP";
  moe_options.shared_expert_options.hidden_size = hidden;
  moe_options.shared_expert_options.intermediate_size =
      num_experts > 0 ? config.get_int("shared_expert_intermediate_size") : 0;

  GatedMlpOptions dense;
  dense.hidden_size = hidden;
  dense.intermediate_size = config.get_int("intermediate_size");

  for (int64_t i = 0; i < num_layers; ++i) {
    const auto prefix = fmt::format("model.layers.{}", i);
    auto layer = std::make_unique<DecoderLayer>("Qwen2MoeDecoderLayer", prefix, i);
    layer->set_input_layernorm(
        std::make_unique<RMSNorm>("Qwen2MoeRMSNorm", prefix + ".input_layernorm", hidden, eps));
    auto layer_attention = attention;
    const auto& kind = layer_types[i];
    MOEQ_CHECK(kind == "full_attention" || kind == "sliding_attention",
               "{}: layer_types[{}] is '{}', expected full_attention or sliding_attention", origin,
               i, kind);
    layer_attention.sliding_window = kind == "sliding_attention" ? window : 0;
    layer->set_attention(std::make_unique<Attention>("Qwen2MoeAttention", prefix + ".self_attn",
                                                     layer_attention, rotary));
    layer->set_post_attention_layernorm(std::make_unique<RMSNorm>(
        "Qwen2MoeRMSNorm", prefix + ".post_attention_layernorm", hidden, eps));
    const auto mlp = prefix + ".mlp";
    const bool sparse = std::find(mlp_only.begin(), mlp_only.end(), i) == mlp_only.end() &&
                        num_experts > 0 && (i + 1) % sparse_step == 0;
    if (sparse) {
      auto moe = std::make_unique<SparseMoeBlock>("Qwen2MoeSparseMoeBlock", mlp, moe_options);
      moe->set_router(
          std::make_unique<SoftmaxTopKRouter>("Qwen2MoeTopKRouter", mlp + ".gate", router));
      moe->set_experts(std::make_unique<PerExpertMlps>("Qwen2MoeExperts", mlp + ".experts",
                                                       num_experts, "Qwen2MoeMLP", expert));
      layer->set_mlp(std::move(moe));
    } else {
      layer->set_mlp(std::make_unique<GatedMlp>("Qwen2MoeMLP", mlp, dense));
    }
    model->add_layer(std::move(layer));
  }
  return model;
}

}  // namespace moeq::runtime
