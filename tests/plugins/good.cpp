// A well-formed plugin: one architecture and one module adapter.
#include <memory>
#include <string>

#include "moeq/registry/plugin.h"

namespace {

class GoodForCausalLM final : public moeq::ArchitectureBuilder {
 public:
  std::string key() const override { return "GoodForCausalLM"; }
  std::string describe() const override { return "test architecture from the good plugin"; }
};

class GoodSparseMoeBlock final : public moeq::ModuleAdapter {
 public:
  std::string type_key() const override { return "GoodSparseMoeBlock"; }
  moeq::Tier tier() const override { return moeq::Tier::kEasy; }
  std::string describe() const override { return "test adapter from the good plugin"; }
};

void register_good(moeq::PluginRegistrar& registrar) {
  registrar.add_architecture<GoodForCausalLM>("GoodForCausalLM");
  registrar.add_module_adapter<GoodSparseMoeBlock>("GoodSparseMoeBlock");
  registrar.logger().debug("good: registered");
}

}  // namespace

// Default visibility on purpose: the version script must still keep it out of the export table.
extern "C" __attribute__((visibility("default"))) int moeq_test_not_exported() {
  return 1;
}

MOEQ_PLUGIN(good, "1.0.0", register_good)
