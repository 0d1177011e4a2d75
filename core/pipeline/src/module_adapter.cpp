#include "moeq/pipeline/module_adapter.h"

#include <moeq/core/error.h>
#include <moeq/runtime/module.h>

namespace moeq {

std::string_view to_string(Tier tier) {
  switch (tier) {
    case Tier::kEasy:
      return "easy";
    case Tier::kMid:
      return "mid";
    case Tier::kHard:
      return "hard";
  }
  return "unknown";
}

// Key function: the interface's vtable and type_info live in the host.
ModuleAdapter::~ModuleAdapter() = default;

void ModuleAdapter::attach(runtime::Module& module, pipeline::LayerSession& /*session*/) {
  MOEQ_CHECK(false,
             "adapter '{}' ({}) cannot attach to module '{}' of type '{}': it implements "
             "no calibration",
             type_key(), describe(), module.name(), module.type());
}

}  // namespace moeq
