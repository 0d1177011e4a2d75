// What the DeepSeek-style plugins share (deepseek_v3, glm4_moe, minimax_m2): the runtime's
// SigmoidTopKRouter under the plugins' name. (Their FP8 block-scaled sources are read through
// moeq::runtime::dequantize_fp8_blocks, moeq/runtime/weight_source.h, as declared models' are.)
#pragma once

#include <moeq/core/error.h>
#include <moeq/io/hf_config.h>
#include <moeq/runtime/sigmoid_router.h>

#include <string_view>

namespace moeq_plugins {

// The router lives in the runtime (moeq/runtime/sigmoid_router.h), where models declared in YAML
// reach it too; the plugins keep their spelling.
using SigmoidTopKOptions = moeq::runtime::SigmoidTopKOptions;
using SigmoidTopKRouter = moeq::runtime::SigmoidTopKRouter;

// The routing these plugins implement, where a config states it: sigmoid scores, top-k over the
// bias-corrected scores ("noaux_tc"). A variant (softmax scores, DeepSeek-V2's greedy or
// group-limited selection) would load and route differently without this check.
inline void check_sigmoid_noaux_routing(const moeq::io::HfConfig& config, std::string_view model) {
  const auto scoring = config.get_or("scoring_func", "sigmoid");
  MOEQ_CHECK(scoring == "sigmoid", "config '{}': {} routing is sigmoid, got scoring_func '{}'",
             config.source(), model, scoring);
  const auto method = config.get_or("topk_method", "noaux_tc");
  MOEQ_CHECK(method == "noaux_tc",
             "config '{}': {} selects experts by bias-corrected scores (topk_method 'noaux_tc'), "
             "got topk_method '{}'",
             config.source(), model, method);
}

}  // namespace moeq_plugins
