// The journal of a resumable run (journal.h).
#include "journal.h"

#include <moeq/core/error.h>
#include <moeq/io/safetensors_reader.h>
#include <moeq/io/safetensors_writer.h>

#include <ATen/ATen.h>
#include <fmt/format.h>

#include <fstream>
#include <sstream>

namespace moeq::pipeline::detail {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

constexpr const char* kJournalFile = "journal.json";
// 2: layers carry their routing agreement; 3: GPU peaks; 4: phase times
constexpr int kJournalVersion = 4;

// FNV-1a, 64 bits: a stable digest of token ids and files (not a security property).
class Digest {
 public:
  void add(const void* data, size_t size) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    for (size_t i = 0; i < size; ++i) {
      hash_ = (hash_ ^ bytes[i]) * 0x100000001b3ULL;
    }
  }
  void add(std::string_view text) { add(text.data(), text.size()); }
  void add(const at::Tensor& tensor) {
    const auto t = tensor.to(at::kCPU, at::kLong).contiguous();
    add(t.sizes().data(), t.sizes().size() * sizeof(int64_t));
    add(t.const_data_ptr(), t.nbytes());
  }
  std::string hex() const { return fmt::format("{:016x}", hash_); }

 private:
  uint64_t hash_ = 0xcbf29ce484222325ULL;
};

std::string token_digest(const std::vector<at::Tensor>& batches) {
  Digest digest;
  for (const auto& ids : batches) {
    digest.add(ids);
  }
  return digest.hex();
}

std::string read_text(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  MOEQ_CHECK(in.good(), "cannot read '{}'", file.string());
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

// The source checkpoint: config.json's bytes and each weight file's name and size (hashing the
// weights themselves would read the whole model again).
std::string source_digest(const fs::path& model_dir) {
  Digest digest;
  digest.add(read_text(model_dir / "config.json"));
  std::vector<std::pair<std::string, uintmax_t>> files;
  for (const auto& entry : fs::directory_iterator(model_dir)) {
    const auto name = entry.path().filename().string();
    if (entry.is_regular_file() &&
        (name.ends_with(".safetensors") || name.ends_with(".index.json"))) {
      files.emplace_back(name, entry.file_size());
    }
  }
  std::sort(files.begin(), files.end());
  for (const auto& [name, size] : files) {
    digest.add(fmt::format("{}:{};", name, size));
  }
  return digest.hex();
}

Json phases_to_json(const LayerPhases& p) {
  return {{"load", p.load},
          {"calibrate", p.calibrate},
          {"quantize", p.quantize},
          {"forward", p.forward}};
}

LayerPhases phases_from_json(const Json& j) {
  return {j.at("load").get<double>(), j.at("calibrate").get<double>(),
          j.at("quantize").get<double>(), j.at("forward").get<double>()};
}

Json coverage_to_json(const ExpertCoverage& c) {
  return {{"block", c.block}, {"adapter", c.adapter},   {"routed", c.routed},
          {"seen", c.seen},   {"fallback", c.fallback}, {"tokens", c.tokens}};
}

ExpertCoverage coverage_from_json(const Json& j) {
  const auto routed = j.at("routed").get<std::vector<int64_t>>();
  ExpertCoverage c(j.at("block").get<std::string>(), j.at("adapter").get<std::string>(),
                   static_cast<int64_t>(routed.size()));
  c.routed = routed;
  c.seen = j.at("seen").get<std::vector<int64_t>>();
  c.fallback = j.at("fallback").get<std::vector<bool>>();
  c.tokens = j.at("tokens").get<int64_t>();
  return c;
}

Json agreement_to_json(const RoutingAgreement& a) {
  return {{"same_set", a.same_set},
          {"overlap", a.overlap},
          {"top1_changed", a.top1_changed},
          {"expert_tokens", a.expert_tokens}};
}

RoutingAgreement agreement_from_json(const Json& j) {
  RoutingAgreement a;
  a.same_set = j.at("same_set").get<int64_t>();
  a.overlap = j.at("overlap").get<int64_t>();
  a.top1_changed = j.at("top1_changed").get<int64_t>();
  a.expert_tokens = j.at("expert_tokens").get<std::vector<int64_t>>();
  return a;
}

Json layer_to_json(const LayerResult& layer) {
  Json projections = Json::array();
  for (const auto& p : layer.projections) {
    projections.push_back({{"module", p.module},
                           {"block", p.block},
                           {"expert", p.expert},
                           {"kind", p.kind},
                           {"weight_error", p.weight_error},
                           {"rows_seen", p.rows_seen},
                           {"fallback", p.fallback}});
  }
  Json coverage = Json::array();
  for (const auto& c : layer.coverage) {
    coverage.push_back(coverage_to_json(c));
  }
  Json routing = Json::array();
  for (const auto& r : layer.routing) {
    routing.push_back({{"block", r.block},
                       {"tokens", r.tokens},
                       {"top_k", r.top_k},
                       {"num_experts", r.num_experts},
                       {"reference_expert_tokens", r.reference_expert_tokens},
                       {"own", agreement_to_json(r.own)},
                       {"carried", agreement_to_json(r.carried)}});
  }
  return {{"index", layer.index},
          {"skipped", layer.skipped},
          {"seconds", layer.seconds},
          {"phase_seconds", phases_to_json(layer.phases)},
          {"tokens", layer.tokens},
          {"peak_device_bytes", layer.peak_device_bytes},
          {"peak_device_reserved_bytes", layer.peak_device_reserved_bytes},
          {"weight_bytes", layer.weight_bytes},
          {"output_error", layer.output_error},
          {"eval_hidden_error", layer.eval_hidden_error},
          {"coverage", std::move(coverage)},
          {"routing", std::move(routing)},
          {"projections", std::move(projections)}};
}

LayerResult layer_from_json(const Json& j) {
  LayerResult layer;
  layer.index = j.at("index").get<int64_t>();
  layer.skipped = j.at("skipped").get<bool>();
  layer.seconds = j.at("seconds").get<double>();
  layer.phases = phases_from_json(j.at("phase_seconds"));
  layer.tokens = j.at("tokens").get<int64_t>();
  layer.peak_device_bytes = j.at("peak_device_bytes").get<int64_t>();
  layer.peak_device_reserved_bytes = j.at("peak_device_reserved_bytes").get<int64_t>();
  layer.weight_bytes = j.at("weight_bytes").get<int64_t>();
  layer.output_error = j.at("output_error").get<double>();
  layer.eval_hidden_error = j.at("eval_hidden_error").get<double>();
  for (const auto& c : j.at("coverage")) {
    layer.coverage.push_back(coverage_from_json(c));
  }
  for (const auto& r : j.at("routing")) {
    RoutingResult routing;
    routing.block = r.at("block").get<std::string>();
    routing.tokens = r.at("tokens").get<int64_t>();
    routing.top_k = r.at("top_k").get<int64_t>();
    routing.num_experts = r.at("num_experts").get<int64_t>();
    routing.reference_expert_tokens = r.at("reference_expert_tokens").get<std::vector<int64_t>>();
    routing.own = agreement_from_json(r.at("own"));
    routing.carried = agreement_from_json(r.at("carried"));
    layer.routing.push_back(std::move(routing));
  }
  for (const auto& p : j.at("projections")) {
    ProjectionResult pr;
    pr.module = p.at("module").get<std::string>();
    pr.block = p.at("block").get<std::string>();
    pr.expert = p.at("expert").get<int64_t>();
    pr.kind = p.at("kind").get<std::string>();
    pr.weight_error = p.at("weight_error").get<double>();
    pr.rows_seen = p.at("rows_seen").get<int64_t>();
    pr.fallback = p.at("fallback").get<bool>();
    layer.projections.push_back(std::move(pr));
  }
  return layer;
}

}  // namespace

Json run_fingerprint(const PipelineOptions& options,
                     const std::string& architecture,
                     const runtime::Placement& placement) {
  const auto& ex = options.export_options;
  Json f;
  f["journal_version"] = kJournalVersion;
  f["salt"] = options.journal_salt;
  f["model"] = fs::absolute(options.model_dir).lexically_normal().string();
  f["source"] = source_digest(options.model_dir);
  f["architecture"] = architecture;
  f["stages"] = options.stages != nullptr ? options.stages->describe() : std::string();
  f["scheme"] = options.rules.scheme.to_json().dump();
  f["scheme_name"] = ex.scheme_name;
  f["ignore"] = options.rules.ignore;
  f["skip_attention"] = options.rules.skip_attention;
  f["skip_dense_mlp"] = options.rules.skip_dense_mlp;
  f["calibration_mode"] = std::string(to_string(options.calibration.mode));
  f["calibration_ratio"] = options.calibration.ratio;
  f["min_tokens"] = options.calibration.min_tokens;
  f["calibration_tokens"] = token_digest(options.calibration_batches);
  f["eval_tokens"] = token_digest(options.eval_batches);
  f["propagate_quantized"] = options.propagate_quantized;
  f["drop_excluded"] = options.drop_excluded;
  // CUDA and CPU kernels, and compute dtypes, round differently.
  f["device"] = c10::DeviceTypeName(placement.device.type(), /*lower_case=*/true);
  f["dtype"] = std::string(c10::toString(placement.dtype));
  f["format"] = std::string(exporting::to_string(ex.format));
  f["shard_size"] = ex.shard_size;
  return f;
}

Journal::Journal(fs::path directory, Json fingerprint)
    : directory_(std::move(directory)), fingerprint_(std::move(fingerprint)) {}

std::optional<JournalRecord> Journal::load() const {
  const fs::path file = directory_ / kJournalFile;
  if (!fs::exists(file)) {
    return std::nullopt;
  }
  JournalRecord record;
  try {
    const Json j = Json::parse(read_text(file));
    const Json& saved = j.at("fingerprint");
    for (const auto& [key, value] : fingerprint_.items()) {
      const auto it = saved.find(key);
      MOEQ_CHECK(it != saved.end() && *it == value,
                 "cannot resume from '{}': the interrupted run had {} = {}, this one has {}; rerun "
                 "with the same settings, or pass --restart to discard it",
                 file.string(), key, it != saved.end() ? it->dump() : "(nothing)", value.dump());
    }
    record.layers_done = j.at("layers_done").get<int64_t>();
    record.exporter_state = j.at("exporter").dump();
    for (const auto& layer : j.at("layers")) {
      record.layers.push_back(layer_from_json(layer));
    }
    for (const auto& name : j.at("quantized_weights")) {
      record.quantized_weights.insert(name.get<std::string>());
    }
    record.quantized_parameters = j.at("quantized_parameters").get<int64_t>();
    record.quantized_bytes = j.at("quantized_bytes").get<int64_t>();
    const fs::path hidden = directory_ / j.at("hidden").get<std::string>();
    MOEQ_CHECK(fs::exists(hidden), "cannot resume from '{}': its activations '{}' are missing",
               file.string(), hidden.string());
    const io::SafetensorsFile states(hidden);
    for (const auto& name : states.names()) {
      record.hidden.emplace(name, states.tensor(name).clone());
    }
  } catch (const nlohmann::json::exception& e) {
    MOEQ_CHECK(false, "cannot resume from '{}': malformed journal ({})", file.string(), e.what());
  }
  return record;
}

void Journal::commit(const JournalRecord& record, const std::string& tag) {
  const std::string hidden_prefix = fmt::format("hidden-{}", tag);
  io::SafetensorsWriterOptions hidden_options;
  hidden_options.prefix = hidden_prefix;
  hidden_options.max_shard_bytes = UINT64_MAX;  // one file
  io::save_safetensors(directory_, record.hidden, hidden_options);

  Json j;
  j["version"] = kJournalVersion;
  j["fingerprint"] = fingerprint_;
  j["layers_done"] = record.layers_done;
  j["hidden"] = hidden_prefix + ".safetensors";
  j["exporter"] = Json::parse(record.exporter_state);
  j["quantized_weights"] = record.quantized_weights;
  j["quantized_parameters"] = record.quantized_parameters;
  j["quantized_bytes"] = record.quantized_bytes;
  Json layers = Json::array();
  for (const auto& layer : record.layers) {
    layers.push_back(layer_to_json(layer));
  }
  j["layers"] = std::move(layers);
  io::write_file_atomically(directory_ / kJournalFile, j.dump());

  // The previous record's activations are not needed any more.
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(directory_, ec)) {
    const auto name = entry.path().filename().string();
    if (name.starts_with("hidden-") && name != hidden_prefix + ".safetensors") {
      fs::remove(entry.path(), ec);
    }
  }
}

}  // namespace moeq::pipeline::detail
