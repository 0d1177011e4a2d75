// Registers a key of its own, then a module adapter key the good plugin also registers: loading it
// after the good plugin fails and must leave its own key unregistered.
#include <memory>
#include <string>

#include "moeq/registry/plugin.h"

namespace {

class DuplicateOnlyForCausalLM final : public moeq::ArchitectureBuilder {
 public:
  std::string key() const override { return "DuplicateOnlyForCausalLM"; }
  std::string describe() const override { return "registered before the duplicate"; }
};

class GoodSparseMoeBlock final : public moeq::ModuleAdapter {
 public:
  std::string type_key() const override { return "GoodSparseMoeBlock"; }
  moeq::Tier tier() const override { return moeq::Tier::kMid; }
  std::string describe() const override { return "the duplicate"; }
};

void register_duplicate_key(moeq::PluginRegistrar& registrar) {
  registrar.add_architecture<DuplicateOnlyForCausalLM>("DuplicateOnlyForCausalLM");
  registrar.add_module_adapter<GoodSparseMoeBlock>("GoodSparseMoeBlock");  // the duplicate
}

}  // namespace

MOEQ_PLUGIN(duplicate_key, "2.0.0", register_duplicate_key)
