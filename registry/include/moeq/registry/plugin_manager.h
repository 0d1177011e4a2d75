// PluginManager: loads plugins with Boost.DLL and owns the registries they fill.
//
// Loading checks, in order, each failure with its own message naming the file (LLVM's
// PassPlugin::Load, ggml's load_backend): the file exists; it loads (rtld_local | rtld_now); it
// exports `moeq_get_plugin_info`; its API version, torch version and C++ ABI equal the host's; its
// callback is set. Then the callback runs; a failure it reports becomes "while registering plugin
// 'x' from 'path': ...", and whatever it registered before failing is removed again.
//
// Lifetime (Boost.DLL's missuses): every registry entry and every object made from one holds the
// plugin's library, so teardown runs adapters, then registrations, then libraries, whatever order
// their owners go in. The manager drops its plugins in reverse load order (TensorRT's LIFO).
#pragma once

#include <boost/config.hpp>

#include <cstdint>

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "moeq/core/log.h"
#include "moeq/registry/plugin_registrar.h"
#include "moeq/registry/registries.h"

namespace boost::dll {
class shared_library;
}  // namespace boost::dll

namespace moeq {

// What a plugin declared about itself, copied out of its moeq_plugin_info.
struct PluginInfo {
  std::filesystem::path path;  // as loaded (absolute, normalised)
  std::string name;
  std::string version;
  std::string torch_version;
  std::string cxx_abi;
  std::string sdk_fingerprint;
};

class BOOST_SYMBOL_VISIBLE LoadedPlugin {
 public:
  const PluginInfo& info() const { return info_; }
  // What the plugin registered, in registration order.
  const std::vector<Registration>& registrations() const { return records_; }

 private:
  friend class PluginManager;
  // Members are destroyed in reverse order: handles (deregistration) first, the library last.
  std::shared_ptr<boost::dll::shared_library> library_;
  PluginInfo info_;
  std::vector<Registration> records_;
  std::vector<RegistrationHandle> handles_;
};

// The host's versions, as plugins are compared with: TORCH_VERSION and MOEQ_PLUGIN_CXX_ABI of
// libmoeq_registry's build.
std::string host_torch_version();
std::string host_cxx_abi();

// "libmoeq_plugin_<name>.so".
std::string plugin_file_name(std::string_view name);
// The install's plugin directory: lib/moeq/plugins beside libmoeq_registry.so (in the build tree,
// build/registry/moeq/plugins, where in-tree plugins are built).
std::filesystem::path default_plugin_dir();
// Where plugins given by name are searched, in order: `configured` (the YAML's plugin_path), then
// the entries of $MOEQ_PLUGIN_PATH (':'-separated), then default_plugin_dir().
std::vector<std::filesystem::path> plugin_search_path(
    const std::vector<std::filesystem::path>& configured = {});
// True when `spec` names a file (contains '/', ends in ".so", or in ".yaml"/".yml": a declared
// plugin, declared_model.h), false when it is a plugin name.
bool is_plugin_path(std::string_view spec);
// The first libmoeq_plugin_<name>.so on `search_path`; an error listing the directories if none.
std::filesystem::path find_plugin(std::string_view name,
                                  const std::vector<std::filesystem::path>& search_path);

class PluginManager;

// Loads every plugin in default_plugin_dir() (moeq's in-tree plugins: mixtral, qwen_moe ...), in
// name order; what a recipe that lists no plugins gets. Returns how many loaded.
int64_t load_default_plugins(PluginManager& manager);

class BOOST_SYMBOL_VISIBLE PluginManager {
 public:
  explicit PluginManager(Logger& logger = moeq::logger());
  ~PluginManager();
  PluginManager(const PluginManager&) = delete;
  PluginManager& operator=(const PluginManager&) = delete;

  Registries& registries() { return registries_; }
  const Registries& registries() const { return registries_; }
  Logger& logger() const { return logger_; }

  // Loads the plugin at `file` and runs its registration (a .yaml/.yml file: the models it
  // declares, declared_model.h). Loading a file that is already loaded
  // returns the plugin loaded before; another file with an already loaded plugin name is an error.
  const LoadedPlugin& load_file(const std::filesystem::path& file);
  // `spec` is a path (see is_plugin_path) or a plugin name looked up on `search_path`.
  const LoadedPlugin& load(std::string_view spec,
                           const std::vector<std::filesystem::path>& search_path);

  // In load order.
  std::vector<const LoadedPlugin*> plugins() const;

 private:
  // `expected_name`: the name the file was found by, checked before registration; empty for none.
  const LoadedPlugin& load_impl(const std::filesystem::path& file, std::string_view expected_name);
  // A YAML file of declared models: registered like a plugin, without a library.
  const LoadedPlugin& load_declared(const std::filesystem::path& file,
                                    std::string_view expected_name);

  Logger& logger_;
  Registries registries_;  // declared before plugins_, so plugins deregister before it goes
  std::vector<std::unique_ptr<LoadedPlugin>> plugins_;
};

}  // namespace moeq
