// The exporters' output: compressed-tensors and ModelOpt checkpoints with the scheme's tensors
// under the checkpoint's names, config.json's quantization_config, the copied side files, and
// the atomic rename. (Byte-level conformance with compressed-tensors and ModelOpt is in
// tests/python/test_export_*.py.)
#include <moeq/io/safetensors_reader.h>

#include <nlohmann/json.hpp>

#include "export_test_util.h"

namespace moeq::exporting {
namespace {

namespace fs = std::filesystem;

using io::testing::read_bytes;
using io::testing::ScratchDir;
using nlohmann::json;
using testing::options_for;
using testing::siblings;
using testing::TinyExperts;

json read_json(const fs::path& file) {
  return json::parse(read_bytes(file));
}

TEST(ExportCheckpoint, CompressedTensorsW4A16) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(quant::preset_scheme("W4A16"), 2, 128, 128);
  const fs::path out = dir / "out";
  {
    auto exporter = make_exporter(options_for(dir / "src", out, "W4A16"));
    experts.add_all(*exporter);
    testing::add_passthrough(*exporter);
    EXPECT_FALSE(fs::exists(out)) << "the output appears only in finish()";
    EXPECT_EQ(exporter->finish(testing::summary_for(experts.names())), fs::absolute(out));
    EXPECT_GT(exporter->bytes_written(), 0);
  }
  EXPECT_EQ(siblings(dir.path(), "out"), std::vector<std::string>{"out"});

  io::SafetensorsCheckpoint ckpt(out);
  const std::string w1 = "model.layers.0.block_sparse_moe.experts.1.w1";
  for (const char* suffix : {"weight_packed", "weight_scale", "weight_shape"}) {
    EXPECT_TRUE(ckpt.contains(w1 + "." + suffix)) << suffix;
  }
  EXPECT_FALSE(ckpt.contains(w1 + ".weight"));
  EXPECT_EQ(ckpt.entry(w1 + ".weight_packed").shape, (std::vector<int64_t>{128, 16}));
  EXPECT_TRUE(ckpt.contains("lm_head.weight"));
  EXPECT_EQ(ckpt.names().size(), 6u * 3 + 2);

  const json config = read_json(out / "config.json");
  EXPECT_EQ(config["model_type"], "mixtral");
  const json& qc = config["quantization_config"];
  EXPECT_EQ(qc["quant_method"], "compressed-tensors");
  EXPECT_EQ(qc["format"], "pack-quantized");
  EXPECT_EQ(qc["quantization_status"], "compressed");
  EXPECT_EQ(qc["version"], "0.20.0");
  EXPECT_EQ(qc["config_groups"]["group_0"]["targets"], json::array({"Linear"}));
  EXPECT_EQ(qc["config_groups"]["group_0"]["weights"]["group_size"], 128);
  EXPECT_EQ(qc["ignore"], json::array({"model.layers.0.block_sparse_moe.gate", "lm_head"}));
  EXPECT_TRUE(qc["kv_cache_scheme"].is_null());
  // Python's json.dump(sort_keys=True, indent=2): no trailing newline, 2-space indent.
  const std::string text = read_bytes(out / "config.json");
  EXPECT_EQ(text.substr(0, 5), "{\n  \"");
  EXPECT_NE(text.back(), '\n');

  for (const char* side : {"tokenizer.json", "tokenizer_config.json", "generation_config.json",
                           "chat_template.jinja", "modeling_tiny.py"}) {
    EXPECT_EQ(read_bytes(out / side), read_bytes(dir / "src" / side)) << side;
  }
  EXPECT_FALSE(fs::exists(out / "model.safetensors.index.json"));  // the source's is not copied
}

TEST(ExportCheckpoint, ShardsAndIndex) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(quant::preset_scheme("W8A8-FP8-DYNAMIC"), 2, 128, 128);
  auto options = options_for(dir / "src", dir / "out", "W8A8-FP8-DYNAMIC");
  options.shard_size = 40000;  // a 128x128 fp8 weight is 16 KiB
  auto exporter = make_exporter(options);
  experts.add_all(*exporter);
  exporter->finish(testing::summary_for(experts.names()));
  const json index = read_json(dir / "out" / "model.safetensors.index.json");
  std::set<std::string> shards;
  for (const auto& [name, file] : index["weight_map"].items()) {
    shards.insert(file.get<std::string>());
  }
  EXPECT_GT(shards.size(), 1u);
  io::SafetensorsCheckpoint ckpt(dir / "out");
  const std::string w2 = "model.layers.0.block_sparse_moe.experts.0.w2";
  EXPECT_EQ(ckpt.entry(w2 + ".weight").dtype, io::DType::kF8E4M3);
  EXPECT_EQ(ckpt.entry(w2 + ".weight_scale").shape, (std::vector<int64_t>{128, 1}));
  EXPECT_FALSE(ckpt.contains(w2 + ".input_scale"));  // dynamic activations
  EXPECT_EQ(read_json(dir / "out" / "config.json")["quantization_config"]["format"],
            "float-quantized");
}

TEST(ExportCheckpoint, Nvfp4GlobalScalesAndSharedInputs) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(quant::preset_scheme("NVFP4"), 2, 128, 64);
  auto exporter = make_exporter(options_for(dir / "src", dir / "out", "NVFP4"));
  experts.add_all(*exporter);
  exporter->finish(testing::summary_for(experts.names()));
  io::SafetensorsCheckpoint ckpt(dir / "out");
  const std::string e = "model.layers.0.block_sparse_moe.experts.";
  EXPECT_TRUE(at::equal(ckpt.tensor(e + "0.w1.weight_global_scale"),
                        ckpt.tensor(e + "0.w3.weight_global_scale")));
  EXPECT_TRUE(at::equal(ckpt.tensor(e + "0.w2.input_global_scale"),
                        ckpt.tensor(e + "1.w2.input_global_scale")));
  EXPECT_EQ(ckpt.entry(e + "1.w2.weight_packed").shape, (std::vector<int64_t>{128, 32}));
}

TEST(ExportCheckpoint, ModelOptNvfp4) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  TinyExperts experts(quant::preset_scheme("NVFP4"), 2, 128, 64);
  auto exporter =
      make_exporter(options_for(dir / "src", dir / "out", "NVFP4", ExportFormat::kModelOpt));
  experts.add_all(*exporter);
  exporter->finish(testing::summary_for(experts.names()));
  io::SafetensorsCheckpoint ckpt(dir / "out");
  const std::string w1 = "model.layers.0.block_sparse_moe.experts.0.w1";
  for (const char* suffix : {"weight", "weight_scale", "weight_scale_2", "input_scale"}) {
    EXPECT_TRUE(ckpt.contains(w1 + "." + suffix)) << suffix;
  }
  EXPECT_EQ(ckpt.entry(w1 + ".weight").dtype, io::DType::kU8);
  const json hf = read_json(dir / "out" / "hf_quant_config.json");
  EXPECT_EQ(hf["producer"], (json{{"name", "modelopt"}, {"version", "0.47.0"}}));
  EXPECT_EQ(hf["quantization"]["quant_algo"], "NVFP4");
  EXPECT_EQ(hf["quantization"]["group_size"], 16);
  EXPECT_TRUE(hf["quantization"]["kv_cache_quant_algo"].is_null());
  EXPECT_EQ(hf["quantization"]["exclude_modules"],
            json::array({"lm_head", "model.layers.0.block_sparse_moe.gate"}));
  const json config = read_json(dir / "out" / "config.json");
  EXPECT_EQ(config["quantization_config"]["quant_method"], "modelopt");
  EXPECT_EQ(config["quantization_config"]["quant_algo"], "NVFP4");
  EXPECT_EQ(config["quantization_config"]["ignore"], hf["quantization"]["exclude_modules"]);
}

TEST(ExportCheckpoint, OverwriteReplacesOnlyWhenComplete) {
  ScratchDir dir;
  testing::make_source(dir / "src");
  fs::create_directories(dir / "out");
  io::testing::write_bytes(dir / "out" / "old.txt", "old");
  TinyExperts experts(quant::preset_scheme("W8A8-FP8-DYNAMIC"), 1, 128, 128);
  auto options = options_for(dir / "src", dir / "out", "W8A8-FP8-DYNAMIC");
  options.overwrite = true;
  {
    auto exporter = make_exporter(options);
    experts.add_all(*exporter);
    // destroyed without finish(): the old output stays as it was
  }
  EXPECT_EQ(read_bytes(dir / "out" / "old.txt"), "old");
  EXPECT_EQ(siblings(dir.path(), "out"), std::vector<std::string>{"out"});
  {
    auto exporter = make_exporter(options);
    experts.add_all(*exporter);
    exporter->finish(testing::summary_for(experts.names()));
  }
  EXPECT_FALSE(fs::exists(dir / "out" / "old.txt"));
  EXPECT_TRUE(fs::exists(dir / "out" / "model.safetensors"));
  EXPECT_EQ(siblings(dir.path(), "out"), std::vector<std::string>{"out"});
}

}  // namespace
}  // namespace moeq::exporting
