// ArchitectureBuilder: what a plugin registers for one model architecture, keyed by config.json's
// `architectures[0]` (e.g. "MixtralForCausalLM"): it builds the runtime's module tree from
// config.json over a weight source.
//
// ABI rules as for ModuleAdapter: virtual destructor, new virtual functions only at the end, no
// default arguments on virtual functions.
#pragma once

#include <moeq/io/hf_config.h>
#include <moeq/runtime/causal_lm.h>
#include <moeq/runtime/weight_source.h>

#include <boost/config.hpp>

#include <functional>
#include <memory>
#include <string>

namespace moeq {

class BOOST_SYMBOL_VISIBLE ArchitectureBuilder {
 public:
  virtual ~ArchitectureBuilder();

  // The registry key, config.json's architectures[0], e.g. "MixtralForCausalLM".
  virtual std::string key() const = 0;
  // One line for `moeq plugins` and `moeq inspect`.
  virtual std::string describe() const = 0;
  // The model for `config` reading its tensors from `weights`. The default throws "architecture
  // ... builds no model" (registry-only test plugins).
  virtual std::unique_ptr<runtime::CausalLM> build(const io::HfConfig& config,
                                                   std::shared_ptr<runtime::WeightSource> weights,
                                                   const runtime::RuntimeOptions& options) const;
};

using ArchitectureBuilderFactory = std::function<std::unique_ptr<ArchitectureBuilder>()>;

}  // namespace moeq
