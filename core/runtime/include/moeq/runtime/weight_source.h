// Where the runtime's weights come from. A model holds no weights of its own between layers: it
// asks a WeightSource for each parameter when the layer that owns it is loaded and drops it when
// the layer is released. The checkpoint reader (memory-mapped safetensors) is the usual source;
// tests use a map of tensors, and an instrumented source can count what is resident.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace moeq::io {
class HfConfig;
class SafetensorsCheckpoint;
}  // namespace moeq::io

namespace moeq::runtime {

class WeightSource {
 public:
  virtual ~WeightSource() = default;
  // The tensor stored under `name`, in its stored dtype, on the CPU (a tensor a DerivedSource
  // computes may come on the model's device). It may be a zero-copy view of a mapped file: the
  // caller must not write to it. An unknown name is an error naming it.
  virtual at::Tensor get(const std::string& name) = 0;
  // The model no longer holds `name` (its layer was released): a mapped source hands the pages
  // it read back to the operating system, so that a layer-by-layer run's resident memory stays
  // about one layer. Tensors got earlier stay valid. Nothing by default.
  virtual void release(const std::string& /*name*/) {}
  virtual bool has(const std::string& name) const = 0;
  // Every tensor name the source holds, sorted (for "tensors nothing claimed" reports).
  virtual std::vector<std::string> names() const = 0;
  // A short description for error messages ("model dir /path", "tensor map").
  virtual std::string describe() const = 0;
};

// Tensors held in memory (tests, checkpoints built in memory).
class TensorMapSource final : public WeightSource {
 public:
  TensorMapSource() = default;
  explicit TensorMapSource(std::map<std::string, at::Tensor> tensors);

  void set(const std::string& name, at::Tensor tensor);
  at::Tensor get(const std::string& name) override;
  bool has(const std::string& name) const override;
  std::vector<std::string> names() const override;
  std::string describe() const override { return "tensor map"; }

 private:
  std::map<std::string, at::Tensor> tensors_;
};

// A Hugging Face checkpoint on disk (model.safetensors, or shards with
// model.safetensors.index.json): get() returns zero-copy views of the mapped files.
class CheckpointSource final : public WeightSource {
 public:
  // A model directory, an index file, or one .safetensors file.
  explicit CheckpointSource(const std::filesystem::path& path);
  explicit CheckpointSource(std::shared_ptr<const io::SafetensorsCheckpoint> checkpoint,
                            std::string description);
  ~CheckpointSource() override;

  at::Tensor get(const std::string& name) override;
  void release(const std::string& name) override;
  bool has(const std::string& name) const override;
  std::vector<std::string> names() const override;
  std::string describe() const override { return description_; }
  const io::SafetensorsCheckpoint& checkpoint() const { return *checkpoint_; }

 private:
  std::shared_ptr<const io::SafetensorsCheckpoint> checkpoint_;
  std::string description_;
};

// Tensors computed from another source's: a packed source format dequantized as the model asks
// for it (GPT-OSS's MXFP4 `*_blocks` + `*_scales`, DeepSeek's FP8 weights with
// `weight_scale_inv`). names() lists each derived tensor in place of the stored ones it replaces,
// so a checkpoint written from this source holds the model's own tensors.
class DerivedSource final : public WeightSource {
 public:
  struct Rule {
    std::string name;                 // the tensor the model reads
    std::vector<std::string> inputs;  // the stored tensors it is computed from
    std::function<at::Tensor(const std::vector<at::Tensor>& inputs)> compute;
  };
  // `what`: how the tensors are derived, for descriptions ("MXFP4 dequantized").
  DerivedSource(std::shared_ptr<WeightSource> base, std::vector<Rule> rules, std::string what);

  at::Tensor get(const std::string& name) override;
  void release(const std::string& name) override;  // the stored inputs it was computed from
  bool has(const std::string& name) const override;
  std::vector<std::string> names() const override;
  std::string describe() const override;
  WeightSource& base() { return *base_; }

 private:
  std::shared_ptr<WeightSource> base_;
  std::map<std::string, Rule> rules_;
  std::map<std::string, std::string> replaced_;  // stored input -> the derived tensor
  std::string what_;
};

// An FP8 block-scaled source (DeepSeek-V3 and MiniMax-M2 as published): each `<m>.weight` stored
// as FP8 E4M3 with a float32 `<m>.weight_scale_inv` per block_rows x block_cols block is read as
// bf16, w = float(q) * scale_inv (transformers' FP8 dequantization). Only tensors with a
// `_scale_inv` beside them are derived; a source with none (a bf16 checkpoint) is returned as is.
// The FP8 codes and scales are moved to `device` and dequantized there (pass the model's compute
// device): a GPU run copies half the bytes and leaves the host's cores free, and the CUDA kernel
// equals the CPU reference bit for bit.
std::shared_ptr<WeightSource> dequantize_fp8_blocks(std::shared_ptr<WeightSource> source,
                                                    int64_t block_rows,
                                                    int64_t block_cols,
                                                    c10::Device device = c10::kCPU);
// As above with the block from config.json's quantization_config.weight_block_size ([rows, cols]),
// 128x128 when the config has none.
std::shared_ptr<WeightSource> dequantize_fp8_blocks(std::shared_ptr<WeightSource> source,
                                                    const io::HfConfig& config,
                                                    c10::Device device = c10::kCPU);

}  // namespace moeq::runtime
