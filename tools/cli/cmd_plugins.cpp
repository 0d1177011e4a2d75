// moeq plugins: loads the recipe's plugins (and any given with --plugin) and lists what each
// registered, with origins, then anything built into moeq.
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "commands.h"
#include "moeq/registry/config.h"
#include "moeq/registry/plugin_manager.h"

namespace moeq::cli {

namespace {

struct PluginsOptions {
  std::string config;
  std::vector<std::string> plugins;
  std::vector<std::string> plugin_path;
};

std::string where(const Origin& origin) {
  return fmt::format("{}:{}", std::filesystem::path(origin.file).filename().string(), origin.line);
}

// The registration's object, asked to describe itself.
std::string details(const Registries& registries, const Registration& registration) {
  if (registration.kind == registries.module_adapters.kind()) {
    auto adapter = registries.module_adapters.create(registration.key);
    return fmt::format("[{}] {}", to_string(adapter->tier()), adapter->describe());
  }
  if (registration.kind == registries.architectures.kind()) {
    return registries.architectures.create(registration.key)->describe();
  }
  if (registration.kind == registries.checkpoint_mappings.kind()) {
    return registries.checkpoint_mappings.create(registration.key)->describe();
  }
  if (registration.kind == registries.source_formats.kind()) {
    return registries.source_formats.create(registration.key)->describe();
  }
  if (registration.kind == registries.pipeline_stages.kind()) {
    return "[hard] " + registries.pipeline_stages.create(registration.key)->describe();
  }
  return {};
}

void print_row(const std::string& kind,
               const std::string& key,
               const std::string& origin,
               const std::string& text) {
  std::printf("  %-18s %-32s %-24s %s\n", kind.c_str(), key.c_str(), origin.c_str(), text.c_str());
}

template <typename Factory>
void print_builtin(const Registry<Factory>& registry, bool& header_printed) {
  for (const std::string& key : registry.keys()) {
    auto entry = registry.find(key);
    if (entry == nullptr || !entry->origin.builtin()) {
      continue;
    }
    if (!header_printed) {
      std::printf("built into moeq\n");
      header_printed = true;
    }
    print_row(registry.kind(), key, where(entry->origin), "");
  }
}

int run_plugins(const PluginsOptions& options) {
  PluginManager manager;
  std::vector<std::filesystem::path> dirs;
  if (!options.config.empty()) {
    const Recipe recipe = load_recipe(options.config);
    load_plugins(manager, recipe);
    dirs = recipe.plugin_path;
  }
  for (const std::string& dir : options.plugin_path) {
    dirs.emplace_back(dir);
  }
  const std::vector<std::filesystem::path> search_path = plugin_search_path(dirs);
  for (const std::string& spec : options.plugins) {
    manager.load(spec, search_path);
  }

  std::printf("plugin search path:\n");
  for (const auto& dir : search_path) {
    std::printf("  %s\n", dir.string().c_str());
  }
  const auto plugins = manager.plugins();
  if (plugins.empty()) {
    std::printf("no plugins loaded (list them under 'plugins' in the recipe, or pass --plugin)\n");
  }
  for (const LoadedPlugin* plugin : plugins) {
    const PluginInfo& info = plugin->info();
    std::printf("plugin '%s' %s from %s\n", info.name.c_str(), info.version.c_str(),
                info.path.string().c_str());
    std::printf("  built with torch %s, %s, SDK %s\n", info.torch_version.c_str(),
                info.cxx_abi.c_str(), info.sdk_fingerprint.c_str());
    if (plugin->registrations().empty()) {
      std::printf("  (registered nothing)\n");
    }
    for (const Registration& registration : plugin->registrations()) {
      print_row(registration.kind, registration.key, where(registration.origin),
                details(manager.registries(), registration));
    }
  }
  bool header_printed = false;
  print_builtin(manager.registries().architectures, header_printed);
  print_builtin(manager.registries().module_adapters, header_printed);
  print_builtin(manager.registries().checkpoint_mappings, header_printed);
  print_builtin(manager.registries().source_formats, header_printed);
  print_builtin(manager.registries().pipeline_stages, header_printed);
  return 0;
}

}  // namespace

Command add_plugins_command(CLI::App& app) {
  auto options = std::make_shared<PluginsOptions>();
  CLI::App* command =
      app.add_subcommand("plugins", "load plugins and list what each registered, with origins");
  command->add_option("-c,--config", options->config, "recipe (YAML) whose plugins to load")
      ->check(CLI::ExistingFile);
  command->add_option("-p,--plugin", options->plugins,
                      "a plugin to load as well: a name or a path (repeatable)");
  command->add_option("--plugin-path", options->plugin_path,
                      "a directory searched for plugins given by name (repeatable)");
  return Command{command, [options] { return run_plugins(*options); }};
}

}  // namespace moeq::cli
