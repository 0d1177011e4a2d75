#include <moeq/runtime/model_config.h>

#include <moeq/core/error.h>
#include <moeq/runtime/models.h>

#include <filesystem>

namespace moeq::runtime::model_config {

int64_t head_dim(const io::HfConfig& config) {
  if (auto dim = config.find<int64_t>("head_dim")) {
    return *dim;
  }
  const auto hidden = config.get<int64_t>("hidden_size");
  const auto heads = config.get<int64_t>("num_attention_heads");
  MOEQ_CHECK(heads > 0 && hidden % heads == 0,
             "config '{}': hidden_size {} is not a multiple of num_attention_heads {}",
             config.source(), hidden, heads);
  return hidden / heads;
}

RopeOptions rope_options(const io::HfConfig& config, int64_t head_dim, double default_theta) {
  // transformers: the parameters are rope_scaling, else rope_parameters; theta from them, else
  // the top-level rope_theta, else the model's default; the type from "rope_type" or the legacy
  // "type"; partial_rotary_factor from them or the top level.
  std::string p;
  for (const char* key : {"rope_scaling", "rope_parameters"}) {
    if (config.contains(key)) {
      MOEQ_CHECK(config.json().at(key).is_object(),
                 "config '{}': key '{}' is {}, expected an object", config.source(), key,
                 config.json().at(key).type_name());
      p = key;
      break;
    }
  }
  auto param = [&](const char* name) { return p.empty() ? std::string() : p + "." + name; };
  auto number = [&](const char* name, double fallback) {
    return p.empty() ? fallback : config.get_or(param(name), fallback);
  };

  RopeOptions options;
  options.head_dim = head_dim;
  options.theta = number("rope_theta", config.get_or("rope_theta", default_theta));
  options.partial_rotary_factor =
      number("partial_rotary_factor", config.get_or("partial_rotary_factor", 1.0));
  MOEQ_CHECK(options.partial_rotary_factor > 0.0 && options.partial_rotary_factor <= 1.0,
             "config '{}': partial_rotary_factor must be in (0, 1], got {}", config.source(),
             options.partial_rotary_factor);
  const auto type =
      p.empty() ? std::string("default")
                : config.get_or(param("rope_type"), config.get_or(param("type"), "default"));
  if (type == "default") {
    options.type = RopeType::kDefault;
  } else if (type == "linear") {
    options.type = RopeType::kLinear;
    options.factor = config.get<double>(param("factor"));
  } else if (type == "llama3") {
    options.type = RopeType::kLlama3;
    options.factor = config.get<double>(param("factor"));
    options.low_freq_factor = config.get<double>(param("low_freq_factor"));
    options.high_freq_factor = config.get<double>(param("high_freq_factor"));
    // A top-level original_max_position_embeddings wins (Phi-3 style), then the parameters'
    // own, then max_position_embeddings.
    if (auto top = config.find<int64_t>("original_max_position_embeddings")) {
      options.original_max_position_embeddings = *top;
    } else if (auto own = config.find<int64_t>(param("original_max_position_embeddings"))) {
      options.original_max_position_embeddings = *own;
    } else {
      options.original_max_position_embeddings = config.get<int64_t>("max_position_embeddings");
    }
  } else if (type == "yarn") {
    options.type = RopeType::kYarn;
    options.original_max_position_embeddings =
        config.get<int64_t>(param("original_max_position_embeddings"));
    // DeepSeek-style configs may leave factor out: max / original positions.
    if (auto factor = config.find<double>(param("factor"))) {
      options.factor = *factor;
    } else {
      options.factor = static_cast<double>(config.get<int64_t>("max_position_embeddings")) /
                       static_cast<double>(options.original_max_position_embeddings);
    }
    options.attention_factor = config.find<double>(param("attention_factor"));
    options.mscale = config.find<double>(param("mscale"));
    options.mscale_all_dim = config.find<double>(param("mscale_all_dim"));
    // transformers: `get("beta_fast") or 32` (a 0 also falls back).
    const auto beta_fast = config.get_or(param("beta_fast"), 32.0);
    const auto beta_slow = config.get_or(param("beta_slow"), 1.0);
    options.beta_fast = beta_fast != 0.0 ? beta_fast : 32.0;
    options.beta_slow = beta_slow != 0.0 ? beta_slow : 1.0;
    options.truncate = config.get_or(param("truncate"), true);
  } else {
    MOEQ_FAIL(
        "config '{}': RoPE type '{}' is not supported yet (supported: default, linear, llama3, "
        "yarn)",
        config.source(), type);
  }
  return options;
}

Activation activation(const io::HfConfig& config, std::string_view architecture) {
  const auto act = config.get_or("hidden_act", "silu");
  MOEQ_CHECK(act == "silu",
             "config '{}': hidden_act '{}' is not supported for {} (supported: silu)",
             config.source(), act, architecture);
  return Activation::kSilu;
}

}  // namespace moeq::runtime::model_config

namespace moeq::runtime {

const std::vector<BuiltinArchitecture>& builtin_architectures() {
  static const std::vector<BuiltinArchitecture> kArchitectures = {
      {"MixtralForCausalLM", &build_mixtral_for_causal_lm},
      {"Qwen2MoeForCausalLM", &build_qwen2_moe_for_causal_lm},
      {"Qwen3MoeForCausalLM", &build_qwen3_moe_for_causal_lm},
  };
  return kArchitectures;
}

CausalLMBuilder find_builtin_architecture(std::string_view architecture) {
  std::string known;
  for (const auto& a : builtin_architectures()) {
    if (a.name == architecture) {
      return a.build;
    }
    known += fmt::format("{}{}", known.empty() ? "" : ", ", a.name);
  }
  MOEQ_FAIL("no model builder for architecture '{}' (built in: {})", architecture, known);
}

std::unique_ptr<CausalLM> load_causal_lm(const std::filesystem::path& model_dir,
                                         const RuntimeOptions& options) {
  const auto config = io::HfConfig::load(model_dir);
  auto weights = std::make_shared<CheckpointSource>(model_dir);
  return find_builtin_architecture(config.architecture())(config, std::move(weights), options);
}

}  // namespace moeq::runtime
