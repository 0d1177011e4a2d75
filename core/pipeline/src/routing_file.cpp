// --save-routing's file (routing_file.h).
#include "moeq/pipeline/routing_file.h"

#include <moeq/core/error.h>
#include <moeq/io/safetensors_writer.h>

#include <fmt/format.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <string>
#include <utility>
#include <vector>

namespace moeq::pipeline {

namespace fs = std::filesystem;

void check_routing_file(const fs::path& file, std::string_view flag) {
  MOEQ_CHECK(file.extension() == ".safetensors" && !file.stem().empty(),
             "{} '{}': the file name must end in .safetensors", flag, file.string());
  MOEQ_CHECK(!fs::is_directory(file), "{} '{}' is a directory; name a .safetensors file", flag,
             file.string());
  const fs::path parent = fs::absolute(file).parent_path();
  // Walks up to the first existing ancestor: a regular file there would make create_directories
  // fail with a less helpful message.
  for (fs::path p = parent; !p.empty(); p = p.parent_path()) {
    if (fs::exists(p)) {
      MOEQ_CHECK(fs::is_directory(p), "{} '{}': '{}' is not a directory", flag, file.string(),
                 p.string());
      break;
    }
    if (p == p.parent_path()) {
      break;
    }
  }
  std::error_code error;
  fs::create_directories(parent, error);
  MOEQ_CHECK(!error, "{} '{}': cannot create the directory '{}': {}", flag, file.string(),
             parent.string(), error.message());
  MOEQ_CHECK(::access(parent.c_str(), W_OK) == 0, "{} '{}': cannot write in '{}': {}", flag,
             file.string(), parent.string(), std::strerror(errno));
}

void write_routing_file(const fs::path& file,
                        const PipelineResult& result,
                        const at::Tensor& input_ids) {
  io::SafetensorsWriterOptions options;
  options.prefix = file.stem().string();
  options.max_shard_bytes = std::numeric_limits<uint64_t>::max();  // one file, whatever its size
  options.metadata = {{"format", "pt"}, {"moeq_routing", "1"}};
  const auto tokens = input_ids.numel();
  std::vector<std::pair<std::string, const RoutingResult*>> moe_layers;
  for (const auto& layer : result.layers) {
    MOEQ_CHECK(layer.routing.size() <= 1,
               "layer {} has {} MoE blocks; the routing file keys the choices by layer",
               layer.index, layer.routing.size());
    if (layer.routing.empty()) {
      continue;
    }
    const auto& r = layer.routing.front();
    MOEQ_INTERNAL_ASSERT(r.reference_routes && r.own_routes && r.carried_routes,
                         "the routes of '{}' were not kept", r.block);
    MOEQ_INTERNAL_ASSERT(r.tokens == tokens, "'{}' routed {} tokens, the evaluation has {}",
                         r.block, r.tokens, tokens);
    const auto prefix = fmt::format("layers.{}", layer.index);
    options.metadata.emplace(prefix + ".block", r.block);
    moe_layers.emplace_back(prefix, &r);
  }
  io::SafetensorsWriter writer(fs::absolute(file).parent_path(), options);
  writer.add("input_ids", input_ids);
  for (const auto& [prefix, r] : moe_layers) {
    for (const auto& [side, routes] : {std::pair{"reference", &*r->reference_routes},
                                       std::pair{"quantized", &*r->carried_routes},
                                       std::pair{"quantized_own", &*r->own_routes}}) {
      writer.add(fmt::format("{}.{}.topk_ids", prefix, side), routes->topk_ids);
      writer.add(fmt::format("{}.{}.topk_weights", prefix, side), routes->topk_weights);
    }
  }
  writer.finish();
}

}  // namespace moeq::pipeline
