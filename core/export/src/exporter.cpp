#include "moeq/export/exporter.h"

#include <moeq/core/error.h>

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

}  // namespace moeq::exporting
