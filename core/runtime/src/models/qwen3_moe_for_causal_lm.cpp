// Qwen3MoeForCausalLM (Qwen/Qwen3-30B-A3B, Qwen3-235B-A22B).
#include <moeq/runtime/models.h>

#include <moeq/runtime/model_config.h>

#include <moeq/core/error.h>

#include <algorithm>

namespace moeq::runtime {

std::unique_ptr<CausalLM> build_qwen3_moe_for_causal_lm(const io::HfConfig& config,
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
  lm.norm_type = "Qwen3MoeRMSNorm";
  auto model = std::make_unique<CausalLM>("Qwen3MoeForCausalLM", lm, std::move(weights), options);

  auto rotary = std::make_shared<const RotaryEmbedding>(
      model_config::rope_options(config, head_dim, /*default_theta=*/1e4));
  model->set_rotary(rotary);

  AttentionOptions attention;
  attention.hidden_size = hidden;
  attention.num_heads = heads;
  attention.num_kv_heads = config.get_or<int64_t>("num_key_value_heads", heads);
  attention.head_dim = head_dim;
  attention.qkv_bias = config.get_or("attention_bias", false);
  attention.o_bias = attention.qkv_bias;
  attention.qk_norm = true;
  attention.qk_norm_type = "Qwen3MoeRMSNorm";
  attention.qk_norm_eps = eps;
  // With use_sliding_window, every layer gets the window (transformers' single mask function).
  attention.sliding_window = config.get_or("use_sliding_window", false)
                                 ? config.get_or<int64_t>("sliding_window", 4096)
                                 : 0;

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
  expert.activation = model_config::activation(config, "Qwen3MoeForCausalLM");
  expert.hidden_size = hidden;
  expert.intermediate_size = num_experts > 0 ? config.get<int64_t>("moe_intermediate_size") : 0;

  GatedMlpOptions dense;
  dense.hidden_size = hidden;
  dense.intermediate_size = config.get<int64_t>("intermediate_size");

  for (int64_t i = 0; i < num_layers; ++i) {
    const auto prefix = fmt::format("model.layers.{}", i);
    auto layer = std::make_unique<DecoderLayer>("Qwen3MoeDecoderLayer", prefix, i);
    layer->set_input_layernorm(
        std::make_unique<RMSNorm>("Qwen3MoeRMSNorm", prefix + ".input_layernorm", hidden, eps));
    layer->set_attention(
        std::make_unique<Attention>("Qwen3MoeAttention", prefix + ".self_attn", attention, rotary));
    layer->set_post_attention_layernorm(std::make_unique<RMSNorm>(
        "Qwen3MoeRMSNorm", prefix + ".post_attention_layernorm", hidden, eps));
    const auto mlp = prefix + ".mlp";
    const bool sparse = std::find(mlp_only.begin(), mlp_only.end(), i) == mlp_only.end() &&
                        num_experts > 0 && (i + 1) % sparse_step == 0;
    if (sparse) {
      auto moe =
          std::make_unique<SparseMoeBlock>("Qwen3MoeSparseMoeBlock", mlp, SparseMoeOptions{});
      moe->set_router(
          std::make_unique<SoftmaxTopKRouter>("Qwen3MoeTopKRouter", mlp + ".gate", router));
      moe->set_experts(std::make_unique<PerExpertMlps>("Qwen3MoeExperts", mlp + ".experts",
                                                       num_experts, "Qwen3MoeMLP", expert));
      layer->set_mlp(std::move(moe));
    } else {
      layer->set_mlp(std::make_unique<GatedMlp>("Qwen3MoeMLP", mlp, dense));
    }
    model->add_layer(std::move(layer));
  }
  return model;
}

}  // namespace moeq::runtime
