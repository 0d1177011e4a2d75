// Model builders: config.json -> the module tree of a CausalLM, with the tensor names of the
// published checkpoints. One file per model under src/models/, named after its key
// (config.json's architectures[0]). Each builder has the signature of CausalLMBuilder, so it
// becomes a plugin's architecture registration unchanged.
#pragma once

#include <moeq/runtime/causal_lm.h>
#include <moeq/runtime/weight_source.h>

#include <moeq/io/hf_config.h>

#include <filesystem>

#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moeq::runtime {

// `config`: config.json; `weights`: where the layers read their tensors from.
using CausalLMBuilder = std::unique_ptr<CausalLM> (*)(const io::HfConfig& config,
                                                      std::shared_ptr<WeightSource> weights,
                                                      const RuntimeOptions& options);

// MixtralForCausalLM: model.layers.{i}.block_sparse_moe.gate.weight,
// .block_sparse_moe.experts.{e}.w1/w2/w3.weight; softmax top-k, always renormalised.
std::unique_ptr<CausalLM> build_mixtral_for_causal_lm(const io::HfConfig& config,
                                                      std::shared_ptr<WeightSource> weights,
                                                      const RuntimeOptions& options);

// Qwen2MoeForCausalLM: mlp.gate, mlp.experts.{e}.gate_proj/up_proj/down_proj, mlp.shared_expert.*
// with the sigmoid mlp.shared_expert_gate; q/k/v biases; dense layers per mlp_only_layers and
// decoder_sparse_step; sliding window per layer_types.
std::unique_ptr<CausalLM> build_qwen2_moe_for_causal_lm(const io::HfConfig& config,
                                                        std::shared_ptr<WeightSource> weights,
                                                        const RuntimeOptions& options);

// Qwen3MoeForCausalLM: as Qwen2-MoE without shared experts, with q_norm/k_norm and
// norm_topk_prob.
std::unique_ptr<CausalLM> build_qwen3_moe_for_causal_lm(const io::HfConfig& config,
                                                        std::shared_ptr<WeightSource> weights,
                                                        const RuntimeOptions& options);

struct BuiltinArchitecture {
  std::string_view name;  // config.json architectures[0]
  CausalLMBuilder build;
};

// The builders this library carries, until plugins register them with the architecture
// registry.
const std::vector<BuiltinArchitecture>& builtin_architectures();

// The builder for `architecture`, or an error listing the known ones.
CausalLMBuilder find_builtin_architecture(std::string_view architecture);

// A model directory (config.json + safetensors, single or sharded) with a built-in builder,
// reading its weights through a memory-mapped CheckpointSource.
std::unique_ptr<CausalLM> load_causal_lm(const std::filesystem::path& model_dir,
                                         const RuntimeOptions& options);

}  // namespace moeq::runtime
