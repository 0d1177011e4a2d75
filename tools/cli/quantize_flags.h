// `moeq quantize`'s flags and its run, shared with `moeq eval --scheme` (fake quantization in
// process: the same pipeline without the export).
#pragma once

#include <c10/core/Device.h>
#include <c10/core/ScalarType.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace moeq::cli {

struct QuantizeFlags {
  std::string config;
  std::string model;
  std::string scheme;
  std::string output;
  std::string format;
  std::string device;
  std::string dtype;
  std::string calibration;
  std::optional<int64_t> samples;
  std::optional<int64_t> seq_len;
  std::optional<int64_t> batch_size;
  std::optional<int64_t> seed;
  std::string mode;
  std::optional<double> ratio;
  std::optional<int64_t> min_tokens;
  std::string eval;
  std::optional<int64_t> eval_samples;
  std::optional<int64_t> eval_seq_len;
  bool no_eval = false;
  std::vector<std::string> ignore;
  bool skip_attention = false;
  bool overwrite = false;
  bool resume = false;
  bool restart = false;
  std::string report;
  bool save_eval_logits = false;
  std::string save_routing;  // a .safetensors file: every evaluation token's expert choices
  bool save_fake_weights = false;
  std::vector<std::string> plugins;
  // moeq eval --scheme: calibrate, quantize in process and evaluate; no checkpoint is written
  // and `report` names the report's directory.
  bool evaluate_only = false;
};

// --device and --dtype: "auto" is the first CUDA device when there is one, and bfloat16 there
// (float32 on the CPU). Asking for CUDA without one is an error.
c10::Device pick_device(const std::string& text);
c10::ScalarType pick_dtype(const std::string& text, const c10::Device& device);

// Runs the pipeline for `flags` (recipe merged with the flags); returns the exit status.
int run_quantize(const QuantizeFlags& flags);

}  // namespace moeq::cli
