// Models declared in YAML: the easy tier without compiled code. A YAML file listed where a plugin
// goes (`plugins: [models/glm4_moe.yaml]`, `--plugin glm4_moe.yaml`) is a declared plugin: it names
// itself, and each of its `models` stanzas registers
//   - an architecture (config.json's architectures[0]) whose builder assembles the runtime's shared
//     blocks: Attention (GQA, q/k/v and o biases, q/k RMSNorm per head or full width, partial
//     RoPE, sliding window), RMSNorm, dense GatedMlp layers and a SparseMoeBlock (a softmax or
//     sigmoid top-k router, PerExpertMlps, optional shared experts), laid out by tensor name
//     patterns, over the checkpoint as stored or FP8 block-scaled (dequantized per layer);
//   - the easy tier's SparseMoeAdapter under the stanza's MoE block type.
// Every option is a literal or read from named config.json keys; `requires` lists config.json
// values the stanza implements, so a variant it does not build is refused when the model is built
// (a key absent from config.json passes). The stanza reference is in
// docs/contributing-models.md ("Easy tier without compiled code"); examples ship in
// tools/recipes/models/ (glm4_moe.yaml, minimax_m2.yaml).
//
// Malformed stanzas are errors naming the file, line, column, key path and the bad value, as the
// recipe's are. Registered entries carry the YAML file and the stanza's line as their origin.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "moeq/registry/plugin_registrar.h"
#include "moeq/registry/schema.h"

namespace moeq {

// One parsed `models` stanza (opaque: read by the builder it registers).
struct DeclaredModel;

struct DeclaredPlugin {
  ConfigNode root;
  std::string name;     // `name`: a plugin name (letters, digits, '_')
  std::string version;  // `version`
  std::vector<std::shared_ptr<const DeclaredModel>> models;
};

// True for a spec naming a declared plugin file (ends in .yaml or .yml).
bool is_declared_plugin_path(std::string_view spec);

// The file's schema (name, version, models) and a stanza's, section by section (for the docs).
std::shared_ptr<const Schema> declared_plugin_schema();
std::shared_ptr<const Schema> declared_model_schema();

// Checks the whole file; throws moeq::Error "file:line:col: models[0].router.kind: ..." at the
// first problem.
DeclaredPlugin parse_declared_plugin(const ConfigNode& root);
DeclaredPlugin load_declared_plugin(const std::filesystem::path& file);

// The stanza's architecture key ("Glm4MoeForCausalLM") and MoE block type ("Glm4MoeMoE").
const std::string& declared_architecture(const DeclaredModel& model);
const std::string& declared_moe_block_type(const DeclaredModel& model);

// Registers every model of `plugin`: its architecture and its MoE block's easy-tier adapter, each
// with the origin <file>:<line of the stanza>.
void register_declared_plugin(const DeclaredPlugin& plugin, PluginRegistrar& registrar);

}  // namespace moeq
