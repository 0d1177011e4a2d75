// What a model builder derives from config.json beyond single fields. Public SDK: in-tree and
// out-of-tree builders (plugins, models declared in YAML) read these the same way, so a config
// spelling that one builder accepts, all accept.
#pragma once

#include <moeq/io/hf_config.h>
#include <moeq/runtime/blocks.h>

#include <cstdint>
#include <string_view>

namespace moeq::runtime::model_config {

// The attention head width as transformers derives it: `head_dim` when the config sets it, else
// `hidden_size / num_attention_heads` (an error naming both when that does not divide).
int64_t head_dim(const io::HfConfig& config);

// RoPE options with RopeOptions::head_dim = `head_dim`. Reads either spelling: transformers 5's
// `rope_parameters` object or the published checkpoints' `rope_scaling` (tried first) plus a
// top-level `rope_theta`. theta: the object's `rope_theta`, else the top-level one, else
// `default_theta` (the model's own default: Mixtral 1e6, most others 1e4). The type is the
// object's `rope_type` (or legacy `type`): default, linear (`factor`), llama3 (`factor`,
// `low_freq_factor`, `high_freq_factor`, `original_max_position_embeddings`) or yarn (`factor`,
// `original_max_position_embeddings`, `attention_factor`, `mscale`, `mscale_all_dim`,
// `beta_fast`, `beta_slow`, `truncate`). `partial_rotary_factor` from the object or the top
// level, in (0, 1]. Any other type is an error naming it.
RopeOptions rope_options(const io::HfConfig& config, int64_t head_dim, double default_theta);

// The MLP activation from `hidden_act` (default silu); an error naming the value and
// `architecture` unless the runtime implements it.
Activation activation(const io::HfConfig& config, std::string_view architecture);

}  // namespace moeq::runtime::model_config
