#include "moeq/quant/modelopt.h"

#include <ATen/ATen.h>
#include <fmt/ranges.h>

#include <c10/util/accumulate.h>

#include <limits>
#include <utility>

#include "moeq/core/error.h"
#include "moeq/kernels/ops.h"

namespace moeq::quant {

namespace {

constexpr std::pair<ModelOptAlgo, std::string_view> kAlgos[] = {
    {ModelOptAlgo::kFp8, "FP8"},
    {ModelOptAlgo::kNvfp4, "NVFP4"},
    {ModelOptAlgo::kW4A16Nvfp4, "W4A16_NVFP4"},
    {ModelOptAlgo::kW4A16Awq, "W4A16_AWQ"},
};

constexpr double kE2m1Max = 6.0;
constexpr double kE4m3Max = 448.0;

bool is_nvfp4(ModelOptAlgo algo) {
  return algo == ModelOptAlgo::kNvfp4 || algo == ModelOptAlgo::kW4A16Nvfp4;
}

QuantizedTensors export_fp8(const ModelOptWeight& in) {
  // scale = amax / 448 (a zero amax gives 1, where ModelOpt would divide by 0)
  const at::Tensor scale = kernels::modelopt_scale_from_amax(in.weight_amax, kE4m3Max);
  // ModelOpt divides by a 0-dim scale, so torch rounds the quotient to the weight's dtype before
  // the FP8 cast; a stack is exported expert by expert.
  QuantizedTensors out;
  if (in.weight.dim() == 2) {
    out["weight"] = (in.weight / scale.reshape({})).to(at::kFloat8_e4m3fn);
    out["weight_scale"] = scale.reshape({});
    return out;
  }
  const at::Tensor per_expert = scale.reshape({-1});
  std::vector<at::Tensor> weights;
  for (int64_t e = 0; e < in.weight.size(0); ++e) {
    weights.push_back((in.weight[e] / per_expert[e]).to(at::kFloat8_e4m3fn));
  }
  out["weight"] = at::stack(weights);
  out["weight_scale"] = per_expert;
  return out;
}

QuantizedTensors export_nvfp4(const ModelOptWeight& in, const std::string& name) {
  const auto convention = kernels::Convention::kModelOpt;
  const at::Tensor scale_2 = kernels::nvfp4_global_scale(in.weight_amax, convention);
  auto [packed, block_scale] =
      kernels::quantize_nvfp4(in.weight, scale_2, convention, name.c_str());
  QuantizedTensors out;
  out["weight"] = packed;
  out["weight_scale"] = block_scale;
  out["weight_scale_2"] = in.weight.dim() == 2 ? scale_2.reshape({}) : scale_2.reshape({-1});
  return out;
}

QuantizedTensors export_int4_awq(const ModelOptWeight& in, const std::string& name) {
  const int64_t rows = in.weight.size(-2);
  const int64_t cols = in.weight.size(-1);
  const int64_t block = in.block_size;
  MOEQ_CHECK(block > 0 && cols % block == 0,
             "weight '{}': {} columns are not divisible by the INT4-AWQ block size {}", name, cols,
             block);
  MOEQ_CHECK(rows % 2 == 0,
             "weight '{}': INT4-AWQ packs two output rows per byte, but it has {} rows", name,
             rows);
  std::vector<int64_t> grid(in.weight.sizes().begin(), in.weight.sizes().end());
  grid.back() = cols / block;
  MOEQ_CHECK(in.weight_amax.numel() == c10::multiply_integers(grid),
             "weight '{}': INT4-AWQ needs one amax per block of {} ([{}]), got [{}]", name, block,
             fmt::join(grid, ", "), fmt::join(in.weight_amax.sizes(), ", "));
  // export_amax (zero or NaN -> 7, clamped) / 7; codes round(w / scale) in [-8, 7]
  const at::Tensor scale = kernels::modelopt_scale_from_amax(in.weight_amax.reshape(grid), 7.0);
  const at::Tensor codes = kernels::quantize_int(in.weight, scale, std::nullopt,
                                                 kernels::BlockShape::group(block), {-8, 7});
  QuantizedTensors out;
  out["weight"] = kernels::pack_int4_row_pairs(codes);
  out["weight_scale"] = scale;
  return out;
}

const at::Tensor& require(const QuantizedTensors& tensors,
                          const std::string& key,
                          ModelOptAlgo algo) {
  const auto it = tensors.find(key);
  MOEQ_CHECK(it != tensors.end() && it->second.defined(), "ModelOpt {} needs tensor '{}'",
             to_string(algo), key);
  return it->second;
}

// Broadcasts a per-tensor scale ([] or per expert [E]) against a [..., rows, cols] tensor.
at::Tensor per_tensor(const at::Tensor& scale) {
  return scale.dim() == 0 ? scale : scale.reshape({-1, 1, 1});
}

}  // namespace

std::string_view to_string(ModelOptAlgo algo) {
  for (const auto& [value, name] : kAlgos) {
    if (value == algo) {
      return name;
    }
  }
  return "UNKNOWN";
}

ModelOptAlgo parse_modelopt_algo(std::string_view text) {
  for (const auto& [value, name] : kAlgos) {
    if (name == text) {
      return value;
    }
  }
  MOEQ_FAIL(
      "ModelOpt quant_algo '{}' is not exported by moeq (FP8, NVFP4, W4A16_NVFP4, "
      "W4A16_AWQ)",
      text);
}

QuantizedTensors export_modelopt(ModelOptAlgo algo,
                                 const ModelOptWeight& in,
                                 const std::string& tensor_name) {
  MOEQ_CHECK(in.weight.defined() && (in.weight.dim() == 2 || in.weight.dim() == 3),
             "weight '{}' must be [out, in] or a stack [E, out, in]", tensor_name);
  MOEQ_CHECK(in.weight_amax.defined(), "weight '{}': ModelOpt {} needs the weight amax",
             tensor_name, to_string(algo));
  QuantizedTensors out;
  switch (algo) {
    case ModelOptAlgo::kFp8:
      out = export_fp8(in);
      break;
    case ModelOptAlgo::kNvfp4:
    case ModelOptAlgo::kW4A16Nvfp4:
      out = export_nvfp4(in, tensor_name);
      break;
    case ModelOptAlgo::kW4A16Awq:
      out = export_int4_awq(in, tensor_name);
      break;
  }
  if (in.input_amax.defined() && algo != ModelOptAlgo::kW4A16Nvfp4 &&
      algo != ModelOptAlgo::kW4A16Awq) {
    // get_activation_scaling_factor: export_amax (0 or NaN -> maxbound) / 448 for FP8
    // (maxbound 448), / (6 * 448) for NVFP4 (maxbound 6)
    const bool fp8 = algo == ModelOptAlgo::kFp8;
    const double maxbound = fp8 ? kE4m3Max : kE2m1Max;
    at::Tensor amax = in.input_amax.to(at::kFloat);
    amax = at::nan_to_num(at::where(amax == 0, maxbound, amax), maxbound);
    out["input_scale"] = (amax / (fp8 ? kE4m3Max : kE2m1Max * kE4m3Max)).squeeze();
  }
  if (in.pre_quant_scale.defined()) {
    out["pre_quant_scale"] = in.pre_quant_scale.squeeze();
  }
  return out;
}

QuantizedTensors export_modelopt(ModelOptAlgo algo,
                                 const TensorQuantizer& weight_quantizer,
                                 const TensorQuantizer* input_quantizer,
                                 const at::Tensor& weight,
                                 const at::Tensor& pre_quant_scale) {
  const QuantArgs& args = weight_quantizer.args();
  const std::string& name = weight_quantizer.tensor_name();
  ModelOptWeight in;
  in.weight = weight;
  in.pre_quant_scale = pre_quant_scale;
  switch (algo) {
    case ModelOptAlgo::kFp8:
      MOEQ_CHECK(args.is_fp8() && args.resolved_strategy() == Strategy::kTensor,
                 "weight '{}': ModelOpt FP8 needs per-tensor fp8 weight args", name);
      in.weight_amax = weight_quantizer.observer().absmax();
      break;
    case ModelOptAlgo::kNvfp4:
    case ModelOptAlgo::kW4A16Nvfp4:
      MOEQ_CHECK(args.is_nvfp4(), "weight '{}': ModelOpt {} needs NVFP4 weight args", name,
                 to_string(algo));
      in.weight_amax = weight_quantizer.global_amax();
      break;
    case ModelOptAlgo::kW4A16Awq:
      MOEQ_CHECK(args.type == QuantType::kInt && args.num_bits == 4 && args.symmetric &&
                     args.resolved_strategy() == Strategy::kGroup,
                 "weight '{}': ModelOpt W4A16_AWQ needs symmetric int4 group weight args", name);
      in.weight_amax = weight_quantizer.observer().absmax();
      in.block_size = *args.group_size;
      break;
  }
  if (input_quantizer && algo != ModelOptAlgo::kW4A16Nvfp4 && algo != ModelOptAlgo::kW4A16Awq) {
    in.input_amax = input_quantizer->args().resolved_strategy() == Strategy::kTensorGroup
                        ? input_quantizer->global_amax()
                        : input_quantizer->observer().absmax();
  }
  return export_modelopt(algo, in, name);
}

at::Tensor dequantize_modelopt(ModelOptAlgo algo,
                               const QuantizedTensors& tensors,
                               at::ScalarType out_dtype,
                               int64_t block_size) {
  const at::Tensor& weight = require(tensors, "weight", algo);
  const at::Tensor& scale = require(tensors, "weight_scale", algo);
  if (algo == ModelOptAlgo::kFp8) {
    // quant_utils.from_quantized_weight
    return weight.to(out_dtype) * per_tensor(scale).to(out_dtype);
  }
  if (is_nvfp4(algo)) {
    return kernels::dequantize_nvfp4(weight, scale, require(tensors, "weight_scale_2", algo),
                                     out_dtype, kernels::Convention::kModelOpt);
  }
  const at::Tensor codes = kernels::unpack_int4_row_pairs(weight);
  return (codes.to(out_dtype) * scale.repeat_interleave(block_size, -1)).to(out_dtype);
}

at::Tensor fake_quantize_modelopt(ModelOptAlgo algo, const ModelOptWeight& in) {
  const at::Tensor& x = in.weight;
  if (algo == ModelOptAlgo::kFp8) {
    // tensor_quant._fp8_eager
    const at::Tensor amax = in.weight_amax.to(at::kFloat);
    const at::Tensor safe = at::where(amax <= std::ldexp(1.0, -24), 1.0, amax);
    const at::Tensor scale = at::reciprocal(safe) * kE4m3Max;  // 448.0 / safe_amax
    const at::Tensor scale_inv = at::reciprocal(scale);        // 1 / scale
    const at::Tensor q =
        at::clamp(x.to(at::kFloat) * scale, -kE4m3Max, kE4m3Max).to(at::kFloat8_e4m3fn);
    return (q.to(at::kFloat) * scale_inv).to(x.scalar_type());
  }
  if (algo == ModelOptAlgo::kW4A16Awq) {
    // tensor_quant._tensor_quant(num_bits=4, narrow_range=True) per static block
    const int64_t block = in.block_size;
    const at::Tensor blocks = x.to(at::kFloat).unflatten(-1, {-1, block});
    const at::Tensor amax = in.weight_amax.to(at::kFloat)
                                .reshape(blocks.sizes().slice(0, blocks.dim() - 1))
                                .unsqueeze(-1);
    const at::Tensor zero = amax <= std::ldexp(1.0, -24);
    const at::Tensor scale = at::where(zero, 0.0, at::scalar_tensor(7.0, amax.options()) / amax);
    const at::Tensor q = at::clamp(at::round(blocks * scale), -7, 7);
    return (q / at::where(zero, 1.0, scale)).flatten(-2).to(x.scalar_type());
  }
  return kernels::fake_quant_nvfp4(
      x, kernels::nvfp4_global_scale(in.weight_amax, kernels::Convention::kModelOpt),
      kernels::Convention::kModelOpt, "weight");
}

}  // namespace moeq::quant
