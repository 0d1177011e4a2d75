#include "moeq/quant/tensor_quantizer.h"

#include <ATen/ATen.h>
#include <fmt/ranges.h>

#include <algorithm>

#include "moeq/core/error.h"
#include "moeq/kernels/ops.h"

namespace moeq::quant {

namespace {

kernels::IntRange int_range(const QuantArgs& args) {
  return kernels::IntRange::signed_bits(args.num_bits);
}

std::optional<at::Tensor> maybe(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

kernels::MxElement mx_element(const QuantArgs& args) {
  return args.num_bits == 4 ? kernels::MxElement::kFp4E2M1 : kernels::MxElement::kFp8E4M3;
}

// A weight scale grid [..., R, C] in the shape compressed-tensors initializes: [1] per tensor
// (per expert: [..., 1]), otherwise the grid itself ([out, 1], [out, G], [R, C]).
at::Tensor weight_param_shape(const at::Tensor& grid, Strategy strategy) {
  return strategy == Strategy::kTensor ? grid.flatten(-2) : grid;
}

// The dynamic per-token (group) block of an activation [tokens, hidden].
kernels::BlockShape dynamic_block(const QuantArgs& args) {
  switch (args.resolved_strategy()) {
    case Strategy::kToken:
      return kernels::BlockShape::channel();
    case Strategy::kGroup:
    case Strategy::kTensorGroup:
      return kernels::BlockShape::group(*args.group_size);
    default:
      return kernels::BlockShape::tensor();
  }
}

// compressed-tensors stores an MX scale 2^e as the biased exponent 127 + floor(log2(scale))
// (compressors/mx_utils.py: compress_mx_scale).
at::Tensor mx_codes(const at::Tensor& scale) {
  return (127 + at::floor(at::log2(scale)).to(at::kInt)).to(at::kByte);
}

// Weights and static activations: quantize-dequantize with the calibrated qparams.
at::Tensor fake_quant_with_qparams(const at::Tensor& x,
                                   const QParams& qp,
                                   const QuantArgs& args,
                                   kernels::BlockShape block,
                                   const std::string& name) {
  if (args.is_nvfp4()) {
    return kernels::fake_quant_nvfp4_with_scales(
        x, qp.scale.to(at::kFloat8_e4m3fn), qp.global_scale,
        kernels::Convention::kCompressedTensors, name.c_str());
  }
  if (args.is_mx()) {
    return kernels::fake_quant_mx_with_scales(x, mx_codes(qp.scale), mx_element(args),
                                              kernels::Convention::kCompressedTensors,
                                              name.c_str());
  }
  if (args.type == QuantType::kInt) {
    return kernels::fake_quant_int(x, qp.scale, qp.zero_point, block, int_range(args));
  }
  return kernels::fake_quant_fp8(x, qp.scale, block, at::kFloat8_e4m3fn, qp.zero_point);
}

void check_format(const QuantArgs& args, CompressionFormat format, const std::string& name) {
  const auto fail = [&]() {
    MOEQ_FAIL("weight '{}': format '{}' cannot store {}-bit {} weights with strategy '{}'", name,
              to_string(format), args.num_bits, to_string(args.type),
              to_string(args.resolved_strategy()));
  };
  switch (format) {
    case CompressionFormat::kPackQuantized:
    case CompressionFormat::kIntQuantized:
      if (args.type != QuantType::kInt) {
        fail();
      }
      break;
    case CompressionFormat::kFloatQuantized:
      if (!args.is_fp8() || args.is_mx()) {
        fail();
      }
      break;
    case CompressionFormat::kNaiveQuantized:
      if (args.is_fp4() || args.is_mx()) {
        fail();
      }
      break;
    case CompressionFormat::kNvfp4PackQuantized:
      if (!args.is_nvfp4()) {
        fail();
      }
      break;
    case CompressionFormat::kMxfp4PackQuantized:
      if (!args.is_mx() || args.num_bits != 4) {
        fail();
      }
      break;
    case CompressionFormat::kMxfp8Quantized:
      if (!args.is_mx() || args.num_bits != 8) {
        fail();
      }
      break;
    case CompressionFormat::kDense:
    case CompressionFormat::kMixedPrecision:
      MOEQ_FAIL("weight '{}': format '{}' stores no quantized weight", name, to_string(format));
  }
}

const at::Tensor& require(const QuantizedTensors& tensors,
                          const std::string& key,
                          CompressionFormat format) {
  const auto it = tensors.find(key);
  MOEQ_CHECK(it != tensors.end() && it->second.defined(), "format '{}' needs tensor '{}'",
             to_string(format), key);
  return it->second;
}

}  // namespace

TensorQuantizer::TensorQuantizer(QuantArgs args, TensorRole role, std::string tensor_name)
    : args_(std::move(args)), role_(role), tensor_name_(std::move(tensor_name)) {
  args_.validate();
  MOEQ_CHECK(role_ != TensorRole::kWeight || args_.dynamic == DynamicMode::kStatic,
             "weight '{}' cannot be quantized dynamically (dynamic must be false)", tensor_name_);
  if (args_.dynamic != DynamicMode::kDynamic) {
    observer_ = make_observer(args_, role_, tensor_name_);
  }
}

TensorQuantizer::TensorQuantizer(TensorQuantizer&&) noexcept = default;
TensorQuantizer& TensorQuantizer::operator=(TensorQuantizer&&) noexcept = default;
TensorQuantizer::~TensorQuantizer() = default;

Observer& TensorQuantizer::observer() {
  MOEQ_CHECK(observer_, "{} '{}' is quantized dynamically and has no observer", to_string(role_),
             tensor_name_);
  return *observer_;
}

const Observer& TensorQuantizer::observer() const {
  MOEQ_CHECK(observer_, "{} '{}' is quantized dynamically and has no observer", to_string(role_),
             tensor_name_);
  return *observer_;
}

void TensorQuantizer::observe(const at::Tensor& x) {
  if (observer_) {
    observer_->observe(x);
    shared_global_amax_.reset();
  }
}

at::Tensor TensorQuantizer::global_amax() const {
  MOEQ_CHECK(args_.resolved_strategy() == Strategy::kTensorGroup,
             "{} '{}' has no global scale (strategy '{}')", to_string(role_), tensor_name_,
             to_string(args_.resolved_strategy()));
  if (shared_global_amax_.defined()) {
    return shared_global_amax_;
  }
  return observer().global_amax();
}

void TensorQuantizer::share_global_amax(const at::Tensor& amax) {
  const at::Tensor own = global_amax();
  MOEQ_CHECK(amax.sizes() == own.sizes(),
             "{} '{}': a shared global amax of shape [{}] does not fit its [{}]", to_string(role_),
             tensor_name_, fmt::join(amax.sizes(), ", "), fmt::join(own.sizes(), ", "));
  shared_global_amax_ = amax.to(at::kFloat);
}

void TensorQuantizer::load_qparams(QParams qparams) {
  MOEQ_CHECK(role_ != TensorRole::kWeight && args_.dynamic != DynamicMode::kDynamic,
             "{} '{}': only static or locally dynamic activation scales are loaded",
             to_string(role_), tensor_name_);
  loaded_ = std::move(qparams);
}

QParams TensorQuantizer::qparams() const {
  if (loaded_) {
    return *loaded_;
  }
  MOEQ_CHECK(calibrated(), "{} '{}' has no statistics: observe it before quantizing",
             to_string(role_), tensor_name_);
  const at::ScalarType dtype = observer_->observed_dtype();
  at::Tensor global_scale;
  if (args_.resolved_strategy() == Strategy::kTensorGroup) {
    global_scale = nvfp4_global_scale_from_amax(global_amax().to(dtype));
    if (args_.dynamic == DynamicMode::kLocal) {
      QParams out;
      out.global_scale = global_scale;
      return out;
    }
  }
  return calculate_qparams(observer_->min_vals(), observer_->max_vals(), args_, dtype,
                           global_scale);
}

at::Tensor TensorQuantizer::fake_quantize(const at::Tensor& x) {
  if (x.numel() == 0) {
    return x.clone();
  }
  return role_ == TensorRole::kWeight ? fake_quantize_weight(x) : fake_quantize_activation(x);
}

at::Tensor TensorQuantizer::fake_quantize_weight(const at::Tensor& x) {
  if (!calibrated()) {
    observe(x);
  }
  return fake_quant_with_qparams(x, qparams(), args_, observer_->block(), tensor_name_);
}

at::Tensor TensorQuantizer::fake_quantize_activation(const at::Tensor& x) const {
  const at::Tensor flat = x.reshape({-1, x.size(-1)});
  const char* what = tensor_name_.c_str();
  const auto ct = kernels::Convention::kCompressedTensors;
  at::Tensor out;
  if (args_.dynamic == DynamicMode::kDynamic) {
    MOEQ_CHECK(!args_.is_nvfp4(),
               "{} '{}': NVFP4 activations need dynamic=\"local\" (a calibrated global scale)",
               to_string(role_), tensor_name_);
    const kernels::BlockShape block = dynamic_block(args_);
    if (args_.is_mx()) {
      out = kernels::fake_quant_mx(flat, mx_element(args_), ct, what);
    } else if (args_.type == QuantType::kInt) {
      out = kernels::fake_quant_int_dynamic(flat, block, int_range(args_), args_.symmetric, what);
    } else {
      out = kernels::fake_quant_fp8_dynamic(flat, block, at::kFloat8_e4m3fn, what);
    }
  } else if (args_.dynamic == DynamicMode::kLocal) {
    out = kernels::fake_quant_nvfp4(flat, qparams().global_scale, ct, what);
  } else {
    out = fake_quant_with_qparams(flat, qparams(), args_, observer_->block(), tensor_name_);
  }
  return out.reshape(x.sizes());
}

QuantizedTensors TensorQuantizer::quantize_weight(const at::Tensor& w, CompressionFormat format) {
  MOEQ_CHECK(role_ == TensorRole::kWeight, "{} '{}' is not a weight", to_string(role_),
             tensor_name_);
  MOEQ_CHECK(w.dim() == 2 || w.dim() == 3,
             "weight '{}' must be [out, in] or a stack [E, out, in], got shape [{}]", tensor_name_,
             fmt::join(w.sizes(), ", "));
  check_format(args_, format, tensor_name_);
  if (!calibrated()) {
    observe(w);
  }
  const Strategy strategy = args_.resolved_strategy();
  const kernels::BlockShape block = observer_->block();
  const at::ScalarType param_dtype = scale_param_dtype(observer_->observed_dtype());
  QuantizedTensors out;

  const QParams qp = qparams();
  const char* what = tensor_name_.c_str();
  const auto ct = kernels::Convention::kCompressedTensors;
  if (args_.is_mx()) {
    const at::Tensor codes = mx_codes(qp.scale);
    out[args_.num_bits == 4 ? "weight_packed" : "weight"] =
        kernels::quantize_mx_with_scales(w, codes, mx_element(args_), ct, what);
    out["weight_scale"] = codes;
    return out;
  }
  if (args_.is_nvfp4()) {
    const at::Tensor block_scale = qp.scale.to(at::kFloat8_e4m3fn);
    out["weight_packed"] =
        kernels::quantize_nvfp4_with_scales(w, block_scale, qp.global_scale, ct, what);
    out["weight_scale"] = block_scale;
    out["weight_global_scale"] = qp.global_scale.flatten(-2);
    return out;
  }
  const at::Tensor& zero_point = qp.zero_point;
  const bool write_zero_point = !args_.symmetric;  // compressed-tensors drops symmetric ones
  out["weight_scale"] = weight_param_shape(qp.scale, strategy).to(param_dtype);
  if (format == CompressionFormat::kPackQuantized) {
    out["weight_packed"] =
        kernels::quantize_int_packed(w, qp.scale, zero_point, block, args_.num_bits);
    std::vector<int64_t> shape(w.sizes().begin(), w.sizes().end());
    at::Tensor weight_shape = at::tensor(shape, at::kLong);
    if (w.dim() == 3) {
      weight_shape = at::tensor({w.size(1), w.size(2)}, at::kLong).repeat({w.size(0), 1});
    }
    out["weight_shape"] = weight_shape;
    if (write_zero_point) {
      out["weight_zero_point"] = strategy == Strategy::kGroup || strategy == Strategy::kChannel
                                     ? kernels::pack_int_rows(zero_point, args_.num_bits)
                                     : weight_param_shape(zero_point, strategy);
    }
    return out;
  }
  // int-quantized, float-quantized, naive-quantized: one value per element in its storage dtype
  if (args_.type == QuantType::kInt) {
    at::Tensor codes = kernels::quantize_int(w, qp.scale, zero_point, block, int_range(args_));
    out["weight"] = codes.to(args_.storage_dtype());
  } else {
    out["weight"] = kernels::quantize_fp8(w, qp.scale, block, at::kFloat8_e4m3fn, zero_point);
  }
  if (write_zero_point) {
    out["weight_zero_point"] = weight_param_shape(zero_point, strategy);
  }
  return out;
}

QuantizedTensors TensorQuantizer::activation_tensors(at::ScalarType weight_dtype) const {
  QuantizedTensors out;
  if (args_.dynamic == DynamicMode::kDynamic) {
    return out;
  }
  MOEQ_CHECK(calibrated(),
             "{} '{}' has no statistics: no calibration tokens reached it, so it has no static "
             "scale",
             to_string(role_), tensor_name_);
  const std::string prefix(to_string(role_));
  const QParams qp = qparams();
  if (args_.dynamic == DynamicMode::kLocal) {
    out[prefix + "_global_scale"] = qp.global_scale.reshape({1});
    return out;
  }
  const at::ScalarType dtype = scale_param_dtype(weight_dtype);
  out[prefix + "_scale"] = qp.scale.reshape({-1}).to(dtype);
  if (!args_.symmetric) {
    out[prefix + "_zero_point"] = qp.zero_point.reshape({-1});
  }
  if (qp.global_scale.defined()) {
    out[prefix + "_global_scale"] = qp.global_scale.reshape({1});
  }
  return out;
}

at::Tensor dequantize_weight(const QuantizedTensors& tensors,
                             const QuantArgs& args_in,
                             CompressionFormat format,
                             at::ScalarType out_dtype) {
  QuantArgs args = args_in;
  args.validate();
  const auto get = [&](const std::string& key) -> const at::Tensor& {
    return require(tensors, key, format);
  };
  const auto find = [&](const std::string& key) -> at::Tensor {
    const auto it = tensors.find(key);
    return it == tensors.end() ? at::Tensor() : it->second;
  };
  const Strategy strategy = args.resolved_strategy();
  const kernels::BlockShape block = block_shape(args, TensorRole::kWeight);
  // Back to the block grid [..., R, C] from compressed-tensors' parameter shape.
  const auto grid = [&](const at::Tensor& t) {
    return strategy == Strategy::kTensor ? t.unsqueeze(-1) : t;
  };
  switch (format) {
    case CompressionFormat::kNvfp4PackQuantized:
      return kernels::dequantize_nvfp4(get("weight_packed"), get("weight_scale"),
                                       get("weight_global_scale"), out_dtype);
    case CompressionFormat::kMxfp4PackQuantized:
      return kernels::dequantize_mx(get("weight_packed"), get("weight_scale"),
                                    kernels::MxElement::kFp4E2M1, out_dtype);
    case CompressionFormat::kMxfp8Quantized:
      return kernels::dequantize_mx(get("weight"), get("weight_scale"),
                                    kernels::MxElement::kFp8E4M3, out_dtype);
    case CompressionFormat::kPackQuantized: {
      const at::Tensor& shape = get("weight_shape");
      const at::Tensor& scale = get("weight_scale");
      const int64_t rows = shape.reshape({-1, 2})[0][0].item<int64_t>();
      const int64_t cols = shape.reshape({-1, 2})[0][1].item<int64_t>();
      const at::Tensor codes = kernels::unpack_int(get("weight_packed"), args.num_bits, cols);
      at::Tensor zero_point = find("weight_zero_point");
      if (zero_point.defined() &&
          (strategy == Strategy::kGroup || strategy == Strategy::kChannel)) {
        zero_point = kernels::unpack_int_rows(zero_point, args.num_bits, rows);
      } else if (zero_point.defined()) {
        zero_point = grid(zero_point);
      }
      return kernels::dequantize_int(codes, grid(scale), maybe(zero_point), block, out_dtype);
    }
    case CompressionFormat::kIntQuantized:
    case CompressionFormat::kFloatQuantized:
    case CompressionFormat::kNaiveQuantized: {
      const at::Tensor& weight = get("weight");
      const at::Tensor scale = grid(get("weight_scale"));
      if (weight.scalar_type() == at::kFloat8_e4m3fn) {
        return kernels::dequantize_fp8(weight, scale, block, out_dtype);
      }
      at::Tensor zero_point = find("weight_zero_point");
      if (zero_point.defined()) {
        zero_point = grid(zero_point);
      }
      return kernels::dequantize_int(weight.to(at::kChar), scale, maybe(zero_point), block,
                                     out_dtype);
    }
    case CompressionFormat::kDense:
    case CompressionFormat::kMixedPrecision:
      break;
  }
  MOEQ_FAIL("format '{}' stores no quantized weight", to_string(format));
}

void fuse_global_scale(std::span<TensorQuantizer* const> quantizers) {
  MOEQ_CHECK(!quantizers.empty(), "fuse_global_scale: no quantizers");
  at::Tensor amax;
  for (TensorQuantizer* q : quantizers) {
    MOEQ_CHECK(q->args().is_nvfp4(),
               "weight '{}' is not NVFP4: only NVFP4 global scales are shared by fused layers",
               q->tensor_name());
    const at::Tensor own = q->global_amax();
    MOEQ_CHECK(!amax.defined() || own.sizes() == amax.sizes(),
               "weight '{}': global amax of shape [{}] cannot be fused with [{}]", q->tensor_name(),
               fmt::join(own.sizes(), ", "), fmt::join(amax.sizes(), ", "));
    amax = amax.defined() ? at::maximum(amax, own) : own;
  }
  for (TensorQuantizer* q : quantizers) {
    q->share_global_amax(amax);
  }
}

ExpertQuantizers::ExpertQuantizers(const QuantScheme& scheme,
                                   int64_t num_experts,
                                   std::string name_pattern)
    : scheme_(scheme) {
  scheme_.validate();
  MOEQ_CHECK(scheme_.weights, "expert quantizers '{}': the scheme quantizes no weights",
             name_pattern);
  MOEQ_CHECK(num_experts > 0, "expert quantizers '{}': need at least one expert, got {}",
             name_pattern, num_experts);
  const bool has_slot = name_pattern.find("{}") != std::string::npos;
  const auto name = [&](const std::string& index) {
    return has_slot ? fmt::format(fmt::runtime(name_pattern), index)
                    : fmt::format("{}[{}]", name_pattern, index);
  };
  weights_.reserve(static_cast<size_t>(num_experts));
  for (int64_t e = 0; e < num_experts; ++e) {
    weights_.emplace_back(*scheme_.weights, TensorRole::kWeight, name(std::to_string(e)));
  }
  if (scheme_.input_activations) {
    std::string input_name = name("*");
    if (input_name.ends_with(".weight")) {
      input_name.resize(input_name.size() - 7);
    }
    input_ = std::make_unique<TensorQuantizer>(*scheme_.input_activations, TensorRole::kInput,
                                               input_name + ".input");
  }
}

TensorQuantizer& ExpertQuantizers::weight(int64_t expert) {
  MOEQ_CHECK(expert >= 0 && expert < num_experts(), "expert {} out of range [0, {})", expert,
             num_experts());
  return weights_[static_cast<size_t>(expert)];
}

void ExpertQuantizers::observe_weights(const at::Tensor& stack) {
  MOEQ_CHECK(stack.dim() == 3 && stack.size(0) == num_experts(),
             "expert weights of '{}' must be a stack [{}, out, in], got shape [{}]",
             weights_[0].tensor_name(), num_experts(), fmt::join(stack.sizes(), ", "));
  for (int64_t e = 0; e < num_experts(); ++e) {
    weights_[static_cast<size_t>(e)].observe(stack.select(0, e));
  }
}

void ExpertQuantizers::observe_input(const at::Tensor& x) {
  if (input_) {
    input_->observe(x);
  }
}

at::Tensor ExpertQuantizers::fake_quantize_weights(const at::Tensor& stack) {
  MOEQ_CHECK(stack.dim() == 3 && stack.size(0) == num_experts(),
             "expert weights of '{}' must be a stack [{}, out, in], got shape [{}]",
             weights_[0].tensor_name(), num_experts(), fmt::join(stack.sizes(), ", "));
  at::Tensor out = at::empty_like(stack);
  for (int64_t e = 0; e < num_experts(); ++e) {
    out.select(0, e).copy_(weights_[static_cast<size_t>(e)].fake_quantize(stack.select(0, e)));
  }
  return out;
}

QuantizedTensors ExpertQuantizers::quantize_expert(int64_t expert,
                                                   const at::Tensor& w,
                                                   std::optional<CompressionFormat> format) {
  TensorQuantizer& q = weight(expert);
  QuantizedTensors out = q.quantize_weight(w, format.value_or(scheme_.compression_format()));
  if (input_) {
    out.merge(input_->activation_tensors(q.observer().observed_dtype()));
  }
  return out;
}

void ExpertQuantizers::share_global_scales(std::span<ExpertQuantizers* const> fused) {
  MOEQ_CHECK(!fused.empty(), "share_global_scales: no expert groups");
  const int64_t n = fused[0]->num_experts();
  for (ExpertQuantizers* group : fused) {
    MOEQ_CHECK(group->num_experts() == n,
               "expert groups fused for one global scale differ in size: {} and {}", n,
               group->num_experts());
  }
  std::vector<TensorQuantizer*> members(fused.size());
  for (int64_t e = 0; e < n; ++e) {
    std::transform(fused.begin(), fused.end(), members.begin(),
                   [e](ExpertQuantizers* g) { return &g->weight(e); });
    fuse_global_scale(members);
  }
}

}  // namespace moeq::quant
