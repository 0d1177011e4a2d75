// The journal of a resumable run (pipeline.h): after each finished layer the pipeline records, in
// the exporter's journal folder, everything a killed run needs to continue with the next layer
// and end with the same bytes as a run that was never interrupted:
//   - hidden-<layer>.safetensors: the activations entering the next layer (calibration stream,
//     and both evaluation streams when evaluating);
//   - the exporter's state (shards written, pending tensors spilled, shared scales seen);
//   - the finished layers' results (for the report) and the weights quantized so far;
//   - a fingerprint of everything that decides the output (model, scheme, rules, calibration and
//     evaluation tokens, device, dtype, export format): resuming under another is an error that
//     names the first field that differs.
// journal.json is replaced atomically, and last: a kill at any point leaves the previous record
// intact and every file it names in place.
#pragma once

#include <moeq/pipeline/pipeline.h>

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>

namespace moeq::pipeline::detail {

// What decides the output of a run, field by field.
nlohmann::ordered_json run_fingerprint(const PipelineOptions& options,
                                       const std::string& architecture,
                                       const runtime::Placement& placement);

struct JournalRecord {
  int64_t layers_done = 0;
  std::string exporter_state;                // Exporter::checkpoint()'s JSON text
  std::map<std::string, at::Tensor> hidden;  // "calib.<b>", "eval_ref.<b>", "eval_quant.<b>"
  std::vector<LayerResult> layers;           // the finished layers' results
  std::set<std::string> quantized_weights;   // checkpoint tensors written quantized
  int64_t quantized_parameters = 0;
  int64_t quantized_bytes = 0;
};

class Journal {
 public:
  Journal(std::filesystem::path directory, nlohmann::ordered_json fingerprint);

  // The last record, checked against this run's fingerprint; nullopt when none was committed.
  std::optional<JournalRecord> load() const;
  // Writes the record's hidden states, then journal.json (atomically), then removes the files of
  // the previous record that this one does not name.
  void commit(const JournalRecord& record, const std::string& tag);

  const std::filesystem::path& directory() const { return directory_; }

 private:
  std::filesystem::path directory_;
  nlohmann::ordered_json fingerprint_;
};

}  // namespace moeq::pipeline::detail
