// moeq eval: a quantized model against its original on held-out tokens. The quantized side is an
// exported checkpoint (--quantized: compressed-tensors or ModelOpt, moeq's or a vendor's) or
// fake quantization in process (--scheme, calibrating as moeq quantize does). Either way: the
// KL divergence of the next-token distributions (mean and percentiles), both perplexities, top-1
// agreement, per-MoE-layer routing agreement, per-layer output error and per-projection weight
// error, as report.json and report.html.
#include <ATen/ATen.h>
#include <ATen/Context.h>

#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>

#include "commands.h"
#include "moeq/core/error.h"
#include "moeq/core/log.h"
#include "moeq/core/progress.h"
#include "moeq/io/hf_config.h"
#include "moeq/io/safetensors_writer.h"
#include "moeq/pipeline/calibration_data.h"
#include "moeq/pipeline/evaluate.h"
#include "moeq/pipeline/report.h"
#include "moeq/pipeline/routing_file.h"
#include "moeq/registry/config.h"
#include "moeq/registry/plugin_manager.h"
#include "quantize_flags.h"

namespace moeq::cli {
namespace {

namespace fs = std::filesystem;

struct EvalFlags {
  QuantizeFlags quantize;  // the model, data, device and, with --scheme, the calibration
  std::string quantized;
};

// --quantized: the export read as a weight source, layer by layer beside the original.
int run_checkpoint_eval(const EvalFlags& flags) {
  const QuantizeFlags& f = flags.quantize;
  Recipe recipe = f.config.empty() ? parse_recipe("{}", "<command line>", fs::current_path())
                                   : load_recipe(f.config);
  fs::path model_dir = f.model.empty() && recipe.model ? recipe.model->path : fs::path(f.model);
  MOEQ_CHECK(!model_dir.empty(),
             "moeq eval: name the original model (--model or the recipe's "
             "model.path)");
  model_dir = fs::absolute(model_dir);
  const fs::path quantized_dir = fs::absolute(flags.quantized);
  MOEQ_CHECK(fs::is_directory(quantized_dir), "the quantized checkpoint '{}' is not a directory",
             quantized_dir.string());
  const fs::path routing_file = f.save_routing.empty() ? fs::path() : fs::absolute(f.save_routing);
  if (!routing_file.empty()) {
    pipeline::check_routing_file(routing_file, "--save-routing");
  }

  PluginManager manager;
  load_plugins(manager, recipe);
  const auto search_path = plugin_search_path(recipe.plugin_path);
  for (const auto& spec : f.plugins) {
    manager.load(spec, search_path);
  }
  if (manager.plugins().empty()) {
    load_default_plugins(manager);
  }
  const Registries& registries = manager.registries();
  const auto config = io::HfConfig::load(model_dir / "config.json");
  const auto architecture = config.architecture();
  MOEQ_CHECK(registries.architectures.contains(architecture),
             "{}: architecture '{}' is not registered by any loaded plugin (registered: {})",
             (model_dir / "config.json").string(), architecture,
             fmt::join(registries.architectures.keys(), ", "));
  auto builder = registries.architectures.create(architecture);
  // Refuse a checkpoint that cannot be read before any token is loaded.
  const auto checkpoint = pipeline::read_quantized_checkpoint(quantized_dir);
  const auto quantized_config = io::HfConfig::load(quantized_dir / "config.json");
  MOEQ_CHECK(quantized_config.architecture() == architecture,
             "'{}' is a {} checkpoint but '{}' is a {}", quantized_dir.string(),
             quantized_config.architecture(), model_dir.string(), architecture);

  const std::string device_text =
      !f.device.empty() ? f.device : (recipe.model ? recipe.model->device : "auto");
  const std::string dtype_text =
      !f.dtype.empty() ? f.dtype : (recipe.model ? recipe.model->dtype : "auto");
  const auto device = pick_device(device_text);
  const auto dtype = pick_dtype(dtype_text, device);

  pipeline::CalibrationDataOptions data;
  const auto tokenizer = pipeline::find_tokenizer(model_dir);
  data.vocab_size = config.get<int64_t>("vocab_size");
  if (const auto bos = config.get_or<int64_t>("bos_token_id", -1); bos >= 0) {
    data.bos_token_id = bos;
  }
  if (recipe.evaluation) {
    data.path = recipe.evaluation->dataset;
    data.format = recipe.evaluation->format;
    data.samples = recipe.evaluation->samples;
    data.seq_len = recipe.evaluation->seq_len;
    data.batch_size = recipe.evaluation->batch_size;
    data.seed = recipe.evaluation->seed;
  } else {
    data.format = "auto";
    data.samples = 16;
    data.seq_len = 256;
    data.batch_size = 4;
    data.seed = 1;
  }
  if (!f.eval.empty()) {
    data.path = fs::absolute(f.eval);
  }
  MOEQ_CHECK(!data.path.empty(),
             "moeq eval: name the held-out data (--eval FILE or the recipe's "
             "evaluation.dataset)");
  if (f.eval_samples) {
    data.samples = *f.eval_samples;
  }
  if (f.eval_seq_len) {
    data.seq_len = *f.eval_seq_len;
  }
  if (f.batch_size) {
    data.batch_size = *f.batch_size;
  }
  const auto tokens = pipeline::load_calibration_data(data, tokenizer.get());

  pipeline::CheckpointEvalOptions options;
  options.model_dir = model_dir;
  options.quantized_dir = quantized_dir;
  options.placement = runtime::Placement{device, dtype};
  options.eval_batches = tokens.batches;
  options.keep_logits = f.save_eval_logits;
  options.keep_routes = !routing_file.empty();
  logger().info("evaluating {} against {} ({}) on {} ({} sequences x {} tokens) on {} in {}",
                quantized_dir.string(), model_dir.string(), architecture, data.path.string(),
                tokens.samples, data.seq_len, device.str(), c10::toString(dtype));

  std::unique_ptr<ProgressBar> bar;
  pipeline::PipelineProgress progress;
  progress.layer_begin = [&](int64_t layer, int64_t layers, int64_t batches) {
    bar = std::make_unique<ProgressBar>(fmt::format("layer {}/{}", layer + 1, layers), batches,
                                        "tok");
  };
  progress.batch_done = [&](int64_t done, int64_t n) { bar->update(done, n); };
  progress.layer_end = [&](const pipeline::LayerResult&) { bar->finish(); };
  const auto result = pipeline::evaluate_checkpoint(
      options, checkpoint,
      [&builder](const io::HfConfig& c, std::shared_ptr<runtime::WeightSource> w,
                 const runtime::RuntimeOptions& o) { return builder->build(c, std::move(w), o); },
      progress);

  pipeline::RunInfo info;
  info.model = model_dir.string();
  info.scheme = checkpoint.description;
  info.format = checkpoint.format;
  info.device = device.str();
  info.dtype = c10::toString(dtype);
  info.calibration = "(read from " + quantized_dir.string() + ")";
  info.mode = "checkpoint";
  for (const auto& entry : fs::directory_iterator(model_dir)) {
    if (entry.path().extension() == ".safetensors") {
      info.source_bytes += static_cast<int64_t>(entry.file_size());
    }
  }
  info.peak_host_bytes = peak_host_bytes();
  const fs::path report_dir = fs::absolute(f.report);
  pipeline::Report report(result, info);
  fs::create_directories(report_dir);
  report.write_json(report_dir / "report.json");
  report.write_html(report_dir / "report.html");
  if (f.save_eval_logits && result.eval) {
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

int run_eval(EvalFlags flags) {
  MOEQ_CHECK(flags.quantized.empty() != flags.quantize.scheme.empty(),
             "moeq eval compares either an exported checkpoint (--quantized DIR) or fake "
             "quantization in process (--scheme NAME): give exactly one");
  if (flags.quantize.report.empty()) {
    const std::string what =
        !flags.quantized.empty()
            ? fs::path(flags.quantized).filename().string()
            : fs::path(flags.quantize.model).filename().string() + "-" + flags.quantize.scheme;
    flags.quantize.report = what + ".eval";
  }
  if (!flags.quantized.empty()) {
    return run_checkpoint_eval(flags);
  }
  flags.quantize.evaluate_only = true;
  return run_quantize(flags.quantize);
}

}  // namespace

Command add_eval_command(CLI::App& app) {
  auto flags = std::make_shared<EvalFlags>();
  QuantizeFlags& f = flags->quantize;
  CLI::App* c = app.add_subcommand(
      "eval",
      "compare a quantized model with its original: KL divergence, perplexity, top-1 agreement, "
      "per-layer and per-expert error");
  c->add_option("-c,--config", f.config, "a recipe (YAML): model, evaluation (and calibration)")
      ->check(CLI::ExistingFile);
  c->add_option("-m,--model", f.model, "the original model directory");
  c->add_option("-q,--quantized", flags->quantized,
                "an exported checkpoint (compressed-tensors or ModelOpt) to evaluate");
  c->add_option("-s,--scheme", f.scheme,
                "or: a scheme to apply in process (fake quantization, calibrated first)");
  c->add_option("--eval", f.eval, "held-out data (.jsonl, .safetensors, .txt)");
  c->add_option("--eval-samples", f.eval_samples, "held-out sequences");
  c->add_option("--eval-seq-len", f.eval_seq_len, "tokens per held-out sequence");
  c->add_option("--batch-size", f.batch_size, "sequences per forward pass");
  c->add_option("--calibration", f.calibration, "with --scheme: calibration data");
  c->add_option("--samples", f.samples, "with --scheme: calibration sequences");
  c->add_option("--seq-len", f.seq_len, "with --scheme: tokens per calibration sequence");
  c->add_option("--mode", f.mode, "with --scheme: calibration mode all, routed or ratio")
      ->check(CLI::IsMember({"all", "routed", "ratio"}));
  c->add_option("--ratio", f.ratio, "with --mode ratio: fraction of experts per token");
  c->add_option("--device", f.device, "auto, cpu, cuda or cuda:N");
  c->add_option("--dtype", f.dtype, "compute dtype: auto, bfloat16, float16, float32")
      ->check(CLI::IsMember({"auto", "bfloat16", "float16", "float32"}));
  c->add_option("--report", f.report,
                "report directory (default: <quantized>.eval or <model>-<scheme>.eval)");
  c->add_flag("--save-logits", f.save_eval_logits,
              "also write both models' logits (report dir, eval_logits.safetensors)");
  c->add_option("--save-routing", f.save_routing,
                "also write every held-out token's top-k experts and weights, original and "
                "quantized, per MoE layer (a .safetensors file)");
  c->add_option("--ignore", f.ignore,
                "with --scheme: modules to leave in high precision (name or re:regex)");
  c->add_option("-p,--plugin", f.plugins, "a plugin to load as well (repeatable)");
  return Command{c, [flags] { return run_eval(*flags); }};
}

}  // namespace moeq::cli
