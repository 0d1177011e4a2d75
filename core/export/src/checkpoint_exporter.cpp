#include "checkpoint_exporter.h"

#include <moeq/core/error.h>
#include <moeq/io/remove_tree.h>
#include <moeq/io/safetensors_reader.h>
#include <moeq/io/safetensors_writer.h>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <unistd.h>

#include <fstream>

#include "module_names.h"
#include "vllm_constraints.h"

namespace moeq::exporting {
namespace {

namespace fs = std::filesystem;

constexpr const char* kJournalFolder = ".journal";

std::string shape_of(const at::Tensor& t) {
  return fmt::format("[{}]", fmt::join(t.sizes(), ", "));
}

// Weights in any of the framework formats: never copied as side files (the shards replace them).
bool is_weight_file(const std::string& name) {
  for (const char* ext : {".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5",
                          ".msgpack", ".index.json"}) {
    if (name.ends_with(ext)) {
      return true;
    }
  }
  return false;
}

// Runs `body`, marking the exporter failed when it throws: a half-added module leaves the
// checkpoint in a state finish() must refuse.
template <typename F>
void guarded(bool& failed, F&& body) {
  try {
    body();
  } catch (...) {
    failed = true;
    throw;
  }
}

}  // namespace

nlohmann::ordered_json read_json_file(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  MOEQ_CHECK(in.good(), "cannot read '{}'", file.string());
  try {
    return nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    MOEQ_CHECK(false, "'{}': malformed JSON ({})", file.string(), e.what());
  }
  return {};
}

void write_json_file(const fs::path& file, const nlohmann::ordered_json& json, int indent) {
  // Python's json.dump: ASCII only, no trailing newline.
  io::write_file_atomically(file, json.dump(indent, ' ', /*ensure_ascii=*/true));
}

CheckpointExporter::CheckpointExporter(const ExportOptions& options, SharedScales shared)
    : options_(options), shared_(std::move(shared)) {
  MOEQ_CHECK(options.scheme.weights.has_value(), "the scheme '{}' quantizes no weights",
             options.scheme_name);
  MOEQ_CHECK(options.shard_size > 0, "the shard size must be positive, got {}", options.shard_size);
  const fs::path output = fs::absolute(options.output).lexically_normal();
  MOEQ_CHECK(!output.filename().empty(), "the output '{}' names no directory", output.string());
  std::error_code ec;
  MOEQ_CHECK(fs::is_regular_file(options.model_dir / "config.json", ec),
             "'{}' has no config.json to export with", options.model_dir.string());
  MOEQ_CHECK(fs::absolute(options.model_dir).lexically_normal() != output,
             "the output '{}' is the source model directory", output.string());
  MOEQ_CHECK(options.overwrite || !fs::exists(output, ec),
             "the output '{}' already exists; remove it or pass --overwrite (it is replaced only "
             "once the new checkpoint is complete)",
             output.string());
  fs::create_directories(output.parent_path(), ec);
  MOEQ_CHECK(!ec, "cannot create the output's parent '{}': {}", output.parent_path().string(),
             ec.message());
  output_ = output;
  io::SafetensorsWriterOptions writer_options;
  writer_options.max_shard_bytes = static_cast<uint64_t>(options.shard_size);
  writer_options.metadata = {{"format", "pt"}};
  if (options.resumable) {
    // A fixed name, so that a killed run's work is found again.
    temp_ = output.parent_path() / fmt::format(".{}.moeq-partial", output.filename().string());
    writer_options.keep_unfinished = true;
    if (fs::exists(temp_ / kJournalFolder, ec) && options.resume) {
      resuming_ = true;
    } else if (fs::exists(temp_, ec)) {
      MOEQ_CHECK(options.restart || (options.resume && !fs::exists(temp_ / kJournalFolder, ec)),
                 "'{}' holds an interrupted run for the output '{}'; pass --resume to continue it "
                 "or --restart to discard it",
                 temp_.string(), output.string());
      io::remove_tree(temp_, ec);
      MOEQ_CHECK(!ec, "cannot remove the interrupted run '{}': {}", temp_.string(), ec.message());
    }
  } else {
    temp_ = output.parent_path() /
            fmt::format(".{}.moeq-partial-{}", output.filename().string(), ::getpid());
    io::remove_tree(temp_, ec);  // a leftover of this pid's earlier, killed run
  }
  fs::create_directories(temp_, ec);
  MOEQ_CHECK(!ec, "cannot create '{}' next to the output: {}", temp_.string(), ec.message());
  if (options.resumable) {
    fs::create_directories(temp_ / kJournalFolder, ec);
    MOEQ_CHECK(!ec, "cannot create the journal '{}': {}", (temp_ / kJournalFolder).string(),
               ec.message());
  }
  writer_ = std::make_unique<io::SafetensorsWriter>(temp_, writer_options);
}

CheckpointExporter::~CheckpointExporter() {
  // A resumable export keeps its partial checkpoint once a checkpoint() recorded something to
  // continue from; before that there is nothing to resume.
  if (!finished_ && !(options_.resumable && (resuming_ || checkpointed_))) {
    writer_.reset();  // removes its own temporaries
    std::error_code ec;
    io::remove_tree(temp_, ec);
  }
}

void CheckpointExporter::add_quantized(const std::string& module,
                                       const at::Tensor& weight,
                                       quant::TensorQuantizer& weight_quantizer,
                                       quant::TensorQuantizer* input_quantizer,
                                       const at::Tensor& bias) {
  MOEQ_CHECK(!failed_ && !finished_, "'{}' added after the export {}", module,
             finished_ ? "finished" : "failed");
  guarded(failed_, [&] {
    MOEQ_CHECK(weight.dim() == 2, "'{}.weight' must be [out, in] to export, got {}", module,
               shape_of(weight));
    MOEQ_CHECK(!quantized_set_.contains(module), "module '{}' is exported twice", module);
    check_vllm_constraints(options_.scheme, storage_format(), module, weight.size(0),
                           weight.size(1));
    const quant::QuantizedTensors tensors = quantize(weight, weight_quantizer, input_quantizer);
    shared_.check(module, tensors);
    for (const auto& [suffix, tensor] : tensors) {
      add(module + "." + suffix, tensor);
    }
    if (bias.defined()) {
      add(module + ".bias", bias);
    }
    quantized_.push_back(module);
    quantized_set_.insert(module);
  });
}

void CheckpointExporter::add_tensor(const std::string& name, const at::Tensor& tensor) {
  MOEQ_CHECK(!failed_ && !finished_, "'{}' added after the export {}", name,
             finished_ ? "finished" : "failed");
  guarded(failed_, [&] { add(name, tensor); });
}

void CheckpointExporter::add(const std::string& name, const at::Tensor& tensor) {
  MOEQ_CHECK(names_.insert(name).second, "tensor '{}' is exported twice", name);
  writer_->add(name, tensor);
  bytes_ += static_cast<int64_t>(tensor.nbytes());
}

void CheckpointExporter::check_summary(const ExportSummary& summary) const {
  const std::set<std::string> ignored(summary.ignored_modules.begin(),
                                      summary.ignored_modules.end());
  for (const auto& module : summary.expected_quantized) {
    MOEQ_CHECK(quantized_set_.contains(module),
               "'{}' was to be quantized but reached the exporter unquantized; no expert may be "
               "left in high precision",
               module);
  }
  for (const auto& module : summary.ignored_modules) {
    MOEQ_CHECK(!quantized_set_.contains(module),
               "'{}' is listed as ignored (left in high precision) but was exported quantized",
               module);
  }
  // A routed expert's weight written as is without being listed as ignored would be loaded by
  // the engines as a quantized expert with no scales.
  for (const auto& name : names_) {
    if (!name.ends_with(".weight")) {
      continue;
    }
    const std::string module = name.substr(0, name.size() - 7);
    MOEQ_CHECK(expert_pattern(module).empty() || quantized_set_.contains(module) ||
                   ignored.contains(module),
               "expert '{}' was written unquantized and is not in the ignore list; every routed "
               "expert must be quantized (or listed as ignored)",
               module);
  }
}

fs::path CheckpointExporter::finish(const ExportSummary& summary) {
  MOEQ_CHECK(!finished_, "the export to '{}' already finished", output_.string());
  MOEQ_CHECK(!failed_, "the export to '{}' failed earlier; nothing was written", output_.string());
  guarded(failed_, [&] {
    check_summary(summary);
    writer_->finish();
    write_configs(temp_, summary, quantized_);
    copy_side_files();
    if (options_.resumable) {
      std::error_code ec;
      io::remove_tree(temp_ / kJournalFolder, ec);
      MOEQ_CHECK(!ec, "cannot remove the journal '{}': {}", (temp_ / kJournalFolder).string(),
                 ec.message());
    }
    rename_into_place();
  });
  finished_ = true;
  return output_;
}

fs::path CheckpointExporter::journal_directory() const {
  return options_.resumable ? temp_ / kJournalFolder : fs::path();
}

std::string CheckpointExporter::checkpoint(const std::string& tag) {
  MOEQ_CHECK(options_.resumable, "checkpoint() on an export to '{}' that is not resumable",
             output_.string());
  MOEQ_CHECK(!failed_ && !finished_, "checkpoint() after the export to '{}' {}", output_.string(),
             finished_ ? "finished" : "failed");
  const fs::path journal = journal_directory();
  nlohmann::ordered_json state;
  state["writer"] = nlohmann::json::parse(
      writer_->checkpoint(journal / fmt::format("pending-{}.safetensors", tag)));
  state["names"] = names_;
  state["quantized"] = quantized_;
  state["bytes"] = bytes_;
  // The shared scales seen so far, so that a resumed run checks later modules against them.
  std::map<std::string, at::Tensor> scales;
  nlohmann::ordered_json scale_modules = nlohmann::ordered_json::object();
  for (const auto& [key, seen] : shared_.seen()) {
    scales.emplace(key, seen.second);
    scale_modules[key] = seen.first;
  }
  const std::string scale_file = fmt::format("scales-{}", tag);
  io::SafetensorsWriterOptions scale_options;
  scale_options.prefix = scale_file;
  io::save_safetensors(journal, scales, scale_options);
  state["scales"] = {{"file", scale_file + ".safetensors"}, {"modules", scale_modules}};
  journal_keep_ = writer_->spill_files();
  journal_keep_.insert(journal / (scale_file + ".safetensors"));
  checkpointed_ = true;
  return state.dump();
}

void CheckpointExporter::restore(std::string_view text) {
  MOEQ_CHECK(resuming_, "restore() on an export to '{}' that is not resuming", output_.string());
  MOEQ_CHECK(names_.empty(), "restore() on an export to '{}' that already holds tensors",
             output_.string());
  guarded(failed_, [&] {
    nlohmann::json state;
    try {
      state = nlohmann::json::parse(text);
      writer_->restore(state.at("writer").dump());
      for (const auto& name : state.at("names")) {
        names_.insert(name.get<std::string>());
      }
      quantized_ = state.at("quantized").get<std::vector<std::string>>();
      quantized_set_.insert(quantized_.begin(), quantized_.end());
      bytes_ = state.at("bytes").get<int64_t>();
      const fs::path scale_file =
          journal_directory() / state.at("scales").at("file").get<std::string>();
      MOEQ_CHECK(fs::exists(scale_file), "cannot resume the export to '{}': '{}' is missing",
                 output_.string(), scale_file.string());
      io::SafetensorsFile scales(scale_file);
      for (const auto& [key, module] : state.at("scales").at("modules").items()) {
        shared_.restore(key, module.get<std::string>(), scales.tensor(key).clone());
      }
      journal_keep_ = writer_->spill_files();
      journal_keep_.insert(scale_file);
    } catch (const nlohmann::json::exception& e) {
      MOEQ_CHECK(false, "cannot resume the export to '{}': malformed exporter state ({})",
                 output_.string(), e.what());
    }
  });
}

void CheckpointExporter::prune() {
  const fs::path journal = journal_directory();
  if (journal.empty()) {
    return;
  }
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(journal, ec)) {
    const auto name = entry.path().filename().string();
    if ((name.starts_with("pending-") || name.starts_with("scales-")) &&
        !journal_keep_.contains(entry.path())) {
      fs::remove(entry.path(), ec);
    }
  }
}

void CheckpointExporter::copy_side_files() const {
  for (const auto& entry : fs::directory_iterator(options_.model_dir)) {
    const std::string name = entry.path().filename().string();
    // Weights, and the configs each exporter writes itself (a ModelOpt source's
    // hf_quant_config.json would make engines read a compressed-tensors export as ModelOpt).
    if (!entry.is_regular_file() || name.starts_with(".") || is_weight_file(name) ||
        name == "hf_quant_config.json" || fs::exists(temp_ / name)) {
      continue;
    }
    std::error_code ec;
    fs::copy_file(entry.path(), temp_ / name, ec);
    MOEQ_CHECK(!ec, "cannot copy '{}' into the output: {}", entry.path().string(), ec.message());
  }
}

void CheckpointExporter::rename_into_place() {
  std::error_code ec;
  if (!fs::exists(output_, ec)) {
    fs::rename(temp_, output_, ec);
    MOEQ_CHECK(!ec, "cannot rename '{}' to '{}': {}", temp_.string(), output_.string(),
               ec.message());
    return;
  }
  // --overwrite: the old output is replaced only now that the new one is complete.
  const fs::path old = output_.parent_path() /
                       fmt::format(".{}.moeq-old-{}", output_.filename().string(), ::getpid());
  io::remove_tree(old, ec);
  fs::rename(output_, old, ec);
  MOEQ_CHECK(!ec, "cannot move the old '{}' aside: {}", output_.string(), ec.message());
  fs::rename(temp_, output_, ec);
  if (ec) {
    std::error_code restore;
    fs::rename(old, output_, restore);
    MOEQ_CHECK(false, "cannot rename '{}' to '{}': {}", temp_.string(), output_.string(),
               ec.message());
  }
  io::remove_tree(old, ec);
}

}  // namespace moeq::exporting
