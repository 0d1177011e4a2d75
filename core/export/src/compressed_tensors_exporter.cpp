// compressed-tensors 0.20.0 checkpoints (vLLM, SGLang, transformers): each quantized module's
// tensors under the checkpoint's own names with the suffixes the scheme's CompressionFormat
// writes (TensorQuantizer::quantize_weight and activation_tensors), and config.json's
// quantization_config exactly as ModelCompressor.update_config writes it.
#include <moeq/core/error.h>

#include "checkpoint_exporter.h"

namespace moeq::exporting {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using nlohmann::ordered_json;

constexpr const char* kCompressedTensorsVersion = "0.20.0";

class CompressedTensorsExporter final : public CheckpointExporter {
 public:
  explicit CompressedTensorsExporter(const ExportOptions& options)
      : CheckpointExporter(options,
                           SharedScales({"weight_global_scale"},
                                        {"input_scale", "input_zero_point", "input_global_scale"})),
        format_(options.scheme.compression_format()) {
    MOEQ_CHECK(format_ != quant::CompressionFormat::kDense &&
                   format_ != quant::CompressionFormat::kMixedPrecision,
               "scheme '{}': compressed-tensors' {} format is not a quantized format moeq writes",
               options.scheme_name, quant::to_string(format_));
  }

 private:
  quant::QuantizedTensors quantize(const at::Tensor& weight,
                                   quant::TensorQuantizer& weight_quantizer,
                                   quant::TensorQuantizer* input_quantizer) override {
    quant::QuantizedTensors tensors = weight_quantizer.quantize_weight(weight, format_);
    if (input_quantizer != nullptr) {
      for (auto& [suffix, t] : input_quantizer->activation_tensors(weight.scalar_type())) {
        MOEQ_INTERNAL_ASSERT(!tensors.contains(suffix), "'{}' from both quantizers", suffix);
        tensors[suffix] = t;
      }
    }
    return tensors;
  }

  std::optional<quant::CompressionFormat> storage_format() const override { return format_; }

  // ModelCompressor.update_config: {version, quant_method, sparsity_config, transform_config,
  // **QuantizationConfig.model_dump(exclude=["quant_method"])}, and the whole config.json
  // dumped with sort_keys=True, indent=2.
  void write_configs(const fs::path& directory,
                     const ExportSummary& summary,
                     const std::vector<std::string>& /*quantized*/) override {
    // infer_model_format sets each quantized module's scheme.format before the config is built.
    json group = options().scheme.to_json();
    group["format"] = std::string(quant::to_string(format_));
    json qc = {
        {"version", kCompressedTensorsVersion},  {"quant_method", "compressed-tensors"},
        {"sparsity_config", json::object()},     {"transform_config", json::object()},
        {"config_groups", {{"group_0", group}}}, {"format", std::string(quant::to_string(format_))},
        {"quantization_status", "compressed"},   {"global_compression_ratio", nullptr},
        {"ignore", summary.ignored_modules},     {"kv_cache_scheme", nullptr},
        {"moe_sparsity_config", nullptr},
    };
    // nlohmann::json keeps objects sorted: sort_keys=True.
    json config = json::parse(read_json_file(options().model_dir / "config.json").dump());
    config["quantization_config"] = std::move(qc);
    if (!summary.metadata.empty()) {
      json moeq = json::object();
      for (const auto& [key, value] : summary.metadata) {
        moeq[key] = value;
      }
      config["moeq"] = std::move(moeq);
    }
    write_json_file(directory / "config.json", ordered_json::parse(config.dump()), 2);
  }

  quant::CompressionFormat format_;
};

}  // namespace

std::unique_ptr<Exporter> make_compressed_tensors_exporter(const ExportOptions& options) {
  return std::make_unique<CompressedTensorsExporter>(options);
}

}  // namespace moeq::exporting
