// moeq inspect: what moeq would do with a checkpoint. The architecture and the plugin that builds
// it, every module an adapter claims (with its tier), MoE-looking modules nothing claims, and the
// checkpoint tensors no module of the model reads. Nothing is loaded beyond the mapped headers.
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "commands.h"
#include "moeq/core/error.h"
#include "moeq/io/hf_config.h"
#include "moeq/pipeline/evaluate.h"
#include "moeq/registry/config.h"
#include "moeq/registry/plugin_manager.h"
#include "moeq/runtime/weight_source.h"

namespace moeq::cli {
namespace {

namespace fs = std::filesystem;

struct InspectOptions {
  std::string model;
  std::string config;
  std::vector<std::string> plugins;
  bool json = false;
};

// Module types that look like MoE blocks or expert containers, by the names transformers uses.
bool looks_like_moe(const std::string& type) {
  for (const char* word : {"Moe", "MoE", "Experts", "SparseMoe"}) {
    if (type.find(word) != std::string::npos) {
      return true;
    }
  }
  return false;
}

// "model.layers.12.mlp" -> 12, or -1.
int64_t layer_of(const std::string& name) {
  const std::string key = ".layers.";
  const auto at = name.find(key);
  if (at == std::string::npos) {
    return -1;
  }
  try {
    return std::stoll(name.substr(at + key.size()));
  } catch (const std::exception&) {
    return -1;
  }
}

int run_inspect(const InspectOptions& options) {
  PluginManager manager;
  std::vector<fs::path> search;
  if (!options.config.empty()) {
    const Recipe recipe = load_recipe(options.config);
    load_plugins(manager, recipe);
    search = recipe.plugin_path;
  }
  for (const auto& spec : options.plugins) {
    manager.load(spec, plugin_search_path(search));
  }
  if (manager.plugins().empty()) {
    load_default_plugins(manager);
  }
  const Registries& registries = manager.registries();
  const fs::path model_dir = options.model;
  const auto config = io::HfConfig::load(model_dir / "config.json");
  const auto architecture = config.architecture();
  const auto arch_entry = registries.architectures.find(architecture);
  MOEQ_CHECK(arch_entry != nullptr,
             "{}: architecture '{}' is not registered by any loaded plugin (registered: {})",
             (model_dir / "config.json").string(), architecture,
             fmt::join(registries.architectures.keys(), ", "));
  std::shared_ptr<runtime::WeightSource> source = pipeline::open_checkpoint(model_dir);
  std::string stages_text;
  if (const auto stages_entry = registries.pipeline_stages.find(architecture)) {
    const auto stages = registries.pipeline_stages.create(architecture);
    stages_text = fmt::format("{} (from {})", stages->describe(), stages_entry->origin.to_string());
    source = stages->source(config, source);  // what the pipeline builds the model over
  }
  auto model = registries.architectures.create(architecture)->build(config, source, {});

  nlohmann::json out;
  out["model"] = model_dir.string();
  out["architecture"] = {{"key", architecture}, {"origin", arch_entry->origin.to_string()}};
  out["pipeline_stages"] = stages_text;
  // Claimed modules, per layer, and MoE-looking modules without an adapter.
  std::map<std::string, std::shared_ptr<ModuleAdapter>> adapters;
  nlohmann::json claimed = nlohmann::json::array();
  nlohmann::json unclaimed_modules = nlohmann::json::array();
  std::set<std::string> read;
  std::vector<std::string> claimed_prefixes;
  // Modules inside a claimed block (its experts container, each expert) belong to its adapter.
  const auto inside_claimed = [&](const std::string& name) {
    for (const auto& prefix : claimed_prefixes) {
      if (name.starts_with(prefix)) {
        return true;
      }
    }
    return false;
  };
  model->for_each_module([&](runtime::Module& m) {
    for (auto* p : m.parameters()) {
      read.insert(p->name);
    }
    const auto entry = registries.module_adapters.find(m.type());
    if (entry != nullptr) {
      auto& adapter = adapters[m.type()];
      if (!adapter) {
        adapter = registries.module_adapters.create(m.type());
      }
      int64_t experts = 0;
      if (auto* block = dynamic_cast<runtime::SparseMoeBlock*>(&m)) {
        experts = block->experts().num_experts();
      } else if (auto* stack = dynamic_cast<runtime::Experts*>(&m)) {
        experts = stack->num_experts();
      }
      claimed_prefixes.push_back(m.name() + ".");
      claimed.push_back({{"module", m.name()},
                         {"type", m.type()},
                         {"layer", layer_of(m.name())},
                         {"tier", std::string(to_string(adapter->tier()))},
                         {"adapter", adapter->describe()},
                         {"experts", experts},
                         {"origin", entry->origin.to_string()}});
    } else if (looks_like_moe(m.type()) && !inside_claimed(m.name())) {
      unclaimed_modules.push_back({{"module", m.name()}, {"type", m.type()}});
    }
  });
  // What the model reads: a builder may derive tensors from stored ones (MXFP4 experts).
  auto& weights = model->weights();
  out["source"] = weights.describe();
  std::vector<std::string> unclaimed_tensors;
  for (const auto& name : weights.names()) {
    if (!read.contains(name)) {
      unclaimed_tensors.push_back(name);
    }
  }
  out["claimed"] = claimed;
  out["moe_modules_without_adapter"] = unclaimed_modules;
  out["unclaimed_tensors"] = unclaimed_tensors;
  out["layers"] = model->num_layers();
  out["tensors"] = weights.names().size();
  if (options.json) {
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }

  std::printf("%s\n  architecture %s, built by %s\n  %lld decoder layers, %zu checkpoint tensors\n",
              model_dir.string().c_str(), architecture.c_str(),
              arch_entry->origin.to_string().c_str(), static_cast<long long>(model->num_layers()),
              weights.names().size());
  if (&weights != source.get()) {
    std::printf("  read through: %s\n", weights.describe().c_str());
  }
  if (!stages_text.empty()) {
    std::printf("  pipeline stages [hard]: %s\n", stages_text.c_str());
  }
  // One line per distinct (type, tier, experts), with the layers it covers.
  std::map<std::string, std::vector<int64_t>> groups;
  std::map<std::string, nlohmann::json> first;
  for (const auto& c : claimed) {
    const auto key = fmt::format("{} [{}] {} experts", c["type"].get<std::string>(),
                                 c["tier"].get<std::string>(), c["experts"].get<int64_t>());
    groups[key].push_back(c["layer"].get<int64_t>());
    first.try_emplace(key, c);
  }
  std::printf("modules claimed by adapters:\n");
  if (groups.empty()) {
    std::printf("  none\n");
  }
  for (const auto& [key, layers] : groups) {
    const auto& c = first[key];
    std::printf("  %s in %zu layers (%s; e.g. %s)\n    adapter: %s\n    from %s\n", key.c_str(),
                layers.size(), fmt::format("{}", fmt::join(layers, ",")).c_str(),
                c["module"].get<std::string>().c_str(), c["adapter"].get<std::string>().c_str(),
                c["origin"].get<std::string>().c_str());
  }
  if (!unclaimed_modules.empty()) {
    std::printf(
        "warning: MoE modules no adapter claims (their experts would be quantized only as "
        "plain linears, without all-expert calibration):\n");
    for (const auto& m : unclaimed_modules) {
      std::printf("  %s (%s)\n", m["module"].get<std::string>().c_str(),
                  m["type"].get<std::string>().c_str());
    }
  }
  std::printf("checkpoint tensors no module reads: %zu\n", unclaimed_tensors.size());
  for (const auto& name : unclaimed_tensors) {
    std::printf("  %s\n", name.c_str());
  }
  return 0;
}

}  // namespace

Command add_inspect_command(CLI::App& app) {
  auto options = std::make_shared<InspectOptions>();
  CLI::App* command = app.add_subcommand(
      "inspect",
      "show the architecture, the adapter and tier claiming each MoE module, and "
      "checkpoint tensors nothing reads");
  command->add_option("model", options->model, "model directory (config.json + safetensors)")
      ->required()
      ->check(CLI::ExistingDirectory);
  command->add_option("-c,--config", options->config, "recipe (YAML) whose plugins to load")
      ->check(CLI::ExistingFile);
  command->add_option("-p,--plugin", options->plugins, "a plugin to load as well (repeatable)");
  command->add_flag("--json", options->json, "print JSON");
  return Command{command, [options] { return run_inspect(*options); }};
}

}  // namespace moeq::cli
