// Calibration and evaluation tokens: token-id files (JSONL, safetensors) and plain text for
// models whose tokenizer moeq can run (a byte-level vocabulary). Documents are concatenated
// (text documents get the BOS token first) and cut into windows of seq_len tokens, as
// llm-compressor and ModelOpt build calibration sets; `samples` windows are picked by a seeded
// shuffle that is the same on every machine, then grouped into batches.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace moeq::pipeline {

// Text -> token ids, for text calibration files.
class TextTokenizer {
 public:
  virtual ~TextTokenizer() = default;
  virtual std::vector<int64_t> encode(std::string_view text) const = 0;
  virtual std::string describe() const = 0;
};

// ids 0-255 are the bytes of the UTF-8 text (moeq_tokenizer.json {"type": "bytes", ...}).
class ByteTokenizer final : public TextTokenizer {
 public:
  std::vector<int64_t> encode(std::string_view text) const override;
  std::string describe() const override { return "byte-level (moeq_tokenizer.json)"; }
};

// The model directory's tokenizer moeq can run, or nullptr (token-id files still work).
std::unique_ptr<TextTokenizer> find_tokenizer(const std::filesystem::path& model_dir);

struct CalibrationDataOptions {
  std::filesystem::path path;
  std::string format = "auto";  // auto (by extension), jsonl, safetensors, text
  int64_t samples = 512;
  int64_t seq_len = 2048;
  int64_t batch_size = 8;
  int64_t seed = 0;
  int64_t vocab_size = 0;               // ids must be in [0, vocab_size); 0: unchecked
  std::optional<int64_t> bos_token_id;  // prepended to each text document
};

struct CalibrationData {
  std::vector<at::Tensor> batches;  // input_ids [b, seq_len] int64; the last may be smaller
  int64_t samples = 0;              // windows used
  int64_t windows = 0;              // windows available
  int64_t documents = 0;
  int64_t tokens = 0;  // tokens read
};

// Errors name the file and the values: a missing or empty file, a malformed JSONL line
// (file:line), a tensor of the wrong dtype or rank, ids outside the vocabulary, fewer tokens than
// one window, text without a tokenizer.
CalibrationData load_calibration_data(const CalibrationDataOptions& options,
                                      const TextTokenizer* tokenizer);

}  // namespace moeq::pipeline
