// The recipe: the YAML file `moeq quantize --config recipe.yaml` reads. Sections:
//
//   plugins:      [mixtral, ./build/libmoeq_plugin_mine.so]   # names or paths
//   plugin_path:  [/opt/moeq-plugins]                         # where names are searched
//   model:        {path: ./Mixtral-8x7B, dtype: bfloat16, device: cuda}
//   scheme:       NVFP4                                       # or a map of QuantArgs
//   calibration:  {dataset: calib.jsonl, samples: 512, seq_len: 2048, mode: all}
//   quantize:     {ignore: ["re:.*self_attn"], propagate: quantized}
//   evaluation:   {dataset: eval.txt, samples: 16, seq_len: 256}
//   export:       {format: compressed-tensors, output: ./out, shard_size: 5GB, overwrite: false,
//                  journal: true}
//   adapters:     [{...}, ...]                                # YAML-declared easy adapters
//
// Every key, type and default is declared in recipe_schema() (docs/plugins.md lists them);
// errors name the file, line, column and key path. Relative paths are relative to the recipe's
// directory. `scheme` and `adapters` are kept as YAML nodes for the quant core and the adapters
// to read with their own schemas.
#pragma once

#include <cstdint>
#include <filesystem>
#include <initializer_list>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "moeq/registry/schema.h"

#include <moeq/export/exporter.h>
#include <moeq/pipeline/calibration.h>

namespace moeq {

class PluginManager;

using exporting::ExportFormat;

// A `plugins` entry: a name or a path, with where it is written.
struct PluginSpec {
  std::string spec;  // a path (resolved against the recipe's directory) or a name
  ConfigNode where;
};

struct ModelConfig {
  std::filesystem::path path;  // the Hugging Face checkpoint directory
  std::string dtype;           // auto | bfloat16 | float16 | float32
  std::string device;          // auto | cpu | cuda | cuda:N
};

struct CalibrationConfig {
  std::filesystem::path dataset;
  std::string format;  // read by the calibration loader
  int64_t samples = 0;
  int64_t seq_len = 0;
  int64_t batch_size = 0;
  int64_t seed = 0;
  CalibrationMode mode = CalibrationMode::kAll;
  double ratio = 1.0;      // with mode ratio: the fraction of experts each token visits
  int64_t min_tokens = 0;  // experts that saw fewer tokens fall back to weight-only statistics
};

struct ExportConfig {
  ExportFormat format = ExportFormat::kCompressedTensors;
  std::filesystem::path output;
  int64_t shard_size = 0;        // bytes
  std::filesystem::path report;  // empty: <output>.report
  bool overwrite = false;
  bool journal = true;  // resumable: a killed run continues with --resume
};

struct QuantizeConfig {
  std::vector<std::string> ignore;  // compressed-tensors' ignore entries
  bool skip_attention = false;
  bool skip_dense_mlp = false;
  bool propagate_quantized = true;
  bool offload_activations = false;
  bool drop_excluded_layers = false;
};

struct EvaluationConfig {
  std::filesystem::path dataset;
  std::string format;
  int64_t samples = 0;
  int64_t seq_len = 0;
  int64_t batch_size = 0;
  int64_t seed = 0;
};

struct Recipe {
  ConfigNode root;
  std::filesystem::path file;
  std::vector<PluginSpec> plugins;
  std::vector<std::filesystem::path> plugin_path;
  std::optional<ModelConfig> model;
  std::optional<ConfigNode> scheme;  // a scheme name or a map of QuantArgs, for the quant core
  std::optional<CalibrationConfig> calibration;
  std::optional<ExportConfig> export_config;
  std::optional<QuantizeConfig> quantize;
  std::optional<EvaluationConfig> evaluation;
  std::vector<ConfigNode> adapters;  // each a map, for the adapter that declares its fields

  // Throws "recipe.yaml:1:1: missing required section 'model' (needed by moeq quantize)" when a
  // section a command needs is absent. Sections: model, scheme, calibration, export.
  void require(std::initializer_list<std::string_view> sections, std::string_view needed_by) const;
};

// The recipe's schema, section by section.
std::shared_ptr<const Schema> recipe_schema();

Recipe load_recipe(const std::filesystem::path& file);
// For tests and generated recipes: `file_label` is used in messages, `base_dir` resolves paths.
Recipe parse_recipe(std::string_view text,
                    const std::string& file_label,
                    const std::filesystem::path& base_dir);

// Loads the recipe's plugins in order, names looked up on plugin_search_path(recipe.plugin_path).
// A plugin that fails to load is fatal; the error says where the recipe lists it.
void load_plugins(PluginManager& manager, const Recipe& recipe);

}  // namespace moeq
