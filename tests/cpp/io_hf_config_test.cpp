// Typed access to config.json and its messages for missing and mistyped keys.
#include <gtest/gtest.h>

#include "io_test_util.h"
#include "moeq/core/error.h"
#include "moeq/io/hf_config.h"

namespace moeq::io {
namespace {

using testing::ScratchDir;
using testing::write_bytes;

constexpr std::string_view kMixtral = R"({
  "architectures": ["MixtralForCausalLM"],
  "model_type": "mixtral",
  "hidden_size": 4096,
  "num_local_experts": 8,
  "num_experts_per_tok": 2,
  "rope_theta": 1000000.0,
  "max_position_embeddings": 32768.0,
  "sliding_window": null,
  "tie_word_embeddings": false,
  "rope_scaling": {"type": "yarn", "factor": 4.0},
  "layer_types": ["full", "sliding"],
  "hidden_act": "silu",
  "initializer_range": 0.02,
  "vocab_size": "32000"
})";

HfConfig mixtral() {
  return HfConfig::parse(kMixtral, "mixtral/config.json");
}

TEST(HfConfigTest, TypedAccess) {
  const HfConfig config = mixtral();
  EXPECT_EQ(config.get<int64_t>("num_local_experts"), 8);
  EXPECT_EQ(config.get<int>("num_experts_per_tok"), 2);
  EXPECT_EQ(config.get<int64_t>("max_position_embeddings"), 32768);  // an integral float
  EXPECT_DOUBLE_EQ(config.get<double>("rope_theta"), 1e6);
  EXPECT_DOUBLE_EQ(config.get<double>("hidden_size"), 4096.0);  // any number is a double
  EXPECT_FALSE(config.get<bool>("tie_word_embeddings"));
  EXPECT_EQ(config.get<std::string>("hidden_act"), "silu");
  EXPECT_EQ(config.get<std::vector<std::string>>("layer_types"),
            (std::vector<std::string>{"full", "sliding"}));
  EXPECT_EQ(config.architecture(), "MixtralForCausalLM");
  EXPECT_EQ(config.get<nlohmann::json>("rope_scaling")["type"], "yarn");
}

TEST(HfConfigTest, DefaultsNestedKeysAndAlternatives) {
  const HfConfig config = mixtral();
  EXPECT_DOUBLE_EQ(config.get_or("rope_theta", 10000.0), 1e6);
  EXPECT_DOUBLE_EQ(config.get_or("partial_rotary_factor", 1.0), 1.0);
  EXPECT_EQ(config.get_or("sliding_window", int64_t{4096}), 4096);  // null counts as absent
  EXPECT_EQ(config.get_or("norm_topk_prob", true), true);
  EXPECT_EQ(config.get_or("model_type", "llama"), "mixtral");
  EXPECT_FALSE(config.find<int64_t>("sliding_window").has_value());
  EXPECT_FALSE(config.contains("sliding_window"));
  EXPECT_TRUE(config.contains("rope_scaling.factor"));
  EXPECT_DOUBLE_EQ(config.get<double>("rope_scaling.factor"), 4.0);
  EXPECT_EQ(config.get<std::string>("architectures.0"), "MixtralForCausalLM");
  EXPECT_FALSE(config.contains("architectures.1"));
  EXPECT_EQ(config.get_first<int64_t>({"num_experts", "n_routed_experts", "num_local_experts"}), 8);
}

TEST(HfConfigTest, MissingKeys) {
  const HfConfig config = mixtral();
  EXPECT_EQ(MOEQ_IO_ERROR_OF(config.get<int64_t>("num_experts")),
            "config 'mixtral/config.json': key 'num_experts' is missing");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(config.get<int64_t>("sliding_window")),
            "config 'mixtral/config.json': key 'sliding_window' is null, expected a value");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(config.get<double>("rope_theta.factor")),
            "config 'mixtral/config.json': key 'rope_theta.factor' is missing ('rope_theta' is "
            "number 1000000.0, which has no 'factor')");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(config.get<double>("rope_scaling.beta")),
            "config 'mixtral/config.json': key 'rope_scaling.beta' is missing");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(config.get_first<int64_t>({"num_experts", "n_routed_experts"})),
            "config 'mixtral/config.json': none of the keys 'num_experts', 'n_routed_experts' is "
            "present");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(HfConfig::parse(R"({"architectures": []})", "c.json").architecture()),
            "config 'c.json': key 'architectures' is an empty list");
}

TEST(HfConfigTest, MistypedValues) {
  const HfConfig config = mixtral();
  EXPECT_EQ(MOEQ_IO_ERROR_OF(config.get<int64_t>("vocab_size")),
            "config 'mixtral/config.json': key 'vocab_size' is string \"32000\", expected an "
            "integer");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(config.get<int64_t>("initializer_range")),
            "config 'mixtral/config.json': key 'initializer_range' is number 0.02, expected an "
            "integer");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(config.get_or("hidden_act", 1.0)),
            "config 'mixtral/config.json': key 'hidden_act' is string \"silu\", expected a number");
  EXPECT_EQ(
      MOEQ_IO_ERROR_OF(config.get<bool>("num_local_experts")),
      "config 'mixtral/config.json': key 'num_local_experts' is number 8, expected a boolean");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(config.get<std::string>("rope_scaling")),
            "config 'mixtral/config.json': key 'rope_scaling' is object "
            "{\"factor\":4.0,\"type\":\"yarn\"}, expected a string");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(config.get<int8_t>("hidden_size")),
            "config 'mixtral/config.json': key 'hidden_size' is number 4096, expected an integer "
            "in [-128, 127]");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(config.get<std::vector<int64_t>>("layer_types")),
            "config 'mixtral/config.json': key 'layer_types[0]' is string \"full\", expected an "
            "integer");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(config.get<std::vector<int64_t>>("hidden_act")),
            "config 'mixtral/config.json': key 'hidden_act' is string \"silu\", expected an array");
}

TEST(HfConfigTest, LoadsFilesAndDirectories) {
  ScratchDir dir;
  write_bytes(dir / "config.json", kMixtral);
  EXPECT_EQ(HfConfig::load(dir.path()).source(), (dir / "config.json").string());
  EXPECT_EQ(HfConfig::load(dir / "config.json").get<int64_t>("hidden_size"), 4096);

  EXPECT_EQ(MOEQ_IO_ERROR_OF(HfConfig::load(dir / "absent.json")),
            fmt::format("cannot open config '{}': No such file or directory",
                        (dir / "absent.json").string()));
  write_bytes(dir / "bad.json", "{\"hidden_size\": 4096,}");
  EXPECT_CONTAINS(MOEQ_IO_ERROR_OF(HfConfig::load(dir / "bad.json")),
                  fmt::format("config '{}' is not valid JSON: ", (dir / "bad.json").string()));
  EXPECT_CONTAINS(MOEQ_IO_ERROR_OF(HfConfig::parse(R"({"rope_theta": 1e999999})", "big.json")),
                  "config 'big.json' is not valid JSON: ");
  EXPECT_EQ(MOEQ_IO_ERROR_OF(HfConfig::parse("[1]", "list.json")),
            "config 'list.json' is array [1], expected a JSON object");
}

}  // namespace
}  // namespace moeq::io
