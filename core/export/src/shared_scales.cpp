#include "shared_scales.h"

#include <moeq/core/error.h>

#include <ATen/ATen.h>

#include "module_names.h"

namespace moeq::exporting {
namespace {

std::string values_of(const at::Tensor& t) {
  const at::Tensor f = t.to(at::kFloat).flatten();
  std::string out = "[";
  for (int64_t i = 0; i < std::min<int64_t>(f.numel(), 4); ++i) {
    out += fmt::format("{}{:g}", i ? ", " : "", f[i].item<float>());
  }
  return out + (f.numel() > 4 ? ", ...]" : "]");
}

}  // namespace

SharedScales::SharedScales(std::vector<std::string> fused, std::vector<std::string> per_block)
    : fused_(std::move(fused)), per_block_(std::move(per_block)) {}

void SharedScales::check(const std::string& module, const quant::QuantizedTensors& tensors) {
  const std::string fusion = fusion_key(module);
  const std::string experts = expert_pattern(module);
  for (const auto& [suffix, tensor] : tensors) {
    if (!fusion.empty() && std::find(fused_.begin(), fused_.end(), suffix) != fused_.end()) {
      check_one(fusion + "#" + suffix, module, suffix, tensor,
                "fused projections must share one global scale (vLLM fuses them into one GEMM "
                "and uses the first one's)");
    }
    if (!experts.empty() &&
        std::find(per_block_.begin(), per_block_.end(), suffix) != per_block_.end()) {
      check_one(experts + "#" + suffix, module, suffix, tensor,
                "the experts of a block must share one input scale per projection (vLLM "
                "quantizes the activations once for all experts)");
    }
  }
}

void SharedScales::restore(const std::string& key, std::string module, at::Tensor tensor) {
  seen_.insert_or_assign(key, std::make_pair(std::move(module), std::move(tensor)));
}

void SharedScales::check_one(const std::string& key,
                             const std::string& module,
                             const std::string& suffix,
                             const at::Tensor& tensor,
                             const char* why) {
  const at::Tensor cpu = tensor.detach().to(at::kCPU);
  auto [it, fresh] = seen_.try_emplace(key, module, cpu);
  if (fresh) {
    return;
  }
  const auto& [first_module, first] = it->second;
  MOEQ_CHECK(first.sizes() == cpu.sizes() && first.scalar_type() == cpu.scalar_type() &&
                 at::equal(first, cpu),
             "'{}.{}' = {} differs from '{}.{}' = {}: {}", module, suffix, values_of(cpu),
             first_module, suffix, values_of(first), why);
}

}  // namespace moeq::exporting
