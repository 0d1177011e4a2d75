// Torch ops over the checkpoint I/O, so Python reaches it with torch.ops.load_library (the
// conformance tests compare it with the safetensors package):
//   torch.ops.moeq.load_safetensors(path) -> {name: tensor}   (a file, index or directory)
//   torch.ops.moeq.save_safetensors(tensors, directory, max_shard_bytes, metadata) -> [paths]
#include <torch/library.h>

#include "moeq/core/error.h"
#include "moeq/io/safetensors_reader.h"
#include "moeq/io/safetensors_writer.h"

namespace moeq::io {
namespace {

c10::Dict<std::string, at::Tensor> load_safetensors_op(const std::string& path) {
  const SafetensorsCheckpoint checkpoint(path);
  c10::Dict<std::string, at::Tensor> result;
  for (const std::string& name : checkpoint.names()) {
    result.insert(name, checkpoint.tensor(name));
  }
  return result;
}

std::vector<std::string> save_safetensors_op(
    const c10::Dict<std::string, at::Tensor>& tensors,
    const std::string& directory,
    int64_t max_shard_bytes,
    const std::optional<c10::Dict<std::string, std::string>>& metadata) {
  MOEQ_CHECK(max_shard_bytes > 0, "save_safetensors: max_shard_bytes must be positive, got {}",
             max_shard_bytes);
  SafetensorsWriterOptions options;
  options.max_shard_bytes = static_cast<uint64_t>(max_shard_bytes);
  if (metadata) {
    options.metadata.clear();
    for (const auto& item : *metadata) {
      options.metadata.emplace(item.key(), item.value());
    }
  }
  std::map<std::string, at::Tensor> ordered;
  for (const auto& item : tensors) {
    ordered.emplace(item.key(), item.value());
  }
  std::vector<std::string> paths;
  for (const auto& path : save_safetensors(directory, ordered, options)) {
    paths.push_back(path.string());
  }
  return paths;
}

}  // namespace
}  // namespace moeq::io

TORCH_LIBRARY_FRAGMENT(moeq, m) {
  m.def("load_safetensors(str path) -> Dict(str, Tensor)", &moeq::io::load_safetensors_op);
  m.def(
      "save_safetensors(Dict(str, Tensor) tensors, str directory, "
      "int max_shard_bytes=5000000000, Dict(str, str)? metadata=None) -> str[]",
      &moeq::io::save_safetensors_op);
}
