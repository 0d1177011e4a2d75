// Host launchers of the FP4 / MX CUDA kernels (NVFP4, MXFP4, MXFP8, FP4 packing, the FP8 scale
// sweep, GPT-OSS source dequantization). They see no ATen: the op layer passes plain problem
// descriptions (common/fp4_problem.h) with device pointers and the stream to run on. Each matches
// the CPU reference (common/fp4_cpu.h) bit for bit.
#pragma once

#include <cuda_runtime_api.h>

#include "common/fp4_problem.h"

namespace moeq::kernels::fp4::cuda {

// Fused: group amax, scale, quantize, pack (or dequantize) in one pass over x, with 128-bit
// loads when x's rows (or, for transposed stacks, its columns) are contiguous and aligned.
void launch(const GroupProblem& p, cudaStream_t stream);
void launch(const ScaleProblem& p, cudaStream_t stream);
void launch(const GlobalScaleProblem& p, cudaStream_t stream);
void launch(const SweepProblem& p, cudaStream_t stream);
void launch(const SourceMxfp4Problem& p, cudaStream_t stream);
void launch(const PackProblem& p, cudaStream_t stream);

}  // namespace moeq::kernels::fp4::cuda
