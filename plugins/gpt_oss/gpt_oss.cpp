// The gpt_oss plugin: GptOssForCausalLM (openai/gpt-oss-20b, gpt-oss-120b), a mid-tier model.
// Its experts are fused 3-D stacks (`experts.gate_up_proj` [E, H, 2I] with gate and up in
// interleaved columns, `experts.down_proj` [E, I, H], both with biases) run by matmuls on expert
// slices, so there is no Linear per expert to intercept: the experts module gets the mid tier's
// adapter, and the block (router + experts) the easy tier's for all-expert calibration.
// The rest, as transformers 5.17 computes it: attention with per-head sinks and biases on every
// projection, sliding-window and full layers alternating, YaRN RoPE, RMSNorm scaling in fp32, a
// router with a bias that takes the top-k logits and softmaxes over them, and the clamped SwiGLU
// (alpha 1.702, limit 7). The published checkpoints store the experts in MXFP4
// (`*_blocks` + `*_scales`); they are dequantized to bf16 as each layer is loaded.
#include <moeq/adapters/fused_experts.h>
#include <moeq/adapters/sparse_moe.h>
#include <moeq/core/error.h>
#include <moeq/kernels/source_dequant.h>
#include <moeq/registry/causal_lm_architecture.h>
#include <moeq/registry/plugin_abi.h>
#include <moeq/registry/plugin_registrar.h>
#include <moeq/runtime/fused_experts.h>
#include <moeq/runtime/model_config.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

namespace {

using namespace moeq::runtime;  // NOLINT(google-build-using-namespace)

// logits = x W^T + b; the top-k logits are softmaxed among themselves (in the logits' dtype).
class GptOssTopKRouter final : public Router {
 public:
  GptOssTopKRouter(std::string name, int64_t hidden_size, int64_t num_experts, int64_t top_k)
      : Router("GptOssTopKRouter", std::move(name), num_experts, top_k),
        weight_(&add_parameter("weight", {num_experts, hidden_size})),
        bias_(&add_parameter("bias", {num_experts})) {
    ref_.name = weight_->name;
    ref_.role = "router";
    ref_.kind = moeq::fn::ProjKind::kRouter;
  }

  RouterOutput route(const at::Tensor& hidden) override {
    RouterOutput out;
    out.logits = moeq::fn::linear(hidden, weight_->value, bias_->value, ref_);
    auto [values, ids] = at::topk(out.logits, top_k(), -1);
    out.topk_ids = ids;
    out.topk_weights = at::softmax(values, 1, values.scalar_type());
    // The full distribution, for calibration modes that rank all experts.
    out.probs = at::softmax(out.logits, -1, at::kFloat);
    return out;
  }

 private:
  Parameter* weight_;
  Parameter* bias_;
  moeq::fn::WeightRef ref_;
};

// MXFP4 experts (`<stack>_blocks` [E, out, in/32, 16], `<stack>_scales` [E, out, in/32]) become
// the bf16 stacks [E, in, out] the model reads, as transformers' dequantize does.
std::shared_ptr<WeightSource> dequantize_mxfp4_experts(std::shared_ptr<WeightSource> source) {
  std::vector<DerivedSource::Rule> rules;
  for (const auto& name : source->names()) {
    constexpr std::string_view kBlocks = "_blocks";
    if (!name.ends_with(kBlocks)) {
      continue;
    }
    const auto stack = name.substr(0, name.size() - kBlocks.size());
    MOEQ_CHECK(source->has(stack + "_scales"),
               "{}: '{}' has no '{}_scales' beside it (MXFP4 needs both)", source->describe(), name,
               stack);
    rules.push_back({stack, {name, stack + "_scales"}, [](const std::vector<at::Tensor>& in) {
                       return moeq::kernels::dequantize_mxfp4_source(in[0], in[1], at::kBFloat16)
                           .transpose(1, 2)
                           .contiguous();
                     }});
  }
  if (rules.empty()) {
    return source;
  }
  return std::make_shared<DerivedSource>(std::move(source), std::move(rules),
                                         "MXFP4 experts dequantized to bf16");
}

std::unique_ptr<CausalLM> build_gpt_oss(const moeq::io::HfConfig& config,
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
  lm.norm_type = "GptOssRMSNorm";
  lm.norm_style = NormStyle::kScaleThenCast;
  auto model = std::make_unique<CausalLM>("GptOssForCausalLM", lm,
                                          dequantize_mxfp4_experts(std::move(weights)), options);

  RopeOptions rope;
  if (config.contains("rope_scaling") || config.contains("rope_parameters")) {
    rope = moeq::runtime::model_config::rope_options(config, head_dim, /*default_theta=*/150000.0);
  } else {  // transformers' GptOssConfig default
    rope.type = RopeType::kYarn;
    rope.head_dim = head_dim;
    rope.theta = config.get_or("rope_theta", 150000.0);
    rope.factor = 32.0;
    rope.truncate = false;
    rope.original_max_position_embeddings = 4096;
  }
  auto rotary = std::make_shared<const RotaryEmbedding>(rope);
  model->set_rotary(rotary);

  AttentionOptions attention;
  attention.hidden_size = hidden;
  attention.num_heads = heads;
  attention.num_kv_heads = config.get_or<int64_t>("num_key_value_heads", heads);
  attention.head_dim = head_dim;
  attention.qkv_bias = config.get_or("attention_bias", true);
  attention.o_bias = attention.qkv_bias;
  attention.sinks = true;
  const auto window = config.get_or<int64_t>("sliding_window", 128);
  auto layer_types = config.get_or<std::vector<std::string>>("layer_types", {});
  if (layer_types.empty()) {
    for (int64_t i = 0; i < num_layers; ++i) {
      layer_types.push_back((i + 1) % 2 != 0 ? "sliding_attention" : "full_attention");
    }
  }
  MOEQ_CHECK(static_cast<int64_t>(layer_types.size()) == num_layers,
             "config '{}': layer_types has {} entries for {} layers", config.source(),
             layer_types.size(), num_layers);

  const auto num_experts = config.get<int64_t>("num_local_experts");
  const auto top_k = config.get<int64_t>("num_experts_per_tok");
  FusedExpertsOptions experts;
  experts.num_experts = num_experts;
  experts.hidden_size = hidden;
  experts.intermediate_size = config.get<int64_t>("intermediate_size");
  experts.transposed = true;
  experts.layout = GateUpLayout::kInterleaved;
  experts.bias = true;
  experts.activation = FusedActivation::kClampedSwiglu;
  experts.swiglu_limit = config.get_or("swiglu_limit", 7.0);
  // On a GPU the grouped matmul; transformers' eager loop elsewhere.
  experts.dispatch =
      options.placement.device.is_cuda() ? FusedDispatch::kGrouped : FusedDispatch::kPerExpert;

  SparseMoeOptions block;
  block.router_name = "router";

  for (int64_t i = 0; i < num_layers; ++i) {
    const auto prefix = fmt::format("model.layers.{}", i);
    const auto& type = layer_types[static_cast<size_t>(i)];
    MOEQ_CHECK(type == "sliding_attention" || type == "full_attention",
               "config '{}': layer_types[{}] is '{}', expected sliding_attention or "
               "full_attention",
               config.source(), i, type);
    auto layer_attention = attention;
    layer_attention.sliding_window = type == "sliding_attention" ? window : 0;
    auto layer = std::make_unique<DecoderLayer>("GptOssDecoderLayer", prefix, i);
    layer->set_input_layernorm(std::make_unique<RMSNorm>(
        "GptOssRMSNorm", prefix + ".input_layernorm", hidden, eps, NormStyle::kScaleThenCast));
    layer->set_attention(std::make_unique<Attention>("GptOssAttention", prefix + ".self_attn",
                                                     layer_attention, rotary));
    layer->set_post_attention_layernorm(
        std::make_unique<RMSNorm>("GptOssRMSNorm", prefix + ".post_attention_layernorm", hidden,
                                  eps, NormStyle::kScaleThenCast));
    const auto mlp = prefix + ".mlp";
    auto moe = std::make_unique<SparseMoeBlock>("GptOssMLP", mlp, block);
    moe->set_router(
        std::make_unique<GptOssTopKRouter>(mlp + ".router", hidden, num_experts, top_k));
    moe->set_experts(std::make_unique<FusedExperts>("GptOssExperts", mlp + ".experts", experts));
    layer->set_mlp(std::move(moe));
    model->add_layer(std::move(layer));
  }
  return model;
}

void register_gpt_oss(moeq::PluginRegistrar& registrar) {
  registrar.add_architecture(
      "GptOssForCausalLM",
      moeq::causal_lm_architecture(
          "GptOssForCausalLM", &build_gpt_oss,
          "GPT-OSS: attention sinks, alternating sliding window, YaRN; fused interleaved "
          "gate/up experts with biases (bf16 or MXFP4 source)"));
  registrar.add_module_adapter("GptOssMLP",
                               moeq::adapters::sparse_moe_adapter_factory("GptOssMLP"));
  registrar.add_module_adapter("GptOssExperts",
                               moeq::adapters::fused_experts_adapter_factory("GptOssExperts"));
}

}  // namespace

MOEQ_PLUGIN(gpt_oss, "0.1.0", register_gpt_oss)
