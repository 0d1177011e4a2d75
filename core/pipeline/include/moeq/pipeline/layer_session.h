// LayerSession: one decoder layer's calibration and quantization. It decides which projections
// are quantized (TargetRules), holds their quantizers (one weight quantizer per projection, one
// input quantizer per input group: the experts of a block share one per projection), lets
// adapters attach to the layer's MoE modules, and provides the functional overrides the pipeline
// runs the layer under: observing during calibration, fake-quantizing during the quantized
// forward. Calls are matched by their WeightRef (the weight's checkpoint name), never by order.
#pragma once

#include <moeq/pipeline/calibration.h>
#include <moeq/pipeline/module_adapter.h>
#include <moeq/pipeline/stages.h>
#include <moeq/quant/scheme.h>
#include <moeq/quant/tensor_quantizer.h>
#include <moeq/runtime/blocks.h>
#include <moeq/runtime/fused_experts.h>

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

namespace moeq::pipeline {

// Which Linear weights are quantized. Routers, shared-expert gates and the LM head never are;
// everything else that `ignore` does not name is.
struct TargetRules {
  quant::QuantScheme scheme;
  // compressed-tensors' ignore entries: a module name ("model.layers.0.self_attn.q_proj") or
  // "re:<regex>" matched against the whole module name.
  std::vector<std::string> ignore;
  // Leave attention projections in high precision (expert-only recipes).
  bool skip_attention = false;
  // Leave shared experts and dense MLPs in high precision.
  bool skip_dense_mlp = false;
  // A hard-tier plugin's quantization stage: may leave more projections in high precision.
  const PipelineStages* stages = nullptr;
  std::shared_ptr<std::set<std::string>> stage_reasons_logged =
      std::make_shared<std::set<std::string>>();

  bool ignored(const std::string& module_name, fn::ProjKind kind, int64_t expert) const;
};

// One quantized projection: a Linear, or one expert's slice of a fused stack.
struct QuantTarget {
  std::string module;                 // "model.layers.0.block_sparse_moe.experts.3.w1"
  runtime::Linear* linear = nullptr;  // nullptr for a stack's slice
  // The checkpoint tensor the weight is read from: the Linear's weight or the 3-D stack.
  std::string weight_name;
  // For a slice of a fused stack: which one, and the experts module that knows the layout.
  std::optional<runtime::StackedProjection> slice;
  runtime::FusedExperts* fused = nullptr;
  at::Tensor bias;  // a slice's own bias [out] (source dtype) once calibrated; undefined else
  fn::ProjKind kind = fn::ProjKind::kOther;
  int64_t expert = fn::WeightRef::kNoExpert;
  std::string block;        // the MoE block's prefix for routed experts, "" otherwise
  std::string input_group;  // targets sharing one input quantizer
  std::unique_ptr<quant::TensorQuantizer> weight;
  quant::TensorQuantizer* input = nullptr;  // owned by the session; nullptr: no activations
  int64_t rows_seen = 0;                    // calibration rows this projection computed on
  at::Tensor source_weight;                 // the stored weight, on the compute device
  at::Tensor fake_weight;                   // after finish_calibration(), compute dtype
  double weight_error = 0.0;                // relative RMS error of fake_weight
};

class LayerSession {
 public:
  // Looks adapters up by module type; nullptr when none is registered.
  using AdapterLookup = std::function<ModuleAdapter*(const std::string& type)>;

  // `weights`: the checkpoint the layer was loaded from; weights are quantized in their stored
  // dtype (what the engines will decompress), not the compute dtype.
  LayerSession(runtime::DecoderLayer& layer,
               runtime::WeightSource& weights,
               const TargetRules& rules,
               const CalibrationOptions& calibration);
  ~LayerSession();
  LayerSession(const LayerSession&) = delete;
  LayerSession& operator=(const LayerSession&) = delete;

  // Attaches the registered adapter of every module in the layer that has one. Returns the
  // number of modules claimed.
  int64_t attach_adapters(const AdapterLookup& lookup);
  // Adapters call this to undo their attachment when the session ends (in reverse order).
  void on_detach(std::function<void()> undo);
  void detach_all();

  // ---- for adapters ----
  const CalibrationOptions& calibration() const { return calibration_; }
  runtime::DecoderLayer& layer() { return layer_; }
  ExpertCoverage& add_coverage(const std::string& block,
                               const std::string& adapter,
                               int64_t num_experts);

  // ---- for the pipeline ----
  // Observes every target's input (rows counted) and passes the call through.
  fn::Handlers calibration_handlers();
  // Computes scales: observes each weight, shares NVFP4 global scales between gate and up (and
  // q/k/v), marks experts under min_tokens as fallbacks (warning), fake-quantizes the weights.
  // A NaN or Inf is an error naming the tensor. Every target keeps its source_weight and
  // fake_weight.
  void finish_calibration();
  // The pipeline's lean path, which holds a layer's weights once: each target is handed to
  // `quantized` as soon as its fake_weight is computed (source_weight still set: export it then)
  // and its source_weight is dropped afterwards. Stored weights are read from the resident
  // parameters when they hold the stored values (same dtype), not copied again. With `in_place`,
  // fake-quantized values then overwrite the layer's resident weights on a device (never a CPU
  // parameter, which may be a view of the mapped checkpoint): after this the layer computes
  // quantized even without the override, and the original weights are gone.
  void finish_calibration(const std::function<void(QuantTarget&)>& quantized, bool in_place);
  // Runs targets with their fake-quantized weights and inputs.
  fn::Handlers quantized_handlers();

  // ---- the mid tier ----
  // Makes every expert slice of `experts`' stacks a target (the rules decide, per slice; a stack
  // partly ignored is an error): per-expert weight quantizers along each slice's input axis, one
  // input quantizer per stack shared by its experts. Calls on the stacks are then matched by
  // operand in both overrides: matmul/linear on one expert's slice, bmm and grouped_mm on the
  // whole stack.
  void add_fused_experts(runtime::FusedExperts& experts);
  // Weights that a functional was called on but that belong to no parameter of the layer: run as
  // they are and reported (logged once each), never guessed.
  const std::set<std::string>& unrecognized_weights() const { return unrecognized_; }

  std::vector<QuantTarget>& targets() { return targets_; }
  std::vector<ExpertCoverage>& coverage() { return coverage_; }
  const TargetRules& rules() const { return rules_; }

 private:
  // A fused stack under interception.
  struct Stack {
    runtime::FusedExperts* experts = nullptr;
    runtime::Parameter* param = nullptr;
    std::vector<size_t> targets;              // into targets_
    quant::TensorQuantizer* input = nullptr;  // shared by the stack's experts
    at::Tensor fake;                          // the fake-quantized stack, compute dtype
  };

  QuantTarget* find(std::string_view weight_name);
  Stack* find_stack(std::string_view weight_name);
  quant::TensorQuantizer* input_quantizer(const std::string& group);
  // Logs and records a call on a weight the layer does not have.
  void report_unrecognized(const fn::WeightRef& ref);
  // Checks a stacked call's weight operand against the stack it names.
  void check_operand(const Stack& stack, const at::Tensor& b, const fn::WeightRef& ref) const;
  void count_rows(Stack& stack, int64_t expert, int64_t rows);

  runtime::DecoderLayer& layer_;
  runtime::WeightSource& weights_;
  const TargetRules& rules_;
  CalibrationOptions calibration_;
  std::vector<QuantTarget> targets_;
  std::map<std::string, size_t, std::less<>> by_weight_;  // weight name -> targets_ index
  std::map<std::string, std::unique_ptr<quant::TensorQuantizer>> inputs_;  // by input group
  std::vector<ExpertCoverage> coverage_;
  std::vector<std::function<void()>> undo_;
  std::map<std::string, Stack, std::less<>> stacks_;     // by stack parameter name
  std::set<std::string, std::less<>> layer_parameters_;  // every parameter name of the layer
  std::set<std::string> unrecognized_;
};

}  // namespace moeq::pipeline
