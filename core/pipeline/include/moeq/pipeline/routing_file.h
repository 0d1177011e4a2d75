// --save-routing (moeq eval, moeq quantize): every evaluation token's expert choices, original and
// quantized, as one safetensors file for studying routing shifts. Keys:
//   input_ids                          [N, S] int64: the evaluation tokens; token t of a layer's
//                                      tensors is input_ids.reshape(-1)[t]
//   layers.{i}.reference.topk_ids      [N*S, k] int32: the original model's top-k experts
//   layers.{i}.reference.topk_weights  [N*S, k] fp32: the weights it combines their outputs with
//   layers.{i}.quantized.*             the quantized model on its own stream (what an engine
//                                      running the checkpoint routes)
//   layers.{i}.quantized_own.*         the quantized layer on the original's inputs to the layer
// for each decoder layer i with an MoE block; the metadata names each layer's block
// ("layers.{i}.block") and the layout ("moeq_routing": "1").
#pragma once

#include <moeq/pipeline/pipeline.h>

#include <ATen/core/Tensor.h>

#include <filesystem>
#include <string_view>

namespace moeq::pipeline {

// Refuses, before the evaluation runs, a path the file could not be written to: a name not ending
// in .safetensors, a directory, a parent that is not a directory or not writable. Creates the
// parent directories. `flag` names the option in the messages.
void check_routing_file(const std::filesystem::path& file, std::string_view flag);

// `result` must come from a run that kept the routes (Pipeline::keep_routes,
// CheckpointEvalOptions::keep_routes); `input_ids` are the evaluation batches concatenated.
void write_routing_file(const std::filesystem::path& file,
                        const PipelineResult& result,
                        const at::Tensor& input_ids);

}  // namespace moeq::pipeline
