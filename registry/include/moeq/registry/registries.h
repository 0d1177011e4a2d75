// The host's registries, one per kind of thing a plugin provides. A PluginManager owns one set;
// plugins reach it only through PluginRegistrar.
#pragma once

#include "moeq/registry/architecture_builder.h"
#include "moeq/registry/checkpoint_mapping.h"
#include "moeq/registry/module_adapter.h"
#include "moeq/registry/registry.h"
#include "moeq/registry/source_format.h"

#include <moeq/pipeline/stages.h>

namespace moeq {

// Key: the MoE module type, e.g. "MixtralSparseMoeBlock".
using ModuleAdapterRegistry = Registry<ModuleAdapterFactory>;
// Key: config.json's architectures[0], e.g. "MixtralForCausalLM".
using ArchitectureRegistry = Registry<ArchitectureBuilderFactory>;
// Key: the mapping's name.
using CheckpointMappingRegistry = Registry<CheckpointMappingFactory>;
// Key: the source format's name, e.g. "fp8-block128".
using SourceFormatRegistry = Registry<SourceFormatFactory>;
// Key: config.json's architectures[0]: the hard tier's pipeline stages for that architecture.
using PipelineStagesFactory = std::function<std::unique_ptr<pipeline::PipelineStages>()>;
using PipelineStagesRegistry = Registry<PipelineStagesFactory>;

// Compiled once, in libmoeq_registry.
extern template class Registry<ModuleAdapterFactory>;
extern template class Registry<ArchitectureBuilderFactory>;
extern template class Registry<CheckpointMappingFactory>;
extern template class Registry<SourceFormatFactory>;
extern template class Registry<PipelineStagesFactory>;

struct Registries {
  ModuleAdapterRegistry module_adapters{"module adapter"};
  ArchitectureRegistry architectures{"architecture"};
  CheckpointMappingRegistry checkpoint_mappings{"checkpoint mapping"};
  SourceFormatRegistry source_formats{"source format"};
  PipelineStagesRegistry pipeline_stages{"pipeline stages"};
};

}  // namespace moeq
