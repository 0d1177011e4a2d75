#include "moeq/export/exporter.h"

#include <moeq/core/error.h>

#include "checkpoint_exporter.h"

namespace moeq::exporting {

std::string_view to_string(ExportFormat format) {
  switch (format) {
    case ExportFormat::kCompressedTensors:
      return "compressed-tensors";
    case ExportFormat::kModelOpt:
      return "modelopt";
  }
  return "unknown";
}

ExportFormat parse_export_format(std::string_view text) {
  if (text == "compressed-tensors") {
    return ExportFormat::kCompressedTensors;
  }
  if (text == "modelopt") {
    return ExportFormat::kModelOpt;
  }
  MOEQ_CHECK(false, "unknown export format '{}' (known: compressed-tensors, modelopt)", text);
  return ExportFormat::kCompressedTensors;
}

Exporter::~Exporter() = default;

std::unique_ptr<Exporter> make_exporter(const ExportOptions& options) {
  switch (options.format) {
    case ExportFormat::kCompressedTensors:
      return make_compressed_tensors_exporter(options);
    case ExportFormat::kModelOpt:
      return make_modelopt_exporter(options);
  }
  MOEQ_INTERNAL_ASSERT(false, "unknown export format {}", static_cast<int>(options.format));
  return nullptr;
}

}  // namespace moeq::exporting
