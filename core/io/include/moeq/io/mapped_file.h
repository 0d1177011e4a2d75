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

  // Takes the pages of [offset, offset + length) out of the process's resident set (madvise
  // MADV_DONTNEED, rounded out to whole pages): a layer-by-layer reader calls it for a layer it
  // has released, so its resident memory stays about one layer instead of growing to the whole
  // file. Views of those bytes stay valid: the mapping is read-only and shared, so a page touched
  // again is read back from the page cache (or the file).
  void drop_pages(uint64_t offset, uint64_t length) const;

 private:
  MappedFile(std::filesystem::path path, const std::byte* data, uint64_t size);

  std::filesystem::path path_;
  const std::byte* data_;
  uint64_t size_;
};

}  // namespace moeq::io
