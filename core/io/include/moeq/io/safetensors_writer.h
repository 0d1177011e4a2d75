// Writing safetensors checkpoints in the Hugging Face layout, streamed: tensors are added one at a
// time (the pipeline adds a layer's tensors and releases them) and a shard is written as soon as
// the next tensor would take it past the size limit, so memory holds at most one shard.
//
// Shards are written under hidden temporary names and get their final names only in finish():
// model.safetensors when there is one shard, otherwise model-00001-of-0000N.safetensors and
// model.safetensors.index.json (written last, also through a temporary name). A failed write
// removes its temporary file and throws a moeq::Error naming the file and the system error; a
// writer destroyed before finish() removes everything it wrote. Nothing ever appears under a
// final name half-written. Write into a new directory: the writer does not remove checkpoints
// already there.
//
// Output is deterministic: the same tensors added in the same order give the same bytes. A shard
// is laid out as the reference implementation lays out a file: tensors by dtype in decreasing
// alignment (so each is aligned to its element size), then by name; the header is padded with
// spaces to a multiple of 8 bytes.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "moeq/io/safetensors_header.h"

namespace moeq::io {

struct SafetensorsWriterOptions {
  // A shard is closed before a tensor that would take its tensor bytes past this; a tensor larger
  // than the limit gets a shard of its own. Hugging Face's default is 5 GB.
  uint64_t max_shard_bytes = 5'000'000'000;
  // Written as every shard's "__metadata__".
  std::map<std::string, std::string> metadata = {{"format", "pt"}};
  // File names: <prefix>.safetensors, <prefix>-00001-of-00002.safetensors,
  // <prefix>.safetensors.index.json.
  std::string prefix = "model";
  // Keep the shards written so far when the writer is destroyed before finish() (a resumable
  // run's partial checkpoint); by default they are removed.
  bool keep_unfinished = false;
};

class SafetensorsWriter {
 public:
  // Creates the directory when it does not exist.
  explicit SafetensorsWriter(std::filesystem::path directory,
                             SafetensorsWriterOptions options = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // Copies the tensor (from any device) into the pending shard, writing the pending shard first
  // when this tensor would take it past the limit.
  void add(const std::string& name, const at::Tensor& tensor);
  // Writes the pending tensors as a shard now (nothing when none are pending).
  void flush();
  // Writes what is pending, gives the shards their final names and writes the index. Returns
  // the final paths: the shards, then the index when there is one.
  std::vector<std::filesystem::path> finish();

  uint64_t pending_bytes() const { return pending_bytes_; }
  size_t shards_written() const { return shards_.size(); }

  // ---- resuming (the pipeline's journal) ----
  // Saves the pending tensors that no earlier checkpoint saved into `spill` (a safetensors file,
  // written durably) and returns the writer's state as JSON text: the shards written so far and
  // which spill file holds each pending tensor. A fresh writer over the same directory given that
  // state by restore() continues exactly there: the same tensors added afterwards give the same
  // bytes as a writer that was never interrupted.
  std::string checkpoint(const std::filesystem::path& spill);
  // Restores checkpoint()'s state. Every shard and spill file it names must exist with the size
  // it had; a missing or truncated one is an error naming it.
  void restore(std::string_view state);
  // The spill files the pending tensors are in (those a checkpoint names but no longer needs
  // may be removed once the journal recording it is durable).
  std::set<std::filesystem::path> spill_files() const;

 private:
  struct Pending {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;   // header shape
    at::Tensor data;              // CPU, contiguous, owned by the writer
    std::filesystem::path spill;  // the spill file holding it since a checkpoint, if any
  };
  struct Shard {
    std::filesystem::path temporary;
    std::vector<std::string> names;
    uint64_t tensor_bytes = 0;
  };

  std::filesystem::path temporary_path(size_t shard) const;
  void write_shard();  // the pending tensors, possibly none, as the next shard
  // Writes `tensors` (sorted here) as one safetensors file; returns its tensor bytes.
  uint64_t write_file(const std::filesystem::path& path,
                      const std::string& what,
                      std::vector<Pending*>& tensors) const;
  void discard() noexcept;

  std::filesystem::path directory_;
  SafetensorsWriterOptions options_;
  std::vector<Pending> pending_;
  uint64_t pending_bytes_ = 0;
  std::vector<Shard> shards_;
  std::set<std::string, std::less<>> names_;
  std::vector<std::filesystem::path> finals_;  // renamed so far (removed again on failure)
  bool finished_ = false;
};

// Writes tensors to a directory in one go (the writer above, in name order).
std::vector<std::filesystem::path> save_safetensors(
    const std::filesystem::path& directory,
    const std::map<std::string, at::Tensor>& tensors,
    const SafetensorsWriterOptions& options = {});

// Writes bytes to path through a temporary file in the same directory, renamed when complete.
void write_file_atomically(const std::filesystem::path& path, std::string_view bytes);

}  // namespace moeq::io
