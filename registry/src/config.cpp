#include "moeq/registry/config.h"

#include "moeq/registry/plugin_manager.h"

namespace moeq {

namespace fs = std::filesystem;

namespace {

// "auto", "cpu", "cuda" or "cuda:N".
std::string check_device(const std::string& text) {
  if (text == "auto" || text == "cpu" || text == "cuda") {
    return {};
  }
  if (text.starts_with("cuda:") && text.size() > 5 &&
      text.find_first_not_of("0123456789", 5) == std::string::npos) {
    return {};
  }
  return "'auto', 'cpu', 'cuda' or 'cuda:N'";
}

std::shared_ptr<const Schema> model_schema() {
  static const auto schema = std::make_shared<const Schema>(
      "model", std::vector<Field>{
                   {.name = "path",
                    .type = FieldType::kString,
                    .required = true,
                    .doc = "the checkpoint directory (config.json and safetensors)"},
                   {.name = "dtype",
                    .type = FieldType::kString,
                    .default_value = std::string("auto"),
                    .choices = {"auto", "bfloat16", "float16", "float32"},
                    .doc = "compute dtype for calibration; auto: bfloat16 on CUDA, float32 on the "
                           "CPU"},
                   {.name = "device",
                    .type = FieldType::kString,
                    .default_value = std::string("auto"),
                    .check = check_device,
                    .doc = "auto (cuda when available), cpu, cuda or cuda:N"},
               });
  return schema;
}

std::shared_ptr<const Schema> calibration_schema() {
  static const auto schema = std::make_shared<const Schema>(
      "calibration",
      std::vector<Field>{
          {.name = "dataset",
           .type = FieldType::kString,
           .required = true,
           .doc = "the calibration data file"},
          {.name = "format",
           .type = FieldType::kString,
           .default_value = std::string("auto"),
           .choices = {"auto", "jsonl", "safetensors", "text"},
           .doc = "the data file's format; auto: from the extension (.jsonl, .safetensors, .txt)"},
          {.name = "samples",
           .type = FieldType::kInteger,
           .default_value = int64_t{512},
           .min = 1,
           .doc = "number of calibration sequences"},
          {.name = "seq_len",
           .type = FieldType::kInteger,
           .default_value = int64_t{2048},
           .min = 1,
           .doc = "tokens per sequence"},
          {.name = "batch_size",
           .type = FieldType::kInteger,
           .default_value = int64_t{8},
           .min = 1,
           .doc = "sequences per forward pass"},
          {.name = "seed",
           .type = FieldType::kInteger,
           .default_value = int64_t{0},
           .min = 0,
           .doc = "seed for sampling the sequences"},
          {.name = "mode",
           .type = FieldType::kString,
           .default_value = std::string("all"),
           .choices = {"all", "routed", "ratio"},
           .doc = "which experts see each token: all, the routed top-k, or a ratio of experts"},
          {.name = "ratio",
           .type = FieldType::kNumber,
           .min = 0.0,
           .max = 1.0,
           .min_exclusive = true,
           .doc = "with mode ratio: the fraction of experts each token visits, in (0, 1]"},
          {.name = "min_tokens",
           .type = FieldType::kInteger,
           .default_value = int64_t{1},
           .min = 0,
           .doc = "experts with fewer tokens fall back to weight-only statistics, with a warning"},
      });
  return schema;
}

std::shared_ptr<const Schema> export_schema() {
  static const auto schema = std::make_shared<const Schema>(
      "export", std::vector<Field>{
                    {.name = "format",
                     .type = FieldType::kString,
                     .default_value = std::string("compressed-tensors"),
                     .choices = {"compressed-tensors", "modelopt"},
                     .doc = "the output checkpoint's format"},
                    {.name = "output",
                     .type = FieldType::kString,
                     .required = true,
                     .doc = "the output directory"},
                    {.name = "report",
                     .type = FieldType::kString,
                     .default_value = std::string(""),
                     .doc = "where report.json and report.html go; empty: <output>.report"},
                    {.name = "overwrite",
                     .type = FieldType::kBoolean,
                     .default_value = false,
                     .doc = "replace an existing output directory (only once the new one is "
                            "complete)"},
                    {.name = "journal",
                     .type = FieldType::kBoolean,
                     .default_value = true,
                     .doc = "record each finished layer so that a killed run can continue "
                            "(moeq quantize --resume)"},
                    {.name = "shard_size",
                     .type = FieldType::kByteSize,
                     .default_value = int64_t{5'000'000'000},
                     .min = 0.0,
                     .min_exclusive = true,
                     .doc = "largest safetensors shard, e.g. 5GB or 512MiB"},
                });
  return schema;
}

std::shared_ptr<const Schema> quantize_schema() {
  static const auto schema = std::make_shared<const Schema>(
      "quantize",
      std::vector<Field>{
          {.name = "ignore",
           .type = FieldType::kStringList,
           .default_value = std::vector<std::string>{},
           .doc = "modules left in high precision: names, or 're:<regex>' matched from the start "
                  "(compressed-tensors' ignore); routers, shared-expert gates and lm_head always "
                  "are"},
          {.name = "skip_attention",
           .type = FieldType::kBoolean,
           .default_value = false,
           .doc = "leave the attention projections in high precision (experts-only recipes)"},
          {.name = "skip_dense_mlp",
           .type = FieldType::kBoolean,
           .default_value = false,
           .doc = "leave dense MLPs and shared experts in high precision"},
          {.name = "propagate",
           .type = FieldType::kString,
           .default_value = std::string("quantized"),
           .choices = {"quantized", "original"},
           .doc = "which output the next layer calibrates on: the quantized layer's (as at "
                  "inference) or the original's"},
          {.name = "offload_activations",
           .type = FieldType::kBoolean,
           .default_value = false,
           .doc = "keep calibration activations on the host between layers"},
          {.name = "drop_excluded_layers",
           .type = FieldType::kBoolean,
           .default_value = false,
           .doc = "leave layers the model does not run (DeepSeek-V3's MTP layer) out of the "
                  "checkpoint instead of copying them through"},
      });
  return schema;
}

std::shared_ptr<const Schema> evaluation_schema() {
  static const auto schema = std::make_shared<const Schema>(
      "evaluation", std::vector<Field>{
                        {.name = "dataset",
                         .type = FieldType::kString,
                         .required = true,
                         .doc = "held-out data (same formats as calibration)"},
                        {.name = "format",
                         .type = FieldType::kString,
                         .default_value = std::string("auto"),
                         .choices = {"auto", "jsonl", "safetensors", "text"},
                         .doc = "the data file's format"},
                        {.name = "samples",
                         .type = FieldType::kInteger,
                         .default_value = int64_t{16},
                         .min = 1,
                         .doc = "number of evaluation sequences"},
                        {.name = "seq_len",
                         .type = FieldType::kInteger,
                         .default_value = int64_t{256},
                         .min = 2,
                         .doc = "tokens per sequence"},
                        {.name = "batch_size",
                         .type = FieldType::kInteger,
                         .default_value = int64_t{4},
                         .min = 1,
                         .doc = "sequences per forward pass"},
                        {.name = "seed",
                         .type = FieldType::kInteger,
                         .default_value = int64_t{1},
                         .min = 0,
                         .doc = "seed for sampling the sequences"},
                    });
  return schema;
}

fs::path resolve(const fs::path& base_dir, const std::string& text) {
  fs::path path(text);
  return (path.is_absolute() ? path : base_dir / path).lexically_normal();
}

Recipe build_recipe(const ConfigNode& root, const fs::path& file, const fs::path& base_dir) {
  const ParsedFields parsed = parse_fields(root, recipe_schema());
  Recipe recipe;
  recipe.root = root;
  recipe.file = file;

  const std::vector<std::string>& plugins = parsed.strings("plugins");
  for (std::size_t i = 0; i < plugins.size(); ++i) {
    std::string spec =
        is_plugin_path(plugins[i]) ? resolve(base_dir, plugins[i]).string() : plugins[i];
    recipe.plugins.push_back(PluginSpec{std::move(spec), parsed.where("plugins").element(i)});
  }
  for (const std::string& dir : parsed.strings("plugin_path")) {
    recipe.plugin_path.push_back(resolve(base_dir, dir));
  }

  if (parsed.has("model")) {
    const ParsedFields& model = parsed.section("model");
    recipe.model = ModelConfig{resolve(base_dir, model.string("path")), model.string("dtype"),
                               model.string("device")};
  }
  if (parsed.has("scheme")) {
    recipe.scheme = parsed.raw("scheme");
  }
  if (parsed.has("calibration")) {
    const ParsedFields& calibration = parsed.section("calibration");
    CalibrationConfig config;
    config.dataset = resolve(base_dir, calibration.string("dataset"));
    config.format = calibration.string("format");
    config.samples = calibration.integer("samples");
    config.seq_len = calibration.integer("seq_len");
    config.batch_size = calibration.integer("batch_size");
    config.seed = calibration.integer("seed");
    const std::string& mode = calibration.string("mode");
    config.mode = mode == "routed"  ? CalibrationMode::kRouted
                  : mode == "ratio" ? CalibrationMode::kRatio
                                    : CalibrationMode::kAll;
    if (config.mode == CalibrationMode::kRatio) {
      if (!calibration.given("ratio")) {
        calibration.node().fail("missing required field 'ratio' (mode is 'ratio')");
      }
      config.ratio = calibration.number("ratio");
    } else if (calibration.given("ratio")) {
      calibration.where("ratio").fail(
          fmt::format("only used with mode 'ratio' (mode is '{}')", mode));
    }
    config.min_tokens = calibration.integer("min_tokens");
    recipe.calibration = config;
  }
  if (parsed.has("export")) {
    const ParsedFields& exporting = parsed.section("export");
    ExportConfig config;
    config.format = exporting.string("format") == "modelopt" ? ExportFormat::kModelOpt
                                                             : ExportFormat::kCompressedTensors;
    config.output = resolve(base_dir, exporting.string("output"));
    config.shard_size = exporting.integer("shard_size");
    if (!exporting.string("report").empty()) {
      config.report = resolve(base_dir, exporting.string("report"));
    }
    config.overwrite = exporting.boolean("overwrite");
    config.journal = exporting.boolean("journal");
    recipe.export_config = config;
  }
  if (parsed.has("quantize")) {
    const ParsedFields& quantize = parsed.section("quantize");
    QuantizeConfig config;
    config.ignore = quantize.strings("ignore");
    config.skip_attention = quantize.boolean("skip_attention");
    config.skip_dense_mlp = quantize.boolean("skip_dense_mlp");
    config.propagate_quantized = quantize.string("propagate") == "quantized";
    config.offload_activations = quantize.boolean("offload_activations");
    config.drop_excluded_layers = quantize.boolean("drop_excluded_layers");
    recipe.quantize = config;
  }
  if (parsed.has("evaluation")) {
    const ParsedFields& evaluation = parsed.section("evaluation");
    EvaluationConfig config;
    config.dataset = resolve(base_dir, evaluation.string("dataset"));
    config.format = evaluation.string("format");
    config.samples = evaluation.integer("samples");
    config.seq_len = evaluation.integer("seq_len");
    config.batch_size = evaluation.integer("batch_size");
    config.seed = evaluation.integer("seed");
    recipe.evaluation = config;
  }
  if (parsed.has("adapters")) {
    recipe.adapters = parsed.nodes("adapters");
  }
  return recipe;
}

}  // namespace

std::shared_ptr<const Schema> recipe_schema() {
  static const auto schema = std::make_shared<const Schema>(
      "recipe",
      std::vector<Field>{
          {.name = "plugins",
           .type = FieldType::kStringList,
           .default_value = std::vector<std::string>{},
           .doc = "plugins to load, in order: names (searched on the plugin path) or paths to .so "
                  "files"},
          {.name = "plugin_path",
           .type = FieldType::kStringList,
           .default_value = std::vector<std::string>{},
           .doc = "directories searched for plugins given by name, before $MOEQ_PLUGIN_PATH and "
                  "the install's lib/moeq/plugins"},
          {.name = "model",
           .type = FieldType::kSection,
           .section = model_schema(),
           .doc = "the model to quantize"},
          {.name = "scheme",
           .type = FieldType::kStringOrMap,
           .doc = "a scheme name (W4A16, NVFP4, FP8-block ...) or a map of QuantArgs"},
          {.name = "calibration",
           .type = FieldType::kSection,
           .section = calibration_schema(),
           .doc = "the calibration data and how tokens reach the experts"},
          {.name = "export",
           .type = FieldType::kSection,
           .section = export_schema(),
           .doc = "the output checkpoint"},
          {.name = "quantize",
           .type = FieldType::kSection,
           .section = quantize_schema(),
           .doc = "which projections are quantized and how layers feed each other"},
          {.name = "evaluation",
           .type = FieldType::kSection,
           .section = evaluation_schema(),
           .doc = "held-out tokens: KL divergence and perplexity of the quantized model"},
          {.name = "adapters",
           .type = FieldType::kMapList,
           .doc = "adapters declared in YAML (easy tier), each read with its own schema"},
      });
  return schema;
}

void Recipe::require(std::initializer_list<std::string_view> sections,
                     std::string_view needed_by) const {
  for (std::string_view section : sections) {
    bool present = false;
    if (section == "model") {
      present = model.has_value();
    } else if (section == "scheme") {
      present = scheme.has_value();
    } else if (section == "calibration") {
      present = calibration.has_value();
    } else if (section == "export") {
      present = export_config.has_value();
    } else if (section == "evaluation") {
      present = evaluation.has_value();
    } else {
      MOEQ_INTERNAL_ASSERT(false, "Recipe::require: unknown section '{}'", section);
    }
    if (!present) {
      root.fail(fmt::format("missing required section '{}' (needed by {})", section, needed_by));
    }
  }
}

Recipe load_recipe(const fs::path& file) {
  const ConfigNode root = load_yaml_file(file.string());
  std::error_code ec;
  fs::path base_dir = fs::absolute(file, ec).parent_path();
  return build_recipe(root, file, base_dir);
}

Recipe parse_recipe(std::string_view text,
                    const std::string& file_label,
                    const fs::path& base_dir) {
  return build_recipe(load_yaml_string(text, file_label), fs::path(file_label), base_dir);
}

void load_plugins(PluginManager& manager, const Recipe& recipe) {
  const std::vector<fs::path> search_path = plugin_search_path(recipe.plugin_path);
  for (const PluginSpec& spec : recipe.plugins) {
    try {
      manager.load(spec.spec, search_path);
    } catch (const Error& e) {
      detail::throw_error(e.file(), e.line(), spec.where.message(e.message()));
    }
  }
}

}  // namespace moeq
