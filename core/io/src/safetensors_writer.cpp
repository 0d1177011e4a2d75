#include "moeq/io/safetensors_writer.h"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <nlohmann/json.hpp>

#include "moeq/core/error.h"
#include "moeq/io/safetensors_reader.h"
#include "moeq/io/torch_dtype.h"

namespace moeq::io {

namespace fs = std::filesystem;

namespace {

// A file being written under a temporary name. Until commit(), destruction removes it.
class TemporaryFile {
 public:
  // what: how messages name the file ("shard 2 in 'out'", "'out/x.json'").
  TemporaryFile(fs::path path, std::string what) : path_(std::move(path)), what_(std::move(what)) {
    fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    MOEQ_CHECK(fd_ >= 0, "cannot create {} ('{}'): {}", what_, path_.string(),
               std::strerror(errno));
  }
  ~TemporaryFile() {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    if (!kept_) {
      ::unlink(path_.c_str());
    }
  }
  TemporaryFile(const TemporaryFile&) = delete;
  TemporaryFile& operator=(const TemporaryFile&) = delete;

  void write(const void* data, size_t size) {
    const char* bytes = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t done = ::write(fd_, bytes, size);
      if (done < 0 && errno == EINTR) {
        continue;
      }
      MOEQ_CHECK(done > 0, "cannot write {} ('{}'): {} after {} bytes; the file was removed", what_,
                 path_.string(), done < 0 ? std::strerror(errno) : "no progress", written_);
      bytes += done;
      size -= static_cast<size_t>(done);
      written_ += static_cast<uint64_t>(done);
    }
  }

  // Flushes to disk and closes; the file stays (under its temporary name) once this returns.
  void commit() {
    MOEQ_CHECK(::fsync(fd_) == 0, "cannot write {} ('{}'): fsync: {}; the file was removed", what_,
               path_.string(), std::strerror(errno));
    const int fd = fd_;
    fd_ = -1;
    MOEQ_CHECK(::close(fd) == 0, "cannot write {} ('{}'): close: {}; the file was removed", what_,
               path_.string(), std::strerror(errno));
    kept_ = true;
  }

 private:
  fs::path path_;
  std::string what_;
  int fd_ = -1;
  uint64_t written_ = 0;
  bool kept_ = false;
};

void rename_or_fail(const fs::path& from, const fs::path& to) {
  MOEQ_CHECK(::rename(from.c_str(), to.c_str()) == 0, "cannot rename '{}' to '{}': {}",
             from.string(), to.string(), std::strerror(errno));
}

// Makes the renames in a directory durable. Best effort: some file systems refuse fsync on one.
void sync_directory(const fs::path& directory) {
  const int fd = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

// A CPU, contiguous copy of the tensor that the writer owns (the caller may change or free its
// tensor once add() returns). Copies bytes, so it works for every dtype, float4 included.
at::Tensor owned_copy(const at::Tensor& tensor) {
  at::Tensor source = tensor.detach().resolve_conj().resolve_neg();
  if (!source.is_cpu()) {
    source = source.to(at::kCPU);
  }
  source = source.contiguous();
  if (source.storage().is_alias_of(tensor.storage())) {
    at::Tensor copy = at::empty(source.sizes(), source.options());
    std::memcpy(copy.data_ptr(), source.const_data_ptr(), source.nbytes());
    source = copy;
  }
  return source;
}

}  // namespace

void write_file_atomically(const fs::path& path, std::string_view bytes) {
  fs::path temporary = path;
  temporary.replace_filename("." + path.filename().string() + ".tmp");
  TemporaryFile file(temporary, fmt::format("'{}'", path.string()));
  file.write(bytes.data(), bytes.size());
  file.commit();
  try {
    rename_or_fail(temporary, path);
  } catch (...) {
    ::unlink(temporary.c_str());
    throw;
  }
}

SafetensorsWriter::SafetensorsWriter(fs::path directory, SafetensorsWriterOptions options)
    : directory_(std::move(directory)), options_(std::move(options)) {
  MOEQ_CHECK(options_.max_shard_bytes > 0, "safetensors writer: max_shard_bytes must be positive");
  std::error_code error;
  fs::create_directories(directory_, error);
  MOEQ_CHECK(!error, "cannot create output directory '{}': {}", directory_.string(),
             error.message());
}

SafetensorsWriter::~SafetensorsWriter() {
  if (!finished_ && !options_.keep_unfinished) {
    discard();
  }
}

void SafetensorsWriter::discard() noexcept {
  for (const Shard& shard : shards_) {
    ::unlink(shard.temporary.c_str());
  }
  for (const fs::path& path : finals_) {
    ::unlink(path.c_str());
  }
}

fs::path SafetensorsWriter::temporary_path(size_t shard) const {
  return directory_ / fmt::format(".{}-{:05}.safetensors.tmp", options_.prefix, shard + 1);
}

void SafetensorsWriter::add(const std::string& name, const at::Tensor& tensor) {
  MOEQ_CHECK(!finished_, "safetensors writer for '{}': add('{}') after finish()",
             directory_.string(), name);
  MOEQ_CHECK(tensor.defined(), "safetensors writer for '{}': tensor '{}' is undefined",
             directory_.string(), name);
  MOEQ_CHECK(!names_.contains(name), "safetensors writer for '{}': tensor '{}' was already added",
             directory_.string(), name);
  const DType dtype = to_dtype(tensor.scalar_type(), name);
  MOEQ_CHECK(dtype != DType::kF4 || tensor.dim() > 0,
             "safetensors writer: tensor '{}' is a 0-d float4_e2m1fn_x2 tensor, which safetensors "
             "cannot describe (F4 needs a last dimension to double)",
             name);
  const uint64_t nbytes = tensor.nbytes();
  if (pending_bytes_ > 0 && pending_bytes_ + nbytes > options_.max_shard_bytes) {
    flush();
  }
  pending_.push_back({name, dtype, header_shape(dtype, tensor.sizes()), owned_copy(tensor)});
  pending_bytes_ += nbytes;
  names_.insert(name);
}

void SafetensorsWriter::flush() {
  if (!pending_.empty()) {
    write_shard();
  }
}

uint64_t SafetensorsWriter::write_file(const fs::path& path,
                                       const std::string& what,
                                       std::vector<Pending*>& tensors) const {
  // The reference's order: DType descending (it lists dtypes by increasing alignment, so every
  // tensor stays aligned to its element size), then by name. Same tensors, same bytes as
  // safetensors' own save_file.
  std::sort(tensors.begin(), tensors.end(), [](const Pending* a, const Pending* b) {
    return a->dtype != b->dtype ? a->dtype > b->dtype : a->name < b->name;
  });

  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!options_.metadata.empty()) {
    header["__metadata__"] = options_.metadata;
  }
  uint64_t offset = 0;
  for (const Pending* tensor : tensors) {
    const uint64_t end = offset + tensor->data.nbytes();
    header[tensor->name] = {{"dtype", dtype_name(tensor->dtype)},
                            {"shape", tensor->shape},
                            {"data_offsets", {offset, end}}};
    offset = end;
  }
  std::string json = header.dump();
  json.resize((json.size() + 7) / 8 * 8, ' ');
  MOEQ_CHECK(json.size() <= kMaxHeaderSize,
             "safetensors writer for '{}': the header of {} would be {} bytes, over the "
             "format's limit of {}",
             directory_.string(), what, json.size(), kMaxHeaderSize);

  TemporaryFile file(path, fmt::format("{} in '{}'", what, directory_.string()));
  uint8_t length[8];
  for (int i = 0; i < 8; ++i) {
    length[i] = static_cast<uint8_t>(static_cast<uint64_t>(json.size()) >> (8 * i));
  }
  file.write(length, sizeof(length));
  file.write(json.data(), json.size());
  for (const Pending* tensor : tensors) {
    file.write(tensor->data.const_data_ptr(), tensor->data.nbytes());
  }
  file.commit();
  return offset;
}

void SafetensorsWriter::write_shard() {
  std::vector<Pending*> tensors;
  for (Pending& tensor : pending_) {
    tensors.push_back(&tensor);
  }
  Shard shard{temporary_path(shards_.size()), {}, 0};
  shard.tensor_bytes =
      write_file(shard.temporary, fmt::format("shard {}", shards_.size() + 1), tensors);
  for (const Pending* tensor : tensors) {
    shard.names.push_back(tensor->name);
  }
  shards_.push_back(std::move(shard));
  pending_.clear();
  pending_bytes_ = 0;
}

std::string SafetensorsWriter::checkpoint(const fs::path& spill) {
  MOEQ_CHECK(!finished_, "safetensors writer for '{}': checkpoint() after finish()",
             directory_.string());
  std::vector<Pending*> unsaved;
  for (Pending& tensor : pending_) {
    if (tensor.spill.empty()) {
      unsaved.push_back(&tensor);
    }
  }
  if (!unsaved.empty()) {
    write_file(spill, fmt::format("spill file '{}'", spill.filename().string()), unsaved);
    for (Pending* tensor : unsaved) {
      tensor->spill = spill;
    }
  }
  nlohmann::json state = {
      {"version", 1}, {"shards", nlohmann::json::array()}, {"pending", nlohmann::json::array()}};
  for (const Shard& shard : shards_) {
    state["shards"].push_back({{"file", shard.temporary.filename().string()},
                               {"names", shard.names},
                               {"tensor_bytes", shard.tensor_bytes},
                               {"file_bytes", fs::file_size(shard.temporary)}});
  }
  for (const Pending& tensor : pending_) {
    state["pending"].push_back({{"name", tensor.name}, {"spill", tensor.spill.string()}});
  }
  return state.dump();
}

void SafetensorsWriter::restore(std::string_view text) {
  MOEQ_CHECK(shards_.empty() && pending_.empty() && !finished_,
             "safetensors writer for '{}': restore() on a writer that already holds tensors",
             directory_.string());
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(text);
    for (const auto& record : state.at("shards")) {
      Shard shard{directory_ / record.at("file").get<std::string>(),
                  record.at("names").get<std::vector<std::string>>(),
                  record.at("tensor_bytes").get<uint64_t>()};
      const auto want = record.at("file_bytes").get<uint64_t>();
      std::error_code ec;
      const auto have = fs::file_size(shard.temporary, ec);
      MOEQ_CHECK(!ec && have == want,
                 "cannot resume the checkpoint in '{}': shard '{}' {} (the journal recorded {} "
                 "bytes)",
                 directory_.string(), shard.temporary.filename().string(),
                 ec ? "is missing" : fmt::format("has {} bytes", have), want);
      names_.insert(shard.names.begin(), shard.names.end());
      shards_.push_back(std::move(shard));
    }
    std::map<fs::path, std::unique_ptr<SafetensorsFile>> spills;
    for (const auto& record : state.at("pending")) {
      const auto name = record.at("name").get<std::string>();
      const fs::path spill = record.at("spill").get<std::string>();
      MOEQ_CHECK(!spill.empty(),
                 "cannot resume the checkpoint in '{}': pending tensor '{}' was "
                 "never saved",
                 directory_.string(), name);
      auto& file = spills[spill];
      if (!file) {
        MOEQ_CHECK(fs::exists(spill),
                   "cannot resume the checkpoint in '{}': spill file '{}' is "
                   "missing",
                   directory_.string(), spill.string());
        file = std::make_unique<SafetensorsFile>(spill);
      }
      const at::Tensor tensor = file->tensor(name);
      const DType dtype = file->entry(name).dtype;
      pending_.push_back({name, dtype, file->entry(name).shape, owned_copy(tensor), spill});
      pending_bytes_ += tensor.nbytes();
      names_.insert(name);
    }
  } catch (const nlohmann::json::exception& e) {
    MOEQ_CHECK(false, "cannot resume the checkpoint in '{}': malformed writer state ({})",
               directory_.string(), e.what());
  }
}

std::set<fs::path> SafetensorsWriter::spill_files() const {
  std::set<fs::path> files;
  for (const Pending& tensor : pending_) {
    if (!tensor.spill.empty()) {
      files.insert(tensor.spill);
    }
  }
  return files;
}

std::vector<fs::path> SafetensorsWriter::finish() {
  MOEQ_CHECK(!finished_, "safetensors writer for '{}': finish() called twice", directory_.string());
  flush();
  if (shards_.empty()) {
    write_shard();  // no tensors at all: still a valid, empty checkpoint
  }

  const size_t count = shards_.size();
  std::vector<fs::path> paths;
  nlohmann::json weight_map = nlohmann::json::object();
  uint64_t total_size = 0;
  for (size_t i = 0; i < count; ++i) {
    const std::string file_name =
        count == 1 ? fmt::format("{}.safetensors", options_.prefix)
                   : fmt::format("{}-{:05}-of-{:05}.safetensors", options_.prefix, i + 1, count);
    paths.push_back(directory_ / file_name);
    rename_or_fail(shards_[i].temporary, paths.back());
    finals_.push_back(paths.back());
    for (const std::string& name : shards_[i].names) {
      weight_map[name] = file_name;
    }
    total_size += shards_[i].tensor_bytes;
  }
  if (count > 1) {
    const nlohmann::json index = {{"metadata", {{"total_size", total_size}}},
                                  {"weight_map", std::move(weight_map)}};
    paths.push_back(directory_ / fmt::format("{}.safetensors.index.json", options_.prefix));
    write_file_atomically(paths.back(), index.dump(2) + "\n");
  }
  // Shards an interrupted earlier writer left beyond this one's (a resumed run's directory).
  std::error_code ec;
  const std::string stale_prefix = "." + options_.prefix + "-";
  for (const auto& entry : fs::directory_iterator(directory_, ec)) {
    const auto name = entry.path().filename().string();
    if (name.starts_with(stale_prefix) && name.ends_with(".safetensors.tmp")) {
      fs::remove(entry.path(), ec);
    }
  }
  sync_directory(directory_);
  finished_ = true;
  return paths;
}

std::vector<fs::path> save_safetensors(const fs::path& directory,
                                       const std::map<std::string, at::Tensor>& tensors,
                                       const SafetensorsWriterOptions& options) {
  SafetensorsWriter writer(directory, options);
  for (const auto& [name, tensor] : tensors) {
    writer.add(name, tensor);
  }
  return writer.finish();
}

}  // namespace moeq::io
