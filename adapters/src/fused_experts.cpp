// The mid tier's adapter (fused_experts.h).
#include "moeq/adapters/fused_experts.h"

#include <moeq/core/error.h>
#include <moeq/pipeline/layer_session.h>
#include <moeq/runtime/fused_experts.h>

#include <fmt/format.h>

namespace moeq::adapters {

FusedExpertsAdapter::FusedExpertsAdapter(std::string type_key) : type_key_(std::move(type_key)) {}

std::string FusedExpertsAdapter::describe() const {
  return "fused 3-D experts: bmm/matmul/grouped_mm intercepted by weight operand, per-expert "
         "quantizers on the slices, exported per expert";
}

void FusedExpertsAdapter::attach(runtime::Module& module, pipeline::LayerSession& session) {
  auto* experts = dynamic_cast<runtime::FusedExperts*>(&module);
  MOEQ_CHECK(experts != nullptr,
             "adapter '{}' (mid tier) needs fused experts (3-D gate_up_proj/down_proj stacks), "
             "but module '{}' of type '{}' is not one",
             type_key_, module.name(), module.type());
  session.add_fused_experts(*experts);
}

ModuleAdapterFactory fused_experts_adapter_factory(std::string type_key) {
  return [key = std::move(type_key)] { return std::make_unique<FusedExpertsAdapter>(key); };
}

}  // namespace moeq::adapters
