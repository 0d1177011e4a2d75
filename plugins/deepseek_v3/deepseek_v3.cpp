// The deepseek_v3 plugin: DeepseekV3ForCausalLM (DeepSeek-V3, R1, V3.1; Kimi-K2-style configs),
// a hard-tier model. What makes it hard, and which stage of the pipeline each part takes over:
// - source loading: the published weights are FP8 E4M3 with 128x128 `weight_scale_inv` blocks;
//   the runtime's dequantize_fp8_blocks (a DerivedSource) dequantizes each projection to bf16 as
//   its layer is loaded, so calibration and quantization see the weights the model computes with;
// - attention: multi-head latent attention (low-rank q and kv with their own norms, a shared
//   RoPE key, interleaved rotary channels, YaRN with mscale folded into the softmax scale);
// - routing: sigmoid scores plus a correction bias choose top-k experts within the top groups
//   (n_group / topk_group), weights renormalised and scaled (routed_scaling_factor), shared
//   experts added; the first first_k_dense_replace layers are dense;
// - layers to skip: the multi-token-prediction layer (model.layers.<num_hidden_layers>) is not
//   part of the model that runs; it is copied through unquantized and listed as excluded.
// The experts are per-expert 2-D projections in the hub layout, so the block's calibration
// routing is the easy tier's adapter under a hard-tier registration.
#include <moeq/adapters/sparse_moe.h>
#include <moeq/core/error.h>
#include <moeq/registry/causal_lm_architecture.h>
#include <moeq/registry/plugin_abi.h>
#include <moeq/registry/plugin_registrar.h>
#include <moeq/runtime/model_config.h>
#include <moeq/runtime/weight_source.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <cmath>

#include "../common/sigmoid_routing.h"

namespace {

using namespace moeq::runtime;  // NOLINT(google-build-using-namespace)
using moeq::fn::ProjKind;

struct MlaOptions {
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t q_lora_rank = 0;  // 0: a plain q_proj
  int64_t kv_lora_rank = 0;
  int64_t qk_nope_head_dim = 0;
  int64_t qk_rope_head_dim = 0;
  int64_t v_head_dim = 0;
  bool bias = false;
  bool rope_interleave = true;
  double eps = 1e-6;
  double scaling = 1.0;
};

// Multi-head latent attention as transformers' DeepseekV3Attention computes it.
class DeepseekV3Attention final : public SelfAttention {
 public:
  DeepseekV3Attention(std::string name,
                      const MlaOptions& o,
                      std::shared_ptr<const RotaryEmbedding> rotary)
      : SelfAttention("DeepseekV3Attention", std::move(name)),
        options_(o),
        rotary_(std::move(rotary)) {
    const auto qk_head = o.qk_nope_head_dim + o.qk_rope_head_dim;
    if (o.q_lora_rank > 0) {
      q_a_ = add_child(std::make_unique<Linear>(child_name("q_a_proj"), o.hidden_size,
                                                o.q_lora_rank, o.bias, ProjKind::kQ));
      q_a_norm_ = add_child(std::make_unique<RMSNorm>(
          "DeepseekV3RMSNorm", child_name("q_a_layernorm"), o.q_lora_rank, 1e-6));
      q_b_ = add_child(std::make_unique<Linear>(child_name("q_b_proj"), o.q_lora_rank,
                                                o.num_heads * qk_head, false, ProjKind::kQ));
    } else {
      q_b_ = add_child(std::make_unique<Linear>(child_name("q_proj"), o.hidden_size,
                                                o.num_heads * qk_head, false, ProjKind::kQ));
    }
    kv_a_ = add_child(std::make_unique<Linear>(child_name("kv_a_proj_with_mqa"), o.hidden_size,
                                               o.kv_lora_rank + o.qk_rope_head_dim, o.bias,
                                               ProjKind::kK));
    kv_a_norm_ = add_child(std::make_unique<RMSNorm>(
        "DeepseekV3RMSNorm", child_name("kv_a_layernorm"), o.kv_lora_rank, 1e-6));
    kv_b_ = add_child(std::make_unique<Linear>(child_name("kv_b_proj"), o.kv_lora_rank,
                                               o.num_heads * (o.qk_nope_head_dim + o.v_head_dim),
                                               false, ProjKind::kV));
    o_ = add_child(std::make_unique<Linear>(child_name("o_proj"), o.num_heads * o.v_head_dim,
                                            o.hidden_size, o.bias, ProjKind::kO));
  }

  at::Tensor forward(const at::Tensor& hidden, ForwardContext& ctx) override {
    const auto& o = options_;
    const auto b = hidden.size(0), s = hidden.size(1);
    const auto qk_head = o.qk_nope_head_dim + o.qk_rope_head_dim;
    auto q = q_a_ != nullptr ? q_b_->forward(q_a_norm_->forward(q_a_->forward(hidden)))
                             : q_b_->forward(hidden);
    q = q.view({b, s, -1, qk_head}).transpose(1, 2);
    auto q_pass = q.narrow(-1, 0, o.qk_nope_head_dim);
    auto q_rot = q.narrow(-1, o.qk_nope_head_dim, o.qk_rope_head_dim);
    auto compressed = kv_a_->forward(hidden);
    auto kv_nope = kv_a_norm_->forward(compressed.narrow(-1, 0, o.kv_lora_rank));
    auto k_rot = compressed.narrow(-1, o.kv_lora_rank, o.qk_rope_head_dim)
                     .view({b, 1, s, o.qk_rope_head_dim});
    const auto& [cos, sin] = ctx.rope(*rotary_);
    if (o.rope_interleave) {
      q_rot = rotate_interleaved(q_rot, cos, sin);
      k_rot = rotate_interleaved(k_rot, cos, sin);
    } else {
      q_rot = RotaryEmbedding::apply(q_rot, cos, sin);
      k_rot = RotaryEmbedding::apply(k_rot, cos, sin);
    }
    auto query = at::cat({q_pass, q_rot}, -1);
    auto kv = kv_b_->forward(kv_nope.view({b, 1, s, o.kv_lora_rank}))
                  .view({b, s, -1, o.qk_nope_head_dim + o.v_head_dim})
                  .transpose(1, 2);
    auto k_nope = kv.narrow(-1, 0, o.qk_nope_head_dim);
    auto value = kv.narrow(-1, o.qk_nope_head_dim, o.v_head_dim);
    auto key = at::cat({k_nope, k_rot.expand({b, k_nope.size(1), s, o.qk_rope_head_dim})}, -1);
    auto scores = at::matmul(query, key.transpose(2, 3)) * o.scaling;
    scores = scores + ctx.additive_mask(0);
    auto probs = at::softmax(scores, -1, at::kFloat).to(query.scalar_type());
    auto out = at::matmul(probs, value).transpose(1, 2).contiguous().reshape({b, s, -1});
    return o_->forward(out);
  }

 private:
  // transformers' apply_rotary_pos_emb_interleave: pairs (2i, 2i+1) rotate by frequency i and
  // the result is laid out [real parts | imaginary parts].
  static at::Tensor rotate_interleaved(const at::Tensor& x,
                                       const at::Tensor& cos,
                                       const at::Tensor& sin) {
    const auto half = cos.size(-1) / 2;
    auto c = cos.narrow(-1, 0, half).unsqueeze(1);
    auto s = sin.narrow(-1, 0, half).unsqueeze(1);
    auto x1 = x.slice(-1, 0, x.size(-1), 2);
    auto x2 = x.slice(-1, 1, x.size(-1), 2);
    return at::cat({x1 * c - x2 * s, x2 * c + x1 * s}, -1);
  }

  MlaOptions options_;
  std::shared_ptr<const RotaryEmbedding> rotary_;
  Linear* q_a_ = nullptr;
  RMSNorm* q_a_norm_ = nullptr;
  Linear* q_b_ = nullptr;
  Linear* kv_a_ = nullptr;
  RMSNorm* kv_a_norm_ = nullptr;
  Linear* kv_b_ = nullptr;
  Linear* o_ = nullptr;
};

double yarn_mscale(double scale, double mscale) {
  return scale <= 1.0 ? 1.0 : 0.1 * mscale * std::log(scale) + 1.0;
}

std::unique_ptr<CausalLM> build_deepseek_v3(const moeq::io::HfConfig& config,
                                            std::shared_ptr<WeightSource> weights,
                                            const RuntimeOptions& options) {
  const auto hidden = config.get<int64_t>("hidden_size");
  const auto num_layers = config.get<int64_t>("num_hidden_layers");
  const auto eps = config.get_or("rms_norm_eps", 1e-6);

  CausalLMConfig lm;
  lm.vocab_size = config.get<int64_t>("vocab_size");
  lm.hidden_size = hidden;
  lm.num_layers = num_layers;
  lm.rms_norm_eps = eps;
  lm.tie_word_embeddings = config.get_or("tie_word_embeddings", false);
  lm.norm_type = "DeepseekV3RMSNorm";
  auto model = std::make_unique<CausalLM>(
      "DeepseekV3ForCausalLM", lm,
      dequantize_fp8_blocks(std::move(weights), config, options.placement.device), options);
  // The MTP layer(s) after the last decoder layer are not run: excluded, copied through.
  const auto mtp = config.get_or<int64_t>("num_nextn_predict_layers", 0);
  for (int64_t i = 0; i < mtp; ++i) {
    model->exclude_prefix(fmt::format("model.layers.{}", num_layers + i));
  }

  MlaOptions mla;
  mla.hidden_size = hidden;
  mla.num_heads = config.get<int64_t>("num_attention_heads");
  mla.q_lora_rank = config.get_or<int64_t>("q_lora_rank", 0);
  mla.kv_lora_rank = config.get<int64_t>("kv_lora_rank");
  mla.qk_nope_head_dim = config.get<int64_t>("qk_nope_head_dim");
  mla.qk_rope_head_dim = config.get<int64_t>("qk_rope_head_dim");
  mla.v_head_dim = config.get<int64_t>("v_head_dim");
  mla.bias = config.get_or("attention_bias", false);
  mla.rope_interleave = config.get_or("rope_interleave", true);
  MOEQ_CHECK(config.get_or<int64_t>("num_key_value_heads", mla.num_heads) == mla.num_heads,
             "config '{}': MLA expands keys per head; num_key_value_heads must equal "
             "num_attention_heads",
             config.source());
  auto rope = model_config::rope_options(config, mla.qk_rope_head_dim, /*default_theta=*/10000.0);
  mla.scaling = 1.0 / std::sqrt(static_cast<double>(mla.qk_nope_head_dim + mla.qk_rope_head_dim));
  if (rope.type != RopeType::kDefault && rope.mscale_all_dim && *rope.mscale_all_dim != 0.0) {
    const auto m = yarn_mscale(rope.factor, *rope.mscale_all_dim);
    mla.scaling *= m * m;
  }
  auto rotary = std::make_shared<const RotaryEmbedding>(rope);
  model->set_rotary(rotary);

  moeq_plugins::check_sigmoid_noaux_routing(config, "DeepSeek-V3");
  moeq_plugins::SigmoidTopKOptions router;  // transformers' DeepseekV3TopkRouter
  router.hidden_size = hidden;
  router.num_experts = config.get<int64_t>("n_routed_experts");
  router.top_k = config.get<int64_t>("num_experts_per_tok");
  router.n_group = config.get_or<int64_t>("n_group", 1);
  router.topk_group = config.get_or<int64_t>("topk_group", 1);
  router.norm_topk_prob = config.get_or("norm_topk_prob", true);
  router.routed_scaling_factor = config.get_or("routed_scaling_factor", 1.0);
  const auto activation = model_config::activation(config, "DeepseekV3ForCausalLM");

  GatedMlpOptions expert;
  expert.hidden_size = hidden;
  expert.intermediate_size = config.get<int64_t>("moe_intermediate_size");
  expert.activation = activation;
  SparseMoeOptions block;
  block.shared_expert = config.get_or<int64_t>("n_shared_experts", 0) > 0;
  block.shared_expert_name = "shared_experts";
  block.shared_expert_type = "DeepseekV3MLP";
  block.shared_expert_options = expert;
  block.shared_expert_options.intermediate_size =
      expert.intermediate_size * config.get_or<int64_t>("n_shared_experts", 0);
  GatedMlpOptions dense;
  dense.hidden_size = hidden;
  dense.intermediate_size = config.get<int64_t>("intermediate_size");
  dense.activation = activation;
  const auto first_dense = config.get_or<int64_t>("first_k_dense_replace", 0);

  for (int64_t i = 0; i < num_layers; ++i) {
    const auto prefix = fmt::format("model.layers.{}", i);
    auto layer = std::make_unique<DecoderLayer>("DeepseekV3DecoderLayer", prefix, i);
    layer->set_input_layernorm(
        std::make_unique<RMSNorm>("DeepseekV3RMSNorm", prefix + ".input_layernorm", hidden, eps));
    layer->set_attention(std::make_unique<DeepseekV3Attention>(prefix + ".self_attn", mla, rotary));
    layer->set_post_attention_layernorm(std::make_unique<RMSNorm>(
        "DeepseekV3RMSNorm", prefix + ".post_attention_layernorm", hidden, eps));
    const auto mlp = prefix + ".mlp";
    if (i >= first_dense) {
      auto moe = std::make_unique<SparseMoeBlock>("DeepseekV3MoE", mlp, block);
      moe->set_router(std::make_unique<moeq_plugins::SigmoidTopKRouter>("DeepseekV3TopkRouter",
                                                                        mlp + ".gate", router));
      moe->set_experts(std::make_unique<PerExpertMlps>(
          "DeepseekV3Experts", mlp + ".experts", router.num_experts, "DeepseekV3MLP", expert));
      layer->set_mlp(std::move(moe));
    } else {
      layer->set_mlp(std::make_unique<GatedMlp>("DeepseekV3MLP", mlp, dense));
    }
    model->add_layer(std::move(layer));
  }
  return model;
}

// The MoE block's adapter: the easy tier's calibration routing (the grouped router's output is
// what every pass combines with), registered as hard because the model needs the stages above.
class DeepseekV3MoeAdapter final : public moeq::ModuleAdapter {
 public:
  std::string type_key() const override { return "DeepseekV3MoE"; }
  moeq::Tier tier() const override { return moeq::Tier::kHard; }
  std::string describe() const override {
    return "DeepSeek-V3 MoE: grouped top-k routing with correction bias, FP8 block source "
           "dequantized per layer, MTP layer excluded; all-expert calibration, routed output";
  }
  void attach(Module& module, moeq::pipeline::LayerSession& session) override {
    routing_.attach(module, session);
  }

 private:
  moeq::adapters::SparseMoeAdapter routing_{"DeepseekV3MoE"};
};

// The pipeline stages DeepSeek-V3 takes over (moeq/pipeline/stages.h). Source loading is the
// builder's (the FP8 dequantization must hold wherever the model runs, not only in the
// pipeline) and the MTP layer is excluded by the model; the quantization stage keeps MLA's
// kv_b_proj in high precision.
class DeepseekV3Stages final : public moeq::pipeline::PipelineStages {
 public:
  std::string describe() const override {
    return "DeepSeek-V3: MLA kv_b_proj kept in high precision";
  }
  bool quantize(const std::string& module,
                moeq::fn::ProjKind /*kind*/,
                int64_t /*expert*/,
                std::string& reason) const override {
    if (module.ends_with(".self_attn.kv_b_proj")) {
      // vLLM and SGLang decompress kv_b_proj when they load it and absorb it into the query and
      // output paths in high precision: quantizing it only adds error (ModelOpt leaves it off).
      reason = "MLA's kv_b_proj is absorbed in high precision by the engines";
      return false;
    }
    return true;
  }
};

void register_deepseek_v3(moeq::PluginRegistrar& registrar) {
  registrar.add_pipeline_stages("DeepseekV3ForCausalLM",
                                [] { return std::make_unique<DeepseekV3Stages>(); });
  registrar.add_architecture(
      "DeepseekV3ForCausalLM",
      moeq::causal_lm_architecture(
          "DeepseekV3ForCausalLM", &build_deepseek_v3,
          "DeepSeek-V3/R1: MLA attention, grouped sigmoid top-k routing with correction bias, "
          "shared experts, dense first layers; FP8 block source; MTP layer excluded"));
  registrar.add_module_adapter("DeepseekV3MoE",
                               [] { return std::make_unique<DeepseekV3MoeAdapter>(); });
}

}  // namespace

MOEQ_PLUGIN(deepseek_v3, "0.1.0", register_deepseek_v3)
