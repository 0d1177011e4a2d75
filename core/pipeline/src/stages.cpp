// The default stages (stages.h): what the easy and mid tiers get.
#include "moeq/pipeline/stages.h"

namespace moeq::pipeline {

PipelineStages::~PipelineStages() = default;

std::shared_ptr<runtime::WeightSource> PipelineStages::source(
    const io::HfConfig& /*config*/, std::shared_ptr<runtime::WeightSource> checkpoint) const {
  return checkpoint;
}

ModuleAdapter* PipelineStages::adapter(const std::string& /*module_type*/,
                                       ModuleAdapter* registered) const {
  return registered;
}

bool PipelineStages::quantize(const std::string& /*module*/,
                              fn::ProjKind /*kind*/,
                              int64_t /*expert*/,
                              std::string& /*reason*/) const {
  return true;
}

std::string PipelineStages::export_name(const std::string& name) const {
  return name;
}

bool PipelineStages::skip_layer(int64_t /*index*/, const io::HfConfig& /*config*/) const {
  return false;
}

}  // namespace moeq::pipeline
