#include <moeq/runtime/causal_lm.h>

#include <moeq/core/error.h>

#include "shape.h"

#include <ATen/ATen.h>

namespace moeq::runtime {

CausalLM::CausalLM(std::string type,
                   const CausalLMConfig& config,
                   std::shared_ptr<WeightSource> weights,
                   const RuntimeOptions& options)
    : Module(std::move(type), ""),
      config_(config),
      weights_(std::move(weights)),
      options_(options) {
  MOEQ_CHECK(weights_ != nullptr, "{}: no weight source", this->type());
  MOEQ_CHECK(config.vocab_size > 0 && config.hidden_size > 0,
             "{}: vocab_size and hidden_size must be positive, got {} and {}", this->type(),
             config.vocab_size, config.hidden_size);
  embed_ = add_child(
      std::make_unique<Embedding>("model.embed_tokens", config.vocab_size, config.hidden_size));
  norm_ = add_child(std::make_unique<RMSNorm>(config.norm_type, "model.norm", config.hidden_size,
                                              config.rms_norm_eps, config.norm_style));
  lm_head_ = add_child(
      std::make_unique<Linear>("lm_head", config.hidden_size, config.vocab_size, false,
                               ProjKind::kHead, fn::WeightRef::kNoExpert,
                               config.tie_word_embeddings ? embed_->weight().name : std::string()));
}

CausalLM::~CausalLM() = default;

void CausalLM::add_layer(std::unique_ptr<DecoderLayer> layer) {
  MOEQ_INTERNAL_ASSERT(layer->index() == num_layers(), "layer {} added at position {}",
                       layer->index(), num_layers());
  layers_.push_back(add_child(std::move(layer)));
}

DecoderLayer& CausalLM::layer(int64_t i) {
  MOEQ_CHECK(i >= 0 && i < num_layers(), "{}: layer {} out of range [0, {})", type(), i,
             num_layers());
  return *layers_[i];
}

void CausalLM::load(Module& module) {
  module.load(*weights_, options_.placement);
}

void CausalLM::release(Module& module) {
  module.release();
  module.for_each_parameter([&](Parameter& p) { weights_->release(p.name); });
}

namespace {
// Loads modules for a step and releases them when it ends (also on error), unless resident.
class StepWeights {
 public:
  StepWeights(CausalLM& model, std::initializer_list<Module*> modules)
      : model_(model), modules_(modules) {
    for (auto* m : modules_) {
      model_.load(*m);
    }
  }
  ~StepWeights() {
    if (!model_.options().keep_resident) {
      for (auto* m : modules_) {
        model_.release(*m);
      }
    }
  }
  StepWeights(const StepWeights&) = delete;
  StepWeights& operator=(const StepWeights&) = delete;

 private:
  CausalLM& model_;
  std::vector<Module*> modules_;
};
}  // namespace

void CausalLM::finish_step(const std::string& step) {
  if (step_observer_) {
    step_observer_(step);
  }
}

ForwardContext CausalLM::make_context(const at::Tensor& input_ids,
                                      const at::Tensor& attention_mask,
                                      const at::Tensor& position_ids) const {
  MOEQ_CHECK(input_ids.dim() == 2, "input_ids must be [batch, seq], got {}",
             detail::shape_str(input_ids.sizes()));
  return ForwardContext(input_ids.size(0), input_ids.size(1), attention_mask, position_ids,
                        options_.placement);
}

at::Tensor CausalLM::embed(const at::Tensor& input_ids) {
  MOEQ_CHECK(input_ids.dim() == 2, "input_ids must be [batch, seq], got {}",
             detail::shape_str(input_ids.sizes()));
  MOEQ_CHECK(!at::isFloatingType(input_ids.scalar_type()), "input_ids must hold integers, got {}",
             c10::toString(input_ids.scalar_type()));
  StepWeights weights(*this, {embed_});
  auto ids = input_ids.to(options_.placement.device, at::kLong);
  if (ids.numel() > 0) {
    const auto lo = ids.min().item<int64_t>();
    const auto hi = ids.max().item<int64_t>();
    MOEQ_CHECK(lo >= 0 && hi < config_.vocab_size,
               "input_ids must be in [0, {}) (vocab_size), got values in [{}, {}]",
               config_.vocab_size, lo, hi);
  }
  auto out = embed_->forward(ids);
  finish_step("embed");
  return out;
}

at::Tensor CausalLM::run_layer(int64_t i, const at::Tensor& hidden, ForwardContext& ctx) {
  auto& l = layer(i);
  StepWeights weights(*this, {&l});
  auto out = l.forward(hidden, ctx);
  finish_step(fmt::format("layer {}", i));
  return out;
}

at::Tensor CausalLM::head(const at::Tensor& hidden) {
  StepWeights weights(*this, {norm_, lm_head_});
  auto out = lm_head_->forward(norm_->forward(hidden));
  finish_step("head");
  return out;
}

at::Tensor CausalLM::forward(const at::Tensor& input_ids,
                             const at::Tensor& attention_mask,
                             const at::Tensor& position_ids) {
  auto ctx = make_context(input_ids, attention_mask, position_ids);
  auto h = embed(input_ids);
  for (int64_t i = 0; i < num_layers(); ++i) {
    h = run_layer(i, h, ctx);
  }
  return head(h);
}

}  // namespace moeq::runtime
