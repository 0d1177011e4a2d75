// ModelOpt's unified HF checkpoints (TensorRT-LLM, vLLM `--quantization modelopt`, SGLang):
// per-module `weight`, `weight_scale`, `weight_scale_2`, `input_scale` (pre_quant_scale for AWQ
// when given) from quant::export_modelopt, which matches ModelOpt 0.47.0's
// _export_quantized_weight byte for byte; hf_quant_config.json and config.json's
// quantization_config as ModelOpt's _write_hf_export_config writes them (modelopt_config.h).
#include <moeq/core/error.h>

#include <string_view>

#include "checkpoint_exporter.h"
#include "modelopt_config.h"

namespace moeq::exporting {
namespace {

namespace fs = std::filesystem;
using nlohmann::ordered_json;

constexpr quant::ModelOptAlgo kAlgos[] = {quant::ModelOptAlgo::kFp8, quant::ModelOptAlgo::kNvfp4,
                                          quant::ModelOptAlgo::kW4A16Nvfp4,
                                          quant::ModelOptAlgo::kW4A16Awq};

std::optional<quant::ModelOptAlgo> algo_named(std::string_view name) {
  for (const auto algo : kAlgos) {
    if (quant::to_string(algo) == name) {
      return algo;
    }
  }
  return std::nullopt;
}

// "W8A8-FP8 (FP8), NVFP4 (NVFP4), ...": the named schemes moeq writes in ModelOpt's format.
std::string supported_schemes() {
  std::string out;
  for (const auto& preset : quant::preset_schemes()) {
    if (!preset.modelopt_algo.empty() && algo_named(preset.modelopt_algo)) {
      out += fmt::format("{}{} ({})", out.empty() ? "" : ", ", preset.name, preset.modelopt_algo);
    }
  }
  return out;
}

quant::ModelOptAlgo algo_for(const ExportOptions& options) {
  const auto name = quant::modelopt_quant_algo(options.scheme);
  const auto algo = name ? algo_named(*name) : std::nullopt;
  MOEQ_CHECK(
      algo.has_value(),
      "scheme '{}' has no ModelOpt unified HF layout moeq writes{}; the ModelOpt quant_algos "
      "moeq writes are {}, for the schemes {}; export '{}' as compressed-tensors instead",
      options.scheme_name,
      name ? fmt::format(" (its ModelOpt quant_algo would be {})", *name) : std::string(),
      fmt::join(
          std::vector<std::string_view>{quant::to_string(kAlgos[0]), quant::to_string(kAlgos[1]),
                                        quant::to_string(kAlgos[2]), quant::to_string(kAlgos[3])},
          ", "),
      supported_schemes(), options.scheme_name);
  return *algo;
}

class ModelOptExporter final : public CheckpointExporter {
 public:
  explicit ModelOptExporter(const ExportOptions& options)
      : CheckpointExporter(options, SharedScales({"weight_scale_2"}, {"input_scale"})),
        algo_(algo_for(options)) {}

 private:
  quant::QuantizedTensors quantize(const at::Tensor& weight,
                                   quant::TensorQuantizer& weight_quantizer,
                                   quant::TensorQuantizer* input_quantizer) override {
    return quant::export_modelopt(algo_, weight_quantizer, input_quantizer, weight);
  }

  std::optional<quant::CompressionFormat> storage_format() const override { return std::nullopt; }

  // _write_hf_export_config: hf_quant_config.json (indent 4), then config.json with
  // quantization_config added (indent 4, the source's key order).
  void write_configs(const fs::path& directory,
                     const ExportSummary& summary,
                     const std::vector<std::string>& quantized) override {
    const auto& w = *options().scheme.weights;
    const int64_t group_size = w.group_size.value_or(0);
    std::vector<std::string> unquantized = summary.ignored_modules;
    unquantized.insert(unquantized.end(), summary.unquantized_embeddings.begin(),
                       summary.unquantized_embeddings.end());
    const ordered_json hf_quant = modelopt_hf_quant_config(
        algo_, group_size, summarize_exclude_modules(unquantized, quantized));
    write_json_file(directory / "hf_quant_config.json", hf_quant, 4);
    ordered_json config = read_json_file(options().model_dir / "config.json");
    config["quantization_config"] = modelopt_quantization_config(hf_quant);
    if (!summary.metadata.empty()) {
      ordered_json moeq = ordered_json::object();
      for (const auto& [key, value] : summary.metadata) {
        moeq[key] = value;
      }
      config["moeq"] = std::move(moeq);
    }
    write_json_file(directory / "config.json", config, 4);
  }

  quant::ModelOptAlgo algo_;
};

}  // namespace

std::unique_ptr<Exporter> make_modelopt_exporter(const ExportOptions& options) {
  return std::make_unique<ModelOptExporter>(options);
}

}  // namespace moeq::exporting
