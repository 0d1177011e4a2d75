// Observers: per-block statistics, the percentile and MSE estimators, per-expert 3-D stacks,
// transposed views, running activation statistics, and NaN/Inf errors naming the tensor.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "moeq/core/error.h"
#include "moeq/quant/observer.h"
#include "moeq/quant/qparams.h"
#include "moeq/quant/tensor_quantizer.h"

namespace {

using moeq::quant::make_observer;
using moeq::quant::QuantArgs;
using moeq::quant::TensorQuantizer;
using moeq::quant::TensorRole;
using nlohmann::json;

QuantArgs args(const std::string& text) {
  return QuantArgs::from_json(json::parse(text));
}

std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const moeq::Error& e) {
    return e.message();
  }
  return "";
}

// Sum over the weight of |fake_quant(w) - w|^p with the quantizer's calibrated scales.
double error_norm(TensorQuantizer& q, const at::Tensor& w, double p) {
  return (q.fake_quantize(w).to(at::kDouble) - w.to(at::kDouble)).abs().pow(p).sum().item<double>();
}

TEST(ObserverTest, MinMaxPerGroupAndChannel) {
  const at::Tensor w = at::arange(-8, 24, at::kFloat).reshape({2, 16});
  auto group = make_observer(args(R"({"num_bits": 4, "group_size": 8})"), TensorRole::kWeight, "w");
  group->observe(w);
  EXPECT_TRUE(at::equal(group->min_vals(), at::tensor({-8.f, 0.f, 8.f, 16.f}).reshape({2, 2})));
  EXPECT_TRUE(at::equal(group->max_vals(), at::tensor({-1.f, 7.f, 15.f, 23.f}).reshape({2, 2})));
  auto channel = make_observer(args(R"({"group_size": -1})"), TensorRole::kWeight, "w");
  channel->observe(w);
  EXPECT_EQ(channel->min_vals().sizes(), (at::IntArrayRef{2, 1}));
  EXPECT_TRUE(at::equal(channel->absmax(), at::tensor({8.f, 23.f}).reshape({2, 1})));
  EXPECT_TRUE(at::equal(channel->global_amax(), at::tensor({23.f}).reshape({1, 1})));
}

TEST(ObserverTest, PercentileIsLinearInterpolationOfAbs) {
  // |x| per channel: 0, 1, ..., 100 (signs mixed); the q-th percentile is q (n - 1 = 100).
  at::Tensor w = at::arange(0, 101, at::kFloat);
  w = at::where(at::arange(0, 101) % 2 == 0, w, -w).reshape({1, 101});
  const at::Tensor stack = at::cat({w, 2 * w});
  for (const auto& [q, expected] :
       {std::pair{50.0, 50.0}, {99.0, 99.0}, {99.5, 99.5}, {12.25, 12.25}, {100.0, 100.0}}) {
    QuantArgs a = args(R"({"group_size": -1, "observer": "percentile"})");
    a.observer_kwargs["percentile"] = q;
    auto obs = make_observer(a, TensorRole::kWeight, "w");
    obs->observe(stack);
    EXPECT_NEAR(obs->max_vals()[0][0].item<double>(), expected, 1e-4) << q;
    EXPECT_NEAR(obs->max_vals()[1][0].item<double>(), 2 * expected, 2e-4) << q;
    EXPECT_TRUE(at::equal(obs->min_vals(), -obs->max_vals()));
  }
  // Batches of activations are averaged, weighted by their element count.
  auto act = make_observer(args(R"({"num_bits": 8, "type": "float", "observer": "percentile",
                                    "observer_kwargs": {"percentile": 100}})"),
                           TensorRole::kInput, "x");
  act->observe(at::full({3, 4}, 2.0));
  act->observe(at::full({1, 4}, 6.0));
  EXPECT_NEAR(act->max_vals().item<double>(), (2.0 * 12 + 6.0 * 4) / 16, 1e-6);
  EXPECT_EQ(error_of([] {
              QuantArgs a = args(R"({"observer": "percentile"})");
              a.observer_kwargs["percentile"] = 0;
              make_observer(a, TensorRole::kWeight, "layers.0.w");
            }),
            "observer 'percentile' of 'layers.0.w': percentile must be in (0, 100], got 0");
  EXPECT_EQ(error_of([] {
              make_observer(args(R"({"symmetric": false, "observer": "absmax"})"),
                            TensorRole::kWeight, "w");
            }),
            "observer 'absmax' of 'w' is symmetric (|x|); asymmetric args need a min-max or mse "
            "observer");
}

TEST(ObserverTest, MseBeatsMinMaxOnOutliers) {
  at::manual_seed(0);
  const at::Tensor w = at::randn({64, 256}).pow(3);  // heavy tails: a few outliers per group
  for (const char* observer : {"mse", "modelopt_mse"}) {
    SCOPED_TRACE(observer);
    const std::string base = R"({"num_bits": 4, "group_size": 128)";
    TensorQuantizer minmax(args(base + "}"), TensorRole::kWeight, "w");
    TensorQuantizer searched(args(base + R"(, "observer": ")" + observer + R"("})"),
                             TensorRole::kWeight, "w");
    minmax.observe(w);
    searched.observe(w);
    // The search shrank the outlier groups' ranges and lowered the error it scores.
    EXPECT_TRUE((searched.observer().absmax() < minmax.observer().absmax()).any().item<bool>());
    const double p = std::string(observer) == "mse" ? 2.4 : 2.0;
    EXPECT_LT(error_norm(searched, w, p), error_norm(minmax, w, p));
  }
}

TEST(ObserverTest, Nvfp4Fp8SweepScalesComeBack) {
  at::manual_seed(1);
  const at::Tensor w = at::randn({32, 64}).to(at::kBFloat16);
  const std::string nvfp4 = R"({"num_bits": 4, "type": "float", "strategy": "tensor_group",
      "group_size": 16, "scale_dtype": "torch.float8_e4m3fn")";
  TensorQuantizer minmax(args(nvfp4 + "}"), TensorRole::kWeight, "w");
  TensorQuantizer sweep(args(nvfp4 + R"(, "observer": "nvfp4_fp8_sweep"})"), TensorRole::kWeight,
                        "w");
  minmax.observe(w);
  sweep.observe(w);
  // The global scale stays the weight's; the chosen block scales are FP8 values that the
  // statistics reproduce, and the error is no worse than min-max's.
  EXPECT_TRUE(at::equal(sweep.qparams().global_scale, minmax.qparams().global_scale));
  const at::Tensor scale = sweep.qparams().scale;
  EXPECT_TRUE(at::equal(scale, scale.to(at::kFloat8_e4m3fn).to(scale.scalar_type())));
  EXPECT_LE(error_norm(sweep, w, 2.0), error_norm(minmax, w, 2.0));
  EXPECT_EQ(error_of([] {
              make_observer(args(R"({"num_bits": 8, "observer": "nvfp4_fp8_sweep"})"),
                            TensorRole::kWeight, "experts.0.w1");
            }),
            "observer 'nvfp4_fp8_sweep' applies to NVFP4 weights only, not 'experts.0.w1'");
}

TEST(ObserverTest, PerExpertStacksAndTransposedViews) {
  at::manual_seed(2);
  // [E, in, out] as GPT-OSS stores it; the quantizer sees the view [E, out, in].
  const at::Tensor stored = at::randn({4, 64, 32}) * at::arange(1, 5).reshape({4, 1, 1});
  const at::Tensor view = stored.transpose(-1, -2);
  ASSERT_FALSE(view.is_contiguous());
  for (const char* observer : {"minmax", "percentile", "mse"}) {
    SCOPED_TRACE(observer);
    const QuantArgs a = args(std::string(R"({"num_bits": 4, "group_size": 16, "observer": ")") +
                             observer + R"("})");
    auto stacked = make_observer(a, TensorRole::kWeight, "experts");
    stacked->observe(view);
    EXPECT_EQ(stacked->max_vals().sizes(), (at::IntArrayRef{4, 32, 4}));
    for (int64_t e = 0; e < 4; ++e) {
      auto single = make_observer(a, TensorRole::kWeight, "expert");
      single->observe(view[e].contiguous());
      EXPECT_TRUE(at::equal(stacked->max_vals()[e], single->max_vals())) << e;
      EXPECT_TRUE(at::equal(stacked->min_vals()[e], single->min_vals())) << e;
    }
  }
  // Per-tensor statistics of a stack are per expert.
  auto tensor =
      make_observer(args(R"({"num_bits": 8, "type": "float"})"), TensorRole::kWeight, "experts");
  tensor->observe(view);
  EXPECT_EQ(tensor->absmax().sizes(), (at::IntArrayRef{4, 1, 1}));
  EXPECT_TRUE(
      at::equal(tensor->absmax().flatten(), std::get<0>(at::abs(stored).flatten(1).max(1))));
}

TEST(ObserverTest, RunningActivationStatistics) {
  const QuantArgs fp8 = args(R"({"num_bits": 8, "type": "float", "observer": "static_minmax"})");
  auto running = make_observer(fp8, TensorRole::kInput, "x");
  running->observe(at::tensor({-1.f, 2.f}).reshape({1, 1, 2}));
  running->observe(at::empty({0, 2}));  // an expert without tokens
  running->observe(at::tensor({-3.f, 1.f, 0.f, 0.5f}).reshape({2, 2}));
  EXPECT_EQ(running->min_vals().item<float>(), -3.f);
  EXPECT_EQ(running->max_vals().item<float>(), 2.f);
  // compressed-tensors' "minmax" on activations is a moving average (averaging_constant 0.01).
  auto moving = make_observer(args(R"({"num_bits": 8, "type": "float", "observer": "minmax"})"),
                              TensorRole::kInput, "x");
  moving->observe(at::tensor({-1.f, 1.f}).reshape({1, 2}));
  moving->observe(at::tensor({-3.f, 3.f}).reshape({1, 2}));
  EXPECT_FLOAT_EQ(moving->max_vals().item<float>(), 1.f * 0.99f + 3.f * 0.01f);
  EXPECT_EQ(error_of([&] {
              running->observe(at::zeros({2, 3}));
            }),
            "input 'x': hidden size changed from 2 to 3 between batches");
}

TEST(ObserverTest, NanOrInfIsAnErrorNamingTheTensor) {
  const std::string name = "model.layers.0.mlp.experts.3.gate_proj.weight";
  at::Tensor w = at::randn({8, 32});
  w[2][7] = std::numeric_limits<float>::quiet_NaN();
  for (const char* observer : {"minmax", "absmax", "percentile", "mse", "modelopt_mse"}) {
    SCOPED_TRACE(observer);
    TensorQuantizer q(args(std::string(R"({"num_bits": 4, "group_size": 16, "observer": ")") +
                           observer + R"("})"),
                      TensorRole::kWeight, name);
    const std::string message = error_of([&] { q.observe(w); });
    EXPECT_NE(message.find(name), std::string::npos) << message;
    EXPECT_NE(message.find("NaN"), std::string::npos) << message;
  }
  TensorQuantizer input(args(R"({"num_bits": 8, "type": "float"})"), TensorRole::kInput,
                        "model.layers.0.mlp.experts.*.down_proj.input");
  at::Tensor x = at::ones({4, 32});
  x[1][1] = std::numeric_limits<float>::infinity();
  const std::string message = error_of([&] { input.observe(x); });
  EXPECT_NE(message.find("model.layers.0.mlp.experts.*.down_proj.input"), std::string::npos)
      << message;
  EXPECT_NE(message.find("Inf"), std::string::npos) << message;
}

TEST(ObserverTest, ObserveErrors) {
  TensorQuantizer q(args(R"({"num_bits": 4, "group_size": 128})"), TensorRole::kWeight,
                    "layers.1.w2");
  EXPECT_EQ(error_of([&] {
              q.observe(at::zeros({4, 100}));
            }),
            "weight 'layers.1.w2': 100 columns are not divisible by group_size 128");
  EXPECT_EQ(error_of([&] { q.observe(at::zeros({128})); }),
            "weight 'layers.1.w2' must be a non-empty [..., rows, cols] tensor, got shape 128");
  EXPECT_EQ(error_of([&] {
              q.observe(at::zeros({4, 128}, at::kInt));
            }),
            "weight 'layers.1.w2' must be float32, float16 or bfloat16 to be observed, got Int");
  EXPECT_EQ(error_of([&] { q.qparams(); }),
            "weight 'layers.1.w2' has no statistics: observe it before quantizing");
  EXPECT_EQ(error_of([] {
              make_observer(args(R"({"num_bits": 8, "observer": "modelopt_mse"})"),
                            TensorRole::kInput, "x");
            }),
            "observer 'modelopt_mse' observes weights only, not 'x'");
}

}  // namespace
