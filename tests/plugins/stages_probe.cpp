// A hard-tier plugin for the pipeline-stage tests (tests/python/test_stages.py): it takes over all
// five stages of MixtralForCausalLM (whose builder comes from the mixtral plugin) in ways the
// test can see in the output:
//   1. source: the checkpoint stores "transformer.*" where the model reads "model.*";
//   2. routing: no adapter attaches (calibration is the model's own routed forward);
//   3. quantization: every block's expert 0 keeps its down projection (w2) in high precision;
//   4. export naming: "model.*" is written as "vendor.*";
//   5. layers to skip: layer 1.
// A config.json with "stages_probe_no_source": true makes the source stage return nothing, the
// error path of a broken pipeline adapter.
#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "moeq/registry/plugin.h"

namespace {

// The checkpoint under the model's names: "model.x" is read from "transformer.x".
class RenamingSource final : public moeq::runtime::WeightSource {
 public:
  explicit RenamingSource(std::shared_ptr<moeq::runtime::WeightSource> base)
      : base_(std::move(base)) {}
  at::Tensor get(const std::string& name) override { return base_->get(stored(name)); }
  void release(const std::string& name) override { base_->release(stored(name)); }
  bool has(const std::string& name) const override { return base_->has(stored(name)); }
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const auto& name : base_->names()) {
      out.push_back(name.starts_with("transformer.") ? "model." + name.substr(12) : name);
    }
    std::sort(out.begin(), out.end());
    return out;
  }
  std::string describe() const override { return base_->describe() + " (transformer.* names)"; }

 private:
  static std::string stored(const std::string& name) {
    return name.starts_with("model.") ? "transformer." + name.substr(6) : name;
  }
  std::shared_ptr<moeq::runtime::WeightSource> base_;
};

class ProbeStages final : public moeq::pipeline::PipelineStages {
 public:
  std::string describe() const override { return "stage probe: all five stages overridden"; }
  std::shared_ptr<moeq::runtime::WeightSource> source(
      const moeq::io::HfConfig& config,
      std::shared_ptr<moeq::runtime::WeightSource> checkpoint) const override {
    if (config.get_or("stages_probe_no_source", false)) {
      return nullptr;
    }
    return std::make_shared<RenamingSource>(std::move(checkpoint));
  }
  moeq::ModuleAdapter* adapter(const std::string& /*module_type*/,
                               moeq::ModuleAdapter* /*registered*/) const override {
    return nullptr;
  }
  bool quantize(const std::string& /*module*/,
                moeq::fn::ProjKind kind,
                int64_t expert,
                std::string& reason) const override {
    if (expert == 0 && kind == moeq::fn::ProjKind::kDown) {
      reason = "the probe keeps expert 0's down projection";
      return false;
    }
    return true;
  }
  std::string export_name(const std::string& name) const override {
    return name.starts_with("model.") ? "vendor." + name.substr(6) : name;
  }
  bool skip_layer(int64_t index, const moeq::io::HfConfig& /*config*/) const override {
    return index == 1;
  }
};

void register_stages_probe(moeq::PluginRegistrar& registrar) {
  registrar.add_pipeline_stages("MixtralForCausalLM",
                                [] { return std::make_unique<ProbeStages>(); });
}

}  // namespace

MOEQ_PLUGIN(stages_probe, "1.0.0", register_stages_probe)
