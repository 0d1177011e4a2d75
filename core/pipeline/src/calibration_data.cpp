// Calibration data (calibration_data.h).
#include "moeq/pipeline/calibration_data.h"

#include <moeq/core/error.h>
#include <moeq/core/log.h>
#include <moeq/io/safetensors_reader.h>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <fstream>
#include <random>
#include <sstream>

namespace moeq::pipeline {
namespace {

namespace fs = std::filesystem;
using Document = std::vector<int64_t>;

std::string detect_format(const CalibrationDataOptions& options) {
  if (options.format != "auto" && !options.format.empty()) {
    return options.format;
  }
  const auto ext = options.path.extension().string();
  if (ext == ".jsonl" || ext == ".json") {
    return "jsonl";
  }
  if (ext == ".safetensors") {
    return "safetensors";
  }
  if (ext == ".txt" || ext == ".text" || ext == ".md") {
    return "text";
  }
  MOEQ_CHECK(false,
             "{}: cannot tell the calibration data format from the extension '{}' (give format: "
             "jsonl, safetensors or text)",
             options.path.string(), ext);
  return {};
}

Document ids_from_json(const nlohmann::json& value, const fs::path& file, int64_t line) {
  const nlohmann::json* ids = &value;
  if (value.is_object()) {
    MOEQ_CHECK(value.contains("input_ids"),
               "{}:{}: a JSONL object needs an \"input_ids\" array of token ids", file.string(),
               line);
    ids = &value["input_ids"];
  }
  MOEQ_CHECK(ids->is_array(), "{}:{}: expected an array of token ids, got {}", file.string(), line,
             std::string(ids->type_name()));
  Document doc;
  doc.reserve(ids->size());
  for (const auto& id : *ids) {
    MOEQ_CHECK(id.is_number_integer(), "{}:{}: token ids must be integers, got {}", file.string(),
               line, id.dump());
    doc.push_back(id.get<int64_t>());
  }
  return doc;
}

std::vector<Document> read_jsonl(const fs::path& file) {
  std::ifstream in(file);
  std::vector<Document> docs;
  std::string text;
  int64_t line = 0;
  while (std::getline(in, text)) {
    ++line;
    if (text.find_first_not_of(" \t\r") == std::string::npos) {
      continue;
    }
    nlohmann::json value;
    try {
      value = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      MOEQ_CHECK(false, "{}:{}: malformed JSON ({})", file.string(), line, e.what());
    }
    docs.push_back(ids_from_json(value, file, line));
  }
  return docs;
}

std::vector<Document> read_safetensors(const fs::path& file) {
  io::SafetensorsCheckpoint checkpoint(file);
  MOEQ_CHECK(checkpoint.contains("input_ids"),
             "{}: no tensor 'input_ids' (a 2-D integer tensor [documents, tokens]); it holds: {}",
             file.string(), fmt::join(checkpoint.names(), ", "));
  const auto ids = checkpoint.tensor("input_ids");
  MOEQ_CHECK(ids.dim() == 2, "{}: 'input_ids' must be 2-D [documents, tokens], got {} dims",
             file.string(), ids.dim());
  MOEQ_CHECK(!at::isFloatingType(ids.scalar_type()) && ids.scalar_type() != at::kBool,
             "{}: 'input_ids' must hold integers, got {}", file.string(),
             c10::toString(ids.scalar_type()));
  const auto rows = ids.to(at::kLong).contiguous();
  std::vector<Document> docs;
  for (int64_t r = 0; r < rows.size(0); ++r) {
    const auto* p = rows[r].data_ptr<int64_t>();
    docs.emplace_back(p, p + rows.size(1));
  }
  return docs;
}

std::vector<Document> read_text(const fs::path& file,
                                const TextTokenizer* tokenizer,
                                std::optional<int64_t> bos) {
  MOEQ_CHECK(tokenizer != nullptr,
             "{}: text calibration needs a tokenizer moeq can run (a byte-level vocabulary: "
             "moeq_tokenizer.json in the model directory); tokenize the text yourself and give "
             "a JSONL of token-id arrays or a safetensors file with 'input_ids' instead",
             file.string());
  std::ifstream in(file, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  Document doc;
  if (bos) {
    doc.push_back(*bos);
  }
  const auto ids = tokenizer->encode(buffer.str());
  doc.insert(doc.end(), ids.begin(), ids.end());
  return {std::move(doc)};
}

}  // namespace

std::vector<int64_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int64_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    ids[i] = static_cast<unsigned char>(text[i]);
  }
  return ids;
}

std::unique_ptr<TextTokenizer> find_tokenizer(const fs::path& model_dir) {
  const auto file = model_dir / "moeq_tokenizer.json";
  std::error_code ec;
  if (!fs::exists(file, ec)) {
    return nullptr;
  }
  std::ifstream in(file);
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(in);
  } catch (const nlohmann::json::parse_error& e) {
    MOEQ_CHECK(false, "{}: malformed JSON ({})", file.string(), e.what());
  }
  MOEQ_CHECK(json.value("type", "") == "bytes",
             "{}: tokenizer type '{}' is not one moeq runs (only \"bytes\")", file.string(),
             json.value("type", ""));
  return std::make_unique<ByteTokenizer>();
}

CalibrationData load_calibration_data(const CalibrationDataOptions& options,
                                      const TextTokenizer* tokenizer) {
  const auto& file = options.path;
  std::error_code ec;
  MOEQ_CHECK(fs::is_regular_file(file, ec), "calibration data '{}' does not exist", file.string());
  MOEQ_CHECK(options.seq_len >= 1 && options.samples >= 1 && options.batch_size >= 1,
             "{}: samples ({}), seq_len ({}) and batch_size ({}) must be at least 1", file.string(),
             options.samples, options.seq_len, options.batch_size);
  const auto format = detect_format(options);
  std::vector<Document> docs;
  if (format == "jsonl") {
    docs = read_jsonl(file);
  } else if (format == "safetensors") {
    docs = read_safetensors(file);
  } else if (format == "text") {
    docs = read_text(file, tokenizer, options.bos_token_id);
  } else {
    MOEQ_CHECK(false, "{}: unknown calibration data format '{}' (jsonl, safetensors, text)",
               file.string(), format);
  }
  CalibrationData data;
  data.documents = static_cast<int64_t>(docs.size());
  std::vector<int64_t> stream;
  for (const auto& doc : docs) {
    stream.insert(stream.end(), doc.begin(), doc.end());
  }
  data.tokens = static_cast<int64_t>(stream.size());
  MOEQ_CHECK(!stream.empty(), "{}: no tokens", file.string());
  if (options.vocab_size > 0) {
    for (size_t i = 0; i < stream.size(); ++i) {
      MOEQ_CHECK(stream[i] >= 0 && stream[i] < options.vocab_size,
                 "{}: token id {} (token {} of the file) is outside the vocabulary [0, {})",
                 file.string(), stream[i], i, options.vocab_size);
    }
  }
  data.windows = data.tokens / options.seq_len;
  MOEQ_CHECK(data.windows >= 1,
             "{}: {} tokens are fewer than one sequence of seq_len {}; give more data or a "
             "shorter seq_len",
             file.string(), data.tokens, options.seq_len);
  // Fisher-Yates over the windows with mt19937_64 and a modulo draw: the same on every machine
  // (std::uniform_int_distribution is not specified bit for bit).
  std::vector<int64_t> order(static_cast<size_t>(data.windows));
  for (int64_t i = 0; i < data.windows; ++i) {
    order[static_cast<size_t>(i)] = i;
  }
  std::mt19937_64 rng(static_cast<uint64_t>(options.seed));
  for (int64_t i = data.windows - 1; i > 0; --i) {
    const auto j = static_cast<int64_t>(rng() % static_cast<uint64_t>(i + 1));
    std::swap(order[static_cast<size_t>(i)], order[static_cast<size_t>(j)]);
  }
  if (options.samples > data.windows) {
    logger().warn(
        "{}: {} samples asked for, but the data holds {} sequences of {} tokens; using "
        "all of them",
        file.string(), options.samples, data.windows, options.seq_len);
  }
  data.samples = std::min(options.samples, data.windows);
  const auto all = at::from_blob(stream.data(), {data.windows, options.seq_len}, at::kLong);
  for (int64_t start = 0; start < data.samples; start += options.batch_size) {
    const auto n = std::min(options.batch_size, data.samples - start);
    auto idx = at::empty({n}, at::kLong);
    for (int64_t k = 0; k < n; ++k) {
      idx[k] = order[static_cast<size_t>(start + k)];
    }
    data.batches.push_back(all.index_select(0, idx).clone());
  }
  return data;
}

}  // namespace moeq::pipeline
