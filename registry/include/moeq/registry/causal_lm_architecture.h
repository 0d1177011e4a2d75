// An ArchitectureBuilder over a model-builder function (moeq/runtime/models.h's signature), so a
// plugin registers an architecture in one line:
//
//   registrar.add_architecture("MixtralForCausalLM",
//       causal_lm_architecture("MixtralForCausalLM", &build_mixtral, "Mixtral: ..."));
#pragma once

#include <moeq/registry/architecture_builder.h>
#include <moeq/runtime/models.h>

#include <string>

namespace moeq {

class CausalLMArchitecture final : public ArchitectureBuilder {
 public:
  CausalLMArchitecture(std::string key, runtime::CausalLMBuilder build, std::string description)
      : key_(std::move(key)), build_(build), description_(std::move(description)) {}

  std::string key() const override { return key_; }
  std::string describe() const override { return description_; }
  std::unique_ptr<runtime::CausalLM> build(const io::HfConfig& config,
                                           std::shared_ptr<runtime::WeightSource> weights,
                                           const runtime::RuntimeOptions& options) const override {
    return build_(config, std::move(weights), options);
  }

 private:
  std::string key_;
  runtime::CausalLMBuilder build_;
  std::string description_;
};

inline ArchitectureBuilderFactory causal_lm_architecture(std::string key,
                                                         runtime::CausalLMBuilder build,
                                                         std::string description) {
  return [key = std::move(key), build, description = std::move(description)] {
    return std::make_unique<CausalLMArchitecture>(key, build, description);
  };
}

}  // namespace moeq
