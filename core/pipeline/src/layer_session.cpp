// LayerSession (layer_session.h): targets, input groups, the two functional overrides, and the
// scale computation at the end of a layer's calibration.
#include "moeq/pipeline/layer_session.h"

#include <moeq/core/error.h>
#include <moeq/core/log.h>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <regex>

namespace moeq::pipeline {
namespace {

using fn::ProjKind;

bool is_attention(ProjKind kind) {
  return kind == ProjKind::kQ || kind == ProjKind::kK || kind == ProjKind::kV ||
         kind == ProjKind::kO;
}

bool is_mlp(ProjKind kind) {
  return kind == ProjKind::kGate || kind == ProjKind::kUp || kind == ProjKind::kDown ||
         kind == ProjKind::kGateUp;
}

// compressed-tensors matches "re:" entries with Python's re.match: anchored at the start only.
bool matches(const std::string& entry, const std::string& name) {
  if (entry.starts_with("re:")) {
    const std::regex pattern(entry.substr(3));
    return std::regex_search(name, pattern, std::regex_constants::match_continuous);
  }
  return entry == name;
}

double relative_rms_error(const at::Tensor& approx, const at::Tensor& exact) {
  const auto a = approx.to(at::kDouble);
  const auto e = exact.to(at::kDouble);
  const double denom = e.norm().item<double>();
  const double num = (a - e).norm().item<double>();
  return denom > 0.0 ? num / denom : num;
}

}  // namespace

bool TargetRules::ignored(const std::string& module_name, ProjKind kind, int64_t expert) const {
  if (kind == ProjKind::kRouter || kind == ProjKind::kSharedExpertGate || kind == ProjKind::kHead) {
    return true;  // routing precision decides which experts run; never quantized
  }
  if (skip_attention && is_attention(kind)) {
    return true;
  }
  if (skip_dense_mlp && expert == fn::WeightRef::kNoExpert && is_mlp(kind)) {
    return true;
  }
  for (const auto& entry : ignore) {
    if (matches(entry, module_name)) {
      return true;
    }
  }
  // A scheme targets "Linear" (every projection) or names modules as the ignore list does.
  for (const auto& target : scheme.targets) {
    if (target == "Linear" || matches(target, module_name)) {
      return false;
    }
  }
  return true;
}

LayerSession::LayerSession(runtime::DecoderLayer& layer,
                           runtime::WeightSource& weights,
                           const TargetRules& rules,
                           const CalibrationOptions& calibration)
    : layer_(layer), weights_(weights), rules_(rules), calibration_(calibration) {
  MOEQ_CHECK(rules.scheme.weights.has_value(),
             "the scheme quantizes no weights; moeq quantizes weights (layer '{}')", layer.name());
  // Routed experts: the block each belongs to, so a block's experts share input quantizers.
  std::map<const runtime::Module*, std::string> expert_block;
  layer.for_each_module([&](runtime::Module& m) {
    if (auto* block = dynamic_cast<runtime::SparseMoeBlock*>(&m)) {
      block->experts().for_each_module(
          [&](runtime::Module& e) { expert_block[&e] = block->name(); });
    }
  });
  layer.for_each_module([&](runtime::Module& m) {
    auto* linear = dynamic_cast<runtime::Linear*>(&m);
    if (linear == nullptr) {
      return;
    }
    const auto& ref = linear->ref();
    if (rules_.ignored(linear->name(), ref.kind, ref.expert)) {
      return;
    }
    QuantTarget t;
    t.module = linear->name();
    t.linear = linear;
    t.kind = ref.kind;
    t.expert = ref.expert;
    const auto block = expert_block.find(linear);
    if (block != expert_block.end() && ref.expert >= 0) {
      t.block = block->second;
      t.input_group = fmt::format("{}.experts.*.{}", t.block, ref.role);
    } else {
      t.input_group = t.module;
    }
    t.weight = std::make_unique<quant::TensorQuantizer>(
        *rules_.scheme.weights, quant::TensorRole::kWeight, std::string(linear->weight().name));
    if (rules_.scheme.input_activations) {
      auto& input = inputs_[t.input_group];
      if (!input) {
        input = std::make_unique<quant::TensorQuantizer>(*rules_.scheme.input_activations,
                                                         quant::TensorRole::kInput,
                                                         fmt::format("{} input", t.input_group));
      }
      t.input = input.get();
    }
    by_weight_.emplace(linear->weight().name, targets_.size());
    targets_.push_back(std::move(t));
  });
}

LayerSession::~LayerSession() {
  detach_all();
}

int64_t LayerSession::attach_adapters(const AdapterLookup& lookup) {
  int64_t claimed = 0;
  layer_.for_each_module([&](runtime::Module& m) {
    if (ModuleAdapter* adapter = lookup(m.type())) {
      adapter->attach(m, *this);
      ++claimed;
    }
  });
  return claimed;
}

void LayerSession::on_detach(std::function<void()> undo) {
  undo_.push_back(std::move(undo));
}

void LayerSession::detach_all() {
  while (!undo_.empty()) {
    auto undo = std::move(undo_.back());
    undo_.pop_back();
    undo();
  }
}

ExpertCoverage& LayerSession::add_coverage(const std::string& block,
                                           const std::string& adapter,
                                           int64_t num_experts) {
  coverage_.emplace_back(block, adapter, num_experts);
  return coverage_.back();
}

QuantTarget* LayerSession::find(std::string_view weight_name) {
  const auto it = by_weight_.find(weight_name);
  return it == by_weight_.end() ? nullptr : &targets_[it->second];
}

fn::Handlers LayerSession::calibration_handlers() {
  fn::Handlers h;
  h.linear = [this](const at::Tensor& input, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, const fn::WeightRef& ref) {
    if (QuantTarget* t = find(ref.name)) {
      const auto rows = input.numel() / std::max<int64_t>(input.size(-1), 1);
      t->rows_seen += rows;
      if (t->input != nullptr && rows > 0) {
        t->input->observe(input.reshape({-1, input.size(-1)}));
      }
    }
    return fn::linear(input, weight, bias, ref);
  };
  return h;
}

void LayerSession::finish_calibration() {
  // Experts under the token threshold: their weights get statistics from the weights alone
  // (round-to-nearest needs nothing else) and the block's shared input scale.
  for (auto& cov : coverage_) {
    std::vector<int64_t> starved;
    for (int64_t e = 0; e < cov.num_experts(); ++e) {
      cov.fallback[e] = cov.seen[e] < calibration_.min_tokens;
      if (cov.fallback[e]) {
        starved.push_back(e);
      }
    }
    if (!starved.empty()) {
      logger().warn(
          "{}: experts [{}] saw fewer than {} calibration tokens (mode '{}'); their "
          "weights use weight-only statistics and the block's shared input scale",
          cov.block, fmt::join(starved, ", "), calibration_.min_tokens,
          to_string(calibration_.mode));
    }
  }
  for (auto& [group, input] : inputs_) {
    MOEQ_CHECK(!input->has_observer() || input->calibrated(),
               "no calibration token reached '{}': a static input scale cannot be computed "
               "(use a scheme with dynamic activations, more samples, or calibration mode 'all')",
               group);
  }
  for (auto& t : targets_) {
    const auto& param = t.linear->weight();
    MOEQ_INTERNAL_ASSERT(param.resident(), "'{}' is not loaded", param.name);
    // Quantize what is stored (bf16 stays bf16) on the compute device.
    t.source_weight = weights_.get(param.name).to(param.value.device());
    t.weight->observe(t.source_weight);
  }
  // Projections the engines fuse share an NVFP4 global scale: gate and up of each expert (and of
  // each dense or shared MLP), q, k and v of the attention.
  if (rules_.scheme.weights->resolved_strategy() == quant::Strategy::kTensorGroup) {
    std::map<std::pair<std::string, int64_t>, std::vector<quant::TensorQuantizer*>> fused;
    for (auto& t : targets_) {
      const auto parent = t.module.substr(0, t.module.rfind('.'));
      if (t.kind == ProjKind::kGate || t.kind == ProjKind::kUp) {
        fused[{parent + "#mlp", t.expert}].push_back(t.weight.get());
      } else if (t.kind == ProjKind::kQ || t.kind == ProjKind::kK || t.kind == ProjKind::kV) {
        fused[{parent + "#qkv", t.expert}].push_back(t.weight.get());
      }
    }
    for (auto& [key, group] : fused) {
      if (group.size() > 1) {
        quant::fuse_global_scale(group);
      }
    }
  }
  for (auto& t : targets_) {
    const auto& param = t.linear->weight();
    const auto fake = t.weight->fake_quantize(t.source_weight);
    t.weight_error = relative_rms_error(fake, t.source_weight);
    t.fake_weight = fake.to(param.value.scalar_type());
  }
}

fn::Handlers LayerSession::quantized_handlers() {
  fn::Handlers h;
  h.linear = [this](const at::Tensor& input, const at::Tensor& weight,
                    const std::optional<at::Tensor>& bias, const fn::WeightRef& ref) {
    QuantTarget* t = find(ref.name);
    if (t == nullptr) {
      return fn::linear(input, weight, bias, ref);
    }
    MOEQ_INTERNAL_ASSERT(t->fake_weight.defined(), "'{}' run quantized before finish_calibration()",
                         t->module);
    const at::Tensor x = t->input != nullptr ? t->input->fake_quantize(input) : input;
    return fn::linear(x, t->fake_weight, bias, ref);
  };
  return h;
}

}  // namespace moeq::pipeline
