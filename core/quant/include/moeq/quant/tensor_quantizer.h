// TensorQuantizer: one tensor's QuantArgs and observer; fake quantization, and real quantization
// into exactly the tensors a compressed-tensors format writes. ExpertQuantizers: one weight
// quantizer per expert sharing one input quantizer.
//
// Numerics are compressed-tensors 0.20.0's (docs/quantization.md). Weights are [..., out, in]
// (leading dims: experts, one scale set per expert); a transposed stack is passed as a view
// (w.transpose(-1, -2)) and is neither copied nor quantized along the wrong axis.
#pragma once

#include <ATen/core/Tensor.h>

#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "moeq/quant/observer.h"
#include "moeq/quant/qparams.h"
#include "moeq/quant/quant_args.h"
#include "moeq/quant/scheme.h"

namespace moeq::quant {

// Suffix (after "<module>.") -> tensor, e.g. "weight_packed", "weight_scale", "input_scale".
using QuantizedTensors = std::map<std::string, at::Tensor>;

class TensorQuantizer {
 public:
  // `args` is validated; `tensor_name` names the tensor in errors ("model.layers.0.mlp.
  // experts.3.gate_proj.weight").
  TensorQuantizer(QuantArgs args, TensorRole role, std::string tensor_name);
  TensorQuantizer(TensorQuantizer&&) noexcept;
  TensorQuantizer& operator=(TensorQuantizer&&) noexcept;
  ~TensorQuantizer();

  const QuantArgs& args() const { return args_; }
  TensorRole role() const { return role_; }
  const std::string& tensor_name() const { return tensor_name_; }
  // Static args have an observer; fully dynamic ones (dynamic=true) have none.
  bool has_observer() const { return observer_ != nullptr; }
  Observer& observer();
  const Observer& observer() const;

  // Calibration: folds x into the statistics (nothing for dynamic args).
  void observe(const at::Tensor& x);
  bool calibrated() const { return loaded_ || (observer_ && observer_->has_statistics()); }
  // Scales as a checkpoint stores them (moeq eval reading an export's input_scale or
  // input_global_scale): qparams() returns these from now on, no statistics needed.
  void load_qparams(QParams qparams);

  // NVFP4 (tensor_group): the amax of the global scale, [..., 1, 1] float32. share_global_amax
  // replaces it with one shared by fused layers (gate/up), see fuse_global_scale.
  at::Tensor global_amax() const;
  void share_global_amax(const at::Tensor& amax);

  // Scales from the statistics, as compressed-tensors computes them after calibration
  // (block grid; see QParams). Needs calibrated().
  QParams qparams() const;

  // Quantize-dequantize; the output has x's dtype and shape. Static weights use the statistics
  // (observing x first if nothing was observed); dynamic args derive the scales from x (per
  // token or per token group); static activations use their calibrated scale.
  at::Tensor fake_quantize(const at::Tensor& x);

  // The weight tensors of `format` for w (the tensor observed, or observe(w) first), with
  // compressed-tensors' names, dtypes and shapes. A [E, out, in] w gives per-expert tensors
  // stacked along a leading dim.
  QuantizedTensors quantize_weight(const at::Tensor& w, CompressionFormat format);

  // What a static activation quantizer adds to its module: "input_scale" (and
  // "input_zero_point") for static scales, "input_global_scale" for NVFP4's local-dynamic
  // activations; nothing for dynamic ones. Scales take the weight's scale parameter dtype.
  QuantizedTensors activation_tensors(at::ScalarType weight_dtype) const;

 private:
  at::Tensor fake_quantize_weight(const at::Tensor& x);
  at::Tensor fake_quantize_activation(const at::Tensor& x) const;

  QuantArgs args_;
  TensorRole role_;
  std::string tensor_name_;
  std::unique_ptr<Observer> observer_;
  at::Tensor shared_global_amax_;
  std::optional<QParams> loaded_;
};

// The weight `format` stored, back as a float tensor of `out_dtype` (compressed-tensors'
// decompress). `args` are the weight's QuantArgs.
at::Tensor dequantize_weight(const QuantizedTensors& tensors,
                             const QuantArgs& args,
                             CompressionFormat format,
                             at::ScalarType out_dtype);

// Layers fused by the engines (gate_proj and up_proj, w1 and w3; q/k/v) share one NVFP4 global
// scale: sets each quantizer's global amax to the largest of them (llm-compressor's
// fuse_weight_observers). Every quantizer must be NVFP4 and calibrated.
void fuse_global_scale(std::span<TensorQuantizer* const> quantizers);

// The quantizers of a layer's experts: one weight quantizer per expert and one input quantizer
// shared by all of them (one input scale per projection per layer, the max over experts).
class ExpertQuantizers {
 public:
  // `name_pattern` names expert e's weight for errors: "{}" is replaced by e
  // ("model.layers.0.mlp.experts.{}.gate_proj.weight").
  ExpertQuantizers(const QuantScheme& scheme, int64_t num_experts, std::string name_pattern);

  int64_t num_experts() const { return static_cast<int64_t>(weights_.size()); }
  const QuantScheme& scheme() const { return scheme_; }
  TensorQuantizer& weight(int64_t expert);
  // Shared by all experts; nullptr when the scheme quantizes no input activations.
  TensorQuantizer* input() { return input_.get(); }

  // Observes a stack [E, out, in], or a view of a transposed [E, in, out] stack: expert e's
  // quantizer sees stack[e].
  void observe_weights(const at::Tensor& stack);
  // Each expert's tokens; an expert with no tokens contributes nothing.
  void observe_input(const at::Tensor& x);
  // Fake-quantizes a stack expert by expert (x's dtype and shape).
  at::Tensor fake_quantize_weights(const at::Tensor& stack);
  // Expert e's tensors in `format` (the scheme's when nullopt), with the shared input tensors.
  QuantizedTensors quantize_expert(int64_t expert,
                                   const at::Tensor& w,
                                   std::optional<CompressionFormat> format = std::nullopt);

  // NVFP4: gate and up of every expert share one global scale (vLLM requires it): expert e of
  // each group gets the largest global amax of the group's expert e.
  static void share_global_scales(std::span<ExpertQuantizers* const> fused);

 private:
  QuantScheme scheme_;
  std::vector<TensorQuantizer> weights_;
  std::unique_ptr<TensorQuantizer> input_;
};

}  // namespace moeq::quant
