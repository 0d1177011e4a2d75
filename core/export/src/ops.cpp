// torch.ops.moeq.export_checkpoint: drives an exporter from Python the way the pipeline does, for
// the conformance tests (tests/python/test_export_*.py). libmoeq_export.so is loaded after
// libmoeq_kernels.so and libmoeq_quant.so (TORCH_LIBRARY_FRAGMENT of the `moeq` library).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "module_names.h"
#include "moeq/core/error.h"
#include "moeq/export/exporter.h"
#include "moeq/quant/scheme.h"
#include "moeq/quant/tensor_quantizer.h"

namespace moeq::exporting {
namespace {

using quant::TensorQuantizer;

// modules[i] has weights[i] [out, in] and calibration activations inputs[i] [tokens, in] (an
// empty tensor: none). Input quantizers are shared as the pipeline shares them: one per
// projection across a block's experts, one per module elsewhere. NVFP4 weight quantizers of
// fused projections (gate/up, q/k/v) share their global scale. Every module is exported with
// add_quantized, then `tensor_names` as is; returns each module's fake-quantized weight.
std::vector<at::Tensor> export_checkpoint_op(const std::vector<std::string>& modules,
                                             const std::vector<at::Tensor>& weights,
                                             const std::vector<at::Tensor>& inputs,
                                             const std::string& scheme_name,
                                             const std::string& format,
                                             const std::string& model_dir,
                                             const std::string& output,
                                             const std::vector<std::string>& tensor_names,
                                             const std::vector<at::Tensor>& tensors,
                                             const std::vector<std::string>& ignored,
                                             const std::vector<std::string>& expected,
                                             const std::vector<std::string>& embeddings,
                                             int64_t shard_size,
                                             bool overwrite) {
  MOEQ_CHECK(modules.size() == weights.size() && modules.size() == inputs.size(),
             "{} modules for {} weights and {} inputs", modules.size(), weights.size(),
             inputs.size());
  MOEQ_CHECK(tensor_names.size() == tensors.size(), "{} names for {} tensors", tensor_names.size(),
             tensors.size());
  ExportOptions options;
  options.format = parse_export_format(format);
  options.model_dir = model_dir;
  options.output = output;
  options.overwrite = overwrite;
  options.shard_size = shard_size;
  options.scheme = quant::preset_scheme(scheme_name);
  options.scheme_name = scheme_name;

  std::vector<std::unique_ptr<TensorQuantizer>> weight_quantizers;
  std::map<std::string, std::unique_ptr<TensorQuantizer>> input_quantizers;
  std::vector<TensorQuantizer*> input_of(modules.size(), nullptr);
  std::map<std::string, std::vector<TensorQuantizer*>> fused;
  for (size_t i = 0; i < modules.size(); ++i) {
    weight_quantizers.push_back(std::make_unique<TensorQuantizer>(
        *options.scheme.weights, quant::TensorRole::kWeight, modules[i] + ".weight"));
    weight_quantizers.back()->observe(weights[i]);
    if (options.scheme.weights->is_nvfp4() && !fusion_key(modules[i]).empty()) {
      fused[fusion_key(modules[i])].push_back(weight_quantizers.back().get());
    }
    if (options.scheme.input_activations) {
      const std::string pattern = expert_pattern(modules[i]);
      const std::string key = pattern.empty() ? modules[i] : pattern;
      auto& q = input_quantizers[key];
      if (!q) {
        q = std::make_unique<TensorQuantizer>(*options.scheme.input_activations,
                                              quant::TensorRole::kInput, key + ".input");
      }
      if (inputs[i].defined() && inputs[i].numel() > 0) {
        q->observe(inputs[i]);
      }
      input_of[i] = q.get();
    }
  }
  for (auto& [key, group] : fused) {
    quant::fuse_global_scale(group);
  }

  auto exporter = make_exporter(options);
  std::vector<at::Tensor> fake;
  for (size_t i = 0; i < modules.size(); ++i) {
    exporter->add_quantized(modules[i], weights[i], *weight_quantizers[i], input_of[i], {});
    fake.push_back(weight_quantizers[i]->fake_quantize(weights[i]));
  }
  for (size_t i = 0; i < tensor_names.size(); ++i) {
    exporter->add_tensor(tensor_names[i], tensors[i]);
  }
  ExportSummary summary;
  summary.ignored_modules = ignored;
  summary.expected_quantized = expected;
  summary.unquantized_embeddings = embeddings;
  exporter->finish(summary);
  return fake;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def(
      "export_checkpoint(str[] modules, Tensor[] weights, Tensor[] inputs, str scheme, "
      "str format, str model_dir, str output, str[] tensor_names, Tensor[] tensors, "
      "str[] ignored, str[] expected, str[] embeddings, int shard_size, bool overwrite=False) -> "
      "Tensor[]",
      TORCH_FN(export_checkpoint_op));
}

}  // namespace moeq::exporting
