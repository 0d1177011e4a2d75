// Models declared in YAML (registry/declared_model.h): a softmax-routed model declared in YAML
// computes exactly what the built-in Mixtral builder's does, the registrations carry the YAML's
// file and line, and malformed stanzas name file:line:col, key and value. GLM-4.5 (sigmoid
// routing, shared experts, dense layers) is tested against its compiled plugin and transformers in
// tests/python/test_declared_models.py.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "moeq/registry/declared_model.h"
#include "moeq/registry/plugin_manager.h"

#include <moeq/runtime/models.h>

#include <ATen/ATen.h>

namespace {

namespace fs = std::filesystem;

constexpr const char* kMixtral = R"(name: mixtral_declared
version: 1.2.3
models:
  - architecture: MixtralForCausalLM
    moe_block_type: MixtralSparseMoeBlock
    types: {router: MixtralTopKRouter, experts: MixtralExperts, mlp: MixtralBlockSparseTop2MLP}
    rms_norm_eps: {config: rms_norm_eps, default: 1e-5}
    rope: {default_theta: 1e6}
    attention:
      sliding_window: {config: sliding_window, default: 0}
    router:
      kind: softmax_topk
      num_experts: {config: [num_local_experts, num_experts]}
      normalize_topk: true
    experts:
      intermediate_size: {config: intermediate_size}
    tensors:
      router: model.layers.{layer}.block_sparse_moe.gate.weight
      experts:
        gate: model.layers.{layer}.block_sparse_moe.experts.{expert}.w1.weight
        up: model.layers.{layer}.block_sparse_moe.experts.{expert}.w3.weight
        down: model.layers.{layer}.block_sparse_moe.experts.{expert}.w2.weight
)";

constexpr const char* kConfig = R"({"architectures": ["MixtralForCausalLM"], "vocab_size": 64,
  "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
  "rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "hidden_act": "silu"})";

fs::path write_temp(const std::string& name, const std::string& text) {
  const fs::path dir = fs::temp_directory_path() / ("moeq_declared_" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::ofstream(dir / name) << text;
  return dir / name;
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const moeq::Error& e) {
    return e.message();
  }
  return "(no error)";
}

moeq::DeclaredPlugin parse(const std::string& text) {
  return moeq::parse_declared_plugin(moeq::load_yaml_string(text, "models.yaml"));
}

std::string replace(std::string text, const std::string& from, const std::string& to) {
  const auto at = text.find(from);
  EXPECT_NE(at, std::string::npos) << from;
  return text.replace(at, from.size(), to);
}

TEST(DeclaredModelTest, SoftmaxModelEqualsTheBuiltinMixtral) {
  moeq::PluginManager manager;
  const fs::path file = write_temp("mixtral.yaml", kMixtral);
  ASSERT_TRUE(moeq::is_plugin_path(file.filename().string()));
  const auto& plugin = manager.load(file.string(), {});
  EXPECT_EQ(plugin.info().name, "mixtral_declared");
  EXPECT_EQ(plugin.info().version, "1.2.3");
  ASSERT_EQ(plugin.registrations().size(), 2U);
  for (const auto& r : plugin.registrations()) {
    EXPECT_EQ(r.origin.file, file.string());
    EXPECT_EQ(r.origin.line, 4);  // the stanza
    EXPECT_NE(r.origin.to_string().find("mixtral.yaml:4"), std::string::npos);
  }
  EXPECT_EQ(plugin.registrations()[1].key, "MixtralSparseMoeBlock");

  const auto config = moeq::io::HfConfig::parse(kConfig, "config.json");
  auto weights = std::make_shared<moeq::runtime::TensorMapSource>();
  moeq::runtime::RuntimeOptions options;
  options.keep_resident = true;
  auto builtin = moeq::runtime::build_mixtral_for_causal_lm(config, weights, options);
  at::manual_seed(0);
  builtin->for_each_parameter(
      [&](moeq::runtime::Parameter& p) { weights->set(p.name, at::randn(p.shape) * 0.2); });
  auto declared = manager.registries()
                      .architectures.create("MixtralForCausalLM")
                      ->build(config, weights, options);
  std::vector<std::string> a;
  std::vector<std::string> b;
  builtin->for_each_module(
      [&](moeq::runtime::Module& m) { a.push_back(m.type() + " " + m.name()); });
  declared->for_each_module(
      [&](moeq::runtime::Module& m) { b.push_back(m.type() + " " + m.name()); });
  EXPECT_EQ(a, b);
  const auto ids = at::randint(64, {2, 7});
  EXPECT_TRUE(at::equal(builtin->forward(ids, {}, {}), declared->forward(ids, {}, {})));
}

TEST(DeclaredModelTest, Errors) {
  // router_bias belongs to sigmoid routing.
  EXPECT_EQ(error_of([] {
              parse(replace(kMixtral, "    tensors:\n",
                            "    tensors:\n      router_bias: model.layers.{layer}.x\n"));
            }),
            "models.yaml:18:20: models[0].tensors.router_bias: only used with router kind "
            "'sigmoid_topk' (kind is 'softmax_topk')");
  // Duplicate keys, as in the recipe.
  EXPECT_EQ(
      error_of([] { parse(replace(kMixtral, "version: 1.2.3\n", "version: 1\nversion: 2\n")); }),
      "models.yaml:3:1: version: duplicate key (first given at line 2)");
  // A shared-expert section without its tensors.
  EXPECT_EQ(error_of([] {
              parse(replace(kMixtral, "    tensors:\n",
                            "    shared_experts: {count: 1}\n    tensors:\n"));
            }),
            "models.yaml:17:21: models[0].shared_experts: declared without tensors.shared_experts");
  // A dense layer with no dense MLP tensors: found when the model is built.
  moeq::PluginManager manager;
  const fs::path file =
      write_temp("dense.yaml",
                 replace(kMixtral, "    tensors:\n", "    moe_layers: {first: 1}\n    tensors:\n"));
  manager.load_file(file);
  const auto config = moeq::io::HfConfig::parse(kConfig, "config.json");
  const auto message = error_of([&] {
    manager.registries()
        .architectures.create("MixtralForCausalLM")
        ->build(config, std::make_shared<moeq::runtime::TensorMapSource>(), {});
  });
  EXPECT_NE(message.find("model 'MixtralForCausalLM' declared at " + file.string() + ":4:5: "),
            std::string::npos)
      << message;
  EXPECT_NE(message.find("models[0].tensors: layer 0 is dense (moe_layers: first 1, step 1) but "
                         "tensors.dense_mlp is not declared"),
            std::string::npos)
      << message;
}

}  // namespace
