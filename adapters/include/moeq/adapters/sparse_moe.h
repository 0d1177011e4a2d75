// The easy tier: an adapter for sparse MoE blocks (a router and per-expert MLPs with separate
// projections: Mixtral, Qwen2/3-MoE, OLMoE, MiniMax-M2, GLM-4.5). The model runtime already
// builds such a block as runtime::SparseMoeBlock; the adapter owns its calibration routing
// (all experts, routed, or a ratio), counts tokens per expert, and leaves quantization of the
// projections to the layer session, which sees every expert call through moeq's functionals.
#pragma once

#include <moeq/pipeline/module_adapter.h>

#include <memory>
#include <string>

namespace moeq::adapters {

class SparseMoeAdapter final : public ModuleAdapter {
 public:
  // `type_key`: the module type this instance is registered under ("MixtralSparseMoeBlock").
  explicit SparseMoeAdapter(std::string type_key);

  std::string type_key() const override { return type_key_; }
  Tier tier() const override { return Tier::kEasy; }
  std::string describe() const override;
  // `module` must be a runtime::SparseMoeBlock.
  void attach(runtime::Module& module, pipeline::LayerSession& session) override;

 private:
  std::string type_key_;
};

// A factory for registrar.add_module_adapter(key, make_sparse_moe_factory(key)).
ModuleAdapterFactory sparse_moe_adapter_factory(std::string type_key);

}  // namespace moeq::adapters
