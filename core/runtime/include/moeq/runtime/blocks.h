// The building blocks of decoder-only MoE models: embedding, RMSNorm, rotary embeddings, GQA
// attention, gated (SwiGLU) MLPs, routers, experts and the sparse MoE block. Each computes
// exactly as its Hugging Face counterpart does (same op order, same fp32 islands, same casts), so
// logits match transformers'. Every projection goes through moeq::fn (functional.h).
//
// Extension points for the models that come later:
// - RopeType (YaRN, dynamic NTK) and RopeOptions: new variants compute their inverse frequencies
//   and attention scaling in RotaryEmbedding's constructor.
// - AttentionOptions (sinks and per-layer windows for GPT-OSS, clip_qkv for OLMoE);
//   SelfAttention is the interface a different attention (MLA for DeepSeek-V3) implements.
// - Router is an interface: grouped top-k with a score-correction bias (DeepSeek-V3) and sigmoid
//   routing are further implementations. RouterOutput is what every router produces.
// - Experts is an interface: per-expert 2-D MLPs (PerExpertMlps) now, fused 3-D experts run with
//   bmm / grouped_mm (GPT-OSS, Llama4) later.
#pragma once

#include <moeq/runtime/functional.h>
#include <moeq/runtime/module.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace moeq::runtime {

class RotaryEmbedding;

// Per-forward state shared by the layers: the padding mask, positions, and what is derived from
// them once (additive attention masks per window, rotary cos/sin).
class ForwardContext {
 public:
  // input_ids [B, S]; attention_mask [B, S] (1 keeps a token, 0 is padding; undefined: all
  // kept); position_ids [B, S] or [1, S] (undefined: 0..S-1 for every row, as transformers does
  // without explicit positions, whatever the padding).
  ForwardContext(int64_t batch_size,
                 int64_t seq_len,
                 at::Tensor attention_mask,
                 at::Tensor position_ids,
                 const Placement& placement);

  int64_t batch_size() const { return batch_size_; }
  int64_t seq_len() const { return seq_len_; }
  const Placement& placement() const { return placement_; }
  // [B, S] bool on the placement's device: true where a token is kept.
  const at::Tensor& token_mask() const { return token_mask_; }
  const at::Tensor& position_ids() const { return position_ids_; }

  // [B, 1, S, S] additive mask in the compute dtype: 0 where query i may attend key j (j <= i,
  // key kept, and i - j < sliding_window when sliding_window > 0), the dtype's lowest value
  // elsewhere. Fully masked rows (padding queries) get a finite uniform row, as transformers'
  // eager path does. Cached per window.
  const at::Tensor& additive_mask(int64_t sliding_window);
  // As additive_mask(0), restricted to keys in the query's chunk (Llama 4's chunked attention):
  // (j - pad) / chunk == (i - pad) / chunk, pad the row's count of leading padding tokens.
  const at::Tensor& chunked_mask(int64_t chunk_size);
  // cos, sin [B or 1, S, rotary_dim] in the compute dtype, cached per rotary embedding.
  const std::pair<at::Tensor, at::Tensor>& rope(const RotaryEmbedding& rotary);

 private:
  int64_t batch_size_;
  int64_t seq_len_;
  Placement placement_;
  at::Tensor token_mask_;
  at::Tensor position_ids_;
  std::map<int64_t, at::Tensor> masks_;
  std::map<int64_t, at::Tensor> chunked_masks_;
  std::map<const RotaryEmbedding*, std::pair<at::Tensor, at::Tensor>> rope_;
};

// ---- leaves -------------------------------------------------------------------------------------

// nn.Embedding.
class Embedding : public Module {
 public:
  Embedding(std::string name, int64_t vocab_size, int64_t hidden_size);
  at::Tensor forward(const at::Tensor& input_ids);
  Parameter& weight() { return *weight_; }

 private:
  Parameter* weight_;
};

using fn::ProjKind;

// nn.Linear whose matmul goes through fn::linear with its WeightRef.
class Linear : public Module {
 public:
  Linear(std::string name,
         int64_t in_features,
         int64_t out_features,
         bool bias,
         ProjKind kind = ProjKind::kOther,
         int64_t expert = fn::WeightRef::kNoExpert,
         std::string weight_name = {});  // default: name + ".weight" (tied heads name another)
  at::Tensor forward(const at::Tensor& x);
  Parameter& weight() { return *weight_; }
  Parameter* bias() { return bias_; }
  // The WeightRef this linear's calls carry.
  const fn::WeightRef& ref() const { return ref_; }
  ProjKind kind() const { return ref_.kind; }
  int64_t in_features() const { return in_features_; }
  int64_t out_features() const { return out_features_; }

 private:
  int64_t in_features_;
  int64_t out_features_;
  Parameter* weight_;
  Parameter* bias_ = nullptr;
  std::string role_;  // storage viewed by ref_
  fn::WeightRef ref_;
};

// Where RMSNorm applies its weight: Llama's family casts the normalised fp32 activations back to
// the input dtype and then scales (kCastThenScale); GPT-OSS scales in fp32 and casts last.
enum class NormStyle { kCastThenScale, kScaleThenCast };

// RMSNorm as transformers computes it: x in fp32, x * rsqrt(mean(x^2) + eps), cast back to the
// input dtype, times the weight (or NormStyle::kScaleThenCast).
class RMSNorm : public Module {
 public:
  RMSNorm(std::string type,
          std::string name,
          int64_t dim,
          double eps,
          NormStyle style = NormStyle::kCastThenScale);
  at::Tensor forward(const at::Tensor& x);
  double eps() const { return eps_; }

 private:
  Parameter* weight_;
  double eps_;
  NormStyle style_;
};

// ---- rotary embeddings --------------------------------------------------------------------------

enum class RopeType {
  kDefault,  // inv_freq = 1 / theta^(2i/d)
  kLinear,   // inv_freq / factor
  kLlama3,   // Llama 3.1 frequency-dependent scaling
  kYarn,     // YaRN: ramp between interpolated and extrapolated frequencies, scaled cos/sin
};

struct RopeOptions {
  RopeType type = RopeType::kDefault;
  double theta = 10000.0;
  int64_t head_dim = 0;
  // Only the first int(head_dim * partial_rotary_factor) channels of a head rotate.
  double partial_rotary_factor = 1.0;
  // kLinear and kLlama3:
  double factor = 1.0;
  // kLlama3:
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 8192;
  // kYarn (transformers' _compute_yarn_parameters):
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  bool truncate = true;
  std::optional<double> attention_factor;  // unset: derived from factor, mscale, mscale_all_dim
  std::optional<double> mscale;
  std::optional<double> mscale_all_dim;
};

// Rotary position embedding, rotate-half (GPT-NeoX) layout as in transformers' Llama family.
class RotaryEmbedding {
 public:
  explicit RotaryEmbedding(const RopeOptions& options);
  const RopeOptions& options() const { return options_; }
  int64_t rotary_dim() const { return rotary_dim_; }
  // fp32, on the CPU, [rotary_dim / 2].
  const at::Tensor& inv_freq() const { return inv_freq_; }
  double attention_scaling() const { return attention_scaling_; }

  // cos, sin [B, S, rotary_dim] for position_ids [B, S], computed in fp32 then cast to `dtype`.
  std::pair<at::Tensor, at::Tensor> cos_sin(const at::Tensor& position_ids,
                                            c10::ScalarType dtype) const;
  // Rotates x [B, heads, S, head_dim]; channels past rotary_dim pass through.
  static at::Tensor apply(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

 private:
  RopeOptions options_;
  int64_t rotary_dim_;
  at::Tensor inv_freq_;
  double attention_scaling_ = 1.0;
};

// ---- attention ----------------------------------------------------------------------------------

// What the q/k RMSNorm normalises: each head's head_dim channels (Qwen3, GLM-4.5: weights
// [head_dim]), or the whole projection before the heads are split (MiniMax-M2, OLMoE: weights
// [num_heads * head_dim] and [num_kv_heads * head_dim]).
enum class QkNormScope { kPerHead, kFullWidth };

struct AttentionOptions {
  int64_t hidden_size = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;
  int64_t head_dim = 0;
  bool qkv_bias = false;  // Qwen2: biases on q, k, v
  bool o_bias = false;
  // RMSNorm on q and k before RoPE (self_attn.q_norm, self_attn.k_norm); the norm's type key.
  bool qk_norm = false;
  QkNormScope qk_norm_scope = QkNormScope::kPerHead;
  std::string qk_norm_type = "RMSNorm";
  double qk_norm_eps = 1e-6;
  // OLMoE: q, k and v are clamped to [-clip_qkv, clip_qkv] after the q/k norms, before the heads
  // are split and RoPE; unset: no clamp.
  std::optional<double> clip_qkv;
  // Keys further than this many positions back are masked; 0: full attention.
  int64_t sliding_window = 0;
  // Softmax scale; unset: head_dim^-0.5.
  std::optional<double> scaling;
  // GPT-OSS: a learned per-head logit ("sinks", [num_heads]) joins each softmax row and is
  // dropped after it; the softmax then runs in the scores' dtype after subtracting the row max.
  bool sinks = false;
};

// What a decoder layer calls for its attention.
class SelfAttention : public Module {
 public:
  using Module::Module;
  // hidden [B, S, H] -> [B, S, H]
  virtual at::Tensor forward(const at::Tensor& hidden, ForwardContext& ctx) = 0;
};

// Grouped-query attention with eager softmax (fp32 softmax, cast back), as transformers'
// eager_attention_forward.
class Attention : public SelfAttention {
 public:
  Attention(std::string type,
            std::string name,
            const AttentionOptions& options,
            std::shared_ptr<const RotaryEmbedding> rotary);
  at::Tensor forward(const at::Tensor& hidden, ForwardContext& ctx) override;
  const AttentionOptions& options() const { return options_; }
  Linear& q_proj() { return *q_proj_; }
  Linear& k_proj() { return *k_proj_; }
  Linear& v_proj() { return *v_proj_; }
  Linear& o_proj() { return *o_proj_; }

 private:
  AttentionOptions options_;
  std::shared_ptr<const RotaryEmbedding> rotary_;
  Linear* q_proj_;
  Linear* k_proj_;
  Linear* v_proj_;
  Linear* o_proj_;
  RMSNorm* q_norm_ = nullptr;
  RMSNorm* k_norm_ = nullptr;
  Parameter* sinks_ = nullptr;
};

// ---- feed-forward -------------------------------------------------------------------------------

// What a decoder layer calls for its MLP: a dense MLP or a sparse MoE block.
class FeedForward : public Module {
 public:
  using Module::Module;
  // hidden [..., H] -> [..., H]
  virtual at::Tensor forward(const at::Tensor& hidden) = 0;
};

enum class Activation { kSilu };

struct GatedMlpOptions {
  int64_t hidden_size = 0;
  int64_t intermediate_size = 0;
  // Checkpoint names of the three projections: gate_proj/up_proj/down_proj, or w1/w3/w2.
  std::string gate_name = "gate_proj";
  std::string up_name = "up_proj";
  std::string down_name = "down_proj";
  Activation activation = Activation::kSilu;
  // The expert index this MLP is, or WeightRef::kNoExpert (dense and shared MLPs).
  int64_t expert = fn::WeightRef::kNoExpert;
};

// down(act(gate(x)) * up(x)): dense MLPs, shared experts and each routed expert.
class GatedMlp : public FeedForward {
 public:
  GatedMlp(std::string type, std::string name, const GatedMlpOptions& options);
  at::Tensor forward(const at::Tensor& hidden) override;
  const GatedMlpOptions& options() const { return options_; }
  Linear& gate_proj() { return *gate_; }
  Linear& up_proj() { return *up_; }
  Linear& down_proj() { return *down_; }

 private:
  GatedMlpOptions options_;
  Linear* gate_;
  Linear* up_;
  Linear* down_;
};

// ---- routing ------------------------------------------------------------------------------------

// What a router decides for T tokens over E experts, top k.
struct RouterOutput {
  at::Tensor logits;        // [T, E], compute dtype
  at::Tensor probs;         // [T, E], fp32: the full distribution the top-k was taken from
  at::Tensor topk_ids;      // [T, K], int64
  at::Tensor topk_weights;  // [T, K]: the weights the experts' outputs are combined with
};

class Router : public Module {
 public:
  Router(std::string type, std::string name, int64_t num_experts, int64_t top_k);
  // hidden [T, H]
  virtual RouterOutput route(const at::Tensor& hidden) = 0;
  int64_t num_experts() const { return num_experts_; }
  int64_t top_k() const { return top_k_; }

 private:
  int64_t num_experts_;
  int64_t top_k_;
};

struct SoftmaxTopKOptions {
  int64_t hidden_size = 0;
  int64_t num_experts = 0;
  int64_t top_k = 0;
  // Renormalise the top-k probabilities to sum to one (Mixtral: always; Qwen: norm_topk_prob).
  bool normalize_topk = false;
  // Combine weights stay fp32 (Mixtral) or are cast to the compute dtype (Qwen2/3-MoE).
  bool weights_in_compute_dtype = false;
};

// logits = x W^T; probs = softmax(logits in fp32); top-k; optional renormalisation. The weight is
// the module's own "weight" parameter ("...mlp.gate.weight").
class SoftmaxTopKRouter : public Router {
 public:
  SoftmaxTopKRouter(std::string type, std::string name, const SoftmaxTopKOptions& options);
  RouterOutput route(const at::Tensor& hidden) override;
  const SoftmaxTopKOptions& options() const { return options_; }
  Parameter& weight() { return *weight_; }

 private:
  SoftmaxTopKOptions options_;
  Parameter* weight_;
  fn::WeightRef ref_;
};

// ---- experts ------------------------------------------------------------------------------------

class Experts : public Module {
 public:
  using Module::Module;
  virtual int64_t num_experts() const = 0;
  // Expert e's output for rows [n, H] (not yet weighted by the router).
  virtual at::Tensor run_expert(int64_t expert, const at::Tensor& rows) = 0;
  // The block's routed forward, when the experts have their own (fused experts run as one batched
  // matmul); nullopt: the block runs its per-expert loop. x [T, H].
  virtual std::optional<at::Tensor> run_routed(const at::Tensor& x,
                                               const RouterOutput& routing,
                                               bool weight_on_input) {
    return std::nullopt;
  }
};

// One GatedMlp per expert, under "<name>.<e>." (the easy tier's layout).
class PerExpertMlps : public Experts {
 public:
  // `expert_type`: each expert's type key; options.expert is set per expert.
  PerExpertMlps(std::string type,
                std::string name,
                int64_t num_experts,
                const std::string& expert_type,
                const GatedMlpOptions& options);
  int64_t num_experts() const override { return static_cast<int64_t>(experts_.size()); }
  at::Tensor run_expert(int64_t expert, const at::Tensor& rows) override;
  GatedMlp& expert(int64_t e);

 private:
  std::vector<GatedMlp*> experts_;
};

class SparseMoeBlock;

// The calibration hook point of a sparse MoE block. on_route sees every routing decision;
// combine may replace the experts' computation (e.g. run every token through every expert so
// observers see all tokens, and still combine with the real top-k weights).
class MoeHook {
 public:
  virtual ~MoeHook() = default;
  // After routing, before the experts run. x [T, H].
  virtual void on_route(SparseMoeBlock& block, const at::Tensor& x, const RouterOutput& routing) {}
  // The routed experts' combined output [T, H], or nullopt to let the block run its routed loop.
  virtual std::optional<at::Tensor> combine(SparseMoeBlock& block,
                                            const at::Tensor& x,
                                            const RouterOutput& routing) {
    return std::nullopt;
  }
};

struct SparseMoeOptions {
  // Qwen2-MoE: out += sigmoid(shared_expert_gate(x)) * shared_expert(x); without a gate the shared
  // expert's output is added as is.
  bool shared_expert = false;
  bool shared_expert_gate = false;
  std::string shared_expert_name = "shared_expert";
  std::string shared_expert_type = "MLP";
  GatedMlpOptions shared_expert_options;
  std::string router_name = "gate";
  std::string experts_name = "experts";
  // Llama 4: each expert's input is scaled by its router weight and its output is summed as is.
  bool router_weight_on_input = false;
};

// Router + experts (+ optional shared expert): Mixtral, Qwen2-MoE, Qwen3-MoE, OLMoE ...
class SparseMoeBlock : public FeedForward {
 public:
  // Builders construct the router and experts with child_name(...) of this block's name.
  SparseMoeBlock(std::string type, std::string name, const SparseMoeOptions& options);
  void set_router(std::unique_ptr<Router> router);
  void set_experts(std::unique_ptr<Experts> experts);

  at::Tensor forward(const at::Tensor& hidden) override;

  Router& router() { return *router_; }
  Experts& experts() { return *experts_; }
  GatedMlp* shared_expert() { return shared_expert_; }
  bool router_weight_on_input() const { return options_.router_weight_on_input; }
  Linear* shared_expert_gate() { return shared_gate_; }

  // The pieces of forward, for hooks and adapters. x is [T, H].
  RouterOutput route(const at::Tensor& x);
  // transformers' routed loop: each expert runs on the tokens that picked it; outputs are
  // weighted and index-added in expert order.
  at::Tensor combine_routed(const at::Tensor& x, const RouterOutput& routing);
  // Every expert runs on every token (calibration); the output is still the routed one: expert
  // e's rows are weighted by the real top-k weights where e was picked and dropped elsewhere.
  at::Tensor combine_all_experts(const at::Tensor& x, const RouterOutput& routing);
  // Shared expert contribution (undefined when the block has none).
  at::Tensor shared(const at::Tensor& x);

  // Hooks are called in order of addition for on_route; the last added hook that returns a value
  // from combine() wins.
  void add_hook(std::shared_ptr<MoeHook> hook);
  void remove_hook(const MoeHook* hook);
  void clear_hooks() { hooks_.clear(); }

 private:
  SparseMoeOptions options_;
  Router* router_ = nullptr;
  Experts* experts_ = nullptr;
  GatedMlp* shared_expert_ = nullptr;
  Linear* shared_gate_ = nullptr;
  std::vector<std::shared_ptr<MoeHook>> hooks_;
};

// ---- decoder layer ------------------------------------------------------------------------------

// Pre-norm residual block: h += attn(norm1(h)); h += mlp(norm2(h)).
class DecoderLayer : public Module {
 public:
  DecoderLayer(std::string type, std::string name, int64_t index);
  void set_input_layernorm(std::unique_ptr<RMSNorm> norm);
  void set_attention(std::unique_ptr<SelfAttention> attention);
  void set_post_attention_layernorm(std::unique_ptr<RMSNorm> norm);
  void set_mlp(std::unique_ptr<FeedForward> mlp);

  at::Tensor forward(const at::Tensor& hidden, ForwardContext& ctx);

  int64_t index() const { return index_; }
  SelfAttention& attention() { return *attention_; }
  FeedForward& mlp() { return *mlp_; }
  // The layer's MoE block, or nullptr for a dense layer.
  SparseMoeBlock* moe() { return dynamic_cast<SparseMoeBlock*>(mlp_); }

 private:
  int64_t index_;
  RMSNorm* input_layernorm_ = nullptr;
  SelfAttention* attention_ = nullptr;
  RMSNorm* post_attention_layernorm_ = nullptr;
  FeedForward* mlp_ = nullptr;
};

}  // namespace moeq::runtime
