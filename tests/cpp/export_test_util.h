// Helpers shared by the export_*_test.cpp suites: a tiny source model directory in the Mixtral
// layout, quantizers calibrated the way the pipeline calibrates them, and the check that nothing
// but the expected entries sits next to an output.
#pragma once

#include <gtest/gtest.h>
#include <moeq/core/error.h>
#include <moeq/export/exporter.h>
#include <moeq/quant/tensor_quantizer.h>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "io_test_util.h"

namespace moeq::exporting::testing {

namespace fs = std::filesystem;

// A source model directory: config.json, tokenizer files, generation_config.json, a chat
// template, a modeling .py and a safetensors file (never copied).
inline void make_source(const fs::path& dir) {
  fs::create_directories(dir);
  io::testing::write_bytes(dir / "config.json",
                           R"({"model_type": "mixtral", "hidden_size": 128, "num_local_experts": 2,
 "rope_theta": 1000000.0, "rms_norm_eps": 1e-05, "architectures": ["MixtralForCausalLM"]})");
  io::testing::write_bytes(dir / "tokenizer.json", R"({"version": "1.0"})");
  io::testing::write_bytes(dir / "tokenizer_config.json", R"({"model_max_length": 64})");
  io::testing::write_bytes(dir / "generation_config.json", R"({"do_sample": false})");
  io::testing::write_bytes(dir / "chat_template.jinja", "{{ messages }}");
  io::testing::write_bytes(dir / "modeling_tiny.py", "# custom code\n");
  io::testing::write_bytes(dir / "model.safetensors", "not copied");
  io::testing::write_bytes(dir / "model.safetensors.index.json", "{}");
}

// Entries of `dir` whose name holds `name` (the output and any temporary beside it).
inline std::vector<std::string> siblings(const fs::path& dir, const std::string& name) {
  std::vector<std::string> out;
  for (const auto& entry : fs::directory_iterator(dir)) {
    const std::string n = entry.path().filename().string();
    if (n.find(name) != std::string::npos) {
      out.push_back(n);
    }
  }
  return out;
}

inline at::Tensor random_weight(int64_t out, int64_t in, uint64_t seed) {
  auto gen = at::make_generator<at::CPUGeneratorImpl>(seed);
  return at::randn({out, in}, gen, at::TensorOptions().dtype(at::kFloat)).to(at::kBFloat16);
}

// One projection of one expert with its quantizers.
struct Module {
  std::string name;
  at::Tensor weight;
  std::unique_ptr<quant::TensorQuantizer> weight_quantizer;
  quant::TensorQuantizer* input_quantizer = nullptr;
};

// The routed experts of layer 0 in the Mixtral layout (w1/w3 [I, H], w2 [H, I]) calibrated as the
// pipeline does it: weights observed, one input quantizer per projection shared by the experts
// (observed on random activations), NVFP4 gate/up global scales fused.
class TinyExperts {
 public:
  TinyExperts(const quant::QuantScheme& scheme,
              int64_t experts,
              int64_t hidden,
              int64_t intermediate,
              bool fuse_gate_up = true)
      : scheme_(scheme) {
    for (const char* proj : {"w1", "w2", "w3"}) {
      const bool down = std::string(proj) == "w2";
      if (scheme.input_activations) {
        inputs_.push_back(std::make_unique<quant::TensorQuantizer>(
            *scheme.input_activations, quant::TensorRole::kInput, std::string(proj) + ".input"));
      }
      for (int64_t e = 0; e < experts; ++e) {
        Module m;
        m.name = fmt::format("model.layers.0.block_sparse_moe.experts.{}.{}", e, proj);
        m.weight = down ? random_weight(hidden, intermediate, 10 * e + proj[1])
                        : random_weight(intermediate, hidden, 10 * e + proj[1]);
        m.weight_quantizer = std::make_unique<quant::TensorQuantizer>(
            *scheme.weights, quant::TensorRole::kWeight, m.name + ".weight");
        m.weight_quantizer->observe(m.weight);
        if (scheme.input_activations) {
          m.input_quantizer = inputs_.back().get();
          auto gen = at::make_generator<at::CPUGeneratorImpl>(100 + e);
          m.input_quantizer->observe(
              at::randn({8, m.weight.size(1)}, gen, at::TensorOptions()).to(at::kBFloat16));
        }
        modules_.push_back(std::move(m));
      }
    }
    if (fuse_gate_up && scheme.weights->is_nvfp4()) {
      for (int64_t e = 0; e < experts; ++e) {
        std::vector<quant::TensorQuantizer*> pair = {find(e, "w1").weight_quantizer.get(),
                                                     find(e, "w3").weight_quantizer.get()};
        quant::fuse_global_scale(pair);
      }
    }
  }

  Module& find(int64_t expert, const std::string& proj) {
    const std::string name =
        fmt::format("model.layers.0.block_sparse_moe.experts.{}.{}", expert, proj);
    for (auto& m : modules_) {
      if (m.name == name) {
        return m;
      }
    }
    throw std::runtime_error("no module " + name);
  }
  std::vector<Module>& modules() { return modules_; }

  void add_all(Exporter& exporter) {
    for (auto& m : modules_) {
      exporter.add_quantized(m.name, m.weight, *m.weight_quantizer, m.input_quantizer, {});
    }
  }
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& m : modules_) {
      out.push_back(m.name);
    }
    return out;
  }

 private:
  quant::QuantScheme scheme_;
  std::vector<std::unique_ptr<quant::TensorQuantizer>> inputs_;
  std::vector<Module> modules_;
};

inline ExportOptions options_for(const fs::path& source,
                                 const fs::path& output,
                                 const std::string& scheme,
                                 ExportFormat format = ExportFormat::kCompressedTensors) {
  ExportOptions o;
  o.format = format;
  o.model_dir = source;
  o.output = output;
  o.scheme = quant::preset_scheme(scheme);
  o.scheme_name = scheme;
  return o;
}

// The high-precision tensors a Mixtral layer adds besides its experts.
inline void add_passthrough(Exporter& exporter) {
  exporter.add_tensor("model.layers.0.block_sparse_moe.gate.weight", random_weight(2, 128, 7));
  exporter.add_tensor("lm_head.weight", random_weight(16, 128, 8));
}

inline ExportSummary summary_for(const std::vector<std::string>& expected) {
  ExportSummary s;
  s.ignored_modules = {"model.layers.0.block_sparse_moe.gate", "lm_head"};
  s.expected_quantized = expected;
  return s;
}

}  // namespace moeq::exporting::testing

// The message of the moeq::Error the statements throw ("" and a test failure when none).
#define EXPORT_ERROR_OF(...)                        \
  [&]() -> std::string {                            \
    try {                                           \
      __VA_ARGS__;                                  \
    } catch (const ::moeq::Error& e) {              \
      return e.message();                           \
    }                                               \
    ADD_FAILURE() << #__VA_ARGS__ " did not throw"; \
    return {};                                      \
  }()
