// MixtralForCausalLM (mistralai/Mixtral-8x7B-v0.1 and its family).
#include <moeq/runtime/models.h>

#include <moeq/runtime/model_config.h>

#include <moeq/core/error.h>

namespace moeq::runtime {

std::unique_ptr<CausalLM> build_mixtral_for_causal_lm(const io::HfConfig& config,
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
  lm.norm_type = "MixtralRMSNorm";
  auto model = std::make_unique<CausalLM>("MixtralForCausalLM", lm, std::move(weights), options);

  auto rotary = std::make_shared<const RotaryEmbedding>(
      model_config::rope_options(config, head_dim, /*default_theta=*/1e6));
  model->set_rotary(rotary);

  AttentionOptions attention;
  attention.hidden_size = hidden;
  attention.num_heads = heads;
  attention.num_kv_heads = config.get_or<int64_t>("num_key_value_heads", heads);
  attention.head_dim = head_dim;
  // A window, when set, applies to every layer (transformers picks the sliding mask for all).
  attention.sliding_window = config.get_or<int64_t>("sliding_window", 0);

  SoftmaxTopKOptions router;
  router.hidden_size = hidden;
  router.num_experts = config.get_first<int64_t>({"num_local_experts", "num_experts"});
  router.top_k = config.get<int64_t>("num_experts_per_tok");
  router.normalize_topk = true;             // Mixtral always renormalises its top-k
  router.weights_in_compute_dtype = false;  // and combines with fp32 weights

  GatedMlpOptions expert;
  expert.activation = model_config::activation(config, "MixtralForCausalLM");
  expert.hidden_size = hidden;
  expert.intermediate_size = config.get<int64_t>("intermediate_size");
  expert.gate_name = "w1";
  expert.up_name = "w3";
  expert.down_name = "w2";

  for (int64_t i = 0; i < num_layers; ++i) {
    const auto prefix = fmt::format("model.layers.{}", i);
    auto layer = std::make_unique<DecoderLayer>("MixtralDecoderLayer", prefix, i);
    layer->set_input_layernorm(
        std::make_unique<RMSNorm>("MixtralRMSNorm", prefix + ".input_layernorm", hidden, eps));
    layer->set_attention(
        std::make_unique<Attention>("MixtralAttention", prefix + ".self_attn", attention, rotary));
    layer->set_post_attention_layernorm(std::make_unique<RMSNorm>(
        "MixtralRMSNorm", prefix + ".post_attention_layernorm", hidden, eps));
    const auto block = prefix + ".block_sparse_moe";
    auto moe = std::make_unique<SparseMoeBlock>("MixtralSparseMoeBlock", block, SparseMoeOptions{});
    moe->set_router(
        std::make_unique<SoftmaxTopKRouter>("MixtralTopKRouter", block + ".gate", router));
    moe->set_experts(std::make_unique<PerExpertMlps>("MixtralExperts", block + ".experts",
                                                     router.num_experts,
                                                     "MixtralBlockSparseTop2MLP", expert));
    layer->set_mlp(std::move(moe));
    model->add_layer(std::move(layer));
  }
  return model;
}

}  // namespace moeq::runtime
