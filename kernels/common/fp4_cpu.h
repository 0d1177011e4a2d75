// CPU references of the FP4 / MX kernels. They define the numerics: the CUDA kernels must match
// them bit for bit. Each runs a whole problem (fp4_problem.h) with at::parallel_for.
#pragma once

#include <cstdint>

#include "common/fp4_problem.h"

namespace moeq::kernels::fp4::cpu {

void run(const GroupProblem& p);
void run(const ScaleProblem& p);
void run(const GlobalScaleProblem& p);
void run(const SweepProblem& p);
void run(const SourceMxfp4Problem& p);

void run(const PackProblem& p);

}  // namespace moeq::kernels::fp4::cpu
