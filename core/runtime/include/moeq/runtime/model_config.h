// What the model builders derive from config.json beyond single fields: head_dim, and the RoPE
// parameters in both spellings (transformers 5's "rope_parameters", the published checkpoints'
// "rope_theta" + "rope_scaling").
#pragma once

#include <moeq/io/hf_config.h>
#include <moeq/runtime/blocks.h>

#include <cstdint>

namespace moeq::runtime::detail {

// head_dim as transformers derives it: config.head_dim when set, hidden_size / num_heads otherwise.
int64_t head_dim(const io::HfConfig& config);

// The RoPE options of a config. `default_theta`: the model's default when no theta is given
// (Mixtral 1e6, most others 1e4).
RopeOptions rope_options(const io::HfConfig& config, int64_t head_dim, double default_theta);

// An error unless hidden_act is one the runtime implements.
Activation activation(const io::HfConfig& config, std::string_view architecture);

}  // namespace moeq::runtime::detail
