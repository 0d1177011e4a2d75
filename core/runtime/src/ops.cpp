// Torch ops for Python (parity tests, notebooks): run a model directory through the runtime.
//   torch.ops.moeq.run_causal_lm(model_dir, input_ids, attention_mask, position_ids, dtype,
//       device, keep_resident) -> (logits, topk_ids[], topk_weights[])
// The checkpoint is read memory-mapped, layer by layer unless keep_resident. topk_ids and
// topk_weights hold one [B*S, K] tensor per MoE layer, in layer order.
#include <moeq/runtime/causal_lm.h>
#include <moeq/runtime/models.h>

#include <ATen/ATen.h>
#include <torch/library.h>

namespace moeq::runtime {
namespace {

// Records every routing decision of the blocks it is attached to.
class RoutingRecorder final : public MoeHook {
 public:
  void on_route(SparseMoeBlock& block, const at::Tensor& x, const RouterOutput& routing) override {
    ids.push_back(routing.topk_ids);
    weights.push_back(routing.topk_weights);
  }
  std::vector<at::Tensor> ids;
  std::vector<at::Tensor> weights;
};

std::tuple<at::Tensor, std::vector<at::Tensor>, std::vector<at::Tensor>> run_causal_lm(
    const std::string& model_dir,
    const at::Tensor& input_ids,
    const std::optional<at::Tensor>& attention_mask,
    const std::optional<at::Tensor>& position_ids,
    std::optional<at::ScalarType> dtype,
    std::optional<at::Device> device,
    bool keep_resident) {
  RuntimeOptions options;
  options.placement.dtype = dtype.value_or(at::kFloat);
  options.placement.device = device.value_or(at::kCPU);
  options.keep_resident = keep_resident;
  auto model = load_causal_lm(model_dir, options);
  auto recorder = std::make_shared<RoutingRecorder>();
  for (int64_t i = 0; i < model->num_layers(); ++i) {
    if (auto* moe = model->layer(i).moe()) {
      moe->add_hook(recorder);
    }
  }
  auto logits = model->forward(input_ids, attention_mask.value_or(at::Tensor()),
                               position_ids.value_or(at::Tensor()));
  return {logits, recorder->ids, recorder->weights};
}

}  // namespace
}  // namespace moeq::runtime

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def(
      "run_causal_lm(str model_dir, Tensor input_ids, Tensor? attention_mask=None, "
      "Tensor? position_ids=None, ScalarType? dtype=None, Device? device=None, "
      "bool keep_resident=False) -> (Tensor, Tensor[], Tensor[])",
      &moeq::runtime::run_causal_lm);
}
