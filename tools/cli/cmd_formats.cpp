// moeq formats: quantizes a generated expert stack with every named scheme and prints, per scheme,
// the format written, the bits per weight it stores and the error it makes. The README's main
// command until the layer pipeline runs a real model.
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "commands.h"
#include "moeq/core/error.h"
#include "moeq/quant/scheme.h"
#include "moeq/quant/tensor_quantizer.h"

namespace moeq::cli {
namespace {

struct FormatsOptions {
  int64_t experts = 8;
  int64_t rows = 256;  // expert output features
  int64_t cols = 512;  // expert input features (the quantization axis)
  int64_t tokens = 256;
  uint64_t seed = 0;
  std::vector<std::string> schemes;
};

// Weights like a trained expert's: Gaussian rows with a few outlier input channels, per expert a
// different scale, in bf16 (the dtype of real checkpoints).
at::Tensor make_expert_stack(const FormatsOptions& o, at::Generator& gen) {
  at::Tensor w = at::randn({o.experts, o.rows, o.cols}, gen, at::kFloat) * 0.02;
  at::Tensor scale = at::rand({o.experts, 1, 1}, gen, at::kFloat) + 0.5;
  w = w * scale;
  at::Tensor outlier_cols =
      at::randint(o.cols, {std::max<int64_t>(1, o.cols / 64)}, gen, at::kLong);
  w.index_copy_(-1, outlier_cols, w.index_select(-1, outlier_cols) * 8.0);
  return w.to(at::kBFloat16);
}

// Activations with a few large channels, as after an RMSNorm in a real model.
at::Tensor make_activations(const FormatsOptions& o, at::Generator& gen) {
  at::Tensor x = at::randn({o.tokens, o.cols}, gen, at::kFloat);
  at::Tensor channel_gain = at::ones({o.cols}, at::kFloat);
  channel_gain.index_fill_(
      0, at::randint(o.cols, {std::max<int64_t>(1, o.cols / 128)}, gen, at::kLong), 20.0);
  return (x * channel_gain).to(at::kBFloat16);
}

double relative_error(const at::Tensor& approx, const at::Tensor& exact) {
  const at::Tensor e = exact.to(at::kDouble);
  const double num = (approx.to(at::kDouble) - e).pow(2).sum().item<double>();
  const double den = e.pow(2).sum().item<double>();
  return den > 0 ? std::sqrt(num / den) : 0.0;
}

int64_t stored_bytes(const quant::QuantizedTensors& tensors) {
  int64_t bytes = 0;
  for (const auto& [name, t] : tensors) {
    bytes += t.numel() * static_cast<int64_t>(t.element_size());
  }
  return bytes;
}

int run_formats(const FormatsOptions& o) {
  MOEQ_CHECK(o.experts > 0 && o.rows > 0 && o.cols > 0 && o.tokens > 0,
             "formats: sizes must be positive, got experts={} rows={} cols={} tokens={}", o.experts,
             o.rows, o.cols, o.tokens);
  at::Generator gen = at::detail::createCPUGenerator(o.seed);
  const at::Tensor w = make_expert_stack(o, gen);
  const at::Tensor x = make_activations(o, gen);
  // Reference outputs of every expert on every token, in fp32.
  const at::Tensor y_ref = at::matmul(x.to(at::kFloat), w.to(at::kFloat).transpose(-1, -2));

  std::vector<std::string> names = o.schemes;
  if (names.empty()) {
    for (const quant::PresetInfo& preset : quant::preset_schemes()) {
      names.emplace_back(preset.name);
    }
  }
  std::printf("moeq formats: %lld experts of [%lld, %lld] bf16 weights, %lld tokens, seed %llu\n\n",
              static_cast<long long>(o.experts), static_cast<long long>(o.rows),
              static_cast<long long>(o.cols), static_cast<long long>(o.tokens),
              static_cast<unsigned long long>(o.seed));
  std::printf("%-18s %-22s %10s %14s %14s %12s\n", "scheme", "format", "bits/wt", "weight err",
              "output err", "SQNR (dB)");
  std::printf("%s\n", std::string(95, '-').c_str());
  for (const std::string& name : names) {
    const quant::QuantScheme scheme = quant::preset_scheme(name);
    quant::ExpertQuantizers quantizers(scheme, o.experts, "experts.{}.weight");
    quantizers.observe_weights(w);
    at::Tensor x_q = x;
    if (quant::TensorQuantizer* input = quantizers.input()) {
      input->observe(x);
      x_q = input->fake_quantize(x);
    }
    const at::Tensor w_q = quantizers.fake_quantize_weights(w);
    const at::Tensor y_q = at::matmul(x_q.to(at::kFloat), w_q.to(at::kFloat).transpose(-1, -2));

    int64_t bytes = 0;
    for (int64_t e = 0; e < o.experts; ++e) {
      quant::QuantizedTensors tensors = quantizers.quantize_expert(e, w.select(0, e));
      tensors.erase("weight_shape");  // metadata, not weight storage
      for (const char* activation : {"input_scale", "input_zero_point", "input_global_scale"}) {
        tensors.erase(activation);
      }
      bytes += stored_bytes(tensors);
    }
    const double bits = 8.0 * static_cast<double>(bytes) / static_cast<double>(w.numel());
    const double weight_err = relative_error(w_q, w);
    const double output_err = relative_error(y_q, y_ref);
    const double sqnr = weight_err > 0 ? -20.0 * std::log10(weight_err) : INFINITY;
    std::printf("%-18s %-22s %10.3f %14.3e %14.3e %12.2f\n", name.c_str(),
                std::string(quant::to_string(scheme.compression_format())).c_str(), bits,
                weight_err, output_err, sqnr);
  }
  std::printf(
      "\nweight err: ||W' - W|| / ||W|| over all experts (fake quantization); output err: the same "
      "for X W^T\nwith the scheme's activation quantization applied to X; bits/wt: bytes stored "
      "per weight (values and scales) x 8.\n");
  return 0;
}

}  // namespace

Command add_formats_command(CLI::App& app) {
  auto options = std::make_shared<FormatsOptions>();
  CLI::App* cmd = app.add_subcommand(
      "formats", "quantize a generated expert stack with every named scheme: error and size table");
  cmd->add_option("--experts", options->experts, "number of experts")->capture_default_str();
  cmd->add_option("--rows", options->rows, "output features per expert")->capture_default_str();
  cmd->add_option("--cols", options->cols, "input features per expert")->capture_default_str();
  cmd->add_option("--tokens", options->tokens, "activation rows")->capture_default_str();
  cmd->add_option("--seed", options->seed, "random seed")->capture_default_str();
  cmd->add_option("--scheme", options->schemes, "schemes to run (default: all named schemes)");
  return {cmd, [options] { return run_formats(*options); }};
}

}  // namespace moeq::cli
