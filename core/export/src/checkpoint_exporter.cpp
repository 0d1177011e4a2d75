// The compressed-tensors and ModelOpt exporters (exporter.h). Both stream tensors into the
// sharded writer inside a temporary directory next to the output, check the engines' invariants
// as modules arrive (and again over all of them in finish()), and rename the directory into place
// only when everything is written.
#include <moeq/core/error.h>
#include <moeq/core/log.h>
#include <moeq/export/exporter.h>
#include <moeq/io/safetensors_writer.h>
#include <moeq/quant/modelopt.h>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <unistd.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <map>
#include <regex>
#include <set>

namespace moeq::exporting {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using quant::QuantizedTensors;

constexpr const char* kCompressedTensorsVersion = "0.20.0";  // the version whose format we write
constexpr const char* kModelOptVersion = "0.47.0";

// Expert e's module with the index replaced: "...experts.*.w1"; "" outside routed experts.
std::string expert_group(const std::string& module) {
  static const std::regex expert(R"(\.experts\.(\d+)\.)");
  std::smatch m;
  if (!std::regex_search(module, m, expert)) {
    return {};
  }
  return module.substr(0, m.position(0)) + ".experts.*." +
         module.substr(m.position(0) + m.length(0));
}

// gate -> "gate", up -> "up" by the last component's name (gate_proj/up_proj or w1/w3).
std::string fused_role(const std::string& module) {
  const auto leaf = module.substr(module.rfind('.') + 1);
  if (leaf == "gate_proj" || leaf == "w1")
    return "gate";
  if (leaf == "up_proj" || leaf == "w3")
    return "up";
  return {};
}

std::string parent_of(const std::string& module) {
  return module.substr(0, module.rfind('.'));
}

std::string shape_of(const at::Tensor& t) {
  return fmt::format("[{}]", fmt::join(t.sizes(), ", "));
}

void write_text(const fs::path& file, const std::string& text) {
  std::ofstream out(file, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  MOEQ_CHECK(out.good(), "writing '{}' failed (disk full or not writable?)", file.string());
}

json read_json(const fs::path& file) {
  std::ifstream in(file);
  MOEQ_CHECK(in.good(), "cannot read '{}'", file.string());
  try {
    return json::parse(in);
  } catch (const json::parse_error& e) {
    MOEQ_CHECK(false, "{}: malformed JSON ({})", file.string(), e.what());
  }
  return {};
}

class CheckpointExporter : public Exporter {
 public:
  explicit CheckpointExporter(const ExportOptions& options) : options_(options) {
    const fs::path output = fs::absolute(options.output).lexically_normal();
    std::error_code ec;
    MOEQ_CHECK(!output.filename().empty(), "the output '{}' names no directory", output.string());
    MOEQ_CHECK(options.overwrite || !fs::exists(output, ec),
               "the output '{}' already exists; remove it or pass --overwrite (it is replaced "
               "only once the new checkpoint is complete)",
               output.string());
    MOEQ_CHECK(options.model_dir != output, "the output '{}' is the source model directory",
               output.string());
    fs::create_directories(output.parent_path(), ec);
    MOEQ_CHECK(!ec, "cannot create '{}': {}", output.parent_path().string(), ec.message());
    output_ = output;
    temp_ = output.parent_path() /
            fmt::format(".{}.moeq-partial-{}", output.filename().string(), ::getpid());
    fs::remove_all(temp_, ec);
    fs::create_directories(temp_, ec);
    MOEQ_CHECK(!ec, "cannot create '{}': {}", temp_.string(), ec.message());
    io::SafetensorsWriterOptions writer_options;
    writer_options.max_shard_bytes = static_cast<uint64_t>(options.shard_size);
    writer_options.metadata = {{"format", "pt"}};
    writer_ = std::make_unique<io::SafetensorsWriter>(temp_, writer_options);
  }

  ~CheckpointExporter() override {
    if (!finished_) {
      writer_.reset();  // removes its own temporaries
      std::error_code ec;
      fs::remove_all(temp_, ec);
    }
  }

  void add_quantized(const std::string& module,
                     const at::Tensor& weight,
                     quant::TensorQuantizer& weight_quantizer,
                     quant::TensorQuantizer* input_quantizer,
                     const at::Tensor& bias) override {
    MOEQ_CHECK(weight.dim() == 2, "'{}.weight' must be [out, in] to export, got {}", module,
               shape_of(weight));
    check_engine_constraints(module, weight);
    QuantizedTensors tensors = quantize(module, weight, weight_quantizer, input_quantizer);
    check_shared_scales(module, tensors);
    for (const auto& [suffix, tensor] : tensors) {
      add(module + "." + suffix, tensor);
    }
    if (bias.defined()) {
      add(module + ".bias", bias);
    }
    quantized_.insert(module);
  }

  void add_tensor(const std::string& name, const at::Tensor& tensor) override { add(name, tensor); }

  fs::path finish(const ExportSummary& summary) override {
    for (const auto& module : summary.expected_quantized) {
      MOEQ_CHECK(quantized_.contains(module),
                 "'{}' was to be quantized but reached the exporter unquantized; no expert may be "
                 "left in high precision",
                 module);
    }
    writer_->finish();
    json config = read_json(options_.model_dir / "config.json");
    write_config(config, summary);
    write_text(temp_ / "config.json", config.dump(2, ' ', false) + "\n");
    copy_side_files();
    std::error_code ec;
    if (fs::exists(output_, ec)) {
      // Replace only now that the new checkpoint is complete.
      const fs::path old = output_.parent_path() /
                           fmt::format(".{}.moeq-old-{}", output_.filename().string(), ::getpid());
      fs::rename(output_, old, ec);
      MOEQ_CHECK(!ec, "cannot move the old '{}' aside: {}", output_.string(), ec.message());
      fs::rename(temp_, output_, ec);
      MOEQ_CHECK(!ec, "cannot rename '{}' to '{}': {}", temp_.string(), output_.string(),
                 ec.message());
      fs::remove_all(old, ec);
    } else {
      fs::rename(temp_, output_, ec);
      MOEQ_CHECK(!ec, "cannot rename '{}' to '{}': {}", temp_.string(), output_.string(),
                 ec.message());
    }
    finished_ = true;
    return output_;
  }

  int64_t bytes_written() const override { return bytes_; }

 protected:
  virtual QuantizedTensors quantize(const std::string& module,
                                    const at::Tensor& weight,
                                    quant::TensorQuantizer& weight_quantizer,
                                    quant::TensorQuantizer* input_quantizer) = 0;
  virtual void write_config(json& config, const ExportSummary& summary) = 0;
  // The names of the tensors that must agree across fused projections and across experts.
  virtual std::vector<std::string> fused_scale_names() const = 0;
  virtual std::vector<std::string> shared_input_names() const = 0;

  const ExportOptions& options() const { return options_; }
  const fs::path& temp() const { return temp_; }

 private:
  void add(const std::string& name, const at::Tensor& tensor) {
    MOEQ_CHECK(names_.insert(name).second, "tensor '{}' is exported twice", name);
    writer_->add(name, tensor);
    bytes_ += static_cast<int64_t>(tensor.nbytes());
  }

  // vLLM's kernel constraints (../shared/reference/vllm_stack.md C2) for the scheme.
  void check_engine_constraints(const std::string& module, const at::Tensor& weight) {
    const auto& w = *options_.scheme.weights;
    const auto out = weight.size(0);
    const auto in = weight.size(1);
    const auto strategy = w.resolved_strategy();
    const bool expert = !expert_group(module).empty();
    if (strategy == quant::Strategy::kGroup || strategy == quant::Strategy::kTensorGroup) {
      const auto g = w.group_size.value_or(0);
      MOEQ_CHECK(g > 0 && in % g == 0,
                 "'{}.weight' {}: the input dimension {} is not divisible by the group size {}; "
                 "vLLM's grouped kernels need it (choose a scheme with another group size or "
                 "ignore the module)",
                 module, shape_of(weight), in, g);
    }
    if (strategy == quant::Strategy::kBlock && w.block_structure) {
      const auto [bn, bk] = *w.block_structure;
      MOEQ_CHECK(!expert || out % bn == 0,
                 "'{}.weight' {}: vLLM's FP8 block MoE kernels need the expert's output dimension "
                 "{} divisible by the block height {}",
                 module, shape_of(weight), out, bn);
    }
    if (expert && options_.scheme.input_activations && w.type == quant::QuantType::kInt &&
        w.num_bits == 8) {
      const auto& a = *options_.scheme.input_activations;
      MOEQ_CHECK(strategy == quant::Strategy::kChannel && a.is_dynamic(),
                 "'{}': vLLM's INT8 MoE kernels take only per-channel weights with dynamic "
                 "per-token activations",
                 module);
    }
  }

  // gate/up (w1/w3) of one MLP share fused scales; a block's experts share input scales.
  void check_shared_scales(const std::string& module, const QuantizedTensors& tensors) {
    const auto role = fused_role(module);
    if (!role.empty()) {
      for (const auto& name : fused_scale_names()) {
        const auto it = tensors.find(name);
        if (it == tensors.end())
          continue;
        const auto key = parent_of(module) + "#" + name;
        auto [seen, fresh] = fused_.try_emplace(key, module, it->second.to(at::kCPU));
        MOEQ_CHECK(fresh || at::equal(seen->second.second, it->second.to(at::kCPU)),
                   "'{}.{}' differs from '{}.{}': gate and up must share one global scale (vLLM "
                   "uses w1's for both)",
                   module, name, seen->second.first, name);
      }
    }
    const auto group = expert_group(module);
    if (!group.empty()) {
      for (const auto& name : shared_input_names()) {
        const auto it = tensors.find(name);
        if (it == tensors.end())
          continue;
        const auto key = group + "#" + name;
        auto [seen, fresh] = inputs_.try_emplace(key, module, it->second.to(at::kCPU));
        MOEQ_CHECK(fresh || at::equal(seen->second.second, it->second.to(at::kCPU)),
                   "'{}.{}' differs from '{}.{}': the experts of a block must share one input "
                   "scale per projection",
                   module, name, seen->second.first, name);
      }
    }
  }

  void copy_side_files() {
    for (const auto& entry : fs::directory_iterator(options_.model_dir)) {
      const auto name = entry.path().filename().string();
      if (!entry.is_regular_file() || name == "config.json" || name.ends_with(".safetensors") ||
          name == "model.safetensors.index.json" || name == "hf_quant_config.json" ||
          name.ends_with(".bin") || name.ends_with(".pt")) {
        continue;
      }
      std::error_code ec;
      fs::copy_file(entry.path(), temp_ / name, fs::copy_options::overwrite_existing, ec);
      MOEQ_CHECK(!ec, "cannot copy '{}' into the output: {}", entry.path().string(), ec.message());
    }
  }

  ExportOptions options_;
  fs::path output_;
  fs::path temp_;
  std::unique_ptr<io::SafetensorsWriter> writer_;
  std::set<std::string> names_;
  std::set<std::string> quantized_;
  std::map<std::string, std::pair<std::string, at::Tensor>> fused_;
  std::map<std::string, std::pair<std::string, at::Tensor>> inputs_;
  int64_t bytes_ = 0;
  bool finished_ = false;
};

class CompressedTensorsExporter final : public CheckpointExporter {
 public:
  explicit CompressedTensorsExporter(const ExportOptions& options)
      : CheckpointExporter(options), format_(options.scheme.compression_format()) {}

 private:
  QuantizedTensors quantize(const std::string& /*module*/,
                            const at::Tensor& weight,
                            quant::TensorQuantizer& weight_quantizer,
                            quant::TensorQuantizer* input_quantizer) override {
    auto tensors = weight_quantizer.quantize_weight(weight, format_);
    if (input_quantizer != nullptr) {
      for (auto& [suffix, t] : input_quantizer->activation_tensors(weight.scalar_type())) {
        tensors[suffix] = t;
      }
    }
    return tensors;
  }

  void write_config(json& config, const ExportSummary& summary) override {
    json group = options().scheme.to_json();
    json qc = {
        {"version", kCompressedTensorsVersion},
        {"quant_method", "compressed-tensors"},
        {"sparsity_config", json::object()},
        {"transform_config", json::object()},
        {"config_groups", {{"group_0", group}}},
        {"kv_cache_scheme", nullptr},
        {"format", std::string(quant::to_string(format_))},
        {"quantization_status", "compressed"},
        {"global_compression_ratio", nullptr},
        {"ignore", summary.ignored_modules},
        {"moe_sparsity_config", nullptr},
    };
    config["quantization_config"] = qc;
  }

  std::vector<std::string> fused_scale_names() const override { return {"weight_global_scale"}; }
  std::vector<std::string> shared_input_names() const override {
    return {"input_scale", "input_global_scale", "input_zero_point"};
  }

  quant::CompressionFormat format_;
};

class ModelOptExporter final : public CheckpointExporter {
 public:
  explicit ModelOptExporter(const ExportOptions& options) : CheckpointExporter(options) {
    const auto algo = quant::modelopt_quant_algo(options.scheme);
    MOEQ_CHECK(algo.has_value() && *algo != "FP8_PER_CHANNEL_PER_TOKEN",
               "scheme '{}' has no ModelOpt unified HF layout that moeq writes (modelopt: FP8, "
               "NVFP4, NVFP4A16 (W4A16_NVFP4), W4A16 (W4A16_AWQ)); export it as "
               "compressed-tensors",
               options.scheme_name);
    algo_ = quant::parse_modelopt_algo(*algo);
    algo_name_ = std::string(*algo);
  }

 private:
  QuantizedTensors quantize(const std::string& /*module*/,
                            const at::Tensor& weight,
                            quant::TensorQuantizer& weight_quantizer,
                            quant::TensorQuantizer* input_quantizer) override {
    return quant::export_modelopt(algo_, weight_quantizer, input_quantizer, weight);
  }

  void write_config(json& config, const ExportSummary& summary) override {
    json quantization = {{"quant_algo", algo_name_},
                         {"kv_cache_quant_algo", nullptr},
                         {"exclude_modules", summary.ignored_modules}};
    const auto& w = *options().scheme.weights;
    if (w.group_size) {
      quantization["group_size"] = *w.group_size;
    }
    json hf_quant = {{"producer", {{"name", "modelopt"}, {"version", kModelOptVersion}}},
                     {"quantization", quantization}};
    write_text(temp() / "hf_quant_config.json", hf_quant.dump(4) + "\n");
    json qc = quantization;
    qc["quant_method"] = "modelopt";
    qc["producer"] = hf_quant["producer"];
    config["quantization_config"] = qc;
  }

  std::vector<std::string> fused_scale_names() const override { return {"weight_scale_2"}; }
  std::vector<std::string> shared_input_names() const override { return {"input_scale"}; }

  quant::ModelOptAlgo algo_;
  std::string algo_name_;
};

}  // namespace

std::unique_ptr<Exporter> make_exporter(const ExportOptions& options) {
  MOEQ_CHECK(options.scheme.weights.has_value(), "the scheme to export quantizes no weights");
  MOEQ_CHECK(options.shard_size > 0, "shard size must be positive, got {}", options.shard_size);
  switch (options.format) {
    case ExportFormat::kCompressedTensors:
      return std::make_unique<CompressedTensorsExporter>(options);
    case ExportFormat::kModelOpt:
      return std::make_unique<ModelOptExporter>(options);
  }
  MOEQ_INTERNAL_ASSERT(false, "unknown export format");
  return nullptr;
}

}  // namespace moeq::exporting
