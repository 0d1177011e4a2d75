// The llama4 plugin: Llama4ForCausalLM (the text model of Llama 4 Scout and Maverick), a
// mid-tier model. Its routed experts are fused 3-D stacks (`feed_forward.experts.gate_up_proj`
// [E, H, 2I] with gate and up concatenated, `down_proj` [E, I, H]) that transformers runs as one
// bmm over every expert and every token, the input pre-scaled by a sigmoid top-k router weight
// (zero for experts a token did not pick); a shared expert is added. MoE and dense layers
// interleave (moe_layers). Attention, as transformers 5.17 computes it: RoPE on complex pairs
// (interleaved channels) with an L2 qk-norm after it and chunked local attention on RoPE layers;
// NoPE layers attend globally with temperature tuning of the queries.
#include <moeq/adapters/fused_experts.h>
#include <moeq/adapters/sparse_moe.h>
#include <moeq/core/error.h>
#include <moeq/registry/causal_lm_architecture.h>
#include <moeq/registry/plugin_abi.h>
#include <moeq/registry/plugin_registrar.h>
#include <moeq/runtime/fused_experts.h>
#include <moeq/runtime/model_config.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>

namespace {

using namespace moeq::runtime;  // NOLINT(google-build-using-namespace)
using moeq::fn::ProjKind;

// logits = x W^T; top-k logits; weights sigmoid(top logits) computed in fp32 and cast back.
class Llama4Router final : public Router {
 public:
  Llama4Router(std::string name, int64_t hidden_size, int64_t num_experts, int64_t top_k)
      : Router("Llama4Router", std::move(name), num_experts, top_k),
        weight_(&add_parameter("weight", {num_experts, hidden_size})) {
    ref_.name = weight_->name;
    ref_.role = "router";
    ref_.kind = ProjKind::kRouter;
  }

  RouterOutput route(const at::Tensor& hidden) override {
    RouterOutput out;
    out.logits = moeq::fn::linear(hidden, weight_->value, std::nullopt, ref_);
    auto [values, ids] = at::topk(out.logits, top_k(), 1);
    out.topk_ids = ids;
    out.topk_weights = at::sigmoid(values.to(at::kFloat)).to(values.scalar_type());
    out.probs = at::sigmoid(out.logits.to(at::kFloat));
    return out;
  }

 private:
  Parameter* weight_;
  moeq::fn::WeightRef ref_;
};

struct Llama4AttentionOptions {
  AttentionOptions base;
  bool use_rope = true;
  bool qk_norm = false;  // L2 norm of q and k after RoPE (RoPE layers only)
  double qk_norm_eps = 1e-5;
  int64_t chunk_size = 0;  // chunked attention on this layer; 0: full causal
  bool temperature_tuning = false;
  double floor_scale = 8192.0;
  double attn_scale = 0.1;
};

class Llama4TextAttention final : public SelfAttention {
 public:
  Llama4TextAttention(std::string name,
                      const Llama4AttentionOptions& options,
                      std::shared_ptr<const RotaryEmbedding> rotary)
      : SelfAttention("Llama4TextAttention", std::move(name)),
        options_(options),
        rotary_(std::move(rotary)) {
    const auto& o = options_.base;
    MOEQ_CHECK(o.num_heads > 0 && o.num_kv_heads > 0 && o.num_heads % o.num_kv_heads == 0,
               "{}: num_attention_heads {} must be a positive multiple of num_key_value_heads {}",
               this->name(), o.num_heads, o.num_kv_heads);
    q_ = add_child(std::make_unique<Linear>(child_name("q_proj"), o.hidden_size,
                                            o.num_heads * o.head_dim, o.qkv_bias, ProjKind::kQ));
    k_ = add_child(std::make_unique<Linear>(child_name("k_proj"), o.hidden_size,
                                            o.num_kv_heads * o.head_dim, o.qkv_bias, ProjKind::kK));
    v_ = add_child(std::make_unique<Linear>(child_name("v_proj"), o.hidden_size,
                                            o.num_kv_heads * o.head_dim, o.qkv_bias, ProjKind::kV));
    o_ = add_child(std::make_unique<Linear>(child_name("o_proj"), o.num_heads * o.head_dim,
                                            o.hidden_size, o.qkv_bias, ProjKind::kO));
  }

  at::Tensor forward(const at::Tensor& hidden, ForwardContext& ctx) override {
    const auto& o = options_.base;
    const auto b = hidden.size(0), s = hidden.size(1);
    auto q = q_->forward(hidden).view({b, s, -1, o.head_dim});
    auto k = k_->forward(hidden).view({b, s, -1, o.head_dim});
    auto v = v_->forward(hidden).view({b, s, -1, o.head_dim}).transpose(1, 2);
    if (options_.use_rope) {
      // freqs_cis = polar(1, pos * inv_freq) * attention_scaling, in fp32.
      auto [cos, sin] = rotary_->cos_sin(ctx.position_ids(), at::kFloat);
      const auto half = cos.size(-1) / 2;
      cos = cos.narrow(-1, 0, half).unsqueeze(2);  // [B, S, 1, d/2]
      sin = sin.narrow(-1, 0, half).unsqueeze(2);
      q = rotate_pairs(q, cos, sin);
      k = rotate_pairs(k, cos, sin);
    }
    if (options_.qk_norm) {
      q = l2_norm(q);
      k = l2_norm(k);
    }
    if (options_.temperature_tuning && !options_.use_rope) {
      // transformers uses the positions 0..S-1 here, not position_ids.
      auto positions = at::arange(s, at::TensorOptions(hidden.device()).dtype(at::kFloat));
      auto scales =
          at::log1p(at::floor((positions + 1.0) / options_.floor_scale)) * options_.attn_scale +
          1.0;
      q = (q * scales.view({1, s, 1, 1})).to(q.scalar_type());
    }
    q = q.transpose(1, 2);
    k = k.transpose(1, 2);
    const auto n_rep = o.num_heads / o.num_kv_heads;
    if (n_rep > 1) {
      const auto kv = k.size(1), d = k.size(3);
      k = k.unsqueeze(2).expand({b, kv, n_rep, s, d}).reshape({b, kv * n_rep, s, d});
      v = v.unsqueeze(2).expand({b, kv, n_rep, s, d}).reshape({b, kv * n_rep, s, d});
    }
    auto scores = at::matmul(q, k.transpose(2, 3)) * (1.0 / std::sqrt(double(o.head_dim)));
    scores = scores + (options_.chunk_size > 0 ? ctx.chunked_mask(options_.chunk_size)
                                               : ctx.additive_mask(0));
    auto probs = at::softmax(scores, -1);  // in the scores' dtype, as transformers' eager path
    auto out = at::matmul(probs, v).transpose(1, 2).contiguous().reshape({b, s, -1});
    return o_->forward(out);
  }

 private:
  // x [B, S, heads, d] with channel pairs (2i, 2i+1) as complex numbers, times cos + i sin.
  static at::Tensor rotate_pairs(const at::Tensor& x,
                                 const at::Tensor& cos,
                                 const at::Tensor& sin) {
    auto xf = x.to(at::kFloat).unflatten(-1, {-1, 2});
    auto re = xf.select(-1, 0);
    auto im = xf.select(-1, 1);
    auto out = at::stack({re * cos - im * sin, re * sin + im * cos}, -1).flatten(-2);
    return out.to(x.scalar_type());
  }

  at::Tensor l2_norm(const at::Tensor& x) const {
    auto xf = x.to(at::kFloat);
    return (xf * at::rsqrt(xf.pow(2).mean(-1, true) + options_.qk_norm_eps)).to(x.scalar_type());
  }

  Llama4AttentionOptions options_;
  std::shared_ptr<const RotaryEmbedding> rotary_;
  Linear* q_;
  Linear* k_;
  Linear* v_;
  Linear* o_;
};

std::unique_ptr<CausalLM> build_llama4(const moeq::io::HfConfig& config,
                                       std::shared_ptr<WeightSource> weights,
                                       const RuntimeOptions& options) {
  const auto hidden = config.get<int64_t>("hidden_size");
  const auto num_layers = config.get<int64_t>("num_hidden_layers");
  const auto heads = config.get<int64_t>("num_attention_heads");
  const auto head_dim = moeq::runtime::model_config::head_dim(config);
  const auto eps = config.get_or("rms_norm_eps", 1e-5);

  CausalLMConfig lm;
  lm.vocab_size = config.get<int64_t>("vocab_size");
  lm.hidden_size = hidden;
  lm.num_layers = num_layers;
  lm.rms_norm_eps = eps;
  lm.tie_word_embeddings = config.get_or("tie_word_embeddings", false);
  lm.norm_type = "Llama4TextRMSNorm";
  auto model = std::make_unique<CausalLM>("Llama4ForCausalLM", lm, std::move(weights), options);
  auto rotary = std::make_shared<const RotaryEmbedding>(
      moeq::runtime::model_config::rope_options(config, head_dim, /*default_theta=*/500000.0));
  model->set_rotary(rotary);

  // transformers' Llama4TextConfig.__post_init__ defaults.
  auto no_rope_layers = config.get_or<std::vector<int64_t>>("no_rope_layers", {});
  if (no_rope_layers.empty()) {
    const auto interval = config.get_or<int64_t>("no_rope_layer_interval", 4);
    for (int64_t i = 0; i < num_layers; ++i) {
      no_rope_layers.push_back((i + 1) % interval != 0 ? 1 : 0);
    }
  }
  std::vector<int64_t> moe_layers;
  if (config.contains("moe_layers")) {
    moe_layers = config.get<std::vector<int64_t>>("moe_layers");
  } else {
    const auto step = config.get_or<int64_t>("interleave_moe_layer_step", 1);
    MOEQ_CHECK(step > 0, "config '{}': interleave_moe_layer_step must be positive, got {}",
               config.source(), step);
    for (int64_t i = step - 1; i < num_layers; i += step) {
      moe_layers.push_back(i);
    }
  }
  auto layer_types = config.get_or<std::vector<std::string>>("layer_types", {});
  if (layer_types.empty()) {
    for (auto rope : no_rope_layers) {
      layer_types.emplace_back(rope != 0 ? "chunked_attention" : "full_attention");
    }
  }
  MOEQ_CHECK(static_cast<int64_t>(no_rope_layers.size()) == num_layers &&
                 static_cast<int64_t>(layer_types.size()) == num_layers,
             "config '{}': no_rope_layers ({}) and layer_types ({}) need one entry per layer ({})",
             config.source(), no_rope_layers.size(), layer_types.size(), num_layers);

  Llama4AttentionOptions attention;
  attention.base.hidden_size = hidden;
  attention.base.num_heads = heads;
  attention.base.num_kv_heads = config.get_or<int64_t>("num_key_value_heads", heads);
  attention.base.head_dim = head_dim;
  attention.base.qkv_bias = config.get_or("attention_bias", false);
  attention.qk_norm_eps = eps;
  attention.temperature_tuning = config.get_or("attn_temperature_tuning", true);
  attention.floor_scale = config.get_or("floor_scale", 8192.0);
  attention.attn_scale = config.get_or("attn_scale", 0.1);
  const bool use_qk_norm = config.get_or("use_qk_norm", true);
  const auto chunk = config.get_or<int64_t>("attention_chunk_size", 0);

  const auto num_experts = config.get<int64_t>("num_local_experts");
  const auto top_k = config.get_or<int64_t>("num_experts_per_tok", 1);
  const auto activation = moeq::runtime::model_config::activation(config, "Llama4ForCausalLM");
  FusedExpertsOptions experts;
  experts.num_experts = num_experts;
  experts.hidden_size = hidden;
  experts.intermediate_size = config.get<int64_t>("intermediate_size");
  experts.transposed = true;
  experts.layout = GateUpLayout::kConcatenated;
  experts.dispatch = FusedDispatch::kBatched;

  SparseMoeOptions block;
  block.router_name = "router";
  block.router_weight_on_input = true;
  block.shared_expert = true;
  block.shared_expert_type = "Llama4TextMLP";
  block.shared_expert_options.hidden_size = hidden;
  block.shared_expert_options.intermediate_size = experts.intermediate_size;
  block.shared_expert_options.activation = activation;

  GatedMlpOptions dense;
  dense.hidden_size = hidden;
  dense.intermediate_size = config.get_or<int64_t>("intermediate_size_mlp", 16384);
  dense.activation = activation;

  for (int64_t i = 0; i < num_layers; ++i) {
    const auto prefix = fmt::format("model.layers.{}", i);
    auto layer_attention = attention;
    layer_attention.use_rope = no_rope_layers[static_cast<size_t>(i)] != 0;
    layer_attention.qk_norm = use_qk_norm && layer_attention.use_rope;
    const auto& type = layer_types[static_cast<size_t>(i)];
    MOEQ_CHECK(type == "chunked_attention" || type == "full_attention",
               "config '{}': layer_types[{}] is '{}', expected chunked_attention or "
               "full_attention",
               config.source(), i, type);
    layer_attention.chunk_size = type == "chunked_attention" ? chunk : 0;
    auto layer = std::make_unique<DecoderLayer>("Llama4TextDecoderLayer", prefix, i);
    layer->set_input_layernorm(
        std::make_unique<RMSNorm>("Llama4TextRMSNorm", prefix + ".input_layernorm", hidden, eps));
    layer->set_attention(
        std::make_unique<Llama4TextAttention>(prefix + ".self_attn", layer_attention, rotary));
    layer->set_post_attention_layernorm(std::make_unique<RMSNorm>(
        "Llama4TextRMSNorm", prefix + ".post_attention_layernorm", hidden, eps));
    const auto ff = prefix + ".feed_forward";
    if (std::find(moe_layers.begin(), moe_layers.end(), i) != moe_layers.end()) {
      auto moe = std::make_unique<SparseMoeBlock>("Llama4TextMoe", ff, block);
      moe->set_router(std::make_unique<Llama4Router>(ff + ".router", hidden, num_experts, top_k));
      moe->set_experts(
          std::make_unique<FusedExperts>("Llama4TextExperts", ff + ".experts", experts));
      layer->set_mlp(std::move(moe));
    } else {
      layer->set_mlp(std::make_unique<GatedMlp>("Llama4TextMLP", ff, dense));
    }
    model->add_layer(std::move(layer));
  }
  return model;
}

void register_llama4(moeq::PluginRegistrar& registrar) {
  registrar.add_architecture(
      "Llama4ForCausalLM",
      moeq::causal_lm_architecture(
          "Llama4ForCausalLM", &build_llama4,
          "Llama 4 text: fused experts run as one bmm with the sigmoid router weight on the "
          "input, shared expert, chunked attention, NoPE layers"));
  registrar.add_module_adapter("Llama4TextMoe",
                               moeq::adapters::sparse_moe_adapter_factory("Llama4TextMoe"));
  registrar.add_module_adapter("Llama4TextExperts",
                               moeq::adapters::fused_experts_adapter_factory("Llama4TextExperts"));
}

}  // namespace

MOEQ_PLUGIN(llama4, "0.1.0", register_llama4)
