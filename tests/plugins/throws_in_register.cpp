// Registers an architecture, then throws: the loader must report the failure with context and
// remove the architecture again.
#include <memory>
#include <stdexcept>
#include <string>

#include "moeq/registry/plugin.h"

namespace {

class ThrowsForCausalLM final : public moeq::ArchitectureBuilder {
 public:
  std::string key() const override { return "ThrowsForCausalLM"; }
  std::string describe() const override { return "registered before the throw"; }
};

void register_throws(moeq::PluginRegistrar& registrar) {
  registrar.add_architecture<ThrowsForCausalLM>("ThrowsForCausalLM");
  throw std::runtime_error("expert count missing from the plugin's table");
}

}  // namespace

MOEQ_PLUGIN(throws_in_register, "1.0.0", register_throws)
