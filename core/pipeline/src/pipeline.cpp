// The layer-sequential driver (pipeline.h).
#include "moeq/pipeline/pipeline.h"

#include <moeq/core/error.h>
#include <moeq/core/log.h>
#include <moeq/kernels/device_memory.h>
#include <moeq/runtime/functional.h>
#include <moeq/runtime/fused_experts.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <exception>
#include <optional>
#include <set>
#include <tuple>
#include <utility>

#include <moeq/pipeline/evaluate.h>

#include "eval_metrics.h"
#include "journal.h"
#include "routing_metrics.h"

namespace moeq::pipeline {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Times consecutive phases of a layer: lap() waits for the device's queued work and returns the
// seconds since the previous lap.
class PhaseClock {
 public:
  explicit PhaseClock(c10::Device device) : device_(device), last_(Clock::now()) {}
  double lap() {
    kernels::synchronize_device(device_);
    const auto now = Clock::now();
    const double seconds = std::chrono::duration<double>(now - last_).count();
    last_ = now;
    return seconds;
  }

 private:
  c10::Device device_;
  Clock::time_point last_;
};

// Activations between layers: on the compute device, or parked on the host.
struct Stream {
  std::vector<at::Tensor> hidden;
  std::vector<runtime::ForwardContext> contexts;
};

}  // namespace

at::Tensor kl_divergence(const at::Tensor& reference_logits, const at::Tensor& quantized_logits) {
  MOEQ_CHECK(reference_logits.sizes() == quantized_logits.sizes(),
             "KL divergence needs logits of one shape, got [{}] and [{}]",
             fmt::join(reference_logits.sizes(), ", "), fmt::join(quantized_logits.sizes(), ", "));
  auto p = at::log_softmax(reference_logits.to(at::kFloat), -1);
  auto q = at::log_softmax(quantized_logits.to(at::kFloat), -1);
  return (p.exp() * (p - q)).sum(-1);
}

Pipeline::Pipeline(PipelineOptions options,
                   ModelBuilder build,
                   LayerSession::AdapterLookup adapters)
    : options_(std::move(options)), build_(std::move(build)), adapters_(std::move(adapters)) {}

PipelineResult Pipeline::run(const PipelineProgress& progress) {
  const auto start = Clock::now();
  MOEQ_CHECK(!options_.calibration_batches.empty(), "no calibration batches for '{}'",
             options_.model_dir.string());
  const auto config = io::HfConfig::load(options_.model_dir / "config.json");
  // A quantized release (compressed-tensors, ModelOpt) is read decompressed.
  std::shared_ptr<runtime::WeightSource> source = open_checkpoint(options_.model_dir);
  const PipelineStages* stages = options_.stages.get();
  if (stages != nullptr) {
    source = stages->source(config, std::move(source));
    MOEQ_CHECK(source != nullptr, "the pipeline stages of '{}' returned no weight source",
               config.architecture());
  }
  options_.rules.stages = stages;
  // Stage 4, export naming.
  const auto export_name = [stages](const std::string& name) {
    return stages != nullptr ? stages->export_name(name) : name;
  };
  // Stage 2, calibration routing.
  const LayerSession::AdapterLookup adapters = [this, stages](const std::string& type) {
    ModuleAdapter* registered = adapters_(type);
    return stages != nullptr ? stages->adapter(type, registered) : registered;
  };
  runtime::RuntimeOptions runtime_options;
  runtime_options.placement = options_.placement;
  auto model = build_(config, source, runtime_options);
  MOEQ_INTERNAL_ASSERT(model != nullptr, "the model builder returned nothing");
  // The builder may read the checkpoint through its own source (dequantizing MXFP4 or FP8
  // blocks): quantize and pass through what the model sees.
  runtime::WeightSource& weights = model->weights();

  PipelineResult result;
  result.architecture = config.architecture();
  std::unique_ptr<exporting::Exporter> exporter;
  if (options_.write_checkpoint) {
    exporter = exporting::make_exporter(options_.export_options);
  }
  const auto device = options_.placement.device;
  const auto park = [&](const at::Tensor& h) {
    return options_.offload_activations ? h.to(at::kCPU) : h;
  };
  const auto unpark = [&](const at::Tensor& h) { return h.to(device); };
  // GPU memory per window (a layer from load to release, or what runs between layers): the peak
  // since the last window began, which begins the next. Zero on the CPU.
  kernels::reset_device_memory_peak(device);
  const auto close_memory_window = [&] {
    const auto memory = kernels::device_memory(device);
    kernels::reset_device_memory_peak(device);
    return memory ? std::pair{memory->peak_allocated, memory->peak_reserved}
                  : std::pair{int64_t{0}, int64_t{0}};
  };
  const auto measure_layer = [&](LayerResult& lr) {
    std::tie(lr.peak_device_bytes, lr.peak_device_reserved_bytes) = close_memory_window();
  };
  int64_t between_layers_peak = 0;

  // Embed every stream.
  Stream calib;
  Stream eval_ref;
  Stream eval_quant;
  for (const auto& ids : options_.calibration_batches) {
    MOEQ_CHECK(ids.dim() == 2, "calibration batch must be input_ids [batch, seq], got [{}]",
               fmt::join(ids.sizes(), ", "));
    calib.hidden.push_back(park(model->embed(ids)));
    calib.contexts.push_back(model->make_context(ids));
    result.calibration_tokens += ids.numel();
  }
  const bool evaluate = !options_.eval_batches.empty();
  for (const auto& ids : options_.eval_batches) {
    auto h = park(model->embed(ids));
    eval_ref.hidden.push_back(h);
    eval_quant.hidden.push_back(h);
    eval_ref.contexts.push_back(model->make_context(ids));
    eval_quant.contexts.push_back(model->make_context(ids));
  }

  std::set<std::string> quantized_weights;
  const auto num_layers = model->num_layers();
  int64_t first_layer = 0;
  // A resumable run: continue from the journal when the exporter found one.
  std::optional<detail::Journal> journal;
  if (exporter && !exporter->journal_directory().empty()) {
    journal.emplace(exporter->journal_directory(),
                    detail::run_fingerprint(options_, result.architecture, options_.placement));
    if (exporter->resuming()) {
      if (auto record = journal->load()) {
        MOEQ_CHECK(record->layers_done <= num_layers,
                   "cannot resume from '{}': it finished {} layers, the model has {}",
                   journal->directory().string(), record->layers_done, num_layers);
        exporter->restore(record->exporter_state);
        const auto restore_stream = [&](Stream& stream, const char* name) {
          for (size_t b = 0; b < stream.hidden.size(); ++b) {
            const auto key = fmt::format("{}.{}", name, b);
            const auto it = record->hidden.find(key);
            MOEQ_CHECK(it != record->hidden.end() && it->second.sizes() == stream.hidden[b].sizes(),
                       "cannot resume from '{}': the saved activations '{}' {} this run's [{}]",
                       journal->directory().string(), key,
                       it == record->hidden.end()
                           ? std::string("are missing, unlike")
                           : fmt::format("are [{}], not", fmt::join(it->second.sizes(), ", ")),
                       fmt::join(stream.hidden[b].sizes(), ", "));
            stream.hidden[b] = park(it->second.to(device));
          }
        };
        // Only the routing counts are journaled, not every token's choices.
        MOEQ_CHECK(!keep_routes_ || record->layers_done == 0,
                   "'{}' resumes with {} layers done: their expert choices were not journaled, so "
                   "--save-routing cannot write them (rerun with --restart, or without "
                   "--save-routing)",
                   options_.export_options.output.string(), record->layers_done);
        restore_stream(calib, "calib");
        restore_stream(eval_ref, "eval_ref");
        restore_stream(eval_quant, "eval_quant");
        first_layer = record->layers_done;
        result.layers = std::move(record->layers);
        quantized_weights = std::move(record->quantized_weights);
        result.quantized_parameters = record->quantized_parameters;
        result.quantized_bytes = record->quantized_bytes;
        logger().info("resuming {} after layer {} of {} (journal '{}')",
                      options_.export_options.output.string(), first_layer, num_layers,
                      journal->directory().string());
        if (progress.resumed) {
          progress.resumed(first_layer, num_layers);
        }
      }
    }
  }

  // A run that fails after the journal recorded layers says how to continue it.
  struct ResumeHint {
    const std::optional<detail::Journal>& journal;
    int64_t layers_done = 0;
    ~ResumeHint() {
      if (std::uncaught_exceptions() > 0 && journal && layers_done > 0) {
        logger().warn("{} finished layers are kept in '{}': rerun with --resume to continue",
                      layers_done, journal->directory().parent_path().string());
      }
    }
  } hint{journal, first_layer};
  // A finished layer: its result, the journal record a resumed run continues from, progress.
  const auto finish_layer = [&](LayerResult lr) {
    const int64_t i = lr.index;
    result.layers.push_back(std::move(lr));
    if (journal) {
      detail::JournalRecord record;
      record.layers_done = i + 1;
      const auto save_stream = [&](const Stream& stream, const char* name) {
        for (size_t b = 0; b < stream.hidden.size(); ++b) {
          record.hidden.emplace(fmt::format("{}.{}", name, b), stream.hidden[b]);
        }
      };
      save_stream(calib, "calib");
      save_stream(eval_ref, "eval_ref");
      save_stream(eval_quant, "eval_quant");
      const auto tag = fmt::format("{:05}", i);
      record.exporter_state = exporter->checkpoint(tag);
      record.layers = result.layers;
      record.quantized_weights = quantized_weights;
      record.quantized_parameters = result.quantized_parameters;
      record.quantized_bytes = result.quantized_bytes;
      journal->commit(record, tag);
      exporter->prune();
      hint.layers_done = i + 1;
    }
    if (progress.layer_end) {
      progress.layer_end(result.layers.back());
    }
  };
  // A layer the stages skip: run in its original precision on every stream, nothing quantized.
  const auto run_skipped_layer = [&](int64_t i) {
    const auto layer_start = Clock::now();
    PhaseClock clock(device);
    between_layers_peak = std::max(between_layers_peak, close_memory_window().first);
    auto& layer = model->layer(i);
    model->load(layer);
    const int64_t weight_bytes = layer.resident_bytes();
    const double load_seconds = clock.lap();
    if (progress.layer_begin) {
      progress.layer_begin(i, num_layers, static_cast<int64_t>(calib.hidden.size()));
    }
    LayerResult lr;
    lr.index = i;
    lr.weight_bytes = weight_bytes;
    lr.skipped = true;
    lr.phases.load = load_seconds;
    int64_t tokens = 0;
    for (size_t b = 0; b < calib.hidden.size(); ++b) {
      calib.hidden[b] = park(layer.forward(unpark(calib.hidden[b]), calib.contexts[b]));
      tokens += calib.hidden[b].size(0) * calib.hidden[b].size(1);
      if (progress.batch_done) {
        progress.batch_done(static_cast<int64_t>(b) + 1, tokens);
      }
    }
    lr.tokens = tokens;
    // Both evaluation streams: on the original's inputs the layer routes as the original does.
    detail::RoutingCapture ref_routes(layer);
    detail::RoutingCapture carried_routes(layer);
    const std::pair<Stream*, detail::RoutingCapture*> streams[] = {{&eval_ref, &ref_routes},
                                                                   {&eval_quant, &carried_routes}};
    for (auto [stream, routes] : streams) {
      auto recording = routes->record();
      for (size_t b = 0; b < stream->hidden.size(); ++b) {
        stream->hidden[b] = park(layer.forward(unpark(stream->hidden[b]), stream->contexts[b]));
      }
    }
    if (evaluate) {
      lr.routing = detail::compare_routing(ref_routes, ref_routes, carried_routes, keep_routes_);
    }
    lr.phases.forward = clock.lap();
    lr.seconds = seconds_since(layer_start);
    measure_layer(lr);
    model->release(layer);
    finish_layer(std::move(lr));
  };
  for (int64_t i = first_layer; i < num_layers; ++i) {
    if (stages != nullptr && stages->skip_layer(i, config)) {
      run_skipped_layer(i);
      continue;
    }
    const auto layer_start = Clock::now();
    PhaseClock clock(device);
    between_layers_peak = std::max(between_layers_peak, close_memory_window().first);
    auto& layer = model->layer(i);
    model->load(layer);
    const int64_t weight_bytes = layer.resident_bytes();
    LayerSession session(layer, weights, options_.rules, options_.calibration);
    session.attach_adapters(adapters);
    LayerPhases phases;
    phases.load = clock.lap();
    if (progress.layer_begin) {
      progress.layer_begin(i, num_layers, static_cast<int64_t>(calib.hidden.size()));
    }
    // 1. Calibration: the original layer, observed, under the adapters' calibration routing.
    std::vector<at::Tensor> reference_out;
    {
      fn::FunctionalOverride observe(session.calibration_handlers());
      int64_t tokens = 0;
      for (size_t b = 0; b < calib.hidden.size(); ++b) {
        reference_out.push_back(layer.forward(unpark(calib.hidden[b]), calib.contexts[b]));
        tokens += calib.hidden[b].size(0) * calib.hidden[b].size(1);
        if (progress.batch_done) {
          progress.batch_done(static_cast<int64_t>(b) + 1, tokens);
        }
      }
    }
    session.detach_all();
    phases.calibrate = clock.lap();
    // 2. The original evaluation stream, while the layer still holds its original weights; its
    // inputs are kept for the quantized layer's own routing (step 4).
    detail::RoutingCapture ref_routes(layer);
    detail::RoutingCapture own_routes(layer);
    detail::RoutingCapture carried_routes(layer);
    const std::vector<at::Tensor> eval_ref_inputs = eval_ref.hidden;
    {
      auto recording = ref_routes.record();
      for (size_t b = 0; b < eval_ref.hidden.size(); ++b) {
        eval_ref.hidden[b] = park(layer.forward(unpark(eval_ref.hidden[b]), eval_ref.contexts[b]));
      }
    }
    // 3. Scales and fake-quantized weights; each projection is exported as soon as it is
    // quantized and its original weight is then replaced by the quantized one.
    LayerResult lr;
    lr.index = i;
    lr.weight_bytes = weight_bytes;
    phases.forward = clock.lap();
    std::map<std::pair<std::string, int64_t>, bool> fallback;
    for (const auto& cov : session.coverage()) {
      for (int64_t e = 0; e < cov.num_experts(); ++e) {
        fallback[{cov.block, e}] = cov.fallback[e];
      }
    }
    session.finish_calibration(
        [&](QuantTarget& t) {
          if (options_.on_fake_weight) {
            options_.on_fake_weight(export_name(t.module), t.fake_weight);
          }
          if (exporter) {
            const auto before = exporter->bytes_written();
            exporter->add_quantized(export_name(t.module), t.source_weight, *t.weight, t.input,
                                    t.bias);
            result.quantized_bytes += exporter->bytes_written() - before;
          }
          // A stack (and its bias) is written as its experts' slices, never as is.
          quantized_weights.insert(t.weight_name);
          if (t.slice && t.slice->bias != nullptr) {
            quantized_weights.insert(t.slice->bias->name);
          }
          result.quantized_parameters += t.source_weight.numel();
          ProjectionResult pr;
          pr.module = t.module;
          pr.block = t.block;
          pr.expert = t.expert;
          pr.kind = std::string(detail::projection_kind_name(t.kind));
          pr.weight_error = t.weight_error;
          pr.rows_seen = t.rows_seen;
          const auto fb = fallback.find({t.block, t.expert});
          pr.fallback = fb != fallback.end() && fb->second;
          lr.projections.push_back(std::move(pr));
        },
        /*in_place=*/true);
    phases.quantize = clock.lap();
    // 4. The quantized layer on the same inputs: its output error, and the next layer's inputs.
    {
      fn::FunctionalOverride quantized(session.quantized_handlers());
      double num = 0.0;
      double den = 0.0;
      for (size_t b = 0; b < calib.hidden.size(); ++b) {
        auto q = layer.forward(unpark(calib.hidden[b]), calib.contexts[b]);
        const auto diff =
            (q.to(at::kDouble) - reference_out[b].to(at::kDouble)).norm().item<double>();
        const auto ref = reference_out[b].to(at::kDouble).norm().item<double>();
        num += diff * diff;
        den += ref * ref;
        calib.hidden[b] = park(options_.propagate_quantized ? q : reference_out[b]);
        lr.tokens += q.size(0) * q.size(1);
      }
      lr.output_error = den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
      reference_out.clear();
      {
        auto recording = carried_routes.record();
        for (size_t b = 0; b < eval_quant.hidden.size(); ++b) {
          eval_quant.hidden[b] =
              park(layer.forward(unpark(eval_quant.hidden[b]), eval_quant.contexts[b]));
        }
      }
      // The quantized layer on the original's inputs: its own routing error, apart from the
      // error the earlier layers carried in (the output is not needed).
      if (evaluate && !ref_routes.blocks().empty()) {
        auto recording = own_routes.record();
        for (size_t b = 0; b < eval_ref_inputs.size(); ++b) {
          layer.forward(unpark(eval_ref_inputs[b]), eval_ref.contexts[b]);
        }
      }
    }
    if (evaluate) {
      double num = 0.0;
      double den = 0.0;
      for (size_t b = 0; b < eval_ref.hidden.size(); ++b) {
        const auto d = (eval_quant.hidden[b].to(at::kDouble) - eval_ref.hidden[b].to(at::kDouble))
                           .norm()
                           .item<double>();
        const auto r = eval_ref.hidden[b].to(at::kDouble).norm().item<double>();
        num += d * d;
        den += r * r;
      }
      lr.eval_hidden_error = den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
      lr.routing = detail::compare_routing(ref_routes, own_routes, carried_routes, keep_routes_);
    }
    lr.coverage = session.coverage();
    phases.forward += clock.lap();
    lr.phases = phases;
    lr.seconds = seconds_since(layer_start);
    measure_layer(lr);
    model->release(layer);
    finish_layer(std::move(lr));
  }

  // Evaluation: both streams through the final norm and the head.
  if (evaluate) {
    detail::LogitsComparison comparison(keep_eval_logits_);
    for (size_t b = 0; b < eval_ref.hidden.size(); ++b) {
      comparison.add(model->head(unpark(eval_ref.hidden[b])),
                     model->head(unpark(eval_quant.hidden[b])), options_.eval_batches[b]);
    }
    result.eval = comparison.finish();
  }

  // Modules left in high precision: every projection not quantized, and the routers. Every
  // routed expert's projection the rules do not exclude must have been quantized.
  std::vector<std::string> skipped_layers;  // prefixes of the layers the stages skipped
  for (int64_t i = 0; i < num_layers && stages != nullptr; ++i) {
    if (stages->skip_layer(i, config)) {
      skipped_layers.push_back(model->layer(i).name() + ".");
    }
  }
  const auto in_skipped_layer = [&](const std::string& name) {
    return std::any_of(skipped_layers.begin(), skipped_layers.end(),
                       [&](const std::string& prefix) { return name.starts_with(prefix); });
  };
  std::vector<std::string> expected_quantized;
  model->for_each_module([&](runtime::Module& m) {
    if (auto* linear = dynamic_cast<runtime::Linear*>(&m)) {
      const auto& ref = linear->ref();
      if (ref.expert >= 0 && !in_skipped_layer(linear->name()) &&
          !options_.rules.ignored(linear->name(), ref.kind, ref.expert)) {
        expected_quantized.push_back(linear->name());
      }
      if (!quantized_weights.contains(std::string(linear->weight().name))) {
        result.ignored_modules.push_back(linear->name());
      }
    } else if (dynamic_cast<runtime::Router*>(&m) != nullptr) {
      result.ignored_modules.push_back(m.name());
    } else if (auto* fused = dynamic_cast<runtime::FusedExperts*>(&m)) {
      for (const auto& p : fused->projections()) {
        if (!in_skipped_layer(p.module) && !options_.rules.ignored(p.module, p.kind, p.expert)) {
          expected_quantized.push_back(p.module);
        }
      }
    }
  });
  // Layers the model does not run (an MTP layer): their projections are excluded, their
  // tensors copied through unless dropped.
  const auto excluded = [&](const std::string& name) {
    for (const auto& prefix : model->excluded_prefixes()) {
      if (name.starts_with(prefix + ".")) {
        return true;
      }
    }
    return false;
  };
  // Each remaining tensor is read once: an excluded layer's 2-D weights name its projections,
  // and everything is copied through.
  for (const auto& name : weights.names()) {
    if (quantized_weights.contains(name) || (options_.drop_excluded && excluded(name)) ||
        (!exporter && !excluded(name))) {
      continue;
    }
    auto tensor = weights.get(name);
    if (excluded(name) && name.ends_with(".weight") && tensor.dim() == 2 &&
        name.find("norm") == std::string::npos && name.find("embed") == std::string::npos) {
      result.ignored_modules.push_back(name.substr(0, name.size() - 7));
    }
    if (exporter) {
      exporter->add_tensor(export_name(name), tensor);  // the writer keeps its own copy
    }
    weights.release(name);
  }
  if (exporter) {
    const auto export_names = [&](std::vector<std::string> names) {
      for (auto& name : names) {
        name = export_name(name);
      }
      return names;
    };
    exporting::ExportSummary summary;
    summary.ignored_modules = export_names(result.ignored_modules);
    summary.expected_quantized = export_names(std::move(expected_quantized));
    summary.unquantized_embeddings.push_back(export_name(model->embed_tokens().name()));
    result.output = exporter->finish(summary);
    result.output_bytes = exporter->bytes_written();
  }
  result.peak_device_bytes = std::max(between_layers_peak, close_memory_window().first);
  for (const auto& layer : result.layers) {
    result.peak_device_bytes = std::max(result.peak_device_bytes, layer.peak_device_bytes);
  }
  result.seconds = seconds_since(start);
  return result;
}

}  // namespace moeq::pipeline
