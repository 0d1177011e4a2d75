// How calibration tokens reach the experts of an MoE block, and what is counted while they do.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace moeq {

// all: every token passes through every expert (observers see all tokens), the block's output
// still combined with the real top-k weights. routed: each expert sees the tokens that picked
// it (inference). ratio: each token visits the ceil(ratio * E) experts it gives the highest
// router probability (at least its top-k); the output is still the routed one.
enum class CalibrationMode { kAll, kRouted, kRatio };

// "all", "routed", "ratio".
std::string_view to_string(CalibrationMode mode);

namespace pipeline {

struct CalibrationOptions {
  CalibrationMode mode = CalibrationMode::kAll;
  double ratio = 1.0;      // with kRatio: the fraction of experts each token visits
  int64_t min_tokens = 1;  // experts that saw fewer tokens fall back to weight-only statistics
};

// One MoE block's per-expert token counts over the whole calibration set.
struct ExpertCoverage {
  std::string block;            // the block's checkpoint prefix, "model.layers.3.mlp"
  std::string adapter;          // the adapter's type key
  std::vector<int64_t> routed;  // tokens whose top-k picked expert e
  std::vector<int64_t> seen;    // tokens expert e computed on during calibration
  std::vector<bool> fallback;   // seen[e] < min_tokens: weight-only statistics
  int64_t tokens = 0;           // tokens the block received

  explicit ExpertCoverage(std::string block_name, std::string adapter_key, int64_t num_experts);
  int64_t num_experts() const { return static_cast<int64_t>(routed.size()); }
};

}  // namespace pipeline
}  // namespace moeq
