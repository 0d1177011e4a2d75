// ModelOpt's unified HF checkpoint tensors (modelopt/torch/export: quant_utils.py,
// unified_export_hf.py::_export_quantized_weight, qtensor/nvfp4_tensor.py), computed with
// ModelOpt's own numerics from the amax its max calibration keeps:
//   FP8          weight float8_e4m3fn = fp8(w / s), weight_scale s = amax / 448 (fp32 scalar),
//                input_scale = input_amax / 448
//   NVFP4        weight uint8 [out, in/2] (even element in the low nibble), weight_scale
//                float8_e4m3fn [out, in/16] = clamp(block_amax / (6 * s2), 2^-9, 448) (0 -> 1),
//                weight_scale_2 s2 = amax / (6 * 448), input_scale = input_amax / (6 * 448)
//   W4A16_NVFP4  NVFP4 without input_scale
//   W4A16_AWQ    weight uint8 [out/2, in] (rows 2j and 2j+1 in the low and high nibble),
//                weight_scale = block_amax / 7 [out, in/block] (fp32; a zero amax counts as 7),
//                pre_quant_scale [in] when given
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <string_view>

#include "moeq/quant/tensor_quantizer.h"

namespace moeq::quant {

enum class ModelOptAlgo { kFp8, kNvfp4, kW4A16Nvfp4, kW4A16Awq };

std::string_view to_string(ModelOptAlgo algo);  // hf_quant_config.json's quant_algo
ModelOptAlgo parse_modelopt_algo(std::string_view text);

struct ModelOptWeight {
  at::Tensor weight;           // [..., out, in], in the export dtype
  at::Tensor weight_amax;      // FP8 / NVFP4: per tensor (per expert [..., 1, 1] or a scalar);
                               // W4A16_AWQ: per block [..., out, in / block_size]
  at::Tensor input_amax;       // FP8 / NVFP4 static input amax; undefined: no input_scale
  at::Tensor pre_quant_scale;  // AWQ / SmoothQuant scale [in]; undefined: none
  int64_t block_size = 128;    // W4A16_AWQ group size
};

// The tensors ModelOpt exports for one linear (suffix -> tensor).
QuantizedTensors export_modelopt(ModelOptAlgo algo,
                                 const ModelOptWeight& weight,
                                 const std::string& tensor_name);

// The same from moeq's quantizers: the amaxes come from their statistics (NVFP4: the global
// amax, shared by fused gate/up after fuse_global_scale). `input` may be null.
QuantizedTensors export_modelopt(ModelOptAlgo algo,
                                 const TensorQuantizer& weight_quantizer,
                                 const TensorQuantizer* input_quantizer,
                                 const at::Tensor& weight,
                                 const at::Tensor& pre_quant_scale = {});

// ModelOpt's dequantization of its exported tensors, in out_dtype.
at::Tensor dequantize_modelopt(ModelOptAlgo algo,
                               const QuantizedTensors& tensors,
                               at::ScalarType out_dtype,
                               int64_t block_size = 128);

// ModelOpt's TensorQuantizer fake quantization (tensor_quant.py: _tensor_quant for int with
// narrow range, _fp8_eager for FP8) from the same amax; NVFP4: dequantize(export(w)).
at::Tensor fake_quantize_modelopt(ModelOptAlgo algo, const ModelOptWeight& weight);

}  // namespace moeq::quant
