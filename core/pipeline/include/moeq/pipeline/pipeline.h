// The layer-sequential pipeline (DESIGN.md, "The pipeline"): embed the calibration tokens, then
// for each decoder layer load its weights from the mapped checkpoint, attach the adapters, run
// the calibration activations (observers see them), compute the scales, rerun the layer
// quantized to produce the next layer's inputs, hand the layer's quantized projections to the
// exporter and release the layer. Peak memory is one layer plus activations: a device layer's
// weights are held once (each projection's quantized values replace its original ones as soon
// as it is exported).
//
// When evaluation tokens are given, two more streams run alongside, layer by layer: the original
// model and the quantized one (fake quantization in process), so the end of the run can report
// the KL divergence of their next-token distributions without a second pass over the model.
#pragma once

#include <moeq/export/exporter.h>
#include <moeq/io/hf_config.h>
#include <moeq/pipeline/calibration.h>
#include <moeq/pipeline/layer_session.h>
#include <moeq/pipeline/stages.h>
#include <moeq/runtime/causal_lm.h>

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moeq::pipeline {

using ModelBuilder =
    std::function<std::unique_ptr<runtime::CausalLM>(const io::HfConfig& config,
                                                     std::shared_ptr<runtime::WeightSource> weights,
                                                     const runtime::RuntimeOptions& options)>;

struct PipelineOptions {
  std::filesystem::path model_dir;
  runtime::Placement placement;
  TargetRules rules;
  CalibrationOptions calibration;
  std::vector<at::Tensor> calibration_batches;  // input_ids [b, S] int64 each
  std::vector<at::Tensor> eval_batches;         // optional held-out input_ids [b, S]
  // The next layer sees the quantized layer's output (errors compound as at inference); false:
  // it sees the original layer's output.
  bool propagate_quantized = true;
  // Keep calibration activations on the host between layers (models whose activations do not
  // fit next to a layer on the GPU).
  bool offload_activations = false;
  // Leave the layers the model does not run (CausalLM::excluded_prefixes, an MTP layer) out of
  // the checkpoint instead of copying them through.
  bool drop_excluded = false;
  exporting::ExportOptions export_options;
  // The stages a hard-tier plugin takes over for this architecture (stages.h); null: defaults.
  std::shared_ptr<const PipelineStages> stages;
  bool write_checkpoint = true;  // false: calibrate, quantize and evaluate only
  // With export_options.resumable: after each layer a journal records what a killed run needs to
  // continue (journal.h), and export_options.resume continues from it. The salt joins the
  // fingerprint a resumed run must match (the caller's version and settings it alone knows).
  std::string journal_salt;
  // Called with each quantized projection's fake-quantized weight (its stored dtype's values, in
  // the compute dtype) while its layer is resident: tests compare the engines' decompression
  // against it.
  std::function<void(const std::string& module, const at::Tensor& fake_weight)> on_fake_weight;
};

// One quantized projection, for the report.
struct ProjectionResult {
  std::string module;
  std::string block;  // "" outside routed experts
  int64_t expert = -1;
  std::string kind;  // "gate", "up", "down", "q", ...
  double weight_error = 0.0;
  int64_t rows_seen = 0;
  bool fallback = false;
};

// One side's expert choices in an MoE block on the evaluation tokens (row t: token t of the
// evaluation batches concatenated, each [b, S] flattened row-major); CPU.
struct Routes {
  at::Tensor topk_ids;      // [tokens, k] int32
  at::Tensor topk_weights;  // [tokens, k] fp32: the weights the experts' outputs are combined with
};

// How the quantized model's expert choices compare with the original's, token by token.
struct RoutingAgreement {
  int64_t same_set = 0;                // tokens whose top-k set is unchanged
  int64_t overlap = 0;                 // sum over tokens of |A ∩ B| (divide by tokens * k)
  int64_t top1_changed = 0;            // tokens whose highest-weight expert changed
  std::vector<int64_t> expert_tokens;  // (token, slot) picks per expert on the quantized side
};

// One MoE block's routing on the evaluation tokens (moeq eval, and moeq quantize with an
// evaluation). `own`: the quantized layer run on the original's inputs to the layer (its own
// attention and router error); `carried`: on the quantized model's own stream (what an engine
// running the checkpoint routes).
struct RoutingResult {
  std::string block;
  int64_t tokens = 0;
  int64_t top_k = 0;
  int64_t num_experts = 0;
  std::vector<int64_t> reference_expert_tokens;
  RoutingAgreement own;
  RoutingAgreement carried;
  // The choices themselves, kept only when asked (--save-routing).
  std::optional<Routes> reference_routes, own_routes, carried_routes;
};

// Where a layer's time went (seconds, the device synchronised at each boundary): loading its
// weights (read, dequantized from the source format, placed), calibrating (the original layer's
// forward under the observers), quantizing (scales, fake weights, export of each projection), and
// forwarding (the original evaluation stream, the quantized layer's reruns, the comparisons).
struct LayerPhases {
  double load = 0.0;
  double calibrate = 0.0;
  double quantize = 0.0;
  double forward = 0.0;
};

struct LayerResult {
  int64_t index = 0;
  bool skipped = false;  // the stages skipped it: run in its original precision only
  double seconds = 0.0;
  LayerPhases phases;
  int64_t tokens = 0;
  // The GPU's caching allocator during the layer (load to release), 0 on the CPU: the most bytes
  // in live tensors, and the most the allocator held (its cache included).
  int64_t peak_device_bytes = 0;
  int64_t peak_device_reserved_bytes = 0;
  int64_t weight_bytes = 0;  // the layer's resident weights once loaded (compute dtype)
  std::vector<ExpertCoverage> coverage;
  std::vector<ProjectionResult> projections;
  // Relative RMS error of the quantized layer's output against the original layer's output on
  // the same (calibration) inputs.
  double output_error = 0.0;
  // The same on the evaluation stream (inputs that themselves carry the earlier layers' error).
  double eval_hidden_error = 0.0;
  // Per MoE block, when evaluating (empty for a dense layer).
  std::vector<RoutingResult> routing;
};

struct EvalResult {
  int64_t tokens = 0;
  double kl_mean = 0.0, kl_p50 = 0.0, kl_p90 = 0.0, kl_p99 = 0.0, kl_max = 0.0;
  double ppl_reference = 0.0, ppl_quantized = 0.0;
  double top1_agreement = 0.0;
  at::Tensor logits_reference;  // [N, S, V] fp32, CPU (kept only when asked)
  at::Tensor logits_quantized;
};

struct PipelineResult {
  std::string architecture;
  int64_t calibration_tokens = 0;
  std::vector<LayerResult> layers;
  std::optional<EvalResult> eval;
  double seconds = 0.0;
  int64_t peak_device_bytes = 0;  // the largest layer's, or the embedding/evaluation's; CUDA only
  int64_t quantized_parameters = 0;
  int64_t quantized_bytes = 0;  // what the quantized projections take in the output
  int64_t output_bytes = 0;
  std::filesystem::path output;
  std::vector<std::string> ignored_modules;
};

// Called as the run goes: a layer started (total batches), a batch finished, a layer finished
// (after the journal recorded it, in a resumable run). A resumed run starts at its first
// unfinished layer; `resumed` is told how many were done.
struct PipelineProgress {
  std::function<void(int64_t layers_done, int64_t num_layers)> resumed;
  std::function<void(int64_t layer, int64_t num_layers, int64_t batches)> layer_begin;
  std::function<void(int64_t batch_done, int64_t tokens_done)> batch_done;
  std::function<void(const LayerResult&)> layer_end;
};

class Pipeline {
 public:
  Pipeline(PipelineOptions options, ModelBuilder build, LayerSession::AdapterLookup adapters);
  PipelineResult run(const PipelineProgress& progress = {});
  // Keep the evaluation logits in the result (tests, --save-eval-logits).
  void keep_eval_logits(bool keep) { keep_eval_logits_ = keep; }
  // Keep every token's expert choices in the layers' routing results (--save-routing).
  void keep_routes(bool keep) { keep_routes_ = keep; }

 private:
  PipelineOptions options_;
  ModelBuilder build_;
  LayerSession::AdapterLookup adapters_;
  bool keep_eval_logits_ = false;
  bool keep_routes_ = false;
};

// KL(reference || quantized) per position from two logits tensors [..., V] (fp32 math).
at::Tensor kl_divergence(const at::Tensor& reference_logits, const at::Tensor& quantized_logits);

}  // namespace moeq::pipeline
