// A whole file mapped read-only (mmap PROT_READ, MAP_SHARED). Tensors that view a mapping hold a
// shared_ptr to it, so the mapping lives as long as the last of them, whatever becomes of the
// reader that made it. Writing through such a view is a fault: clone a tensor before changing it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>

namespace moeq::io {

class MappedFile {
 public:
  // Maps the whole file; a moeq::Error names the file and the system error when it cannot.
  static std::shared_ptr<const MappedFile> open(const std::filesystem::path& path);

  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  uint64_t size() const { return size_; }
  const std::filesystem::path& path() const { return path_; }

 private:
  MappedFile(std::filesystem::path path, const std::byte* data, uint64_t size);

  std::filesystem::path path_;
  const std::byte* data_;
  uint64_t size_;
};

}  // namespace moeq::io
