// Scheme-level torch ops for Python (conformance tests, benchmarks): torch.ops.moeq.* once
// libmoeq_quant.so is loaded after libmoeq_kernels.so (which holds TORCH_LIBRARY(moeq, ...)).
// Quantized tensors travel as two parallel lists (suffixes, tensors).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "moeq/core/error.h"
#include "moeq/quant/modelopt.h"
#include "moeq/quant/scheme.h"
#include "moeq/quant/tensor_quantizer.h"

namespace moeq::quant {

namespace {

using NamedTensors = std::tuple<std::vector<std::string>, std::vector<at::Tensor>>;

NamedTensors to_lists(const QuantizedTensors& tensors) {
  NamedTensors out;
  for (const auto& [name, tensor] : tensors) {
    std::get<0>(out).push_back(name);
    std::get<1>(out).push_back(tensor);
  }
  return out;
}

QuantizedTensors from_lists(const std::vector<std::string>& names,
                            const std::vector<at::Tensor>& tensors) {
  MOEQ_CHECK(names.size() == tensors.size(), "{} names for {} tensors", names.size(),
             tensors.size());
  QuantizedTensors out;
  for (size_t i = 0; i < names.size(); ++i) {
    out[names[i]] = tensors[i];
  }
  return out;
}

QuantArgs parse_args(const std::string& args_json) {
  return QuantArgs::from_json(nlohmann::json::parse(args_json));
}

QuantScheme weight_scheme(const QuantArgs& args) {
  QuantScheme scheme;
  scheme.targets = {"Linear"};
  scheme.weights = args;
  return scheme;
}

CompressionFormat format_or_inferred(const std::string& format, const QuantScheme& scheme) {
  return format.empty() ? scheme.compression_format() : parse_compression_format(format);
}

// w [out, in] (or a stack [E, out, in]) with an args JSON; format "" infers it from the args.
NamedTensors quantize_weight_op(const at::Tensor& w,
                                const std::string& args_json,
                                const std::string& format) {
  const QuantArgs args = parse_args(args_json);
  TensorQuantizer quantizer(args, TensorRole::kWeight, "weight");
  quantizer.observe(w);
  return to_lists(quantizer.quantize_weight(w, format_or_inferred(format, weight_scheme(args))));
}

// A whole linear by a scheme JSON: the input quantizer observes `inputs` batch by batch.
NamedTensors quantize_linear_op(const at::Tensor& w,
                                const std::string& scheme_json,
                                const std::vector<at::Tensor>& inputs,
                                const std::string& format) {
  const QuantScheme scheme = QuantScheme::from_json(nlohmann::json::parse(scheme_json));
  ExpertQuantizers quantizers(scheme, 1, "linear.weight");
  quantizers.weight(0).observe(w);
  for (const at::Tensor& x : inputs) {
    quantizers.observe_input(x);
  }
  const std::optional<CompressionFormat> fmt =
      format.empty() ? std::nullopt : std::optional(parse_compression_format(format));
  return to_lists(quantizers.quantize_expert(0, w, fmt));
}

at::Tensor fake_quantize_weight_op(const at::Tensor& w, const std::string& args_json) {
  TensorQuantizer quantizer(parse_args(args_json), TensorRole::kWeight, "weight");
  return quantizer.fake_quantize(w);
}

// Static args calibrate on `calibration` first; dynamic ones use x alone.
at::Tensor fake_quantize_activation_op(const at::Tensor& x,
                                       const std::string& args_json,
                                       const std::vector<at::Tensor>& calibration) {
  TensorQuantizer quantizer(parse_args(args_json), TensorRole::kInput, "input");
  for (const at::Tensor& batch : calibration) {
    quantizer.observe(batch);
  }
  return quantizer.fake_quantize(x);
}

at::Tensor dequantize_weight_op(const std::vector<std::string>& names,
                                const std::vector<at::Tensor>& tensors,
                                const std::string& args_json,
                                const std::string& format,
                                at::ScalarType dtype) {
  const QuantArgs args = parse_args(args_json);
  return dequantize_weight(from_lists(names, tensors), args,
                           format_or_inferred(format, weight_scheme(args)), dtype);
}

// The observer's statistics (min_vals, max_vals) for w.
std::tuple<at::Tensor, at::Tensor> observe_weight_op(const at::Tensor& w,
                                                     const std::string& args_json) {
  TensorQuantizer quantizer(parse_args(args_json), TensorRole::kWeight, "weight");
  quantizer.observe(w);
  return {quantizer.observer().min_vals(), quantizer.observer().max_vals()};
}

ModelOptWeight modelopt_weight(const at::Tensor& w,
                               const at::Tensor& weight_amax,
                               const std::optional<at::Tensor>& input_amax,
                               const std::optional<at::Tensor>& pre_quant_scale,
                               int64_t block_size) {
  ModelOptWeight in;
  in.weight = w;
  in.weight_amax = weight_amax;
  in.input_amax = input_amax.value_or(at::Tensor());
  in.pre_quant_scale = pre_quant_scale.value_or(at::Tensor());
  in.block_size = block_size;
  return in;
}

NamedTensors quantize_weight_modelopt_op(const at::Tensor& w,
                                         const std::string& algo,
                                         const at::Tensor& weight_amax,
                                         const std::optional<at::Tensor>& input_amax,
                                         const std::optional<at::Tensor>& pre_quant_scale,
                                         int64_t block_size) {
  return to_lists(export_modelopt(
      parse_modelopt_algo(algo),
      modelopt_weight(w, weight_amax, input_amax, pre_quant_scale, block_size), "weight"));
}

at::Tensor dequantize_modelopt_op(const std::vector<std::string>& names,
                                  const std::vector<at::Tensor>& tensors,
                                  const std::string& algo,
                                  at::ScalarType dtype,
                                  int64_t block_size) {
  return dequantize_modelopt(parse_modelopt_algo(algo), from_lists(names, tensors), dtype,
                             block_size);
}

at::Tensor fake_quantize_modelopt_op(const at::Tensor& w,
                                     const std::string& algo,
                                     const at::Tensor& weight_amax,
                                     int64_t block_size) {
  return fake_quantize_modelopt(
      parse_modelopt_algo(algo),
      modelopt_weight(w, weight_amax, std::nullopt, std::nullopt, block_size));
}

// The named scheme as compressed-tensors' JSON, its format and its ModelOpt quant_algo.
std::tuple<std::string, std::string, std::string> preset_scheme_op(const std::string& name) {
  const PresetInfo& info = find_preset(name);
  const QuantScheme scheme = preset_scheme(name);
  return {scheme.to_json().dump(), std::string(to_string(scheme.compression_format())),
          std::string(info.modelopt_algo)};
}

// Parses and re-serializes QuantArgs (JSON round trips from Python).
std::string quant_args_json_op(const std::string& args_json) {
  return parse_args(args_json).to_json().dump();
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def("quantize_weight(Tensor w, str args_json, str format) -> (str[], Tensor[])",
        TORCH_FN(quantize_weight_op));
  m.def(
      "quantize_linear(Tensor w, str scheme_json, Tensor[] inputs, str format) -> "
      "(str[], Tensor[])",
      TORCH_FN(quantize_linear_op));
  m.def("fake_quantize_weight(Tensor w, str args_json) -> Tensor",
        TORCH_FN(fake_quantize_weight_op));
  m.def("fake_quantize_activation(Tensor x, str args_json, Tensor[] calibration) -> Tensor",
        TORCH_FN(fake_quantize_activation_op));
  m.def(
      "dequantize_weight(str[] names, Tensor[] tensors, str args_json, str format, "
      "ScalarType dtype) -> Tensor",
      TORCH_FN(dequantize_weight_op));
  m.def("observe_weight(Tensor w, str args_json) -> (Tensor, Tensor)", TORCH_FN(observe_weight_op));
  m.def(
      "quantize_weight_modelopt(Tensor w, str algo, Tensor weight_amax, Tensor? input_amax=None, "
      "Tensor? pre_quant_scale=None, int block_size=128) -> (str[], Tensor[])",
      TORCH_FN(quantize_weight_modelopt_op));
  m.def(
      "dequantize_modelopt(str[] names, Tensor[] tensors, str algo, ScalarType dtype, "
      "int block_size=128) -> Tensor",
      TORCH_FN(dequantize_modelopt_op));
  m.def(
      "fake_quantize_modelopt(Tensor w, str algo, Tensor weight_amax, int block_size=128) -> "
      "Tensor",
      TORCH_FN(fake_quantize_modelopt_op));
  m.def("preset_scheme(str name) -> (str, str, str)", TORCH_FN(preset_scheme_op));
  m.def("quant_args_json(str args_json) -> str", TORCH_FN(quant_args_json_op));
}

}  // namespace moeq::quant
