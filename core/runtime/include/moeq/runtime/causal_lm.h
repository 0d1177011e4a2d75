// A decoder-only causal LM run layer by layer: embed -> layer 0 -> ... -> norm -> head, with only
// the weights of the step being run resident. Each step loads its weights from the WeightSource
// (a memory-mapped checkpoint), runs, and releases them, so peak memory is one layer plus
// activations. The layer-sequential pipeline drives the same steps itself (embed every
// calibration batch, then each layer over all batches).
#pragma once

#include <moeq/runtime/blocks.h>
#include <moeq/runtime/module.h>
#include <moeq/runtime/weight_source.h>

#include <ATen/core/Tensor.h>

#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace moeq::runtime {

struct RuntimeOptions {
  Placement placement;
  // Keep every weight resident after first use (tiny models, tests): no reloading per call.
  bool keep_resident = false;
};

struct CausalLMConfig {
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  double rms_norm_eps = 1e-6;
  bool tie_word_embeddings = false;
  std::string norm_type = "RMSNorm";  // the final norm's type key
  NormStyle norm_style = NormStyle::kCastThenScale;
};

class CausalLM : public Module {
 public:
  // `type`: config.json's architectures[0] ("MixtralForCausalLM"). Builders add the layers.
  CausalLM(std::string type,
           const CausalLMConfig& config,
           std::shared_ptr<WeightSource> weights,
           const RuntimeOptions& options);
  ~CausalLM() override;

  void add_layer(std::unique_ptr<DecoderLayer> layer);
  // The rotary embedding the layers share (owned here so contexts can cache its cos/sin).
  void set_rotary(std::shared_ptr<const RotaryEmbedding> rotary) { rotary_ = std::move(rotary); }

  const CausalLMConfig& config() const { return config_; }
  const RuntimeOptions& options() const { return options_; }
  WeightSource& weights() { return *weights_; }
  Embedding& embed_tokens() { return *embed_; }
  RMSNorm& norm() { return *norm_; }
  Linear& lm_head() { return *lm_head_; }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  DecoderLayer& layer(int64_t i);
  const std::shared_ptr<const RotaryEmbedding>& rotary() const { return rotary_; }

  // The whole forward: logits [B, S, V] in the compute dtype. input_ids [B, S] int64;
  // attention_mask [B, S] (1 keep, 0 pad; undefined: no padding); position_ids [B, S]
  // (undefined: 0..S-1, as transformers).
  at::Tensor forward(const at::Tensor& input_ids,
                     const at::Tensor& attention_mask = {},
                     const at::Tensor& position_ids = {});

  // The steps of forward, each loading and releasing its own weights (unless keep_resident).
  ForwardContext make_context(const at::Tensor& input_ids,
                              const at::Tensor& attention_mask = {},
                              const at::Tensor& position_ids = {}) const;
  at::Tensor embed(const at::Tensor& input_ids);
  at::Tensor run_layer(int64_t i, const at::Tensor& hidden, ForwardContext& ctx);
  at::Tensor head(const at::Tensor& hidden);

  // Checkpoint prefixes the model does not run (DeepSeek-V3's multi-token-prediction layer,
  // "model.layers.61"): never quantized; the pipeline copies their tensors through (or drops
  // them) and lists their projections as excluded.
  void exclude_prefix(std::string prefix) { excluded_.push_back(std::move(prefix)); }
  const std::vector<std::string>& excluded_prefixes() const { return excluded_; }

  // Explicit residency control for drivers that run a layer on many batches.
  void load(Module& module);
  void release(Module& module);

  // Called after each step with the step's name ("embed", "layer 3", "head") while its weights
  // are still resident: lets tests measure peak residency.
  using StepObserver = std::function<void(const std::string& step)>;
  void set_step_observer(StepObserver observer) { step_observer_ = std::move(observer); }

 private:
  void finish_step(const std::string& step);

  CausalLMConfig config_;
  std::shared_ptr<WeightSource> weights_;
  RuntimeOptions options_;
  std::shared_ptr<const RotaryEmbedding> rotary_;
  Embedding* embed_;
  std::vector<DecoderLayer*> layers_;
  RMSNorm* norm_;
  Linear* lm_head_;
  StepObserver step_observer_;
  std::vector<std::string> excluded_;
};

}  // namespace moeq::runtime
