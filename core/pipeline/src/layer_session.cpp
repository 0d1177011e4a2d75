// LayerSession (layer_session.h): targets, input groups, the two functional overrides, and the
// scale computation at the end of a layer's calibration.
#include "moeq/pipeline/layer_session.h"

#include <moeq/core/error.h>
#include <moeq/core/log.h>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <fmt/ranges.h>

#include <regex>

#include "eval_metrics.h"

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
  bool targeted = false;
  for (const auto& target : scheme.targets) {
    if (target == "Linear" || matches(target, module_name)) {
      targeted = true;
      break;
    }
  }
  if (!targeted) {
    return true;
  }
  std::string reason;
  if (stages != nullptr && !stages->quantize(module_name, kind, expert, reason)) {
    if (stage_reasons_logged && stage_reasons_logged->insert(reason).second) {
      logger().info("{} (and others like it) left in high precision: {}", module_name, reason);
    }
    return true;
  }
  return false;
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
    t.weight_name = linear->weight().name;
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
    t.input = input_quantizer(t.input_group);
    by_weight_.emplace(linear->weight().name, targets_.size());
    targets_.push_back(std::move(t));
  });
  layer.for_each_parameter([&](runtime::Parameter& p) { layer_parameters_.insert(p.name); });
}

quant::TensorQuantizer* LayerSession::input_quantizer(const std::string& group) {
  if (!rules_.scheme.input_activations) {
    return nullptr;
  }
  auto& input = inputs_[group];
  if (!input) {
    input = std::make_unique<quant::TensorQuantizer>(*rules_.scheme.input_activations,
                                                     quant::TensorRole::kInput,
                                                     fmt::format("{} input", group));
  }
  return input.get();
}

void LayerSession::add_fused_experts(runtime::FusedExperts& experts) {
  const auto& name = experts.name();
  const auto block = name.substr(0, name.rfind('.'));
  for (auto* param : {&experts.gate_up(), &experts.down()}) {
    MOEQ_CHECK(!stacks_.contains(param->name), "'{}' is already intercepted", param->name);
  }
  std::map<std::string, std::vector<runtime::StackedProjection>> by_stack;
  for (auto& p : experts.projections()) {
    by_stack[p.stack->name].push_back(std::move(p));
  }
  for (auto& [stack_name, projections] : by_stack) {
    std::vector<std::string> kept;
    std::vector<std::string> ignored;
    for (const auto& p : projections) {
      (rules_.ignored(p.module, p.kind, p.expert) ? ignored : kept).push_back(p.module);
    }
    if (kept.empty()) {
      continue;
    }
    MOEQ_CHECK(ignored.empty(),
               "'{}' holds every expert's projections in one tensor: quantize all of them or none "
               "(the ignore list keeps {} of {} in high precision, e.g. '{}')",
               stack_name, ignored.size(), projections.size(), ignored.front());
    Stack stack;
    stack.experts = &experts;
    stack.param = projections.front().stack;
    const auto role = stack_name.substr(stack_name.rfind('.') + 1);
    stack.input = input_quantizer(fmt::format("{}.experts.*.{}", block, role));
    for (auto& p : projections) {
      QuantTarget t;
      t.module = p.module;
      t.kind = p.kind;
      t.expert = p.expert;
      t.block = block;
      t.input_group = fmt::format("{}.experts.*.{}", block, role);
      t.weight_name = stack_name;
      t.fused = &experts;
      t.weight = std::make_unique<quant::TensorQuantizer>(
          *rules_.scheme.weights, quant::TensorRole::kWeight,
          fmt::format("{} (expert {} of '{}')", p.role, p.expert, stack_name));
      t.input = stack.input;
      t.slice = std::move(p);
      stack.targets.push_back(targets_.size());
      targets_.push_back(std::move(t));
    }
    stacks_.emplace(stack_name, std::move(stack));
  }
}

LayerSession::Stack* LayerSession::find_stack(std::string_view weight_name) {
  const auto it = stacks_.find(weight_name);
  return it == stacks_.end() ? nullptr : &it->second;
}

void LayerSession::report_unrecognized(const fn::WeightRef& ref) {
  if (layer_parameters_.contains(ref.name)) {
    return;
  }
  const std::string name(ref.name);
  if (unrecognized_.insert(name).second) {
    logger().warn(
        "{}: a matmul on '{}' (role '{}'), which is no parameter of the layer, ran unquantized",
        layer_.name(), name, ref.role);
  }
}

void LayerSession::check_operand(const Stack& stack,
                                 const at::Tensor& b,
                                 const fn::WeightRef& ref) const {
  const auto& full = stack.param->value;
  const bool whole = ref.expert == fn::WeightRef::kAllExperts;
  MOEQ_CHECK(whole || (ref.expert >= 0 && ref.expert < full.size(0)),
             "a call on '{}' names expert {}, the stack holds {}", stack.param->name, ref.expert,
             full.size(0));
  const auto expected = whole ? full.sizes() : full.sizes().slice(1);
  MOEQ_CHECK(b.sizes() == expected,
             "a call on '{}' ({}) has a weight operand of shape [{}], expected [{}]",
             stack.param->name, whole ? "all experts" : fmt::format("expert {}", ref.expert),
             fmt::join(b.sizes(), ", "), fmt::join(expected, ", "));
}

void LayerSession::count_rows(Stack& stack, int64_t expert, int64_t rows) {
  for (auto i : stack.targets) {
    if (targets_[i].expert == expert) {
      targets_[i].rows_seen += rows;
    }
  }
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

namespace {
int64_t rows_of(const at::Tensor& x) {
  return x.numel() / std::max<int64_t>(x.size(-1), 1);
}
}  // namespace

fn::Handlers LayerSession::calibration_handlers() {
  // One expert's slice (matmul, or linear on a [E, out, in] stack): observe its rows.
  auto observe_slice = [this](Stack& stack, const at::Tensor& a, const at::Tensor& b,
                              const fn::WeightRef& ref) {
    check_operand(stack, b, ref);
    const auto rows = rows_of(a);
    count_rows(stack, ref.expert, rows);
    if (stack.input != nullptr && rows > 0) {
      stack.input->observe(a.reshape({-1, a.size(-1)}));
    }
  };
  fn::Handlers h;
  h.linear = [this, observe_slice](const at::Tensor& input, const at::Tensor& weight,
                                   const std::optional<at::Tensor>& bias,
                                   const fn::WeightRef& ref) {
    if (QuantTarget* t = find(ref.name)) {
      const auto rows = rows_of(input);
      t->rows_seen += rows;
      if (t->input != nullptr && rows > 0) {
        t->input->observe(input.reshape({-1, input.size(-1)}));
      }
    } else if (Stack* stack = find_stack(ref.name)) {
      observe_slice(*stack, input, weight, ref);
    } else {
      report_unrecognized(ref);
    }
    return fn::linear(input, weight, bias, ref);
  };
  h.matmul = [this, observe_slice](const at::Tensor& a, const at::Tensor& b,
                                   const fn::WeightRef& ref) {
    if (Stack* stack = find_stack(ref.name)) {
      observe_slice(*stack, a, b, ref);
    } else {
      report_unrecognized(ref);
    }
    return fn::matmul(a, b, ref);
  };
  h.bmm = [this](const at::Tensor& a, const at::Tensor& b, const fn::WeightRef& ref) {
    if (Stack* stack = find_stack(ref.name)) {
      check_operand(*stack, b, ref);
      for (int64_t e = 0; e < a.size(0); ++e) {
        count_rows(*stack, e, a.size(1));
      }
      if (stack->input != nullptr && a.numel() > 0) {
        stack->input->observe(a.reshape({-1, a.size(-1)}));
      }
    } else {
      report_unrecognized(ref);
    }
    return fn::bmm(a, b, ref);
  };
  h.grouped_mm = [this](const at::Tensor& a, const at::Tensor& b, const at::Tensor& offsets,
                        const fn::WeightRef& ref) {
    if (Stack* stack = find_stack(ref.name)) {
      check_operand(*stack, b, ref);
      const auto ends = offsets.to(at::kCPU, at::kLong);
      int64_t begin = 0;
      for (int64_t e = 0; e < ends.numel(); ++e) {
        const auto end = ends[e].item<int64_t>();
        count_rows(*stack, e, end - begin);
        begin = end;
      }
      if (stack->input != nullptr && begin > 0) {
        stack->input->observe(a.narrow(0, 0, begin));
      }
    } else {
      report_unrecognized(ref);
    }
    return fn::grouped_mm(a, b, offsets, ref);
  };
  return h;
}

void LayerSession::finish_calibration() {
  finish_calibration({}, /*in_place=*/false);
}

void LayerSession::finish_calibration(const std::function<void(QuantTarget&)>& quantized,
                                      bool in_place) {
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
  const bool lean = static_cast<bool>(quantized);
  std::map<std::string, at::Tensor> stored;  // stacks and their biases as stored, read once
  const auto read_once = [&](const runtime::Parameter& p) -> const at::Tensor& {
    auto& value = stored[p.name];
    if (!value.defined()) {
      value = p.holds_stored_values() ? p.value : weights_.get(p.name).to(p.value.device());
    }
    return value;
  };
  // The target's weight as stored (bf16 stays bf16: what the engines will decompress), on the
  // compute device; [out, in] whatever a stack's layout.
  const auto stored_weight = [&](QuantTarget& t) {
    if (t.linear != nullptr) {
      const auto& param = t.linear->weight();
      MOEQ_INTERNAL_ASSERT(param.resident(), "'{}' is not loaded", param.name);
      return param.holds_stored_values() ? param.value
                                         : weights_.get(param.name).to(param.value.device());
    }
    const auto& stack = *t.slice->stack;
    MOEQ_INTERNAL_ASSERT(stack.resident(), "'{}' is not loaded", stack.name);
    if (t.slice->bias != nullptr && !t.bias.defined()) {
      t.bias = runtime::FusedExperts::slice_bias(read_once(*t.slice->bias), *t.slice);
    }
    return t.fused->slice(read_once(stack), *t.slice);
  };
  const bool tensor_group =
      rules_.scheme.weights->resolved_strategy() == quant::Strategy::kTensorGroup;
  // A weight's block statistics are two float32 per group: for NVFP4 a quarter of its bf16
  // bytes, 5 GiB over a DeepSeek-V3 layer's experts. Lean sessions hold them for one target at a
  // time: weights are observed memorylessly, so observing again when quantizing gives the same
  // statistics. Only NVFP4's shared global scales need a pass over every weight first.
  std::vector<at::Tensor> own_global_amax(targets_.size());
  for (size_t i = 0; i < targets_.size(); ++i) {
    auto& t = targets_[i];
    if (lean && !tensor_group) {
      continue;  // observed when quantized
    }
    t.source_weight = stored_weight(t);
    t.weight->observe(t.source_weight);
    if (tensor_group && t.weight->has_observer()) {
      own_global_amax[i] = t.weight->global_amax();
    }
    if (lean) {
      t.weight->observer().reset();
      t.source_weight = at::Tensor();  // read again when quantized: one target at a time
    }
  }
  // Projections the engines fuse share an NVFP4 global scale (the largest of their amaxes): gate
  // and up of each expert (and of each dense or shared MLP), q, k and v of the attention.
  std::vector<at::Tensor> shared_global_amax(targets_.size());
  if (tensor_group) {
    std::map<std::pair<std::string, int64_t>, std::vector<size_t>> fused;
    for (size_t i = 0; i < targets_.size(); ++i) {
      const auto& t = targets_[i];
      const auto parent = t.module.substr(0, t.module.rfind('.'));
      if (t.kind == ProjKind::kGate || t.kind == ProjKind::kUp) {
        fused[{parent + "#mlp", t.expert}].push_back(i);
      } else if (t.kind == ProjKind::kQ || t.kind == ProjKind::kK || t.kind == ProjKind::kV) {
        fused[{parent + "#qkv", t.expert}].push_back(i);
      }
    }
    for (auto& [key, group] : fused) {
      if (group.size() < 2) {
        continue;
      }
      const auto& first = *targets_[group.front()].weight;
      MOEQ_CHECK(first.args().is_nvfp4(),
                 "weight '{}' is not NVFP4: only NVFP4 global scales are shared by fused layers",
                 first.tensor_name());
      at::Tensor amax;
      for (size_t i : group) {
        amax = amax.defined() ? at::maximum(amax, own_global_amax[i]) : own_global_amax[i];
      }
      for (size_t i : group) {
        shared_global_amax[i] = amax;
      }
    }
  }
  for (size_t i = 0; i < targets_.size(); ++i) {
    auto& t = targets_[i];
    auto& param = t.linear != nullptr ? t.linear->weight() : *t.slice->stack;
    if (!t.source_weight.defined()) {
      t.source_weight = stored_weight(t);
    }
    if (lean) {
      t.weight->observe(t.source_weight);
    }
    if (shared_global_amax[i].defined()) {
      t.weight->share_global_amax(shared_global_amax[i]);
    }
    const auto fake = t.weight->fake_quantize(t.source_weight);
    t.weight_error = detail::relative_rms(fake, t.source_weight);
    t.fake_weight = fake.to(param.value.scalar_type());
    if (!lean) {
      continue;
    }
    quantized(t);
    t.source_weight = at::Tensor();
    if (t.weight->has_observer()) {
      t.weight->observer().reset();  // exported: its statistics are no longer needed
    }
    if (in_place && !param.value.is_cpu()) {
      // The stored values were read (exported) above; the slot now holds the quantized ones.
      if (t.linear != nullptr) {
        param.value.copy_(t.fake_weight);
        t.fake_weight = param.value;
      } else {
        t.fused->assign(param.value, *t.slice, t.fake_weight);
        t.fake_weight = at::Tensor();  // the stack itself serves as the fake stack
      }
      param.stored_dtype = c10::ScalarType::Undefined;  // no longer the stored values
    }
  }
  // Each stack's fake-quantized copy, assembled from its experts' slices (the stack itself when
  // quantized in place).
  for (auto& [name, stack] : stacks_) {
    if (lean && in_place && !stack.param->value.is_cpu()) {
      stack.fake = stack.param->value;
      continue;
    }
    stack.fake = stack.param->value.clone();
    for (auto i : stack.targets) {
      stack.experts->assign(stack.fake, *targets_[i].slice, targets_[i].fake_weight);
    }
  }
}

fn::Handlers LayerSession::quantized_handlers() {
  auto fake_input = [](const Stack& stack, const at::Tensor& a) {
    return stack.input != nullptr ? stack.input->fake_quantize(a) : a;
  };
  auto fake_stack = [](const Stack& stack) -> const at::Tensor& {
    MOEQ_INTERNAL_ASSERT(stack.fake.defined(), "'{}' run quantized before finish_calibration()",
                         stack.param->name);
    return stack.fake;
  };
  fn::Handlers h;
  h.matmul = [this, fake_input, fake_stack](const at::Tensor& a, const at::Tensor& b,
                                            const fn::WeightRef& ref) {
    Stack* stack = find_stack(ref.name);
    if (stack == nullptr) {
      report_unrecognized(ref);
      return fn::matmul(a, b, ref);
    }
    check_operand(*stack, b, ref);
    return fn::matmul(fake_input(*stack, a), fake_stack(*stack)[ref.expert], ref);
  };
  h.bmm = [this, fake_input, fake_stack](const at::Tensor& a, const at::Tensor& b,
                                         const fn::WeightRef& ref) {
    Stack* stack = find_stack(ref.name);
    if (stack == nullptr) {
      report_unrecognized(ref);
      return fn::bmm(a, b, ref);
    }
    check_operand(*stack, b, ref);
    return fn::bmm(fake_input(*stack, a), fake_stack(*stack), ref);
  };
  h.grouped_mm = [this, fake_input, fake_stack](const at::Tensor& a, const at::Tensor& b,
                                                const at::Tensor& offsets,
                                                const fn::WeightRef& ref) {
    Stack* stack = find_stack(ref.name);
    if (stack == nullptr) {
      report_unrecognized(ref);
      return fn::grouped_mm(a, b, offsets, ref);
    }
    check_operand(*stack, b, ref);
    return fn::grouped_mm(fake_input(*stack, a), fake_stack(*stack), offsets, ref);
  };
  h.linear = [this, fake_input, fake_stack](const at::Tensor& input, const at::Tensor& weight,
                                            const std::optional<at::Tensor>& bias,
                                            const fn::WeightRef& ref) {
    QuantTarget* t = find(ref.name);
    if (t == nullptr) {
      if (Stack* stack = find_stack(ref.name)) {  // a slice of a [E, out, in] stack
        check_operand(*stack, weight, ref);
        return fn::linear(fake_input(*stack, input), fake_stack(*stack)[ref.expert], bias, ref);
      }
      report_unrecognized(ref);
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
