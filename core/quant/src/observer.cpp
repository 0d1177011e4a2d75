#include "moeq/quant/observer.h"

#include <ATen/ATen.h>
#include <fmt/ranges.h>

#include <cmath>
#include <limits>

#include "moeq/core/error.h"
#include "moeq/kernels/ops.h"
#include "moeq/quant/qparams.h"
#include "reference.h"

namespace moeq::quant {

namespace {

constexpr std::string_view kObserverNames[] = {
    "minmax", "static_minmax",  "memoryless_minmax", "absmax",          "percentile",
    "mse",    "memoryless_mse", "modelopt_mse",      "nvfp4_fp8_sweep",
};

double kwarg(const QuantArgs& args, const char* key, double fallback) {
  const auto& kwargs = args.observer_kwargs;
  if (!kwargs.contains(key)) {
    return fallback;
  }
  MOEQ_CHECK(kwargs[key].is_number(), "observer_kwargs '{}' must be a number, got {}", key,
             kwargs[key].dump());
  return kwargs[key].get<double>();
}

// The args a scale search evaluates candidates with: compressed-tensors drops NVFP4's FP8
// rounding of the local scales (and its global scale) while searching.
QuantArgs search_args(const QuantArgs& args) {
  QuantArgs out = args;
  if (args.resolved_strategy() == Strategy::kTensorGroup) {
    out.scale_dtype.reset();
  }
  return out;
}

// ---- min-max family -----------------------------------------------------------------------

enum class MinMaxMode { kMemoryless, kRunning, kMovingAverage };

class MinMaxObserver final : public Observer {
 public:
  MinMaxObserver(const QuantArgs& args,
                 TensorRole role,
                 std::string tensor_name,
                 MinMaxMode mode,
                 std::string_view name)
      : Observer(args, role, std::move(tensor_name)), mode_(mode), name_(name) {
    averaging_constant_ = kwarg(args, "averaging_constant", 0.01);
  }
  std::string_view name() const override { return name_; }

 protected:
  void update(const at::Tensor& x) override {
    auto [min_vals, max_vals] = block_minmax(x);
    const bool replace = !has_statistics() || mode_ == MinMaxMode::kMemoryless ||
                         (mode_ == MinMaxMode::kMovingAverage && averaging_constant_ == 1.0);
    if (replace) {
      min_vals_ = min_vals;
      max_vals_ = max_vals;
    } else if (mode_ == MinMaxMode::kRunning) {
      merge_running(min_vals, max_vals);
    } else {
      // compressed-tensors' lerp: start * (1 - c) + end * c
      min_vals_ = min_vals_ * (1.0 - averaging_constant_) + min_vals * averaging_constant_;
      max_vals_ = max_vals_ * (1.0 - averaging_constant_) + max_vals * averaging_constant_;
    }
  }

 private:
  MinMaxMode mode_;
  std::string_view name_;
  double averaging_constant_ = 0.01;
};

class AbsmaxObserver final : public Observer {
 public:
  using Observer::Observer;
  std::string_view name() const override { return "absmax"; }

 protected:
  void update(const at::Tensor& x) override {
    at::Tensor amax = kernels::block_amax(x, block_, tensor_name_.c_str());
    if (has_statistics()) {
      amax = at::maximum(amax, max_vals_);
    }
    min_vals_ = -amax;
    max_vals_ = amax;
  }
};

// Percentile of |x| per block. With n elements a(0) <= ... <= a(n-1) in a block (partial blocks
// zero-padded), the q-th percentile is a(lo) + (r - lo) (a(lo+1) - a(lo)) with r = q/100 (n-1),
// lo = floor(r): torch.quantile's 'linear' rule. Batches are averaged, weighted by their size.
class PercentileObserver final : public Observer {
 public:
  PercentileObserver(const QuantArgs& args, TensorRole role, std::string tensor_name)
      : Observer(args, role, std::move(tensor_name)) {
    percentile_ = kwarg(args, "percentile", 99.99);
    MOEQ_CHECK(percentile_ > 0 && percentile_ <= 100,
               "observer 'percentile' of '{}': percentile must be in (0, 100], got {}",
               tensor_name_, percentile_);
  }
  std::string_view name() const override { return "percentile"; }

 protected:
  void update(const at::Tensor& x) override {
    kernels::block_amax(x, block_, tensor_name_.c_str());  // rejects NaN / Inf
    const at::Tensor blocks = detail::to_blocks(at::abs(x).to(at::kFloat), block_);
    const int64_t n = blocks.size(-1);
    const double rank = percentile_ / 100.0 * static_cast<double>(n - 1);
    const int64_t lo = static_cast<int64_t>(std::floor(rank));
    const int64_t hi = std::min(lo + 1, n - 1);
    const at::Tensor v_lo = std::get<0>(at::kthvalue(blocks, lo + 1, -1));
    at::Tensor value = v_lo;
    if (hi != lo && rank > static_cast<double>(lo)) {
      const at::Tensor v_hi = std::get<0>(at::kthvalue(blocks, hi + 1, -1));
      value = v_lo + (v_hi - v_lo) * (rank - static_cast<double>(lo));
    }
    const double weight = static_cast<double>(x.numel());
    if (role_ == TensorRole::kWeight || !has_statistics()) {
      sum_ = value * weight;
      total_ = weight;
    } else {
      sum_ = sum_ + value * weight;
      total_ += weight;
    }
    max_vals_ = sum_ / total_;
    min_vals_ = -max_vals_;
  }

 private:
  double percentile_ = 99.99;
  at::Tensor sum_;
  double total_ = 0;
};

// compressed-tensors' MSE observer (llm-compressor observers/mse.py, mse_quant.py
// _grid_search_mse): shrink the block min/max by p = 1 - i/grid and keep, per block, the p with
// the least sum |fq(x) - x|^norm; stop after `patience` steps without improvement anywhere.
// Shrinking and the error run in the observed dtype, as there.
class MseObserver final : public Observer {
 public:
  MseObserver(const QuantArgs& args, TensorRole role, std::string tensor_name, bool memoryless)
      : Observer(args, role, std::move(tensor_name)), memoryless_(memoryless) {
    maxshrink_ = kwarg(args, "maxshrink", 0.20);
    patience_ = static_cast<int64_t>(kwarg(args, "patience", 5));
    grid_ = kwarg(args, "grid", 100.0);
    norm_ = kwarg(args, "norm", 2.4);
    expand_ = kwarg(args, "expand", 1.0);
    averaging_constant_ = kwarg(args, "averaging_constant", 0.01);
    MOEQ_CHECK(expand_ >= 1.0, "observer 'mse' of '{}': expand must be at least 1.0, got {}",
               tensor_name_, expand_);
    MOEQ_CHECK(role == TensorRole::kWeight || (!args.is_mx() && !args.is_nvfp4()),
               "observer 'mse' of '{}': block-scaled activations are quantized dynamically",
               tensor_name_);
  }
  std::string_view name() const override { return memoryless_ ? "memoryless_mse" : "mse"; }

 protected:
  void update(const at::Tensor& x) override {
    auto [min_f, max_f] = block_minmax(x);
    const at::ScalarType dtype = x.scalar_type();
    const at::Tensor min_val = min_f.to(dtype) * expand_;
    const at::Tensor max_val = max_f.to(dtype) * expand_;
    const QuantArgs args = search_args(args_);
    const at::Tensor blocks = detail::to_blocks(x, block_);
    at::Tensor best_error = at::full_like(min_val, max_of(dtype));
    at::Tensor best_min = min_val.clone();
    at::Tensor best_max = max_val.clone();
    const int64_t steps = static_cast<int64_t>(maxshrink_ * grid_);
    int64_t stale = 0;
    for (int64_t i = 0; i < steps; ++i) {
      const double p = 1.0 - static_cast<double>(i) / grid_;
      const at::Tensor shrunk_min = min_val * p;
      const at::Tensor shrunk_max = max_val * p;
      const QParams qp = calculate_qparams(shrunk_min, shrunk_max, args, dtype);
      const at::Tensor zp = qp.zero_point.defined() ? qp.zero_point.unsqueeze(-1) : at::Tensor();
      const at::Tensor fq = detail::qdq(blocks, qp.scale.unsqueeze(-1), zp, args).to(dtype);
      const at::Tensor error = at::abs(fq - blocks).pow(norm_).sum(-1);
      const at::Tensor improved = error < best_error;
      if (improved.any().item<bool>()) {
        best_error = at::where(improved, error, best_error);
        best_min = at::where(improved, shrunk_min, best_min);
        best_max = at::where(improved, shrunk_max, best_max);
        stale = 0;
      } else if (++stale >= patience_) {
        break;
      }
    }
    const at::Tensor new_min = best_min.to(at::kFloat);
    const at::Tensor new_max = best_max.to(at::kFloat);
    if (memoryless_ || role_ == TensorRole::kWeight || !has_statistics() ||
        averaging_constant_ == 1.0) {
      min_vals_ = new_min;
      max_vals_ = new_max;
    } else {
      min_vals_ = min_vals_ * (1.0 - averaging_constant_) + new_min * averaging_constant_;
      max_vals_ = max_vals_ * (1.0 - averaging_constant_) + new_max * averaging_constant_;
    }
  }

 private:
  static double max_of(at::ScalarType dtype) {
    double out = 0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "max", [&] {
      out = static_cast<double>(std::numeric_limits<scalar_t>::max());
    });
    return out;
  }

  bool memoryless_;
  double maxshrink_, grid_, norm_, expand_, averaging_constant_;
  int64_t patience_;
};

// ModelOpt's MseCalibrator (calib/mse.py) on weights: candidate amax = amax * m for the
// multipliers linspace(start, stop, ceil((stop - start) / step) + 1); the first candidate with
// the least summed squared error per block wins. Candidates are evaluated with moeq's
// (compressed-tensors') numerics.
class ModelOptMseObserver final : public Observer {
 public:
  ModelOptMseObserver(const QuantArgs& args, TensorRole role, std::string tensor_name)
      : Observer(args, role, std::move(tensor_name)) {
    start_ = kwarg(args, "start_multiplier", 0.25);
    stop_ = kwarg(args, "stop_multiplier", 4.0);
    step_ = kwarg(args, "step_size", 0.1);
    MOEQ_CHECK(role == TensorRole::kWeight,
               "observer 'modelopt_mse' observes weights only, not "
               "'{}'",
               tensor_name_);
    MOEQ_CHECK(args.symmetric, "observer 'modelopt_mse' of '{}' needs symmetric args",
               tensor_name_);
    MOEQ_CHECK(step_ > 0 && stop_ >= start_ && start_ > 0,
               "observer 'modelopt_mse' of '{}': needs 0 < start_multiplier <= stop_multiplier "
               "and step_size > 0, got {}, {}, {}",
               tensor_name_, start_, stop_, step_);
  }
  std::string_view name() const override { return "modelopt_mse"; }

 protected:
  void update(const at::Tensor& x) override {
    const at::Tensor amax = kernels::block_amax(x, block_, tensor_name_.c_str());
    const int64_t steps = static_cast<int64_t>(std::ceil((stop_ - start_) / step_)) + 1;
    const at::Tensor multipliers = at::linspace(start_, stop_, steps, amax.options());
    const QuantArgs args = search_args(args_);
    const at::Tensor blocks = detail::to_blocks(x, block_);
    const at::Tensor reference = blocks.to(at::kFloat);
    at::Tensor best_loss;
    at::Tensor best_amax = amax.clone();
    for (int64_t k = 0; k < steps; ++k) {
      const at::Tensor candidate = amax * multipliers[k];
      const QParams qp = calculate_qparams(-candidate, candidate, args, x.scalar_type());
      const at::Tensor fq = detail::qdq(blocks, qp.scale.unsqueeze(-1), {}, args);
      const at::Tensor loss = (fq.to(at::kFloat) - reference).pow(2).sum(-1);
      if (!best_loss.defined()) {
        best_loss = loss;
        best_amax = candidate;
        continue;
      }
      const at::Tensor improved = loss < best_loss;
      best_loss = at::where(improved, loss, best_loss);
      best_amax = at::where(improved, candidate, best_amax);
    }
    min_vals_ = -best_amax;
    max_vals_ = best_amax;
  }

 private:
  double start_, stop_, step_;
};

// NVFP4 weights: ModelOpt's NVFP4MSECalibrator sweep (fp8_scale_sweep): for every 16-element
// block try the 126 positive finite FP8 E4M3 values as the block scale, under the global scale
// of the weight's amax, and keep the one with the least squared error (the first on ties).
class Nvfp4Fp8SweepObserver final : public Observer {
 public:
  Nvfp4Fp8SweepObserver(const QuantArgs& args, TensorRole role, std::string tensor_name)
      : Observer(args, role, std::move(tensor_name)) {
    MOEQ_CHECK(role == TensorRole::kWeight && args.is_nvfp4(),
               "observer 'nvfp4_fp8_sweep' applies to NVFP4 weights only, not '{}'", tensor_name_);
  }
  std::string_view name() const override { return "nvfp4_fp8_sweep"; }

 protected:
  void update(const at::Tensor& x) override {
    const at::Tensor amax = kernels::block_amax(x, block_, tensor_name_.c_str());
    const at::Tensor global_amax = at::amax(amax, {-2, -1}, /*keepdim=*/true);
    const at::Tensor global_scale = nvfp4_global_scale_from_amax(global_amax.to(x.scalar_type()));
    // The kernel's block amax is 6 * scale / global_scale: the statistics whose qparams give the
    // chosen FP8 scale back.
    auto [scales, block_amax] = kernels::nvfp4_fp8_scale_sweep(
        x, global_scale, kernels::Convention::kCompressedTensors, tensor_name_.c_str());
    max_vals_ = block_amax.to(at::kFloat);
    min_vals_ = -max_vals_;
    global_amax_ = global_amax;
  }
};

std::string names_list() {
  std::string out;
  for (std::string_view name : kObserverNames) {
    out += out.empty() ? "" : ", ";
    out += name;
  }
  return out;
}

}  // namespace

std::string_view to_string(TensorRole role) {
  switch (role) {
    case TensorRole::kWeight:
      return "weight";
    case TensorRole::kInput:
      return "input";
    case TensorRole::kOutput:
      return "output";
  }
  return "tensor";
}

kernels::BlockShape block_shape(const QuantArgs& args, TensorRole role) {
  const bool weight = role == TensorRole::kWeight;
  switch (args.resolved_strategy()) {
    case Strategy::kTensor:
      return kernels::BlockShape::tensor();
    case Strategy::kChannel:
      MOEQ_CHECK(weight, "strategy 'channel' applies to weights; activations use 'token'");
      return kernels::BlockShape::channel();
    case Strategy::kToken:
      MOEQ_CHECK(!weight, "strategy 'token' applies to activations; weights use 'channel'");
      return kernels::BlockShape::channel();
    case Strategy::kGroup:
    case Strategy::kTensorGroup:
      return weight ? kernels::BlockShape::group(*args.group_size)
                    : kernels::BlockShape{0, *args.group_size};
    case Strategy::kBlock:
      MOEQ_CHECK(weight, "strategy 'block' applies to weights only");
      return kernels::BlockShape::block((*args.block_structure)[0], (*args.block_structure)[1]);
    case Strategy::kAttnHead:
      break;
  }
  MOEQ_FAIL("strategy '{}' is not supported by moeq's quantizers",
            to_string(args.resolved_strategy()));
}

Observer::Observer(const QuantArgs& args, TensorRole role, std::string tensor_name)
    : args_(args), role_(role), tensor_name_(std::move(tensor_name)) {
  block_ = block_shape(args_, role_);
}

Observer::~Observer() = default;

void Observer::observe(const at::Tensor& x) {
  MOEQ_CHECK(x.defined(), "{} '{}': no tensor to observe", to_string(role_), tensor_name_);
  MOEQ_CHECK(at::isFloatingType(x.scalar_type()) && x.element_size() >= 2,
             "{} '{}' must be float32, float16 or bfloat16 to be observed, got {}",
             to_string(role_), tensor_name_, c10::toString(x.scalar_type()));
  at::Tensor view = x;
  if (role_ == TensorRole::kWeight) {
    MOEQ_CHECK(x.dim() >= 2 && x.numel() > 0,
               "weight '{}' must be a non-empty [..., rows, cols] tensor, got shape {}",
               tensor_name_, fmt::join(x.sizes(), "x"));
    const Strategy s = args_.resolved_strategy();
    if (s == Strategy::kGroup || s == Strategy::kTensorGroup) {
      MOEQ_CHECK(x.size(-1) % *args_.group_size == 0,
                 "weight '{}': {} columns are not divisible by group_size {}", tensor_name_,
                 x.size(-1), *args_.group_size);
    }
  } else {
    if (x.numel() == 0) {
      return;  // an expert that got no tokens
    }
    MOEQ_CHECK(x.dim() >= 1, "{} '{}' must be [..., hidden]", to_string(role_), tensor_name_);
    MOEQ_CHECK(hidden_ < 0 || x.size(-1) == hidden_,
               "{} '{}': hidden size changed from {} to {} between batches", to_string(role_),
               tensor_name_, hidden_, x.size(-1));
    hidden_ = x.size(-1);
    view = x.reshape({-1, x.size(-1)});
  }
  observed_dtype_ = x.scalar_type();
  update(view);
}

const at::Tensor& Observer::min_vals() const {
  MOEQ_CHECK(has_statistics(), "{} '{}' has not been observed", to_string(role_), tensor_name_);
  return min_vals_;
}

const at::Tensor& Observer::max_vals() const {
  MOEQ_CHECK(has_statistics(), "{} '{}' has not been observed", to_string(role_), tensor_name_);
  return max_vals_;
}

at::Tensor Observer::absmax() const {
  return at::maximum(at::abs(min_vals()), at::abs(max_vals()));
}

at::Tensor Observer::global_amax() const {
  if (global_amax_.defined()) {
    return global_amax_;
  }
  return at::amax(absmax(), {-2, -1}, /*keepdim=*/true);
}

void Observer::set_statistics(const at::Tensor& min_vals, const at::Tensor& max_vals) {
  MOEQ_CHECK(min_vals.sizes() == max_vals.sizes(),
             "{} '{}': min and max statistics differ in shape", to_string(role_), tensor_name_);
  min_vals_ = min_vals.to(at::kFloat);
  max_vals_ = max_vals.to(at::kFloat);
  global_amax_.reset();
}

void Observer::reset() {
  min_vals_.reset();
  max_vals_.reset();
  global_amax_.reset();
  hidden_ = -1;
}

std::tuple<at::Tensor, at::Tensor> Observer::block_minmax(const at::Tensor& x) const {
  return kernels::block_minmax(x, block_, tensor_name_.c_str());
}

void Observer::merge_running(at::Tensor min_vals, at::Tensor max_vals) {
  if (!has_statistics()) {
    min_vals_ = std::move(min_vals);
    max_vals_ = std::move(max_vals);
    return;
  }
  min_vals_ = at::minimum(min_vals_, min_vals);
  max_vals_ = at::maximum(max_vals_, max_vals);
}

std::span<const std::string_view> observer_names() {
  return kObserverNames;
}

void check_observer_name(std::string_view name) {
  for (std::string_view known : kObserverNames) {
    if (known == name) {
      return;
    }
  }
  MOEQ_FAIL("unknown observer '{}': known observers are {}", name, names_list());
}

std::unique_ptr<Observer> make_observer(const QuantArgs& args,
                                        TensorRole role,
                                        std::string tensor_name) {
  const bool weight = role == TensorRole::kWeight;
  std::string name = args.observer ? *args.observer : (weight ? "minmax" : "static_minmax");
  check_observer_name(name);
  const bool symmetric_only = name == "absmax" || name == "percentile";
  MOEQ_CHECK(!symmetric_only || args.symmetric,
             "observer '{}' of '{}' is symmetric (|x|); asymmetric args need a min-max or mse "
             "observer",
             name, tensor_name);
  if (name == "minmax") {
    return std::make_unique<MinMaxObserver>(
        args, role, std::move(tensor_name),
        weight ? MinMaxMode::kMemoryless : MinMaxMode::kMovingAverage, "minmax");
  }
  if (name == "static_minmax") {
    return std::make_unique<MinMaxObserver>(args, role, std::move(tensor_name),
                                            weight ? MinMaxMode::kMemoryless : MinMaxMode::kRunning,
                                            "static_minmax");
  }
  if (name == "memoryless_minmax") {
    return std::make_unique<MinMaxObserver>(args, role, std::move(tensor_name),
                                            MinMaxMode::kMemoryless, "memoryless_minmax");
  }
  if (name == "absmax") {
    return std::make_unique<AbsmaxObserver>(args, role, std::move(tensor_name));
  }
  if (name == "percentile") {
    return std::make_unique<PercentileObserver>(args, role, std::move(tensor_name));
  }
  if (name == "mse" || name == "memoryless_mse") {
    return std::make_unique<MseObserver>(args, role, std::move(tensor_name),
                                         weight || name == "memoryless_mse");
  }
  if (name == "modelopt_mse") {
    return std::make_unique<ModelOptMseObserver>(args, role, std::move(tensor_name));
  }
  return std::make_unique<Nvfp4Fp8SweepObserver>(args, role, std::move(tensor_name));
}

}  // namespace moeq::quant
