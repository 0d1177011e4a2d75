// moeq quantize: recipe (YAML) + flags -> a quantized checkpoint, a report, and a summary.
#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <algorithm>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <yaml-cpp/yaml.h>
#include <nlohmann/json.hpp>

#include "commands.h"
#include "moeq/core/error.h"
#include "moeq/core/log.h"
#include "moeq/core/progress.h"
#include "moeq/io/safetensors_writer.h"
#include "moeq/pipeline/calibration_data.h"
#include "moeq/pipeline/pipeline.h"
#include "moeq/pipeline/report.h"
#include "moeq/pipeline/routing_file.h"
#include "moeq/quant/scheme.h"
#include "moeq/registry/config.h"
#include "moeq/registry/plugin_manager.h"
#include "quantize_flags.h"

namespace moeq::cli {
namespace {

namespace fs = std::filesystem;

// YAML (the recipe's scheme map) -> JSON (compressed-tensors' QuantizationScheme fields).
nlohmann::json to_json(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      nlohmann::json out = nlohmann::json::object();
      for (const auto& kv : node) {
        out[kv.first.as<std::string>()] = to_json(kv.second);
      }
      return out;
    }
    case YAML::NodeType::Sequence: {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& v : node) {
        out.push_back(to_json(v));
      }
      return out;
    }
    case YAML::NodeType::Scalar: {
      const auto text = node.Scalar();
      if (node.Tag() == "!") {  // quoted: a string
        return text;
      }
      if (text == "true" || text == "false") {
        return text == "true";
      }
      if (text == "null" || text == "~") {
        return nullptr;
      }
      try {
        size_t used = 0;
        const long long i = std::stoll(text, &used);
        if (used == text.size()) {
          return i;
        }
        const double d = std::stod(text, &used);
        if (used == text.size()) {
          return d;
        }
      } catch (const std::exception&) {
      }
      return text;
    }
    default:
      return nullptr;
  }
}

struct ResolvedScheme {
  std::string name;
  quant::QuantScheme scheme;
};

ResolvedScheme resolve_scheme(const Recipe& recipe, const std::string& flag) {
  if (!flag.empty()) {
    return {std::string(quant::find_preset(flag).name), quant::preset_scheme(flag)};
  }
  const ConfigNode& node = *recipe.scheme;
  if (node.node.IsScalar()) {
    try {
      const auto& preset = quant::find_preset(node.node.Scalar());
      return {std::string(preset.name), quant::preset_scheme(node.node.Scalar())};
    } catch (const Error& e) {
      node.fail(e.message());
    }
  }
  try {
    auto json = to_json(node.node);
    if (!json.contains("targets")) {
      json["targets"] = nlohmann::json::array({"Linear"});
    }
    auto scheme = quant::QuantScheme::from_json(json);
    scheme.validate();
    return {"custom", scheme};
  } catch (const Error& e) {
    node.fail(e.message());
  }
}

Recipe merged_recipe(const QuantizeFlags& flags) {
  Recipe recipe = flags.config.empty() ? parse_recipe("{}", "<command line>", fs::current_path())
                                       : load_recipe(flags.config);
  if (!flags.model.empty()) {
    ModelConfig m = recipe.model.value_or(ModelConfig{{}, "auto", "auto"});
    m.path = fs::absolute(flags.model);
    recipe.model = m;
  }
  if (recipe.model) {
    if (!flags.device.empty())
      recipe.model->device = flags.device;
    if (!flags.dtype.empty())
      recipe.model->dtype = flags.dtype;
  }
  if (!flags.calibration.empty() || recipe.calibration || flags.samples) {
    CalibrationConfig c = recipe.calibration.value_or(CalibrationConfig{});
    if (!recipe.calibration) {
      c.format = "auto";
      c.samples = 512;
      c.seq_len = 2048;
      c.batch_size = 8;
      c.min_tokens = 1;
    }
    if (!flags.calibration.empty())
      c.dataset = fs::absolute(flags.calibration);
    if (flags.samples)
      c.samples = *flags.samples;
    if (flags.seq_len)
      c.seq_len = *flags.seq_len;
    if (flags.batch_size)
      c.batch_size = *flags.batch_size;
    if (flags.seed)
      c.seed = *flags.seed;
    if (!flags.mode.empty()) {
      c.mode = flags.mode == "routed"  ? CalibrationMode::kRouted
               : flags.mode == "ratio" ? CalibrationMode::kRatio
                                       : CalibrationMode::kAll;
    }
    if (flags.ratio)
      c.ratio = *flags.ratio;
    if (flags.min_tokens)
      c.min_tokens = *flags.min_tokens;
    recipe.calibration = c;
  }
  if (!flags.output.empty() || recipe.export_config) {
    ExportConfig e = recipe.export_config.value_or(ExportConfig{});
    if (!recipe.export_config) {
      e.shard_size = 5'000'000'000;
    }
    if (!flags.output.empty())
      e.output = fs::absolute(flags.output);
    if (!flags.format.empty())
      e.format = exporting::parse_export_format(flags.format);
    if (!flags.report.empty())
      e.report = fs::absolute(flags.report);
    if (flags.overwrite)
      e.overwrite = true;
    recipe.export_config = e;
  }
  QuantizeConfig q = recipe.quantize.value_or(QuantizeConfig{});
  for (const auto& entry : flags.ignore)
    q.ignore.push_back(entry);
  if (flags.skip_attention)
    q.skip_attention = true;
  recipe.quantize = q;
  if (!flags.eval.empty()) {
    EvaluationConfig ev = recipe.evaluation.value_or(EvaluationConfig{{}, "auto", 16, 256, 4, 1});
    ev.dataset = fs::absolute(flags.eval);
    recipe.evaluation = ev;
  }
  if (recipe.evaluation) {
    if (flags.eval_samples)
      recipe.evaluation->samples = *flags.eval_samples;
    if (flags.eval_seq_len)
      recipe.evaluation->seq_len = *flags.eval_seq_len;
  }
  if (flags.no_eval) {
    recipe.evaluation.reset();
  }
  if (!flags.scheme.empty() && !recipe.scheme) {
    // The flag names the scheme; the recipe needs no section for it.
    recipe.scheme =
        ConfigNode{YAML::Node(flags.scheme), "<command line>", "scheme", YAML::Mark::null_mark()};
  }
  if (flags.evaluate_only) {
    recipe.require({"model", "scheme", "calibration", "evaluation"}, "moeq eval");
  } else {
    recipe.require({"model", "scheme", "calibration", "export"}, "moeq quantize");
  }
  return recipe;
}

}  // namespace

c10::Device pick_device(const std::string& text) {
  if (text.empty() || text == "auto") {
    return at::hasCUDA() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  }
  c10::Device device(text);
  MOEQ_CHECK(!device.is_cuda() || at::hasCUDA(),
             "device '{}' was asked for, but this machine has no CUDA device (use --device cpu)",
             text);
  return device;
}

c10::ScalarType pick_dtype(const std::string& text, const c10::Device& device) {
  if (text.empty() || text == "auto") {
    // bf16 matmuls on the CPU are slow and not what the engines compute; fp32 is exact for a
    // bf16 checkpoint's weights.
    return device.is_cuda() ? c10::kBFloat16 : c10::kFloat;
  }
  if (text == "bfloat16") {
    return c10::kBFloat16;
  }
  if (text == "float16") {
    return c10::kHalf;
  }
  MOEQ_CHECK(text == "float32", "unknown dtype '{}' (auto, bfloat16, float16, float32)", text);
  return c10::kFloat;
}

int run_quantize(const QuantizeFlags& flags) {
  const Recipe recipe = merged_recipe(flags);
  const ResolvedScheme scheme = resolve_scheme(recipe, flags.scheme);
  // Refused before any layer runs, not after the whole model.
  const fs::path routing_file =
      flags.save_routing.empty() ? fs::path() : fs::absolute(flags.save_routing);
  if (!routing_file.empty()) {
    MOEQ_CHECK(recipe.evaluation.has_value(),
               "--save-routing '{}': the expert choices are recorded on the evaluation tokens; "
               "give them (--eval FILE or the recipe's evaluation section)",
               flags.save_routing);
    pipeline::check_routing_file(routing_file, "--save-routing");
  }

  PluginManager manager;
  load_plugins(manager, recipe);
  const auto search_path = plugin_search_path(recipe.plugin_path);
  for (const auto& spec : flags.plugins) {
    manager.load(spec, search_path);
  }
  if (manager.plugins().empty()) {
    load_default_plugins(manager);
  }
  const Registries& registries = manager.registries();

  const auto device = pick_device(recipe.model->device);
  const auto dtype = pick_dtype(recipe.model->dtype, device);
  const fs::path model_dir = recipe.model->path;
  const auto config = io::HfConfig::load(model_dir / "config.json");
  const auto architecture = config.architecture();
  MOEQ_CHECK(registries.architectures.contains(architecture),
             "{}: architecture '{}' is not registered by any loaded plugin (registered: {}); add "
             "the plugin that provides it under 'plugins' in the recipe",
             (model_dir / "config.json").string(), architecture,
             fmt::join(registries.architectures.keys(), ", "));
  auto builder = registries.architectures.create(architecture);
  std::shared_ptr<const pipeline::PipelineStages> stages;
  if (registries.pipeline_stages.contains(architecture)) {
    stages = registries.pipeline_stages.create(architecture);
  }

  // Calibration and evaluation tokens.
  const auto tokenizer = pipeline::find_tokenizer(model_dir);
  const auto vocab = config.get<int64_t>("vocab_size");
  const auto bos = config.get_or<int64_t>("bos_token_id", -1);
  pipeline::CalibrationDataOptions calib_options;
  calib_options.path = recipe.calibration->dataset;
  calib_options.format = recipe.calibration->format;
  calib_options.samples = recipe.calibration->samples;
  calib_options.seq_len = recipe.calibration->seq_len;
  calib_options.batch_size = recipe.calibration->batch_size;
  calib_options.seed = recipe.calibration->seed;
  calib_options.vocab_size = vocab;
  if (bos >= 0)
    calib_options.bos_token_id = bos;
  auto calibration = pipeline::load_calibration_data(calib_options, tokenizer.get());

  pipeline::PipelineOptions options;
  options.model_dir = model_dir;
  options.placement = runtime::Placement{device, dtype};
  options.stages = stages;
  options.rules.scheme = scheme.scheme;
  options.rules.ignore = recipe.quantize->ignore;
  options.rules.skip_attention = recipe.quantize->skip_attention;
  options.rules.skip_dense_mlp = recipe.quantize->skip_dense_mlp;
  options.propagate_quantized = recipe.quantize->propagate_quantized;
  options.offload_activations = recipe.quantize->offload_activations;
  options.drop_excluded = recipe.quantize->drop_excluded_layers;
  options.calibration.mode = recipe.calibration->mode;
  options.calibration.ratio = recipe.calibration->ratio;
  options.calibration.min_tokens = recipe.calibration->min_tokens;
  options.calibration_batches = calibration.batches;
  std::optional<pipeline::CalibrationData> evaluation;
  if (recipe.evaluation) {
    pipeline::CalibrationDataOptions eval_options = calib_options;
    eval_options.path = recipe.evaluation->dataset;
    eval_options.format = recipe.evaluation->format;
    eval_options.samples = recipe.evaluation->samples;
    eval_options.seq_len = recipe.evaluation->seq_len;
    eval_options.batch_size = recipe.evaluation->batch_size;
    eval_options.seed = recipe.evaluation->seed;
    evaluation = pipeline::load_calibration_data(eval_options, tokenizer.get());
    options.eval_batches = evaluation->batches;
  }
  const ExportConfig ex = recipe.export_config.value_or(ExportConfig{});
  options.write_checkpoint = !flags.evaluate_only;
  options.export_options.format = ex.format;
  options.export_options.model_dir = model_dir;
  options.export_options.output = ex.output;
  options.export_options.overwrite = ex.overwrite;
  options.export_options.resumable = ex.journal;
  options.export_options.resume = flags.resume;
  options.export_options.restart = flags.restart;
  // What the pipeline cannot see but decides the output: this build of moeq.
  options.journal_salt = fmt::format("moeq {}", MOEQ_VERSION);
  options.export_options.shard_size = ex.shard_size;
  options.export_options.scheme = scheme.scheme;
  options.export_options.scheme_name = scheme.name;
  const fs::path report_dir = flags.evaluate_only ? fs::absolute(flags.report)
                              : ex.report.empty() ? fs::path(ex.output.string() + ".report")
                                                  : ex.report;
  std::unique_ptr<io::SafetensorsWriter> fake_writer;
  if (flags.save_fake_weights) {
    fs::create_directories(report_dir);
    fake_writer = std::make_unique<io::SafetensorsWriter>(
        report_dir, io::SafetensorsWriterOptions{.prefix = "fake_weights"});
    options.on_fake_weight = [&fake_writer](const std::string& module, const at::Tensor& w) {
      fake_writer->add(module + ".weight", w);
    };
  }

  // MOEQ_TEST_KILL_AT_MODULE=<module>: SIGKILL just before that projection is exported, in the
  // middle of its layer (the resume tests).
  if (const char* kill_at = std::getenv("MOEQ_TEST_KILL_AT_MODULE")) {
    options.on_fake_weight = [kill_at, next = options.on_fake_weight](const std::string& module,
                                                                      const at::Tensor& w) {
      if (module == kill_at) {
        std::raise(SIGKILL);
      }
      if (next) {
        next(module, w);
      }
    };
  }

  logger().info(
      "quantizing {} ({}) with {} to {} ({}), calibrating on {} ({} sequences x {} "
      "tokens, mode {}) on {} in {}",
      model_dir.string(), architecture, scheme.name,
      flags.evaluate_only ? std::string("memory (moeq eval)") : ex.output.string(),
      flags.evaluate_only ? "fake quantization" : exporting::to_string(ex.format),
      recipe.calibration->dataset.string(), calibration.batches.empty() ? 0 : calibration.samples,
      calib_options.seq_len, to_string(options.calibration.mode), device.str(),
      c10::toString(dtype));

  pipeline::Pipeline pipe(
      options,
      [&builder](const io::HfConfig& c, std::shared_ptr<runtime::WeightSource> w,
                 const runtime::RuntimeOptions& o) { return builder->build(c, std::move(w), o); },
      [&registries,
       cache = std::make_shared<std::map<std::string, std::shared_ptr<ModuleAdapter>>>()](
          const std::string& type) -> ModuleAdapter* {
        auto it = cache->find(type);
        if (it == cache->end()) {
          std::shared_ptr<ModuleAdapter> adapter;
          if (registries.module_adapters.contains(type)) {
            adapter = registries.module_adapters.create(type);
          }
          it = cache->emplace(type, std::move(adapter)).first;
        }
        return it->second.get();
      });
  pipe.keep_eval_logits(flags.save_eval_logits);
  pipe.keep_routes(!routing_file.empty());

  std::unique_ptr<ProgressBar> bar;
  pipeline::PipelineProgress progress;
  progress.layer_begin = [&](int64_t layer, int64_t layers, int64_t batches) {
    bar = std::make_unique<ProgressBar>(fmt::format("layer {}/{}", layer + 1, layers), batches,
                                        "tok");
  };
  progress.batch_done = [&](int64_t done, int64_t tokens) { bar->update(done, tokens); };
  progress.resumed = [](int64_t done, int64_t layers) {
    std::fprintf(stderr, "resuming: %lld of %lld layers were done\n", static_cast<long long>(done),
                 static_cast<long long>(layers));
  };
  // MOEQ_TEST_KILL_AFTER_LAYER=k: SIGKILL right after layer k is journaled (the resume tests).
  const char* kill_after = std::getenv("MOEQ_TEST_KILL_AFTER_LAYER");
  progress.layer_end = [&](const pipeline::LayerResult& layer) {
    bar->finish();
    const auto& t = layer.phases;
    const std::string timing =
        fmt::format("{:.1f} s (load {:.1f}, calibrate {:.1f}, quantize {:.1f}, forward {:.1f})",
                    layer.seconds, t.load, t.calibrate, t.quantize, t.forward);
    if (layer.peak_device_bytes > 0) {  // on a GPU: what the layer took, as it goes
      const double gib = 1 << 30;
      fmt::print(stderr,
                 "  layer {}: {}; peak GPU memory in tensors {:.2f} GiB, {:.2f}x its {:.2f} GiB "
                 "of weights (allocator {:.2f} GiB)\n",
                 layer.index, timing, static_cast<double>(layer.peak_device_bytes) / gib,
                 static_cast<double>(layer.peak_device_bytes) /
                     static_cast<double>(std::max<int64_t>(layer.weight_bytes, 1)),
                 static_cast<double>(layer.weight_bytes) / gib,
                 static_cast<double>(layer.peak_device_reserved_bytes) / gib);
    } else {
      logger().debug("layer {}: {}", layer.index, timing);
    }
    if (kill_after != nullptr && layer.index == std::atoll(kill_after)) {
      std::raise(SIGKILL);
    }
  };
  const auto result = pipe.run(progress);

  pipeline::RunInfo info;
  info.model = model_dir.string();
  info.scheme = scheme.name;
  info.format = flags.evaluate_only ? std::string("fake quantization (no export)")
                                    : std::string(exporting::to_string(ex.format));
  info.device = device.str();
  info.dtype = c10::toString(dtype);
  info.calibration = recipe.calibration->dataset.string();
  info.mode = std::string(to_string(options.calibration.mode));
  info.min_tokens = options.calibration.min_tokens;
  for (const auto& entry : fs::directory_iterator(model_dir)) {
    if (entry.path().extension() == ".safetensors") {
      info.source_bytes += static_cast<int64_t>(entry.file_size());
    }
  }
  info.peak_host_bytes = peak_host_bytes();
  pipeline::Report report(result, info);
  fs::create_directories(report_dir);
  report.write_json(report_dir / "report.json");
  report.write_html(report_dir / "report.html");
  if (fake_writer) {
    fake_writer->finish();
  }
  if (flags.save_eval_logits && result.eval) {
    io::SafetensorsWriter writer(report_dir, io::SafetensorsWriterOptions{.prefix = "eval_logits"});
    writer.add("input_ids", at::cat(options.eval_batches));
    writer.add("logits_reference", result.eval->logits_reference);
    writer.add("logits_quantized", result.eval->logits_quantized);
    writer.finish();
  }
  if (!routing_file.empty()) {
    pipeline::write_routing_file(routing_file, result, at::cat(options.eval_batches));
  }
  std::printf("%s", report.summary_text().c_str());
  std::printf("report: %s\n", (report_dir / "report.html").string().c_str());
  return 0;
}

Command add_quantize_command(CLI::App& app) {
  auto f = std::make_shared<QuantizeFlags>();
  CLI::App* c =
      app.add_subcommand("quantize", "quantize a model: recipe (YAML) plus flags that override it");
  c->add_option("-c,--config", f->config, "the recipe (YAML)")->check(CLI::ExistingFile);
  c->add_option("-m,--model", f->model, "model directory (config.json + safetensors)");
  c->add_option("-s,--scheme", f->scheme, "scheme name: W4A16, W8A8-FP8, FP8-block, NVFP4 ...");
  c->add_option("-o,--output", f->output, "output checkpoint directory");
  c->add_option("--format", f->format, "compressed-tensors or modelopt")
      ->check(CLI::IsMember({"compressed-tensors", "modelopt"}));
  c->add_option("--device", f->device, "auto, cpu, cuda or cuda:N");
  c->add_option("--dtype", f->dtype, "compute dtype: auto, bfloat16, float16, float32")
      ->check(CLI::IsMember({"auto", "bfloat16", "float16", "float32"}));
  c->add_option("--calibration", f->calibration, "calibration data (.jsonl, .safetensors, .txt)");
  c->add_option("--samples", f->samples, "calibration sequences");
  c->add_option("--seq-len", f->seq_len, "tokens per calibration sequence");
  c->add_option("--batch-size", f->batch_size, "sequences per forward pass");
  c->add_option("--seed", f->seed, "seed for sampling the sequences");
  c->add_option("--mode", f->mode, "which experts see each token: all, routed, ratio")
      ->check(CLI::IsMember({"all", "routed", "ratio"}));
  c->add_option("--ratio", f->ratio, "with --mode ratio: fraction of experts per token");
  c->add_option("--min-tokens", f->min_tokens, "experts under this fall back (with a warning)");
  c->add_option("--eval", f->eval, "held-out data for the KL / perplexity evaluation");
  c->add_option("--eval-samples", f->eval_samples, "evaluation sequences");
  c->add_option("--eval-seq-len", f->eval_seq_len, "tokens per evaluation sequence");
  c->add_flag("--no-eval", f->no_eval, "skip the evaluation even when the recipe has one");
  c->add_option("--ignore", f->ignore, "modules to leave in high precision (name or re:regex)");
  c->add_flag("--skip-attention", f->skip_attention, "quantize the experts and MLPs only");
  c->add_flag("--overwrite", f->overwrite, "replace an existing output once the new one is done");
  auto* resume = c->add_flag("--resume", f->resume,
                             "continue an interrupted run of this output from its journal (or "
                             "start one when there is none)");
  c->add_flag("--restart", f->restart, "discard an interrupted run of this output and start over")
      ->excludes(resume);
  c->add_option("--report", f->report, "report directory (default: <output>.report)");
  c->add_flag("--save-eval-logits", f->save_eval_logits,
              "also write both models' evaluation logits (report dir, eval_logits.safetensors)");
  c->add_option("--save-routing", f->save_routing,
                "also write every evaluation token's top-k experts and weights, original and "
                "quantized, per MoE layer (a .safetensors file)");
  c->add_flag("--save-fake-weights", f->save_fake_weights,
              "also write every quantized projection's fake-quantized weight (report dir, "
              "fake_weights.safetensors): what the engines must decompress");
  c->add_option("-p,--plugin", f->plugins, "a plugin to load as well (repeatable)");
  return Command{c, [f] { return run_quantize(*f); }};
}

}  // namespace moeq::cli
