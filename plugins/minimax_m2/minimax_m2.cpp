// The minimax_m2 plugin: MiniMaxM2ForCausalLM (MiniMax-M2, M2.1), an easy-tier model:
// - attention: GQA without biases; q/k RMSNorm over the whole projection width (q_norm weight
//   [num_heads * head_dim], k_norm [num_kv_heads * head_dim], applied before the heads are split;
//   the published config says qk_norm_type "per_layer"), then partial rotate-half RoPE on the
//   first rotary_dim channels of each head;
// - routing: sigmoid scores plus the block's `e_score_correction_bias` choose the top-k experts
//   (no groups); the weights are the sigmoid scores renormalised to sum to one;
// - experts: block_sparse_moe.experts.{e}.w1/w3/w2 (the hub layout; transformers 5 fuses them
//   on load);
// - source: the published weights are FP8 E4M3 with 128x128 `weight_scale_inv` blocks
//   (quantization_config.weight_block_size), dequantized to bf16 as each layer is loaded, as
//   deepseek_v3 does.
#include <moeq/adapters/sparse_moe.h>
#include <moeq/core/error.h>
#include <moeq/registry/causal_lm_architecture.h>
#include <moeq/registry/plugin_abi.h>
#include <moeq/registry/plugin_registrar.h>
#include <moeq/runtime/model_config.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

#include "../common/sigmoid_routing.h"

namespace {

using namespace moeq::runtime;  // NOLINT(google-build-using-namespace)
using moeq::fn::ProjKind;

constexpr const char* kArchitecture = "MiniMaxM2ForCausalLM";

struct MiniMaxM2AttentionOptions {
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  bool qk_norm = true;
  double eps = 1e-6;
};

// transformers' MiniMaxM2Attention: q_norm(q_proj(x)) and k_norm(k_proj(x)) over the full width,
// then heads, partial RoPE, eager attention.
class MiniMaxM2Attention final : public SelfAttention {
 public:
  MiniMaxM2Attention(std::string name,
                     const MiniMaxM2AttentionOptions& o,
                     std::shared_ptr<const RotaryEmbedding> rotary)
      : SelfAttention("MiniMaxM2Attention", std::move(name)),
        options_(o),
        rotary_(std::move(rotary)) {
    MOEQ_CHECK(o.num_heads > 0 && o.num_kv_heads > 0 && o.num_heads % o.num_kv_heads == 0,
               "{}: num_attention_heads {} must be a positive multiple of num_key_value_heads {}",
               this->name(), o.num_heads, o.num_kv_heads);
    MOEQ_CHECK(rotary_->rotary_dim() <= o.head_dim, "{}: rotary dim {} exceeds head_dim {}",
               this->name(), rotary_->rotary_dim(), o.head_dim);
    q_ = add_child(std::make_unique<Linear>(child_name("q_proj"), o.hidden_size,
                                            o.num_heads * o.head_dim, false, ProjKind::kQ));
    k_ = add_child(std::make_unique<Linear>(child_name("k_proj"), o.hidden_size,
                                            o.num_kv_heads * o.head_dim, false, ProjKind::kK));
    v_ = add_child(std::make_unique<Linear>(child_name("v_proj"), o.hidden_size,
                                            o.num_kv_heads * o.head_dim, false, ProjKind::kV));
    o_ = add_child(std::make_unique<Linear>(child_name("o_proj"), o.num_heads * o.head_dim,
                                            o.hidden_size, false, ProjKind::kO));
    if (o.qk_norm) {
      q_norm_ = add_child(std::make_unique<RMSNorm>("MiniMaxM2RMSNorm", child_name("q_norm"),
                                                    o.num_heads * o.head_dim, o.eps));
      k_norm_ = add_child(std::make_unique<RMSNorm>("MiniMaxM2RMSNorm", child_name("k_norm"),
                                                    o.num_kv_heads * o.head_dim, o.eps));
    }
  }

  at::Tensor forward(const at::Tensor& hidden, ForwardContext& ctx) override {
    const auto& o = options_;
    const auto b = hidden.size(0), s = hidden.size(1);
    auto q = q_->forward(hidden);
    auto k = k_->forward(hidden);
    if (q_norm_ != nullptr) {
      q = q_norm_->forward(q);
      k = k_norm_->forward(k);
    }
    q = q.view({b, s, -1, o.head_dim}).transpose(1, 2);
    k = k.view({b, s, -1, o.head_dim}).transpose(1, 2);
    auto v = v_->forward(hidden).view({b, s, -1, o.head_dim}).transpose(1, 2);
    const auto& [cos, sin] = ctx.rope(*rotary_);
    q = RotaryEmbedding::apply(q, cos, sin);
    k = RotaryEmbedding::apply(k, cos, sin);
    const auto n_rep = o.num_heads / o.num_kv_heads;
    if (n_rep > 1) {
      const auto kv = k.size(1);
      k = k.unsqueeze(2).expand({b, kv, n_rep, s, o.head_dim}).reshape({b, kv * n_rep, s, -1});
      v = v.unsqueeze(2).expand({b, kv, n_rep, s, o.head_dim}).reshape({b, kv * n_rep, s, -1});
    }
    const double scaling = 1.0 / std::sqrt(static_cast<double>(o.head_dim));
    auto scores = at::matmul(q, k.transpose(2, 3)) * scaling;
    scores = scores + ctx.additive_mask(0);
    auto probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
    auto out = at::matmul(probs, v).transpose(1, 2).contiguous().reshape({b, s, -1});
    return o_->forward(out);
  }

 private:
  MiniMaxM2AttentionOptions options_;
  std::shared_ptr<const RotaryEmbedding> rotary_;
  Linear* q_ = nullptr;
  Linear* k_ = nullptr;
  Linear* v_ = nullptr;
  Linear* o_ = nullptr;
  RMSNorm* q_norm_ = nullptr;
  RMSNorm* k_norm_ = nullptr;
};

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
  const auto scoring = config.get_or("scoring_func", "sigmoid");
  MOEQ_CHECK(scoring == "sigmoid",
             "config '{}': MiniMax-M2 routing is sigmoid, got scoring_func "
             "'{}'",
             config.source(), scoring);
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
      kArchitecture, lm, moeq_plugins::dequantize_fp8_blocks(std::move(weights), config), options);

  auto rope = model_config::rope_options(config, head_dim, /*default_theta=*/5000000.0);
  rope.partial_rotary_factor = partial_rotary_factor(config, head_dim);
  auto rotary = std::make_shared<const RotaryEmbedding>(rope);
  model->set_rotary(rotary);

  MiniMaxM2AttentionOptions attention;
  attention.hidden_size = hidden;
  attention.num_heads = heads;
  attention.num_kv_heads = config.get_or<int64_t>("num_key_value_heads", heads);
  attention.head_dim = head_dim;
  attention.qk_norm = config.get_or("use_qk_norm", true);
  attention.eps = eps;

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
    layer->set_attention(
        std::make_unique<MiniMaxM2Attention>(prefix + ".self_attn", attention, rotary));
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
