// Exporters: the pipeline hands each layer's tensors to an exporter as soon as the layer is
// quantized, and the exporter streams them into a checkpoint that serving engines load:
// compressed-tensors (vLLM, SGLang, transformers) or ModelOpt's unified HF format (TensorRT-LLM,
// vLLM, SGLang). The checkpoint is built under a temporary name next to the output and renamed
// when finish() succeeds; on any error (or when the exporter is destroyed without finish()) the
// temporary directory is removed and nothing under the final name changes.
#pragma once

#include <moeq/quant/scheme.h>
#include <moeq/quant/tensor_quantizer.h>

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace moeq::exporting {

enum class ExportFormat { kCompressedTensors, kModelOpt };

// "compressed-tensors", "modelopt".
std::string_view to_string(ExportFormat format);
ExportFormat parse_export_format(std::string_view text);

struct ExportOptions {
  ExportFormat format = ExportFormat::kCompressedTensors;
  std::filesystem::path model_dir;  // the source checkpoint: config.json, tokenizer files ...
  std::filesystem::path output;     // the final directory; must not exist unless overwrite
  bool overwrite = false;
  int64_t shard_size = int64_t{5} << 30;  // bytes per safetensors shard
  quant::QuantScheme scheme;              // the scheme every quantized module uses
  std::string scheme_name;                // "NVFP4", for metadata
  // Resumable: the checkpoint is built in a partial directory with a fixed name next to the
  // output (".<name>.moeq-partial"), kept when the run stops before finish(), with a journal
  // folder in it (removed by finish()). An existing partial directory is an error unless
  // `resume` (continue it: the caller restores the journal's state) or `restart` (discard it).
  bool resumable = false;
  bool resume = false;
  bool restart = false;
};

// What the pipeline knows at the end.
struct ExportSummary {
  // Linear modules left in high precision (routers, shared-expert gates, lm_head, ignored
  // modules), written to quantization_config's `ignore` / hf_quant_config's `exclude_modules`.
  std::vector<std::string> ignored_modules;
  // Embedding modules ("model.embed_tokens"): written as is by both exporters; ModelOpt also
  // lists them in exclude_modules (its QuantEmbedding has disabled quantizers), compressed-tensors
  // does not (it targets Linear only).
  std::vector<std::string> unquantized_embeddings;
  // Modules that must have been quantized (every routed expert's projections): finish() fails
  // naming the first one that was not.
  std::vector<std::string> expected_quantized;
  // Extra key/values for the safetensors metadata and the config (moeq version, recipe).
  std::vector<std::pair<std::string, std::string>> metadata;
};

class Exporter {
 public:
  virtual ~Exporter();

  // A quantized Linear: `module` is its checkpoint prefix ("model.layers.0.mlp.experts.3.w1"),
  // `weight` its high-precision weight [out, in] (the source dtype), `weight_quantizer` holds the
  // calibrated statistics, `input_quantizer` the shared input statistics (nullptr when the
  // scheme quantizes no activations). `bias` is written unquantized when defined.
  virtual void add_quantized(const std::string& module,
                             const at::Tensor& weight,
                             quant::TensorQuantizer& weight_quantizer,
                             quant::TensorQuantizer* input_quantizer,
                             const at::Tensor& bias) = 0;
  // A tensor written as is (norms, embeddings, routers, ignored modules), under `name`.
  virtual void add_tensor(const std::string& name, const at::Tensor& tensor) = 0;
  // Checks the invariants over everything added (gate/up share NVFP4 global scales, a block's
  // experts share input scales, engine constraints), writes the index, config.json with the
  // quantization config, the copied side files, and renames into place. Returns the output.
  virtual std::filesystem::path finish(const ExportSummary& summary) = 0;
  // Bytes of tensor data written so far.
  virtual int64_t bytes_written() const = 0;

  // ---- resumable exports ----
  // The journal folder inside the partial checkpoint; empty unless resumable.
  virtual std::filesystem::path journal_directory() const = 0;
  // True when a resumable exporter found an earlier run's partial checkpoint (and `resume`).
  virtual bool resuming() const = 0;
  // Saves what a resumed run needs to continue from this point (the pending tensors, the shards
  // written, the shared scales seen) under the journal folder, as files named with `tag`;
  // returns the state as JSON text, for the caller's journal.
  virtual std::string checkpoint(const std::string& tag) = 0;
  // Continues from checkpoint()'s state (a fresh exporter with `resume`).
  virtual void restore(std::string_view state) = 0;
  // Removes the journal files the last checkpoint() no longer needs. Call once the journal that
  // records that checkpoint is durable: until then the earlier state must stay restorable.
  virtual void prune() = 0;
};

std::unique_ptr<Exporter> make_exporter(const ExportOptions& options);

}  // namespace moeq::exporting
