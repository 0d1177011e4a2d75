// What the DeepSeek-style plugins share (deepseek_v3, glm4_moe, minimax_m2): the runtime's
// SigmoidTopKRouter under the plugins' name. (Their FP8 block-scaled sources are read through
// moeq::runtime::dequantize_fp8_blocks, moeq/runtime/weight_source.h, as declared models' are.)
#pragma once

#include <moeq/runtime/sigmoid_router.h>

namespace moeq_plugins {

// The router lives in the runtime (moeq/runtime/sigmoid_router.h), where models declared in YAML
// reach it too; the plugins keep their spelling.
using SigmoidTopKOptions = moeq::runtime::SigmoidTopKOptions;
using SigmoidTopKRouter = moeq::runtime::SigmoidTopKRouter;

}  // namespace moeq_plugins
