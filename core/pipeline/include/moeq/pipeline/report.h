// The report of a quantization run: what people would rather see than read. JSON (the numbers)
// and a self-contained HTML page (inline SVG, no scripts, no network): per layer and expert the
// routed token share and the tokens seen, experts that got few or no routed tokens highlighted,
// per-expert weight error, per-layer output error, and the evaluation (KL divergence, perplexity,
// top-1 agreement, and per MoE block how the quantized model's expert choices moved; the schema
// is in docs/evaluation.md). summary_text() is what the command prints at the end.
#pragma once

#include <moeq/pipeline/pipeline.h>

#include <nlohmann/json.hpp>

#include <filesystem>
#include <string>

namespace moeq::pipeline {

struct RunInfo {
  std::string model;
  std::string scheme;
  std::string format;
  std::string device;
  std::string dtype;
  std::string calibration;  // the data file
  std::string mode;         // calibration mode
  int64_t min_tokens = 0;
  int64_t source_bytes = 0;  // tensor bytes of the source checkpoint
  int64_t peak_host_bytes = 0;
};

class Report {
 public:
  Report(const PipelineResult& result, const RunInfo& info);

  const nlohmann::json& data() const { return json_; }
  void write_json(const std::filesystem::path& file) const;
  void write_html(const std::filesystem::path& file) const;
  std::string html() const;
  std::string summary_text() const;

  // An expert counts as starved when it got fewer routed tokens than this (min(10, 1% of the
  // block's tokens)) or fell back to weight-only statistics.
  static int64_t starved_threshold(int64_t block_tokens);

 private:
  nlohmann::json json_;
};

}  // namespace moeq::pipeline
