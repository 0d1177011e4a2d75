// Pieces the DeepSeek-style plugins share (deepseek_v3, glm4_moe, minimax_m2), header-only so
// each plugin stays one shared object built from its own sources and the public SDK:
// - SigmoidTopKRouter: moeq::runtime's (moeq/runtime/sigmoid_router.h), under the plugins' name.
// - dequantize_fp8_blocks: a WeightSource over a checkpoint whose projections are stored as FP8
//   E4M3 with 128x128 `weight_scale_inv` blocks (DeepSeek-V3, MiniMax-M2), giving bf16 weights.
#pragma once

#include <moeq/core/error.h>
#include <moeq/io/hf_config.h>
#include <moeq/kernels/source_dequant.h>
#include <moeq/runtime/blocks.h>
#include <moeq/runtime/sigmoid_router.h>
#include <moeq/runtime/weight_source.h>

#include <ATen/ATen.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace moeq_plugins {

// The router lives in the runtime (moeq/runtime/sigmoid_router.h), where models declared in YAML
// reach it too; the plugins keep their spelling.
using SigmoidTopKOptions = moeq::runtime::SigmoidTopKOptions;
using SigmoidTopKRouter = moeq::runtime::SigmoidTopKRouter;

// FP8 projections (`<m>.weight` E4M3 + `<m>.weight_scale_inv` fp32 per block) become bf16
// weights, as transformers' FP8 dequantization computes them. The block is
// quantization_config.weight_block_size (default 128x128). A source without `_scale_inv`
// tensors is returned as is.
inline std::shared_ptr<moeq::runtime::WeightSource> dequantize_fp8_blocks(
    std::shared_ptr<moeq::runtime::WeightSource> source, const moeq::io::HfConfig& config) {
  int64_t block_rows = 128;
  int64_t block_cols = 128;
  if (auto block = config.find<std::vector<int64_t>>("quantization_config.weight_block_size")) {
    MOEQ_CHECK(block->size() == 2,
               "config '{}': weight_block_size must be [rows, cols], got {} "
               "values",
               config.source(), block->size());
    block_rows = (*block)[0];
    block_cols = (*block)[1];
  }
  std::vector<moeq::runtime::DerivedSource::Rule> rules;
  constexpr std::string_view kScale = "_scale_inv";
  for (const auto& name : source->names()) {
    if (!name.ends_with(kScale)) {
      continue;
    }
    const auto weight = name.substr(0, name.size() - kScale.size());
    MOEQ_CHECK(source->has(weight), "{}: '{}' has no weight '{}' beside it", source->describe(),
               name, weight);
    rules.push_back(
        {weight, {weight, name}, [block_rows, block_cols](const std::vector<at::Tensor>& in) {
           return moeq::kernels::dequantize_fp8_block_source(in[0], in[1], at::kBFloat16,
                                                             block_rows, block_cols);
         }});
  }
  if (rules.empty()) {
    return source;
  }
  return std::make_shared<moeq::runtime::DerivedSource>(std::move(source), std::move(rules),
                                                        "FP8 block weights dequantized to bf16");
}

}  // namespace moeq_plugins
