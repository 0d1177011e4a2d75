// Torch ops for Python tests of the plugins' models (the architectures registered by the in-tree
// plugins, loaded from the default plugin directory once per process):
//   torch.ops.moeq.run_model(model_dir, input_ids, attention_mask, position_ids, dtype, device,
//       keep_resident, experts_dispatch) -> (logits, topk_ids[], topk_weights[])
// model_dir may be a quantized release (compressed-tensors, ModelOpt): read decompressed, as
// moeq quantize reads its source (pipeline::open_checkpoint).
// experts_dispatch ("", "per_expert", "batched", "grouped") overrides how fused experts run.
// plugins: when given and not empty, the model is built by a fresh PluginManager that loads only
// these (names, .so paths, or YAML files of declared models), instead of the in-tree plugins.
#include <moeq/core/error.h>
#include <moeq/pipeline/evaluate.h>
#include <moeq/registry/plugin_manager.h>
#include <moeq/runtime/causal_lm.h>
#include <moeq/runtime/fused_experts.h>
#include <moeq/runtime/weight_source.h>

#include <ATen/ATen.h>
#include <torch/library.h>

#include <mutex>

namespace moeq {
namespace {

class RoutingRecorder final : public runtime::MoeHook {
 public:
  void on_route(runtime::SparseMoeBlock& block,
                const at::Tensor& x,
                const runtime::RouterOutput& routing) override {
    ids.push_back(routing.topk_ids);
    weights.push_back(routing.topk_weights);
  }
  std::vector<at::Tensor> ids;
  std::vector<at::Tensor> weights;
};

PluginManager& default_plugins() {
  static PluginManager manager;
  static std::once_flag once;
  std::call_once(once, [] { load_default_plugins(manager); });
  return manager;
}

runtime::FusedDispatch parse_dispatch(const std::string& text) {
  if (text == "per_expert") {
    return runtime::FusedDispatch::kPerExpert;
  }
  if (text == "batched") {
    return runtime::FusedDispatch::kBatched;
  }
  MOEQ_CHECK(text == "grouped", "experts_dispatch must be per_expert, batched or grouped, got '{}'",
             text);
  return runtime::FusedDispatch::kGrouped;
}

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> run_model(
    const std::string& model_dir,
    const at::Tensor& input_ids,
    const std::optional<at::Tensor>& attention_mask,
    const std::optional<at::Tensor>& position_ids,
    std::optional<at::ScalarType> dtype,
    std::optional<at::Device> device,
    bool keep_resident,
    const std::string& experts_dispatch,
    const std::optional<std::vector<std::string>>& plugins) {
  // Checked before the model is built, whether or not it has fused experts.
  const auto dispatch =
      experts_dispatch.empty()
          ? std::optional<runtime::FusedDispatch>()
          : std::optional<runtime::FusedDispatch>(parse_dispatch(experts_dispatch));
  runtime::RuntimeOptions options;
  options.placement.dtype = dtype.value_or(at::kFloat);
  options.placement.device = device.value_or(at::kCPU);
  options.keep_resident = keep_resident;
  const auto config = io::HfConfig::load(model_dir);
  std::unique_ptr<PluginManager> own;
  if (plugins && !plugins->empty()) {
    own = std::make_unique<PluginManager>();
    const auto search_path = plugin_search_path();
    for (const auto& spec : *plugins) {
      own->load(spec, search_path);
    }
  }
  auto& registries = own ? own->registries() : default_plugins().registries();
  const auto architecture = config.architecture();
  MOEQ_CHECK(registries.architectures.contains(architecture),
             "{}: architecture '{}' is not registered by any {} plugin", model_dir, architecture,
             own ? "listed" : "in-tree");
  auto builder = registries.architectures.create(architecture);
  // A quantized release (compressed-tensors, ModelOpt) is decompressed as moeq quantize reads it.
  auto model = builder->build(config, pipeline::open_checkpoint(model_dir), options);
  auto recorder = std::make_shared<RoutingRecorder>();
  model->for_each_module([&](runtime::Module& m) {
    if (auto* moe = dynamic_cast<runtime::SparseMoeBlock*>(&m)) {
      moe->add_hook(recorder);
    }
    if (auto* fused = dynamic_cast<runtime::FusedExperts*>(&m); fused && dispatch) {
      fused->set_dispatch(*dispatch);
    }
  });
  auto logits = model->forward(input_ids, attention_mask.value_or(at::Tensor()),
                               position_ids.value_or(at::Tensor()));
  return {logits, recorder->ids, recorder->weights};
}

}  // namespace
}  // namespace moeq

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def(
      "run_model(str model_dir, Tensor input_ids, Tensor? attention_mask=None, "
      "Tensor? position_ids=None, ScalarType? dtype=None, Device? device=None, "
      "bool keep_resident=False, str experts_dispatch=\"\", str[]? plugins=None) -> (Tensor, "
      "Tensor[], "
      "Tensor[])",
      &moeq::run_model);
}
