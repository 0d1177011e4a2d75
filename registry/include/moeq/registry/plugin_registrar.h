// PluginRegistrar: what a plugin's registration function receives. It adds entries to the host's
// registries stamped with the plugin's origin (file, name, version, and the source line of the
// call), keeps the plugin's library loaded for as long as an entry lives, and collects the
// registration handles, so a plugin whose callback fails leaves nothing behind.
//
// Its member functions are compiled into libmoeq_registry (not inline): a plugin calls into the
// host, and every object that outlives the call is built by host code.
#pragma once

#include <boost/config.hpp>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "moeq/registry/registries.h"

namespace moeq {

class Logger;

// One entry a plugin registered, for listings (`moeq plugins`).
struct Registration {
  std::string kind;  // "architecture", "module adapter", ...
  std::string key;
  Origin origin;
};

class BOOST_SYMBOL_VISIBLE PluginRegistrar {
 public:
  // `plugin` carries the plugin's path, name and version (file and line are filled per call);
  // `keep_alive` is held by every entry; handles and records are appended to the two vectors.
  PluginRegistrar(Registries& registries,
                  Logger& logger,
                  Origin plugin,
                  std::shared_ptr<const void> keep_alive,
                  std::vector<RegistrationHandle>& handles,
                  std::vector<Registration>& records);
  PluginRegistrar(const PluginRegistrar&) = delete;
  PluginRegistrar& operator=(const PluginRegistrar&) = delete;

  // Architectures, keyed by config.json's architectures[0].
  void add_architecture(std::string key,
                        ArchitectureBuilderFactory factory,
                        SourceLocation where = {});
  // Module adapters, keyed by the MoE module type.
  void add_module_adapter(std::string key, ModuleAdapterFactory factory, SourceLocation where = {});
  void add_checkpoint_mapping(std::string key,
                              CheckpointMappingFactory factory,
                              SourceLocation where = {});
  void add_source_format(std::string key, SourceFormatFactory factory, SourceLocation where = {});
  // The hard tier: pipeline stages an architecture takes over, keyed like its architecture.
  void add_pipeline_stages(std::string key,
                           PipelineStagesFactory factory,
                           SourceLocation where = {});

  // Shorthands for default-constructible types: add_module_adapter<MixtralSparseMoeBlock>("...").
  template <typename T>
  void add_architecture(std::string key, SourceLocation where = {}) {
    add_architecture(
        std::move(key), [] { return std::make_unique<T>(); }, where);
  }
  template <typename T>
  void add_module_adapter(std::string key, SourceLocation where = {}) {
    add_module_adapter(
        std::move(key), [] { return std::make_unique<T>(); }, where);
  }

  // The host's logger.
  Logger& logger() const { return logger_; }
  // The plugin being registered (path, name, version).
  const Origin& plugin() const { return plugin_; }

 private:
  Origin origin_at(const SourceLocation& where) const;
  template <typename Factory>
  void add(Registry<Factory>& registry,
           std::string key,
           Factory factory,
           const SourceLocation& where);

  Registries& registries_;
  Logger& logger_;
  Origin plugin_;
  std::shared_ptr<const void> keep_alive_;
  std::vector<RegistrationHandle>& handles_;
  std::vector<Registration>& records_;
};

}  // namespace moeq
