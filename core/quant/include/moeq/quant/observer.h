// Observers: per-block statistics from which a TensorQuantizer derives its scales.
//
// A weight is seen as [..., rows, cols]: leading dims are a batch of experts, quantization
// groups run along cols (the input / K axis). A stack stored transposed ([E, in, out]) is passed
// as w.transpose(-1, -2), a view: nothing is copied and the statistics still run along `in`.
// An activation [..., hidden] is seen as [tokens, hidden], and is observed batch after batch.
//
// Every observer keeps min_vals and max_vals (float32) on the block grid of its QuantArgs:
// [..., ceil(rows/br), ceil(cols/bc)] for weights, [1, ceil(hidden/bc)] for activations. The
// TensorQuantizer turns them into scales with compressed-tensors' calculate_qparams. The exact
// definitions are in docs/quantization.md. A NaN or Inf in an observed tensor is an error naming
// the tensor.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <tuple>

#include "moeq/kernels/block.h"
#include "moeq/quant/quant_args.h"

namespace moeq::quant {

// What the observed tensor is: weights are observed once (memoryless), activations per batch.
enum class TensorRole { kWeight, kInput, kOutput };

std::string_view to_string(TensorRole role);

// The block of QuantArgs over a weight ([..., rows, cols]) or a flattened activation
// ([tokens, hidden]): tensor {0, 0}; channel / token {1, 0}; group / tensor_group {1, g} for
// weights and {0, g} for activations (a static activation scale is shared by all tokens);
// block [b0, b1] {b0, b1}.
kernels::BlockShape block_shape(const QuantArgs& args, TensorRole role);

class Observer {
 public:
  Observer(const QuantArgs& args, TensorRole role, std::string tensor_name);
  virtual ~Observer();
  Observer(const Observer&) = delete;
  Observer& operator=(const Observer&) = delete;

  // Folds x into the statistics. Weights: [..., rows, cols] (any strides). Activations:
  // [..., hidden]; an empty batch (an expert that got no tokens) is ignored.
  void observe(const at::Tensor& x);

  bool has_statistics() const { return min_vals_.defined(); }
  // float32, on the block grid; valid when has_statistics().
  const at::Tensor& min_vals() const;
  const at::Tensor& max_vals() const;
  // max(|min_vals|, |max_vals|).
  at::Tensor absmax() const;
  // The amax a per-tensor (NVFP4 global) scale derives from, one per tensor or expert
  // ([..., 1, 1], float32): the largest absmax() of the grid, unless the observer chose it
  // otherwise (nvfp4_fp8_sweep keeps the weight's amax).
  at::Tensor global_amax() const;
  // Replaces the statistics (tests; importing calibration results).
  void set_statistics(const at::Tensor& min_vals, const at::Tensor& max_vals);
  void reset();

  const QuantArgs& args() const { return args_; }
  TensorRole role() const { return role_; }
  const std::string& tensor_name() const { return tensor_name_; }
  kernels::BlockShape block() const { return block_; }
  virtual std::string_view name() const = 0;
  // The dtype the last observed tensor had (compressed-tensors computes scales in it).
  at::ScalarType observed_dtype() const { return observed_dtype_; }

 protected:
  // x: the observed tensor as [..., rows, cols] (activations flattened to [tokens, hidden]),
  // finite. Sets or updates min_vals_ / max_vals_.
  virtual void update(const at::Tensor& x) = 0;

  // Per-block (min, max) of x by the kernels (which reject NaN and Inf naming the tensor).
  std::tuple<at::Tensor, at::Tensor> block_minmax(const at::Tensor& x) const;
  // Running min/max: min of mins, max of maxes.
  void merge_running(at::Tensor min_vals, at::Tensor max_vals);

  QuantArgs args_;
  TensorRole role_;
  std::string tensor_name_;
  kernels::BlockShape block_;
  at::ScalarType observed_dtype_ = at::kFloat;
  at::Tensor min_vals_;
  at::Tensor max_vals_;
  at::Tensor global_amax_;  // set by observers that fix it; else derived from the grid
  int64_t hidden_ = -1;     // activations: the hidden size of the first batch
};

// Makes the observer QuantArgs name (observer_name(), with observer_kwargs), for a role:
//   minmax             weights: min/max of the weight. Activations: compressed-tensors'
//                      moving average, m <- m + c (new - m), c = averaging_constant (0.01)
//   static_minmax      running min and max over all batches
//   memoryless_minmax  min and max of the last batch only
//   absmax             running max |x| (ModelOpt's max calibration), symmetric
//   percentile         the `percentile`-th percentile (default 99.99) of |x| per block,
//                      linear interpolation; batches averaged by element count; symmetric
//   mse                compressed-tensors' MSE grid search: shrink min/max by p = 1 - i/grid,
//                      i < maxshrink*grid, keep the p with the least sum |fq(x) - x|^norm per
//                      block (maxshrink 0.2, grid 100, norm 2.4, patience 5)
//   memoryless_mse     mse without the moving average across batches
//   modelopt_mse       ModelOpt's MseCalibrator: amax multipliers start_multiplier (0.25) to
//                      stop_multiplier (4.0) by step_size (0.1), least summed squared error
//                      over all batches; symmetric
//   nvfp4_fp8_sweep    NVFP4 only: ModelOpt's sweep over the 126 positive FP8 E4M3 block scales
//                      per 16-element block, least squared error
// Weights always use the memoryless variant of minmax / mse, as llm-compressor does.
std::unique_ptr<Observer> make_observer(const QuantArgs& args,
                                        TensorRole role,
                                        std::string tensor_name);

std::span<const std::string_view> observer_names();
// Throws moeq::Error naming the known observers when `name` is not one of them.
void check_observer_name(std::string_view name);

}  // namespace moeq::quant
