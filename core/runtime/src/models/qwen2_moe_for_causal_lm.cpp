// Qwen2MoeForCausalLM (Qwen/Qwen1.5-MoE-A2.7B, Qwen2-57B-A14B).
#include <moeq/runtime/models.h>

#include <moeq/runtime/model_config.h>

#include <moeq/core/error.h>

#include <algorithm>

namespace moeq::runtime {

std::unique_ptr<CausalLM> build_qwen2_moe_for_causal_lm(const io::HfConfig& config,
                                                        std::shared_ptr<WeightSource> weights,
                                                        const RuntimeOptions& options) {
  const auto hidden = config.get<int64_t>("hidden_size");
  const auto num_layers = config.get<int64_t>("num_hidden_layers");
  const auto heads = config.get<int64_t>("num_attention_heads");
  const auto head_dim = model_config::head_dim(config);
  const auto eps = config.get_or("rms_norm_eps", 1e-6);

  CausalLMConfig lm;
  lm.vocab_size = config.get<int64_t>("vocab_size");
  lm.hidden_size = hidden;
  lm.num_layers = num_layers;
  lm.rms_norm_eps = eps;
  lm.tie_word_embeddings = config.get_or("tie_word_embeddings", false);
  lm.norm_type = "Qwen2MoeRMSNorm";
  auto model = std::make_unique<CausalLM>("Qwen2MoeForCausalLM", lm, std::move(weights), options);

  auto rotary = std::make_shared<const RotaryEmbedding>(
      model_config::rope_options(config, head_dim, /*default_theta=*/1e4));
  model->set_rotary(rotary);

  AttentionOptions attention;
  attention.hidden_size = hidden;
  attention.num_heads = heads;
  attention.num_kv_heads = config.get_or<int64_t>("num_key_value_heads", heads);
  attention.head_dim = head_dim;
  attention.qkv_bias = config.get_or("qkv_bias", true);

  // Sliding window: only with use_sliding_window, only on layers typed "sliding_attention"
  // (config.layer_types, else transformers' default: even layers below max_window_layers).
  const bool use_sliding = config.get_or("use_sliding_window", false);
  const auto window = use_sliding ? config.get_or<int64_t>("sliding_window", 4096) : 0;
  auto layer_types = config.get_or<std::vector<std::string>>("layer_types", {});
  if (layer_types.empty()) {
    const auto max_window_layers = config.get_or<int64_t>("max_window_layers", 28);
    for (int64_t i = 0; i < num_layers; ++i) {
      const bool sliding = use_sliding && (i + 1) % 2 == 1 && i < max_window_layers;
      layer_types.push_back(sliding ? "sliding_attention" : "full_attention");
    }
  }
  MOEQ_CHECK(static_cast<int64_t>(layer_types.size()) == num_layers,
             "config '{}': layer_types has {} entries for {} layers", config.source(),
             layer_types.size(), num_layers);

  const auto num_experts = config.get_first<int64_t>({"num_experts", "num_local_experts"});
  const auto sparse_step = config.get_or<int64_t>("decoder_sparse_step", 1);
  MOEQ_CHECK(sparse_step > 0, "config '{}': decoder_sparse_step must be positive, got {}",
             config.source(), sparse_step);
  const auto mlp_only = config.get_or<std::vector<int64_t>>("mlp_only_layers", {});

  SoftmaxTopKOptions router;
  router.hidden_size = hidden;
  router.num_experts = num_experts;
  router.top_k = num_experts > 0 ? config.get<int64_t>("num_experts_per_tok") : 0;
  router.normalize_topk = config.get_or("norm_topk_prob", false);
  router.weights_in_compute_dtype = true;

  GatedMlpOptions expert;
  expert.activation = model_config::activation(config, "Qwen2MoeForCausalLM");
  expert.hidden_size = hidden;
  expert.intermediate_size = num_experts > 0 ? config.get<int64_t>("moe_intermediate_size") : 0;

  SparseMoeOptions moe_options;
  moe_options.shared_expert = true;
  moe_options.shared_expert_gate = true;
  moe_options.shared_expert_type = "Qwen2MoeMLP";
  moe_options.shared_expert_options.hidden_size = hidden;
  moe_options.shared_expert_options.intermediate_size =
      num_experts > 0 ? config.get<int64_t>("shared_expert_intermediate_size") : 0;

  GatedMlpOptions dense;
  dense.hidden_size = hidden;
  dense.intermediate_size = config.get<int64_t>("intermediate_size");

  for (int64_t i = 0; i < num_layers; ++i) {
    const auto prefix = fmt::format("model.layers.{}", i);
    auto layer = std::make_unique<DecoderLayer>("Qwen2MoeDecoderLayer", prefix, i);
    layer->set_input_layernorm(
        std::make_unique<RMSNorm>("Qwen2MoeRMSNorm", prefix + ".input_layernorm", hidden, eps));
    auto layer_attention = attention;
    const auto& kind = layer_types[i];
    MOEQ_CHECK(kind == "full_attention" || kind == "sliding_attention",
               "config '{}': layer_types[{}] is '{}', expected full_attention or sliding_attention",
               config.source(), i, kind);
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
