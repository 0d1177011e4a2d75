// The mid tier: fused 3-D experts quantized by intercepting moeq's matmul functionals by weight
// operand. A forward that calls the functionals in another order, calls one twice, or adds a
// matmul on a weight the session does not know is still quantized correctly (checked against a
// hand-written reference that applies the quantizers explicitly); the batched and grouped
// dispatches give the per-expert loop's result; bad operands and partly ignored stacks are errors.
#include <gtest/gtest.h>

#include <moeq/adapters/fused_experts.h>
#include <moeq/adapters/sparse_moe.h>
#include <moeq/core/error.h>
#include <moeq/pipeline/layer_session.h>
#include <moeq/quant/scheme.h>
#include <moeq/quant/tensor_quantizer.h>
#include <moeq/runtime/functional.h>
#include <moeq/runtime/fused_experts.h>

#include <ATen/ATen.h>

#include <functional>
#include <memory>

namespace {

using moeq::pipeline::CalibrationOptions;
using moeq::pipeline::LayerSession;
using moeq::pipeline::TargetRules;
using namespace moeq::runtime;  // NOLINT(google-build-using-namespace): a test of the blocks
namespace fn = moeq::fn;
namespace quant = moeq::quant;

constexpr int64_t kHidden = 32;
constexpr int64_t kInter = 16;
constexpr int64_t kExperts = 4;
const std::string kPrefix = "model.layers.0.mlp";

// Fused experts whose forward computes the up half before the gate half, from two separate calls
// on the same slice, and adds a term from a matmul on a weight no module declares.
class ReorderedExperts final : public FusedExperts {
 public:
  ReorderedExperts(std::string name, const FusedExpertsOptions& o, at::Tensor scratch)
      : FusedExperts("ReorderedExperts", std::move(name), o), scratch_(std::move(scratch)) {
    scratch_name_ = this->name() + ".scratch";
  }

  at::Tensor run_expert(int64_t e, const at::Tensor& rows) override {
    const fn::WeightRef gate_up_ref{gate_up().name, "gate_up_proj", e, fn::ProjKind::kGateUp};
    const fn::WeightRef down_ref{down().name, "down_proj", e, fn::ProjKind::kDown};
    const fn::WeightRef scratch_ref{scratch_name_, "scratch", e, fn::ProjKind::kOther};
    auto up = fn::matmul(rows, gate_up().value[e], gate_up_ref).narrow(-1, kInter, kInter);
    auto extra = fn::matmul(rows, scratch_, scratch_ref);
    auto gate = fn::matmul(rows, gate_up().value[e], gate_up_ref).narrow(-1, 0, kInter);
    return fn::matmul(at::silu(gate) * up, down().value[e], down_ref) + 0.1 * extra;
  }

  const std::string& scratch_name() const { return scratch_name_; }
  const at::Tensor& scratch() const { return scratch_; }

 private:
  at::Tensor scratch_;
  std::string scratch_name_;
};

FusedExpertsOptions fused_options(FusedDispatch dispatch) {
  FusedExpertsOptions o;
  o.num_experts = kExperts;
  o.hidden_size = kHidden;
  o.intermediate_size = kInter;
  o.dispatch = dispatch;
  return o;
}

// A decoder layer whose MLP is a sparse block with fused experts (Llama 4's shapes, no attention
// quantization needed: the tests look at the experts).
struct FusedLayer {
  std::shared_ptr<TensorMapSource> source = std::make_shared<TensorMapSource>();
  std::shared_ptr<const RotaryEmbedding> rotary;
  std::unique_ptr<DecoderLayer> layer;
  FusedExperts* experts = nullptr;
  SparseMoeBlock* block = nullptr;

  explicit FusedLayer(bool reordered, FusedDispatch dispatch = FusedDispatch::kPerExpert) {
    RopeOptions rope;
    rope.head_dim = 8;
    rotary = std::make_shared<const RotaryEmbedding>(rope);
    layer = std::make_unique<DecoderLayer>("TestDecoderLayer", "model.layers.0", 0);
    layer->set_input_layernorm(
        std::make_unique<RMSNorm>("RMSNorm", "model.layers.0.input_layernorm", kHidden, 1e-5));
    AttentionOptions attn;
    attn.hidden_size = kHidden;
    attn.num_heads = 4;
    attn.num_kv_heads = 2;
    attn.head_dim = 8;
    layer->set_attention(
        std::make_unique<Attention>("Attention", "model.layers.0.self_attn", attn, rotary));
    layer->set_post_attention_layernorm(std::make_unique<RMSNorm>(
        "RMSNorm", "model.layers.0.post_attention_layernorm", kHidden, 1e-5));
    SparseMoeOptions options;
    options.router_name = "router";
    auto moe = std::make_unique<SparseMoeBlock>("TestMoe", kPrefix, options);
    SoftmaxTopKOptions router;
    router.hidden_size = kHidden;
    router.num_experts = kExperts;
    router.top_k = 2;
    router.normalize_topk = true;
    moe->set_router(std::make_unique<SoftmaxTopKRouter>("Router", kPrefix + ".router", router));
    auto gen = at::make_generator<at::CPUGeneratorImpl>(77);
    if (reordered) {
      moe->set_experts(std::make_unique<ReorderedExperts>(
          kPrefix + ".experts", fused_options(dispatch), at::randn({kHidden, kHidden}, gen) * 0.2));
    } else {
      moe->set_experts(std::make_unique<FusedExperts>("TestExperts", kPrefix + ".experts",
                                                      fused_options(dispatch)));
    }
    layer->set_mlp(std::move(moe));
    block = layer->moe();
    experts = dynamic_cast<FusedExperts*>(&block->experts());
    layer->for_each_parameter([&](Parameter& p) {
      auto t = p.shape.size() == 1 ? at::ones(p.shape) : at::randn(p.shape, gen) * 0.3;
      source->set(p.name, t);
    });
    layer->load(*source, Placement{});
  }
};

TargetRules fp8_dynamic() {
  TargetRules r;
  r.scheme = quant::preset_scheme("W8A8-FP8-DYNAMIC");
  return r;
}

at::Tensor rows(int64_t n, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn({n, kHidden}, gen);
}

// Calibrates every expert on its own rows, then returns the session ready to run quantized.
std::unique_ptr<LayerSession> calibrated(FusedLayer& f, const TargetRules& rules) {
  auto session = std::make_unique<LayerSession>(*f.layer, *f.source, rules, CalibrationOptions{});
  moeq::adapters::FusedExpertsAdapter adapter("TestExperts");
  adapter.attach(*f.experts, *session);
  {
    fn::FunctionalOverride observe(session->calibration_handlers());
    for (int64_t e = 0; e < kExperts; ++e) {
      f.experts->run_expert(e, rows(5 + e, 100 + e));
    }
  }
  session->finish_calibration();
  return session;
}

// What the experts should compute, with the quantizers applied by hand: each expert's [out, in]
// slice fake-quantized on its own (fp8 per channel), inputs fake-quantized per token.
at::Tensor reference_expert(FusedLayer& f,
                            const TargetRules& rules,
                            int64_t e,
                            const at::Tensor& x,
                            const at::Tensor& scratch) {
  auto fq_weight = [&](const at::Tensor& w_out_in) {
    quant::TensorQuantizer q(*rules.scheme.weights, quant::TensorRole::kWeight, "reference");
    q.observe(w_out_in);
    return q.fake_quantize(w_out_in);
  };
  auto fq_input = [&](const at::Tensor& a) {
    quant::TensorQuantizer q(*rules.scheme.input_activations, quant::TensorRole::kInput, "in");
    return q.fake_quantize(a);
  };
  const auto gu = f.source->get(kPrefix + ".experts.gate_up_proj")[e];      // [H, 2I]
  const auto d = f.source->get(kPrefix + ".experts.down_proj")[e];          // [I, H]
  const auto gate_w = fq_weight(gu.narrow(1, 0, kInter).t().contiguous());  // [I, H]
  const auto up_w = fq_weight(gu.narrow(1, kInter, kInter).t().contiguous());
  const auto down_w = fq_weight(d.t().contiguous());  // [H, I]
  const auto xq = fq_input(x);
  auto h = at::silu(at::matmul(xq, gate_w.t())) * at::matmul(xq, up_w.t());
  auto out = at::matmul(fq_input(h), down_w.t());
  if (scratch.defined()) {
    out = out + 0.1 * at::matmul(x, scratch);  // the unknown weight runs as is
  }
  return out;
}

TEST(FusedExpertsTest, ReorderedAndRepeatedCallsAreQuantizedByOperand) {
  FusedLayer f(/*reordered=*/true);
  const auto rules = fp8_dynamic();
  auto session = calibrated(f, rules);
  auto* reordered = dynamic_cast<ReorderedExperts*>(f.experts);
  ASSERT_NE(reordered, nullptr);
  // gate_up was called twice per expert call (each call counted), down once.
  int64_t expert_targets = 0;
  for (const auto& t : session->targets()) {
    if (t.expert >= 0) {
      ++expert_targets;
      EXPECT_EQ(t.rows_seen, (t.kind == fn::ProjKind::kDown ? 1 : 2) * (5 + t.expert)) << t.module;
    }
  }
  EXPECT_EQ(expert_targets, 3 * kExperts);
  fn::FunctionalOverride quantized(session->quantized_handlers());
  for (int64_t e = 0; e < kExperts; ++e) {
    const auto x = rows(7, 200 + e);
    const auto got = f.experts->run_expert(e, x);
    const auto want = reference_expert(f, rules, e, x, reordered->scratch());
    EXPECT_TRUE(at::allclose(got, want, 1e-5, 1e-6))
        << "expert " << e << ": max |diff| " << (got - want).abs().max().item<double>();
  }
  // The unknown weight ran unquantized and is reported, not guessed.
  EXPECT_EQ(session->unrecognized_weights().size(), 1u);
  EXPECT_EQ(session->unrecognized_weights().count(reordered->scratch_name()), 1u);
}

TEST(FusedExpertsTest, SliceWeightsEqualEachExpertQuantizedAlone) {
  FusedLayer f(/*reordered=*/false);
  const auto rules = fp8_dynamic();
  auto session = calibrated(f, rules);
  const auto gu = f.source->get(kPrefix + ".experts.gate_up_proj");
  for (const auto& t : session->targets()) {
    if (t.expert < 0) {
      continue;
    }
    ASSERT_TRUE(t.slice.has_value());
    // The expert's [out, in] weight straight from the stack, quantized on its own.
    at::Tensor w;
    if (t.kind == fn::ProjKind::kGate) {
      w = gu[t.expert].narrow(1, 0, kInter).t().contiguous();
    } else if (t.kind == fn::ProjKind::kUp) {
      w = gu[t.expert].narrow(1, kInter, kInter).t().contiguous();
    } else {
      w = f.source->get(kPrefix + ".experts.down_proj")[t.expert].t().contiguous();
    }
    quant::TensorQuantizer q(*rules.scheme.weights, quant::TensorRole::kWeight, "alone");
    q.observe(w);
    EXPECT_TRUE(at::equal(t.fake_weight, q.fake_quantize(w))) << t.module;
    EXPECT_EQ(t.module, kPrefix + ".experts." + std::to_string(t.expert) + "." +
                            std::string(t.kind == fn::ProjKind::kGate ? "gate_proj"
                                        : t.kind == fn::ProjKind::kUp ? "up_proj"
                                                                      : "down_proj"));
  }
}

// The block's quantized output is the same whichever way the experts are dispatched: the
// per-expert loop (matmul on slices), one bmm over all experts, one grouped matmul.
TEST(FusedExpertsTest, EveryDispatchRunsTheSameQuantizedExperts) {
  const auto rules = fp8_dynamic();
  const auto x = rows(24, 9);
  at::Tensor reference;
  for (auto dispatch :
       {FusedDispatch::kPerExpert, FusedDispatch::kBatched, FusedDispatch::kGrouped}) {
    FusedLayer f(/*reordered=*/false, dispatch);
    auto session = calibrated(f, rules);
    fn::FunctionalOverride quantized(session->quantized_handlers());
    const auto out = f.block->forward(x);
    if (!reference.defined()) {
      reference = out;
      continue;
    }
    EXPECT_TRUE(at::allclose(out, reference, 1e-5, 1e-6))
        << "dispatch " << static_cast<int>(dispatch) << ": max |diff| "
        << (out - reference).abs().max().item<double>();
  }
  // ... and differs from the unquantized block (the interception did something).
  FusedLayer plain(/*reordered=*/false);
  EXPECT_FALSE(at::allclose(plain.block->forward(x), reference, 1e-5, 1e-6));
}

TEST(FusedExpertsTest, WrongOperandIsAnErrorNamingTheStack) {
  FusedLayer f(/*reordered=*/false);
  auto session = calibrated(f, fp8_dynamic());
  fn::FunctionalOverride quantized(session->quantized_handlers());
  const fn::WeightRef ref{f.experts->gate_up().name, "gate_up_proj", 1, fn::ProjKind::kGateUp};
  const auto wrong = f.experts->down().value[1];  // [I, H], not gate_up's [H, 2I] slice
  try {
    fn::matmul(rows(3, 1).narrow(1, 0, kInter), wrong, ref);
    FAIL() << "expected an error";
  } catch (const moeq::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.layers.0.mlp.experts.gate_up_proj"), std::string::npos) << msg;
    EXPECT_NE(msg.find("expert 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find("[16, 32]"), std::string::npos) << msg;
    EXPECT_NE(msg.find("expected [32, 32]"), std::string::npos) << msg;
  }
}

TEST(FusedExpertsTest, PartlyIgnoredStackIsAnError) {
  FusedLayer f(/*reordered=*/false);
  auto rules = fp8_dynamic();
  rules.ignore.push_back(kPrefix + ".experts.2.up_proj");
  LayerSession session(*f.layer, *f.source, rules, CalibrationOptions{});
  try {
    session.add_fused_experts(*f.experts);
    FAIL() << "expected an error";
  } catch (const moeq::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("model.layers.0.mlp.experts.gate_up_proj"), std::string::npos) << msg;
    EXPECT_NE(msg.find("experts.2.up_proj"), std::string::npos) << msg;
    EXPECT_NE(msg.find("1 of 8"), std::string::npos) << msg;
  }
}

TEST(FusedExpertsTest, AdapterRefusesAModuleThatIsNotFusedExperts) {
  FusedLayer f(/*reordered=*/false);
  LayerSession session(*f.layer, *f.source, fp8_dynamic(), CalibrationOptions{});
  moeq::adapters::FusedExpertsAdapter adapter("TestExperts");
  EXPECT_EQ(adapter.tier(), moeq::Tier::kMid);
  try {
    adapter.attach(*f.block, session);
    FAIL() << "expected an error";
  } catch (const moeq::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("mid tier"), std::string::npos) << msg;
    EXPECT_NE(msg.find("'model.layers.0.mlp'"), std::string::npos) << msg;
    EXPECT_NE(msg.find("TestMoe"), std::string::npos) << msg;
  }
}

}  // namespace

namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const moeq::Error& e) {
    return e.what();
  }
  return "no error";
}

TEST(FusedExpertsTest, ConstructionErrorsNameTheModule) {
  auto o = fused_options(FusedDispatch::kPerExpert);
  o.intermediate_size = 0;
  EXPECT_NE(error_of([&] { FusedExperts("T", "m.experts", o); })
                .find("m.experts: fused experts need positive num_experts, hidden_size and "
                      "intermediate_size, got 4, 32, 0"),
            std::string::npos);
  o = fused_options(FusedDispatch::kBatched);
  o.transposed = false;
  EXPECT_NE(error_of([&] {
              FusedExperts("T", "m.experts", o);
            }).find("m.experts: batched and grouped dispatch need stacks stored [E, in, out]"),
            std::string::npos);
}

TEST(DerivedSourceTest, ErrorsNameTheTensors) {
  auto base = std::make_shared<TensorMapSource>();
  base->set("a.w_blocks", at::zeros({2}));
  DerivedSource::Rule missing{
      "a.w", {"a.w_blocks", "a.w_scales"}, [](const auto& in) { return in[0]; }};
  EXPECT_NE(error_of([&] {
              DerivedSource(base, {missing}, "test");
            }).find("tensor map: 'a.w' needs 'a.w_scales', which is missing"),
            std::string::npos);
  DerivedSource::Rule one{"a.w", {"a.w_blocks"}, [](const auto& in) { return in[0]; }};
  EXPECT_NE(error_of([&] {
              DerivedSource(base, {one, one}, "test");
            }).find("DerivedSource: 'a.w' derived twice"),
            std::string::npos);
  DerivedSource::Rule failing{
      "a.w", {"a.w_blocks"}, [](const auto&) -> at::Tensor { MOEQ_FAIL("bad block"); }};
  DerivedSource source(base, {failing}, "decoded");
  EXPECT_NE(error_of([&] {
              source.get("a.w");
            }).find("tensor map: computing 'a.w' (decoded) failed: bad block"),
            std::string::npos);
  // The derived name replaces its inputs.
  EXPECT_EQ(source.names(), std::vector<std::string>{"a.w"});
  EXPECT_TRUE(source.has("a.w"));
  EXPECT_FALSE(source.has("a.w_blocks"));
}

TEST(ForwardContextTest, ChunkedMaskNeedsAPositiveChunk) {
  ForwardContext ctx(1, 4, {}, {}, Placement{});
  EXPECT_NE(
      error_of([&] { ctx.chunked_mask(0); }).find("attention chunk size must be positive, got 0"),
      std::string::npos);
  // Chunks of 2: query 3 sees keys 2 and 3 only.
  const auto mask = ctx.chunked_mask(2)[0][0][3];
  EXPECT_EQ(mask[2].item<float>(), 0.0f);
  EXPECT_LT(mask[1].item<float>(), -1e30f);
}

}  // namespace
