#include "moeq/registry/plugin_registrar.h"

#include "moeq/core/log.h"

namespace moeq {

PluginRegistrar::PluginRegistrar(Registries& registries,
                                 Logger& logger,
                                 Origin plugin,
                                 std::shared_ptr<const void> keep_alive,
                                 std::vector<RegistrationHandle>& handles,
                                 std::vector<Registration>& records)
    : registries_(registries),
      logger_(logger),
      plugin_(std::move(plugin)),
      keep_alive_(std::move(keep_alive)),
      handles_(handles),
      records_(records) {}

Origin PluginRegistrar::origin_at(const SourceLocation& where) const {
  Origin origin = plugin_;
  origin.file = where.file;
  origin.line = where.line;
  return origin;
}

template <typename Factory>
void PluginRegistrar::add(Registry<Factory>& registry,
                          std::string key,
                          Factory factory,
                          const SourceLocation& where) {
  Origin origin = origin_at(where);
  Registration record{registry.kind(), key, origin};
  handles_.push_back(
      registry.add(std::move(key), std::move(factory), std::move(origin), keep_alive_));
  records_.push_back(std::move(record));
  logger_.debug("register_plugin: {} '{}' registered by {}", records_.back().kind,
                records_.back().key, records_.back().origin.to_string());
}

void PluginRegistrar::add_architecture(std::string key,
                                       ArchitectureBuilderFactory factory,
                                       SourceLocation where) {
  add(registries_.architectures, std::move(key), std::move(factory), where);
}

void PluginRegistrar::add_module_adapter(std::string key,
                                         ModuleAdapterFactory factory,
                                         SourceLocation where) {
  add(registries_.module_adapters, std::move(key), std::move(factory), where);
}

void PluginRegistrar::add_checkpoint_mapping(std::string key,
                                             CheckpointMappingFactory factory,
                                             SourceLocation where) {
  add(registries_.checkpoint_mappings, std::move(key), std::move(factory), where);
}

void PluginRegistrar::add_source_format(std::string key,
                                        SourceFormatFactory factory,
                                        SourceLocation where) {
  add(registries_.source_formats, std::move(key), std::move(factory), where);
}

void PluginRegistrar::add_pipeline_stages(std::string key,
                                          PipelineStagesFactory factory,
                                          SourceLocation where) {
  add(registries_.pipeline_stages, std::move(key), std::move(factory), where);
}

}  // namespace moeq
