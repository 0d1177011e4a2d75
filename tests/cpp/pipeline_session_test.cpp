// LayerSession and the easy-tier SparseMoeAdapter: calibration routing modes, token counts,
// fallback, targets and the NVFP4 shared global scale.
#include <gtest/gtest.h>

#include <moeq/adapters/sparse_moe.h>
#include <moeq/core/error.h>
#include <moeq/pipeline/layer_session.h>
#include <moeq/quant/scheme.h>
#include <moeq/runtime/blocks.h>
#include <moeq/runtime/functional.h>

#include <ATen/ATen.h>

#include <nlohmann/json.hpp>

#include <map>
#include <memory>

namespace {

using moeq::CalibrationMode;
using moeq::pipeline::CalibrationOptions;
using moeq::pipeline::LayerSession;
using moeq::pipeline::TargetRules;
using namespace moeq::runtime;  // NOLINT(google-build-using-namespace): a test of the blocks
namespace fn = moeq::fn;

constexpr int64_t kHidden = 32;
constexpr int64_t kExperts = 8;
constexpr int64_t kTopK = 2;

// One Mixtral-style decoder layer built from the runtime's blocks, with random weights.
struct TinyLayer {
  std::shared_ptr<TensorMapSource> source = std::make_shared<TensorMapSource>();
  std::shared_ptr<const RotaryEmbedding> rotary;
  std::unique_ptr<DecoderLayer> layer;
  SparseMoeBlock* moe = nullptr;

  TinyLayer() {
    RopeOptions rope;
    rope.head_dim = 8;
    rotary = std::make_shared<const RotaryEmbedding>(rope);
    const std::string p = "model.layers.0";
    layer = std::make_unique<DecoderLayer>("MixtralDecoderLayer", p, 0);
    layer->set_input_layernorm(
        std::make_unique<RMSNorm>("MixtralRMSNorm", p + ".input_layernorm", kHidden, 1e-5));
    AttentionOptions attn;
    attn.hidden_size = kHidden;
    attn.num_heads = 4;
    attn.num_kv_heads = 2;
    attn.head_dim = 8;
    layer->set_attention(
        std::make_unique<Attention>("MixtralAttention", p + ".self_attn", attn, rotary));
    layer->set_post_attention_layernorm(std::make_unique<RMSNorm>(
        "MixtralRMSNorm", p + ".post_attention_layernorm", kHidden, 1e-5));
    auto block = std::make_unique<SparseMoeBlock>("MixtralSparseMoeBlock", p + ".block_sparse_moe",
                                                  SparseMoeOptions{});
    SoftmaxTopKOptions router;
    router.hidden_size = kHidden;
    router.num_experts = kExperts;
    router.top_k = kTopK;
    router.normalize_topk = true;
    block->set_router(std::make_unique<SoftmaxTopKRouter>("MixtralTopKRouter",
                                                          p + ".block_sparse_moe.gate", router));
    GatedMlpOptions expert;
    expert.hidden_size = kHidden;
    expert.intermediate_size = 64;
    expert.gate_name = "w1";
    expert.up_name = "w3";
    expert.down_name = "w2";
    block->set_experts(std::make_unique<PerExpertMlps>("MixtralExperts",
                                                       p + ".block_sparse_moe.experts", kExperts,
                                                       "MixtralBlockSparseTop2MLP", expert));
    layer->set_mlp(std::move(block));
    moe = layer->moe();
    auto gen = at::make_generator<at::CPUGeneratorImpl>(1234);
    layer->for_each_parameter([&](Parameter& param) {
      auto t = param.shape.size() == 1 ? at::ones(param.shape) : at::randn(param.shape, gen) * 0.2;
      source->set(param.name, t);
    });
    layer->load(*source, Placement{});
  }

  at::Tensor hidden(int64_t batch, int64_t seq, uint64_t seed) const {
    auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
    return at::randn({batch, seq, kHidden}, gen);
  }
};

TargetRules rules(const char* scheme) {
  TargetRules r;
  r.scheme = moeq::quant::preset_scheme(scheme);
  return r;
}

// Weight-only int8 per channel: the tiny layer's 32 columns are below the presets' group of 128.
TargetRules int8_channel_weights() {
  TargetRules r;
  r.scheme = moeq::quant::QuantScheme::from_json(nlohmann::json::parse(R"({
      "targets": ["Linear"],
      "weights": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "channel"}})"));
  r.scheme.validate();
  return r;
}

std::map<std::string, int64_t> rows_by_module(LayerSession& session) {
  std::map<std::string, int64_t> rows;
  for (auto& t : session.targets()) {
    rows[t.module] = t.rows_seen;
  }
  return rows;
}

std::string expert_w1(int64_t e) {
  return "model.layers.0.block_sparse_moe.experts." + std::to_string(e) + ".w1";
}

// Runs the layer once without any session: the routed (inference) output.
at::Tensor routed_output(TinyLayer& tiny, const at::Tensor& h) {
  ForwardContext ctx(h.size(0), h.size(1), {}, {}, Placement{});
  return tiny.layer->forward(h, ctx);
}

at::Tensor calibrate(TinyLayer& tiny, LayerSession& session, const at::Tensor& h) {
  moeq::adapters::SparseMoeAdapter adapter("MixtralSparseMoeBlock");
  const auto claimed = session.attach_adapters([&](const std::string& type) {
    return type == "MixtralSparseMoeBlock" ? &adapter : nullptr;
  });
  EXPECT_EQ(claimed, 1);
  ForwardContext ctx(h.size(0), h.size(1), {}, {}, Placement{});
  at::Tensor out;
  {
    fn::FunctionalOverride observe(session.calibration_handlers());
    out = tiny.layer->forward(h, ctx);
  }
  session.detach_all();
  return out;
}

TEST(PipelineSession, TargetsSkipRoutersAndFollowIgnoreRules) {
  TinyLayer tiny;
  auto r = rules("W4A16");
  r.ignore = {"re:.*self_attn\\.o_proj$"};
  LayerSession session(*tiny.layer, *tiny.source, r, CalibrationOptions{});
  std::set<std::string> modules;
  for (auto& t : session.targets()) {
    modules.insert(t.module);
  }
  EXPECT_EQ(modules.size(), 3u + 3u * kExperts);  // q, k, v and the experts' w1, w2, w3
  EXPECT_FALSE(modules.contains("model.layers.0.block_sparse_moe.gate"));
  EXPECT_FALSE(modules.contains("model.layers.0.self_attn.o_proj"));
  EXPECT_TRUE(modules.contains(expert_w1(7)));

  r.skip_attention = true;
  LayerSession experts_only(*tiny.layer, *tiny.source, r, CalibrationOptions{});
  EXPECT_EQ(experts_only.targets().size(), static_cast<size_t>(3 * kExperts));
}

TEST(PipelineSession, AllExpertsSeeEveryTokenAndTheOutputIsTheRoutedOne) {
  TinyLayer tiny;
  const auto h = tiny.hidden(2, 5, 1);
  const auto expected = routed_output(tiny, h);
  auto r = rules("W8A8-FP8");
  LayerSession session(*tiny.layer, *tiny.source, r, CalibrationOptions{});
  const auto out = calibrate(tiny, session, h);
  EXPECT_TRUE(at::allclose(out, expected, 1e-5, 1e-6));
  ASSERT_EQ(session.coverage().size(), 1u);
  const auto& cov = session.coverage()[0];
  EXPECT_EQ(cov.block, "model.layers.0.block_sparse_moe");
  EXPECT_EQ(cov.tokens, 10);
  int64_t routed = 0;
  for (int64_t e = 0; e < kExperts; ++e) {
    EXPECT_EQ(cov.seen[e], 10) << e;
    routed += cov.routed[e];
  }
  EXPECT_EQ(routed, 10 * kTopK);
  const auto rows = rows_by_module(session);
  for (int64_t e = 0; e < kExperts; ++e) {
    EXPECT_EQ(rows.at(expert_w1(e)), 10) << e;
  }
  // The experts of a block share one input quantizer per projection.
  const moeq::quant::TensorQuantizer* first = nullptr;
  for (auto& t : session.targets()) {
    if (t.expert >= 0 && t.kind == fn::ProjKind::kGate) {
      first = first != nullptr ? first : t.input;
      EXPECT_EQ(t.input, first);
      EXPECT_NE(t.input, nullptr);
    }
  }
  session.finish_calibration();
  for (auto& t : session.targets()) {
    EXPECT_GT(t.weight_error, 0.0) << t.module;
    EXPECT_LT(t.weight_error, 0.1) << t.module;
  }
}

TEST(PipelineSession, RoutedModeCountsOnlyPicksAndStarvedExpertsFallBack) {
  TinyLayer tiny;
  const auto h = tiny.hidden(1, 3, 2);  // 3 tokens x top-2: at least 2 of 8 experts get nothing
  const auto expected = routed_output(tiny, h);
  CalibrationOptions options;
  options.mode = CalibrationMode::kRouted;
  options.min_tokens = 1;
  auto r = int8_channel_weights();
  LayerSession session(*tiny.layer, *tiny.source, r, options);
  const auto out = calibrate(tiny, session, h);
  EXPECT_TRUE(at::equal(out, expected));
  session.finish_calibration();
  const auto& cov = session.coverage()[0];
  const auto rows = rows_by_module(session);
  int64_t starved = 0;
  for (int64_t e = 0; e < kExperts; ++e) {
    EXPECT_EQ(cov.seen[e], cov.routed[e]);
    EXPECT_EQ(rows.at(expert_w1(e)), cov.routed[e]);
    EXPECT_EQ(cov.fallback[e], cov.routed[e] == 0);
    starved += cov.routed[e] == 0 ? 1 : 0;
  }
  EXPECT_GE(starved, 2);
  // A starved expert is still quantized (from its weights alone).
  for (auto& t : session.targets()) {
    EXPECT_TRUE(t.fake_weight.defined()) << t.module;
  }
}

TEST(PipelineSession, RatioModeVisitsTheMostProbableExperts) {
  TinyLayer tiny;
  const auto h = tiny.hidden(2, 4, 3);
  const auto expected = routed_output(tiny, h);
  CalibrationOptions options;
  options.mode = CalibrationMode::kRatio;
  options.ratio = 0.5;  // 4 of 8 experts per token
  auto r = rules("W4A16");
  LayerSession session(*tiny.layer, *tiny.source, r, options);
  const auto out = calibrate(tiny, session, h);
  EXPECT_TRUE(at::allclose(out, expected, 1e-5, 1e-6));
  const auto& cov = session.coverage()[0];
  int64_t seen = 0;
  for (int64_t e = 0; e < kExperts; ++e) {
    EXPECT_GE(cov.seen[e], cov.routed[e]);
    seen += cov.seen[e];
  }
  EXPECT_EQ(seen, 8 * 4);
}

TEST(PipelineSession, Nvfp4GateAndUpShareTheGlobalScale) {
  TinyLayer tiny;
  const auto h = tiny.hidden(2, 6, 4);
  auto r = rules("NVFP4");
  LayerSession session(*tiny.layer, *tiny.source, r, CalibrationOptions{});
  calibrate(tiny, session, h);
  session.finish_calibration();
  std::map<int64_t, std::vector<at::Tensor>> by_expert;
  for (auto& t : session.targets()) {
    if (t.expert >= 0 && (t.kind == fn::ProjKind::kGate || t.kind == fn::ProjKind::kUp)) {
      by_expert[t.expert].push_back(t.weight->global_amax());
    }
  }
  ASSERT_EQ(by_expert.size(), static_cast<size_t>(kExperts));
  for (auto& [e, amax] : by_expert) {
    ASSERT_EQ(amax.size(), 2u);
    EXPECT_TRUE(at::equal(amax[0], amax[1])) << "expert " << e;
  }
}

TEST(PipelineSession, QuantizedForwardUsesTheFakeQuantizedWeights) {
  TinyLayer tiny;
  const auto h = tiny.hidden(2, 5, 5);
  auto r = int8_channel_weights();
  LayerSession session(*tiny.layer, *tiny.source, r, CalibrationOptions{});
  const auto reference = calibrate(tiny, session, h);
  session.finish_calibration();
  ForwardContext ctx(2, 5, {}, {}, Placement{});
  at::Tensor quantized;
  {
    fn::FunctionalOverride q(session.quantized_handlers());
    quantized = tiny.layer->forward(h, ctx);
  }
  // Swapping the weights in by hand gives the same output.
  for (auto& t : session.targets()) {
    t.linear->weight().value = t.fake_weight;
  }
  EXPECT_TRUE(at::equal(quantized, routed_output(tiny, h)));
  EXPECT_FALSE(at::allclose(quantized, reference, 1e-6, 1e-7));
}

TEST(PipelineSession, FusedGlobalScalesNeedNvfp4) {
  // tensor_group int weights validate, but only NVFP4 has the global scale gate and up share.
  TinyLayer tiny;
  TargetRules r;
  r.scheme = moeq::quant::QuantScheme::from_json(nlohmann::json::parse(R"({
      "targets": ["Linear"],
      "weights": {"num_bits": 8, "type": "int", "symmetric": true, "strategy": "tensor_group",
                  "group_size": 16}})"));
  r.scheme.validate();
  LayerSession session(*tiny.layer, *tiny.source, r, CalibrationOptions{});
  try {
    session.finish_calibration([](moeq::pipeline::QuantTarget&) {}, /*in_place=*/false);
    FAIL() << "expected an error";
  } catch (const moeq::Error& e) {
    EXPECT_NE(std::string(e.what()).find("is not NVFP4: only NVFP4 global scales are shared by "
                                         "fused layers"),
              std::string::npos)
        << e.what();
  }
}

TEST(PipelineSession, StaticInputScaleWithoutTokensIsAnError) {
  TinyLayer tiny;
  auto r = rules("W8A8-INT8");  // dynamic per-token activations: no calibration needed
  LayerSession dynamic(*tiny.layer, *tiny.source, r, CalibrationOptions{});
  EXPECT_NO_THROW(dynamic.finish_calibration());
  moeq::quant::QuantScheme fp8_static = moeq::quant::preset_scheme("W8A8-FP8");
  ASSERT_TRUE(fp8_static.input_activations.has_value());
  TargetRules s;
  s.scheme = fp8_static;
  if (!s.scheme.input_activations->is_dynamic()) {
    LayerSession session(*tiny.layer, *tiny.source, s, CalibrationOptions{});
    try {
      session.finish_calibration();
      FAIL() << "expected an error";
    } catch (const moeq::Error& e) {
      EXPECT_NE(std::string(e.what()).find("no calibration token reached"), std::string::npos)
          << e.what();
    }
  }
}

}  // namespace
