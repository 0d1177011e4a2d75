#include "moeq/registry/registry.h"

#include <filesystem>

#include "moeq/registry/registries.h"

namespace moeq {

std::string Origin::to_string() const {
  std::string where =
      file.empty() ? std::string("unknown location")
                   : fmt::format("{}:{}", std::filesystem::path(file).filename().string(), line);
  if (builtin()) {
    return fmt::format("moeq ({})", where);
  }
  return fmt::format("plugin '{}' {} ({}, {})", plugin_name, plugin_version, plugin_path, where);
}

namespace detail {

namespace {
// Edit distance with adjacent transpositions (optimal string alignment): "modle" is 1 from "model".
std::size_t edit_distance(std::string_view a, std::string_view b) {
  std::vector<std::vector<std::size_t>> d(a.size() + 1, std::vector<std::size_t>(b.size() + 1));
  for (std::size_t i = 0; i <= a.size(); ++i) {
    d[i][0] = i;
  }
  for (std::size_t j = 0; j <= b.size(); ++j) {
    d[0][j] = j;
  }
  for (std::size_t i = 1; i <= a.size(); ++i) {
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}
}  // namespace

std::string suggest_key(std::string_view key, const std::vector<std::string>& known) {
  const std::string* best = nullptr;
  std::size_t best_distance = 0;
  for (const std::string& candidate : known) {
    const std::size_t distance = edit_distance(key, candidate);
    if (best == nullptr || distance < best_distance) {
      best = &candidate;
      best_distance = distance;
    }
  }
  // Close enough to be a typo: at most a third of the key's length.
  if (best == nullptr || best_distance == 0 ||
      best_distance * 3 > std::max<std::size_t>(key.size(), 3)) {
    return {};
  }
  return fmt::format(" (did you mean '{}'?)", *best);
}

std::string join_keys(const std::vector<std::string>& keys) {
  return fmt::format("{}", fmt::join(keys, ", "));
}

}  // namespace detail

// Key functions: the interfaces' vtables and type_info live here, in the host.
ArchitectureBuilder::~ArchitectureBuilder() = default;

std::unique_ptr<runtime::CausalLM> ArchitectureBuilder::build(
    const io::HfConfig& /*config*/,
    std::shared_ptr<runtime::WeightSource> /*weights*/,
    const runtime::RuntimeOptions& /*options*/) const {
  MOEQ_CHECK(false, "architecture '{}' builds no model ({})", key(), describe());
  return nullptr;
}
CheckpointMapping::~CheckpointMapping() = default;
SourceFormatHandler::~SourceFormatHandler() = default;

template class Registry<ModuleAdapterFactory>;
template class Registry<ArchitectureBuilderFactory>;
template class Registry<CheckpointMappingFactory>;
template class Registry<SourceFormatFactory>;
template class Registry<PipelineStagesFactory>;

}  // namespace moeq
