// What both exporters share: the checkpoint is streamed into a hidden temporary directory next to
// the output (".<name>.moeq-partial-<pid>", or ".<name>.moeq-partial" when resumable), each
// quantized module is checked against the engines' invariants before its tensors are written, and
// finish() renames the directory into place only once the shards, the index, config.json and the
// copied side files are complete. Any error, and destruction without finish(), removes the
// temporary directory (a resumable export keeps it, with its journal); the output's final name
// never holds a partial checkpoint.
#pragma once

#include <moeq/export/exporter.h>

#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>

#include "shared_scales.h"

namespace moeq::io {
class SafetensorsWriter;
}

namespace moeq::exporting {

class CheckpointExporter : public Exporter {
 public:
  ~CheckpointExporter() override;

  void add_quantized(const std::string& module,
                     const at::Tensor& weight,
                     quant::TensorQuantizer& weight_quantizer,
                     quant::TensorQuantizer* input_quantizer,
                     const at::Tensor& bias) override;
  void add_tensor(const std::string& name, const at::Tensor& tensor) override;
  std::filesystem::path finish(const ExportSummary& summary) override;
  int64_t bytes_written() const override { return bytes_; }
  std::filesystem::path journal_directory() const override;
  bool resuming() const override { return resuming_; }
  std::string checkpoint(const std::string& tag) override;
  void restore(std::string_view state) override;
  void prune() override;

 protected:
  CheckpointExporter(const ExportOptions& options, SharedScales shared);

  // The module's tensors (suffix -> tensor) in the format.
  virtual quant::QuantizedTensors quantize(const at::Tensor& weight,
                                           quant::TensorQuantizer& weight_quantizer,
                                           quant::TensorQuantizer* input_quantizer) = 0;
  // The compressed-tensors storage format, nullopt for ModelOpt (vllm_constraints.h).
  virtual std::optional<quant::CompressionFormat> storage_format() const = 0;
  // Writes the format's config files into `directory`: config.json (from the source's) and any
  // of its own. `quantized` are the modules add_quantized got, in order.
  virtual void write_configs(const std::filesystem::path& directory,
                             const ExportSummary& summary,
                             const std::vector<std::string>& quantized) = 0;

  const ExportOptions& options() const { return options_; }

 private:
  void add(const std::string& name, const at::Tensor& tensor);
  void check_summary(const ExportSummary& summary) const;
  void copy_side_files() const;
  void rename_into_place();

  ExportOptions options_;
  std::filesystem::path output_;
  std::filesystem::path temp_;
  std::unique_ptr<io::SafetensorsWriter> writer_;
  SharedScales shared_;
  std::set<std::string> names_;
  std::vector<std::string> quantized_;
  std::set<std::string> quantized_set_;
  int64_t bytes_ = 0;
  bool resuming_ = false;
  bool checkpointed_ = false;
  std::set<std::filesystem::path> journal_keep_;  // files the last checkpoint() needs
  bool failed_ = false;
  bool finished_ = false;
};

// config.json and other JSON files, read and written as Python's json module does.
nlohmann::ordered_json read_json_file(const std::filesystem::path& file);
void write_json_file(const std::filesystem::path& file,
                     const nlohmann::ordered_json& json,
                     int indent);

std::unique_ptr<Exporter> make_compressed_tensors_exporter(const ExportOptions& options);
std::unique_ptr<Exporter> make_modelopt_exporter(const ExportOptions& options);

}  // namespace moeq::exporting
