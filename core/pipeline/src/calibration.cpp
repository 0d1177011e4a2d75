#include "moeq/pipeline/calibration.h"

#include <utility>

namespace moeq {

std::string_view to_string(CalibrationMode mode) {
  switch (mode) {
    case CalibrationMode::kAll:
      return "all";
    case CalibrationMode::kRouted:
      return "routed";
    case CalibrationMode::kRatio:
      return "ratio";
  }
  return "unknown";
}

namespace pipeline {

ExpertCoverage::ExpertCoverage(std::string block_name, std::string adapter_key, int64_t num_experts)
    : block(std::move(block_name)),
      adapter(std::move(adapter_key)),
      routed(num_experts, 0),
      seen(num_experts, 0),
      fallback(num_experts, false) {}

}  // namespace pipeline
}  // namespace moeq
