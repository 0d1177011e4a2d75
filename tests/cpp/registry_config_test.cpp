// The YAML recipe and the schema reader: values and defaults, and every kind of error with the
// file, line, column and key path in its message.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "io_test_util.h"
#include "moeq/registry/config.h"

namespace {

namespace fs = std::filesystem;

std::string recipe_error(const std::string& text) {
  try {
    moeq::parse_recipe(text, "recipe.yaml", "/base");
  } catch (const moeq::Error& e) {
    return e.message();
  }
  return "(no error)";
}

TEST(RecipeConfigTest, FullRecipe) {
  const moeq::Recipe recipe = moeq::parse_recipe(R"(# a recipe
plugins: [mixtral, ./plugins/libmoeq_plugin_mine.so, /abs/libmoeq_plugin_x.so]
plugin_path: [plugins, /opt/moeq]
model:
  path: models/Mixtral-8x7B
  dtype: bfloat16
  device: cuda:1
scheme:
  weights: {num_bits: 4, type: int, strategy: group, group_size: 128}
calibration:
  dataset: /data/calib.jsonl
  format: text
  samples: 256
  seq_len: 4096
  batch_size: 4
  seed: 7
  mode: ratio
  ratio: 0.25
  min_tokens: 16
export:
  format: modelopt
  output: out
  shard_size: 2GiB
adapters:
  - {type: SparseMoe, module: MyMoeBlock}
)",
                                                 "recipe.yaml", "/base/dir");
  ASSERT_EQ(recipe.plugins.size(), 3U);
  EXPECT_EQ(recipe.plugins[0].spec, "mixtral");
  EXPECT_EQ(recipe.plugins[1].spec, "/base/dir/plugins/libmoeq_plugin_mine.so");
  EXPECT_EQ(recipe.plugins[2].spec, "/abs/libmoeq_plugin_x.so");
  EXPECT_EQ(recipe.plugins[1].where.location(), "recipe.yaml:2:20");
  EXPECT_EQ(recipe.plugin_path, (std::vector<fs::path>{"/base/dir/plugins", "/opt/moeq"}));
  ASSERT_TRUE(recipe.model);
  EXPECT_EQ(recipe.model->path, "/base/dir/models/Mixtral-8x7B");
  EXPECT_EQ(recipe.model->dtype, "bfloat16");
  EXPECT_EQ(recipe.model->device, "cuda:1");
  ASSERT_TRUE(recipe.scheme);
  EXPECT_TRUE(recipe.scheme->node.IsMap());
  EXPECT_EQ(recipe.scheme->path, "scheme");
  EXPECT_EQ(recipe.scheme->location(), "recipe.yaml:9:3");
  EXPECT_EQ(recipe.scheme->node["weights"]["group_size"].as<int>(), 128);
  ASSERT_TRUE(recipe.calibration);
  EXPECT_EQ(recipe.calibration->dataset, "/data/calib.jsonl");
  EXPECT_EQ(recipe.calibration->format, "text");
  EXPECT_EQ(recipe.calibration->samples, 256);
  EXPECT_EQ(recipe.calibration->seq_len, 4096);
  EXPECT_EQ(recipe.calibration->batch_size, 4);
  EXPECT_EQ(recipe.calibration->seed, 7);
  EXPECT_EQ(recipe.calibration->mode, moeq::CalibrationMode::kRatio);
  EXPECT_DOUBLE_EQ(recipe.calibration->ratio, 0.25);
  EXPECT_EQ(recipe.calibration->min_tokens, 16);
  ASSERT_TRUE(recipe.export_config);
  EXPECT_EQ(recipe.export_config->format, moeq::ExportFormat::kModelOpt);
  EXPECT_EQ(recipe.export_config->output, "/base/dir/out");
  EXPECT_EQ(recipe.export_config->shard_size, int64_t{2} << 30);
  ASSERT_EQ(recipe.adapters.size(), 1U);
  EXPECT_EQ(recipe.adapters[0].path, "adapters[0]");
  EXPECT_EQ(recipe.adapters[0].node["module"].as<std::string>(), "MyMoeBlock");
}

TEST(RecipeConfigTest, Defaults) {
  const moeq::Recipe recipe = moeq::parse_recipe(
      "model: {path: /m}\nscheme: NVFP4\ncalibration: {dataset: c.jsonl}\nexport: {output: /o}\n",
      "recipe.yaml", "/base");
  EXPECT_TRUE(recipe.plugins.empty());
  EXPECT_TRUE(recipe.plugin_path.empty());
  EXPECT_EQ(recipe.model->dtype, "auto");
  EXPECT_EQ(recipe.model->device, "auto");
  EXPECT_EQ(recipe.scheme->node.Scalar(), "NVFP4");
  EXPECT_EQ(recipe.calibration->dataset, "/base/c.jsonl");
  EXPECT_EQ(recipe.calibration->format, "auto");
  EXPECT_EQ(recipe.calibration->samples, 512);
  EXPECT_EQ(recipe.calibration->seq_len, 2048);
  EXPECT_EQ(recipe.calibration->batch_size, 8);
  EXPECT_EQ(recipe.calibration->seed, 0);
  EXPECT_EQ(recipe.calibration->mode, moeq::CalibrationMode::kAll);
  EXPECT_EQ(recipe.calibration->min_tokens, 1);
  EXPECT_EQ(recipe.export_config->format, moeq::ExportFormat::kCompressedTensors);
  EXPECT_EQ(recipe.export_config->shard_size, 5'000'000'000);
  EXPECT_TRUE(recipe.adapters.empty());
  EXPECT_NO_THROW(recipe.require({"model", "scheme", "calibration", "export"}, "moeq quantize"));
}

TEST(RecipeConfigTest, EmptyRecipeAndRequiredSections) {
  const moeq::Recipe recipe = moeq::parse_recipe("", "recipe.yaml", "/base");
  EXPECT_FALSE(recipe.model);
  EXPECT_FALSE(recipe.scheme);
  try {
    recipe.require({"model"}, "moeq quantize");
    FAIL();
  } catch (const moeq::Error& e) {
    EXPECT_EQ(e.message(),
              "recipe.yaml:1:1: missing required section 'model' (needed by moeq quantize)");
  }
}

TEST(RecipeConfigTest, WrongType) {
  EXPECT_EQ(recipe_error("model:\n  path: /m\ncalibration:\n  dataset: c.jsonl\n  samples: many\n"),
            "recipe.yaml:5:12: calibration.samples: expected an integer, got 'many'");
  EXPECT_EQ(recipe_error("calibration:\n  dataset: c.jsonl\n  samples: 12.5\n"),
            "recipe.yaml:3:12: calibration.samples: expected an integer, got '12.5'");
  EXPECT_EQ(
      recipe_error("calibration:\n  dataset: c.jsonl\n  samples: \"512\"\n"),
      "recipe.yaml:3:12: calibration.samples: expected an integer, got the quoted string '512'");
  EXPECT_EQ(recipe_error("calibration:\n  dataset: c.jsonl\n  samples:\n"),
            "recipe.yaml:3:3: calibration.samples: expected an integer, got nothing");
  EXPECT_EQ(recipe_error("calibration:\n  dataset: [a, b]\n"),
            "recipe.yaml:2:12: calibration.dataset: expected a string, got a list");
  EXPECT_EQ(recipe_error("calibration:\n  dataset: c\n  mode: ratio\n  ratio: half\n"),
            "recipe.yaml:4:10: calibration.ratio: expected a number, got 'half'");
  EXPECT_EQ(recipe_error("plugins: mixtral\n"),
            "recipe.yaml:1:10: plugins: expected a list of strings, got 'mixtral'");
  EXPECT_EQ(recipe_error("plugins:\n  - mixtral\n  - {name: x}\n"),
            "recipe.yaml:3:5: plugins[1]: expected a string, got a map");
  EXPECT_EQ(recipe_error("scheme: [W4A16]\n"),
            "recipe.yaml:1:9: scheme: expected a string or a map, got a list");
  EXPECT_EQ(recipe_error("adapters:\n  - {type: SparseMoe}\n  - SparseMoe\n"),
            "recipe.yaml:3:5: adapters[1]: expected a map, got 'SparseMoe'");
  EXPECT_EQ(recipe_error("calibration: 5\n"),
            "recipe.yaml:1:14: calibration: expected a map, got '5'");
  EXPECT_EQ(recipe_error("- model\n"), "recipe.yaml:1:1: expected a map, got a list");
  EXPECT_EQ(recipe_error("export:\n  output: o\n  shard_size: 5 gigs\n"),
            "recipe.yaml:3:15: export.shard_size: expected a size (bytes, or a number with B, KB, "
            "MB, GB, TB, KiB, "
            "MiB, GiB or TiB), got '5 gigs'");
}

TEST(RecipeConfigTest, UnknownKeys) {
  EXPECT_EQ(recipe_error("plugins: []\nmodle:\n  path: /m\n"),
            "recipe.yaml:2:1: modle: unknown key (did you mean 'model'?); known keys: adapters, "
            "calibration, evaluation, export, model, plugin_path, plugins, quantize, scheme");
  EXPECT_EQ(recipe_error("calibration:\n  dataset: c\n  sample: 5\n"),
            "recipe.yaml:3:3: calibration.sample: unknown key (did you mean 'samples'?); known "
            "keys: batch_size, "
            "dataset, format, min_tokens, mode, ratio, samples, seed, seq_len");
  EXPECT_EQ(
      recipe_error("export:\n  output: o\n  compression: zstd\n"),
      "recipe.yaml:3:3: export.compression: unknown key; known keys: format, journal, output, "
      "overwrite, report, shard_size");
}

TEST(RecipeConfigTest, MissingRequiredFields) {
  EXPECT_EQ(recipe_error("model:\n  dtype: float32\n"),
            "recipe.yaml:2:3: model: missing required field 'path'");
  EXPECT_EQ(recipe_error("export:\n"), "recipe.yaml:1:1: export: missing required field 'output'");
  EXPECT_EQ(recipe_error("calibration: {dataset: c, mode: ratio}\n"),
            "recipe.yaml:1:14: calibration: missing required field 'ratio' (mode is 'ratio')");
}

TEST(RecipeConfigTest, ValuesOutOfRangeOrNotAllowed) {
  EXPECT_EQ(recipe_error("calibration:\n  dataset: c\n  samples: 0\n"),
            "recipe.yaml:3:12: calibration.samples: expected a value >= 1, got 0");
  EXPECT_EQ(recipe_error("calibration:\n  dataset: c\n  mode: ratio\n  ratio: 1.5\n"),
            "recipe.yaml:4:10: calibration.ratio: expected a value in (0, 1], got 1.5");
  EXPECT_EQ(recipe_error("calibration:\n  dataset: c\n  mode: ratio\n  ratio: 0\n"),
            "recipe.yaml:4:10: calibration.ratio: expected a value in (0, 1], got 0");
  EXPECT_EQ(recipe_error("calibration:\n  dataset: c\n  ratio: 0.5\n"),
            "recipe.yaml:3:10: calibration.ratio: only used with mode 'ratio' (mode is 'all')");
  EXPECT_EQ(recipe_error("calibration:\n  dataset: c\n  mode: routd\n"),
            "recipe.yaml:3:9: calibration.mode: expected one of 'all', 'routed', 'ratio', got "
            "'routd' (did you "
            "mean 'routed'?)");
  EXPECT_EQ(recipe_error("export:\n  output: o\n  format: gguf\n"),
            "recipe.yaml:3:11: export.format: expected one of 'compressed-tensors', 'modelopt', "
            "got 'gguf'");
  EXPECT_EQ(
      recipe_error("model:\n  path: m\n  device: gpu\n"),
      "recipe.yaml:3:11: model.device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got 'gpu'");
  EXPECT_EQ(recipe_error("export:\n  output: o\n  shard_size: 0\n"),
            "recipe.yaml:3:15: export.shard_size: expected a value > 0, got 0");
}

TEST(RecipeConfigTest, DuplicateKey) {
  EXPECT_EQ(recipe_error("calibration:\n  dataset: c\n  samples: 5\n  samples: 6\n"),
            "recipe.yaml:4:3: calibration.samples: duplicate key (first given at line 3)");
}

TEST(RecipeConfigTest, SyntaxError) {
  EXPECT_EQ(recipe_error("plugins: [a,\nmodel: {path: m}\n"),
            "recipe.yaml:3:1: invalid YAML: end of sequence flow not found");
}

TEST(RecipeConfigTest, FilesOnDisk) {
  const fs::path dir =
      fs::temp_directory_path() / ("moeq_config_test_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const fs::path file = dir / "recipe.yaml";
  std::ofstream(file) << "model:\n  path: ckpt\ncalibration:\n  dataset: c\n  seq_len: long\n";
  try {
    moeq::load_recipe(file);
    FAIL();
  } catch (const moeq::Error& e) {
    EXPECT_EQ(e.message(),
              file.string() + ":5:12: calibration.seq_len: expected an integer, got 'long'");
  }
  std::ofstream(file) << "model:\n  path: ckpt\n";
  EXPECT_EQ(moeq::load_recipe(file).model->path, dir / "ckpt");
  moeq::io::testing::remove_tree(dir);
  try {
    moeq::load_recipe(file);
    FAIL();
  } catch (const moeq::Error& e) {
    EXPECT_EQ(e.message(),
              "cannot read config file '" + file.string() + "': No such file or directory");
  }
}

// An adapter declares its own fields and reads its YAML node with the same reader.
TEST(RecipeConfigTest, AdapterDeclaredSchema) {
  const moeq::Recipe recipe = moeq::parse_recipe(
      "adapters:\n  - module: MyMoeBlock\n    experts: 8\n    gate: true\n  - module: Other\n    "
      "experts: eight\n",
      "recipe.yaml", "/base");
  auto schema = std::make_shared<const moeq::Schema>(
      "sparse_moe",
      std::vector<moeq::Field>{
          {.name = "module", .type = moeq::FieldType::kString, .required = true},
          {.name = "experts", .type = moeq::FieldType::kInteger, .required = true, .min = 1},
          {.name = "gate", .type = moeq::FieldType::kBoolean, .default_value = false},
          {.name = "top_k", .type = moeq::FieldType::kInteger, .default_value = int64_t{2}},
      });
  const moeq::ParsedFields first = moeq::parse_fields(recipe.adapters[0], schema);
  EXPECT_EQ(first.string("module"), "MyMoeBlock");
  EXPECT_EQ(first.integer("experts"), 8);
  EXPECT_TRUE(first.boolean("gate"));
  EXPECT_EQ(first.integer("top_k"), 2);
  EXPECT_TRUE(first.given("experts"));
  EXPECT_FALSE(first.given("top_k"));
  EXPECT_TRUE(first.has("top_k"));
  try {
    moeq::parse_fields(recipe.adapters[1], schema);
    FAIL();
  } catch (const moeq::Error& e) {
    EXPECT_EQ(e.message(),
              "recipe.yaml:6:14: adapters[1].experts: expected an integer, got 'eight'");
  }
}

TEST(RecipeConfigTest, ByteSizes) {
  EXPECT_EQ(moeq::parse_byte_size("1000"), 1000);
  EXPECT_EQ(moeq::parse_byte_size("5GB"), 5'000'000'000);
  EXPECT_EQ(moeq::parse_byte_size("512MiB"), int64_t{512} << 20);
  EXPECT_EQ(moeq::parse_byte_size("1.5 kb"), 1500);
  EXPECT_EQ(moeq::parse_byte_size("0.5B"), std::nullopt);
  EXPECT_EQ(moeq::parse_byte_size("-1GB"), std::nullopt);
  EXPECT_EQ(moeq::parse_byte_size("GB"), std::nullopt);
}

}  // namespace
