// The configuration files ModelOpt 0.47.0 writes next to a unified HF checkpoint, ported from its
// export code so that moeq's match key for key:
//   hf_quant_config.json   modelopt/torch/export/quant_utils.py: get_quant_config and
//                          process_layer_quant_config (exclude_modules summarized into prefix
//                          wildcards by _prefix_wildcard_summarize_exclude_modules)
//   config.json's          modelopt/torch/export/convert_hf_config.py:
//   quantization_config    convert_hf_quant_config_format
#pragma once

#include <moeq/quant/modelopt.h>

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace moeq::exporting {

// _prefix_wildcard_summarize_exclude_modules: the unquantized modules as the fewest prefix
// wildcards ("model.layers.0.self_attn*", "model.layers.0.mlp.gate") that match no quantized
// module, sorted.
std::vector<std::string> summarize_exclude_modules(const std::vector<std::string>& unquantized,
                                                   const std::vector<std::string>& quantized);

// hf_quant_config.json for one quant_algo over the whole model: {"producer": {"name": "modelopt",
// "version"}, "quantization": {"quant_algo", "kv_cache_quant_algo": null, ["group_size",
// "has_zero_point", "pre_quant_scale"], "exclude_modules"}}.
nlohmann::ordered_json modelopt_hf_quant_config(quant::ModelOptAlgo algo,
                                                int64_t group_size,
                                                const std::vector<std::string>& exclude_modules);

// convert_hf_quant_config_format: the compressed-tensors-like quantization_config with
// quant_method "modelopt".
nlohmann::ordered_json modelopt_quantization_config(const nlohmann::ordered_json& hf_quant_config);

extern const char* const kModelOptVersion;

}  // namespace moeq::exporting
