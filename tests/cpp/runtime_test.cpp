// The model runtime: functional overrides, blocks, config parsing, MoE hooks, and layer-by-layer
// residency. Parity with transformers is in tests/python/test_runtime_parity.py.
#include <gtest/gtest.h>

#include <moeq/core/error.h>
#include <moeq/io/hf_config.h>
#include <moeq/io/safetensors_writer.h>
#include <moeq/runtime/blocks.h>
#include <moeq/runtime/causal_lm.h>
#include <moeq/runtime/functional.h>
#include <moeq/runtime/models.h>
#include <moeq/runtime/weight_source.h>

#include <ATen/ATen.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <thread>

#include <unistd.h>

#include "io_test_util.h"

namespace {

using moeq::runtime::CausalLM;
using moeq::runtime::RuntimeOptions;
using moeq::runtime::WeightSource;
namespace fn = moeq::fn;

// ---- a generated checkpoint --------------------------------------------------------------------

// Deterministic random tensors for the names a model asks for, each a fresh allocation whose
// bytes are counted while any tensor still uses it: what the runtime keeps resident.
class GeneratedSource final : public WeightSource {
 public:
  void expect(const std::string& name, std::vector<int64_t> shape) { shapes_[name] = shape; }
  void expect_all(CausalLM& model) {
    model.for_each_parameter([&](moeq::runtime::Parameter& p) { expect(p.name, p.shape); });
  }

  at::Tensor get(const std::string& name) override {
    auto it = shapes_.find(name);
    MOEQ_CHECK(it != shapes_.end(), "generated: no tensor '{}'", name);
    auto gen = at::make_generator<at::CPUGeneratorImpl>(std::hash<std::string>{}(name));
    const auto& shape = it->second;
    // A random block tiled to the full size: cheap for large tensors, still varied enough that
    // routing has no ties.
    const auto numel = c10::multiply_integers(shape);
    const auto block = std::min<int64_t>(numel, 4099);
    auto base = at::randn({block}, gen);
    base = shape.size() == 1 ? 1.0 + 0.1 * base
                             : base * (0.5 / std::sqrt(static_cast<double>(shape.back())));
    auto t = base.repeat({(numel + block - 1) / block}).narrow(0, 0, numel).view(shape).clone();
    const auto bytes = static_cast<int64_t>(t.nbytes());
    live_ += bytes;
    peak_ = std::max(peak_, live_);
    ++gets_;
    auto* owner = new at::Tensor(t);
    return at::from_blob(
        t.data_ptr(), t.sizes(), t.strides(),
        [this, owner, bytes](void*) {
          live_ -= bytes;
          delete owner;
        },
        t.options());
  }
  bool has(const std::string& name) const override { return shapes_.count(name) != 0; }
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& [name, shape] : shapes_) {
      out.push_back(name);
    }
    return out;
  }
  std::string describe() const override { return "generated"; }

  int64_t live() const { return live_; }
  int64_t peak() const { return peak_; }
  void reset_peak() { peak_ = live_; }
  int64_t gets() const { return gets_; }

 private:
  std::map<std::string, std::vector<int64_t>> shapes_;
  int64_t live_ = 0;
  int64_t peak_ = 0;
  int64_t gets_ = 0;
};

nlohmann::json mixtral_config(int64_t layers, int64_t hidden, int64_t intermediate) {
  return nlohmann::json{
      {"architectures", {"MixtralForCausalLM"}},
      {"vocab_size", 96},
      {"hidden_size", hidden},
      {"intermediate_size", intermediate},
      {"num_hidden_layers", layers},
      {"num_attention_heads", 4},
      {"num_key_value_heads", 2},
      {"num_local_experts", 8},
      {"num_experts_per_tok", 2},
      {"rms_norm_eps", 1e-5},
      {"rope_parameters", {{"rope_type", "default"}, {"rope_theta", 1e6}}},
  };
}

struct Built {
  std::shared_ptr<GeneratedSource> source;
  std::unique_ptr<CausalLM> model;
};

moeq::io::HfConfig hf(const nlohmann::json& config, std::string source = "test") {
  return moeq::io::HfConfig::parse(config.dump(), std::move(source));
}

Built build(const nlohmann::json& config, bool keep_resident = false) {
  Built b;
  b.source = std::make_shared<GeneratedSource>();
  RuntimeOptions options;
  options.keep_resident = keep_resident;
  b.model = moeq::runtime::build_mixtral_for_causal_lm(hf(config), b.source, options);
  b.source->expect_all(*b.model);
  return b;
}

at::Tensor tokens(int64_t batch, int64_t seq, int64_t vocab, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randint(vocab, {batch, seq}, gen, at::TensorOptions().dtype(at::kLong));
}

// ---- functionals --------------------------------------------------------------------------------

TEST(RuntimeFunctional, PlainWithoutOverride) {
  auto x = at::randn({3, 4});
  auto w = at::randn({5, 4});
  EXPECT_TRUE(at::equal(fn::linear(x, w, std::nullopt, {"w", "w"}), at::linear(x, w)));
  EXPECT_EQ(fn::override_depth(), 0u);
}

TEST(RuntimeFunctional, InnermostHandlerRunsAndDelegatesDown) {
  auto x = at::ones({2, 3});
  auto w = at::ones({4, 3});
  std::vector<std::string> calls;
  fn::Handlers outer;
  outer.linear = [&](const at::Tensor& i, const at::Tensor& wt, const auto& b, const auto& ref) {
    calls.push_back("outer");
    return fn::linear(i, wt, b, ref) + 1;
  };
  fn::FunctionalOverride g1(outer);
  fn::Handlers inner;
  inner.linear = [&](const at::Tensor& i, const at::Tensor& wt, const auto& b, const auto& ref) {
    calls.push_back(std::string(ref.name));
    return fn::linear(i, wt * 2, b, ref);  // reaches `outer`, not itself
  };
  {
    fn::FunctionalOverride g2(inner);
    fn::Handlers other;  // no linear handler: skipped
    other.bmm = [](const at::Tensor& a, const at::Tensor& b, const auto&) { return a; };
    fn::FunctionalOverride g3(other);
    auto y = fn::linear(x, w, std::nullopt, {"layer.w", "w"});
    EXPECT_TRUE(at::allclose(y, at::full({2, 4}, 7.0)));  // 3 * 2 + 1
    EXPECT_EQ(calls, (std::vector<std::string>{"layer.w", "outer"}));
    EXPECT_EQ(fn::override_depth(), 3u);
  }
  EXPECT_EQ(fn::override_depth(), 1u);
  calls.clear();
  EXPECT_TRUE(at::allclose(fn::linear(x, w, std::nullopt, {"w", "w"}), at::full({2, 4}, 4.0)));
  EXPECT_EQ(calls, std::vector<std::string>{"outer"});
}

TEST(RuntimeFunctional, OverridesAreThreadLocal) {
  fn::Handlers h;
  h.matmul = [](const at::Tensor& a, const at::Tensor& b, const auto&) { return a * 0; };
  fn::FunctionalOverride guard(h);
  auto a = at::ones({2, 2});
  at::Tensor other_thread;
  std::thread([&] { other_thread = fn::matmul(a, a, {"b", "b"}); }).join();
  EXPECT_TRUE(at::allclose(other_thread, at::full({2, 2}, 2.0)));
  EXPECT_TRUE(at::allclose(fn::matmul(a, a, {"b", "b"}), at::zeros({2, 2})));
}

TEST(RuntimeFunctional, HandlerErrorRestoresTheStack) {
  fn::Handlers h;
  h.linear = [](const auto&, const auto&, const auto&, const auto&) -> at::Tensor {
    MOEQ_FAIL("boom");
  };
  fn::FunctionalOverride guard(h);
  auto x = at::ones({1, 2});
  EXPECT_THROW(fn::linear(x, x, std::nullopt, {"w", "w"}), moeq::Error);
  // The handler is still the innermost one afterwards (its search limit was restored).
  EXPECT_THROW(fn::linear(x, x, std::nullopt, {"w", "w"}), moeq::Error);
}

TEST(RuntimeFunctional, GroupedMmMatchesPerGroupMatmuls) {
  auto a = at::randn({10, 6});
  auto b = at::randn({3, 6, 5});
  auto offsets = at::tensor(std::vector<int32_t>{3, 3, 10});
  auto y = fn::grouped_mm(a, b, offsets, {"experts.w", "w", fn::WeightRef::kAllExperts});
  auto expect = at::cat({at::mm(a.narrow(0, 0, 3), b[0]), at::mm(a.narrow(0, 3, 7), b[2])});
  EXPECT_TRUE(at::allclose(y, expect, 1e-5, 1e-6));
}

// ---- blocks -------------------------------------------------------------------------------------

TEST(RuntimeBlocks, PartialRotaryRotatesOnlyItsChannels) {
  moeq::runtime::RopeOptions o;
  o.head_dim = 8;
  o.partial_rotary_factor = 0.5;
  o.theta = 100.0;
  moeq::runtime::RotaryEmbedding rope(o);
  ASSERT_EQ(rope.rotary_dim(), 4);
  auto pos = at::arange(5, at::kLong).unsqueeze(0);
  auto [cos, sin] = rope.cos_sin(pos, at::kFloat);
  ASSERT_EQ(cos.sizes(), (std::vector<int64_t>{1, 5, 4}));
  auto x = at::randn({1, 2, 5, 8});
  auto y = moeq::runtime::RotaryEmbedding::apply(x, cos, sin);
  EXPECT_TRUE(at::equal(y.narrow(-1, 4, 4), x.narrow(-1, 4, 4)));
  // Channel pair (0, 2) rotates by angle pos * inv_freq[0] = pos.
  auto angle = at::arange(5, at::kFloat);
  auto x0 = x.select(-1, 0), x2 = x.select(-1, 2);
  EXPECT_TRUE(at::allclose(y.select(-1, 0), x0 * angle.cos() - x2 * angle.sin(), 1e-5, 1e-6));
  EXPECT_TRUE(at::allclose(y.select(-1, 2), x2 * angle.cos() + x0 * angle.sin(), 1e-5, 1e-6));
}

TEST(RuntimeBlocks, SlidingWindowAndPaddingMask) {
  moeq::runtime::ForwardContext ctx(1, 4, at::tensor(std::vector<int64_t>{0, 1, 1, 1}).view({1, 4}),
                                    {}, moeq::runtime::Placement{});
  auto m = ctx.additive_mask(2).view({4, 4});
  const float lo = std::numeric_limits<float>::lowest();
  const std::vector<float> expect = {lo, lo, lo, lo,  //
                                     lo, 0,  lo, lo,  //
                                     lo, 0,  0,  lo,  //
                                     lo, lo, 0,  0};
  EXPECT_TRUE(at::equal(m, at::tensor(expect).view({4, 4})));
}

// An attention's projections and full-width q/k norm weights, random.
std::map<std::string, at::Tensor> full_width_attention_weights(
    int64_t hidden, int64_t heads, int64_t kv_heads, int64_t d, at::Generator& gen) {
  return {
      {"attn.q_proj.weight", at::randn({heads * d, hidden}, gen)},
      {"attn.k_proj.weight", at::randn({kv_heads * d, hidden}, gen)},
      {"attn.v_proj.weight", at::randn({kv_heads * d, hidden}, gen)},
      {"attn.o_proj.weight", at::randn({hidden, heads * d}, gen)},
      {"attn.q_norm.weight", 1.0 + 0.1 * at::randn({heads * d}, gen)},
      {"attn.k_norm.weight", 1.0 + 0.1 * at::randn({kv_heads * d}, gen)},
  };
}

// q and k RMS-normed over all heads at once (eps 1e-6), v as projected: [B, S, heads * d].
struct FlatQkv {
  at::Tensor q, k, v;
};

FlatQkv full_width_qkv(const at::Tensor& x, std::map<std::string, at::Tensor>& w) {
  auto rms = [](const at::Tensor& t, const at::Tensor& weight) {
    return weight * (t * at::rsqrt(t.pow(2).mean(-1, true) + 1e-6));
  };
  return {rms(at::matmul(x, w["attn.q_proj.weight"].t()), w["attn.q_norm.weight"]),
          rms(at::matmul(x, w["attn.k_proj.weight"].t()), w["attn.k_norm.weight"]),
          at::matmul(x, w["attn.v_proj.weight"].t())};
}

// transformers' attention from the flat q, k, v (MiniMaxM2Attention; OlmoeAttention with clip):
// clamped when clip is given, heads split, RoPE, softmax attention, o_proj.
at::Tensor reference_attention(const FlatQkv& qkv,
                               std::map<std::string, at::Tensor>& w,
                               const moeq::runtime::RotaryEmbedding& rotary,
                               int64_t heads,
                               int64_t kv_heads,
                               int64_t d,
                               std::optional<double> clip) {
  const int64_t b = qkv.q.size(0), s = qkv.q.size(1);
  auto heads_of = [&](const at::Tensor& t) {
    return (clip ? t.clamp(-*clip, *clip) : t).view({b, s, -1, d}).transpose(1, 2);
  };
  moeq::runtime::ForwardContext ctx(b, s, {}, {}, {});
  const auto& [cos, sin] = ctx.rope(rotary);
  auto q = moeq::runtime::RotaryEmbedding::apply(heads_of(qkv.q), cos, sin);
  auto k = moeq::runtime::RotaryEmbedding::apply(heads_of(qkv.k), cos, sin)
               .repeat_interleave(heads / kv_heads, 1);
  auto v = heads_of(qkv.v).repeat_interleave(heads / kv_heads, 1);
  auto scores =
      at::matmul(q, k.transpose(2, 3)) / std::sqrt(static_cast<double>(d)) + ctx.additive_mask(0);
  auto out = at::matmul(at::softmax(scores, -1), v).transpose(1, 2).reshape({b, s, -1});
  return at::matmul(out, w["attn.o_proj.weight"].t());
}

// The full-width q/k norm (MiniMax-M2, OLMoE): RMSNorm over all of q_proj's and k_proj's outputs,
// then the heads are split, as transformers' MiniMaxM2Attention computes it.
TEST(RuntimeBlocks, FullWidthQkNormNormalisesBeforeTheHeadsSplit) {
  using moeq::runtime::QkNormScope;
  const int64_t b = 2, s = 5, hidden = 16, heads = 4, kv_heads = 2, d = 4;
  moeq::runtime::AttentionOptions o;
  o.hidden_size = hidden;
  o.num_heads = heads;
  o.num_kv_heads = kv_heads;
  o.head_dim = d;
  o.qk_norm = true;
  o.qk_norm_eps = 1e-6;
  moeq::runtime::RopeOptions rope;
  rope.head_dim = d;
  rope.partial_rotary_factor = 0.5;
  auto rotary = std::make_shared<const moeq::runtime::RotaryEmbedding>(rope);

  auto gen = at::make_generator<at::CPUGeneratorImpl>(7);
  auto w = full_width_attention_weights(hidden, heads, kv_heads, d, gen);
  moeq::runtime::TensorMapSource source(w);
  o.qk_norm_scope = QkNormScope::kFullWidth;
  moeq::runtime::Attention full("Attn", "attn", o, rotary);
  full.load(source, {});
  auto x = at::randn({b, s, hidden}, gen);
  moeq::runtime::ForwardContext ctx(b, s, {}, {}, {});
  auto got = full.forward(x, ctx);

  auto expect =
      reference_attention(full_width_qkv(x, w), w, *rotary, heads, kv_heads, d, std::nullopt);
  EXPECT_TRUE(at::allclose(got, expect, 1e-5, 1e-5)) << (got - expect).abs().max();

  // Per head, the same checkpoint's norms have the wrong shape: the error says which.
  o.qk_norm_scope = QkNormScope::kPerHead;
  moeq::runtime::Attention per_head("Attn", "attn", o, rotary);
  try {
    per_head.load(source, {});
    ADD_FAILURE() << "per-head norms loaded full-width weights";
  } catch (const moeq::Error& e) {
    EXPECT_NE(e.message().find("tensor 'attn.q_norm.weight' has shape [16], expected [4]"),
              std::string::npos)
        << e.message();
  }
}

// OLMoE's clip_qkv clamps q, k and v after the full-width norms, before the heads split and RoPE.
TEST(RuntimeBlocks, ClipQkvClampsQKVAfterTheNorms) {
  using moeq::runtime::QkNormScope;
  const int64_t b = 2, s = 5, hidden = 16, heads = 4, kv_heads = 2, d = 4;
  moeq::runtime::AttentionOptions o;
  o.hidden_size = hidden;
  o.num_heads = heads;
  o.num_kv_heads = kv_heads;
  o.head_dim = d;
  o.qk_norm = true;
  o.qk_norm_scope = QkNormScope::kFullWidth;
  o.qk_norm_eps = 1e-6;
  moeq::runtime::RopeOptions rope;
  rope.head_dim = d;
  auto rotary = std::make_shared<const moeq::runtime::RotaryEmbedding>(rope);

  auto gen = at::make_generator<at::CPUGeneratorImpl>(11);
  auto w = full_width_attention_weights(hidden, heads, kv_heads, d, gen);
  moeq::runtime::TensorMapSource source(w);
  auto x = at::randn({b, s, hidden}, gen);
  auto run = [&](std::optional<double> clip) {
    auto opts = o;
    opts.clip_qkv = clip;
    moeq::runtime::Attention attn("Attn", "attn", opts, rotary);
    attn.load(source, {});
    moeq::runtime::ForwardContext ctx(b, s, {}, {}, {});
    return attn.forward(x, ctx);
  };
  const auto plain = run(std::nullopt);
  // The reference clamps the normed q, k and the raw v, as transformers' OlmoeAttention does.
  const FlatQkv flat = full_width_qkv(x, w);

  // A clip above every activation changes nothing.
  const double largest =
      std::max({flat.q.abs().max().item<double>(), flat.k.abs().max().item<double>(),
                flat.v.abs().max().item<double>()});
  EXPECT_TRUE(at::equal(run(largest + 1.0), plain));

  // A clip below many activations (the normed q and k are ~1, v ~4): the output changes, and is
  // transformers' order (clamp after the norms, before RoPE).
  const double clip = 0.5;
  ASSERT_GT((flat.q.abs() > clip).sum().item<int64_t>(), 0);
  ASSERT_GT((flat.k.abs() > clip).sum().item<int64_t>(), 0);
  ASSERT_GT((flat.v.abs() > clip).sum().item<int64_t>(), 0);
  const auto clipped = run(clip);
  EXPECT_GT((clipped - plain).abs().max().item<double>(), 1e-3);
  const auto expect = reference_attention(flat, w, *rotary, heads, kv_heads, d, clip);
  EXPECT_TRUE(at::allclose(clipped, expect, 1e-5, 1e-5)) << (clipped - expect).abs().max();

  o.clip_qkv = 0.0;
  EXPECT_THROW(moeq::runtime::Attention("Attn", "attn", o, rotary), moeq::Error);
}

// ---- weight sources -----------------------------------------------------------------------------

TEST(RuntimeSource, Fp8BlocksAreDequantizedWhereAScaleIsBeside) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(3);
  auto q = at::randn({4, 6}, gen).to(at::kFloat8_e4m3fn);
  auto scale = at::rand({2, 3}, gen) + 0.5;  // 2x2 blocks
  auto plain = at::randn({3}, gen).to(at::kBFloat16);
  auto base = std::make_shared<moeq::runtime::TensorMapSource>(std::map<std::string, at::Tensor>{
      {"a.weight", q}, {"a.weight_scale_inv", scale}, {"a.bias", plain}});
  auto source = moeq::runtime::dequantize_fp8_blocks(base, 2, 2);
  EXPECT_EQ(source->names(), (std::vector<std::string>{"a.bias", "a.weight"}));
  EXPECT_FALSE(source->has("a.weight_scale_inv"));
  auto expect =
      (q.to(at::kFloat) * scale.repeat_interleave(2, 0).repeat_interleave(2, 1)).to(at::kBFloat16);
  EXPECT_TRUE(at::equal(source->get("a.weight"), expect));
  EXPECT_TRUE(at::equal(source->get("a.bias"), plain));
  EXPECT_NE(source->describe().find("FP8 2x2 block weights dequantized to bf16"), std::string::npos)
      << source->describe();

  // The block from config.json; without one, 128x128; a bf16 source is returned as is.
  auto configured = moeq::runtime::dequantize_fp8_blocks(
      base, hf(nlohmann::json{{"quantization_config", {{"weight_block_size", {2, 2}}}}}));
  EXPECT_TRUE(at::equal(configured->get("a.weight"), expect));
  EXPECT_NE(moeq::runtime::dequantize_fp8_blocks(base, hf(nlohmann::json::object()))
                ->describe()
                .find("FP8 128x128"),
            std::string::npos);
  auto bf16 = std::make_shared<moeq::runtime::TensorMapSource>(
      std::map<std::string, at::Tensor>{{"a.bias", plain}});
  EXPECT_EQ(moeq::runtime::dequantize_fp8_blocks(bf16, 128, 128), bf16);

  auto message = [](auto&& f) {
    try {
      f();
    } catch (const moeq::Error& e) {
      return e.message();
    }
    return std::string("no error");
  };
  EXPECT_EQ(message([&] {
              moeq::runtime::dequantize_fp8_blocks(
                  base, hf(nlohmann::json{{"quantization_config",
                                           {{"weight_block_size", nlohmann::json::array({128})}}}},
                           "/m/c.json"));
            }),
            "config '/m/c.json': quantization_config.weight_block_size must be [rows, cols], got "
            "1 values");
  EXPECT_EQ(message([&] { moeq::runtime::dequantize_fp8_blocks(base, 0, 128); }),
            "tensor map: FP8 weight block must be positive [rows, cols], got [0, 128]");
  auto alone = std::make_shared<moeq::runtime::TensorMapSource>(
      std::map<std::string, at::Tensor>{{"b.weight_scale_inv", scale}});
  EXPECT_EQ(message([&] { moeq::runtime::dequantize_fp8_blocks(alone, 2, 2); }),
            "tensor map: 'b.weight_scale_inv' has no weight 'b.weight' beside it");
}

// ---- config -------------------------------------------------------------------------------------

TEST(RuntimeConfig, ErrorsNameTheFieldAndFile) {
  auto source = std::make_shared<GeneratedSource>();
  auto message = [&](const nlohmann::json& config) {
    try {
      moeq::runtime::build_mixtral_for_causal_lm(hf(config, "/m/config.json"), source, {});
    } catch (const moeq::Error& e) {
      return e.message();
    }
    return std::string("no error");
  };
  auto config = mixtral_config(2, 32, 48);
  config.erase("num_experts_per_tok");
  EXPECT_EQ(message(config), "config '/m/config.json': key 'num_experts_per_tok' is missing");
  config = mixtral_config(2, 32, 48);
  config["hidden_size"] = "32";
  EXPECT_EQ(message(config),
            "config '/m/config.json': key 'hidden_size' is string \"32\", expected an integer");
  config = mixtral_config(2, 32, 48);
  config.erase("num_local_experts");
  EXPECT_EQ(message(config),
            "config '/m/config.json': none of the keys 'num_local_experts', 'num_experts' is "
            "present");
  config = mixtral_config(2, 32, 48);
  config["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_EQ(message(config),
            "config '/m/config.json': key 'rope_scaling.original_max_position_embeddings' is "
            "missing");
  config = mixtral_config(2, 32, 48);
  config["rope_scaling"] = {{"rope_type", "longrope"}, {"factor", 4.0}};
  EXPECT_EQ(message(config),
            "config '/m/config.json': RoPE type 'longrope' is not supported yet (supported: "
            "default, linear, llama3, yarn)");
  config = mixtral_config(2, 32, 48);
  config["hidden_act"] = "gelu";
  EXPECT_EQ(message(config),
            "config '/m/config.json': hidden_act 'gelu' is not supported for MixtralForCausalLM "
            "(supported: silu)");
  EXPECT_THROW(moeq::runtime::find_builtin_architecture("DeepseekV3ForCausalLM"), moeq::Error);
}

TEST(RuntimeConfig, LegacyAndV5RopeSpellingsAgree) {
  auto v5 = mixtral_config(1, 32, 48);
  v5["rope_parameters"] = {{"rope_type", "llama3"},   {"rope_theta", 5e5},
                           {"factor", 8.0},           {"low_freq_factor", 1.0},
                           {"high_freq_factor", 4.0}, {"original_max_position_embeddings", 64}};
  auto legacy = mixtral_config(1, 32, 48);
  legacy.erase("rope_parameters");
  legacy["rope_theta"] = 5e5;
  legacy["rope_scaling"] = {{"type", "llama3"},
                            {"factor", 8.0},
                            {"low_freq_factor", 1.0},
                            {"high_freq_factor", 4.0},
                            {"original_max_position_embeddings", 64}};
  auto a = build(v5).model;
  auto b = build(legacy).model;
  EXPECT_TRUE(at::equal(a->rotary()->inv_freq(), b->rotary()->inv_freq()));
  EXPECT_EQ(a->rotary()->options().type, moeq::runtime::RopeType::kLlama3);
  // Frequencies with wavelengths past the original context are divided by the factor.
  moeq::runtime::RopeOptions plain;
  plain.head_dim = 8;
  plain.theta = 5e5;
  moeq::runtime::RotaryEmbedding unscaled(plain);
  EXPECT_FLOAT_EQ(a->rotary()->inv_freq()[0].item<float>(), unscaled.inv_freq()[0].item<float>());
  EXPECT_FLOAT_EQ(a->rotary()->inv_freq()[3].item<float>() * 8,
                  unscaled.inv_freq()[3].item<float>());
}

TEST(RuntimeModel, MissingTensorAndWrongShapeAreNamed) {
  auto b = build(mixtral_config(1, 32, 48));
  auto ids = tokens(1, 3, 96, 1);
  auto bad = std::make_shared<moeq::runtime::TensorMapSource>();
  b.model->for_each_parameter(
      [&](moeq::runtime::Parameter& p) { bad->set(p.name, at::zeros(p.shape)); });
  bad->set("model.layers.0.block_sparse_moe.experts.3.w2.weight", at::zeros({32, 47}));
  auto model = moeq::runtime::build_mixtral_for_causal_lm(hf(mixtral_config(1, 32, 48)), bad, {});
  try {
    model->forward(ids);
    FAIL();
  } catch (const moeq::Error& e) {
    EXPECT_EQ(e.message(),
              "tensor map: tensor 'model.layers.0.block_sparse_moe.experts.3.w2.weight' has "
              "shape [32, 47], expected [32, 48]");
  }
  EXPECT_EQ(model->layer(0).resident_bytes(), 0);  // nothing half-loaded stays
  auto missing = std::make_shared<moeq::runtime::TensorMapSource>();
  model = moeq::runtime::build_mixtral_for_causal_lm(hf(mixtral_config(1, 32, 48)), missing, {});
  try {
    model->forward(ids);
    FAIL();
  } catch (const moeq::Error& e) {
    EXPECT_EQ(e.message(),
              "tensor map: missing tensor 'model.embed_tokens.weight' (module Embedding "
              "'model.embed_tokens')");
  }
}

TEST(RuntimeModel, ShardedCheckpointOnDiskRunsAsInMemory) {
  // The same weights through io's writer (several shards and an index) and load_causal_lm.
  auto config = mixtral_config(3, 32, 48);
  auto b = build(config, /*keep_resident=*/true);
  auto ids = tokens(2, 6, 96, 5);
  auto expect = b.model->forward(ids);
  const auto dir =
      std::filesystem::temp_directory_path() / fmt::format("moeq_runtime_test_{}", ::getpid());
  moeq::io::testing::remove_tree(dir);
  {
    moeq::io::SafetensorsWriterOptions options;
    options.max_shard_bytes = 200'000;
    moeq::io::SafetensorsWriter writer(dir, options);
    b.model->for_each_parameter([&](moeq::runtime::Parameter& p) { writer.add(p.name, p.value); });
    EXPECT_GE(writer.finish().size(), 3u);
  }
  std::ofstream(dir / "config.json") << config.dump(2);
  auto model = moeq::runtime::load_causal_lm(dir, {});
  EXPECT_EQ(model->type(), "MixtralForCausalLM");
  // Equal up to rounding: the mapped tensors are not 64-byte aligned as allocations are, and the
  // BLAS kernels may take other paths for them.
  auto got = model->forward(ids);
  EXPECT_TRUE(at::allclose(got, expect, 1e-5, 1e-6)) << (got - expect).abs().max().item<float>();
  EXPECT_EQ(model->resident_bytes(), 0);
  EXPECT_NE(model->weights().describe().find(dir.string()), std::string::npos);
  moeq::io::testing::remove_tree(dir);
}

// ---- MoE hooks ----------------------------------------------------------------------------------

// Counts the rows each expert projection sees, identified by its weight operand.
struct RowCounter {
  std::map<std::pair<int64_t, fn::ProjKind>, int64_t> rows;
  fn::Handlers handlers() {
    fn::Handlers h;
    h.linear = [this](const at::Tensor& x, const at::Tensor& w, const auto& b, const auto& ref) {
      if (ref.expert >= 0) {
        rows[{ref.expert, ref.kind}] += x.numel() / x.size(-1);
      }
      return fn::linear(x, w, b, ref);
    };
    return h;
  }
};

class AllExperts final : public moeq::runtime::MoeHook {
 public:
  void on_route(moeq::runtime::SparseMoeBlock&,
                const at::Tensor&,
                const moeq::runtime::RouterOutput& r) override {
    routed = at::bincount(r.topk_ids.reshape(-1), {}, 8);
    tokens = r.topk_ids.size(0);
  }
  std::optional<at::Tensor> combine(moeq::runtime::SparseMoeBlock& block,
                                    const at::Tensor& x,
                                    const moeq::runtime::RouterOutput& r) override {
    return block.combine_all_experts(x, r);
  }
  at::Tensor routed;
  int64_t tokens = 0;
};

TEST(RuntimeMoe, AllExpertsSeesEveryTokenAndKeepsTheRoutedOutput) {
  auto b = build(mixtral_config(1, 32, 48), /*keep_resident=*/true);
  auto ids = tokens(2, 5, 96, 7);
  RowCounter routed_rows;
  at::Tensor routed_logits;
  {
    fn::FunctionalOverride guard(routed_rows.handlers());
    routed_logits = b.model->forward(ids);
  }
  auto hook = std::make_shared<AllExperts>();
  b.model->layer(0).moe()->add_hook(hook);
  RowCounter all_rows;
  at::Tensor all_logits;
  {
    fn::FunctionalOverride guard(all_rows.handlers());
    all_logits = b.model->forward(ids);
  }
  EXPECT_TRUE(at::allclose(all_logits, routed_logits, 1e-5, 1e-6));
  ASSERT_EQ(hook->tokens, 10);
  for (int64_t e = 0; e < 8; ++e) {
    for (auto kind : {fn::ProjKind::kGate, fn::ProjKind::kUp, fn::ProjKind::kDown}) {
      const std::pair<int64_t, fn::ProjKind> key(e, kind);
      EXPECT_EQ(all_rows.rows[key], 10) << "expert " << e;
      const auto picked = hook->routed[e].item<int64_t>();
      EXPECT_EQ(routed_rows.rows[key], picked) << "expert " << e;
    }
  }
  b.model->layer(0).moe()->remove_hook(hook.get());
  EXPECT_TRUE(at::equal(b.model->forward(ids), routed_logits));
}

TEST(RuntimeMoe, TypeKeysAndNames) {
  auto b = build(mixtral_config(1, 32, 48));
  std::set<std::string> types;
  b.model->for_each_module([&](moeq::runtime::Module& m) { types.insert(m.type()); });
  for (const char* key :
       {"MixtralForCausalLM", "MixtralDecoderLayer", "MixtralAttention", "MixtralSparseMoeBlock",
        "MixtralTopKRouter", "MixtralExperts", "MixtralBlockSparseTop2MLP", "MixtralRMSNorm"}) {
    EXPECT_TRUE(types.count(key)) << key;
  }
  auto* moe = b.model->layer(0).moe();
  ASSERT_NE(moe, nullptr);
  EXPECT_EQ(moe->name(), "model.layers.0.block_sparse_moe");
  auto& experts = dynamic_cast<moeq::runtime::PerExpertMlps&>(moe->experts());
  EXPECT_EQ(experts.expert(5).gate_proj().weight().name,
            "model.layers.0.block_sparse_moe.experts.5.w1.weight");
  EXPECT_EQ(experts.expert(5).up_proj().ref().role, "w3");
  EXPECT_EQ(experts.expert(5).down_proj().ref().expert, 5);
}

// ---- layer by layer ----------------------------------------------------------------------------

int64_t proc_status_kb(const std::string& field) {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(field + ":", 0) == 0) {
      return std::stoll(line.substr(field.size() + 1));
    }
  }
  return -1;
}

TEST(RuntimeLayerwise, PeakResidencyIsAboutOneLayer) {
  // 12 layers of 8 experts: the checkpoint is about 12 layers' worth; each step keeps only its own.
  const int64_t layers = 12;
  auto b = build(mixtral_config(layers, 256, 512));
  const int64_t layer_bytes = [&] {
    int64_t n = 0;
    b.model->layer(0).for_each_parameter(
        [&](moeq::runtime::Parameter& p) { n += 4 * c10::multiply_integers(p.shape); });
    return n;
  }();
  int64_t total_bytes = 0;
  b.model->for_each_parameter(
      [&](moeq::runtime::Parameter& p) { total_bytes += 4 * c10::multiply_integers(p.shape); });
  ASSERT_GT(total_bytes, 10 * layer_bytes);

  auto ids = tokens(2, 32, 96, 3);
  const int64_t rss_before_kb = proc_status_kb("VmRSS");
  int64_t max_resident = 0, max_rss_kb = 0;
  b.model->set_step_observer([&](const std::string&) {
    max_resident = std::max(max_resident, b.model->resident_bytes());
    max_rss_kb = std::max(max_rss_kb, proc_status_kb("VmRSS"));
  });
  b.source->reset_peak();
  auto logits = b.model->forward(ids);
  ASSERT_EQ(logits.sizes(), (std::vector<int64_t>{2, 32, 96}));
  EXPECT_EQ(b.source->live(), 0) << "weights still referenced after the forward";
  // Resident weights (counted by the source while any tensor uses them) stay within one layer
  // plus the embedding or head: well under two layers.
  EXPECT_LE(b.source->peak(), 2 * layer_bytes) << "layer " << layer_bytes;
  EXPECT_LE(max_resident, layer_bytes) << "layer " << layer_bytes;
  // Measured RSS growth: two layers plus activations (a few MB here) and allocator slack.
  const int64_t activations = 8 << 20;
  std::cout << "layer " << layer_bytes / 1024 << " kB, model " << total_bytes / 1024
            << " kB, peak resident weights " << b.source->peak() / 1024 << " kB, peak RSS growth "
            << max_rss_kb - rss_before_kb << " kB\n";
  EXPECT_LE((max_rss_kb - rss_before_kb) * 1024, 2 * layer_bytes + activations)
      << "rss before " << rss_before_kb << " kB, peak " << max_rss_kb << " kB, layer "
      << layer_bytes / 1024 << " kB";

  // keep_resident: same logits, and the measurement does see the whole model.
  auto all = build(mixtral_config(layers, 256, 512), /*keep_resident=*/true);
  auto resident_logits = all.model->forward(ids);
  EXPECT_TRUE(at::equal(resident_logits, logits));
  EXPECT_GE(all.source->peak(), total_bytes);
  EXPECT_EQ(all.model->resident_bytes(), total_bytes);
  auto gets = all.source->gets();
  all.model->forward(ids);
  EXPECT_EQ(all.source->gets(), gets) << "keep_resident reloaded weights";
}

TEST(RuntimeLayerwise, AMappedCheckpointsPagesLeaveWithTheirLayer) {
  // fp32 on the CPU: each parameter is a view of the mapped file, so the pages a layer touched
  // stay in the resident set until the source drops them when the layer is released.
  const int64_t layers = 12;
  auto config = mixtral_config(layers, 256, 512);
  auto b = build(config, /*keep_resident=*/true);
  auto ids = tokens(2, 32, 96, 3);
  const auto expect = b.model->forward(ids);  // loads every parameter, to be written below
  const int64_t layer_bytes = [&] {
    int64_t n = 0;
    b.model->layer(0).for_each_parameter(
        [&](moeq::runtime::Parameter& p) { n += 4 * c10::multiply_integers(p.shape); });
    return n;
  }();
  const auto dir =
      std::filesystem::temp_directory_path() / fmt::format("moeq_runtime_mapped_{}", ::getpid());
  moeq::io::testing::remove_tree(dir);
  {
    moeq::io::SafetensorsWriter writer(dir, {});
    b.model->for_each_parameter([&](moeq::runtime::Parameter& p) { writer.add(p.name, p.value); });
    writer.finish();
  }
  std::ofstream(dir / "config.json") << config.dump(2);
  b = {};

  auto model = moeq::runtime::load_causal_lm(dir, {});
  const int64_t rss_before_kb = proc_status_kb("VmRSS");
  int64_t max_rss_kb = 0;
  model->set_step_observer(
      [&](const std::string&) { max_rss_kb = std::max(max_rss_kb, proc_status_kb("VmRSS")); });
  const auto got = model->forward(ids);
  EXPECT_TRUE(at::allclose(got, expect, 1e-5, 1e-6));
  const int64_t rss_after_kb = proc_status_kb("VmRSS");
  std::cout << "layer " << layer_bytes / 1024 << " kB, model " << layers * layer_bytes / 1024
            << " kB, peak RSS growth " << max_rss_kb - rss_before_kb << " kB, after "
            << rss_after_kb - rss_before_kb << " kB\n";
  // Without the drop the growth is the whole model (12 layers); with it, a layer or two.
  const int64_t activations = 8 << 20;
  EXPECT_LE((max_rss_kb - rss_before_kb) * 1024, 2 * layer_bytes + activations);
  EXPECT_LE((rss_after_kb - rss_before_kb) * 1024, layer_bytes + activations);
  model.reset();
  moeq::io::testing::remove_tree(dir);
}

}  // namespace
