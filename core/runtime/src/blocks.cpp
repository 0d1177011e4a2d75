// Module tree, weight sources and the building blocks (blocks.h). One translation unit for all of
// them keeps the build short.
#include <moeq/runtime/blocks.h>

#include <moeq/core/error.h>
#include <moeq/io/hf_config.h>
#include <moeq/io/safetensors_reader.h>
#include <moeq/kernels/source_dequant.h>

#include <moeq/runtime/module.h>
#include <moeq/runtime/weight_source.h>
#include "shape.h"

#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>

namespace moeq::runtime {

// ---- weight sources -----------------------------------------------------------------------------

TensorMapSource::TensorMapSource(std::map<std::string, at::Tensor> tensors)
    : tensors_(std::move(tensors)) {}

void TensorMapSource::set(const std::string& name, at::Tensor tensor) {
  tensors_[name] = std::move(tensor);
}

at::Tensor TensorMapSource::get(const std::string& name) {
  auto it = tensors_.find(name);
  MOEQ_CHECK(it != tensors_.end(), "tensor map: no tensor named '{}'", name);
  return it->second;
}

bool TensorMapSource::has(const std::string& name) const {
  return tensors_.count(name) != 0;
}

std::vector<std::string> TensorMapSource::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [name, tensor] : tensors_) {
    out.push_back(name);
  }
  return out;
}

CheckpointSource::CheckpointSource(const std::filesystem::path& path)
    : CheckpointSource(std::make_shared<const io::SafetensorsCheckpoint>(path),
                       fmt::format("checkpoint '{}'", path.string())) {}

CheckpointSource::CheckpointSource(std::shared_ptr<const io::SafetensorsCheckpoint> checkpoint,
                                   std::string description)
    : checkpoint_(std::move(checkpoint)), description_(std::move(description)) {
  MOEQ_CHECK(checkpoint_ != nullptr, "CheckpointSource: null checkpoint");
}

CheckpointSource::~CheckpointSource() = default;

at::Tensor CheckpointSource::get(const std::string& name) {
  MOEQ_CHECK(checkpoint_->contains(name), "{}: no tensor named '{}'", description_, name);
  return checkpoint_->tensor(name);
}

void CheckpointSource::release(const std::string& name) {
  if (checkpoint_->contains(name)) {
    checkpoint_->file_of(name).drop_pages(name);
  }
}

bool CheckpointSource::has(const std::string& name) const {
  return checkpoint_->contains(name);
}

std::vector<std::string> CheckpointSource::names() const {
  return checkpoint_->names();
}

DerivedSource::DerivedSource(std::shared_ptr<WeightSource> base,
                             std::vector<Rule> rules,
                             std::string what)
    : base_(std::move(base)), what_(std::move(what)) {
  MOEQ_CHECK(base_ != nullptr, "DerivedSource: null base source");
  for (auto& rule : rules) {
    for (const auto& input : rule.inputs) {
      MOEQ_CHECK(base_->has(input), "{}: '{}' needs '{}', which is missing", base_->describe(),
                 rule.name, input);
      replaced_[input] = rule.name;
    }
    auto name = rule.name;
    MOEQ_CHECK(rules_.emplace(name, std::move(rule)).second, "DerivedSource: '{}' derived twice",
               name);
  }
}

at::Tensor DerivedSource::get(const std::string& name) {
  const auto it = rules_.find(name);
  if (it == rules_.end()) {
    return base_->get(name);
  }
  std::vector<at::Tensor> inputs;
  for (const auto& input : it->second.inputs) {
    inputs.push_back(base_->get(input));
  }
  try {
    return it->second.compute(inputs);
  } catch (const std::exception& e) {
    MOEQ_FAIL("{}: computing '{}' ({}) failed: {}", base_->describe(), name, what_, e.what());
  }
}

void DerivedSource::release(const std::string& name) {
  const auto it = rules_.find(name);
  if (it == rules_.end()) {
    base_->release(name);
    return;
  }
  for (const auto& input : it->second.inputs) {
    base_->release(input);
  }
}

bool DerivedSource::has(const std::string& name) const {
  return rules_.contains(name) || (base_->has(name) && !replaced_.contains(name));
}

std::vector<std::string> DerivedSource::names() const {
  std::vector<std::string> out;
  for (auto& name : base_->names()) {
    if (!replaced_.contains(name)) {
      out.push_back(std::move(name));
    }
  }
  for (const auto& [name, rule] : rules_) {
    out.push_back(name);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::string DerivedSource::describe() const {
  return fmt::format("{} ({})", base_->describe(), what_);
}

std::shared_ptr<WeightSource> dequantize_fp8_blocks(std::shared_ptr<WeightSource> source,
                                                    int64_t block_rows,
                                                    int64_t block_cols,
                                                    c10::Device device) {
  MOEQ_CHECK(source != nullptr, "dequantize_fp8_blocks: null source");
  MOEQ_CHECK(block_rows > 0 && block_cols > 0,
             "{}: FP8 weight block must be positive [rows, cols], got [{}, {}]", source->describe(),
             block_rows, block_cols);
  constexpr std::string_view kScale = "_scale_inv";
  std::vector<DerivedSource::Rule> rules;
  for (const auto& name : source->names()) {
    if (!name.ends_with(kScale)) {
      continue;
    }
    const auto weight = name.substr(0, name.size() - kScale.size());
    MOEQ_CHECK(source->has(weight), "{}: '{}' has no weight '{}' beside it", source->describe(),
               name, weight);
    rules.push_back({weight, {weight, name}, [block_rows, block_cols, device](const auto& in) {
                       return kernels::dequantize_fp8_block_source(in[0].to(device),
                                                                   in[1].to(device), at::kBFloat16,
                                                                   block_rows, block_cols);
                     }});
  }
  if (rules.empty()) {
    return source;
  }
  return std::make_shared<DerivedSource>(
      std::move(source), std::move(rules),
      fmt::format("FP8 {}x{} block weights dequantized to bf16", block_rows, block_cols));
}

std::shared_ptr<WeightSource> dequantize_fp8_blocks(std::shared_ptr<WeightSource> source,
                                                    const io::HfConfig& config,
                                                    c10::Device device) {
  constexpr const char* kKey = "quantization_config.weight_block_size";
  auto block = config.find<std::vector<int64_t>>(kKey).value_or(std::vector<int64_t>{128, 128});
  MOEQ_CHECK(block.size() == 2, "config '{}': {} must be [rows, cols], got {} values",
             config.source(), kKey, block.size());
  return dequantize_fp8_blocks(std::move(source), block[0], block[1], device);
}

// ---- module -------------------------------------------------------------------------------------

Module::Module(std::string type, std::string name)
    : type_(std::move(type)), name_(std::move(name)) {}

Module::~Module() = default;

void Module::for_each_module(const std::function<void(Module&)>& visit) {
  visit(*this);
  for (auto* child : children_) {
    child->for_each_module(visit);
  }
}

void Module::for_each_parameter(const std::function<void(Parameter&)>& visit) {
  for_each_module([&](Module& m) {
    for (auto* p : m.parameters_) {
      visit(*p);
    }
  });
}

void Module::load(WeightSource& source, const Placement& placement) {
  try {
    for_each_parameter([&](Parameter& p) {
      if (p.resident()) {
        return;
      }
      if (!source.has(p.name)) {
        MOEQ_CHECK(!p.required, "{}: missing tensor '{}' (module {} '{}')", source.describe(),
                   p.name, type_, name_);
        return;
      }
      auto t = source.get(p.name);
      // FP8 codes are only meaningful with their scales: a release read without its decompression
      // would otherwise run on the raw codes and give plausible, wrong logits.
      MOEQ_CHECK(!at::isFloat8Type(t.scalar_type()),
                 "{}: tensor '{}' is stored as {} (quantized), and this source does not "
                 "decompress it; the checkpoint's quantization_config names a format this reader "
                 "does not decode",
                 source.describe(), p.name, c10::toString(t.scalar_type()));
      MOEQ_CHECK(t.sizes().vec() == p.shape, "{}: tensor '{}' has shape {}, expected {}",
                 source.describe(), p.name, detail::shape_str(t.sizes()),
                 detail::shape_str(p.shape));
      p.value = t.to(placement.device, p.dtype.value_or(placement.dtype));
      p.stored_dtype = t.scalar_type();
    });
  } catch (...) {
    release();
    throw;
  }
}

void Module::release() {
  for_each_parameter([](Parameter& p) { p.value.reset(); });
}

int64_t Module::resident_bytes() {
  int64_t bytes = 0;
  for_each_parameter([&](Parameter& p) {
    if (p.resident()) {
      bytes += static_cast<int64_t>(p.value.nbytes());
    }
  });
  return bytes;
}

Parameter& Module::add_parameter(std::string_view local_name,
                                 std::vector<int64_t> shape,
                                 bool required) {
  return add_named_parameter(child_name(local_name), std::move(shape), required);
}

Parameter& Module::add_named_parameter(std::string full_name,
                                       std::vector<int64_t> shape,
                                       bool required) {
  auto p = std::make_unique<Parameter>();
  p->name = std::move(full_name);
  p->shape = std::move(shape);
  p->required = required;
  parameters_.push_back(p.get());
  owned_parameters_.push_back(std::move(p));
  return *parameters_.back();
}

std::string Module::child_name(std::string_view local) const {
  return name_.empty() ? std::string(local) : fmt::format("{}.{}", name_, local);
}

namespace {

// The last component of a dotted name: "model.layers.0.mlp.experts.3.w1" -> "w1".
std::string last_component(const std::string& name) {
  auto dot = name.rfind('.');
  return dot == std::string::npos ? name : name.substr(dot + 1);
}

double lowest_value(c10::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat:
      return std::numeric_limits<float>::lowest();
    case at::kDouble:
      return std::numeric_limits<double>::lowest();
    case at::kBFloat16:
      return static_cast<double>(std::numeric_limits<c10::BFloat16>::lowest());
    case at::kHalf:
      return static_cast<double>(std::numeric_limits<c10::Half>::lowest());
    default:
      MOEQ_FAIL("compute dtype must be a floating type (float32, bfloat16, float16), got {}",
                c10::toString(dtype));
  }
}

// A module's weight, checked resident (a forward on a released module is a driver bug).
const at::Tensor& resident(const Parameter& p) {
  MOEQ_INTERNAL_ASSERT(p.resident(), "weight '{}' used while not loaded", p.name);
  return p.value;
}

}  // namespace

// ---- forward context ----------------------------------------------------------------------------

ForwardContext::ForwardContext(int64_t batch_size,
                               int64_t seq_len,
                               at::Tensor attention_mask,
                               at::Tensor position_ids,
                               const Placement& placement)
    : batch_size_(batch_size), seq_len_(seq_len), placement_(placement) {
  const auto device = placement.device;
  if (attention_mask.defined()) {
    MOEQ_CHECK(attention_mask.dim() == 2 && attention_mask.size(0) == batch_size &&
                   attention_mask.size(1) == seq_len,
               "attention_mask must be [{}, {}] like input_ids, got {}", batch_size, seq_len,
               detail::shape_str(attention_mask.sizes()));
    token_mask_ = attention_mask.to(device).ne(0);
  } else {
    token_mask_ = at::ones({batch_size, seq_len}, at::TensorOptions(device).dtype(at::kBool));
  }
  if (position_ids.defined()) {
    MOEQ_CHECK(position_ids.dim() == 2 &&
                   (position_ids.size(0) == batch_size || position_ids.size(0) == 1) &&
                   position_ids.size(1) == seq_len,
               "position_ids must be [{}, {}] or [1, {}], got {}", batch_size, seq_len, seq_len,
               detail::shape_str(position_ids.sizes()));
    position_ids_ = position_ids.to(device, at::kLong);
  } else {
    position_ids_ = at::arange(seq_len, at::TensorOptions(device).dtype(at::kLong)).unsqueeze(0);
  }
}

const at::Tensor& ForwardContext::additive_mask(int64_t sliding_window) {
  auto it = masks_.find(sliding_window);
  if (it != masks_.end()) {
    return it->second;
  }
  const auto options = at::TensorOptions(placement_.device).dtype(at::kLong);
  auto q = at::arange(seq_len_, options).unsqueeze(1);
  auto k = at::arange(seq_len_, options).unsqueeze(0);
  auto allowed = k.le(q);
  if (sliding_window > 0) {
    allowed = allowed.logical_and(k.gt(q - sliding_window));
  }
  allowed = allowed.unsqueeze(0).unsqueeze(0).logical_and(
      token_mask_.unsqueeze(1).unsqueeze(1));  // [B, 1, S, S]
  // transformers' eager mask: 0 where allowed, finfo(dtype).min elsewhere.
  const auto mask_options = at::TensorOptions(placement_.device).dtype(placement_.dtype);
  auto mask = at::where(allowed, at::zeros({}, mask_options),
                        at::full({}, lowest_value(placement_.dtype), mask_options));
  return masks_.emplace(sliding_window, std::move(mask)).first->second;
}

const at::Tensor& ForwardContext::chunked_mask(int64_t chunk_size) {
  MOEQ_CHECK(chunk_size > 0, "attention chunk size must be positive, got {}", chunk_size);
  auto it = chunked_masks_.find(chunk_size);
  if (it != chunked_masks_.end()) {
    return it->second;
  }
  const auto options = at::TensorOptions(placement_.device).dtype(at::kLong);
  // transformers: left padding = tokens before the first kept one.
  const auto left_padding =
      token_mask_.to(at::kLong).cumsum(-1).eq(0).sum(-1).view({-1, 1, 1, 1});  // [B, 1, 1, 1]
  auto q = at::arange(seq_len_, options).view({1, 1, -1, 1});
  auto k = at::arange(seq_len_, options).view({1, 1, 1, -1});
  auto same_chunk =
      (k - left_padding).div(chunk_size, "floor").eq((q - left_padding).div(chunk_size, "floor"));
  auto allowed = k.le(q)
                     .logical_and(same_chunk)
                     .logical_and(token_mask_.unsqueeze(1).unsqueeze(1));  // [B, 1, S, S]
  const auto mask_options = at::TensorOptions(placement_.device).dtype(placement_.dtype);
  auto mask = at::where(allowed, at::zeros({}, mask_options),
                        at::full({}, lowest_value(placement_.dtype), mask_options));
  return chunked_masks_.emplace(chunk_size, std::move(mask)).first->second;
}

const std::pair<at::Tensor, at::Tensor>& ForwardContext::rope(const RotaryEmbedding& rotary) {
  auto it = rope_.find(&rotary);
  if (it != rope_.end()) {
    return it->second;
  }
  return rope_.emplace(&rotary, rotary.cos_sin(position_ids_, placement_.dtype)).first->second;
}

// ---- leaves -------------------------------------------------------------------------------------

Embedding::Embedding(std::string name, int64_t vocab_size, int64_t hidden_size)
    : Module("Embedding", std::move(name)),
      weight_(&add_parameter("weight", {vocab_size, hidden_size})) {}

at::Tensor Embedding::forward(const at::Tensor& input_ids) {
  return at::embedding(resident(*weight_), input_ids);
}

Linear::Linear(std::string name,
               int64_t in_features,
               int64_t out_features,
               bool bias,
               ProjKind kind,
               int64_t expert,
               std::string weight_name)
    : Module("Linear", std::move(name)), in_features_(in_features), out_features_(out_features) {
  weight_ = weight_name.empty()
                ? &add_parameter("weight", {out_features, in_features})
                : &add_named_parameter(std::move(weight_name), {out_features, in_features});
  if (bias) {
    bias_ = &add_parameter("bias", {out_features});
  }
  role_ = last_component(this->name());
  ref_.name = weight_->name;
  ref_.role = role_;
  ref_.expert = expert;
  ref_.kind = kind;
}

at::Tensor Linear::forward(const at::Tensor& x) {
  std::optional<at::Tensor> bias;
  if (bias_ != nullptr) {
    bias = resident(*bias_);
  }
  return fn::linear(x, resident(*weight_), bias, ref_);
}

RMSNorm::RMSNorm(std::string type, std::string name, int64_t dim, double eps, NormStyle style)
    : Module(std::move(type), std::move(name)),
      weight_(&add_parameter("weight", {dim})),
      eps_(eps),
      style_(style) {}

at::Tensor RMSNorm::forward(const at::Tensor& x) {
  const auto input_dtype = x.scalar_type();
  auto h = x.to(at::kFloat);
  auto variance = h.pow(2).mean(-1, /*keepdim=*/true);
  h = h * at::rsqrt(variance + eps_);
  if (style_ == NormStyle::kScaleThenCast) {
    return (resident(*weight_) * h).to(input_dtype);
  }
  return resident(*weight_) * h.to(input_dtype);
}

// ---- rotary embeddings --------------------------------------------------------------------------

RotaryEmbedding::RotaryEmbedding(const RopeOptions& options) : options_(options) {
  MOEQ_CHECK(options.head_dim > 0, "rotary embedding: head_dim must be positive, got {}",
             options.head_dim);
  rotary_dim_ =
      static_cast<int64_t>(static_cast<double>(options.head_dim) * options.partial_rotary_factor);
  MOEQ_CHECK(rotary_dim_ > 0 && rotary_dim_ % 2 == 0,
             "rotary embedding: rotary dim int(head_dim {} * partial_rotary_factor {}) = {} must "
             "be a positive even number",
             options.head_dim, options.partial_rotary_factor, rotary_dim_);
  // Exactly transformers' float32 arithmetic: 1 / theta ** (arange(0, d, 2) / d).
  const auto f32 = at::TensorOptions().dtype(at::kFloat);
  auto exponent = at::arange(0, rotary_dim_, 2, f32) / static_cast<double>(rotary_dim_);
  auto inv_freq = at::reciprocal(at::pow(options.theta, exponent));
  switch (options.type) {
    case RopeType::kDefault:
      break;
    case RopeType::kLinear:
      inv_freq = inv_freq / options.factor;
      break;
    case RopeType::kLlama3: {
      const double old_context = static_cast<double>(options.original_max_position_embeddings);
      const double low_freq_wavelen = old_context / options.low_freq_factor;
      const double high_freq_wavelen = old_context / options.high_freq_factor;
      auto wavelen = at::reciprocal(inv_freq) * (2.0 * std::numbers::pi);
      auto scaled = at::where(wavelen.gt(low_freq_wavelen), inv_freq / options.factor, inv_freq);
      auto smooth = (at::reciprocal(wavelen) * old_context - options.low_freq_factor) /
                    (options.high_freq_factor - options.low_freq_factor);
      auto smoothed = at::rsub(smooth, 1) * scaled / options.factor + smooth * scaled;
      auto medium = wavelen.lt(high_freq_wavelen)
                        .logical_not()
                        .logical_and(wavelen.gt(low_freq_wavelen).logical_not());
      inv_freq = at::where(medium, smoothed, scaled);
      break;
    }
    case RopeType::kYarn: {
      const double dim = static_cast<double>(rotary_dim_);
      const double factor = options.factor;
      auto mscale_of = [](double scale, double m) {
        return scale <= 1.0 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
      };
      if (options.attention_factor) {
        attention_scaling_ = *options.attention_factor;
      } else if (options.mscale && options.mscale_all_dim && *options.mscale != 0.0 &&
                 *options.mscale_all_dim != 0.0) {
        attention_scaling_ =
            mscale_of(factor, *options.mscale) / mscale_of(factor, *options.mscale_all_dim);
      } else {
        attention_scaling_ = mscale_of(factor, 1.0);
      }
      const double original = static_cast<double>(options.original_max_position_embeddings);
      auto correction_dim = [&](double rotations) {
        return dim * std::log(original / (rotations * 2.0 * std::numbers::pi)) /
               (2.0 * std::log(options.theta));
      };
      double low = correction_dim(options.beta_fast);
      double high = correction_dim(options.beta_slow);
      if (options.truncate) {
        low = std::floor(low);
        high = std::ceil(high);
      }
      low = std::max(low, 0.0);
      high = std::min(high, dim - 1.0);
      if (low == high) {
        high += 0.001;  // transformers: prevents a division by zero
      }
      // transformers evaluates pos_freqs = theta ** (arange(0, d, 2) / d) in fp32.
      const auto pos_freqs = at::pow(options.theta, exponent);
      const auto extrapolation = at::reciprocal(pos_freqs);
      const auto interpolation = at::reciprocal(pos_freqs * factor);
      const auto ramp = ((at::arange(rotary_dim_ / 2, f32) - low) / (high - low)).clamp(0.0, 1.0);
      const auto extrapolation_factor = at::rsub(ramp, 1.0);
      inv_freq = interpolation * at::rsub(extrapolation_factor, 1.0) +
                 extrapolation * extrapolation_factor;
      break;
    }
  }
  inv_freq_ = inv_freq;
}

std::pair<at::Tensor, at::Tensor> RotaryEmbedding::cos_sin(const at::Tensor& position_ids,
                                                           c10::ScalarType dtype) const {
  auto inv_freq = inv_freq_.to(position_ids.device());
  // [B, S, 1] * [1, 1, d/2]: the outer product transformers computes as a K=1 matmul.
  auto freqs = position_ids.to(at::kFloat).unsqueeze(-1) * inv_freq.unsqueeze(0).unsqueeze(0);
  auto emb = at::cat({freqs, freqs}, -1);
  auto cos = emb.cos() * attention_scaling_;
  auto sin = emb.sin() * attention_scaling_;
  return {cos.to(dtype), sin.to(dtype)};
}

namespace {
at::Tensor rotate_half(const at::Tensor& x) {
  const auto half = x.size(-1) / 2;
  auto x1 = x.narrow(-1, 0, half);
  auto x2 = x.narrow(-1, half, x.size(-1) - half);
  return at::cat({x2.neg(), x1}, -1);
}
}  // namespace

at::Tensor RotaryEmbedding::apply(const at::Tensor& x,
                                  const at::Tensor& cos,
                                  const at::Tensor& sin) {
  auto c = cos.unsqueeze(1);  // [B, 1, S, rot]
  auto s = sin.unsqueeze(1);
  const auto rot = c.size(-1);
  if (rot == x.size(-1)) {
    return x * c + rotate_half(x) * s;
  }
  auto x_rot = x.narrow(-1, 0, rot);
  auto x_pass = x.narrow(-1, rot, x.size(-1) - rot);
  return at::cat({x_rot * c + rotate_half(x_rot) * s, x_pass}, -1);
}

// ---- attention ----------------------------------------------------------------------------------

Attention::Attention(std::string type,
                     std::string name,
                     const AttentionOptions& options,
                     std::shared_ptr<const RotaryEmbedding> rotary)
    : SelfAttention(std::move(type), std::move(name)),
      options_(options),
      rotary_(std::move(rotary)) {
  const auto& o = options_;
  MOEQ_CHECK(o.num_heads > 0 && o.num_kv_heads > 0 && o.num_heads % o.num_kv_heads == 0,
             "{}: num_attention_heads {} must be a positive multiple of num_key_value_heads {}",
             this->name(), o.num_heads, o.num_kv_heads);
  MOEQ_INTERNAL_ASSERT(rotary_ != nullptr, "{}: attention without a rotary embedding",
                       this->name());
  MOEQ_CHECK(rotary_->rotary_dim() <= o.head_dim, "{}: rotary dim {} exceeds head_dim {}",
             this->name(), rotary_->rotary_dim(), o.head_dim);
  q_proj_ = add_child(std::make_unique<Linear>(child_name("q_proj"), o.hidden_size,
                                               o.num_heads * o.head_dim, o.qkv_bias, ProjKind::kQ));
  k_proj_ = add_child(std::make_unique<Linear>(
      child_name("k_proj"), o.hidden_size, o.num_kv_heads * o.head_dim, o.qkv_bias, ProjKind::kK));
  v_proj_ = add_child(std::make_unique<Linear>(
      child_name("v_proj"), o.hidden_size, o.num_kv_heads * o.head_dim, o.qkv_bias, ProjKind::kV));
  o_proj_ = add_child(std::make_unique<Linear>(child_name("o_proj"), o.num_heads * o.head_dim,
                                               o.hidden_size, o.o_bias, ProjKind::kO));
  if (o.qk_norm) {
    const bool full = o.qk_norm_scope == QkNormScope::kFullWidth;
    q_norm_ = add_child(std::make_unique<RMSNorm>(o.qk_norm_type, child_name("q_norm"),
                                                  full ? o.num_heads * o.head_dim : o.head_dim,
                                                  o.qk_norm_eps));
    k_norm_ = add_child(std::make_unique<RMSNorm>(o.qk_norm_type, child_name("k_norm"),
                                                  full ? o.num_kv_heads * o.head_dim : o.head_dim,
                                                  o.qk_norm_eps));
  }
  if (o.sinks) {
    sinks_ = &add_parameter("sinks", {o.num_heads});
  }
  MOEQ_CHECK(!o.clip_qkv || *o.clip_qkv > 0, "{}: clip_qkv must be positive, got {}", this->name(),
             o.clip_qkv.value_or(0.0));
}

namespace {
// [B, kv, S, d] -> [B, kv * n_rep, S, d], each kv head repeated n_rep times in place.
at::Tensor repeat_kv(const at::Tensor& x, int64_t n_rep) {
  if (n_rep == 1) {
    return x;
  }
  const auto b = x.size(0), kv = x.size(1), s = x.size(2), d = x.size(3);
  return x.unsqueeze(2).expand({b, kv, n_rep, s, d}).reshape({b, kv * n_rep, s, d});
}
}  // namespace

at::Tensor Attention::forward(const at::Tensor& hidden, ForwardContext& ctx) {
  const auto& o = options_;
  const auto b = hidden.size(0), s = hidden.size(1);
  auto q = q_proj_->forward(hidden);
  auto k = k_proj_->forward(hidden);
  auto v = v_proj_->forward(hidden);
  if (q_norm_ != nullptr) {
    // A per-head norm sees [B, S, heads, head_dim]; a full-width one [B, S, heads * head_dim].
    const auto heads = [&](const at::Tensor& x) { return x.view({b, s, -1, o.head_dim}); };
    const bool per_head = o.qk_norm_scope == QkNormScope::kPerHead;
    q = q_norm_->forward(per_head ? heads(q) : q);
    k = k_norm_->forward(per_head ? heads(k) : k);
  }
  if (o.clip_qkv) {  // OLMoE: after the norms, before the heads split and RoPE
    q = q.clamp(-*o.clip_qkv, *o.clip_qkv);
    k = k.clamp(-*o.clip_qkv, *o.clip_qkv);
    v = v.clamp(-*o.clip_qkv, *o.clip_qkv);
  }
  q = q.view({b, s, -1, o.head_dim}).transpose(1, 2);
  k = k.view({b, s, -1, o.head_dim}).transpose(1, 2);
  v = v.view({b, s, -1, o.head_dim}).transpose(1, 2);
  const auto& [cos, sin] = ctx.rope(*rotary_);
  q = RotaryEmbedding::apply(q, cos, sin);
  k = RotaryEmbedding::apply(k, cos, sin);

  const auto n_rep = o.num_heads / o.num_kv_heads;
  k = repeat_kv(k, n_rep);
  v = repeat_kv(v, n_rep);
  const double scaling = o.scaling.value_or(1.0 / std::sqrt(static_cast<double>(o.head_dim)));
  auto scores = at::matmul(q, k.transpose(2, 3)) * scaling;
  scores = scores + ctx.additive_mask(o.sliding_window);
  at::Tensor probs;
  if (sinks_ != nullptr) {
    // GPT-OSS: the sink logit joins the row, the max is subtracted, softmax in the scores' dtype.
    auto sinks =
        resident(*sinks_).to(scores.scalar_type()).view({1, -1, 1, 1}).expand({b, -1, s, 1});
    auto combined = at::cat({scores, sinks}, -1);
    combined = combined - std::get<0>(combined.max(-1, /*keepdim=*/true));
    probs = at::softmax(combined, -1, combined.scalar_type())
                .narrow(-1, 0, scores.size(-1))
                .to(v.scalar_type());
  } else {
    probs = at::softmax(scores, -1, at::kFloat).to(q.scalar_type());
  }
  auto out = at::matmul(probs, v).transpose(1, 2).contiguous().reshape({b, s, -1});
  return o_proj_->forward(out);
}

// ---- feed-forward -------------------------------------------------------------------------------

GatedMlp::GatedMlp(std::string type, std::string name, const GatedMlpOptions& options)
    : FeedForward(std::move(type), std::move(name)), options_(options) {
  const auto& o = options_;
  gate_ =
      add_child(std::make_unique<Linear>(child_name(o.gate_name), o.hidden_size,
                                         o.intermediate_size, false, ProjKind::kGate, o.expert));
  up_ = add_child(std::make_unique<Linear>(child_name(o.up_name), o.hidden_size,
                                           o.intermediate_size, false, ProjKind::kUp, o.expert));
  down_ = add_child(std::make_unique<Linear>(child_name(o.down_name), o.intermediate_size,
                                             o.hidden_size, false, ProjKind::kDown, o.expert));
}

at::Tensor GatedMlp::forward(const at::Tensor& hidden) {
  at::Tensor act;
  switch (options_.activation) {
    case Activation::kSilu:
      act = at::silu(gate_->forward(hidden));
      break;
  }
  return down_->forward(act * up_->forward(hidden));
}

// ---- routing ------------------------------------------------------------------------------------

Router::Router(std::string type, std::string name, int64_t num_experts, int64_t top_k)
    : Module(std::move(type), std::move(name)), num_experts_(num_experts), top_k_(top_k) {
  MOEQ_CHECK(num_experts > 0 && top_k > 0 && top_k <= num_experts,
             "{}: expected 0 < num_experts_per_tok <= num_experts, got top_k {} of {} experts",
             this->name(), top_k, num_experts);
}

SoftmaxTopKRouter::SoftmaxTopKRouter(std::string type,
                                     std::string name,
                                     const SoftmaxTopKOptions& options)
    : Router(std::move(type), std::move(name), options.num_experts, options.top_k),
      options_(options),
      weight_(&add_parameter("weight", {options.num_experts, options.hidden_size})) {
  ref_.name = weight_->name;
  ref_.role = "router";
  ref_.kind = ProjKind::kRouter;
}

RouterOutput SoftmaxTopKRouter::route(const at::Tensor& hidden) {
  RouterOutput out;
  out.logits = fn::linear(hidden, resident(*weight_), std::nullopt, ref_);
  out.probs = at::softmax(out.logits, -1, at::kFloat);
  auto [values, ids] = at::topk(out.probs, top_k(), -1);
  if (options_.normalize_topk) {
    values = values / values.sum(-1, /*keepdim=*/true);
  }
  if (options_.weights_in_compute_dtype) {
    values = values.to(out.logits.scalar_type());
  }
  out.topk_ids = ids;
  out.topk_weights = values;
  return out;
}

// ---- experts ------------------------------------------------------------------------------------

PerExpertMlps::PerExpertMlps(std::string type,
                             std::string name,
                             int64_t num_experts,
                             const std::string& expert_type,
                             const GatedMlpOptions& options)
    : Experts(std::move(type), std::move(name)) {
  for (int64_t e = 0; e < num_experts; ++e) {
    auto o = options;
    o.expert = e;
    experts_.push_back(
        add_child(std::make_unique<GatedMlp>(expert_type, child_name(std::to_string(e)), o)));
  }
}

GatedMlp& PerExpertMlps::expert(int64_t e) {
  MOEQ_CHECK(e >= 0 && e < num_experts(), "{}: expert {} out of range [0, {})", name(), e,
             num_experts());
  return *experts_[e];
}

at::Tensor PerExpertMlps::run_expert(int64_t expert, const at::Tensor& rows) {
  return this->expert(expert).forward(rows);
}

// ---- sparse MoE block ---------------------------------------------------------------------------

SparseMoeBlock::SparseMoeBlock(std::string type, std::string name, const SparseMoeOptions& options)
    : FeedForward(std::move(type), std::move(name)), options_(options) {}

void SparseMoeBlock::set_router(std::unique_ptr<Router> router) {
  MOEQ_INTERNAL_ASSERT(router_ == nullptr, "{}: router set twice", name());
  router_ = add_child(std::move(router));
}

void SparseMoeBlock::set_experts(std::unique_ptr<Experts> experts) {
  MOEQ_INTERNAL_ASSERT(experts_ == nullptr, "{}: experts set twice", name());
  experts_ = add_child(std::move(experts));
  MOEQ_CHECK(router_ == nullptr || router_->num_experts() == experts_->num_experts(),
             "{}: router has {} experts, experts module {}", name(), router_->num_experts(),
             experts_->num_experts());
  if (options_.shared_expert && shared_expert_ == nullptr) {
    shared_expert_ = add_child(std::make_unique<GatedMlp>(options_.shared_expert_type,
                                                          child_name(options_.shared_expert_name),
                                                          options_.shared_expert_options));
    if (options_.shared_expert_gate) {
      shared_gate_ = add_child(std::make_unique<Linear>(
          child_name(options_.shared_expert_name + "_gate"),
          options_.shared_expert_options.hidden_size, 1, false, ProjKind::kSharedExpertGate));
    }
  }
}

RouterOutput SparseMoeBlock::route(const at::Tensor& x) {
  MOEQ_INTERNAL_ASSERT(router_ != nullptr && experts_ != nullptr, "{}: incomplete MoE block",
                       name());
  return router_->route(x);
}

namespace {

// The (token, slot) pairs each expert was picked for, in transformers' order: slot-major, then
// token, per expert. flat[i] indexes topk_ids viewed as [K, T]: slot i / T, token i % T.
struct Assignment {
  at::Tensor order;             // [K*T] int64, grouped by expert
  std::vector<int64_t> counts;  // per expert
};

Assignment assign(const RouterOutput& routing, int64_t num_experts) {
  auto flat = routing.topk_ids.t().reshape(-1);
  Assignment a;
  a.order = std::get<1>(at::sort(flat, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  auto counts = at::bincount(flat, /*weights=*/{}, num_experts).to(at::kCPU, at::kLong);
  a.counts.assign(counts.data_ptr<int64_t>(), counts.data_ptr<int64_t>() + counts.numel());
  return a;
}

// The router weights of (token, slot) pairs, [n, 1].
at::Tensor slot_weights(const RouterOutput& routing,
                        const at::Tensor& token_idx,
                        const at::Tensor& slot_idx) {
  const auto k = routing.topk_weights.size(1);
  return routing.topk_weights.reshape(-1).index_select(0, token_idx * k + slot_idx).unsqueeze(-1);
}

// Weights expert e's output rows and adds them into `out` at their tokens.
void add_weighted(at::Tensor& out,
                  const at::Tensor& rows_out,
                  const at::Tensor& token_idx,
                  const at::Tensor& slot_idx,
                  const RouterOutput& routing) {
  const auto k = routing.topk_weights.size(1);
  auto w = routing.topk_weights.reshape(-1).index_select(0, token_idx * k + slot_idx);
  auto weighted = rows_out * w.unsqueeze(-1);
  out.index_add_(0, token_idx, weighted.to(out.scalar_type()));
}

}  // namespace

at::Tensor SparseMoeBlock::combine_routed(const at::Tensor& x, const RouterOutput& routing) {
  const auto t = x.size(0);
  auto out = at::zeros_like(x);
  const auto a = assign(routing, experts_->num_experts());
  int64_t offset = 0;
  for (int64_t e = 0; e < experts_->num_experts(); ++e) {
    const auto n = a.counts[e];
    if (n == 0) {
      continue;
    }
    auto idx = a.order.narrow(0, offset, n);
    offset += n;
    auto token_idx = idx.remainder(t);
    auto slot_idx = idx.div(t, "floor");
    if (options_.router_weight_on_input) {
      auto rows_in = x.index_select(0, token_idx) * slot_weights(routing, token_idx, slot_idx);
      auto rows_out = experts_->run_expert(e, rows_in.to(x.scalar_type()));
      out.index_add_(0, token_idx, rows_out.to(out.scalar_type()));
    } else {
      auto rows_out = experts_->run_expert(e, x.index_select(0, token_idx));
      add_weighted(out, rows_out, token_idx, slot_idx, routing);
    }
  }
  return out;
}

at::Tensor SparseMoeBlock::combine_all_experts(const at::Tensor& x, const RouterOutput& routing) {
  const auto t = x.size(0);
  auto out = at::zeros_like(x);
  const auto a = assign(routing, experts_->num_experts());
  int64_t offset = 0;
  for (int64_t e = 0; e < experts_->num_experts(); ++e) {
    // Every token: observers see them all. With the router weight on the input, each token comes
    // scaled by the weight it would get were expert e picked (its probability for e), which for
    // the tokens that did pick e is exactly their routed input.
    at::Tensor all_out;
    if (options_.router_weight_on_input) {
      auto w = routing.probs.select(1, e).unsqueeze(-1).to(routing.topk_weights.scalar_type());
      all_out = experts_->run_expert(e, (x * w).to(x.scalar_type()));
    } else {
      all_out = experts_->run_expert(e, x);
    }
    const auto n = a.counts[e];
    if (n == 0) {
      continue;
    }
    auto idx = a.order.narrow(0, offset, n);
    offset += n;
    auto token_idx = idx.remainder(t);
    auto slot_idx = idx.div(t, "floor");
    if (options_.router_weight_on_input) {
      out.index_add_(0, token_idx, all_out.index_select(0, token_idx).to(out.scalar_type()));
    } else {
      add_weighted(out, all_out.index_select(0, token_idx), token_idx, slot_idx, routing);
    }
  }
  return out;
}

at::Tensor SparseMoeBlock::shared(const at::Tensor& x) {
  if (shared_expert_ == nullptr) {
    return {};
  }
  auto y = shared_expert_->forward(x);
  if (shared_gate_ != nullptr) {
    y = at::sigmoid(shared_gate_->forward(x)) * y;
  }
  return y;
}

at::Tensor SparseMoeBlock::forward(const at::Tensor& hidden) {
  auto x = hidden.reshape({-1, hidden.size(-1)});
  auto routing = route(x);
  for (auto& hook : hooks_) {
    hook->on_route(*this, x, routing);
  }
  std::optional<at::Tensor> combined;
  for (auto it = hooks_.rbegin(); it != hooks_.rend() && !combined; ++it) {
    combined = (*it)->combine(*this, x, routing);
  }
  if (!combined) {
    combined = experts_->run_routed(x, routing, options_.router_weight_on_input);
  }
  auto out = combined ? *combined : combine_routed(x, routing);
  if (shared_expert_ != nullptr) {
    out = out + shared(x);
  }
  return out.reshape(hidden.sizes());
}

void SparseMoeBlock::add_hook(std::shared_ptr<MoeHook> hook) {
  MOEQ_CHECK(hook != nullptr, "{}: null MoE hook", name());
  hooks_.push_back(std::move(hook));
}

void SparseMoeBlock::remove_hook(const MoeHook* hook) {
  std::erase_if(hooks_, [&](const auto& h) { return h.get() == hook; });
}

// ---- decoder layer ------------------------------------------------------------------------------

DecoderLayer::DecoderLayer(std::string type, std::string name, int64_t index)
    : Module(std::move(type), std::move(name)), index_(index) {}

void DecoderLayer::set_input_layernorm(std::unique_ptr<RMSNorm> norm) {
  input_layernorm_ = add_child(std::move(norm));
}
void DecoderLayer::set_attention(std::unique_ptr<SelfAttention> attention) {
  attention_ = add_child(std::move(attention));
}
void DecoderLayer::set_post_attention_layernorm(std::unique_ptr<RMSNorm> norm) {
  post_attention_layernorm_ = add_child(std::move(norm));
}
void DecoderLayer::set_mlp(std::unique_ptr<FeedForward> mlp) {
  mlp_ = add_child(std::move(mlp));
}

at::Tensor DecoderLayer::forward(const at::Tensor& hidden, ForwardContext& ctx) {
  MOEQ_INTERNAL_ASSERT(input_layernorm_ && attention_ && post_attention_layernorm_ && mlp_,
                       "{}: incomplete decoder layer", name());
  auto h = hidden + attention_->forward(input_layernorm_->forward(hidden), ctx);
  return h + mlp_->forward(post_attention_layernorm_->forward(h));
}

}  // namespace moeq::runtime
