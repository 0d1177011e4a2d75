// The scales vLLM loads once for several tensors, checked to be equal as modules arrive:
//   - gate and up (w1/w3) of one MLP or expert, and q/k/v of one attention, share one NVFP4
//     global scale: vLLM fuses them into one GEMM and uses w1's (q's) for all, silently
//     mis-scaling the others when they differ;
//   - the experts of a block share each projection's input scale: vLLM's fused MoE quantizes
//     the activations once for all experts and reduces the per-expert input scales to one.
#pragma once

#include <moeq/quant/tensor_quantizer.h>

#include <ATen/core/Tensor.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace moeq::exporting {

class SharedScales {
 public:
  // `fused` are the suffixes shared by fused projections ("weight_global_scale" /
  // "weight_scale_2"), `per_block` those shared by a block's experts ("input_scale", ...).
  SharedScales(std::vector<std::string> fused, std::vector<std::string> per_block);

  // Checks `tensors` (suffix -> tensor) of `module` against those seen before and remembers
  // them. Throws moeq::Error naming both tensors and their values.
  void check(const std::string& module, const quant::QuantizedTensors& tensors);

  // For resumable exports: the scales seen so far, and restoring them.
  const std::map<std::string, std::pair<std::string, at::Tensor>>& seen() const { return seen_; }
  void restore(const std::string& key, std::string module, at::Tensor tensor);

 private:
  void check_one(const std::string& key,
                 const std::string& module,
                 const std::string& suffix,
                 const at::Tensor& tensor,
                 const char* why);

  std::vector<std::string> fused_;
  std::vector<std::string> per_block_;
  // key -> (first module, its tensor on the CPU)
  std::map<std::string, std::pair<std::string, at::Tensor>> seen_;
};

}  // namespace moeq::exporting
