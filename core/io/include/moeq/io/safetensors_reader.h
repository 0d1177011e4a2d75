// Reading safetensors checkpoints: one file (SafetensorsFile) or a Hugging Face checkpoint
// directory, sharded with model.safetensors.index.json or whole in model.safetensors
// (SafetensorsCheckpoint).
//
// Opening reads and validates headers only (pread); names, dtypes, shapes and metadata need no
// mapping. A file's data is mapped on its first tensor() call. tensor() returns a zero-copy view
// of the mapping, which stays mapped while any view of it lives, after the reader is gone too.
// The mapping is read-only: clone a view before changing it in place. A tensor whose bytes are
// not aligned to its element size (possible in files from other writers) is copied instead.
#pragma once

#include <ATen/ATen.h>

#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "moeq/io/mapped_file.h"
#include "moeq/io/safetensors_header.h"

namespace moeq::io {

class SafetensorsFile {
 public:
  explicit SafetensorsFile(std::filesystem::path path);

  const std::filesystem::path& path() const { return path_; }
  const SafetensorsHeader& header() const { return header_; }
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }

  // Names in file (offset) order.
  std::vector<std::string> names() const;
  bool contains(std::string_view name) const { return header_.find(name) != nullptr; }
  // The header entry of a tensor (dtype, shape, bytes; no data is touched); a moeq::Error naming
  // the file when it is absent.
  const TensorEntry& entry(std::string_view name) const;

  // A view of the mapped bytes (CPU, read-only memory); see the file comment.
  at::Tensor tensor(std::string_view name) const;
  // Takes the tensor's mapped pages out of the resident set (MappedFile::drop_pages); views of
  // it stay valid. Nothing happens when the file was never mapped.
  void drop_pages(std::string_view name) const;

 private:
  std::shared_ptr<const MappedFile> mapping() const;

  std::filesystem::path path_;
  uint64_t file_size_ = 0;
  SafetensorsHeader header_;
  mutable std::mutex mutex_;
  mutable std::shared_ptr<const MappedFile> mapping_;
};

class SafetensorsCheckpoint {
 public:
  // path: a directory holding model.safetensors.index.json or model.safetensors, an index file,
  // or a single .safetensors file.
  explicit SafetensorsCheckpoint(const std::filesystem::path& path);

  // Sorted by name.
  const std::vector<std::string>& names() const { return names_; }
  bool contains(std::string_view name) const { return where_.find(name) != where_.end(); }
  // The header entry (dtype, shape, bytes) from the shard holding the tensor.
  const TensorEntry& entry(std::string_view name) const { return file_of(name).entry(name); }

  // Zero-copy view (see the file comment).
  at::Tensor tensor(std::string_view name) const;
  // A copy on the device, converted to dtype when given.
  at::Tensor load(std::string_view name,
                  at::Device device,
                  std::optional<at::ScalarType> dtype = std::nullopt) const;

  // The shard holding a tensor.
  const SafetensorsFile& file_of(std::string_view name) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }
  // The index file, empty for a single file.
  const std::filesystem::path& index_path() const { return index_path_; }

 private:
  std::filesystem::path index_path_;
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, size_t, std::less<>> where_;  // tensor -> position in files_
  std::vector<std::string> names_;
};

// The index file name of a sharded Hugging Face checkpoint, and the single-file name.
inline constexpr std::string_view kIndexFileName = "model.safetensors.index.json";
inline constexpr std::string_view kSingleFileName = "model.safetensors";

}  // namespace moeq::io
