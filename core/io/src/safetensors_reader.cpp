#include "moeq/io/safetensors_reader.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "moeq/core/error.h"
#include "moeq/core/log.h"
#include "moeq/io/torch_dtype.h"

namespace moeq::io {

namespace fs = std::filesystem;

namespace {

// Reads exactly size bytes at offset, or fails naming the file.
void pread_all(int fd, const fs::path& path, char* out, uint64_t size, uint64_t offset) {
  while (size > 0) {
    const ssize_t got = ::pread(fd, out, size, static_cast<off_t>(offset));
    if (got < 0 && errno == EINTR) {
      continue;
    }
    MOEQ_CHECK(got > 0, "cannot read '{}' at offset {}: {}", path.string(), offset,
               got < 0 ? std::strerror(errno) : "unexpected end of file");
    out += got;
    size -= static_cast<uint64_t>(got);
    offset += static_cast<uint64_t>(got);
  }
}

class Fd {
 public:
  explicit Fd(const fs::path& path) : fd_(::open(path.c_str(), O_RDONLY | O_CLOEXEC)) {
    MOEQ_CHECK(fd_ >= 0, "cannot open '{}': {}", path.string(), std::strerror(errno));
  }
  ~Fd() { ::close(fd_); }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  MOEQ_CHECK(in.good(), "cannot open '{}': {}", path.string(), std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

}  // namespace

// ---- SafetensorsFile ----------------------------------------------------------------------------

SafetensorsFile::SafetensorsFile(fs::path path) : path_(std::move(path)) {
  const Fd fd(path_);
  struct stat st {};
  MOEQ_CHECK(::fstat(fd.get(), &st) == 0, "cannot stat '{}': {}", path_.string(),
             std::strerror(errno));
  MOEQ_CHECK(S_ISREG(st.st_mode), "'{}' is not a regular file", path_.string());
  file_size_ = static_cast<uint64_t>(st.st_size);

  std::string first(8, '\0');
  pread_all(fd.get(), path_, first.data(), std::min<uint64_t>(8, file_size_), 0);
  const uint64_t length = parse_header_length(first, file_size_, path_.string());
  std::string json(length, '\0');
  pread_all(fd.get(), path_, json.data(), length, 8);
  header_ = parse_header(json, file_size_, path_.string());
}

std::vector<std::string> SafetensorsFile::names() const {
  std::vector<std::string> names;
  names.reserve(header_.tensors.size());
  for (const TensorEntry& entry : header_.tensors) {
    names.push_back(entry.name);
  }
  return names;
}

const TensorEntry& SafetensorsFile::entry(std::string_view name) const {
  const TensorEntry* entry = header_.find(name);
  MOEQ_CHECK(entry != nullptr, "safetensors '{}' has no tensor '{}'", path_.string(), name);
  return *entry;
}

std::shared_ptr<const MappedFile> SafetensorsFile::mapping() const {
  const std::lock_guard<std::mutex> lock(mutex_);
  if (!mapping_) {
    auto mapped = MappedFile::open(path_);
    // The header was validated against the size at open; a file changed since is not that file.
    MOEQ_CHECK(mapped->size() == file_size_,
               "safetensors '{}' changed since it was opened: {} bytes then, {} now",
               path_.string(), file_size_, mapped->size());
    mapping_ = std::move(mapped);
  }
  return mapping_;
}

at::Tensor SafetensorsFile::tensor(std::string_view name) const {
  const TensorEntry& found = entry(name);
  const auto type = to_scalar_type(found.dtype);
  MOEQ_CHECK(type.has_value(),
             "safetensors '{}': tensor '{}' has dtype {}, which torch cannot hold", path_.string(),
             found.name, dtype_name(found.dtype));
  std::vector<int64_t> shape;
  try {
    shape = torch_shape(found.dtype, found.shape, found.name);
  } catch (const Error& e) {
    throw e.with_context(fmt::format("reading '{}'", path_.string()));
  }
  const auto options = at::TensorOptions().dtype(*type);
  if (found.nbytes() == 0) {
    return at::empty(shape, options);
  }

  std::shared_ptr<const MappedFile> mapped = mapping();
  const std::byte* bytes = mapped->data() + header_.data_offset() + found.begin;
  if (reinterpret_cast<uintptr_t>(bytes) % c10::elementSize(*type) != 0) {
    at::Tensor copy = at::empty(shape, options);
    std::memcpy(copy.data_ptr(), bytes, found.nbytes());
    return copy;
  }
  // The deleter owns a reference to the mapping: the view keeps it alive.
  return at::from_blob(
      const_cast<std::byte*>(bytes), shape, [mapped](void*) {}, options);
}

void SafetensorsFile::drop_pages(std::string_view name) const {
  const TensorEntry& found = entry(name);
  std::shared_ptr<const MappedFile> mapped;
  {
    const std::lock_guard<std::mutex> lock(mutex_);
    mapped = mapping_;
  }
  if (mapped) {
    mapped->drop_pages(header_.data_offset() + found.begin, found.nbytes());
  }
}

// ---- SafetensorsCheckpoint ----------------------------------------------------------------------

SafetensorsCheckpoint::SafetensorsCheckpoint(const fs::path& path) {
  fs::path single;
  if (fs::is_directory(path)) {
    if (fs::exists(path / kIndexFileName)) {
      index_path_ = path / kIndexFileName;
    } else {
      single = path / kSingleFileName;
      MOEQ_CHECK(fs::exists(single), "checkpoint directory '{}' holds neither {} nor {}",
                 path.string(), kIndexFileName, kSingleFileName);
    }
  } else if (path.extension() == ".json") {
    index_path_ = path;
  } else {
    single = path;
  }

  if (!single.empty()) {
    files_.push_back(std::make_unique<SafetensorsFile>(single));
    for (const TensorEntry& entry : files_.front()->header().tensors) {
      where_.emplace(entry.name, 0);
    }
  } else {
    const std::string index = index_path_.string();
    nlohmann::json root;
    try {
      root = nlohmann::json::parse(read_text(index_path_));
    } catch (const nlohmann::json::exception& e) {
      MOEQ_FAIL("index '{}' is not valid JSON: {}", index, e.what());
    }
    MOEQ_CHECK(root.is_object() && root.contains("weight_map") && root["weight_map"].is_object(),
               "index '{}' has no \"weight_map\" object", index);

    // Shards in name order, each opened once.
    std::map<std::string, std::vector<std::string>> by_shard;
    for (const auto& [name, shard] : root["weight_map"].items()) {
      MOEQ_CHECK(shard.is_string(), "index '{}': weight_map['{}'] is {}, expected a file name",
                 index, name, shard.dump());
      const auto& file = shard.get_ref<const std::string&>();
      MOEQ_CHECK(
          !file.empty() && file.find('/') == std::string::npos && file != "." && file != "..",
          "index '{}': weight_map['{}'] is '{}', expected a file name in the index's "
          "directory",
          index, name, file);
      by_shard[file].push_back(name);
    }
    for (const auto& [shard, names] : by_shard) {
      const fs::path shard_path = index_path_.parent_path() / shard;
      MOEQ_CHECK(fs::exists(shard_path),
                 "index '{}' lists shard '{}' (for '{}' and {} more tensors), which does not exist",
                 index, shard, names.front(), names.size() - 1);
      files_.push_back(std::make_unique<SafetensorsFile>(shard_path));
      const SafetensorsFile& file = *files_.back();
      for (const std::string& name : names) {
        MOEQ_CHECK(file.contains(name), "index '{}' puts tensor '{}' in shard '{}', which lacks it",
                   index, name, shard_path.string());
        where_.emplace(name, files_.size() - 1);
      }
      if (file.header().tensors.size() > names.size()) {
        for (const TensorEntry& entry : file.header().tensors) {
          if (!std::binary_search(names.begin(), names.end(), entry.name)) {  // names: sorted
            logger().warn(
                "shard '{}' holds {} tensors the index does not list (first: '{}'); "
                "they are ignored",
                shard_path.string(), file.header().tensors.size() - names.size(), entry.name);
            break;
          }
        }
      }
    }
  }
  names_.reserve(where_.size());
  for (const auto& [name, position] : where_) {
    names_.push_back(name);
  }
}

const SafetensorsFile& SafetensorsCheckpoint::file_of(std::string_view name) const {
  const auto it = where_.find(name);
  if (it == where_.end()) {
    MOEQ_FAIL("checkpoint '{}' has no tensor '{}'",
              (index_path_.empty() ? files_.front()->path() : index_path_).string(), name);
  }
  return *files_[it->second];
}

at::Tensor SafetensorsCheckpoint::tensor(std::string_view name) const {
  return file_of(name).tensor(name);
}

at::Tensor SafetensorsCheckpoint::load(std::string_view name,
                                       at::Device device,
                                       std::optional<at::ScalarType> dtype) const {
  const at::Tensor view = tensor(name);
  return view.to(device, dtype.value_or(view.scalar_type()), /*non_blocking=*/false,
                 /*copy=*/true);
}

}  // namespace moeq::io
