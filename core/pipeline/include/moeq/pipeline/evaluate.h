// moeq eval: a quantized checkpoint against its original on held-out tokens.
//
// The quantized side is read as a source of the model's own weights: a compressed-tensors or
// ModelOpt export (moeq's, or a vendor's quantized release) is decompressed as each layer is
// loaded, with the decompression compressed-tensors and ModelOpt define, and every quantized
// projection's input goes through the activation quantization the checkpoint declares (dynamic
// per token, or the stored input_scale / input_global_scale). Both models run layer by layer,
// one layer of each resident, so the evaluation fits wherever quantization did; a fused-expert
// model's stacks are rebuilt from the export's per-expert projections.
//
// The result is a PipelineResult (so the report's JSON and HTML apply): per layer the relative
// error of the quantized model's hidden states against the original's, per MoE block how its
// expert choices changed (on the original's inputs to the layer and on the quantized stream), per
// projection the relative weight error of the decompressed weight, and at the end the next-token
// comparison (true KL divergence with percentiles, both perplexities, top-1 agreement).
#pragma once

#include <moeq/pipeline/pipeline.h>
#include <moeq/quant/tensor_quantizer.h>
#include <moeq/runtime/weight_source.h>

#include <filesystem>
#include <map>
#include <memory>
#include <set>
#include <string>

namespace moeq::pipeline {

// A quantized checkpoint read as the model's weights.
struct QuantizedCheckpoint {
  // The model's tensor names; each quantized projection's `<module>.weight` is decompressed on
  // get() into `dtype`; everything else is served as stored.
  std::shared_ptr<runtime::WeightSource> source;
  // Quantized modules, with the activation quantizer of their input (null: weight-only).
  std::map<std::string, std::shared_ptr<quant::TensorQuantizer>> modules;
  std::string format;       // "compressed-tensors pack-quantized", "modelopt NVFP4"
  std::string description;  // the scheme in one line, for the report
  at::ScalarType dtype = at::kBFloat16;
};

// Reads `dir` (config.json with a compressed-tensors quantization_config, or
// hf_quant_config.json from ModelOpt). Errors name the file, key or tensor and the values.
QuantizedCheckpoint read_quantized_checkpoint(const std::filesystem::path& dir);

// True for a compressed-tensors checkpoint (config.json's quantization_config.quant_method) or a
// ModelOpt one (hf_quant_config.json). Other quantization_configs (DeepSeek's native "fp8") are
// the model builders' business.
bool is_quantized_checkpoint(const std::filesystem::path& dir);

// The checkpoint in `dir` as the model's weights: decompressed when it is a quantized checkpoint
// (a vendor's release can then be quantized again, or evaluated), else the stored tensors.
std::shared_ptr<runtime::WeightSource> open_checkpoint(const std::filesystem::path& dir);

struct CheckpointEvalOptions {
  std::filesystem::path model_dir;      // the original checkpoint
  std::filesystem::path quantized_dir;  // the quantized one
  runtime::Placement placement;
  std::vector<at::Tensor> eval_batches;  // input_ids [b, S] each
  bool keep_logits = false;
  bool keep_routes = false;  // every token's expert choices in the layers' routing results
};

// `checkpoint` is read_quantized_checkpoint(options.quantized_dir).
PipelineResult evaluate_checkpoint(const CheckpointEvalOptions& options,
                                   const QuantizedCheckpoint& checkpoint,
                                   const ModelBuilder& build,
                                   const PipelineProgress& progress = {});

}  // namespace moeq::pipeline
