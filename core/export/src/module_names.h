// What a Linear's checkpoint name says about it: which projection it is (the engines fuse gate
// with up, and q with k and v, into one GEMM) and which routed expert it belongs to.
#pragma once

#include <string>

namespace moeq::exporting {

enum class Projection { kGate, kUp, kDown, kQuery, kKey, kValue, kOther };

// By the last component: gate_proj / w1, up_proj / w3, down_proj / w2, q_proj, k_proj, v_proj.
Projection projection_of(const std::string& module);

// The modules one engine GEMM fuses, as one key: "model.layers.0.mlp.experts.3#gate_up",
// "model.layers.0.self_attn#qkv"; "" for a module that is not fused.
std::string fusion_key(const std::string& module);

// A routed expert's module with its index replaced by '*' ("...experts.*.w1"); "" outside
// routed experts (shared experts are ordinary MLPs).
std::string expert_pattern(const std::string& module);

}  // namespace moeq::exporting
