// moeq eval (evaluate.h): a quantized checkpoint read as a weight source, run layer by layer
// beside its original.
#include "moeq/pipeline/evaluate.h"

#include <moeq/core/error.h>
#include <moeq/core/log.h>
#include <moeq/io/hf_config.h>
#include <moeq/quant/modelopt.h>
#include <moeq/quant/scheme.h>
#include <moeq/runtime/functional.h>
#include <moeq/runtime/fused_experts.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>

#include "eval_metrics.h"
#include "routing_metrics.h"

namespace moeq::pipeline {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

// The tensors a quantized module may carry besides its weight: read by the decompression or the
// activation quantizer, never by the model.
constexpr std::string_view kModuleSuffixes[] = {
    "weight",          "weight_packed",  "weight_scale", "weight_zero_point", "weight_global_scale",
    "weight_shape",    "weight_scale_2", "input_scale",  "input_zero_point",  "input_global_scale",
    "pre_quant_scale",
};

Json read_json(const fs::path& file) {
  std::ifstream in(file);
  MOEQ_CHECK(in.good(), "cannot read '{}'", file.string());
  try {
    return Json::parse(in);
  } catch (const Json::exception& e) {
    MOEQ_CHECK(false, "'{}': malformed JSON ({})", file.string(), e.what());
  }
  return {};
}

// Quantized modules: every prefix with a `.weight_scale` tensor.
std::vector<std::string> quantized_modules(const std::vector<std::string>& names) {
  std::vector<std::string> modules;
  for (const auto& name : names) {
    if (name.ends_with(".weight_scale")) {
      modules.push_back(name.substr(0, name.size() - std::string_view(".weight_scale").size()));
    }
  }
  return modules;
}

// The module's own tensors present in the checkpoint, suffix -> full name.
std::map<std::string, std::string> module_tensors(runtime::WeightSource& source,
                                                  const std::string& module) {
  std::map<std::string, std::string> out;
  for (const auto suffix : kModuleSuffixes) {
    const auto name = module + "." + std::string(suffix);
    if (source.has(name)) {
      out.emplace(suffix, name);
    }
  }
  return out;
}

// compressed-tensors' target matching: "Linear" (every projection), a module name, or
// "re:<regex>" matched from the start of the name (Python's re.match).
bool targets_module(const std::vector<std::string>& targets, const std::string& module) {
  for (const auto& target : targets) {
    if (target == "Linear" || target == module) {
      return true;
    }
    if (target.starts_with("re:") &&
        std::regex_search(module, std::regex("^(?:" + target.substr(3) + ")"))) {
      return true;
    }
  }
  return false;
}

// The checkpoint's dtype for decompressed weights: its embedding's (never quantized).
at::ScalarType model_dtype(runtime::WeightSource& source) {
  for (const auto& name : source.names()) {
    if (name.ends_with("embed_tokens.weight")) {
      return source.get(name).scalar_type();
    }
  }
  return at::kBFloat16;
}

// Static and locally dynamic activations take their scales from the checkpoint.
void load_input_scales(quant::TensorQuantizer& input,
                       runtime::WeightSource& source,
                       const std::map<std::string, std::string>& tensors,
                       const std::string& module) {
  if (input.args().dynamic == quant::DynamicMode::kDynamic) {
    return;
  }
  quant::QParams q;
  if (input.args().dynamic == quant::DynamicMode::kLocal) {
    const auto it = tensors.find("input_global_scale");
    MOEQ_CHECK(it != tensors.end(),
               "'{}' quantizes its input with a global scale, but the checkpoint has no '{}'",
               module, module + ".input_global_scale");
    q.global_scale = source.get(it->second).to(at::kFloat);
  } else {
    const auto it = tensors.find("input_scale");
    MOEQ_CHECK(it != tensors.end(),
               "'{}' quantizes its input with a static scale, but the checkpoint has no '{}'",
               module, module + ".input_scale");
    q.scale = source.get(it->second).clone();
    const auto zp = tensors.find("input_zero_point");
    q.zero_point =
        zp != tensors.end()
            ? source.get(zp->second).clone()
            : at::zeros(q.scale.sizes(), q.scale.options().dtype(input.args().zero_point_dtype()));
  }
  input.load_qparams(std::move(q));
}

QuantizedCheckpoint read_compressed_tensors(const fs::path& dir,
                                            const Json& qc,
                                            std::shared_ptr<runtime::WeightSource> base) {
  const fs::path config_file = dir / "config.json";
  struct Group {
    std::string name;
    quant::QuantScheme scheme;
    quant::CompressionFormat format;
  };
  std::vector<Group> groups;
  try {
    const std::string global_format = qc.value("format", std::string());
    for (const auto& [name, group] : qc.at("config_groups").items()) {
      auto scheme = quant::QuantScheme::from_json(group);
      MOEQ_CHECK(scheme.weights.has_value(),
                 "{}: quantization_config.config_groups.{} quantizes no weights",
                 config_file.string(), name);
      const auto format = group.contains("format") && group["format"].is_string()
                              ? quant::parse_compression_format(group["format"].get<std::string>())
                          : !global_format.empty() && global_format != "mixed-precision"
                              ? quant::parse_compression_format(global_format)
                              : scheme.compression_format();
      groups.push_back({name, std::move(scheme), format});
    }
  } catch (const Json::exception& e) {
    MOEQ_CHECK(false, "{}: malformed quantization_config ({})", config_file.string(), e.what());
  }
  MOEQ_CHECK(!groups.empty(), "{}: quantization_config has no config_groups", config_file.string());

  QuantizedCheckpoint out;
  out.dtype = model_dtype(*base);
  std::vector<runtime::DerivedSource::Rule> rules;
  for (const auto& module : quantized_modules(base->names())) {
    const Group* group = nullptr;
    for (const auto& g : groups) {
      if (targets_module(g.scheme.targets, module)) {
        group = &g;
        break;
      }
    }
    if (group == nullptr) {
      std::vector<std::string> names;
      for (const auto& g : groups) {
        names.push_back(g.name);
      }
      MOEQ_CHECK(false, "{}: '{}' is stored quantized but no config group targets it (groups: {})",
                 config_file.string(), module, fmt::join(names, ", "));
    }
    const auto tensors = module_tensors(*base, module);
    runtime::DerivedSource::Rule rule;
    rule.name = module + ".weight";
    std::vector<std::string> suffixes;
    for (const auto& [suffix, name] : tensors) {
      rule.inputs.push_back(name);
      suffixes.push_back(suffix);
    }
    rule.compute = [suffixes, args = *group->scheme.weights, format = group->format,
                    dtype = out.dtype](const std::vector<at::Tensor>& inputs) {
      quant::QuantizedTensors stored;
      for (size_t i = 0; i < inputs.size(); ++i) {
        if (!suffixes[i].starts_with("input_")) {
          stored.emplace(suffixes[i], inputs[i]);
        }
      }
      return quant::dequantize_weight(stored, args, format, dtype);
    };
    rules.push_back(std::move(rule));
    std::shared_ptr<quant::TensorQuantizer> input;
    if (group->scheme.input_activations) {
      input = std::make_shared<quant::TensorQuantizer>(
          *group->scheme.input_activations, quant::TensorRole::kInput, module + " (input)");
      load_input_scales(*input, *base, tensors, module);
    }
    out.modules.emplace(module, std::move(input));
  }
  MOEQ_CHECK(!out.modules.empty(),
             "'{}': the quantization_config is compressed-tensors', but no "
             "tensor is stored quantized (no '*.weight_scale')",
             dir.string());
  std::vector<std::string> descriptions;
  for (const auto& g : groups) {
    descriptions.push_back(fmt::format("{}: {}", g.name, g.scheme.to_json().dump()));
  }
  out.format = fmt::format("compressed-tensors {}", quant::to_string(groups.front().format));
  out.description = fmt::format("{}", fmt::join(descriptions, "; "));
  out.source = std::make_shared<runtime::DerivedSource>(base, std::move(rules),
                                                        fmt::format("{} decompressed", out.format));
  return out;
}

QuantizedCheckpoint read_modelopt(const fs::path& dir,
                                  std::shared_ptr<runtime::WeightSource> base) {
  const fs::path file = dir / "hf_quant_config.json";
  const Json config = read_json(file);
  std::string algo_name;
  int64_t group_size = 128;
  try {
    const auto& q = config.at("quantization");
    algo_name = q.at("quant_algo").get<std::string>();
    group_size = q.value("group_size", int64_t{128});
  } catch (const Json::exception& e) {
    MOEQ_CHECK(false, "{}: malformed ModelOpt config ({})", file.string(), e.what());
  }
  quant::ModelOptAlgo algo{};
  try {
    algo = quant::parse_modelopt_algo(algo_name);
  } catch (const Error& e) {
    MOEQ_CHECK(false, "{}: quantization.quant_algo '{}': {}", file.string(), algo_name,
               e.message());
  }
  // The activation quantization each algorithm implies, as compressed-tensors args: FP8 static
  // per tensor (input_scale), NVFP4 with a per-tensor global scale (1 / input_scale).
  std::optional<quant::QuantArgs> input_args;
  if (algo == quant::ModelOptAlgo::kFp8) {
    input_args = quant::preset_scheme("W8A8-FP8").input_activations;
  } else if (algo == quant::ModelOptAlgo::kNvfp4) {
    input_args = quant::preset_scheme("NVFP4").input_activations;
  }

  QuantizedCheckpoint out;
  out.dtype = model_dtype(*base);
  std::vector<runtime::DerivedSource::Rule> rules;
  for (const auto& module : quantized_modules(base->names())) {
    const auto tensors = module_tensors(*base, module);
    MOEQ_CHECK(!tensors.contains("pre_quant_scale"),
               "'{}' has a pre_quant_scale (AWQ / SmoothQuant), which moeq eval does not apply",
               module + ".pre_quant_scale");
    runtime::DerivedSource::Rule rule;
    rule.name = module + ".weight";
    std::vector<std::string> suffixes;
    for (const auto& [suffix, name] : tensors) {
      rule.inputs.push_back(name);
      suffixes.push_back(suffix);
    }
    rule.compute = [suffixes, algo, group_size,
                    dtype = out.dtype](const std::vector<at::Tensor>& inputs) {
      quant::QuantizedTensors stored;
      for (size_t i = 0; i < inputs.size(); ++i) {
        if (!suffixes[i].starts_with("input_")) {
          stored.emplace(suffixes[i], inputs[i]);
        }
      }
      return quant::dequantize_modelopt(algo, stored, dtype, group_size);
    };
    rules.push_back(std::move(rule));
    std::shared_ptr<quant::TensorQuantizer> input;
    if (input_args && tensors.contains("input_scale")) {
      input = std::make_shared<quant::TensorQuantizer>(*input_args, quant::TensorRole::kInput,
                                                       module + " (input)");
      // Stored squeezed (0-d); the quantizers keep per-tensor scales on a [1, 1] grid.
      const auto scale = base->get(tensors.at("input_scale")).to(at::kFloat).reshape({1, 1});
      quant::QParams q;
      if (algo == quant::ModelOptAlgo::kNvfp4) {
        q.global_scale = 1.0F / scale;
      } else {
        q.scale = scale.clone();
        q.zero_point =
            at::zeros(scale.sizes(), scale.options().dtype(input_args->zero_point_dtype()));
      }
      input->load_qparams(std::move(q));
    }
    out.modules.emplace(module, std::move(input));
  }
  MOEQ_CHECK(!out.modules.empty(), "'{}' has no tensor stored quantized (no '*.weight_scale')",
             dir.string());
  out.format = fmt::format("modelopt {}", algo_name);
  out.description = fmt::format("ModelOpt {}", algo_name);
  out.source =
      std::make_shared<runtime::DerivedSource>(base, std::move(rules), out.format + " dequantized");
  return out;
}

// The quantized model's source: the decompressed export, and for the fused stacks it does not
// hold (it stores their experts' slices) the original's stacks, which the evaluation overwrites
// slice by slice before the layer runs.
class StackFallbackSource final : public runtime::WeightSource {
 public:
  StackFallbackSource(std::shared_ptr<runtime::WeightSource> primary,
                      std::shared_ptr<runtime::WeightSource> original)
      : primary_(std::move(primary)), original_(std::move(original)) {}
  void allow(const std::string& name) { allowed_.insert(name); }
  at::Tensor get(const std::string& name) override {
    return allowed_.contains(name) && !primary_->has(name) ? original_->get(name)
                                                           : primary_->get(name);
  }
  void release(const std::string& name) override {
    primary_->release(name);
    original_->release(name);
  }
  bool has(const std::string& name) const override {
    return primary_->has(name) || (allowed_.contains(name) && original_->has(name));
  }
  std::vector<std::string> names() const override { return primary_->names(); }
  std::string describe() const override { return primary_->describe(); }

 private:
  std::shared_ptr<runtime::WeightSource> primary_;
  std::shared_ptr<runtime::WeightSource> original_;
  std::set<std::string> allowed_;
};

std::string block_of(const std::string& module) {
  const auto at = module.find(".experts.");
  return at == std::string::npos ? std::string() : module.substr(0, at);
}

}  // namespace

QuantizedCheckpoint read_quantized_checkpoint(const fs::path& dir) {
  auto base = std::make_shared<runtime::CheckpointSource>(dir);
  if (fs::exists(dir / "hf_quant_config.json")) {
    return read_modelopt(dir, std::move(base));
  }
  const Json config = read_json(dir / "config.json");
  const auto qc = config.find("quantization_config");
  MOEQ_CHECK(qc != config.end() && qc->is_object(),
             "'{}' is not a quantized checkpoint: its config.json has no quantization_config and "
             "there is no hf_quant_config.json",
             dir.string());
  const auto method = qc->value("quant_method", std::string());
  MOEQ_CHECK(method == "compressed-tensors",
             "{}: quantization_config.quant_method is '{}'; moeq eval reads 'compressed-tensors' "
             "and ModelOpt (hf_quant_config.json) checkpoints",
             (dir / "config.json").string(), method);
  return read_compressed_tensors(dir, *qc, std::move(base));
}

bool is_quantized_checkpoint(const fs::path& dir) {
  if (fs::exists(dir / "hf_quant_config.json")) {
    return true;
  }
  const Json config = read_json(dir / "config.json");
  const auto qc = config.find("quantization_config");
  return qc != config.end() && qc->is_object() &&
         qc->value("quant_method", std::string()) == "compressed-tensors";
}

std::shared_ptr<runtime::WeightSource> open_checkpoint(const fs::path& dir) {
  if (!is_quantized_checkpoint(dir)) {
    return std::make_shared<runtime::CheckpointSource>(dir);
  }
  auto checkpoint = read_quantized_checkpoint(dir);
  logger().info("'{}' is a {} checkpoint: its weights are decompressed as each layer is loaded",
                dir.string(), checkpoint.format);
  return checkpoint.source;
}

PipelineResult evaluate_checkpoint(const CheckpointEvalOptions& options,
                                   const QuantizedCheckpoint& checkpoint,
                                   const ModelBuilder& build,
                                   const PipelineProgress& progress) {
  const auto start = Clock::now();
  MOEQ_CHECK(!options.eval_batches.empty(), "no evaluation batches to compare '{}' with '{}'",
             options.quantized_dir.string(), options.model_dir.string());
  const auto config = io::HfConfig::load(options.model_dir / "config.json");
  const auto quantized_config = io::HfConfig::load(options.quantized_dir / "config.json");
  MOEQ_CHECK(config.architecture() == quantized_config.architecture(),
             "'{}' is a {} checkpoint but '{}' is a {}", options.quantized_dir.string(),
             quantized_config.architecture(), options.model_dir.string(), config.architecture());
  runtime::RuntimeOptions runtime_options;
  runtime_options.placement = options.placement;
  // The original may itself be a quantized release (GLM-4.5-FP8): its weights decompressed, never
  // its stored FP8 codes read as values.
  auto original_source = open_checkpoint(options.model_dir);
  auto reference = build(config, original_source, runtime_options);
  auto quantized_source = std::make_shared<StackFallbackSource>(checkpoint.source, original_source);
  auto quantized = build(quantized_config, quantized_source, runtime_options);
  MOEQ_INTERNAL_ASSERT(reference && quantized, "the model builder returned nothing");
  MOEQ_CHECK(reference->num_layers() == quantized->num_layers(), "'{}' has {} layers, '{}' {}",
             options.quantized_dir.string(), quantized->num_layers(), options.model_dir.string(),
             reference->num_layers());

  // Fused stacks are rebuilt from the export's per-expert projections; their inputs are
  // quantized with the projections' (shared) input quantizer.
  std::map<std::string, quant::TensorQuantizer*> stack_inputs;
  quantized->for_each_module([&](runtime::Module& m) {
    if (auto* fused = dynamic_cast<runtime::FusedExperts*>(&m)) {
      for (const auto& p : fused->projections()) {
        if (!checkpoint.source->has(p.stack->name)) {
          quantized_source->allow(p.stack->name);
          if (p.bias != nullptr) {
            quantized_source->allow(p.bias->name);
          }
        }
        const auto it = checkpoint.modules.find(p.module);
        if (it != checkpoint.modules.end() && it->second) {
          stack_inputs.try_emplace(p.stack->name, it->second.get());
        }
      }
    }
  });
  const auto input_of = [&](const fn::WeightRef& ref) -> quant::TensorQuantizer* {
    const std::string name(ref.name);
    if (name.ends_with(".weight")) {
      const auto it = checkpoint.modules.find(name.substr(0, name.size() - 7));
      if (it != checkpoint.modules.end()) {
        return it->second.get();
      }
    }
    const auto stack = stack_inputs.find(name);
    return stack != stack_inputs.end() ? stack->second : nullptr;
  };
  const auto fake = [&](const at::Tensor& x, const fn::WeightRef& ref) {
    auto* input = input_of(ref);
    return input != nullptr ? input->fake_quantize(x) : x;
  };
  fn::Handlers handlers;
  handlers.linear = [&](const at::Tensor& x, const at::Tensor& w,
                        const std::optional<at::Tensor>& bias, const fn::WeightRef& ref) {
    return fn::linear(fake(x, ref), w, bias, ref);
  };
  handlers.matmul = [&](const at::Tensor& a, const at::Tensor& b, const fn::WeightRef& ref) {
    return fn::matmul(fake(a, ref), b, ref);
  };
  handlers.bmm = [&](const at::Tensor& a, const at::Tensor& b, const fn::WeightRef& ref) {
    return fn::bmm(fake(a, ref), b, ref);
  };
  handlers.grouped_mm = [&](const at::Tensor& a, const at::Tensor& b, const at::Tensor& offsets,
                            const fn::WeightRef& ref) {
    return fn::grouped_mm(fake(a, ref), b, offsets, ref);
  };

  PipelineResult result;
  result.architecture = config.architecture();
  result.output = options.quantized_dir;
  for (const auto& entry : fs::directory_iterator(options.quantized_dir)) {
    if (entry.path().extension() == ".safetensors") {
      result.output_bytes += static_cast<int64_t>(entry.file_size());
    }
  }
  std::vector<at::Tensor> ref_hidden;
  std::vector<at::Tensor> quant_hidden;
  std::vector<runtime::ForwardContext> contexts;
  for (const auto& ids : options.eval_batches) {
    MOEQ_CHECK(ids.dim() == 2, "evaluation batch must be input_ids [batch, seq], got [{}]",
               fmt::join(ids.sizes(), ", "));
    ref_hidden.push_back(reference->embed(ids));
    quant_hidden.push_back(quantized->embed(ids));
    contexts.push_back(reference->make_context(ids));
  }

  const auto num_layers = reference->num_layers();
  for (int64_t i = 0; i < num_layers; ++i) {
    const auto layer_start = Clock::now();
    auto& ref_layer = reference->layer(i);
    auto& quant_layer = quantized->layer(i);
    reference->load(ref_layer);
    quantized->load(quant_layer);
    if (progress.layer_begin) {
      progress.layer_begin(i, num_layers, static_cast<int64_t>(ref_hidden.size()));
    }
    LayerResult lr;
    lr.index = i;
    // Per-projection weight error, and the fused stacks rebuilt from the export's slices.
    std::map<std::string, runtime::Linear*> originals;
    ref_layer.for_each_module([&](runtime::Module& r) {
      if (auto* linear = dynamic_cast<runtime::Linear*>(&r)) {
        originals.emplace(linear->name(), linear);
      }
    });
    quant_layer.for_each_module([&](runtime::Module& m) {
      if (auto* linear = dynamic_cast<runtime::Linear*>(&m)) {
        if (!checkpoint.modules.contains(linear->name())) {
          return;
        }
        const auto twin = originals.find(linear->name());
        auto* ref_linear = twin != originals.end() ? twin->second : nullptr;
        MOEQ_INTERNAL_ASSERT(ref_linear != nullptr, "no original for '{}'", linear->name());
        ProjectionResult pr;
        pr.module = linear->name();
        pr.block = block_of(pr.module);
        pr.expert = linear->ref().expert;
        pr.kind = std::string(detail::projection_kind_name(linear->ref().kind));
        pr.weight_error = detail::relative_rms(linear->weight().value, ref_linear->weight().value);
        result.quantized_parameters += linear->weight().value.numel();
        lr.projections.push_back(std::move(pr));
      } else if (auto* fused = dynamic_cast<runtime::FusedExperts*>(&m)) {
        std::set<runtime::Parameter*> cloned;
        for (const auto& p : fused->projections()) {
          const auto name = p.module + ".weight";
          if (!checkpoint.modules.contains(p.module)) {
            continue;
          }
          if (cloned.insert(p.stack).second) {
            p.stack->value = p.stack->value.clone();  // the original's, maybe a mapped view
          }
          const auto original = fused->slice(p.stack->value, p).clone();
          fused->assign(p.stack->value, p,
                        checkpoint.source->get(name).to(p.stack->value.device(),
                                                        p.stack->value.scalar_type()));
          ProjectionResult pr;
          pr.module = p.module;
          pr.block = block_of(p.module);
          pr.expert = p.expert;
          pr.kind = std::string(detail::projection_kind_name(p.kind));
          pr.weight_error = detail::relative_rms(fused->slice(p.stack->value, p), original);
          result.quantized_parameters += original.numel();
          lr.projections.push_back(std::move(pr));
        }
      }
    });
    double local_num = 0.0;
    double local_den = 0.0;
    double num = 0.0;
    double den = 0.0;
    int64_t tokens = 0;
    detail::RoutingCapture ref_routes(ref_layer);
    detail::RoutingCapture own_routes(quant_layer);
    detail::RoutingCapture carried_routes(quant_layer);
    for (size_t b = 0; b < ref_hidden.size(); ++b) {
      at::Tensor ref_out;
      {
        auto recording = ref_routes.record();
        ref_out = ref_layer.forward(ref_hidden[b], contexts[b]);
      }
      at::Tensor local_out;
      at::Tensor quant_out;
      {
        fn::FunctionalOverride quantize(handlers);
        // The layer's own error on the original's inputs, and the error carried so far.
        {
          auto recording = own_routes.record();
          local_out = quant_layer.forward(ref_hidden[b], contexts[b]);
        }
        auto recording = carried_routes.record();
        quant_out = quant_layer.forward(quant_hidden[b], contexts[b]);
      }
      const auto squared = [](const at::Tensor& a, const at::Tensor& e) {
        const auto d = (a.to(at::kDouble) - e.to(at::kDouble)).norm().item<double>();
        return d * d;
      };
      const auto r = ref_out.to(at::kDouble).norm().item<double>();
      local_num += squared(local_out, ref_out);
      local_den += r * r;
      num += squared(quant_out, ref_out);
      den += r * r;
      ref_hidden[b] = ref_out;
      quant_hidden[b] = quant_out;
      tokens += ref_out.size(0) * ref_out.size(1);
      if (progress.batch_done) {
        progress.batch_done(static_cast<int64_t>(b) + 1, tokens);
      }
    }
    lr.tokens = tokens;
    lr.output_error = local_den > 0.0 ? std::sqrt(local_num / local_den) : std::sqrt(local_num);
    lr.eval_hidden_error = den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
    lr.routing =
        detail::compare_routing(ref_routes, own_routes, carried_routes, options.keep_routes);
    lr.seconds = std::chrono::duration<double>(Clock::now() - layer_start).count();
    reference->release(ref_layer);
    quantized->release(quant_layer);
    if (progress.layer_end) {
      progress.layer_end(lr);
    }
    result.layers.push_back(std::move(lr));
  }

  detail::LogitsComparison comparison(options.keep_logits);
  for (size_t b = 0; b < ref_hidden.size(); ++b) {
    const auto ref_logits = reference->head(ref_hidden[b]);
    at::Tensor quant_logits;
    {
      fn::FunctionalOverride quantize(handlers);  // a quantized LM head runs as such
      quant_logits = quantized->head(quant_hidden[b]);
    }
    comparison.add(ref_logits, quant_logits, options.eval_batches[b]);
  }
  result.eval = comparison.finish();
  result.seconds = std::chrono::duration<double>(Clock::now() - start).count();
  return result;
}

}  // namespace moeq::pipeline
