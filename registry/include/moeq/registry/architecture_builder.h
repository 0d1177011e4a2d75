// ArchitectureBuilder: what a plugin registers for one model architecture, keyed by config.json's
// `architectures[0]` (e.g. "MixtralForCausalLM"). Minimal for now; the model runtime (core/)
// extends it with the hooks that build the model from a checkpoint.
//
// ABI rules as for ModuleAdapter: virtual destructor, new virtual functions only at the end, no
// default arguments on virtual functions.
#pragma once

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
};

using ArchitectureBuilderFactory = std::function<std::unique_ptr<ArchitectureBuilder>()>;

}  // namespace moeq
