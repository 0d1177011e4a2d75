// vLLM's loading and kernel constraints for a quantized Linear (../shared/reference/
// vllm_stack.md C2): what its fused-MoE methods and the grouped scale layouts need of the
// scheme and of each weight's shape. A checkpoint that breaks one loads nowhere or crashes the
// kernel, so the exporter refuses it and says which constraint, which tensor and why.
#pragma once

#include <moeq/quant/scheme.h>

#include <cstdint>
#include <optional>
#include <string>

namespace moeq::exporting {

// `module` is the checkpoint prefix, [out, in] its weight's shape. `format` is the
// compressed-tensors storage format, nullopt for ModelOpt's layouts (which fix their own). Routed
// experts (".experts.<e>.") are held to the MoE method vLLM dispatches the scheme to; every
// module to the group layout. Throws moeq::Error.
void check_vllm_constraints(const quant::QuantScheme& scheme,
                            std::optional<quant::CompressionFormat> format,
                            const std::string& module,
                            int64_t out,
                            int64_t in);

}  // namespace moeq::exporting
