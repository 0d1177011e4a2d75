// The minimax_m2 plugin: MiniMaxM2ForCausalLM (MiniMax-M2, M2.1), an easy-tier model:
// - attention: the runtime's GQA without biases, with q/k RMSNorm over the whole projection width
//   (QkNormScope::kFullWidth: q_norm weight [num_heads * head_dim], k_norm [num_kv_heads *
//   head_dim], applied before the heads are split; the published config says qk_norm_type
//   "per_layer"), then partial rotate-half RoPE on the first rotary_dim channels of each head;
// - routing: sigmoid scores plus the block's `e_score_correction_bias` choose the top-k experts
//   (no groups); the weights are the sigmoid scores renormalised to sum to one;
// - experts: block_sparse_moe.experts.{e}.w1/w3/w2 (the hub layout; transformers 5 fuses them
//   on load);
// - source: the published weights are FP8 E4M3 with 128x128 `weight_scale_inv` blocks
//   (quantization_config.weight_block_size), dequantized to bf16 as each layer is loaded by the
//   runtime's dequantize_fp8_blocks, as deepseek_v3's is.
// tools/recipes/models/minimax_m2.yaml declares the same model in YAML, with no compiled code.
#include <moeq/adapters/sparse_moe.h>
#include <moeq/core/error.h>
#include <moeq/registry/causal_lm_architecture.h>
#include <moeq/registry/plugin_abi.h>
#include <moeq/registry/plugin_registrar.h>
#include <moeq/runtime/model_config.h>

#include <moeq/runtime/weight_source.h>

#include <fmt/format.h>

#include <optional>

#include "../common/sigmoid_routing.h"

namespace {

using namespace moeq::runtime;  // NOLINT(google-build-using-namespace)

constexpr const char* kArchitecture = "MiniMaxM2ForCausalLM";

// The rotary fraction: partial_rotary_factor where the config gives it (transformers' key, in the
// rope parameters or at the top level), else the published config's rotary_dim / head_dim, else
// the whole head. Both given and disagreeing is an error.
double partial_rotary_factor(const moeq::io::HfConfig& config, int64_t head_dim) {
  std::optional<double> factor;
  for (const char* key : {"rope_parameters.partial_rotary_factor",
                          "rope_scaling.partial_rotary_factor", "partial_rotary_factor"}) {
    if (config.contains(key)) {
      factor = config.get<double>(key);
      break;
    }
  }
  if (config.contains("rotary_dim")) {
    const auto rotary_dim = config.get<int64_t>("rotary_dim");
    MOEQ_CHECK(rotary_dim > 0 && rotary_dim <= head_dim && rotary_dim % 2 == 0,
               "config '{}': rotary_dim must be a positive even number <= head_dim {}, got {}",
               config.source(), head_dim, rotary_dim);
    const auto from_dim = static_cast<double>(rotary_dim) / static_cast<double>(head_dim);
    MOEQ_CHECK(
        !factor || static_cast<int64_t>(static_cast<double>(head_dim) * *factor) == rotary_dim,
        "config '{}': rotary_dim {} disagrees with partial_rotary_factor {} (head_dim {})",
        config.source(), rotary_dim, *factor, head_dim);
    return factor.value_or(from_dim);
  }
  return factor.value_or(1.0);
}

std::unique_ptr<CausalLM> build_minimax_m2(const moeq::io::HfConfig& config,
                                           std::shared_ptr<WeightSource> weights,
                                           const RuntimeOptions& options) {
  const auto hidden = config.get<int64_t>("hidden_size");
  const auto num_layers = config.get<int64_t>("num_hidden_layers");
  const auto heads = config.get<int64_t>("num_attention_heads");
  const auto head_dim = model_config::head_dim(config);
  const auto eps = config.get_or("rms_norm_eps", 1e-6);

  // What the published config states about the model's structure, where it says it.
  moeq_plugins::check_sigmoid_noaux_routing(config, "MiniMax-M2");
  const auto qk_norm_type = config.get_or("qk_norm_type", "per_layer");
  MOEQ_CHECK(qk_norm_type == "per_layer",
             "config '{}': qk_norm_type '{}' is not supported (MiniMax-M2 normalises q and k over "
             "the whole projection: 'per_layer')",
             config.source(), qk_norm_type);

  CausalLMConfig lm;
  lm.vocab_size = config.get<int64_t>("vocab_size");
  lm.hidden_size = hidden;
  lm.num_layers = num_layers;
  lm.rms_norm_eps = eps;
  lm.tie_word_embeddings = config.get_or("tie_word_embeddings", false);
  lm.norm_type = "MiniMaxM2RMSNorm";
  auto model = std::make_unique<CausalLM>(
      kArchitecture, lm,
      dequantize_fp8_blocks(std::move(weights), config, options.placement.device), options);

  auto rope = model_config::rope_options(config, head_dim, /*default_theta=*/5000000.0);
  rope.partial_rotary_factor = partial_rotary_factor(config, head_dim);
  auto rotary = std::make_shared<const RotaryEmbedding>(rope);
  model->set_rotary(rotary);

  AttentionOptions attention;  // transformers' MiniMaxM2Attention
  attention.hidden_size = hidden;
  attention.num_heads = heads;
  attention.num_kv_heads = config.get_or<int64_t>("num_key_value_heads", heads);
  attention.head_dim = head_dim;
  attention.qk_norm = config.get_or("use_qk_norm", true);
  attention.qk_norm_scope = QkNormScope::kFullWidth;
  attention.qk_norm_type = "MiniMaxM2RMSNorm";
  attention.qk_norm_eps = eps;

  moeq_plugins::SigmoidTopKOptions router;  // transformers' MiniMaxM2TopKRouter
  router.hidden_size = hidden;
  router.num_experts = config.get_first<int64_t>({"num_local_experts", "num_experts"});
  router.top_k = config.get<int64_t>("num_experts_per_tok");
  router.norm_topk_prob = true;
  router.norm_eps = 0.0;
  router.logits_in_fp32 = false;

  GatedMlpOptions expert;
  expert.hidden_size = hidden;
  expert.intermediate_size = config.get<int64_t>("intermediate_size");
  expert.activation = model_config::activation(config, kArchitecture);
  expert.gate_name = "w1";
  expert.up_name = "w3";
  expert.down_name = "w2";

  for (int64_t i = 0; i < num_layers; ++i) {
    const auto prefix = fmt::format("model.layers.{}", i);
    auto layer = std::make_unique<DecoderLayer>("MiniMaxM2DecoderLayer", prefix, i);
    layer->set_input_layernorm(
        std::make_unique<RMSNorm>("MiniMaxM2RMSNorm", prefix + ".input_layernorm", hidden, eps));
    layer->set_attention(std::make_unique<Attention>("MiniMaxM2Attention", prefix + ".self_attn",
                                                     attention, rotary));
    layer->set_post_attention_layernorm(std::make_unique<RMSNorm>(
        "MiniMaxM2RMSNorm", prefix + ".post_attention_layernorm", hidden, eps));
    const auto block = prefix + ".block_sparse_moe";
    auto moe =
        std::make_unique<SparseMoeBlock>("MiniMaxM2SparseMoeBlock", block, SparseMoeOptions{});
    auto layer_router = router;
    layer_router.bias_name = block + ".e_score_correction_bias";
    moe->set_router(std::make_unique<moeq_plugins::SigmoidTopKRouter>(
        "MiniMaxM2TopKRouter", block + ".gate", layer_router));
    moe->set_experts(std::make_unique<PerExpertMlps>("MiniMaxM2Experts", block + ".experts",
                                                     router.num_experts, "MiniMaxM2MLP", expert));
    layer->set_mlp(std::move(moe));
    model->add_layer(std::move(layer));
  }
  return model;
}

void register_minimax_m2(moeq::PluginRegistrar& registrar) {
  registrar.add_architecture(
      kArchitecture,
      moeq::causal_lm_architecture(
          kArchitecture, &build_minimax_m2,
          "MiniMax-M2: GQA with full-width q/k norm and partial RoPE, sigmoid top-k routing "
          "with correction bias, experts w1/w3/w2; FP8 block source dequantized per layer"));
  registrar.add_module_adapter(
      "MiniMaxM2SparseMoeBlock",
      moeq::adapters::sparse_moe_adapter_factory("MiniMaxM2SparseMoeBlock"));
}

}  // namespace

MOEQ_PLUGIN(minimax_m2, "0.1.0", register_minimax_m2)
