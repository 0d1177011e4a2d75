#include "moeq/io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "moeq/core/error.h"

namespace moeq::io {

std::shared_ptr<const MappedFile> MappedFile::open(const std::filesystem::path& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  MOEQ_CHECK(fd >= 0, "cannot open '{}': {}", path.string(), std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int error = errno;
    ::close(fd);
    MOEQ_FAIL("cannot stat '{}': {}", path.string(), std::strerror(error));
  }
  const auto size = static_cast<uint64_t>(st.st_size);
  void* data = nullptr;
  if (size > 0) {  // mmap rejects a length of 0; an empty file maps to nothing
    data = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
    if (data == MAP_FAILED) {
      const int error = errno;
      ::close(fd);
      MOEQ_FAIL("cannot map '{}' ({} bytes): {}", path.string(), size, std::strerror(error));
    }
  }
  ::close(fd);  // the mapping keeps the file open
  return std::shared_ptr<const MappedFile>(
      new MappedFile(path, static_cast<const std::byte*>(data), size));
}

MappedFile::MappedFile(std::filesystem::path path, const std::byte* data, uint64_t size)
    : path_(std::move(path)), data_(data), size_(size) {}

void MappedFile::drop_pages(uint64_t offset, uint64_t length) const {
  if (data_ == nullptr || length == 0 || offset >= size_) {
    return;
  }
  const auto page = static_cast<uint64_t>(::sysconf(_SC_PAGESIZE));
  const uint64_t begin = offset / page * page;
  const uint64_t end = std::min(offset + length, size_);
  // Only advice: a failure leaves the pages resident, which is what not calling it does.
  ::madvise(const_cast<std::byte*>(data_) + begin, end - begin, MADV_DONTNEED);
}

MappedFile::~MappedFile() {
  if (data_ != nullptr) {
    ::munmap(const_cast<std::byte*>(data_), size_);
  }
}

}  // namespace moeq::io
