// A plugin built out of tree with find_package(moeq) and moeq_add_plugin.
#include <memory>
#include <string>

#include "moeq/registry/plugin.h"

namespace {

class OutOfTreeSparseMoeBlock final : public moeq::ModuleAdapter {
 public:
  std::string type_key() const override { return "OutOfTreeSparseMoeBlock"; }
  moeq::Tier tier() const override { return moeq::Tier::kEasy; }
  std::string describe() const override { return "built out of tree"; }
};

void register_out_of_tree(moeq::PluginRegistrar& registrar) {
  registrar.add_module_adapter<OutOfTreeSparseMoeBlock>("OutOfTreeSparseMoeBlock");
}

}  // namespace

MOEQ_PLUGIN(out_of_tree, "0.1.0", register_out_of_tree)
