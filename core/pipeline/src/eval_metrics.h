// Next-token metrics of a quantized model against its original, accumulated batch by batch
// (the pipeline's evaluation streams and moeq eval share them): the true KL divergence
// KL(reference || quantized) per position with its mean and percentiles, both perplexities and
// the top-1 agreement.
#pragma once

#include <moeq/pipeline/pipeline.h>
#include <moeq/runtime/functional.h>

#include <ATen/core/Tensor.h>

#include <string_view>
#include <vector>

namespace moeq::pipeline::detail {

class LogitsComparison {
 public:
  explicit LogitsComparison(bool keep_logits) : keep_logits_(keep_logits) {}
  // logits [b, S, V] of both models on input_ids [b, S].
  void add(const at::Tensor& reference_logits,
           const at::Tensor& quantized_logits,
           const at::Tensor& ids);
  EvalResult finish();

 private:
  bool keep_logits_;
  std::vector<at::Tensor> kls_;
  double nll_reference_ = 0.0;
  double nll_quantized_ = 0.0;
  int64_t predictions_ = 0;
  int64_t agree_ = 0;
  int64_t tokens_ = 0;
  std::vector<at::Tensor> kept_reference_;
  std::vector<at::Tensor> kept_quantized_;
};

// The report's name of a projection kind: "q", "gate", "down", ...
std::string_view projection_kind_name(fn::ProjKind kind);

// Relative RMS error |a - b| / |b| in float64.
double relative_rms(const at::Tensor& approx, const at::Tensor& exact);

}  // namespace moeq::pipeline::detail
