// The mid tier: an adapter for fused experts (runtime::FusedExperts: every expert's projections
// stacked in 3-D parameters and run by matmuls on expert slices, one bmm over all experts, or a
// grouped matmul; GPT-OSS, Llama 4, transformers 5's fused MoEs). There is no Linear per expert to
// swap, so the adapter hands the stacks to the layer session, which then intercepts moeq's
// matmul functionals by weight operand: the call names the stack (and the expert of a slice), so
// any call order, a second call or a different dispatch is quantized correctly, and a call on a
// weight the session does not know is reported. The routing (all-expert calibration) stays with
// the block's easy-tier adapter.
#pragma once

#include <moeq/pipeline/module_adapter.h>

#include <string>

namespace moeq::adapters {

class FusedExpertsAdapter final : public ModuleAdapter {
 public:
  // `type_key`: the experts module type this instance is registered under ("GptOssExperts").
  explicit FusedExpertsAdapter(std::string type_key);

  std::string type_key() const override { return type_key_; }
  Tier tier() const override { return Tier::kMid; }
  std::string describe() const override;
  // `module` must be a runtime::FusedExperts.
  void attach(runtime::Module& module, pipeline::LayerSession& session) override;

 private:
  std::string type_key_;
};

ModuleAdapterFactory fused_experts_adapter_factory(std::string type_key);

}  // namespace moeq::adapters
